//! Real runs without SSH: a sandbox with `connection: local` hosts, its own
//! HOME (so no real key of the machine is ever picked up), and the opsrun binary.
//! Included with `#[path]` by the tests that need it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub const OPERATOR: &str = "alice";

pub struct Sandbox {
    pub tmp: tempfile::TempDir,
    /// The two local hosts of group `local`. Named uniquely: host locks of
    /// `connection: local` hosts are machine-wide, keyed by host name, and
    /// tests (of this and other binaries) run at the same time.
    pub hosts: [String; 2],
}

impl Sandbox {
    pub fn new() -> Sandbox {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tag = format!("t{}n{n}", std::process::id());
        let tmp = tempfile::tempdir().expect("tempdir");
        let s = Sandbox {
            tmp,
            hosts: [format!("{tag}-box1"), format!("{tag}-box2")],
        };
        for d in ["home/.ssh", "work/runbooks", "work/inventories", "keys"] {
            std::fs::create_dir_all(s.root().join(d)).expect("mkdir");
        }
        s.write(
            "work/inventories/demo.yaml",
            &format!(
                "name: demo\ngroups:\n  local:\n    hosts:\n      {}: {{ connection: local }}\n      {}: {{ connection: local }}\n",
                s.hosts[0], s.hosts[1]
            ),
        );
        s
    }

    pub fn root(&self) -> &Path {
        self.tmp.path()
    }

    pub fn work(&self) -> PathBuf {
        self.root().join("work")
    }

    pub fn home(&self) -> PathBuf {
        self.root().join("home")
    }

    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.root().join(rel);
        std::fs::write(&p, text).expect("write");
        p
    }

    pub fn runbook(&self, name: &str, yaml: &str) {
        self.write(&format!("work/runbooks/{name}.yaml"), yaml);
    }

    /// `ssh-keygen -t KIND` into `keys/NAME` (or `home/.ssh/NAME` when `in_home`).
    pub fn keygen(&self, name: &str, kind: &str, passphrase: &str, in_home: bool) -> PathBuf {
        let dir = if in_home {
            self.home().join(".ssh")
        } else {
            self.root().join("keys")
        };
        let path = dir.join(name);
        let mut args = vec!["-q", "-t", kind, "-N", passphrase, "-C", name];
        if kind == "rsa" {
            args.extend(["-b", "2048"]);
        }
        let st = Command::new("ssh-keygen")
            .args(&args)
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .status()
            .expect("ssh-keygen");
        assert!(st.success(), "ssh-keygen -t {kind} failed");
        path
    }

    /// The opsrun binary in `work/`, with a clean environment for signing.
    pub fn opsrun(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut c = Command::new(env!("CARGO_BIN_EXE_opsrun"));
        c.args(args)
            .current_dir(self.work())
            .stdin(Stdio::null())
            .env("HOME", self.home())
            .env("NO_COLOR", "1")
            .env("OPSRUN_OPERATOR", OPERATOR)
            .env_remove("OPSRUN_SIGN_KEY")
            .env_remove("OPSRUN_SIGN_PASSPHRASE")
            .env_remove("OPSRUN_LOG_DIR")
            .env_remove("SSH_AUTH_SOCK");
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().expect("run opsrun")
    }

    /// The run directories, oldest first.
    pub fn runs(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.work().join("runs"))
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    /// The only run directory.
    pub fn run_dir(&self) -> PathBuf {
        let runs = self.runs();
        assert_eq!(runs.len(), 1, "expected one run, found {runs:?}");
        runs[0].clone()
    }

    /// An allowed_signers file trusting `pubkey` for `identity` in `opsrun-log`.
    pub fn allowed_signers(&self, name: &str, identity: &str, pubkey: &Path) -> PathBuf {
        let key = std::fs::read_to_string(pubkey).expect("read .pub");
        self.write(
            name,
            &format!("{identity} namespaces=\"opsrun-log\" {}\n", key.trim()),
        )
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Panics with both streams when `out` did not exit with `code`.
pub fn expect_code(out: &Output, code: i32, what: &str) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what}: exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// `ssh-keygen -lf KEY.pub`'s `SHA256:...`.
pub fn fingerprint(pubkey: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(pubkey)
        .output()
        .expect("ssh-keygen -l");
    text(&out.stdout)
        .split_whitespace()
        .nth(1)
        .expect("fingerprint")
        .to_string()
}

/// Stock `ssh-keygen -Y verify` of `doc` against its `.sig`; true when good.
pub fn keygen_verify(allowed: &Path, identity: &str, doc: &Path) -> bool {
    let sig = format!("{}.sig", doc.display());
    Command::new("ssh-keygen")
        .args(["-Y", "verify", "-f"])
        .arg(allowed)
        .args(["-I", identity, "-n", "opsrun-log", "-s", &sig])
        .stdin(std::fs::File::open(doc).expect("open doc"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("ssh-keygen -Y verify")
        .success()
}

/// Every file under `dir`, recursively.
pub fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}
