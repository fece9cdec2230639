//! Ctrl-C, SIGTERM and SIGHUP on a run over scripted hosts: what each choice
//! lets finish, kills, records and undoes.

use super::*;
use crate::execute::interrupt::Interrupt;
use crate::record::events::{Signal, Status};
use crate::transport::fake::{Fleet, Reply};

/// A fleet where oa1's `deploy v2` presses Ctrl-C as it starts and is still
/// running when the operator answers; oa2's finishes at once.
/// What the hosts received when the run stopped during oa1's deploy.
const UP_TO_DEPLOY: [&str; 4] = [
    "oa1: stop app",
    "oa2: stop app",
    "oa1: deploy v2",
    "oa2: deploy v2",
];

pub(super) fn interrupted_at_deploy(interrupt: &Interrupt) -> Fleet {
    let fleet = fleet();
    let ctrl_c = interrupt.ctrl_c();
    fleet.answer(move |r| {
        (r.host == "oa1" && r.line == "deploy v2").then(|| {
            ctrl_c.press();
            Reply::ok().after(RUNNING)
        })
    });
    fleet
}

fn ctrl_c(answer: Stop) -> Ran {
    let interrupt = Interrupt::scripted(move || answer);
    let fleet = interrupted_at_deploy(&interrupt);
    Lab::new().run(
        &mut planner(DEPLOY, options()),
        &fleet,
        Mode::Run,
        interrupt,
    )
}

fn interrupts(ran: &Ran) -> usize {
    ran.events()
        .iter()
        .filter(|e| matches!(e, Event::Interrupt { .. }))
        .count()
}

#[test]
fn ctrl_c_wait_lets_the_running_step_finish_then_stops() {
    let ran = ctrl_c(Stop::AfterStep);
    assert_eq!(ran.commands(), UP_TO_DEPLOY);
    assert_eq!(ran.exit_code, exit::INTERRUPTED);
    assert_eq!(
        ran.message(),
        "stopped by the operator (Ctrl-C) after the running step"
    );
    assert_eq!(interrupts(&ran), 1);
    // The step finished on both hosts: a resume would start after it.
    let recorded = crate::record::runs::load(&ran.dir).unwrap();
    assert_eq!(
        resume_start(&planner(DEPLOY, options()), &recorded),
        Some(2)
    );
}

#[test]
fn ctrl_c_stop_now_kills_the_running_step_and_undoes_nothing() {
    let ran = ctrl_c(Stop::Now);
    assert_eq!(ran.commands(), UP_TO_DEPLOY);
    assert_eq!(ran.exit_code, exit::INTERRUPTED);
    assert_eq!(
        ran.message(),
        "stopped by the operator (Ctrl-C): the running step was killed on its hosts"
    );
    assert_eq!(interrupts(&ran), 1);
    // oa1's deploy never finished: a resume runs it again.
    let recorded = crate::record::runs::load(&ran.dir).unwrap();
    assert_eq!(
        resume_start(&planner(DEPLOY, options()), &recorded),
        Some(1)
    );
}

#[test]
fn ctrl_c_stop_and_roll_back_undoes_what_completed_and_the_unfinished_step() {
    let ran = ctrl_c(Stop::NowAndRollback);
    assert_eq!(
        ran.commands(),
        [
            "oa1: stop app",
            "oa2: stop app",
            "oa1: deploy v2",
            "oa2: deploy v2",
            // oa1's deploy was cut off: it may be partly applied, so it is undone
            // too, in its place (the latest step on oa1).
            "oa1: deploy v1",
            "oa2: deploy v1",
            "oa1: start app",
            "oa2: start app",
        ]
    );
    assert_eq!(ran.exit_code, exit::INTERRUPTED);
    assert_eq!(
        ran.message(),
        "stopped by the operator (Ctrl-C): the running step was killed on its hosts; \
         rolled back 2 steps: undone on oa1: `deploy` (in flight when the run stopped), `stop`; \
         on oa2: `deploy`, `stop`"
    );
}

#[test]
fn a_recorded_rollback_undoes_the_step_that_was_in_flight_when_the_run_stopped() {
    let lab = Lab::new();
    let interrupt = Interrupt::scripted(|| Stop::Now);
    let hosts = interrupted_at_deploy(&interrupt);
    let first = lab.run(
        &mut planner(DEPLOY, options()),
        &hosts,
        Mode::Run,
        interrupt,
    );
    assert_eq!(first.exit_code, exit::INTERRUPTED);
    let recorded = crate::record::runs::load(&first.dir).unwrap();
    assert_eq!(
        recorded.in_flight,
        BTreeMap::from([(
            1,
            vec![crate::plan::Completion {
                host: "oa1".into(),
                batch: None
            }]
        )])
    );
    let (lines, _) = rollback_preview(&planner(DEPLOY, options()), &plan_of(DEPLOY), &recorded);
    assert!(
        lines
            .iter()
            .any(|l| l == "  [2] deploy on oa1 (in flight when the run stopped), oa2"),
        "{lines:#?}"
    );

    let back = roll_back(&lab, &first, DEPLOY, &fleet());
    assert_eq!(
        back.commands(),
        [
            "oa1: deploy v1",
            "oa2: deploy v1",
            "oa1: start app",
            "oa2: start app"
        ]
    );
    assert_eq!(
        (back.exit_code, back.message()),
        (
            exit::OK,
            format!(
                "rolled back 2 steps of run {}: undone on oa1: `deploy` (in flight when the run \
                 stopped), `stop`; on oa2: `deploy`, `stop`",
                id(&first)
            )
        )
    );
    // Undone, the in-flight step is no longer: a second rollback has nothing left.
    let again = roll_back(&lab, &first, DEPLOY, &fleet());
    assert_eq!(again.commands(), Vec::<String>::new());
    assert_eq!(
        again.message(),
        format!("run {} has no completed step left to undo", id(&first))
    );
}

#[test]
fn a_step_in_flight_without_a_rollback_is_left_to_check_by_hand() {
    let lab = Lab::new();
    let interrupt = Interrupt::scripted(|| Stop::Now);
    let hosts = fleet();
    let ctrl_c = interrupt.ctrl_c();
    hosts.answer(move |r| {
        (r.host == "oa2" && r.line == "verify").then(|| {
            ctrl_c.press();
            Reply::ok().after(RUNNING)
        })
    });
    let first = lab.run(
        &mut planner(DEPLOY, options()),
        &hosts,
        Mode::Run,
        interrupt,
    );
    let back = roll_back(&lab, &first, DEPLOY, &fleet());
    assert_eq!(back.commands().len(), 4, "{:?}", back.commands());
    assert!(
        back.message().ends_with(
            "; in flight when the run stopped, no rollback: check by hand: `verify` on oa2"
        ),
        "{}",
        back.message()
    );
}

#[test]
fn a_second_ctrl_c_while_the_question_is_open_stops_now() {
    // The operator presses Ctrl-C again instead of answering (the answer "wait" is never typed).
    let handle = std::sync::Arc::new(std::sync::Mutex::new(
        None::<crate::execute::interrupt::CtrlC>,
    ));
    let interrupt = Interrupt::scripted({
        let handle = std::sync::Arc::clone(&handle);
        move || {
            if let Some(c) = &*handle.lock().unwrap() {
                c.press();
            }
            Stop::AfterStep
        }
    });
    *handle.lock().unwrap() = Some(interrupt.ctrl_c());
    let fleet = interrupted_at_deploy(&interrupt);
    let ran = Lab::new().run(
        &mut planner(DEPLOY, options()),
        &fleet,
        Mode::Run,
        interrupt,
    );
    assert_eq!(ran.commands(), UP_TO_DEPLOY);
    assert_eq!(
        (ran.exit_code, ran.message()),
        (
            exit::INTERRUPTED,
            "stopped by the operator (Ctrl-C): the running step was killed on its hosts".into()
        )
    );
    // One choice recorded: the second press answered the question, it did not ask again.
    assert_eq!(interrupts(&ran), 1);
}

/// A fleet where oa1's `deploy v2` delivers `signals` to the run as it starts.
fn signalled_at_deploy(interrupt: &Interrupt, signals: &'static [Signal]) -> Fleet {
    let fleet = fleet();
    let ctrl_c = interrupt.ctrl_c();
    fleet.answer(move |r| {
        (r.host == "oa1" && r.line == "deploy v2").then(|| {
            for s in signals {
                ctrl_c.signal(*s);
            }
            Reply::ok().after(RUNNING * 5)
        })
    });
    fleet
}

/// A run whose operator must never be asked: a signal from outside asks nothing.
fn unasked() -> Interrupt {
    Interrupt::scripted(|| panic!("a SIGTERM or SIGHUP must not ask the operator"))
}

fn finished(ran: &Ran, step: &str) -> Vec<(String, Status, String)> {
    ran.events()
        .into_iter()
        .filter_map(|e| match e {
            Event::TargetFinished {
                step: s,
                host,
                status,
                reason,
                phase: crate::record::events::Phase::Forward,
                ..
            } if s == step => Some((host, status, reason.unwrap_or_default())),
            _ => None,
        })
        .collect()
}

#[test]
fn stop_now_kills_the_running_command_and_records_it_as_interrupted() {
    let ran = ctrl_c(Stop::Now);
    let deploy = finished(&ran, "deploy");
    let oa1 = deploy
        .iter()
        .find(|(h, ..)| h == "oa1")
        .expect("oa1's deploy is recorded");
    assert_eq!(oa1.1, Status::Interrupted, "{deploy:?}");
    assert!(oa1.2.contains("killed on the host"), "{}", oa1.2);
    // oa2's had finished before the kill: it stays done.
    assert!(
        deploy
            .iter()
            .any(|(h, st, _)| h == "oa2" && *st == Status::Ok),
        "{deploy:?}"
    );
}

#[test]
fn sigterm_lets_the_running_step_finish_and_starts_no_other_without_asking() {
    let interrupt = unasked();
    let fleet = signalled_at_deploy(&interrupt, &[Signal::Term]);
    let ran = Lab::new().run(
        &mut planner(DEPLOY, options()),
        &fleet,
        Mode::Run,
        interrupt,
    );
    assert_eq!(ran.commands(), UP_TO_DEPLOY);
    assert_eq!(ran.exit_code, exit::INTERRUPTED);
    assert_eq!(ran.message(), "stopped by SIGTERM after the running step");
    let deploy = finished(&ran, "deploy");
    assert!(
        deploy.iter().all(|(_, st, _)| *st == Status::Ok),
        "{deploy:?}"
    );
    let signals: Vec<(Stop, Option<Signal>)> = ran
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Interrupt { choice, signal, .. } => Some((choice, signal)),
            _ => None,
        })
        .collect();
    assert_eq!(signals, [(Stop::AfterStep, Some(Signal::Term))]);
}

#[test]
fn a_second_signal_after_sighup_stops_now() {
    let interrupt = unasked();
    let fleet = signalled_at_deploy(&interrupt, &[Signal::Hangup, Signal::Term]);
    let ran = Lab::new().run(
        &mut planner(DEPLOY, options()),
        &fleet,
        Mode::Run,
        interrupt,
    );
    assert_eq!(ran.exit_code, exit::INTERRUPTED);
    assert_eq!(
        ran.message(),
        "stopped by SIGTERM: the running step was killed on its hosts"
    );
    let deploy = finished(&ran, "deploy");
    assert!(
        deploy
            .iter()
            .any(|(h, st, _)| h == "oa1" && *st == Status::Interrupted),
        "{deploy:?}"
    );
    assert!(finished(&ran, "verify").is_empty(), "no new step started");
}
