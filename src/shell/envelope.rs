//! The envelope every step command runs in on a host, and the commands that
//! find, kill or clear what runs in it.
//!
//! Closing an SSH channel does not stop the command behind it (without a pty
//! nothing signals it): a command whose run stopped would go on applying its
//! change with nobody watching, and a second run could start beside it. So
//! each command registers itself in a directory of its run on the host,
//! `<dir>/<tag>.pid`: the id of the session it runs in and the start time of
//! that session's leader, from `/proc`. sshd gives every channel a session of
//! its own (and opsrun does the same for the commands it runs on the control
//! machine), so the session is exactly what the command started, children
//! included, even those that moved to a process group of their own (coreutils
//! `timeout` does, so a process-group kill would miss a step with a
//! `timeout`). "Stop now" signals every process of that session; a later
//! rollback or resume of the run looks there for commands still running
//! before it touches the host; the lock is released only when nothing is.
//!
//! A command counts as running while its session leader lives (same pid,
//! same start time: never a recycled pid). A daemon it started and left behind
//! (`catalina.sh start`) does not count, and is never killed once the command
//! that started it has ended.
//!
//! The envelope costs one `exec` on the host: the shell that runs the command
//! string writes the file and execs the line, unchanged, with the shell that would run it without the envelope:
//! the host's login shell (`$SHELL -c LINE`, what sshd runs) or `/bin/sh` on
//! the control machine. Nothing else of the command's environment changes (its
//! umask, its stdin, its process ids).

use super::quote;

/// Which shell runs the line inside the envelope: the one that would run it without.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interpreter {
    /// The login shell, as sshd runs an ssh command string.
    Login,
    /// `/bin/sh`, as the control machine runs a local step.
    Sh,
}

/// A marker file: while it exists, no new command of the run starts on the host.
const STOP: &str = "stop";

/// `pst PID`: sets `st_state`, `st_session` and `st_start` (fields 3, 6 and
/// 22 of `/proc/PID/stat`), read after the command name, which may hold spaces
/// and parentheses (`exec "/opt/my app"`). Builtins only: no process per call.
const PST: &str = "pst() { st_line=; read -r st_line < /proc/$1/stat 2>/dev/null || return 1; \
    set -- ${st_line##*) }; st_state=$1; st_session=$4; st_start=${20}; };";

/// Sets `s` and `b` to the session of this shell and its leader's start time;
/// without `/proc`, to `$$` and empty.
const SESSION: &str = "s=$$; b=; if pst $$; then s=$st_session; pst $s && b=$st_start; fi;";

/// Shell functions the survey, kill and clear commands share.
/// `live S B`: session S's leader (started at B) still runs (a zombie has ended).
/// `members S`: a process of session S is left.
/// `each SIG S`: sends SIG to every process of session S (by `/proc`; without
/// it, to the group S). A process of another user (a step's `as:` through
/// sudo) is signalled through `sudo -n -u #UID`, as that user: the login may
/// do that when it may run the step as that user.
/// `gone E...`: no process is left of the sessions in `tag:session:start` entries.
const LIVE: &str = "live() { if [ -d /proc/$$ ]; then pst $1 || return 1; [ \"$st_state\" != Z ] && \
    { [ -z \"$2\" ] || [ \"$st_start\" = \"$2\" ]; }; else kill -0 \"$1\" 2>/dev/null; fi; }; \
    members() { if [ -d /proc/$$ ]; then for q in /proc/[0-9]*; do pst ${q#/proc/} || continue; \
    [ \"$st_session\" = \"$1\" ] && [ \"$st_state\" != Z ] && return 0; done; return 1; \
    else kill -0 -\"$1\" 2>/dev/null; fi; }; \
    as_owner() { u=; while read -r k v _; do [ \"$k\" = Uid: ] && { u=$v; break; }; done < /proc/$2/status 2>/dev/null; \
    [ -n \"$u\" ] && command -v sudo >/dev/null 2>&1 && sudo -n -u \"#$u\" kill -$1 \"$2\" 2>/dev/null; }; \
    each() { if [ -d /proc/$$ ]; then for q in /proc/[0-9]*; do p=${q#/proc/}; pst $p || continue; \
    [ \"$st_session\" = \"$2\" ] || continue; kill -$1 \"$p\" 2>/dev/null || as_owner $1 \"$p\"; done; \
    else kill -$1 -\"$2\" 2>/dev/null || kill -$1 \"$2\" 2>/dev/null; fi; true; }; \
    gone() { for e in \"$@\"; do r=${e#*:}; members \"${r%%:*}\" && return 1; done; return 0; };";

/// Loops over the registered commands that are still running, with `$t`
/// (tag), `$s` (session) and `$b` (leader start time) set for `BODY`.
fn for_each_running(body: &str) -> String {
    format!(
        "for f in \"$d\"/*.pid; do [ -f \"$f\" ] || continue; s=; b=; read -r s b < \"$f\" 2>/dev/null; \
         case \"$s\" in ''|*[!0-9]*) continue;; esac; t=${{f##*/}}; t=${{t%.pid}}; \
         if [ -e \"$d/$t.killed\" ]; then members \"$s\" || continue; else live \"$s\" \"$b\" || continue; fi; \
         {body}; done"
    )
}

/// `line`, run inside the envelope that registers it as `tag` in `dir`.
///
/// The `stop` check comes after the registration is written, and the kill
/// writes `stop` before it reads the registrations: a command starting while
/// its run is being stopped is either seen by the kill or sees the stop itself.
pub fn supervised(line: &str, dir: &str, tag: &str, shell: Interpreter) -> String {
    let run = match shell {
        Interpreter::Login => "\"${SHELL:-/bin/sh}\"",
        Interpreter::Sh => "/bin/sh",
    };
    // Run by the shell that runs any command string (the login shell, or
    // /bin/sh for a local step), not by a `sh -c` of its own: one process
    // fewer per command. Its variables go with the `exec`.
    format!(
        "d={}; t={}; [ -d \"$d\" ] || mkdir -p -m 700 \"$d\" 2>/dev/null; \
         if [ -L \"$d\" ] || [ ! -d \"$d\" ] || [ ! -O \"$d\" ]; then echo \"opsrun: cannot track the command in $d\" >&2; exit 125; fi; \
         {PST} {SESSION} echo \"$s $b\" >\"$d/$t.pid\" || exit 125; \
         if [ -e \"$d/{STOP}\" ]; then exit 143; fi; exec {run} -c {}",
        quote(dir),
        quote(tag),
        quote(line)
    )
}

/// What one registered command was doing when a survey or a kill looked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// Still running, in session `session`.
    Running { tag: String, session: u32 },
    /// Killed by this very command.
    Killed { tag: String, session: u32 },
    /// Still running although it was sent KILL: it belongs to another user
    /// (`as:` through sudo) or cannot be signalled from this login.
    Unkillable { tag: String, session: u32 },
}

impl Seen {
    pub fn tag(&self) -> &str {
        match self {
            Seen::Running { tag, .. } | Seen::Killed { tag, .. } | Seen::Unkillable { tag, .. } => {
                tag
            }
        }
    }
}

/// Lists the commands of `dir` still running: `running TAG SESSION` per line.
pub fn survey_command(dir: &str) -> String {
    format!(
        "d={}; [ -L \"$d\" ] && exit 0; {PST} {LIVE} {}; true",
        quote(dir),
        for_each_running("echo \"running $t $s\"")
    )
}

/// Stops every command of `dir`: no new one starts (until [`resume_command`]),
/// each session gets TERM, then KILL after `grace` seconds. One line per
/// command it found: `killed TAG SESSION` or `unkillable TAG SESSION`.
pub fn kill_command(dir: &str, grace: u32) -> String {
    format!(
        "d={}; [ -L \"$d\" ] && exit 0; [ -d \"$d\" ] || exit 0; : >\"$d/{STOP}\"; {PST} {LIVE} set --; \
         {}; \
         n=0; while [ $n -lt {ticks} ] && ! gone \"$@\"; do sleep 0.2 2>/dev/null || sleep 1; n=$((n+1)); \
         for e in \"$@\"; do r=${{e#*:}}; s=${{r%%:*}}; members \"$s\" && each TERM \"$s\"; done; done; \
         for e in \"$@\"; do r=${{e#*:}}; s=${{r%%:*}}; members \"$s\" && each KILL \"$s\"; done; \
         sleep 0.2 2>/dev/null; for e in \"$@\"; do t=${{e%%:*}}; r=${{e#*:}}; s=${{r%%:*}}; \
         if members \"$s\"; then echo \"unkillable $t $s\"; else echo \"killed $t $s\"; fi; done",
        quote(dir),
        // Marked: from now on what is left of it counts, not only its leader.
        for_each_running(": >\"$d/$t.killed\"; set -- \"$@\" \"$t:$s:$b\"; each TERM \"$s\""),
        ticks = grace.max(1) * 5,
    )
}

/// Lets the run's commands start on the host again, once the stopped step is
/// over: what follows "stop now" (the rollback the operator chose) runs there.
pub fn resume_command(dir: &str) -> String {
    format!("rm -f {}/{STOP}", quote(dir))
}

/// Removes `dir` if no command in it is still running; prints `busy` otherwise.
pub fn clear_command(dir: &str) -> String {
    format!(
        "d={}; [ -L \"$d\" ] && {{ rm -f \"$d\"; exit 0; }}; [ -d \"$d\" ] || exit 0; {PST} {LIVE} {}; rm -rf \"$d\"",
        quote(dir),
        for_each_running("echo busy; exit 0")
    )
}

/// Reads what [`survey_command`] and [`kill_command`] printed.
pub fn parse_seen(stdout: &str) -> Vec<Seen> {
    stdout
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let (kind, tag, session) = (w.next()?, w.next()?.to_string(), w.next()?.parse().ok()?);
            Some(match kind {
                "running" => Seen::Running { tag, session },
                "killed" => Seen::Killed { tag, session },
                "unkillable" => Seen::Unkillable { tag, session },
                _ => return None,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    /// `/bin/sh -c LINE` in a session of its own, as sshd runs each channel: a
    /// kill of a registered command must never reach the test runner's session.
    fn session(line: &str) -> Command {
        use std::os::unix::process::CommandExt;
        let mut c = Command::new("/bin/sh");
        c.arg("-c").arg(line);
        // SAFETY: setsid is async-signal-safe and has no preconditions.
        unsafe {
            c.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        c
    }

    fn sh(line: &str) -> std::process::Output {
        session(line).output().unwrap()
    }

    fn seen(line: &str) -> Vec<Seen> {
        parse_seen(&String::from_utf8_lossy(&sh(line).stdout))
    }

    /// Waits until `reg` lists a running command.
    fn wait_running(reg: &str) -> Vec<Seen> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let found = seen(&survey_command(reg));
            if !found.is_empty() || Instant::now() > deadline {
                return found;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn the_line_runs_unchanged_with_its_stdin_status_and_output() {
        let dir = tempfile::tempdir().unwrap();
        let reg = dir.path().join("reg").display().to_string();
        let line = "read a; echo \"got $a\"; echo err >&2; exit 7";
        let mut child = session(&supervised(line, &reg, "c1", Interpreter::Sh))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(b"x y\n").unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(7));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "got x y\n");
        assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
        assert!(
            sh(&survey_command(&reg)).stdout.is_empty(),
            "an ended command is not running"
        );
        // The line's umask is the caller's, not the registry's.
        let out = sh(&format!(
            "umask 022; {}",
            supervised("umask", &reg, "c3", Interpreter::Sh)
        ));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "0022\n");
        // A quote in the line is the line's own.
        let out = sh(&supervised(
            "echo 'it''s' \"$0\"",
            &reg,
            "c2",
            Interpreter::Sh,
        ));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "its /bin/sh\n");
    }

    #[test]
    fn a_kill_ends_the_command_and_its_children_and_clear_waits_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let reg = dir.path().join("reg").display().to_string();
        let mark = dir.path().join("child-alive");
        // A child that ignores nothing but would outlive its parent shell.
        let line = format!(
            "(sleep 30; touch {}) & sleep 30",
            quote(&mark.display().to_string())
        );
        let mut child = session(&supervised(&line, &reg, "c1", Interpreter::Sh))
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let found = wait_running(&reg);
        assert!(
            matches!(&found[..], [Seen::Running { tag, .. }] if tag == "c1"),
            "{found:?}"
        );
        assert_eq!(
            String::from_utf8_lossy(&sh(&clear_command(&reg)).stdout),
            "busy\n"
        );
        let killed = seen(&kill_command(&reg, 3));
        assert!(
            matches!(&killed[..], [Seen::Killed { tag, .. }] if tag == "c1"),
            "{killed:?}"
        );
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            status.signal(),
            Some(libc::SIGTERM),
            "the command itself got TERM"
        );
        assert!(sh(&survey_command(&reg)).stdout.is_empty());
        // Until the stopped step is over, nothing new starts; then the run's
        // next command (an undo) may.
        assert!(sh(&supervised("echo next", &reg, "c2", Interpreter::Sh))
            .stdout
            .is_empty());
        sh(&resume_command(&reg));
        assert_eq!(
            sh(&supervised("echo next", &reg, "c3", Interpreter::Sh)).stdout,
            b"next\n"
        );
        assert!(sh(&clear_command(&reg)).stdout.is_empty());
        assert!(!std::path::Path::new(&reg).exists());
        std::thread::sleep(Duration::from_millis(300));
        assert!(!mark.exists(), "the command's child was killed with it");
    }

    #[test]
    fn a_kill_reaches_what_left_the_process_group_and_spares_what_ended_commands_left() {
        let dir = tempfile::tempdir().unwrap();
        let reg = dir.path().join("reg").display().to_string();
        // A daemon an earlier, ended command started (`catalina.sh start`).
        let daemon = "sleep 31.4159";
        let out = sh(&supervised(
            &format!("{daemon} >/dev/null 2>&1 &"),
            &reg,
            "c1",
            Interpreter::Sh,
        ));
        assert!(out.status.success());
        // coreutils `timeout` puts itself in a process group of its own.
        let mut child = session(&supervised(
            "timeout 30 sleep 30",
            &reg,
            "c2",
            Interpreter::Sh,
        ))
        .spawn()
        .unwrap();
        let running = wait_running(&reg);
        assert!(
            matches!(&running[..], [Seen::Running { tag, .. }] if tag == "c2"),
            "only the command that has not ended runs: {running:?}"
        );
        let killed = seen(&kill_command(&reg, 3));
        assert!(
            matches!(&killed[..], [Seen::Killed { tag, .. }] if tag == "c2"),
            "{killed:?}"
        );
        assert!(!child.wait().unwrap().success());
        let left = std::process::Command::new("pgrep")
            .args(["-f", daemon])
            .output()
            .unwrap();
        assert!(
            left.status.success(),
            "the ended command's daemon was spared"
        );
        let _ = std::process::Command::new("pkill")
            .args(["-f", daemon])
            .status();
    }

    #[test]
    fn a_command_that_starts_while_its_run_is_stopped_does_not_run() {
        let dir = tempfile::tempdir().unwrap();
        let reg = dir.path().join("reg");
        std::fs::create_dir(&reg).unwrap();
        std::fs::write(reg.join(STOP), "").unwrap();
        let reg = reg.display().to_string();
        let out = sh(&supervised("echo ran", &reg, "c1", Interpreter::Sh));
        assert_eq!(out.status.code(), Some(143));
        assert!(out.stdout.is_empty());
    }

    #[test]
    fn someone_else_s_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        // A plain file where the directory should be: never written through.
        let reg = dir.path().join("reg");
        std::fs::write(&reg, "").unwrap();
        let out = sh(&supervised(
            "echo ran",
            &reg.display().to_string(),
            "c1",
            Interpreter::Sh,
        ));
        assert_eq!(out.status.code(), Some(125));
        assert!(out.stdout.is_empty());
    }
}
