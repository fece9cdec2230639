//! Helpers for the runbook-library tests (tests/library_*.rs): run the opsrun
//! binary in a scratch directory against a fleet of real sshd hosts, lay out the
//! simulated ApusicAS trees, and fingerprint a directory tree.
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::support::sshd::{SshFleet, TEST_USER};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// What one opsrun invocation did.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    /// The Markdown log of a real run (empty for a dry-run or an early error).
    pub log: String,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}\n--- stderr\n{}\n--- log.md\n{}",
            self.code, self.stdout, self.stderr, self.log
        )
    }
}

/// A signing key kept in the test's directory: runs without a key (or
/// `--no-sign`) are refused, and the logs read here are signed ones.
fn sign_key(dir: &Path) -> PathBuf {
    let key = dir.join(".sign-key");
    if !key.exists() {
        let st = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "opsrun-test", "-f"])
            .arg(&key)
            .stdin(std::process::Stdio::null())
            .status()
            .expect("ssh-keygen");
        assert!(st.success(), "ssh-keygen failed");
    }
    key
}

/// Runs the opsrun binary in `dir` (runbooks come from the library built into it).
pub fn opsrun(dir: &Path, args: &[&str]) -> Run {
    opsrun_env(dir, args, &[])
}

/// [`opsrun`] with extra environment variables.
pub fn opsrun_env(dir: &Path, args: &[&str], env: &[(&str, &Path)]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_opsrun"))
        .args(args)
        .envs(env.iter().copied())
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .env("OPSRUN_OPERATOR", "tester")
        .env("OPSRUN_SIGN_KEY", sign_key(dir))
        .env_remove("OPSRUN_SIGN_PASSPHRASE")
        .env_remove("OPSRUN_LOG_DIR")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run opsrun");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let log = stdout
        .lines()
        .last()
        .filter(|l| l.ends_with("log.md"))
        .and_then(|l| fs::read_to_string(dir.join(l)).ok())
        .unwrap_or_default();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        log,
    }
}

/// The `address`/`port`/`user`/`ssh` lines of fleet host `i` in an inventory, indented for a host entry.
pub fn host_entry(fleet: &SshFleet, i: usize) -> String {
    format!(
        "address: {}\n        port: {}\n        user: {TEST_USER}\n        ssh: {{ config_file: {}, known_hosts_file: {} }}\n",
        fleet.address(i),
        fleet.port(i),
        fleet.ssh_config().display(),
        fleet.known_hosts().display()
    )
}

pub fn chown_to_test_user(path: &Path) {
    let ok = Command::new("chown")
        .arg("-R")
        .arg(format!("{TEST_USER}:{TEST_USER}"))
        .arg(path)
        .status()
        .expect("chown")
        .success();
    assert!(ok, "chown -R {}", path.display());
}

pub fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    let ok = Command::new("cp")
        .arg("-R")
        .arg(format!("{}/.", from.display()))
        .arg(to)
        .status()
        .expect("cp")
        .success();
    assert!(ok, "cp -R {} {}", from.display(), to.display());
}

/// The ApusicAS simulator, installed where the login user can run it, plus a shared
/// event log it can append to. Returns (asadmin path, events log path).
pub fn install_sim(fleet: &SshFleet) -> (PathBuf, PathBuf) {
    let dir = fleet.root().join("sim");
    fs::create_dir_all(&dir).unwrap();
    let sim = dir.join("asadmin");
    fs::copy(repo().join("examples/demo/sim/asadmin"), &sim).unwrap();
    fs::set_permissions(&sim, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    let events = fleet.root().join("events.log");
    fs::write(&events, "").unwrap();
    chown_to_test_user(&events);
    (sim, events)
}

/// The nginx simulator, next to the ApusicAS one (it logs to the same event log).
pub fn install_nginx_sim(fleet: &SshFleet) -> PathBuf {
    let sim = fleet.root().join("sim").join("nginx");
    fs::create_dir_all(sim.parent().unwrap()).unwrap();
    fs::copy(repo().join("examples/demo/sim/nginx"), &sim).unwrap();
    fs::set_permissions(&sim, fs::Permissions::from_mode(0o755)).unwrap();
    sim
}

/// A simulated e-cology node in fleet host `i`'s work dir: WEAVER (ecology + a
/// running ApusicAS domain) and sharedata, from examples/demo/seed. Returns WEAVER.
pub fn seed_node(fleet: &SshFleet, i: usize) -> PathBuf {
    let root = fleet.work_dir(i).to_path_buf();
    copy_tree(&repo().join("examples/demo/seed"), &root);
    chown_to_test_user(&root);
    root.join("WEAVER")
}

/// Inventory vars of a simulated node on fleet host `i` (indented for a host's `vars:`).
/// An inventory named `name` whose `app` group is simulated ApusicAS nodes 0 and 1.
pub fn app_inventory(name: &str, fleet: &SshFleet, sim: &Path, events: &Path) -> String {
    let mut inv = format!("name: {name}\nconfirm: none\ngroups:\n  app:\n    hosts:\n");
    for i in 0..2 {
        inv.push_str(&format!(
            "      {}:\n        {}        vars:\n{}",
            fleet.name(i),
            host_entry(fleet, i),
            sim_vars(fleet, i, sim, events)
        ));
    }
    inv
}

pub fn sim_vars(fleet: &SshFleet, i: usize, sim: &Path, events: &Path) -> String {
    let weaver = fleet.work_dir(i).join("WEAVER");
    let name = fleet.name(i);
    format!(
        "          weaver_home: {w}\n          asadmin: {s} --host {name} --home {w} --events {e}\n          health_check: {s} --host {name} --home {w} http-get /login.jsp\n          health_retries: 2\n          health_delay: 1\n",
        w = weaver.display(),
        s = sim.display(),
        e = events.display()
    )
}

/// The simulator's event log as (host, command, result) triples, in order.
pub fn events(path: &Path) -> Vec<(String, String, String)> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut f = l.splitn(4, ' ');
            let _time = f.next()?;
            Some((
                f.next()?.to_string(),
                f.next()?.to_string(),
                f.next().unwrap_or_default().to_string(),
            ))
        })
        .collect()
}

/// A fingerprint of a directory tree: every path with its type, mode, symlink
/// target and content hash. Equal fingerprints mean byte-identical trees.
pub fn tree_digest(root: &Path) -> String {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let mut entries: Vec<_> = fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            let rel = p.strip_prefix(base).unwrap().display().to_string();
            let md = fs::symlink_metadata(&p).unwrap();
            let mode = md.mode() & 0o7777;
            if md.file_type().is_symlink() {
                out.push(format!(
                    "L {rel} -> {}",
                    fs::read_link(&p).unwrap().display()
                ));
            } else if md.is_dir() {
                out.push(format!("D {rel} {mode:o}"));
                walk(base, &p, out);
            } else {
                let hash = Sha256::digest(fs::read(&p).unwrap());
                let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
                out.push(format!("F {rel} {mode:o} {hex}"));
            }
        }
    }
    let mut lines = Vec::new();
    walk(root, root, &mut lines);
    lines.join("\n")
}

/// A scratch directory to run opsrun in (its runs/ land there).
pub fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("opsrun-library-")
        .tempdir()
        .unwrap()
}
