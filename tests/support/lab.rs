//! An operator's directory for whole runs of the `opsrun` binary against the sshd
//! fleet, and what a finished run left: exit code, stdout, journal, log.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::sshd::{SshFleet, TEST_USER};

pub const OPSRUN: &str = env!("CARGO_BIN_EXE_opsrun");

// ---------------------------------------------------------------------------------
// An operator's directory and how to run opsrun in it

pub struct Lab {
    dir: tempfile::TempDir,
}

impl Lab {
    pub fn new() -> Lab {
        let dir = tempfile::Builder::new()
            .prefix("opsrun-lab-")
            .tempdir()
            .unwrap();
        fs::create_dir(dir.path().join("runbooks")).unwrap();
        fs::create_dir(dir.path().join("inventories")).unwrap();
        Lab { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let path = self.path().join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, text).unwrap();
        path
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(OPSRUN);
        c.args(args)
            .current_dir(self.path())
            .env("NO_COLOR", "1")
            .env("OPSRUN_OPERATOR", "tester")
            .env("OPSRUN_SIGN_KEY", super::library::sign_key(self.path()))
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
    pub fn run(&self, args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Run {
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

    /// `opsrun runs` as rows of named cells, cut at the header's column positions (so
    /// the columns must line up). Positions are display columns: a CJK character
    /// takes two, as in a terminal.
    pub fn runs_table(&self) -> Vec<BTreeMap<String, String>> {
        self.runs_table_with(&[])
    }

    /// `runs_table`, with `env` set for `opsrun runs` (a time zone, ...).
    pub fn runs_table_with(&self, env: &[(&str, &str)]) -> Vec<BTreeMap<String, String>> {
        let out = self
            .command(&["runs"])
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        let mut lines = text.lines();
        let header = lines.next().unwrap();
        let names = [
            "id", "runbook", "env", "ticket", "operator", "result", "start", "duration",
        ];
        let cols: Vec<usize> = names
            .iter()
            .map(|n| {
                header
                    .find(&format!("{n} "))
                    .or_else(|| header.rfind(n))
                    .unwrap_or_else(|| panic!("no `{n}` column in {header:?}"))
            })
            .collect();
        assert!(header.is_ascii(), "{header:?}");
        assert!(cols.windows(2).all(|w| w[0] < w[1]), "{header:?}");
        lines
            .map(|l| {
                // The line's characters with the display column each starts at.
                let mut at = 0;
                let chars: Vec<(usize, char)> = l
                    .chars()
                    .map(|c| {
                        let start = at;
                        at += console::measure_text_width(&c.to_string());
                        (start, c)
                    })
                    .collect();
                let width = at;
                let slice = |from: usize, to: usize| -> String {
                    chars
                        .iter()
                        .filter(|(c, _)| *c >= from && *c < to)
                        .map(|(_, ch)| *ch)
                        .collect()
                };
                names
                    .iter()
                    .enumerate()
                    .map(|(k, n)| {
                        let end = cols.get(k + 1).copied().unwrap_or(width).min(width);
                        // A wide character must not straddle a column start.
                        assert!(
                            chars.iter().all(|(c, ch)| *c >= cols[k]
                                || *c + console::measure_text_width(&ch.to_string()) <= cols[k]),
                            "column `{n}` does not start at a character boundary in {l:?}"
                        );
                        let cell = slice(cols[k], end);
                        // A cell must end before the next column starts.
                        if k + 1 < cols.len() {
                            assert!(
                                cell.ends_with(' '),
                                "column `{n}` overflows in {l:?} under {header:?}"
                            );
                        }
                        (n.to_string(), cell.trim().to_string())
                    })
                    .collect()
            })
            .collect()
    }
}

/// A finished `opsrun` run: its output and its record on disk.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub log: PathBuf,
}

impl Run {
    pub fn new(out: Output, cwd: &Path) -> Run {
        Run::from_parts(
            out.status.code().expect("opsrun was killed by a signal"),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            cwd,
        )
    }

    pub fn from_parts(code: i32, stdout: String, stderr: String, cwd: &Path) -> Run {
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

    /// The run id: the name of its run directory.
    pub fn id(&self) -> String {
        self.dir()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }

    pub fn dir(&self) -> &Path {
        self.log.parent().unwrap()
    }

    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code,
            code,
            "exit code\nstderr:\n{}\njournal:\n{}",
            self.stderr,
            fs::read_to_string(self.dir().join("journal.jsonl")).unwrap_or_default()
        );
        self
    }

    pub fn journal(&self) -> Vec<Value> {
        fs::read_to_string(self.dir().join("journal.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).expect("journal line is JSON"))
            .collect()
    }

    pub fn events(&self, kind: &str) -> Vec<Value> {
        self.journal()
            .into_iter()
            .filter(|e| e["event"] == kind)
            .collect()
    }

    pub fn outcome(&self) -> (String, String) {
        let fin = self.events("run_finished");
        assert_eq!(fin.len(), 1, "one run_finished event");
        (
            fin[0]["outcome"].as_str().unwrap().to_string(),
            fin[0]["message"].as_str().unwrap().to_string(),
        )
    }

    /// The forward `target_finished` event of `step` on `host`.
    pub fn target(&self, step: &str, host: &str) -> Value {
        let found: Vec<Value> = self
            .events("target_finished")
            .into_iter()
            .filter(|e| e["step"] == step && e["host"] == host && e["phase"] == "forward")
            .collect();
        assert_eq!(found.len(), 1, "target_finished for {step} on {host}");
        found.into_iter().next().unwrap()
    }

    pub fn status(&self, step: &str, host: &str) -> String {
        self.target(step, host)["status"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// The full saved stdout of `step` on `host`.
    pub fn saved_stdout(&self, step: &str, host: &str) -> String {
        let t = self.target(step, host);
        let file = t["stdout"]["file"]
            .as_str()
            .unwrap_or_else(|| panic!("no saved stdout for {step} on {host}: {t}"));
        fs::read_to_string(self.dir().join(file)).unwrap()
    }

    pub fn log_md(&self) -> String {
        fs::read_to_string(&self.log).unwrap()
    }

    /// Everything the run showed or recorded: stdout, stderr and every file of the run dir.
    pub fn everything(&self) -> String {
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

pub fn yaml_str(s: impl AsRef<str>) -> String {
    serde_json::to_string(s.as_ref()).unwrap()
}

/// `inventories/lab.yaml` reaching fleet hosts as the login user, `as:` through sudo.
pub fn ssh_inventory(fleet: &SshFleet, confirm: &str, groups: &str) -> String {
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
pub fn host_entry(fleet: &SshFleet, i: usize, name: &str, extra_vars: &str) -> String {
    format!(
        "      {name}: {{ address: {}, port: {}, vars: {{ work: {}{extra_vars} }} }}\n",
        fleet.address(i),
        fleet.port(i),
        yaml_str(fleet.work_dir(i).to_string_lossy()),
    )
}

/// Group `app` with every fleet host, named `web1`, `web2`, …
pub fn app_group(fleet: &SshFleet) -> String {
    let mut g = String::from("  app:\n    hosts:\n");
    for i in 0..fleet.len() {
        g.push_str(&host_entry(fleet, i, &format!("web{}", i + 1), ""));
    }
    g
}

// ---------------------------------------------------------------------------------
// Processes on the (local) hosts

/// Pids whose command line contains `needle` (argv joined with spaces).
pub fn pids_with(needle: &str) -> Vec<u32> {
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

/// What the terminal sends for Ctrl-C (VINTR): as an answer, it is sent alone.
pub const CTRL_C: &str = "\x03";

/// Runs `cmd` on a new pseudo-terminal (stdin, stdout and stderr), answering each
/// `(prompt, answer)` in turn once `prompt` has appeared; an answer is a line,
/// except [`CTRL_C`], which the terminal turns into SIGINT for the run. Returns the exit code and
/// everything written to the terminal.
pub fn run_on_pty(cmd: Command, script: &[(&str, &str)]) -> (i32, String) {
    run_on_pty_sized(cmd, 120, script)
}

/// [`run_on_pty`] on a terminal `cols` columns wide.
pub fn run_on_pty_sized(mut cmd: Command, cols: u16, script: &[(&str, &str)]) -> (i32, String) {
    let (mut master, mut slave) = (0, 0);
    let size = libc::winsize {
        ws_row: 40,
        ws_col: cols,
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
                // A newline after ^C would reach the prompt that the ^C opens, as an answer.
                let bytes = if answer.starts_with(CTRL_C) {
                    answer.to_string()
                } else {
                    format!("{answer}\n")
                };
                writer.write_all(bytes.as_bytes()).unwrap();
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
pub fn pty_run(code: i32, screen: &str, cwd: &Path) -> Run {
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
