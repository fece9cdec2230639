//! The simulated products the runbook library drives, installed on fleet hosts:
//! Dameng (`tests/fixtures/dameng`), ApusicAS and nginx (`examples/demo/sim`), LVM
//! (`tests/fixtures/lvm`), and the event log they share.
//!
//! The simulators are POSIX sh scripts that keep their state in files and append
//! one line per call to one event log per test, so a test can assert the order of
//! operations across hosts, not only exit codes. The Dameng and LVM tools write
//! `SEQ TIME HOST PROGRAM ARGS` ([`read_events`]); ApusicAS and nginx write
//! `TIME HOST COMMAND RESULT` ([`events`]).

use std::fs;
use std::os::unix::fs::symlink;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::cli::Run;
use super::fleet::{chown_r, chown_to_test_user, host_entry, ssh, Ssh, SshFleet, TEST_USER};
use super::lab::{copy_tree, repo};

pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// The OS account the Dameng installation belongs to in the tests, as in production.
pub const DM_USER: &str = "dmdba";
pub const DM_GROUP: &str = "dinstall";
pub const DB_PASS: &str = "Dm#Sim-pass1";

/// A run's exit code and streams, for assertion messages.
pub fn run_text(o: &Run) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.code, o.stdout, o.stderr
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
    let rule = format!("{login} ALL=({DM_USER}) NOPASSWD: ALL\n", login = TEST_USER);
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

// ---------------------------------------------------------------------------------
// ApusicAS and nginx

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

/// An inventory named `name` whose `app` group is simulated ApusicAS nodes 0 and 1.
pub fn app_inventory(name: &str, fleet: &SshFleet, sim: &Path, events: &Path) -> String {
    let mut inv = format!("name: {name}\nconfirm: none\ngroups:\n  app:\n    hosts:\n");
    for i in 0..2 {
        inv.push_str(&host_entry(
            fleet,
            i,
            fleet.name(i),
            Ssh::PerHost,
            &sim_vars(fleet, i, sim, events),
        ));
    }
    inv
}

/// Inventory vars of a simulated node on fleet host `i`: where WEAVER is and how to
/// call its ApusicAS simulator.
pub fn sim_vars(
    fleet: &SshFleet,
    i: usize,
    sim: &Path,
    events: &Path,
) -> Vec<(&'static str, String)> {
    let w = fleet.work_dir(i).join("WEAVER").display().to_string();
    let name = fleet.name(i);
    let s = sim.display();
    let e = events.display();
    vec![
        ("weaver_home", w.clone()),
        (
            "asadmin",
            format!("{s} --host {name} --home {w} --events {e}"),
        ),
        (
            "health_check",
            format!("{s} --host {name} --home {w} http-get /login.jsp"),
        ),
        ("health_retries", "2".to_string()),
        ("health_delay", "1".to_string()),
    ]
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

// ---------------------------------------------------------------------------------
// LVM

const TOOLS: &[&str] = &[
    "lsblk",
    "pvs",
    "vgs",
    "lvs",
    "pvcreate",
    "pvremove",
    "vgextend",
    "vgreduce",
    "lvextend",
    "lvresize",
    "sgdisk",
    "partprobe",
];
/// Only in the fully simulated setup: filesystem tools.
const FS_TOOLS: &[&str] = &["resize2fs", "xfs_growfs", "df"];

pub const G: u64 = 1 << 30;

/// Installs the simulated tools under `root/bin` and writes their initial state: a
/// 100G system disk whose sda3 is the VG `peppa` with LV `data` (75G, 85% used,
/// mounted on /data, `fstype`), and an unused 20G disk sdb.
pub fn install_lvm(root: &Path, host: &str, events: &Path, fstype: &str, fs_tools: bool) {
    let bin = root.join("bin");
    let state = root.join("state");
    fs::create_dir_all(&bin).unwrap();
    fs::create_dir_all(state.join("fail")).unwrap();
    let sim = Path::new(FIXTURES).join("lvm/lvmsim");
    for t in TOOLS.iter().chain(if fs_tools { FS_TOOLS } else { &[] }) {
        symlink(&sim, bin.join(t)).unwrap();
    }
    let lv = 75 * G;
    fs::write(
        state.join("disks"),
        format!("sda {}\nsdb {}\n", 100 * G, 20 * G),
    )
    .unwrap();
    fs::write(
        state.join("parts"),
        format!("sda1 sda 209715200 ef00\nsda2 sda {G} 8300\nsda3 sda 84557365248 8e00\n"),
    )
    .unwrap();
    fs::write(state.join("pvs"), "/dev/sda3 peppa 84557365248\n").unwrap();
    fs::write(
        state.join("lvs"),
        format!("peppa data {lv} /data {fstype} {lv} {}\n", lv / 100 * 85),
    )
    .unwrap();
    fs::write(state.join("host"), format!("{host}\n")).unwrap();
    fs::write(state.join("events"), format!("{}\n", events.display())).unwrap();
    chown_r(root, TEST_USER);
}
