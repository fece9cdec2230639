//! Shared by the runbook-library tests (`library_*.rs`): running the opsrun binary,
//! installing the simulated tools of `tests/fixtures/` on fleet hosts, reading the
//! shared event log the simulators append to.
//!
//! The simulators are POSIX sh scripts that keep their state in files and append
//! `SEQ TIME HOST PROGRAM ARGS` to one event log per test, so a test can assert the
//! order of operations across hosts, not only exit codes.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::sshd::SshFleet;

pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// The OS account the Dameng installation belongs to in the tests, as in production.
pub const DM_USER: &str = "dmdba";
pub const DM_GROUP: &str = "dinstall";
pub const DB_PASS: &str = "Dm#Sim-pass1";

/// A signing key for the runs of one test, kept in its directory: a run without
/// a key (or `--no-sign`) is refused, and the logs these tests read are signed ones.
pub fn sign_key(dir: &Path) -> PathBuf {
    let key = dir.join(".sign-key");
    if !key.exists() {
        let st = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "opsrun-test", "-f"])
            .arg(&key)
            .stdin(Stdio::null())
            .status()
            .expect("ssh-keygen");
        assert!(st.success(), "ssh-keygen failed");
    }
    key
}

/// Runs `opsrun ARGS` in `dir` with NO_COLOR=1, a signing key, and extra environment.
pub fn opsrun(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_opsrun"));
    cmd.args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .env("OPSRUN_SIGN_KEY", sign_key(dir))
        .env_remove("OPSRUN_SIGN_PASSPHRASE")
        .env_remove("OPSRUN_LOG_DIR")
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run opsrun")
}

pub fn text(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The newest run directory under `dir/runs`.
pub fn last_run(dir: &Path) -> PathBuf {
    let mut runs: Vec<PathBuf> = fs::read_dir(dir.join("runs"))
        .expect("runs dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    runs.sort();
    runs.pop().expect("a run directory")
}

/// One line of the simulators' event log.
#[derive(Debug, Clone)]
pub struct SimEvent {
    pub seq: usize,
    pub host: String,
    pub program: String,
    pub args: String,
}

pub fn read_events(path: &Path) -> Vec<SimEvent> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let mut f = l.splitn(5, ' ');
            SimEvent {
                seq: f.next().unwrap().parse().unwrap(),
                host: {
                    f.next();
                    f.next().unwrap().to_string()
                },
                program: f.next().unwrap_or_default().to_string(),
                args: f.next().unwrap_or_default().to_string(),
            }
        })
        .collect()
}

/// Position (seq) of the first event on `host` of `program` whose args start with `args`.
pub fn seq_of(events: &[SimEvent], host: &str, program: &str, args: &str) -> usize {
    events
        .iter()
        .find(|e| e.host == host && e.program == program && e.args.starts_with(args))
        .map(|e| e.seq)
        .unwrap_or_else(|| {
            panic!(
                "no `{program} {args}` on {host} in the event log:\n{}",
                show(events)
            )
        })
}

pub fn show(events: &[SimEvent]) -> String {
    events
        .iter()
        .map(|e| format!("{} {} {} {}", e.seq, e.host, e.program, e.args))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Creates an empty event log (and its lock file) every host's simulators may append to.
pub fn new_event_log(fleet_root: &Path) -> PathBuf {
    let log = fleet_root.join("events.log");
    for p in [log.clone(), fleet_root.join("events.log.lock")] {
        fs::write(&p, "").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o666)).unwrap();
    }
    log
}

/// Runs a command on fleet host `i` through the fleet's own ssh client config.
pub fn ssh(fleet: &SshFleet, i: usize, command: &str) -> Output {
    Command::new("ssh")
        .arg("-F")
        .arg(fleet.ssh_config())
        .arg("-p")
        .arg(fleet.port(i).to_string())
        .arg(fleet.address(i))
        .arg(command)
        .stdin(Stdio::null())
        .output()
        .expect("run ssh")
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `dmdba` account (group `dinstall`), and a sudo rule letting the ssh login user
/// act as it: runbooks use `as: dmdba`, and the test inventories switch with
/// `become: sudo` because the login user is not root. Done once per machine, under a
/// lock shared by test binaries running at the same time.
pub fn ensure_dm_user() {
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/tmp/opsrun-test-dmdba.lock")
        .expect("open lock file");
    // SAFETY: a valid open fd; the lock is released when `lock` is closed.
    let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(rc, 0);
    run(Command::new("groupadd").args(["-f", DM_GROUP]));
    let exists = Command::new("id")
        .arg("-u")
        .arg(DM_USER)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !exists {
        run(Command::new("useradd").args(["-m", "-s", "/bin/sh", "-g", DM_GROUP, DM_USER]));
    }
    let rule = format!(
        "{login} ALL=({DM_USER}) NOPASSWD: ALL\n",
        login = super::sshd::TEST_USER
    );
    let path = Path::new("/etc/sudoers.d/opsrun-test-dmdba");
    if fs::read_to_string(path).ok().as_deref() != Some(rule.as_str()) {
        assert!(
            Path::new("/usr/bin/sudo").exists(),
            "sudo is not installed: apt-get install -y sudo"
        );
        fs::write(path, &rule).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(0o440)).unwrap();
    }
}

pub fn chown_r(path: &Path, owner: &str) {
    run(Command::new("chown").arg("-R").arg(owner).arg(path));
}

/// Copies the simulated Dameng tools into `dm_home/bin` of a host and writes its state.
pub struct DmNode<'a> {
    pub host: &'a str,
    pub dm_home: &'a Path,
    pub events: &'a Path,
    pub role: &'a str,
    pub license: &'a str,
}

pub fn install_dameng(n: &DmNode) {
    let bin = n.dm_home.join("bin");
    let sim = n.dm_home.join("sim");
    fs::create_dir_all(&bin).unwrap();
    fs::create_dir_all(sim.join("fail")).unwrap();
    fs::create_dir_all(n.dm_home.join("data/DMDB")).unwrap();
    fs::write(
        n.dm_home.join("data/DMDB/dm.ini"),
        "INSTANCE_NAME = DMSERVER\n",
    )
    .unwrap();
    for f in [
        "DmServiceDMSERVER",
        "DmWatcherServiceDMSERVER",
        "disql",
        "dmserver",
        "dmsim-lib.sh",
    ] {
        fs::copy(Path::new(FIXTURES).join("dameng").join(f), bin.join(f)).unwrap();
    }
    for (file, value) in [
        ("host", n.host),
        ("events", &n.events.display().to_string()),
        ("role", n.role),
        ("password", DB_PASS),
        ("dm_user", DM_USER),
        ("dm_group", DM_GROUP),
        ("license", n.license),
        ("watcher", "stopped"),
    ] {
        fs::write(sim.join(file), format!("{value}\n")).unwrap();
    }
    chown_r(n.dm_home, &format!("{DM_USER}:{DM_GROUP}"));
}

/// Starts server and watcher of host `i` as the DM user, inside that host's PID
/// namespace (through its sshd), the way the node runs before a stop.
pub fn start_dameng(fleet: &SshFleet, i: usize, dm_home: &Path) {
    let bin = dm_home.join("bin");
    let out = ssh(
        fleet,
        i,
        &format!(
            "cd {b} && sudo -n -u {DM_USER} ./DmServiceDMSERVER start && sudo -n -u {DM_USER} ./DmWatcherServiceDMSERVER start",
            b = bin.display()
        ),
    );
    assert!(
        out.status.success(),
        "starting the simulated DM on host {i}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `pgrep -a` of dmserver processes on host `i` (its own PID namespace).
pub fn dmserver_procs(fleet: &SshFleet, i: usize) -> String {
    let out = ssh(fleet, i, "pgrep -a -f '[d]mserver .*dm[.]ini' || true");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The inventory's `ssh:` section and a host entry for fleet host `i`.
pub fn ssh_section(fleet: &SshFleet, become_sudo: bool) -> String {
    format!(
        "ssh:\n  config_file: {}\n  known_hosts_file: {}\n{}",
        fleet.ssh_config().display(),
        fleet.known_hosts().display(),
        if become_sudo { "  become: sudo\n" } else { "" }
    )
}

pub fn host_entry(fleet: &SshFleet, i: usize, vars: &str) -> String {
    format!(
        "      {}: {{ address: {}, port: {}, user: {}, vars: {{ {vars} }} }}\n",
        fleet.name(i),
        fleet.address(i),
        fleet.port(i),
        super::sshd::TEST_USER
    )
}
