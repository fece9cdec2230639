//! Every way a run can be stopped from outside, end to end against real sshd
//! hosts: SIGTERM, SIGHUP (a signal, and a real terminal hang-up), "stop now"
//! (a second signal, the Ctrl-C menu), SIGKILL. What must hold each time: the
//! command on the host either finishes or is killed there (never abandoned),
//! the journal ends with `run_finished` (short of SIGKILL), the log is written
//! and verifies, the lock is released or taken over by the same change, and
//! no ssh master of the run stays behind.

use crate::support::{
    cli::Run,
    fleet::{app_group, host_entry, pids_with, ssh_inventory, yaml_str, Ssh, SshFleet, TEST_USER},
    lab::Lab,
    pty::{pty_run, run_on_pty, CTRL_C, HANG_UP},
};
use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// Two hosts, each with a `trail` file the runbook appends to, and a lab whose
/// runbook's second step sleeps `secs` seconds (a sleep no other test runs).
struct Stage {
    fleet: SshFleet,
    lab: Lab,
    sleep: String,
    /// The fleet index of web1: 1 when fleet host 0 is the jump host.
    first: usize,
}

impl Stage {
    fn new(secs: u32) -> Stage {
        Stage::build(secs, false)
    }

    /// The same two hosts reached through a third, as `ProxyJump` (`jump:`).
    fn behind_jump(secs: u32) -> Stage {
        Stage::build(secs, true)
    }

    /// Fleet host index of app host `i` (web1 is 0, or 1 behind the jump host).
    fn host(&self, i: usize) -> usize {
        i + self.first
    }

    fn build(secs: u32, jump: bool) -> Stage {
        let first = usize::from(jump);
        let fleet = SshFleet::start(2 + first);
        // Unique across the tests running at once: each kills its own leftovers by it.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let sleep = format!("sleep {secs}.{:05}{n:03}", std::process::id() % 100_000);
        let lab = Lab::new();
        let group = if jump {
            let mut g = String::from("  app:\n    hosts:\n");
            for i in 1..3 {
                let entry = host_entry(
                    &fleet,
                    i,
                    &format!("web{i}"),
                    Ssh::FromInventory,
                    &[("work", yaml_str(fleet.work_dir(i).to_string_lossy()))],
                );
                let hop = format!(
                    "        ssh:\n          jump: \"{}:{}\"\n",
                    fleet.address(0),
                    fleet.port(0)
                );
                g.push_str(&entry.replacen(
                    &format!("user: {TEST_USER}\n"),
                    &format!("user: {TEST_USER}\n{hop}"),
                    1,
                ));
            }
            g
        } else {
            app_group(&fleet)
        };
        lab.write(
            "inventories/lab.yaml",
            &ssh_inventory(&fleet, "none", &group),
        );
        lab.write(
            "runbooks/stoppable.yaml",
            &format!(
                "name: stoppable\nhosts: app\nsteps:\n\
                 \x20 - name: First\n    run: echo first >> {{{{ work }}}}/trail\n    rollback: echo undo-first >> {{{{ work }}}}/trail\n\
                 \x20 - name: Long\n    run: \"[ -e {{{{ work }}}}/quick ] || {sleep}; echo long >> {{{{ work }}}}/trail\"\n    rollback: echo undo-long >> {{{{ work }}}}/trail\n\
                 \x20 - name: Last\n    run: echo last >> {{{{ work }}}}/trail\n"
            ),
        );
        Stage {
            fleet,
            lab,
            sleep,
            first,
        }
    }

    fn trail(&self, i: usize) -> Vec<String> {
        fs::read_to_string(self.fleet.work_dir(self.host(i)).join("trail"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn spawn(&self, args: &[&str]) -> Child {
        self.lab
            .command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// The run directory, once step `step` started on both hosts.
    fn wait_started(&self, child: &mut Child, step: &str) -> PathBuf {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("opsrun ended ({status}) before `{step}` started");
            }
            for d in run_dirs(self.lab.path()) {
                let started = journal(&d)
                    .iter()
                    .filter(|e| e["event"] == "target_started" && e["step"] == step)
                    .count();
                if started >= 2 {
                    return d;
                }
            }
            assert!(Instant::now() < deadline, "`{step}` never started");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The remote `sleep` of the Long step, wherever it still runs.
    fn remote_sleeps(&self) -> Vec<u32> {
        sleeps(&self.sleep)
    }

    /// Waits until the Long step's command runs on both hosts.
    fn wait_remote_sleeps(&self) {
        wait_for_sleeps(&self.sleep, "the remote sleeps never started");
    }

    /// Waits up to `within` for the remote sleeps to be gone.
    fn sleeps_gone_within(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.remote_sleeps().is_empty() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.remote_sleeps().is_empty()
    }

    /// The ssh masters of this test's runs (they name the fleet's ssh_config).
    fn masters(&self) -> Vec<u32> {
        pids_with(&self.fleet.ssh_config().display().to_string())
            .into_iter()
            .filter(|p| {
                fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "ssh")
            })
            .collect()
    }

    fn verifies(&self, log: &Path) {
        let key = fs::read_to_string(self.lab_key_pub()).unwrap();
        let allowed = self.lab.write(
            "allowed_signers",
            &format!("* namespaces=\"opsrun-log\" {}\n", key.trim()),
        );
        let out = self
            .lab
            .test(&[
                "verify",
                &log.display().to_string(),
                "--allowed-signers",
                &allowed.display().to_string(),
            ])
            .output();
        assert_eq!(out.code, 0, "verify: {}\n{}", out.stdout, out.stderr);
    }

    fn lab_key_pub(&self) -> PathBuf {
        let key = self.lab.test(&[]).command();
        let key = key
            .get_envs()
            .find(|(k, _)| *k == "OPSRUN_SIGN_KEY")
            .and_then(|(_, v)| v.map(PathBuf::from))
            .expect("the lab signs with OPSRUN_SIGN_KEY");
        key.with_extension("pub")
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        // Locks are keyed by port on these hosts, which share /tmp: one left by a
        // failed test would refuse a later fleet that gets the same port.
        for i in 0..self.fleet.len() {
            let _ = fs::remove_dir_all(format!("/tmp/opsrun-lock-{}", self.fleet.port(i)));
        }
        // A failed test must not leave its remote sleep or masters to later tests.
        for pid in self.remote_sleeps().into_iter().chain(self.masters()) {
            // SAFETY: kill(2) on processes this test started.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
    }
}

/// The processes running `needle` (a sleep no other test runs), the sleep itself
/// only: the envelope's shell names the line too.
fn sleeps(needle: &str) -> Vec<u32> {
    pids_with(needle)
        .into_iter()
        .filter(|p| {
            fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "sleep")
        })
        .collect()
}

/// Waits until `needle` runs on both hosts.
fn wait_for_sleeps(needle: &str, never: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while sleeps(needle).len() < 2 {
        assert!(Instant::now() < deadline, "{never}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn run_dirs(lab: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = fs::read_dir(lab.join("runs"))
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    dirs.sort();
    dirs
}

fn journal(dir: &Path) -> Vec<Value> {
    fs::read_to_string(dir.join("journal.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: kill(2) on our own child, not reaped yet.
    unsafe { libc::kill(child.id() as libc::pid_t, sig) };
}

fn targets(dir: &Path, step: &str) -> Vec<(String, String)> {
    journal(dir)
        .iter()
        .filter(|e| e["event"] == "target_finished" && e["step"] == step && e["phase"] == "forward")
        .map(|e| {
            (
                e["host"].as_str().unwrap_or_default().to_string(),
                e["status"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// A SIGTERM or SIGHUP 2 s into the 5 s step: it finishes on the hosts, the
/// third step never starts, and the run ends as if stopped after the step.
fn a_signal_lets_the_running_step_finish_then_ends_cleanly(
    stage: Stage,
    sig: libc::c_int,
    name: &str,
) {
    let mut child = stage.spawn(&["stoppable", "--env", "lab", "--yes"]);
    let dir = stage.wait_started(&mut child, "Long");
    std::thread::sleep(Duration::from_secs(2));
    signal(&child, sig);
    let out = child.wait_with_output().unwrap();
    let run = Run::from_output(out, stage.lab.path()).expect_log();
    run.expect_code(130);
    for i in 0..2 {
        assert_eq!(
            stage.trail(i),
            ["first", "long"],
            "host {i}: the step finished, the next never started"
        );
    }
    let events = journal(&dir);
    let last = events.last().unwrap();
    assert_eq!(last["event"], "run_finished", "{last}");
    assert_eq!(last["outcome"], "interrupted");
    assert_eq!(
        last["message"],
        format!("stopped by {name} after the running step")
    );
    assert!(events
        .iter()
        .any(|e| e["event"] == "interrupt" && e["choice"] == "after_step"));
    assert_eq!(targets(&dir, "Long").len(), 2);
    assert!(targets(&dir, "Long").iter().all(|(_, s)| s == "ok"));
    assert!(targets(&dir, "Last").is_empty());
    // The locks were released: a new run starts without --break-lock.
    assert!(events
        .iter()
        .filter(|e| e["event"] == "lock")
        .any(|e| e["action"] == "released"));
    stage.verifies(&dir.join("log.md"));
    assert!(
        run.stderr.contains("opsrun rollback"),
        "says how to undo: {}",
        run.stderr
    );
    // Masters behind a jump host run with a config of their own: tests/it/masters.rs
    // follows those (and their hops) by their connection directory.
    if stage.first == 0 {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !stage.masters().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            stage.masters().is_empty(),
            "no ssh master of the run is left"
        );
    }
    let again = stage
        .lab
        .test(&["stoppable", "--env", "lab", "--yes", "--limit", "web1"])
        .output();
    assert_eq!(again.code, 0, "{}\n{}", again.stdout, again.stderr);
}

#[test]
fn sigterm_lets_the_running_step_finish_then_ends_cleanly() {
    a_signal_lets_the_running_step_finish_then_ends_cleanly(
        Stage::new(5),
        libc::SIGTERM,
        "SIGTERM",
    );
}

#[test]
fn sigterm_behind_a_jump_host_lets_the_running_step_finish_then_ends_cleanly() {
    a_signal_lets_the_running_step_finish_then_ends_cleanly(
        Stage::behind_jump(5),
        libc::SIGTERM,
        "SIGTERM",
    );
}

#[test]
fn sighup_lets_the_running_step_finish_then_ends_cleanly() {
    a_signal_lets_the_running_step_finish_then_ends_cleanly(
        Stage::new(5),
        libc::SIGHUP,
        "SIGHUP (the terminal hung up)",
    );
}

#[test]
fn a_terminal_that_hangs_up_mid_step_ends_the_run_cleanly_without_asking() {
    a_terminal_hang_up_ends_the_run_cleanly(Stage::new(5));
}

#[test]
fn a_terminal_that_hangs_up_behind_a_jump_host_ends_the_run_cleanly() {
    a_terminal_hang_up_ends_the_run_cleanly(Stage::behind_jump(5));
}

fn a_terminal_hang_up_ends_the_run_cleanly(stage: Stage) {
    // The gate is answered, then the terminal goes away 2 s into the long step.
    let (code, screen) = run_on_pty(
        stage.lab.command(&["stoppable", "--env", "lab"]),
        &[("[2/3] Long", HANG_UP)],
    );
    let dir = run_dirs(stage.lab.path()).pop().expect("a run directory");
    assert_eq!(code, 130, "{screen}");
    for i in 0..2 {
        assert_eq!(stage.trail(i), ["first", "long"], "host {i}");
    }
    let last = journal(&dir).pop().unwrap();
    assert_eq!(last["event"], "run_finished");
    assert_eq!(
        last["message"],
        "stopped by SIGHUP (the terminal hung up) after the running step"
    );
    assert!(
        !screen.contains("Choice [w/s/r]"),
        "nothing is asked of a terminal that is gone"
    );
    stage.verifies(&dir.join("log.md"));
}

/// "Stop now" kills the remote command within 2 s and records it as killed.
fn stop_now_kills_the_remote_command(stage: Stage, stop: impl FnOnce(&Stage) -> (i32, PathBuf)) {
    let started = Instant::now();
    let (code, dir) = stop(&stage);
    assert_eq!(code, 130);
    assert!(
        stage.sleeps_gone_within(Duration::from_secs(2)),
        "the remote sleep still runs"
    );
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "the run waited for the sleep"
    );
    let long = targets(&dir, "Long");
    assert_eq!(long.len(), 2, "{long:?}");
    assert!(long.iter().all(|(_, s)| s == "interrupted"), "{long:?}");
    let reason: Vec<String> = journal(&dir)
        .iter()
        .filter(|e| e["event"] == "target_finished" && e["step"] == "Long")
        .map(|e| e["reason"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        reason.iter().all(|r| r.contains("killed on the host")),
        "{reason:?}"
    );
    for i in 0..2 {
        assert_eq!(
            stage.trail(i),
            ["first"],
            "host {i}: the killed step did not finish"
        );
    }
    assert_eq!(journal(&dir).pop().unwrap()["event"], "run_finished");
}

fn second_signal(stage: &Stage) -> (i32, PathBuf) {
    let mut child = stage.spawn(&["stoppable", "--env", "lab", "--yes"]);
    let dir = stage.wait_started(&mut child, "Long");
    stage.wait_remote_sleeps();
    signal(&child, libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    signal(&child, libc::SIGTERM);
    let out = child.wait_with_output().unwrap();
    (out.status.code().unwrap_or(-1), dir)
}

fn ctrl_c_s(stage: &Stage) -> (i32, PathBuf) {
    let (code, screen) = run_on_pty(
        stage.lab.command(&["stoppable", "--env", "lab"]),
        &[("[2/3] Long", CTRL_C), ("Choice [w/s/r]", "s")],
    );
    let run = pty_run(code, &screen, stage.lab.path());
    (code, run.dir().to_path_buf())
}

#[test]
fn a_second_signal_stops_now_and_kills_the_remote_command() {
    stop_now_kills_the_remote_command(Stage::new(30), second_signal);
}

#[test]
fn a_second_signal_behind_a_jump_host_stops_now_and_kills_the_remote_command() {
    stop_now_kills_the_remote_command(Stage::behind_jump(30), second_signal);
}

#[test]
fn ctrl_c_stop_now_on_a_terminal_kills_the_remote_command() {
    stop_now_kills_the_remote_command(Stage::new(30), ctrl_c_s);
}

#[test]
fn ctrl_c_stop_now_behind_a_jump_host_kills_the_remote_command() {
    stop_now_kills_the_remote_command(Stage::behind_jump(30), ctrl_c_s);
}

#[test]
fn after_sigkill_the_rollback_of_that_run_takes_over_its_lock_and_kills_what_it_left() {
    sigkill_then_rollback_takes_over(Stage::new(30));
}

#[test]
fn after_sigkill_behind_a_jump_host_the_rollback_takes_over_and_kills_what_it_left() {
    sigkill_then_rollback_takes_over(Stage::behind_jump(30));
}

fn sigkill_then_rollback_takes_over(stage: Stage) {
    let mut child = stage.spawn(&["stoppable", "--env", "lab", "--yes"]);
    let dir = stage.wait_started(&mut child, "Long");
    stage.wait_remote_sleeps();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !stage.remote_sleeps().is_empty(),
        "the killed run's command goes on"
    );
    // Another run of the same runbook is refused: the lock is the killed run's.
    let other = stage
        .lab
        .test(&["stoppable", "--env", "lab", "--yes"])
        .output();
    assert_eq!(other.code, 1, "{}\n{}", other.stdout, other.stderr);
    assert!(other.stderr.contains("is locked"), "{}", other.stderr);
    let rollback = stage
        .lab
        .test(&["rollback", &dir.display().to_string(), "--yes"])
        .output();
    assert_eq!(rollback.code, 0, "{}\n{}", rollback.stdout, rollback.stderr);
    assert!(
        rollback.stderr.contains("took over the lock"),
        "{}",
        rollback.stderr
    );
    assert!(
        stage.sleeps_gone_within(Duration::from_secs(2)),
        "what the killed run left is killed"
    );
    for i in 0..2 {
        assert!(
            stage.trail(i).contains(&"undo-first".to_string()),
            "host {i}: {:?}",
            stage.trail(i)
        );
    }
    let rb = run_dirs(stage.lab.path())
        .into_iter()
        .find(|d| d.display().to_string().ends_with("-rollback"))
        .expect("the rollback's run directory");
    let taken: Vec<Value> = journal(&rb)
        .into_iter()
        .filter(|e| e["event"] == "lock" && e["action"] == "taken_over")
        .collect();
    assert_eq!(taken.len(), 2, "{taken:?}");
    // Now free: a new run starts without --break-lock.
    let again = stage
        .lab
        .test(&["stoppable", "--env", "lab", "--yes", "--limit", "web1"])
        .output();
    assert_eq!(again.code, 0, "{}\n{}", again.stdout, again.stderr);
}

#[test]
fn after_sigkill_a_resume_of_that_run_takes_over_its_lock_and_goes_on() {
    let stage = Stage::new(30);
    let mut child = stage.spawn(&["stoppable", "--env", "lab", "--yes"]);
    let dir = stage.wait_started(&mut child, "Long");
    stage.wait_remote_sleeps();
    child.kill().unwrap();
    child.wait().unwrap();
    // Quick this time (the runbook reads a flag on the host), so the resumed step ends at once.
    for i in 0..2 {
        fs::write(stage.fleet.work_dir(stage.host(i)).join("quick"), "").unwrap();
    }
    let id = dir.file_name().unwrap().to_string_lossy().into_owned();
    let resumed = stage
        .lab
        .test(&["stoppable", "--env", "lab", "--yes", "--resume", &id])
        .output();
    assert_eq!(resumed.code, 0, "{}\n{}", resumed.stdout, resumed.stderr);
    assert!(
        resumed.stderr.contains("took over the lock"),
        "{}",
        resumed.stderr
    );
    assert!(
        stage.sleeps_gone_within(Duration::from_secs(2)),
        "the killed run's command was stopped first"
    );
    for i in 0..2 {
        assert_eq!(stage.trail(i), ["first", "long", "last"], "host {i}");
    }
}

/// SIGKILL at many points of a run whose steps record `do`/`undo` on the hosts:
/// after each, `opsrun rollback RUN --yes` (no --break-lock) leaves no `do`
/// without its `undo`, the step in flight included; a second rollback does
/// nothing; no ssh master of the killed run survives.
#[test]
fn sigkill_anywhere_then_rollback_leaves_nothing_applied() {
    sigkill_anywhere_then_rollback(Stage::new(1), 20);
}

#[test]
fn sigkill_anywhere_behind_a_jump_host_then_rollback_leaves_nothing_applied() {
    sigkill_anywhere_then_rollback(Stage::behind_jump(1), 8);
}

fn sigkill_anywhere_then_rollback(stage: Stage, kills: u64) {
    let lab = &stage.lab;
    let mut steps = String::new();
    for n in 1..=6 {
        steps.push_str(&format!(
            "  - name: Step {n}\n    run: echo do-{n} >> {{{{ work }}}}/trail && sleep 0.15\n    rollback: echo undo-{n} >> {{{{ work }}}}/trail\n"
        ));
    }
    lab.write(
        "runbooks/steps.yaml",
        &format!("name: steps\nhosts: app\nsteps:\n{steps}"),
    );
    let trail = |i: usize| stage.trail(i);
    // Deterministic spread of kill times over the run (about 1.5 s long), not random:
    // a failure must reproduce.
    for k in 0..kills {
        for i in 0..2 {
            let _ = fs::remove_file(stage.fleet.work_dir(stage.host(i)).join("trail"));
        }
        let before = run_dirs(lab.path());
        let mut child = lab
            .command(&["steps", "--env", "lab", "--yes"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(150 + k * 20 / kills * 83 % 1500));
        child.kill().unwrap();
        child.wait().unwrap();
        let dir = run_dirs(lab.path())
            .into_iter()
            .find(|d| !before.contains(d))
            .expect("the killed run left its directory");
        let id = dir.display().to_string();
        let rollback = lab.test(&["rollback", &id, "--yes"]).output();
        assert!(
            rollback.code == 0,
            "kill {k}: rollback exit {}\n{}\n{}",
            rollback.code,
            rollback.stdout,
            rollback.stderr
        );
        for i in 0..2 {
            let t = trail(i);
            for n in 1..=6 {
                if let Some(at) = t.iter().position(|l| *l == format!("do-{n}")) {
                    assert!(
                        t[at..].contains(&format!("undo-{n}")),
                        "kill {k}, host {i}: do-{n} without its undo: {t:?}"
                    );
                }
            }
        }
        let settled: Vec<Vec<String>> = (0..2).map(trail).collect();
        let again = lab.test(&["rollback", &id, "--yes"]).output();
        assert!(again.code == 0 || again.code == 1, "{}", again.stderr);
        assert_eq!(
            (0..2).map(trail).collect::<Vec<_>>(),
            settled,
            "kill {k}: a second rollback changed the hosts"
        );
    }
    // Behind a jump host the masters run with a config of their own: tests/it/masters.rs.
    let deadline = Instant::now() + Duration::from_secs(30);
    while stage.first == 0 && !stage.masters().is_empty() {
        assert!(
            Instant::now() < deadline,
            "ssh masters of killed runs survived 30 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_rollback_kills_what_the_killed_run_left_even_when_its_lock_was_removed_by_hand() {
    let stage = Stage::new(30);
    let mut child = stage.spawn(&["stoppable", "--env", "lab", "--yes"]);
    let dir = stage.wait_started(&mut child, "Long");
    stage.wait_remote_sleeps();
    child.kill().unwrap();
    child.wait().unwrap();
    // Someone cleans up the locks by hand: the rollback takes fresh ones, and
    // must still find the killed run's command before it undoes anything.
    for i in 0..2 {
        fs::remove_dir_all(format!("/tmp/opsrun-lock-{}", stage.fleet.port(i))).unwrap();
    }
    let rollback = stage
        .lab
        .test(&["rollback", &dir.display().to_string(), "--yes"])
        .output();
    assert_eq!(rollback.code, 0, "{}\n{}", rollback.stdout, rollback.stderr);
    assert!(
        rollback.stderr.contains("killed a command of run"),
        "{}",
        rollback.stderr
    );
    assert!(stage.sleeps_gone_within(Duration::from_secs(2)));
    let rb = run_dirs(stage.lab.path())
        .into_iter()
        .find(|d| d.display().to_string().ends_with("-rollback"))
        .unwrap();
    let leftovers: Vec<Value> = journal(&rb)
        .into_iter()
        .filter(|e| e["event"] == "leftover")
        .collect();
    assert_eq!(leftovers.len(), 2, "{leftovers:?}");
    assert!(leftovers.iter().all(|e| e["killed"] == true));
    // The undo of the killed step ran after the kill: its `long` never came.
    for i in 0..2 {
        let t = stage.trail(i);
        assert!(!t.contains(&"long".to_string()), "host {i}: {t:?}");
        assert!(t.contains(&"undo-long".to_string()), "host {i}: {t:?}");
    }
}

#[test]
fn sigterm_during_a_rollback_finishes_the_running_undo_and_a_later_rollback_does_the_rest() {
    let stage = Stage::new(1);
    let slow_undo = format!(
        "{} ; echo undo-slow >> {{{{ work }}}}/trail",
        stage.sleep.replace("sleep 1.", "sleep 3.")
    );
    stage.lab.write(
        "runbooks/undoable.yaml",
        &format!(
            "name: undoable\nhosts: app\nsteps:\n\
             \x20 - name: A\n    run: echo a >> {{{{ work }}}}/trail\n    rollback: echo undo-a >> {{{{ work }}}}/trail\n\
             \x20 - name: B\n    run: echo b >> {{{{ work }}}}/trail\n    rollback: \"{slow_undo}\"\n"
        ),
    );
    let run = stage
        .lab
        .test(&["undoable", "--env", "lab", "--yes"])
        .output();
    assert_eq!(run.code, 0, "{}", run.stderr);
    let dir = run_dirs(stage.lab.path()).pop().unwrap();
    let child = stage.spawn(&["rollback", &dir.display().to_string(), "--yes"]);
    let sleep3 = stage.sleep.replace("sleep 1.", "sleep 3.");
    wait_for_sleeps(&sleep3, "the slow undo never started");
    signal(&child, libc::SIGTERM);
    let out = child.wait_with_output().unwrap();
    let stopped = Run::from_output(out, stage.lab.path());
    assert_ne!(stopped.code, 0, "{}", stopped.stderr);
    for i in 0..2 {
        assert_eq!(
            stage.trail(i),
            ["a", "b", "undo-slow"],
            "host {i}: the running undo finished, the next never started"
        );
    }
    assert!(
        stopped.stderr.contains("rollback stopped by SIGTERM"),
        "{}",
        stopped.stderr
    );
    let again = stage
        .lab
        .test(&["rollback", &dir.display().to_string(), "--yes"])
        .output();
    assert_eq!(again.code, 0, "{}\n{}", again.stdout, again.stderr);
    for i in 0..2 {
        assert_eq!(
            stage.trail(i),
            ["a", "b", "undo-slow", "undo-a"],
            "host {i}: each undo ran once"
        );
    }
}

#[test]
fn sigterm_during_the_automatic_rollback_leaves_a_record_that_says_so() {
    let stage = Stage::new(1);
    let sleep3 = stage.sleep.replace("sleep 1.", "sleep 3.");
    stage.lab.write(
        "runbooks/failing.yaml",
        &format!(
            "name: failing\nhosts: app\nsteps:\n\
             \x20 - name: A\n    run: echo a >> {{{{ work }}}}/trail\n    rollback: echo undo-a >> {{{{ work }}}}/trail\n\
             \x20 - name: B\n    run: echo b >> {{{{ work }}}}/trail\n    rollback: \"{sleep3} ; echo undo-b >> {{{{ work }}}}/trail\"\n\
             \x20 - name: C\n    run: \"false\"\n"
        ),
    );
    let child = stage.spawn(&["failing", "--env", "lab", "--yes"]);
    wait_for_sleeps(&sleep3, "the slow undo never started");
    signal(&child, libc::SIGTERM);
    let out = child.wait_with_output().unwrap();
    let run = Run::from_output(out, stage.lab.path());
    // The run failed (step C): that stays its exit code; the rollback's stop is said.
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("SIGTERM: no new step or undo starts"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("ROLLBACK STOPPED by SIGTERM"),
        "{}",
        run.stderr
    );
    for i in 0..2 {
        assert_eq!(stage.trail(i), ["a", "b", "undo-b"], "host {i}");
    }
    let table = stage.lab.runs_table();
    assert_eq!(
        table[0]["result"], "failed, rollback interrupted",
        "{table:?}"
    );
}

/// A step run `as:` another user through sudo: the login may not signal that
/// user's processes itself, so stop now signals them through sudo, as their owner.
#[test]
fn stop_now_kills_a_step_run_as_another_user_through_sudo() {
    crate::support::sim::ensure_dm_user();
    let stage = Stage::new(25);
    for i in 0..2 {
        let trail = stage.fleet.work_dir(stage.host(i)).join("trail2");
        fs::write(&trail, "").unwrap();
        fs::set_permissions(&trail, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    }
    stage.lab.write(
        "runbooks/as-dmdba.yaml",
        &format!(
            "name: as-dmdba\nhosts: app\nsteps:\n\
             \x20 - name: Deploy\n    as: dmdba\n    run: \"{} ; echo applied >> {{{{ work }}}}/trail2\"\n    rollback: echo undo >> {{{{ work }}}}/trail2\n",
            stage.sleep
        ),
    );
    let mut child = stage.spawn(&["as-dmdba", "--env", "lab", "--yes"]);
    let dir = stage.wait_started(&mut child, "Deploy");
    stage.wait_remote_sleeps();
    signal(&child, libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    signal(&child, libc::SIGTERM);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130));
    assert!(
        stage.sleeps_gone_within(Duration::from_secs(5)),
        "dmdba's sleep still runs"
    );
    let deploy = targets(&dir, "Deploy");
    assert_eq!(deploy.len(), 2, "{deploy:?}");
    assert!(deploy.iter().all(|(_, s)| s == "interrupted"), "{deploy:?}");
    std::thread::sleep(Duration::from_millis(500));
    for i in 0..2 {
        let trail = fs::read_to_string(stage.fleet.work_dir(stage.host(i)).join("trail2")).unwrap();
        assert!(!trail.contains("applied"), "host {i}: {trail}");
    }
}

/// A child that starts a session of its own leaves the command's reach: stop
/// now cannot kill it, and since it still holds the command's output, the step
/// never ends on its connection; opsrun says so and keeps the host's lock.
#[test]
fn a_child_in_a_session_of_its_own_keeps_the_lock_instead_of_a_false_release() {
    let stage = Stage::new(40);
    stage.lab.write(
        "runbooks/escape.yaml",
        &format!(
            "name: escape\nhosts: app\nsteps:\n\
             \x20 - name: Deploy\n    run: \"setsid -w sh -c '{}'\"\n    rollback: echo undo >> {{{{ work }}}}/trail\n",
            stage.sleep
        ),
    );
    let mut child = stage.spawn(&["escape", "--env", "lab", "--yes"]);
    let dir = stage.wait_started(&mut child, "Deploy");
    stage.wait_remote_sleeps();
    signal(&child, libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    signal(&child, libc::SIGTERM);
    let out = child.wait_with_output().unwrap();
    let run = Run::from_output(out, stage.lab.path());
    assert_eq!(run.code, 130, "{}", run.stderr);
    assert!(
        run.stderr.contains("never ended on its connection"),
        "{}",
        run.stderr
    );
    let kept: Vec<Value> = journal(&dir)
        .into_iter()
        .filter(|e| e["event"] == "lock" && e["action"] == "kept_busy")
        .collect();
    assert_eq!(kept.len(), 2, "the locks are kept, not released: {kept:?}");
}
