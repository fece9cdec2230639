//! The ssh masters' lifetime (issue 11, points 1 and 6), end to end against real
//! OpenSSH servers on loopback: a master and the `ssh -W` helper of a jump host
//! never get the terminal's Ctrl-C, and they do not outlive opsrun, even when it is
//! killed with SIGKILL or the user's ssh_config asks masters to persist.
//!
//! Every run here gets its own `XDG_RUNTIME_DIR`, so its control directory (and with
//! it every ssh process of that run: the masters' `-S`, the jump configs' `-F`) is a
//! path no other test uses.

use crate::support::{
    fleet::{pids_with, ssh_inventory, yaml_str, SshFleet, TEST_USER},
    lab::Lab,
    pty::{pty_run, run_on_pty, CTRL_C},
};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Fleet host 0 is the bastion; `web1` is host 0 reached directly, `web2` is host 1
/// reached only through the bastion (`jump:` in its inventory entry).
struct Site {
    fleet: SshFleet,
    lab: Lab,
    /// This site's `XDG_RUNTIME_DIR`: opsrun's control directories live under it.
    xdg: PathBuf,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Route {
    Direct,
    Jump,
    /// `web3`: fleet host 2 through host 0 then host 1.
    TwoJumps,
}

impl Site {
    /// `hosts`: which of web1 (direct) / web2 (through the bastion) the group has.
    fn start(hosts: &[Route], config_file: Option<&Path>) -> Site {
        let fleet = SshFleet::start(if hosts.contains(&Route::TwoJumps) {
            3
        } else {
            2
        });
        let lab = Lab::new();
        let mut groups = String::from("  app:\n    hosts:\n");
        for route in hosts {
            let (name, i) = match route {
                Route::Direct => ("web1", 0),
                Route::Jump => ("web2", 1),
                Route::TwoJumps => ("web3", 2),
            };
            groups.push_str(&format!(
                "      {name}:\n        address: {}\n        port: {}\n        user: {TEST_USER}\n",
                fleet.address(i),
                fleet.port(i)
            ));
            let hop = |h: usize| {
                yaml_str(format!(
                    "{TEST_USER}@{}:{}",
                    fleet.address(h),
                    fleet.port(h)
                ))
            };
            match route {
                Route::Direct => {}
                Route::Jump => {
                    groups.push_str(&format!("        ssh: {{ jump: {} }}\n", hop(0)));
                }
                Route::TwoJumps => groups.push_str(&format!(
                    "        ssh: {{ jump: [{}, {}] }}\n",
                    hop(0),
                    hop(1)
                )),
            }
            groups.push_str(&format!(
                "        vars:\n          work: {}\n",
                yaml_str(fleet.work_dir(i).to_string_lossy())
            ));
        }
        let mut inventory = ssh_inventory(&fleet, "none", &groups);
        if let Some(config) = config_file {
            inventory = inventory.replace(
                &yaml_str(fleet.ssh_config().to_string_lossy()),
                &yaml_str(config.to_string_lossy()),
            );
        }
        lab.write("inventories/lab.yaml", &inventory);
        let xdg = lab.path().join("xdg");
        fs::create_dir(&xdg).unwrap();
        fs::set_permissions(&xdg, fs::Permissions::from_mode(0o700)).unwrap();
        Site { fleet, lab, xdg }
    }

    fn runbook(&self, name: &str, text: &str) {
        self.lab.write(&format!("runbooks/{name}.yaml"), text);
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = self.lab.command(args);
        cmd.env("XDG_RUNTIME_DIR", &self.xdg);
        cmd
    }

    /// What the runbook appended to `events` on fleet host `i`.
    fn events(&self, i: usize) -> Vec<String> {
        fs::read_to_string(self.fleet.work_dir(i).join("events"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// The `ssh -W` helper's target when web2 is reached through the bastion.
    fn jump_target(&self) -> String {
        format!("-W [{}]:{}", self.fleet.address(1), self.fleet.port(1))
    }

    /// Running ssh processes of this site's runs: every one names the control
    /// directory; the jump helper also names its target.
    fn ssh_processes(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = pids_with(&self.xdg.to_string_lossy())
            .into_iter()
            .chain(pids_with(&self.jump_target()))
            .filter(|p| is_ssh(*p) && running(*p))
            .collect();
        pids.sort();
        pids.dedup();
        pids
    }

    /// Waits up to `limit` for every ssh process of this site to end; kills (and
    /// reports) whatever is left, so a failing test does not leave them behind.
    fn assert_no_ssh_within(&self, limit: Duration, what: &str) {
        let deadline = Instant::now() + limit;
        loop {
            let left = self.ssh_processes();
            if left.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                let described: Vec<String> = left.iter().map(|p| describe(*p)).collect();
                for pid in &left {
                    // SAFETY: kill(2) on ssh processes this test's runs started.
                    unsafe { libc::kill(*pid as libc::pid_t, libc::SIGKILL) };
                }
                panic!("{what}: ssh processes still running after {limit:?}:\n{described:#?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A run spawned in the background; dropping it (also when an assertion fails)
/// kills it and the remote `sleep` it started, so a failing test leaves nothing.
struct Running {
    child: Child,
    sleep: String,
    /// The host locks (`/tmp/opsrun-lock-PORT`) a killed run leaves behind.
    locks: Vec<PathBuf>,
}

impl Running {
    fn spawn(site: &Site, mut cmd: Command, sleep: &str) -> Running {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Running {
            child,
            sleep: sleep.to_string(),
            locks: (0..site.fleet.len())
                .map(|i| PathBuf::from(format!("/tmp/opsrun-lock-{}", site.fleet.port(i))))
                .collect(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until `sleep` itself (not only the shell about to start it) runs on
    /// the hosts `count` times, while opsrun is still running.
    fn wait_for_remote(&mut self, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("opsrun ended ({status}) before `{}` ran", self.sleep);
            }
            let sleeping = pids_with(&self.sleep)
                .into_iter()
                .filter(|p| {
                    fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| c.starts_with(b"sleep\0"))
                })
                .count();
            if sleeping >= count {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "`{}` never ran on the hosts",
                self.sleep
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, as `kill -9` does.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        kill_remote(&self.sleep);
        // Only the killed run's own: a later fleet may get the same port.
        let pid = self.child.id();
        for lock in &self.locks {
            let owner = fs::read_to_string(lock.join("owner")).unwrap_or_default();
            let owned =
                serde_json::from_str::<serde_json::Value>(&owner).is_ok_and(|o| o["pid"] == pid);
            if owned {
                let _ = fs::remove_dir_all(lock);
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `/proc/PID/stat` after the command name: state, ppid, pgrp, session.
fn stat(pid: u32) -> Option<(char, i32, i32, i32)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut f = text.rsplit_once(')')?.1.split_whitespace();
    let state = f.next()?.chars().next()?;
    let mut num = || f.next()?.parse::<i32>().ok();
    Some((state, num()?, num()?, num()?))
}

/// Not gone and not a zombie.
fn running(pid: u32) -> bool {
    stat(pid).is_some_and(|(state, ..)| state != 'Z')
}

fn is_ssh(pid: u32) -> bool {
    fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
        c.split(|b| *b == 0)
            .next()
            // A master that went to the background retitles itself `ssh: PATH [mux]`.
            .is_some_and(|argv0| {
                argv0 == b"ssh" || argv0.ends_with(b"/ssh") || argv0.starts_with(b"ssh: ")
            })
    })
}

fn describe(pid: u32) -> String {
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    format!(
        "{pid} {:?}: {}",
        stat(pid),
        String::from_utf8_lossy(&cmdline).replace('\0', " ")
    )
}

/// The remote commands a killed run leaves (stopping them is not this lane's job).
fn kill_remote(sleep: &str) {
    for pid in pids_with(sleep) {
        // SAFETY: kill(2) on the remote `sleep` this test's runbook started.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    }
}

/// A unique `sleep` that marks this run's remote command in /proc.
fn long_sleep(salt: u32) -> String {
    format!(
        "sleep {}",
        7_000_000 + salt * 100_000 + std::process::id() % 100_000
    )
}

fn long_runbook(sleep: &str) -> String {
    format!("name: long\nhosts: app\nsteps:\n  - name: Long\n    run: {sleep}\n")
}

/// SIGKILL of opsrun in the middle of a step on `route`'s host: its master (and the
/// jump helper) must end within 30 s.
fn sigkill_leaves_no_master(route: Route, salt: u32) {
    let site = Site::start(&[route], None);
    let sleep = long_sleep(salt);
    site.runbook("long", &long_runbook(&sleep));
    let mut run = Running::spawn(
        &site,
        site.command(&["long", "--env", "lab", "--yes"]),
        &sleep,
    );
    run.wait_for_remote(1);
    let before = site.ssh_processes();
    let helpers: Vec<u32> = pids_with(&site.jump_target())
        .into_iter()
        .filter(|p| is_ssh(*p) && running(*p))
        .collect();
    let expected = if route == Route::Jump { 2 } else { 1 };
    assert_eq!(
        before.len(),
        expected,
        "a master{} while the step runs: {:#?}",
        if route == Route::Jump {
            " and its jump helper"
        } else {
            ""
        },
        before.iter().map(|p| describe(*p)).collect::<Vec<_>>()
    );
    assert_eq!(
        helpers.len(),
        usize::from(route == Route::Jump),
        "{helpers:?}"
    );

    run.kill();
    site.assert_no_ssh_within(Duration::from_secs(30), "after SIGKILL of opsrun");
}

#[test]
fn sigkill_during_a_step_leaves_no_master_or_helper_of_a_host_behind_two_jump_hosts() {
    let site = Site::start(&[Route::TwoJumps], None);
    let sleep = long_sleep(6);
    site.runbook("long", &long_runbook(&sleep));
    let mut run = Running::spawn(
        &site,
        site.command(&["long", "--env", "lab", "--yes"]),
        &sleep,
    );
    run.wait_for_remote(1);
    // The master, the last hop's `ssh -W` and the first hop's, which the last starts.
    let before = site.ssh_processes();
    let described: Vec<String> = before.iter().map(|p| describe(*p)).collect();
    assert_eq!(before.len(), 3, "{described:#?}");
    run.kill();
    site.assert_no_ssh_within(Duration::from_secs(30), "after SIGKILL of opsrun");
}

#[test]
fn sigkill_during_a_step_leaves_no_master_of_a_direct_host() {
    sigkill_leaves_no_master(Route::Direct, 1);
}

#[test]
fn sigkill_during_a_step_leaves_no_master_or_jump_helper_of_a_host_behind_a_jump_host() {
    sigkill_leaves_no_master(Route::Jump, 2);
}

#[test]
fn masters_and_jump_helpers_run_in_a_session_of_their_own() {
    let site = Site::start(&[Route::Direct, Route::Jump], None);
    let sleep = long_sleep(3);
    site.runbook("long", &long_runbook(&sleep));
    let mut cmd = site.command(&["long", "--env", "lab", "--yes"]);
    // A process group of its own, as a shell with job control gives a command it runs
    // in the foreground: then "outside opsrun's group" means "not in the terminal's
    // foreground group".
    cmd.process_group(0);
    let mut run = Running::spawn(&site, cmd, &sleep);
    run.wait_for_remote(2);
    let opsrun = run.pid();
    let (_, _, opsrun_group, opsrun_session) = stat(opsrun).unwrap();
    let all = site.ssh_processes();
    let helpers: Vec<u32> = pids_with(&site.jump_target())
        .into_iter()
        .filter(|p| is_ssh(*p) && running(*p))
        .collect();
    let masters: Vec<u32> = all
        .iter()
        .copied()
        .filter(|p| !helpers.contains(p))
        .collect();
    let described: Vec<String> = all.iter().map(|p| describe(*p)).collect();
    assert_eq!(masters.len(), 2, "one master per host: {described:#?}");
    assert_eq!(helpers.len(), 1, "one jump helper: {described:#?}");
    for &m in &masters {
        let (_, ppid, group, session) = stat(m).unwrap();
        // opsrun's own child, in the foreground: not a daemon that forked away.
        assert_eq!(ppid as u32, opsrun, "{}", describe(m));
        assert_eq!((group, session), (m as i32, m as i32), "{}", describe(m));
        assert_ne!(group, opsrun_group);
        assert_ne!(session, opsrun_session);
    }
    let (_, helper_parent, helper_group, helper_session) = stat(helpers[0]).unwrap();
    assert!(masters.contains(&(helper_parent as u32)), "{described:#?}");
    assert_ne!(helper_group, opsrun_group, "{described:#?}");
    assert_ne!(helper_session, opsrun_session, "{described:#?}");
    // So a Ctrl-C to opsrun's whole group (what the terminal sends) misses them.
    assert_eq!(helper_session, helper_parent, "{described:#?}");

    run.kill();
    site.assert_no_ssh_within(Duration::from_secs(30), "after SIGKILL of opsrun");
}

/// Three quick steps with rollbacks recorded on the host, then a slow one; a fifth
/// never runs.
fn interruptible(sleep: &str) -> String {
    let record = |what: &str| format!("\"echo {what} >> {{{{ work }}}}/events\"");
    format!(
        "name: breakable\nhosts: app\nsteps:\n\
         \x20 - name: One\n    run: {}\n    rollback: {}\n\
         \x20 - name: Two\n    run: {}\n    rollback: {}\n\
         \x20 - name: Slow\n    run: \"{sleep} && echo slow >> {{{{ work }}}}/events\"\n    rollback: {}\n\
         \x20 - name: Never\n    run: {}\n",
        record("one"),
        record("undo-one"),
        record("two"),
        record("undo-two"),
        record("undo-slow"),
        record("never"),
    )
}

#[test]
fn ctrl_c_then_w_finishes_the_step_behind_a_jump_host_as_on_a_direct_host() {
    let site = Site::start(&[Route::Direct, Route::Jump], None);
    site.runbook("breakable", &interruptible("sleep 2"));
    let (code, screen) = run_on_pty(
        site.command(&["breakable", "--env", "lab", "--yes"]),
        &[("[3/4] Slow", CTRL_C), ("Choice [w/s/r]", "w")],
    );
    let run = pty_run(code, &screen, site.lab.path());
    run.expect_code(130);
    assert!(!screen.contains("connection was lost"), "{screen}");
    // The same on both hosts: Slow finished, Never did not start, nothing undone.
    for i in 0..2 {
        assert_eq!(
            site.events(i),
            ["one", "two", "slow"],
            "host {i}:\n{screen}"
        );
    }
    assert_eq!(run.events("interrupt")[0]["choice"], "after_step");
    for h in ["web1", "web2"] {
        assert_eq!(run.status("Slow", h), "ok", "{h}:\n{screen}");
    }
    assert!(run
        .events("step_started")
        .iter()
        .all(|e| e["step"] != "Never"));
    let (outcome, message) = run.outcome();
    assert_eq!(outcome, "interrupted");
    assert!(message.contains("after the running step"), "{message}");
    // The connections stayed up to the end and were closed with the run.
    site.assert_no_ssh_within(Duration::from_secs(5), "after the run ended");
}

#[test]
fn ctrl_c_then_r_rolls_back_behind_a_jump_host_as_on_a_direct_host() {
    let site = Site::start(&[Route::Direct, Route::Jump], None);
    let sleep = long_sleep(4);
    site.runbook("breakable", &interruptible(&sleep));
    let (code, screen) = run_on_pty(
        site.command(&["breakable", "--env", "lab"]),
        // Choosing "r" is the answer to the rollback gate: no second question.
        &[("[3/4] Slow", CTRL_C), ("Choice [w/s/r]", "r")],
    );
    kill_remote(&sleep);
    let run = pty_run(code, &screen, site.lab.path());
    run.expect_code(130);
    assert!(!screen.contains("connection was lost"), "{screen}");
    // The undos really ran on each host, in reverse order, the jump host like the
    // other; the killed step first (it may be partly applied).
    for i in 0..2 {
        assert_eq!(
            site.events(i),
            ["one", "two", "undo-slow", "undo-two", "undo-one"],
            "host {i}:\n{screen}"
        );
    }
    assert_eq!(run.events("interrupt")[0]["choice"], "now_and_rollback");
    let (outcome, message) = run.outcome();
    assert_eq!(outcome, "interrupted");
    assert!(
        message.contains("rolled back 3 steps: undone on "),
        "{message}"
    );
    site.assert_no_ssh_within(Duration::from_secs(5), "after the run ended");
}

#[test]
fn control_persist_in_the_users_ssh_config_does_not_keep_masters_after_opsrun() {
    // A user config that asks for persisting, shared masters: with it, a master
    // started the usual way forks into the background and stays 10 minutes.
    let config_dir = tempfile::Builder::new()
        .prefix("opsrun-persist-")
        .tempdir()
        .unwrap();
    let config = config_dir.path().join("ssh_config");
    let site = Site::start(&[Route::Direct, Route::Jump], Some(&config));
    let fleet_config = fs::read_to_string(site.fleet.ssh_config()).unwrap();
    fs::write(
        &config,
        fleet_config.replace(
            "Host *\n",
            &format!(
                "Host *\n  ControlMaster auto\n  ControlPath {}/cm-%C\n  ControlPersist 10m\n",
                config_dir.path().display()
            ),
        ),
    )
    .unwrap();
    let sleep = long_sleep(5);
    site.runbook("long", &long_runbook(&sleep));
    let mut run = Running::spawn(
        &site,
        site.command(&["long", "--env", "lab", "--yes"]),
        &sleep,
    );
    run.wait_for_remote(2);
    let opsrun = run.pid();
    let masters: Vec<u32> = site
        .ssh_processes()
        .into_iter()
        .filter(|p| !pids_with(&site.jump_target()).contains(p))
        .collect();
    assert_eq!(masters.len(), 2, "{masters:?}");
    for m in &masters {
        // Still opsrun's child: ControlPersist did not make it fork away.
        assert_eq!(stat(*m).unwrap().1 as u32, opsrun, "{}", describe(*m));
    }
    // Nothing became or used a master under the user's ControlPath, not even the
    // jump helper (an `ssh -W` that persisted a bastion connection would outlive us).
    let sockets: Vec<String> = fs::read_dir(config_dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("cm-"))
        .collect();
    assert!(sockets.is_empty(), "{sockets:?}");
    run.kill();
    site.assert_no_ssh_within(Duration::from_secs(30), "after SIGKILL of opsrun");
    // Nor did any other master appear under the user's ControlPath.
    let persisted = pids_with(&config_dir.path().to_string_lossy())
        .into_iter()
        .filter(|p| is_ssh(*p) && running(*p))
        .collect::<Vec<_>>();
    assert!(persisted.is_empty(), "{persisted:?}");
}

#[test]
fn what_killed_runs_left_in_the_control_directory_is_removed_by_the_next_run() {
    let site = Site::start(&[Route::Direct], None);
    site.runbook(
        "quick",
        "name: quick\nhosts: app\nsteps:\n  - name: Quick\n    run: \"true\"\n",
    );
    let base = site.xdg.join("opsrun-0");
    fs::create_dir(&base).unwrap();
    fs::set_permissions(&base, fs::Permissions::from_mode(0o700)).unwrap();
    // A pid that surely belongs to no process now: a child that was reaped.
    let mut gone = Command::new("true").spawn().unwrap();
    gone.wait().unwrap();
    let dead = gone.id();
    let alive = std::process::id();
    let entry = |name: String, old: bool, socket: bool| {
        let path = base.join(name);
        if name_is_dir(&path) {
            fs::create_dir(&path).unwrap();
            fs::write(path.join("log"), "ssh log\n").unwrap();
            if socket {
                fs::write(path.join("master"), "").unwrap();
            }
        } else {
            fs::write(&path, "Host *\n").unwrap();
        }
        if old {
            let status = Command::new("touch")
                .args(["-d", "1 hour ago"])
                .arg(&path)
                .status()
                .unwrap();
            assert!(status.success());
        }
        path
    };
    fn name_is_dir(path: &Path) -> bool {
        path.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(".ssh-connection-")
    }
    let stale_dir = entry(format!(".ssh-connection-{dead}-0"), true, false);
    let stale_jump = entry(format!("jump-{dead}-0.hop.ssh_config"), true, false);
    let live_owner = entry(format!(".ssh-connection-{alive}-0"), true, false);
    let recent = entry(format!(".ssh-connection-{dead}-1"), false, false);
    let with_socket = entry(format!(".ssh-connection-{dead}-2"), true, true);
    let other = entry("unrelated".to_string(), true, false);

    let out = site
        .command(&["quick", "--env", "lab", "--yes"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !stale_dir.exists(),
        "a killed run's connection dir is removed"
    );
    assert!(
        !stale_jump.exists(),
        "a killed run's jump config is removed"
    );
    for kept in [&live_owner, &recent, &with_socket, &other] {
        assert!(kept.exists(), "{} must stay", kept.display());
    }
    // And the run's own connection directory went with its master.
    let left: Vec<String> = fs::read_dir(&base)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left.len(), 4, "{left:?}");
}

#[test]
fn a_master_that_forks_away_by_itself_is_refused_and_stopped() {
    // `ForkAfterAuthentication yes` (ssh's `-f` in a config file) would put the master
    // out of opsrun's reach; opsrun says so instead of leaving it behind.
    let config_dir = tempfile::Builder::new()
        .prefix("opsrun-fork-")
        .tempdir()
        .unwrap();
    let config = config_dir.path().join("ssh_config");
    let site = Site::start(&[Route::Direct], Some(&config));
    let text = fs::read_to_string(site.fleet.ssh_config()).unwrap();
    fs::write(
        &config,
        text.replace("Host *\n", "Host *\n  ForkAfterAuthentication yes\n"),
    )
    .unwrap();
    site.runbook(
        "quick",
        "name: quick\nhosts: app\nsteps:\n  - name: Quick\n    run: \"true\"\n",
    );
    let out = site
        .command(&["quick", "--env", "lab", "--yes"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("host web1: ssh connection to 127.0.0.2 failed"),
        "{stderr}"
    );
    assert!(stderr.contains("ForkAfterAuthentication"), "{stderr}");
    // The master that went to the background (retitled `ssh: SOCKET [mux]`, under
    // this run's control directory) was asked to exit.
    site.assert_no_ssh_within(Duration::from_secs(10), "after a refused forking master");
}
