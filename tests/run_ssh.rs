//! Whole runs of the real `opsrun` binary against real OpenSSH servers on loopback
//! (tests/support/sshd.rs): the CLI, gates, engine, journal and Markdown log together.
//! The cross-host order of the Dameng stop (watchers, primary, standby) is tested
//! with the shipped runbook in library_dameng.rs; `as:` here uses the same `dmdba`
//! account and sudo rule (tests/support/library.rs).
//!
//! Every test writes an operator's directory (runbooks/, inventories/) into a temp
//! dir, runs `opsrun` there with NO_COLOR=1 and checks what an operator would: the
//! exit code, the last stdout line (the log's path), the journal, the log, and the
//! hosts themselves.

mod support;

use std::fs;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::library::{ensure_dm_user, sign_key, DM_USER};
use support::sshd::{SshFleet, TEST_USER};

const OPSRUN: &str = env!("CARGO_BIN_EXE_opsrun");

// ---------------------------------------------------------------------------------
// An operator's directory and how to run opsrun in it

struct Lab {
    dir: tempfile::TempDir,
}

impl Lab {
    fn new() -> Lab {
        let dir = tempfile::Builder::new()
            .prefix("opsrun-lab-")
            .tempdir()
            .unwrap();
        fs::create_dir(dir.path().join("runbooks")).unwrap();
        fs::create_dir(dir.path().join("inventories")).unwrap();
        Lab { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn write(&self, rel: &str, text: &str) -> PathBuf {
        let path = self.path().join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, text).unwrap();
        path
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(OPSRUN);
        c.args(args)
            .current_dir(self.path())
            .env("NO_COLOR", "1")
            .env("OPSRUN_OPERATOR", "tester")
            .env("OPSRUN_SIGN_KEY", sign_key(self.path()))
            .env_remove("OPSRUN_SIGN_PASSPHRASE")
            .env_remove("OPSRUN_LOG_DIR");
        for (k, _) in std::env::vars() {
            if k.starts_with("OPSRUN_SECRET_") {
                c.env_remove(k);
            }
        }
        c
    }

    /// Runs opsrun with `stdin` piped in (or /dev/null) and waits for it.
    fn run(&self, args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Run {
        let mut c = self.command(args);
        c.envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let out = match stdin {
            None => c.stdin(Stdio::null()).output().unwrap(),
            Some(text) => {
                let mut child = c.stdin(Stdio::piped()).spawn().unwrap();
                // opsrun may exit without reading (that is the point of some tests).
                let _ = child.stdin.take().unwrap().write_all(text.as_bytes());
                child.wait_with_output().unwrap()
            }
        };
        Run::new(out, self.path())
    }
}

/// A finished `opsrun` run: its output and its record on disk.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
    log: PathBuf,
}

impl Run {
    fn new(out: Output, cwd: &Path) -> Run {
        Run::from_parts(
            out.status.code().expect("opsrun was killed by a signal"),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            cwd,
        )
    }

    fn from_parts(code: i32, stdout: String, stderr: String, cwd: &Path) -> Run {
        // The last line a run prints is its log's path, whatever the outcome.
        let last = stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_else(|| panic!("no stdout (exit {code}); stderr:\n{stderr}"))
            .trim()
            .to_string();
        let log = cwd.join(&last);
        assert!(
            last.ends_with("log.md") && log.is_file(),
            "last stdout line is not the log's path: {last:?}\nstderr:\n{stderr}"
        );
        assert!(
            log.starts_with(cwd.join("runs")),
            "log outside ./runs: {}",
            log.display()
        );
        Run {
            code,
            stdout,
            stderr,
            log,
        }
    }

    fn dir(&self) -> &Path {
        self.log.parent().unwrap()
    }

    fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code,
            code,
            "exit code\nstderr:\n{}\njournal:\n{}",
            self.stderr,
            fs::read_to_string(self.dir().join("journal.jsonl")).unwrap_or_default()
        );
        self
    }

    fn journal(&self) -> Vec<Value> {
        fs::read_to_string(self.dir().join("journal.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).expect("journal line is JSON"))
            .collect()
    }

    fn events(&self, kind: &str) -> Vec<Value> {
        self.journal()
            .into_iter()
            .filter(|e| e["event"] == kind)
            .collect()
    }

    fn outcome(&self) -> (String, String) {
        let fin = self.events("run_finished");
        assert_eq!(fin.len(), 1, "one run_finished event");
        (
            fin[0]["outcome"].as_str().unwrap().to_string(),
            fin[0]["message"].as_str().unwrap().to_string(),
        )
    }

    /// The forward `target_finished` event of `step` on `host`.
    fn target(&self, step: &str, host: &str) -> Value {
        let found: Vec<Value> = self
            .events("target_finished")
            .into_iter()
            .filter(|e| e["step"] == step && e["host"] == host && e["phase"] == "forward")
            .collect();
        assert_eq!(found.len(), 1, "target_finished for {step} on {host}");
        found.into_iter().next().unwrap()
    }

    fn status(&self, step: &str, host: &str) -> String {
        self.target(step, host)["status"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// The full saved stdout of `step` on `host`.
    fn saved_stdout(&self, step: &str, host: &str) -> String {
        let t = self.target(step, host);
        let file = t["stdout"]["file"]
            .as_str()
            .unwrap_or_else(|| panic!("no saved stdout for {step} on {host}: {t}"));
        fs::read_to_string(self.dir().join(file)).unwrap()
    }

    fn log_md(&self) -> String {
        fs::read_to_string(&self.log).unwrap()
    }

    /// Everything the run showed or recorded: stdout, stderr and every file of the run dir.
    fn everything(&self) -> String {
        let mut all = format!("{}\n{}\n", self.stdout, self.stderr);
        let mut stack = vec![self.dir().to_path_buf()];
        while let Some(d) = stack.pop() {
            for entry in fs::read_dir(&d).unwrap().flatten() {
                let p = entry.path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    all.push_str(&String::from_utf8_lossy(&fs::read(&p).unwrap()));
                    all.push('\n');
                }
            }
        }
        all
    }
}

// ---------------------------------------------------------------------------------
// Inventories for the fleet

fn yaml_str(s: impl AsRef<str>) -> String {
    serde_json::to_string(s.as_ref()).unwrap()
}

/// `inventories/lab.yaml` reaching fleet hosts as the login user, `as:` through sudo.
fn ssh_inventory(fleet: &SshFleet, confirm: &str, groups: &str) -> String {
    format!(
        "name: lab\n\
         confirm: {confirm}\n\
         ssh:\n\
         \x20 user: {TEST_USER}\n\
         \x20 become: sudo\n\
         \x20 config_file: {}\n\
         \x20 known_hosts_file: {}\n\
         \x20 connect_timeout: 10s\n\
         groups:\n{groups}",
        yaml_str(fleet.ssh_config().to_string_lossy()),
        yaml_str(fleet.known_hosts().to_string_lossy()),
    )
}

/// One host line for a group's `hosts:`; `work` is the host's writable dir.
fn host_entry(fleet: &SshFleet, i: usize, name: &str, extra_vars: &str) -> String {
    format!(
        "      {name}: {{ address: {}, port: {}, vars: {{ work: {}{extra_vars} }} }}\n",
        fleet.address(i),
        fleet.port(i),
        yaml_str(fleet.work_dir(i).to_string_lossy()),
    )
}

/// Group `app` with every fleet host, named `web1`, `web2`, …
fn app_group(fleet: &SshFleet) -> String {
    let mut g = String::from("  app:\n    hosts:\n");
    for i in 0..fleet.len() {
        g.push_str(&host_entry(fleet, i, &format!("web{}", i + 1), ""));
    }
    g
}

// ---------------------------------------------------------------------------------
// Processes on the (local) hosts

/// Pids whose command line contains `needle` (argv joined with spaces).
fn pids_with(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let line = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if line.contains(needle) {
            pids.push(pid);
        }
    }
    pids
}

// ---------------------------------------------------------------------------------
// A terminal for the interactive gates

/// Runs `cmd` on a new pseudo-terminal (stdin, stdout and stderr), answering each
/// `(prompt, answer)` in turn once `prompt` has appeared. Returns the exit code and
/// everything written to the terminal.
fn run_on_pty(mut cmd: Command, script: &[(&str, &str)]) -> (i32, String) {
    let (mut master, mut slave) = (0, 0);
    let size = libc::winsize {
        ws_row: 40,
        ws_col: 120,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: out-pointers to two ints; name and termios may be null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: openpty returned two fresh descriptors that nothing else owns.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    // SAFETY: fcntl on a valid fd; the child must not inherit the master.
    unsafe {
        libc::fcntl(
            std::os::fd::AsRawFd::as_raw_fd(&master),
            libc::F_SETFD,
            libc::FD_CLOEXEC,
        )
    };
    cmd.stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave));
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            // A session of its own with the pty as controlling terminal, like a login.
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let pid = child.id();
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(child.wait());
    });
    // The Command holds the slave's copies: close them, or the master never sees EOF.
    drop(cmd);

    let mut reader = fs::File::from(master);
    let mut writer = reader.try_clone().unwrap();
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        // EIO once every slave fd is closed: the run is over.
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });

    let deadline = Instant::now() + Duration::from_secs(90);
    let mut seen = String::new();
    let mut from = 0;
    let mut next = 0;
    let mut exited = None;
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(chunk) => seen.push_str(&String::from_utf8_lossy(&chunk)),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                if exited.is_some() {
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if let Some((prompt, answer)) = script.get(next) {
            if let Some(at) = seen[from..].find(prompt) {
                from += at + prompt.len();
                next += 1;
                writer.write_all(format!("{answer}\n").as_bytes()).unwrap();
            }
        }
        if exited.is_none() {
            exited = done_rx.try_recv().ok().map(|r| r.unwrap());
        }
        // After exit, keep reading until the pty drains (ssh masters may hold it briefly).
        if let Some(status) = exited {
            if rx.recv_timeout(Duration::from_millis(300)).is_err() {
                assert_eq!(next, script.len(), "prompts left unanswered:\n{seen}");
                return (status.code().expect("killed by a signal"), seen);
            }
        }
        if Instant::now() > deadline {
            // SAFETY: kill(2) on the pid of our own child, which the waiter thread reaps.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            panic!("opsrun on a pty did not finish; terminal so far:\n{seen}");
        }
    }
    let status = exited.unwrap();
    assert_eq!(next, script.len(), "prompts left unanswered:\n{seen}");
    (status.code().expect("killed by a signal"), seen)
}

/// What a run on a pty printed last: the log's path (terminal lines end with CRLF).
fn pty_run(code: i32, screen: &str, cwd: &Path) -> Run {
    // The live view pads and redraws lines, so the path is found by its shape.
    let end = screen
        .rfind("/log.md")
        .unwrap_or_else(|| panic!("no log path on the terminal:\n{screen}"))
        + "/log.md".len();
    let start = screen[..end]
        .rfind("runs/")
        .unwrap_or_else(|| panic!("no log path on the terminal:\n{screen}"));
    let last = &screen[start..end];
    Run::from_parts(code, format!("{last}\n"), screen.replace('\r', ""), cwd)
}

// ---------------------------------------------------------------------------------
// cwd, env, stdin and secrets

#[test]
fn cwd_env_and_stdin_reach_the_command_and_a_secret_never_shows() {
    let fleet = SshFleet::start(1);
    let secret = "S3cr3t-T0ken-4f9a";
    let lab = Lab::new();
    lab.write(
        "inventories/lab.yaml",
        &ssh_inventory(&fleet, "none", &app_group(&fleet)),
    );
    lab.write(
        "runbooks/context.yaml",
        r#"name: context
hosts: app
params:
  api_token: { secret: true, required: true }
steps:
  - name: Show the context
    cwd: "{{ work }}"
    env: { GREETING: "hello 'world' $HOME;`id`" }
    stdin: |
      first line
      token={{ api_token }}
    run: |
      printf 'pwd=%s\ngreeting=%s\n' "$(pwd)" "$GREETING"
      sed 's/^/stdin: /'

  - name: Keep the token on the host
    stdin: "{{ api_token }}"
    run: umask 077 && cat > {{ work }}/token

  - name: Echo the token in two writes
    stdin: "{{ api_token }}"
    run: |
      t=$(cat)
      printf '%s' "$t" | head -c 8
      sleep 0.5
      printf '%s\n' "$t" | tail -c +9

  - name: Fail with the token on stderr
    stdin: "{{ api_token }}"
    run: echo "cannot use $(cat)" >&2; exit 4

  - name: Never reached
    run: touch {{ work }}/never
"#,
    );
    let run = lab.run(
        &["context", "--env", "lab", "--yes", "-v"],
        &[("OPSRUN_SECRET_API_TOKEN", secret)],
        None,
    );
    run.expect_code(1);
    let (outcome, message) = run.outcome();
    assert_eq!(outcome, "failed");
    assert!(
        message.contains("Fail with the token on stderr"),
        "{message}"
    );

    let work = fleet.work_dir(0);
    let shown = run.saved_stdout("Show the context", "web1");
    assert_eq!(
        shown,
        format!(
            "pwd={}\ngreeting=hello 'world' $HOME;`id`\nstdin: first line\nstdin: token=******\n",
            work.display()
        )
    );
    // The real value reached the host, byte for byte.
    assert_eq!(fs::read_to_string(work.join("token")).unwrap(), secret);
    assert_eq!(
        run.target("Fail with the token on stderr", "web1")["exit_code"],
        4
    );
    assert!(!work.join("never").exists());

    // Nowhere in the terminal, the journal, the log or the saved outputs; not even
    // in pieces when the command writes it in two chunks.
    let everything = run.everything();
    assert!(!everything.contains(secret), "secret leaked");
    let (head, tail) = secret.split_at(8);
    assert!(
        !run.stderr.contains(head) && !run.stderr.contains(tail),
        "secret leaked in pieces on the terminal:\n{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("web1 | stdin: token=******"),
        "-v shows remote output, masked:\n{}",
        run.stderr
    );
    assert!(run.stderr.contains("cannot use ******"), "{}", run.stderr);
}

#[test]
fn as_switches_to_a_second_user_with_sudo_and_captures_drive_when() {
    ensure_dm_user();
    let uid: u32 = String::from_utf8(
        Command::new("id")
            .args(["-u", DM_USER])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .parse()
    .unwrap();
    let fleet = SshFleet::start(1);
    let shared = fleet.root().join("shared");
    fs::create_dir(&shared).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).unwrap();
    let lab = Lab::new();
    lab.write(
        "inventories/lab.yaml",
        &ssh_inventory(&fleet, "none", &app_group(&fleet)),
    );
    lab.write(
        "runbooks/whoami.yaml",
        &format!(
            r#"name: whoami
hosts: app
steps:
  - name: Who am I
    as: {DM_USER}
    cwd: {shared}
    env: {{ PROBE: "from opsrun" }}
    stdin: piped through sudo
    run: |
      printf 'user=%s home=%s pwd=%s probe=%s\n' "$(id -un)" "$HOME" "$(pwd)" "$PROBE"
      cat > as-probe.txt
    capture: {{ name: who, regex: 'user=(\S+)' }}

  - name: Use the capture
    when: who == '{DM_USER}'
    run: echo "{{{{ who }}}}" > {{{{ work }}}}/who.txt

  - name: Skipped by the capture
    when: who == 'root'
    run: touch {{{{ work }}}}/never
"#,
            shared = yaml_str(shared.to_string_lossy()),
        ),
    );
    let run = lab.run(&["whoami", "--env", "lab", "--yes"], &[], None);
    run.expect_code(0);

    let home = String::from_utf8(
        Command::new("sh")
            .args(["-c", &format!("getent passwd {DM_USER} | cut -d: -f6")])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert_eq!(
        run.saved_stdout("Who am I", "web1"),
        format!(
            "user={DM_USER} home={} pwd={} probe=from opsrun\n",
            home.trim(),
            shared.display()
        )
    );
    let probe = shared.join("as-probe.txt");
    assert_eq!(fs::read_to_string(&probe).unwrap(), "piped through sudo");
    assert_eq!(
        fs::metadata(&probe).unwrap().uid(),
        uid,
        "file owned by the second user"
    );
    let work = fleet.work_dir(0);
    assert_eq!(
        fs::read_to_string(work.join("who.txt")).unwrap().trim(),
        DM_USER
    );
    assert_eq!(run.status("Skipped by the capture", "web1"), "skipped");
    assert!(!work.join("never").exists());
    // The log shows the command as the operator would type it, with the sudo wrapper.
    assert!(run.log_md().contains(&format!("sudo -n -H -u {DM_USER}")));
}

// ---------------------------------------------------------------------------------
// Timeouts

#[test]
fn hung_command_is_killed_at_its_timeout_and_gone_from_the_host() {
    let fleet = SshFleet::start(1);
    let lab = Lab::new();
    lab.write(
        "inventories/lab.yaml",
        &ssh_inventory(&fleet, "none", &app_group(&fleet)),
    );
    // Unusual sleep lengths mark this test's processes in /proc; one runs in the
    // background, to show the whole process group dies, not just the shell.
    let base = 7_000_000 + std::process::id() % 1_000_000;
    let (bg, fg) = (format!("sleep {}1", base), format!("sleep {}2", base));
    lab.write(
        "runbooks/hang.yaml",
        &format!(
            "name: hang\nhosts: app\nsteps:\n\
             \x20 - name: Hang\n    run: {bg} & {fg}; echo finished\n    timeout: 2s\n\
             \x20 - name: After\n    run: touch {{{{ work }}}}/after\n"
        ),
    );
    let started = Instant::now();
    let mut child = lab
        .command(&["hang", "--env", "lab", "--yes"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // It really ran on the host before the deadline...
    let mut seen = false;
    while started.elapsed() < Duration::from_secs(15) && child.try_wait().unwrap().is_none() {
        if !pids_with(&fg).is_empty() && !pids_with(&bg).is_empty() {
            seen = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let took = started.elapsed();
    let run = Run::new(out, lab.path());
    assert!(seen, "the hanging command never showed up:\n{}", run.stderr);
    run.expect_code(1);
    // ...and the control side did not wait for the 20 s grace.
    assert!(took < Duration::from_secs(15), "took {took:?}");
    let t = run.target("Hang", "web1");
    assert_eq!(t["status"], "timed_out", "{t}");
    assert!(
        t["reason"].as_str().unwrap().contains("timed out after 2s"),
        "{t}"
    );
    assert!(t["millis"].as_u64().unwrap() >= 2000, "{t}");
    assert!(!fleet.work_dir(0).join("after").exists());
    // ...and after the run nothing of it is left on the host.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left: Vec<u32> = pids_with(&fg).into_iter().chain(pids_with(&bg)).collect();
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "processes survived the timeout: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(run.log_md().contains("timed out after 2s"));
}

// ---------------------------------------------------------------------------------
// Host keys

const TOUCH: &str =
    "name: touch\nhosts: app\nsteps:\n  - name: Touch\n    run: touch {{ work }}/ran\n";

fn assert_nothing_ran(fleet: &SshFleet) {
    for i in 0..fleet.len() {
        assert!(
            !fleet.work_dir(i).join("ran").exists(),
            "a step ran on host {i} although a host was refused"
        );
    }
}

#[test]
fn unknown_host_key_is_refused_before_anything_runs() {
    let fleet = SshFleet::start(2);
    fleet.forget_host_key(1);
    let known_before = fs::read(fleet.known_hosts()).unwrap();
    let lab = Lab::new();
    lab.write(
        "inventories/lab.yaml",
        &ssh_inventory(&fleet, "none", &app_group(&fleet)),
    );
    lab.write("runbooks/touch.yaml", TOUCH);
    let run = lab.run(&["touch", "--env", "lab", "--yes"], &[], None);
    run.expect_code(1);
    let keyscan = format!("ssh-keyscan -p {} {}", fleet.port(1), fleet.address(1));
    assert!(
        run.stderr.contains("web2") && run.stderr.contains(&keyscan),
        "names the host and how to add its key:\n{}",
        run.stderr
    );
    let failed = run.events("connect_failed");
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["host"], "web2");
    let (outcome, message) = run.outcome();
    assert_eq!(outcome, "failed");
    assert!(message.contains("nothing was changed"), "{message}");
    assert!(run.events("target_started").is_empty());
    assert_nothing_ran(&fleet);
    assert_eq!(
        fs::read(fleet.known_hosts()).unwrap(),
        known_before,
        "the unknown key was added to known_hosts"
    );
}

#[test]
fn changed_host_key_is_refused() {
    let mut fleet = SshFleet::start(1);
    fleet.regenerate_host_key(0);
    let known_before = fs::read(fleet.known_hosts()).unwrap();
    let lab = Lab::new();
    lab.write(
        "inventories/lab.yaml",
        &ssh_inventory(&fleet, "none", &app_group(&fleet)),
    );
    lab.write("runbooks/touch.yaml", TOUCH);
    let run = lab.run(&["touch", "--env", "lab", "--yes"], &[], None);
    run.expect_code(1);
    assert!(
        run.stderr.contains("web1") && run.stderr.contains("ssh-keygen -R"),
        "names the host and how to remove the old key:\n{}",
        run.stderr
    );
    assert_eq!(run.events("connect_failed").len(), 1);
    assert_eq!(run.outcome().0, "failed");
    assert_nothing_ran(&fleet);
    assert_eq!(fs::read(fleet.known_hosts()).unwrap(), known_before);
}

// ---------------------------------------------------------------------------------
// Gates

const GATED: &str = r#"name: gated
hosts: app
steps:
  - name: Before the gate
    run: touch {{ work }}/before
  - name: Behind the gate
    confirm: "Touch the second file on {{ env }}?"
    run: touch {{ work }}/behind
"#;

fn gate_lab(fleet: &SshFleet, confirm: &str) -> Lab {
    let lab = Lab::new();
    lab.write(
        "inventories/lab.yaml",
        &ssh_inventory(fleet, confirm, &app_group(fleet)),
    );
    lab.write("runbooks/gated.yaml", GATED);
    lab
}

fn gates(run: &Run) -> Vec<(String, bool)> {
    run.events("gate")
        .iter()
        .map(|g| {
            (
                g["answer"].as_str().unwrap().to_string(),
                g["confirmed"].as_bool().unwrap(),
            )
        })
        .collect()
}

#[test]
fn gate_yes_flag_answers_every_gate() {
    let fleet = SshFleet::start(1);
    let lab = gate_lab(&fleet, "yes");
    let run = lab.run(&["gated", "--env", "lab", "--yes"], &[], None);
    run.expect_code(0);
    assert_eq!(
        gates(&run),
        vec![("--yes".to_string(), true), ("--yes".to_string(), true)]
    );
    assert!(fleet.work_dir(0).join("before").exists());
    assert!(fleet.work_dir(0).join("behind").exists());
}

#[test]
fn gate_without_a_terminal_refuses_at_once_and_never_reads_the_pipe() {
    let fleet = SshFleet::start(1);
    let lab = gate_lab(&fleet, "yes");
    let started = Instant::now();
    // A "y" waiting on a pipe must not count as an answer.
    let run = lab.run(&["gated", "--env", "lab"], &[], Some("y\ny\n"));
    run.expect_code(3);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(run.stderr.contains("not a terminal"), "{}", run.stderr);
    assert_eq!(run.outcome().0, "not_confirmed");
    let g = gates(&run);
    assert_eq!(g.len(), 1);
    assert!(!g[0].1);
    assert!(
        run.events("connected").is_empty(),
        "connected before the start gate"
    );
    assert!(!fleet.work_dir(0).join("before").exists());
}

#[test]
fn gate_on_a_terminal_takes_yes_and_no() {
    let fleet = SshFleet::start(1);
    let work = fleet.work_dir(0).to_path_buf();

    // Start gate "y", step gate "n": stops at the step, exit 3.
    let lab = gate_lab(&fleet, "yes");
    let (code, screen) = run_on_pty(
        lab.command(&["gated", "--env", "lab"]),
        &[("[y/N]", "y"), ("[y/N]", "n")],
    );
    let run = pty_run(code, &screen, lab.path());
    run.expect_code(3);
    assert!(
        screen.contains("Touch the second file on lab? [y/N]"),
        "{screen}"
    );
    assert_eq!(
        gates(&run),
        vec![("y".to_string(), true), ("n".to_string(), false)]
    );
    assert_eq!(run.outcome().0, "not_confirmed");
    assert!(work.join("before").exists());
    assert!(!work.join("behind").exists());
    fs::remove_file(work.join("before")).unwrap();

    // Typed start gate: the environment's name, then "yes" at the step.
    let lab = gate_lab(&fleet, "typed");
    let (code, screen) = run_on_pty(
        lab.command(&["gated", "--env", "lab"]),
        &[("Type the environment name", "lab"), ("[y/N]", "yes")],
    );
    let run = pty_run(code, &screen, lab.path());
    run.expect_code(0);
    assert_eq!(
        gates(&run),
        vec![("lab".to_string(), true), ("yes".to_string(), true)]
    );
    assert!(work.join("before").exists());
    assert!(work.join("behind").exists());

    // A wrong name at the typed gate stops everything.
    fs::remove_file(work.join("before")).unwrap();
    let (code, screen) = run_on_pty(
        lab.command(&["gated", "--env", "lab"]),
        &[("Type the environment name", "prod")],
    );
    pty_run(code, &screen, lab.path()).expect_code(3);
    assert!(!work.join("before").exists());
}

// ---------------------------------------------------------------------------------
// An upgrade with backup and rollback on the local demo inventory

const UPGRADE: &str = r#"name: upgrade
description: Upgrade the demo app with backup and rollback
hosts: app
params:
  package: { required: true, description: "app tarball on this machine" }
  version: { required: true, description: "version the package must install" }
vars:
  backup: "{{ root }}/backup-app-{{ run.stamp }}.tar.gz"
steps:
  - name: Stop application
    run: rm -f {{ root }}/app.running
    rollback: touch {{ root }}/app.running
    service: { name: app, state: stopped }
  - name: Back up app
    run: tar czf {{ backup | quote }} --exclude=app/log -C {{ root | quote }} app
    check: gzip -t {{ backup | quote }}
  - name: Upload package
    upload: { src: "{{ package }}", dest: "{{ root }}/", mode: "0644" }
  - name: Apply package
    confirm: "Unpack {{ package | basename }} over the live tree?"
    run: tar xzf {{ root }}/{{ package | basename | quote }} -C {{ root | quote }}
    rollback: |
      rm -rf {{ root }}/app.failed
      mv {{ root }}/app {{ root }}/app.failed
      tar xzf {{ backup | quote }} -C {{ root | quote }}
  - name: Start application
    run: touch {{ root }}/app.running
    rollback: rm -f {{ root }}/app.running
    service: { name: app, state: started }
  - name: Verify
    check: grep -qx {{ version | quote }} {{ root }}/app/VERSION
"#;

fn demo_lab() -> Lab {
    let lab = Lab::new();
    lab.write(
        "inventories/demo.yaml",
        "name: demo\nconfirm: yes\ngroups:\n  app:\n    hosts:\n\
         \x20     sandbox1: { connection: local, vars: { root: ./demo/sandbox1 } }\n\
         \x20     sandbox2: { connection: local, vars: { root: ./demo/sandbox2 } }\n",
    );
    lab.write("runbooks/upgrade.yaml", UPGRADE);
    for s in ["sandbox1", "sandbox2"] {
        lab.write(&format!("demo/{s}/app/VERSION"), "1.0\n");
        lab.write(&format!("demo/{s}/app/log/app.log"), "old log\n");
        lab.write(&format!("demo/{s}/app.running"), "");
    }
    fs::create_dir_all(lab.path().join("packages")).unwrap();
    for (name, version) in [("app-2.0", "2.0"), ("app-2.1", "2.1-broken")] {
        lab.write(
            &format!("build/{name}/app/VERSION"),
            &format!("{version}\n"),
        );
        let st = Command::new("tar")
            .current_dir(lab.path())
            .args(["czf", &format!("packages/{name}.tar.gz"), "-C"])
            .arg(format!("build/{name}"))
            .arg("app")
            .status()
            .unwrap();
        assert!(st.success());
    }
    lab
}

#[test]
fn upgrade_on_the_local_demo_inventory_succeeds_and_rolls_back() {
    let lab = demo_lab();
    let sandbox = |s: &str, f: &str| lab.path().join("demo").join(s).join(f);

    let run = lab.run(
        &[
            "upgrade",
            "--env",
            "demo",
            "--yes",
            "--ticket",
            "CHG-1",
            "-e",
            "package=packages/app-2.0.tar.gz",
            "-e",
            "version=2.0",
        ],
        &[],
        None,
    );
    run.expect_code(0);
    let package = fs::read(lab.path().join("packages/app-2.0.tar.gz")).unwrap();
    let sha: String = {
        use sha2::Digest;
        sha2::Sha256::digest(&package)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    for s in ["sandbox1", "sandbox2"] {
        assert_eq!(
            fs::read_to_string(sandbox(s, "app/VERSION")).unwrap(),
            "2.0\n"
        );
        assert!(sandbox(s, "app.running").exists());
        assert_eq!(
            run.target("Upload package", s)["upload_sha256"],
            sha.as_str()
        );
        // The backup holds the old release and honours the exclude.
        let backup = fs::read_dir(lab.path().join("demo").join(s))
            .unwrap()
            .flatten()
            .find(|e| e.file_name().to_string_lossy().starts_with("backup-app-"))
            .expect("backup exists")
            .path();
        let list = Command::new("tar")
            .arg("tzf")
            .arg(&backup)
            .output()
            .unwrap();
        let list = String::from_utf8_lossy(&list.stdout);
        assert!(list.contains("app/VERSION"), "{list}");
        assert!(!list.contains("app/log/app.log"), "{list}");
    }
    let log = run.log_md();
    assert!(log.contains("CHG-1") && log.contains("upgrade"), "{log}");

    // A package that does not verify: every completed step is undone, newest first.
    let run = lab.run(
        &[
            "upgrade",
            "--env",
            "demo",
            "--yes",
            "-e",
            "package=packages/app-2.1.tar.gz",
            "-e",
            "version=2.1",
        ],
        &[],
        None,
    );
    run.expect_code(1);
    let (outcome, message) = run.outcome();
    assert_eq!(outcome, "failed");
    assert!(
        message.contains("rolled back 3 step(s): restored"),
        "{message}"
    );
    for s in ["sandbox1", "sandbox2"] {
        assert_eq!(
            fs::read_to_string(sandbox(s, "app/VERSION")).unwrap(),
            "2.0\n"
        );
        assert_eq!(
            fs::read_to_string(sandbox(s, "app.failed/VERSION")).unwrap(),
            "2.1-broken\n"
        );
        assert!(
            sandbox(s, "app.running").exists(),
            "restarted by the rollback"
        );
    }
    let undone: Vec<String> = run
        .events("step_started")
        .iter()
        .filter(|e| e["phase"] == "rollback")
        .map(|e| e["step"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        undone,
        ["Start application", "Apply package", "Stop application"]
    );
    assert!(run.log_md().to_lowercase().contains("rollback"));
}
