//! The engine end to end, without root or sshd: plans run over scripted hosts
//! (`transport::fake`) wired in through [`run_wired`]; each test reads what the
//! hosts received, in order across hosts, and how the journal says the run ended.

use super::*;
use crate::diagnostic::SourceFile;
use crate::execute::interrupt::Interrupt;
use crate::load::{inventory_from_source, runbook_from_source};
use crate::plan::Options;
use crate::record::journal;
use crate::transport::fake::{Fleet, Reply};
use std::time::Duration;

const INVENTORY: &str = "\
name: t
groups:
  app:
    hosts:
      oa1: { address: 10.0.0.1 }
      oa2: { address: 10.0.0.2 }
";

/// Stop, deploy (both undoable), then verify: what most tests run.
const DEPLOY: &str = "\
name: deploy
hosts: app
steps:
  - name: stop
    run: stop app
    rollback: start app
  - name: deploy
    run: deploy v2
    rollback: deploy v1
  - name: verify
    run: verify
";

/// Long enough for a Ctrl-C pressed when a command arrives to be answered
/// while that command still runs; short enough not to slow the suite.
const RUNNING: Duration = Duration::from_millis(20);

/// Hosts that take their lock and answer every other command with success.
fn fleet() -> Fleet {
    let fleet = Fleet::new();
    fleet.on(
        "OPSRUN-LOCK-TAKEN",
        Reply::ok().stdout("OPSRUN-LOCK-TAKEN\n"),
    );
    fleet
}

fn failing(reason: &str) -> Reply {
    Reply::exit(1).stderr(&format!("{reason}\n"))
}

fn options() -> Options {
    Options {
        operator: "tester".into(),
        local_user: "tester".into(),
        ..Options::default()
    }
}

fn planner(runbook: &str, opts: Options) -> Planner {
    let rb = runbook_from_source(SourceFile::new("rb.yaml", runbook)).unwrap();
    let inv = inventory_from_source(SourceFile::new("inv.yaml", INVENTORY)).unwrap();
    Planner::new(rb, inv, opts).unwrap()
}

/// A log directory that runs (and the resume of a run) share; it lasts as long
/// as the last run that recorded in it.
#[derive(Clone)]
struct Lab {
    logs: std::sync::Arc<tempfile::TempDir>,
}

/// One finished run: what its hosts received and what it recorded.
struct Ran {
    fleet: Fleet,
    exit_code: i32,
    dir: PathBuf,
    _lab: Lab,
}

impl Lab {
    fn new() -> Lab {
        Lab {
            logs: std::sync::Arc::new(tempfile::tempdir().unwrap()),
        }
    }

    /// Runs `planner` with `--yes` (every gate answered yes, none asked).
    fn run(&self, planner: &mut Planner, fleet: &Fleet, mode: Mode, interrupt: Interrupt) -> Ran {
        let settings = Settings {
            gates: Gates {
                yes: true,
                env_explicit: Some(planner.inventory.name.clone()),
                interactive: false,
            },
            forks: 4,
            verbose: false,
            log_dir: self.logs.path().to_path_buf(),
            operator: "tester".into(),
            break_lock: false,
            mode,
            signing: crate::sign::Signing::Unsigned,
        };
        let wiring = Wiring {
            interrupt,
            fleet: Some(fleet.clone()),
        };
        let result = run_wired(planner, settings, wiring).unwrap();
        let log = result.log.expect("every run writes its log");
        Ran {
            fleet: fleet.clone(),
            exit_code: result.exit_code,
            dir: log.parent().unwrap().to_path_buf(),
            _lab: self.clone(),
        }
    }
}

/// Runs `runbook` as a fresh run over `fleet`.
fn run(runbook: &str, fleet: &Fleet) -> Ran {
    Lab::new().run(
        &mut planner(runbook, options()),
        fleet,
        Mode::Run,
        Interrupt::default(),
    )
}

/// The lock and the registry of the run's commands on a host: not the runbook's commands.
fn bookkeeping(r: &crate::transport::fake::Received) -> bool {
    r.line.contains("/tmp/opsrun-lock-") || r.line.contains("/tmp/opsrun-run-")
}

impl Ran {
    /// `host: command` for every command the hosts received, in order; the lock
    /// taken before the first step and released after the last are left out.
    fn commands(&self) -> Vec<String> {
        self.fleet
            .received()
            .into_iter()
            .filter(|r| !bookkeeping(r))
            .map(|r| format!("{}: {}", r.host, r.line))
            .collect()
    }

    fn events(&self) -> Vec<Event> {
        journal::read(&self.dir.join(journal::FILE)).unwrap().events
    }

    /// The verdict the run recorded last.
    fn message(&self) -> String {
        match self.events().last() {
            Some(Event::RunFinished { message, .. }) => message.clone(),
            other => panic!("the journal ends with {other:?}, not the end of the run"),
        }
    }
}

#[test]
fn a_failure_undoes_the_completed_steps_latest_first_batch_by_batch() {
    // Batch by batch, the failed batch first, each batch's steps latest first:
    // only one node of a rolling run is ever down at a time.
    let rolling = DEPLOY.replace("hosts: app\n", "hosts: app\nserial: 1\n");
    let fleet = fleet();
    fleet.on_host("oa2", "verify", failing("error: health check failed"));
    let ran = run(&rolling, &fleet);
    assert_eq!(
        ran.commands(),
        [
            "oa1: stop app",
            "oa1: deploy v2",
            "oa1: verify",
            "oa2: stop app",
            "oa2: deploy v2",
            "oa2: verify",
            // The failed batch first, then the earlier one: one node down at a time.
            "oa2: deploy v1",
            "oa2: start app",
            "oa1: deploy v1",
            "oa1: start app",
        ]
    );
    assert_eq!(ran.exit_code, exit::STEP_FAILED);
    assert_eq!(
        ran.message(),
        "step `verify` failed on oa2 (exit 1: error: health check failed); \
         rolled back 2 steps: undone on oa1, oa2: `deploy`, `stop`"
    );
}

#[test]
fn on_failure_abort_stops_at_the_failed_step_and_undoes_nothing() {
    let abort = DEPLOY.replace(
        "    run: verify\n",
        "    run: verify\n    on_failure: abort\n",
    );
    let fleet = fleet();
    fleet.on_host("oa1", "verify", failing("error: health check failed"));
    let ran = run(&abort, &fleet);
    assert_eq!(
        ran.commands(),
        [
            "oa1: stop app",
            "oa2: stop app",
            "oa1: deploy v2",
            "oa2: deploy v2",
            "oa1: verify",
            "oa2: verify",
        ]
    );
    assert_eq!(ran.exit_code, exit::STEP_FAILED);
    assert_eq!(
        ran.message(),
        "step `verify` failed on oa1 (exit 1: error: health check failed); \
         nothing rolled back (on_failure: abort)"
    );
}

#[test]
fn on_failure_continue_goes_on_to_the_next_step_on_every_host() {
    let go_on = DEPLOY.replace(
        "    run: deploy v2\n",
        "    run: deploy v2\n    on_failure: continue\n",
    );
    let fleet = fleet();
    fleet.on_host("oa1", "deploy v2", failing("error: disk full"));
    let ran = run(&go_on, &fleet);
    assert_eq!(
        ran.commands(),
        [
            "oa1: stop app",
            "oa2: stop app",
            "oa1: deploy v2",
            "oa2: deploy v2",
            "oa1: verify",
            "oa2: verify",
        ]
    );
    assert_eq!(ran.exit_code, exit::OK);
    assert_eq!(ran.message(), "3 steps done");
}

/// Captures a version per host, deploys from it, and undoes to it.
const CAPTURING: &str = "\
name: upgrade
hosts: app
steps:
  - name: version
    run: cat /opt/app/VERSION
    capture: old_version
  - name: deploy
    run: deploy v2 --from {{ old_version }}
    rollback: deploy {{ old_version }}
  - name: verify
    run: verify {{ old_version }}
";

fn versioned() -> Fleet {
    let fleet = fleet();
    fleet
        .on_host("oa1", "VERSION", Reply::ok().stdout("1.4.2\n"))
        .on_host("oa2", "VERSION", Reply::ok().stdout("1.4.1\n"));
    fleet
}

#[test]
fn a_capture_reaches_later_steps_and_their_undo_on_its_own_host() {
    let fleet = versioned();
    fleet.on_host("oa2", "verify", failing("error: 1.4.1 is still running"));
    let ran = run(CAPTURING, &fleet);
    assert_eq!(
        ran.commands(),
        [
            "oa1: cat /opt/app/VERSION",
            "oa2: cat /opt/app/VERSION",
            "oa1: deploy v2 --from 1.4.2",
            "oa2: deploy v2 --from 1.4.1",
            "oa1: verify 1.4.2",
            "oa2: verify 1.4.1",
            "oa1: deploy 1.4.2",
            "oa2: deploy 1.4.1",
        ]
    );
    assert_eq!(ran.exit_code, exit::STEP_FAILED);
}

#[test]
fn a_resume_starts_at_the_first_step_not_done_everywhere_with_the_run_s_captures() {
    let lab = Lab::new();
    let abort = CAPTURING.replace(
        "    rollback: deploy {{ old_version }}\n",
        "    rollback: deploy {{ old_version }}\n    on_failure: abort\n",
    );
    let hosts = versioned();
    hosts.on_host("oa2", "deploy v2", failing("error: disk full"));
    let first = lab.run(
        &mut planner(&abort, options()),
        &hosts,
        Mode::Run,
        Interrupt::default(),
    );
    assert_eq!(first.exit_code, exit::STEP_FAILED);

    let recorded = crate::record::runs::load(&first.dir).unwrap();
    let probe = planner(&abort, options());
    // `version` ran everywhere; `deploy` did on oa1 only.
    assert_eq!(resume_start(&probe, &recorded), Some(1));
    let mut resumed = planner(
        &abort,
        Options {
            start_at: Some("deploy".into()),
            original_run: Some(recorded.run.clone()),
            ..options()
        },
    );
    // The disk was cleaned up; the versions are not read again.
    let again = fleet();
    let ran = lab.run(
        &mut resumed,
        &again,
        Mode::Resume(Box::new(recorded)),
        Interrupt::default(),
    );
    assert_eq!(
        ran.commands(),
        [
            "oa1: deploy v2 --from 1.4.2",
            "oa2: deploy v2 --from 1.4.1",
            "oa1: verify 1.4.2",
            "oa2: verify 1.4.1",
        ]
    );
    assert_eq!(
        (ran.exit_code, ran.message()),
        (exit::OK, "2 steps done".to_string())
    );

    // Resumed to the end: nothing is left to resume.
    let done = crate::record::runs::load(&ran.dir).unwrap();
    let mut all = crate::record::runs::load(&first.dir).unwrap();
    all.done.extend(done.done);
    assert_eq!(resume_start(&probe, &all), None);
}

/// oa1's verify fails the run; oa2's `deploy v1` (the undo of deploy) fails.
fn failed_undo() -> Fleet {
    let fleet = fleet();
    fleet
        .on_host("oa1", "verify", failing("error: health check failed"))
        .on_host(
            "oa2",
            "deploy v1",
            Reply::exit(2).stderr("error: no space left on device\n"),
        );
    fleet
}

#[test]
fn a_failed_undo_stops_the_earlier_undos_on_its_host_and_the_others_go_on() {
    let lab = Lab::new();
    let ran = lab.run(
        &mut planner(DEPLOY, options()),
        &failed_undo(),
        Mode::Run,
        Interrupt::default(),
    );
    assert_eq!(
        ran.commands(),
        [
            "oa1: stop app",
            "oa2: stop app",
            "oa1: deploy v2",
            "oa2: deploy v2",
            "oa1: verify",
            "oa2: verify",
            "oa1: deploy v1",
            "oa2: deploy v1",
            // Not `oa2: start app`: starting the old version over a half-restored
            // deploy could destroy what its retry needs.
            "oa1: start app",
        ]
    );
    assert_eq!(ran.exit_code, exit::STEP_FAILED);
    assert_eq!(
        ran.message(),
        format!(
            "step `verify` failed on oa1 (exit 1: error: health check failed); \
             ROLLBACK INCOMPLETE: not restored: `deploy` on oa2; still applied: on oa2: \
             `deploy`, `stop`; undone on oa1: `deploy`, `stop`; `opsrun rollback {}` retries \
             from the failed undo",
            id(&ran)
        )
    );

    // The cause fixed, a later rollback retries from the failed undo, in order.
    let back = roll_back(&lab, &ran, DEPLOY, &fleet());
    assert_eq!(back.commands(), ["oa2: deploy v1", "oa2: start app"]);
    assert_eq!(back.exit_code, exit::OK);
    // And nothing is left for another.
    let again = roll_back(&lab, &ran, DEPLOY, &fleet());
    assert_eq!(again.commands(), Vec::<String>::new());
}

#[test]
fn a_rollback_that_fails_again_keeps_the_earlier_undos_of_that_host_for_the_next() {
    let lab = Lab::new();
    let ran = lab.run(
        &mut planner(DEPLOY, options()),
        &failed_undo(),
        Mode::Run,
        Interrupt::default(),
    );
    let back = roll_back(&lab, &ran, DEPLOY, &failed_undo());
    assert_eq!(back.commands(), ["oa2: deploy v1"]);
    assert_eq!(back.exit_code, exit::STEP_FAILED);
    assert!(
        back.message()
            .contains("still applied: on oa2: `deploy`, `stop`"),
        "{}",
        back.message()
    );
    let fixed = roll_back(&lab, &ran, DEPLOY, &fleet());
    assert_eq!(fixed.commands(), ["oa2: deploy v1", "oa2: start app"]);
}

#[test]
fn a_secret_on_stdin_reaches_the_step_and_its_undo_and_never_the_record() {
    const LICENSE: &str = "\
name: license
hosts: app
params:
  key:
    secret: true
steps:
  - name: fetch
    local: true
    run: cat /srv/license/serial
    capture: serial
  - name: install
    run: install-license --serial {{ serial }}
    stdin: \"{{ key }}\"
    rollback: restore-license
  - name: verify
    run: verify
";
    let fleet = fleet();
    fleet
        .on_host("localhost", "serial", Reply::ok().stdout("SN-0042\n"))
        .on_host("oa2", "verify", failing("error: license rejected"));
    let opts = Options {
        secrets: [("key".to_string(), "k3y-s3cret".to_string())].into(),
        ..options()
    };
    let ran = Lab::new().run(
        &mut planner(LICENSE, opts),
        &fleet,
        Mode::Run,
        Interrupt::default(),
    );
    let received: Vec<(String, String, Option<String>)> = fleet
        .received()
        .into_iter()
        .filter(|r| !bookkeeping(r))
        .map(|r| {
            let stdin = r.stdin.map(|b| String::from_utf8(b).unwrap());
            (r.host, r.line, stdin)
        })
        .collect();
    let secret = Some("k3y-s3cret".to_string());
    let line = |h: &str, l: &str, s: &Option<String>| (h.to_string(), l.to_string(), s.clone());
    assert_eq!(
        received,
        [
            // A `local` step runs once, on the control machine; its capture is everyone's.
            line("localhost", "cat /srv/license/serial", &None),
            line("oa1", "install-license --serial SN-0042", &secret),
            line("oa2", "install-license --serial SN-0042", &secret),
            line("oa1", "verify", &None),
            line("oa2", "verify", &None),
            // Undoing a step that needed the secret needs it again: on stdin, not argv.
            line("oa1", "restore-license", &secret),
            line("oa2", "restore-license", &secret),
        ]
    );
    assert_eq!(ran.exit_code, exit::STEP_FAILED);
    let journal = std::fs::read_to_string(ran.dir.join(journal::FILE)).unwrap();
    assert!(!journal.contains("k3y-s3cret"), "{journal}");
    assert!(journal.contains(crate::sanitize::MASK));
}

/// The engine asks the plan's gates as the plan words them: per batch, naming
/// that batch's hosts; a manual step's instructions are recorded as planned.
#[test]
fn the_engine_asks_each_gate_as_the_plan_words_it_for_the_batch() {
    let rb = "\
name: gated
hosts: app
serial: 1
steps:
  - name: stop
    run: stop app
    confirm: Stop the app?
  - name: tell
    manual: Tell the duty officer
";
    let mut p = planner(rb, options());
    let plan = p.plan().unwrap();
    let gate = plan.steps[0]
        .gates
        .of(crate::plan::AnswerKind::YesNo)
        .unwrap()
        .clone();
    let ran = Lab::new().run(&mut p, &fleet(), Mode::Run, Interrupt::default());
    assert_eq!(ran.exit_code, 0, "{}", ran.message());
    let asked: Vec<(Option<String>, Option<usize>, String)> = ran
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Gate {
                step: step @ Some(_),
                batch,
                prompt,
                ..
            } => Some((step, batch, prompt)),
            Event::Manual {
                step, instructions, ..
            } => Some((Some(step), None, instructions)),
            _ => None,
        })
        .collect();
    let stop = |b: usize| (Some("stop".to_string()), Some(b), gate.question(Some(b)));
    let tell = (
        Some("tell".to_string()),
        None,
        "Tell the duty officer".to_string(),
    );
    assert_eq!(asked, [stop(1), tell.clone(), stop(2), tell]);
    assert_eq!(gate.question(Some(2)), "Stop the app? (batch 2/2: oa2)");
}

/// In a run, a gate names the value each host captured (one question per
/// value, with its hosts), a manual step's instructions too, and a secret in
/// either (a param, or a captured value that holds one) is masked.
#[test]
fn a_gate_asks_with_each_host_s_captured_value_secrets_masked() {
    let rb = "\
name: gated
hosts: app
params:
  key:
    secret: true
steps:
  - name: version
    run: cat /opt/app/VERSION
    capture: ver
  - name: deploy
    run: deploy
    confirm: Deploy over {{ ver }} with {{ key }}?
  - name: tell
    manual: Tell them {{ ver }} is gone
";
    let fleet = fleet();
    fleet
        .on_host("oa1", "VERSION", Reply::ok().stdout("1.4.2\n"))
        .on_host("oa2", "VERSION", Reply::ok().stdout("v-k3y-s3cret\n"));
    let opts = Options {
        secrets: [("key".to_string(), "k3y-s3cret".to_string())].into(),
        ..options()
    };
    let ran = Lab::new().run(
        &mut planner(rb, opts),
        &fleet,
        Mode::Run,
        Interrupt::default(),
    );
    assert_eq!(ran.exit_code, 0, "{}", ran.message());
    let asked: Vec<String> = ran
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Gate {
                step: Some(_),
                prompt,
                ..
            } => Some(prompt),
            Event::Manual { instructions, .. } => Some(instructions),
            _ => None,
        })
        .collect();
    assert_eq!(
        asked,
        [
            "Deploy over 1.4.2 with ******? (on oa1)",
            "Deploy over v-****** with ******? (on oa2)",
            "(on oa1):\nTell them 1.4.2 is gone\n(on oa2):\nTell them v-****** is gone",
        ]
    );
}

#[test]
fn a_rollback_of_a_run_whose_resume_rolled_back_repeats_no_undo() {
    // Run 1 is stopped at deploy; its resume fails at verify and rolls back
    // everything (run 1's completed steps too). Rolling back run 1 afterwards
    // must not undo them a second time: their backups may be gone by then.
    let lab = Lab::new();
    let interrupt = Interrupt::scripted(|| Stop::Now);
    let hosts = interrupt::interrupted_at_deploy(&interrupt);
    let first = lab.run(
        &mut planner(DEPLOY, options()),
        &hosts,
        Mode::Run,
        interrupt,
    );
    let recorded = crate::record::runs::load(&first.dir).unwrap();
    let mut resumed = planner(
        DEPLOY,
        Options {
            start_at: Some("deploy".into()),
            original_run: Some(recorded.run.clone()),
            ..options()
        },
    );
    let failing_verify = fleet();
    failing_verify.on_host("oa1", "verify", failing("error: health check failed"));
    let resume = lab.run(
        &mut resumed,
        &failing_verify,
        Mode::Resume(Box::new(recorded)),
        Interrupt::default(),
    );
    assert_eq!(resume.exit_code, exit::STEP_FAILED);
    assert!(
        resume.commands().contains(&"oa1: start app".to_string()),
        "{:?}",
        resume.commands()
    );
    let back = roll_back(&lab, &first, DEPLOY, &fleet());
    assert_eq!(back.commands(), Vec::<String>::new());
}

#[test]
fn an_in_flight_step_whose_undo_reads_its_own_capture_is_left_by_hand_and_the_rest_undone() {
    // oa1 was stopped while `back up` ran: its capture never came, so its
    // rollback cannot be rendered there. Nothing runs for it; `stop` is still
    // undone on oa1 (no undo ran or failed in its place).
    const BACKUP: &str = "\
name: backup
hosts: app
steps:
  - name: stop
    run: stop app
    rollback: start app
  - name: back up
    run: make backup
    capture: backup
    rollback: rm {{ backup }}
";
    let interrupt = Interrupt::scripted(|| Stop::NowAndRollback);
    let hosts = fleet();
    hosts.on_host("oa2", "make backup", Reply::ok().stdout("/b2\n"));
    let ctrl_c = interrupt.ctrl_c();
    hosts.answer(move |r| {
        (r.host == "oa1" && r.line == "make backup").then(|| {
            ctrl_c.press();
            Reply::ok().stdout("/b1\n").after(RUNNING)
        })
    });
    let ran = Lab::new().run(
        &mut planner(BACKUP, options()),
        &hosts,
        Mode::Run,
        interrupt,
    );
    assert_eq!(
        ran.commands(),
        [
            "oa1: stop app",
            "oa2: stop app",
            "oa1: make backup",
            "oa2: make backup",
            "oa2: rm /b2",
            "oa1: start app",
            "oa2: start app",
        ]
    );
    let message = ran.message();
    assert!(
        message.contains(
            "in flight when the run stopped, its rollback cannot be rendered: check by hand: \
             `back up` on oa1 ("
        ),
        "{message}"
    );
}

/// `opsrun rollback` of `first`, over `fleet`.
fn roll_back(lab: &Lab, first: &Ran, runbook: &str, fleet: &Fleet) -> Ran {
    let recorded = crate::record::runs::load(&first.dir).unwrap();
    let mut p = planner(
        runbook,
        Options {
            original_run: Some(recorded.run.clone()),
            ..options()
        },
    );
    lab.run(
        &mut p,
        fleet,
        Mode::Rollback(Box::new(recorded)),
        Interrupt::default(),
    )
}

fn id(ran: &Ran) -> String {
    crate::record::view::dir_name(&ran.dir)
}

fn plan_of(runbook: &str) -> Plan {
    planner(runbook, options()).plan().unwrap()
}

mod interrupt;
