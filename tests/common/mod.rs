//! Integration-test harness: run the `opsrun` binary in a throwaway directory.
//!
//! Modelled on casey/just's `Test` builder: describe the files, arguments,
//! environment and stdin, state what must come out, then `run()`. Each test
//! gets its own temp dir as the current directory, so `runbooks/` and
//! `inventories/` lookups see only the files the test wrote.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use tempfile::TempDir;

pub const BIN: &str = env!("CARGO_BIN_EXE_opsrun");

#[must_use]
pub struct Test {
    tempdir: TempDir,
    /// Relative to the temp dir.
    current_dir: PathBuf,
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

impl Default for Test {
    fn default() -> Self {
        Self::new()
    }
}

impl Test {
    pub fn new() -> Test {
        Test {
            tempdir: tempfile::Builder::new()
                .prefix("opsrun-test")
                .tempdir()
                .expect("create temp dir"),
            current_dir: PathBuf::new(),
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
        self.tempdir.path()
    }

    /// Writes a file under the temp dir, creating parent directories.
    pub fn write(self, path: impl AsRef<Path>, contents: impl AsRef<[u8]>) -> Test {
        let full = self.tempdir.path().join(path.as_ref());
        if let Some(parent) = full.parent() {
            std::fs::create_dir_all(parent).expect("create parent dirs");
        }
        std::fs::write(&full, contents).expect("write test file");
        self
    }

    pub fn create_dir(self, path: impl AsRef<Path>) -> Test {
        std::fs::create_dir_all(self.tempdir.path().join(path)).expect("create dir");
        self
    }

    /// Runs in a subdirectory of the temp dir instead of its root.
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

    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Test {
        self.env.push((key.into(), value.into()));
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

    pub fn stdout_contains(mut self, text: impl Into<String>) -> Test {
        self.stdout_contains.push(text.into());
        self
    }

    pub fn stderr_contains(mut self, text: impl Into<String>) -> Test {
        self.stderr_contains.push(text.into());
        self
    }

    /// Runs the binary without checking anything but panics.
    pub fn output(self) -> Output {
        let dir = self.tempdir.path().join(&self.current_dir);
        let mut cmd = Command::new(BIN);
        cmd.args(&self.args).current_dir(&dir);
        // The developer's own settings must not leak into expectations.
        for (k, _) in std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v)))
            .filter(|(k, _)| k.starts_with("OPSRUN_") || k == "CLICOLOR_FORCE")
        {
            cmd.env_remove(k);
        }
        cmd.env("NO_COLOR", "1").env("OPSRUN_OPERATOR", "tester");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        for k in &self.env_remove {
            cmd.env_remove(k);
        }
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
        let output = Output {
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            // A signal leaves no code; -1 never matches an expectation by accident.
            status: out.status.code().unwrap_or(-1),
            args: self.args.clone(),
            tempdir: self.tempdir,
        };
        assert!(
            !output.stderr.contains("panicked"),
            "opsrun panicked (args {:?}):\n{}",
            output.args,
            output.stderr
        );
        output
    }

    /// Runs the binary and checks every expectation; returns the output for further checks.
    #[track_caller]
    pub fn run(self) -> Output {
        let expected_status = self.expected_status;
        let expected_stdout = self.expected_stdout.clone();
        let expected_stderr = self.expected_stderr.clone();
        let stdout_contains = self.stdout_contains.clone();
        let stderr_contains = self.stderr_contains.clone();
        let output = self.output();
        let mut failures = String::new();
        if output.status != expected_status {
            let _ = writeln!(
                failures,
                "exit status: expected {expected_status}, got {}",
                output.status
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

pub struct Output {
    pub stdout: String,
    pub stderr: String,
    pub status: i32,
    pub args: Vec<String>,
    /// Kept so files the run wrote can be inspected; removed on drop.
    pub tempdir: TempDir,
}

impl Output {
    pub fn path(&self) -> &Path {
        self.tempdir.path()
    }

    pub fn read(&self, path: impl AsRef<Path>) -> String {
        let p = self.tempdir.path().join(path);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
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
