//! The envelope every step command runs in on a host, and the commands that
//! find, kill or clear what runs in it.
//!
//! Closing an SSH channel does not stop the command behind it (without a pty
//! nothing signals it): a command whose run stopped would go on applying its
//! change with nobody watching, and a second run could start beside it. So
//! each command registers itself in a directory of its run on the host
//! (`<dir>/<tag>.pid`, holding its process group), runs in its own session
//! (`setsid`: signals reach the whole group, children included), and leaves
//! `<dir>/<tag>.rc` with its exit status when it ends. "Stop now" kills what
//! the directory lists; a later rollback or resume of the run looks there for
//! commands still running before it touches the host; the lock is released
//! only when nothing is. The line itself runs unchanged, with the same shell
//! as without the envelope: the host's login shell (`$SHELL -c LINE`, what
//! sshd runs) or `/bin/sh` on the control machine.

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

/// `line`, run inside the envelope that registers it as `tag` in `dir`.
///
/// The `stop` check comes after the pid file is written, and the kill
/// writes `stop` before it reads the pid files: a command starting while its
/// run is being stopped is either seen by the kill or sees the stop itself.
pub fn supervised(line: &str, dir: &str, tag: &str, shell: Interpreter) -> String {
    let run = match shell {
        Interpreter::Login => "\"${SHELL:-/bin/sh}\"",
        Interpreter::Sh => "/bin/sh",
    };
    // The command's own environment is left as it was (its umask included: a
    // file it writes must get the mode it would get without the envelope); the
    // registry is private by its directory's mode.
    // Without job control an `&` command reads /dev/null: fd 3 hands it the
    // channel's stdin instead. Without `setsid` (busybox) the command still
    // runs and registers; only its children escape a kill.
    let inner = format!(
        "echo $$ >\"$1.pid\"; if [ -e \"$2/{STOP}\" ]; then rm -f \"$1.pid\"; exit 143; fi; exec {run} -c \"$3\""
    );
    let script = format!(
        "d=$1; t=$2; mkdir -p -m 700 \"$d\" 2>/dev/null; \
         if [ ! -d \"$d\" ] || [ ! -O \"$d\" ]; then echo \"opsrun: cannot track the command in $d\" >&2; exit 125; fi; \
         command -v setsid >/dev/null 2>&1 || setsid() {{ \"$@\"; }}; \
         exec 3<&0; setsid sh -c {inner} opsrun \"$d/$t\" \"$d\" \"$3\" <&3 3<&- & p=$!; exec 3<&-; \
         wait \"$p\"; r=$?; echo \"$r\" >\"$d/$t.rc\"; rm -f \"$d/$t.pid\"; exit \"$r\"",
        inner = quote(&inner),
    );
    format!(
        "sh -c {} opsrun-envelope {} {} {}",
        quote(&script),
        quote(dir),
        quote(tag),
        quote(line)
    )
}

/// What one registered command was doing when a survey or a kill looked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// Still running as process group `pgid`.
    Running { tag: String, pgid: u32 },
    /// Killed by this very command.
    Killed { tag: String, pgid: u32 },
    /// Still running although it was sent KILL: it belongs to another user
    /// (`as:` through sudo) or cannot be signalled from this login.
    Unkillable { tag: String, pgid: u32 },
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

/// Lists the commands of `dir` still running: `running TAG PGID` per line.
/// A pid file whose process is gone is a command killed with its envelope.
pub fn survey_command(dir: &str) -> String {
    format!(
        "d={}; for f in \"$d\"/*.pid; do [ -f \"$f\" ] || continue; p=$(cat \"$f\" 2>/dev/null); t=${{f##*/}}; t=${{t%.pid}}; \
         case \"$p\" in ''|*[!0-9]*) continue;; esac; \
         if kill -0 -\"$p\" 2>/dev/null || kill -0 \"$p\" 2>/dev/null || [ -d /proc/\"$p\" ]; then echo \"running $t $p\"; fi; done; true",
        quote(dir)
    )
}

/// Stops every command of `dir`: no new one starts (until [`resume_command`]),
/// each process group gets TERM, then KILL after `grace` seconds. One line per command it found:
/// `killed TAG PGID` or `unkillable TAG PGID`.
pub fn kill_command(dir: &str, grace: u32) -> String {
    format!(
        "d={}; [ -d \"$d\" ] || exit 0; : >\"$d/{STOP}\"; \
         alive() {{ kill -0 -\"$1\" 2>/dev/null || kill -0 \"$1\" 2>/dev/null || [ -d /proc/\"$1\" ]; }}; \
         set --; for f in \"$d\"/*.pid; do [ -f \"$f\" ] || continue; p=$(cat \"$f\" 2>/dev/null); \
         case \"$p\" in ''|*[!0-9]*) continue;; esac; t=${{f##*/}}; set -- \"$@\" \"${{t%.pid}}:$p\"; \
         kill -TERM -\"$p\" 2>/dev/null || kill -TERM \"$p\" 2>/dev/null; done; \
         n=0; while [ $n -lt {ticks} ]; do busy=; for e in \"$@\"; do alive \"${{e#*:}}\" && busy=1; done; [ -z \"$busy\" ] && break; sleep 0.2 2>/dev/null || sleep 1; n=$((n+1)); done; \
         for e in \"$@\"; do p=${{e#*:}}; alive \"$p\" && {{ kill -KILL -\"$p\" 2>/dev/null || kill -KILL \"$p\" 2>/dev/null; }}; done; \
         sleep 0.2 2>/dev/null; for e in \"$@\"; do t=${{e%%:*}}; p=${{e#*:}}; \
         if alive \"$p\"; then echo \"unkillable $t $p\"; else echo \"killed $t $p\"; fi; done",
        quote(dir),
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
        "d={}; [ -d \"$d\" ] || exit 0; for f in \"$d\"/*.pid; do [ -f \"$f\" ] || continue; p=$(cat \"$f\" 2>/dev/null); \
         case \"$p\" in ''|*[!0-9]*) continue;; esac; if kill -0 -\"$p\" 2>/dev/null || kill -0 \"$p\" 2>/dev/null || [ -d /proc/\"$p\" ]; then echo busy; exit 0; fi; done; rm -rf \"$d\"",
        quote(dir)
    )
}

/// Reads what [`survey_command`] and [`kill_command`] printed.
pub fn parse_seen(stdout: &str) -> Vec<Seen> {
    stdout
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let (kind, tag, pgid) = (w.next()?, w.next()?.to_string(), w.next()?.parse().ok()?);
            Some(match kind {
                "running" => Seen::Running { tag, pgid },
                "killed" => Seen::Killed { tag, pgid },
                "unkillable" => Seen::Unkillable { tag, pgid },
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

    fn sh(line: &str) -> std::process::Output {
        Command::new("/bin/sh")
            .arg("-c")
            .arg(line)
            .output()
            .unwrap()
    }

    #[test]
    fn the_line_runs_unchanged_with_its_stdin_status_and_output() {
        let dir = tempfile::tempdir().unwrap();
        let reg = dir.path().join("reg").display().to_string();
        let line = "read a; echo \"got $a\"; echo err >&2; exit 7";
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg(supervised(line, &reg, "c1", Interpreter::Sh))
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
        assert_eq!(
            std::fs::read_to_string(format!("{reg}/c1.rc")).unwrap(),
            "7\n"
        );
        assert!(!std::path::Path::new(&format!("{reg}/c1.pid")).exists());
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
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg(supervised(&line, &reg, "c1", Interpreter::Sh))
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let seen = loop {
            let seen = parse_seen(&String::from_utf8_lossy(&sh(&survey_command(&reg)).stdout));
            if !seen.is_empty() || Instant::now() > deadline {
                break seen;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(
            matches!(&seen[..], [Seen::Running { tag, .. }] if tag == "c1"),
            "{seen:?}"
        );
        assert_eq!(
            String::from_utf8_lossy(&sh(&clear_command(&reg)).stdout),
            "busy\n"
        );
        let killed = parse_seen(&String::from_utf8_lossy(&sh(&kill_command(&reg, 3)).stdout));
        assert!(
            matches!(&killed[..], [Seen::Killed { tag, .. }] if tag == "c1"),
            "{killed:?}"
        );
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(143), "TERM, reported as the shell does");
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
