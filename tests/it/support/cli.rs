//! The one way integration tests run the `opsrun` binary.
//!
//! Modelled on casey/just's `Test` builder and cargo's `cargo-test-support`:
//! describe the files, arguments, environment and stdin, state what must come
//! out, then `run()`. Every spawn of the binary goes through [`Test::command`]
//! (the pty runner in `pty.rs` takes that same `Command`), so every test sees
//! one environment policy, set in [`Test::command`]:
//!
//! - every `OPSRUN_*` variable, `SSH_AUTH_SOCK` and `CLICOLOR_FORCE` of the
//!   developer's shell is removed, so their settings and agent never leak into
//!   expectations;
//! - `HOME` is a private directory, so no real key or config of the machine is
//!   picked up;
//! - the operator is [`OPERATOR`] and colour is off;
//! - `OPSRUN_SIGN_KEY` is a key made for this test (runs without a key are
//!   refused), unless the test asks for none with [`Test::no_sign_key`].
//!
//! A test that needs something else says so with [`Test::env`] / [`Test::env_remove`],
//! which apply after the policy.

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;
use tempfile::TempDir;

/// The binary under test. Nothing else in the test suite names it.
const BIN: &str = env!("CARGO_BIN_EXE_opsrun");

/// The operator every run is attributed to (`OPSRUN_OPERATOR`).
pub const OPERATOR: &str = "tester";

/// Where a test's runs sign their logs.
#[derive(Clone, Debug)]
enum SignKey {
    /// A key made for this test in its private home (the default).
    PerTest,
    /// A key the caller owns (one operator directory shared by several runs).
    At(PathBuf),
    /// No `OPSRUN_SIGN_KEY`: for tests of key discovery and of the refusal to run unsigned.
    None,
}

/// A private `HOME` and a signing key for one test: `ROOT/home` and `ROOT/sign-key`.
///
/// The key lies outside `home/.ssh`, so tests of default key discovery in
/// `~/.ssh` see only the keys they put there.
pub struct Home {
    dir: TempDir,
}

impl Default for Home {
    fn default() -> Self {
        Self::new()
    }
}

impl Home {
    pub fn new() -> Home {
        let dir = tempfile::Builder::new()
            .prefix("opsrun-home-")
            .tempdir()
            .expect("create home dir");
        fs::create_dir_all(dir.path().join("home/.ssh")).expect("mkdir home/.ssh");
        Home { dir }
    }

    /// The directory `HOME` points at.
    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    /// This test's signing key, made on first use (ssh-keygen takes a few ms; most
    /// tests that never sign still get one, which keeps the policy uniform).
    pub fn sign_key(&self) -> PathBuf {
        let key = self.dir.path().join("sign-key");
        if !key.exists() {
            keygen(&key, "ed25519", "", "opsrun-test");
        }
        key
    }
}

/// `ssh-keygen -t KIND -N PASSPHRASE -C COMMENT -f PATH`.
pub fn keygen(path: &Path, kind: &str, passphrase: &str, comment: &str) {
    let mut args = vec!["-q", "-t", kind, "-N", passphrase, "-C", comment];
    if kind == "rsa" {
        args.extend(["-b", "2048"]);
    }
    let st = Command::new("ssh-keygen")
        .args(&args)
        .arg("-f")
        .arg(path)
        .stdin(Stdio::null())
        .status()
        .expect("ssh-keygen");
    assert!(st.success(), "ssh-keygen -t {kind} failed");
}

#[must_use]
pub struct Test {
    /// The directory the binary runs in: a temp dir of the test's own, or one
    /// the caller owns ([`Test::in_dir`]).
    dir: Dir,
    /// Relative to `dir`.
    current_dir: PathBuf,
    /// This test's own home and key, used unless the test names others.
    own: Home,
    /// `HOME` when not `own`'s.
    home: Option<PathBuf>,
    sign_key: SignKey,
    /// A bash script to run instead of the binary, with the binary first on PATH.
    shell: Option<String>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    env_remove: Vec<String>,
    stdin: Option<String>,
    expected_status: i32,
    expected_stdout: Option<String>,
    expected_stderr: Option<String>,
    stdout_contains: Vec<String>,
    stderr_contains: Vec<String>,
}

enum Dir {
    Owned(TempDir),
    Borrowed(PathBuf),
}

impl Default for Test {
    fn default() -> Self {
        Self::new()
    }
}

impl Test {
    /// A test in a fresh temp dir of its own, so `runbooks/` and `inventories/`
    /// lookups see only the files the test wrote.
    pub fn new() -> Test {
        Test::with_dir(Dir::Owned(
            tempfile::Builder::new()
                .prefix("opsrun-test")
                .tempdir()
                .expect("create temp dir"),
        ))
    }

    /// A test run in `dir`, which the caller owns (an operator directory several runs share).
    pub fn in_dir(dir: impl AsRef<Path>) -> Test {
        Test::with_dir(Dir::Borrowed(dir.as_ref().to_path_buf()))
    }

    fn with_dir(dir: Dir) -> Test {
        Test {
            dir,
            current_dir: PathBuf::new(),
            own: Home::new(),
            home: None,
            sign_key: SignKey::PerTest,
            shell: None,
            args: Vec::new(),
            env: Vec::new(),
            env_remove: Vec::new(),
            stdin: None,
            expected_status: 0,
            expected_stdout: None,
            expected_stderr: None,
            stdout_contains: Vec::new(),
            stderr_contains: Vec::new(),
        }
    }

    pub fn path(&self) -> &Path {
        match &self.dir {
            Dir::Owned(t) => t.path(),
            Dir::Borrowed(p) => p,
        }
    }

    /// Uses `home` (owned by the caller) as `HOME` and its key, instead of a fresh one.
    pub fn home(mut self, home: &Home) -> Test {
        self.home = Some(home.home());
        self.sign_key = SignKey::At(home.sign_key());
        self
    }

    /// Uses `dir` as `HOME`, keeping the signing key policy.
    pub fn home_dir(mut self, dir: impl AsRef<Path>) -> Test {
        self.home = Some(dir.as_ref().to_path_buf());
        self
    }

    /// Signs with the key at `path`.
    pub fn sign_key(mut self, path: impl AsRef<Path>) -> Test {
        self.sign_key = SignKey::At(path.as_ref().to_path_buf());
        self
    }

    /// Sets no `OPSRUN_SIGN_KEY`.
    pub fn no_sign_key(mut self) -> Test {
        self.sign_key = SignKey::None;
        self
    }

    /// Runs `bash -c SCRIPT` instead of the binary, with `opsrun` (a link to the
    /// binary in `bin/` of the test dir) first on PATH: how the README tour runs
    /// its commands as written, under the same environment policy.
    pub fn shell(mut self, script: impl Into<String>) -> Test {
        self.shell = Some(script.into());
        self
    }

    /// Writes a file under the test dir, creating parent directories.
    pub fn write(self, path: impl AsRef<Path>, contents: impl AsRef<[u8]>) -> Test {
        let full = self.path().join(path.as_ref());
        if let Some(parent) = full.parent() {
            fs::create_dir_all(parent).expect("create parent dirs");
        }
        fs::write(&full, contents).expect("write test file");
        self
    }

    // The builder's vocabulary, as in just's: no test lays out an empty directory today.
    #[allow(dead_code)]
    pub fn create_dir(self, path: impl AsRef<Path>) -> Test {
        fs::create_dir_all(self.path().join(path)).expect("create dir");
        self
    }

    /// Runs in a subdirectory of the test dir instead of its root.
    // No test runs below its root today; `command` honours it.
    #[allow(dead_code)]
    pub fn current_dir(mut self, path: impl AsRef<Path>) -> Test {
        self.current_dir = path.as_ref().to_path_buf();
        self
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Test {
        self.args.push(arg.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Test
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, key: impl Into<String>, value: impl AsRef<std::ffi::OsStr>) -> Test {
        self.env
            .push((key.into(), value.as_ref().to_string_lossy().into_owned()));
        self
    }

    pub fn envs<'a>(mut self, vars: impl IntoIterator<Item = &'a (&'a str, &'a str)>) -> Test {
        for (k, v) in vars {
            self.env.push((k.to_string(), v.to_string()));
        }
        self
    }

    pub fn env_remove(mut self, key: impl Into<String>) -> Test {
        self.env_remove.push(key.into());
        self
    }

    pub fn stdin(mut self, text: impl Into<String>) -> Test {
        self.stdin = Some(text.into());
        self
    }

    pub fn expect_status(mut self, code: i32) -> Test {
        self.expected_status = code;
        self
    }

    pub fn expect_stdout(mut self, text: impl Into<String>) -> Test {
        self.expected_stdout = Some(text.into());
        self
    }

    pub fn expect_stderr(mut self, text: impl Into<String>) -> Test {
        self.expected_stderr = Some(text.into());
        self
    }

    // The pair of `stderr_contains`; unused today.
    #[allow(dead_code)]
    pub fn stdout_contains(mut self, text: impl Into<String>) -> Test {
        self.stdout_contains.push(text.into());
        self
    }

    pub fn stderr_contains(mut self, text: impl Into<String>) -> Test {
        self.stderr_contains.push(text.into());
        self
    }

    /// The binary with the environment policy applied, ready to spawn: the only
    /// `Command` of the binary in the suite. Stdio is left to the caller; the
    /// returned command borrows this test's directories, so keep the `Test` alive.
    pub fn command(&self) -> Command {
        let mut cmd = match &self.shell {
            None => Command::new(BIN),
            Some(script) => {
                let bin = self.path().join("bin");
                if !bin.join("opsrun").exists() {
                    fs::create_dir_all(&bin).expect("mkdir bin");
                    std::os::unix::fs::symlink(BIN, bin.join("opsrun")).expect("link opsrun");
                }
                let mut c = Command::new("bash");
                c.args(["--norc", "--noprofile", "-c", script]).env(
                    "PATH",
                    format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
                );
                c
            }
        };
        cmd.args(&self.args)
            .current_dir(self.path().join(&self.current_dir));
        // The developer's own settings and agent must not leak into expectations.
        for (k, _) in std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v)))
            .filter(|(k, _)| {
                k.starts_with("OPSRUN_") || k == "SSH_AUTH_SOCK" || k == "CLICOLOR_FORCE"
            })
        {
            cmd.env_remove(k);
        }
        let home = self.home.clone().unwrap_or_else(|| self.own.home());
        cmd.env("HOME", home)
            .env("NO_COLOR", "1")
            .env("OPSRUN_OPERATOR", OPERATOR);
        match &self.sign_key {
            SignKey::PerTest => {
                cmd.env("OPSRUN_SIGN_KEY", self.own.sign_key());
            }
            SignKey::At(p) => {
                cmd.env("OPSRUN_SIGN_KEY", p);
            }
            SignKey::None => {}
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        for k in &self.env_remove {
            cmd.env_remove(k);
        }
        cmd
    }

    /// Runs the binary without checking anything but panics.
    pub fn output(self) -> Run {
        let mut cmd = self.command();
        cmd.stdin(if self.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn opsrun");
        if let Some(text) = &self.stdin {
            let mut pipe = child.stdin.take().expect("stdin pipe");
            // The binary may exit without reading stdin; a broken pipe is not a test failure.
            let _ = pipe.write_all(text.as_bytes());
        }
        let out = child.wait_with_output().expect("wait for opsrun");
        let cwd = self.path().join(&self.current_dir);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let run = Run {
            log: log_path(&stdout, &cwd).unwrap_or_default(),
            stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            // A signal leaves no code; -1 never matches an expectation by accident.
            code: out.status.code().unwrap_or(-1),
            args: self.args.clone(),
            cwd,
            _keep: Some(Keep {
                _dir: self.dir,
                _home: self.own,
            }),
        };
        assert!(
            !run.stderr.contains("panicked"),
            "opsrun panicked (args {:?}):\n{}",
            run.args,
            run.stderr
        );
        run
    }

    /// Runs the binary and checks every expectation; returns the run for further checks.
    #[track_caller]
    pub fn run(self) -> Run {
        let expected_status = self.expected_status;
        let expected_stdout = self.expected_stdout.clone();
        let expected_stderr = self.expected_stderr.clone();
        let stdout_contains = self.stdout_contains.clone();
        let stderr_contains = self.stderr_contains.clone();
        let output = self.output();
        let mut failures = String::new();
        if output.code != expected_status {
            let _ = writeln!(
                failures,
                "exit status: expected {expected_status}, got {}",
                output.code
            );
        }
        if let Some(want) = &expected_stdout {
            if &output.stdout != want {
                let _ = writeln!(failures, "stdout differs:\n{}", diff(want, &output.stdout));
            }
        }
        if let Some(want) = &expected_stderr {
            if &output.stderr != want {
                let _ = writeln!(failures, "stderr differs:\n{}", diff(want, &output.stderr));
            }
        }
        for s in &stdout_contains {
            if !output.stdout.contains(s.as_str()) {
                let _ = writeln!(failures, "stdout does not contain {s:?}");
            }
        }
        for s in &stderr_contains {
            if !output.stderr.contains(s.as_str()) {
                let _ = writeln!(failures, "stderr does not contain {s:?}");
            }
        }
        if !failures.is_empty() {
            panic!(
                "opsrun {:?}\n{failures}\n--- full stdout ---\n{}\n--- full stderr ---\n{}",
                output.args, output.stdout, output.stderr
            );
        }
        output
    }
}

/// The log a run printed as its last stdout line, when it printed one.
fn log_path(stdout: &str, cwd: &Path) -> Option<PathBuf> {
    let last = stdout.lines().rev().find(|l| !l.trim().is_empty())?.trim();
    let log = cwd.join(last);
    (last.ends_with("log.md") && log.is_file()).then_some(log)
}

/// What one run of the binary did, and what it left on disk. The only output
/// type of the suite: plain CLI tests read `code`/`stdout`/`stderr`, run tests
/// read the journal and log of the run directory through the methods.
pub struct Run {
    /// The exit code; -1 when a signal ended the run.
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub args: Vec<String>,
    /// Where the binary ran.
    pub cwd: PathBuf,
    /// The Markdown log whose path the run printed last; empty for a dry-run or an early error.
    pub log: PathBuf,
    /// The test's directories, removed when the run is dropped.
    _keep: Option<Keep>,
}

/// The directories a run's test made, removed with the run.
struct Keep {
    _dir: Dir,
    _home: Home,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "opsrun {:?}: exit {}\n--- stdout\n{}\n--- stderr\n{}\n--- log.md\n{}",
            self.args,
            self.code,
            self.stdout,
            self.stderr,
            self.log_md()
        )
    }
}

impl Run {
    /// A run whose screen came from a terminal (see `pty.rs`): its log path is found
    /// by its shape, since the live view pads and redraws lines.
    pub fn from_screen(code: i32, screen: &str, cwd: &Path) -> Run {
        let end = screen
            .rfind("/log.md")
            .unwrap_or_else(|| panic!("no log path on the terminal:\n{screen}"))
            + "/log.md".len();
        let start = screen[..end]
            .rfind("runs/")
            .unwrap_or_else(|| panic!("no log path on the terminal:\n{screen}"));
        let last = &screen[start..end];
        Run {
            code,
            stdout: format!("{last}\n"),
            stderr: screen.replace('\r', ""),
            args: Vec::new(),
            cwd: cwd.to_path_buf(),
            log: cwd.join(last),
            _keep: None,
        }
        .expect_log()
    }

    /// The run of a child the test spawned from [`Test::command`] itself (to signal
    /// it, or to run two at once), once it has exited.
    pub fn from_output(out: std::process::Output, cwd: &Path) -> Run {
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        Run {
            log: log_path(&stdout, cwd).unwrap_or_default(),
            stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            code: out.status.code().unwrap_or(-1),
            args: Vec::new(),
            cwd: cwd.to_path_buf(),
            _keep: None,
        }
    }

    /// Asserts the run printed its log's path last (whatever the outcome), under `./runs`.
    #[track_caller]
    pub fn expect_log(self) -> Run {
        let last = self
            .stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_else(|| panic!("no stdout (exit {}); stderr:\n{}", self.code, self.stderr))
            .trim()
            .to_string();
        let log = self.cwd.join(&last);
        assert!(
            last.ends_with("log.md") && log.is_file(),
            "last stdout line is not the log's path: {last:?}\nstderr:\n{}",
            self.stderr
        );
        assert!(
            log.starts_with(self.cwd.join("runs")),
            "log outside ./runs: {}",
            log.display()
        );
        assert!(self.code >= 0, "opsrun was killed by a signal");
        Run { log, ..self }
    }

    /// The test directory (where the run's files are, for plain CLI tests).
    pub fn path(&self) -> &Path {
        &self.cwd
    }

    pub fn read(&self, path: impl AsRef<Path>) -> String {
        let p = self.cwd.join(path);
        fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
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
        self.log.parent().expect("a run with a log")
    }

    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code,
            code,
            "exit code\nstdout:\n{}\nstderr:\n{}\njournal:\n{}",
            self.stdout,
            self.stderr,
            self.log
                .parent()
                .and_then(|d| fs::read_to_string(d.join("journal.jsonl")).ok())
                .unwrap_or_default()
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

    /// The status of `step` on `host` in the journal.
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

    /// The Markdown log, or "" when the run wrote none (a dry-run, an early error).
    pub fn log_md(&self) -> String {
        if self.log.as_os_str().is_empty() {
            return String::new();
        }
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

/// A line diff of expected vs actual, `-` for expected-only and `+` for actual-only.
///
/// Trailing whitespace and a missing final newline are made visible, since
/// those are the differences a plain side-by-side print hides.
pub fn diff(expected: &str, actual: &str) -> String {
    let a: Vec<&str> = expected.split('\n').collect();
    let b: Vec<&str> = actual.split('\n').collect();
    // LCS table; the texts compared here are a few dozen lines.
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let show = |l: &str| {
        let trimmed = l.trim_end();
        if trimmed.len() == l.len() {
            l.to_string()
        } else {
            format!("{trimmed}{}⏎", "·".repeat(l.len() - trimmed.len()))
        }
    };
    let mut out = String::from("(- expected, + actual)\n");
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            let _ = writeln!(out, "  {}", show(a[i]));
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            let _ = writeln!(out, "- {}", show(a[i]));
            i += 1;
        } else {
            let _ = writeln!(out, "+ {}", show(b[j]));
            j += 1;
        }
    }
    if expected.ends_with('\n') != actual.ends_with('\n') {
        let _ = writeln!(
            out,
            "(final newline: expected {}, actual {})",
            expected.ends_with('\n'),
            actual.ends_with('\n')
        );
    }
    out
}
