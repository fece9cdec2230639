//! One real run from start to finish: record → gate → connect → lock →
//! execute → roll back if needed → unlock → report. The record is written
//! before anything happens on a host, and the log is written however the run
//! ends; a run killed outright still leaves its journal.
//!
//! Receives a [`Planner`] (and its [`Plan`]) with the run's [`Settings`];
//! produces the events the record stage journals, the signed log, and a
//! [`RunResult`] with the exit code. Files: `engine` (the step loop),
//! `attempt` (one host's try at one step), `undo` and `rollback` (what is
//! undone and when), `interrupt` (Ctrl-C), `gate` (confirmations), `lock`
//! (host locks), `view` (the terminal), `logfile` (log.md at the end),
//! `wiring` (what a run's connections and Ctrl-C come from; scripted in `tests`).

mod attempt;
mod command;
pub mod engine;
pub mod failure;
pub mod gate;
mod gate_text;
pub mod interrupt;
pub mod lock;
mod logfile;
mod outputs;
mod resume;
mod rollback;
mod run_tmp;
mod supervise;
use run_tmp::RunTmp;
mod settle;

use lock::{release_locks, take_locks};
pub use logfile::{anchor as log_anchor, write_log, LOG_FILE};
pub use resume::resume_start;
use rollback::{batch_line, rollback_after_failure, rollback_recorded};
pub use rollback::{rollback_preview, rollback_steps};
mod undo;
pub mod view;
mod wiring;
pub(crate) use wiring::Wiring;

use crate::error::{exit, Error};
use crate::execute::engine::{Engine, ExecError, Finish};
use crate::execute::gate::Gates;
use crate::execute::interrupt::{interruptible, Stop};
use crate::execute::view::Ui;
use crate::load::inventory::ConfirmMode;
use crate::plan::{Captures, HostRef, OnFailure, Plan, Planner, Reveal, StepRef};
use crate::plural::count;
use crate::record::events::{self, Event, HostInfo, Outcome, ParamRecord, RunKind, SshRoute};
use crate::record::rundir::Recorder;
use crate::record::runs::Recorded;
use crate::sanitize::{escape_controls, escape_line, Redactor};
use crate::transport::{ConnectionKind, Endpoint};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// What kind of run this is.
pub enum Mode {
    Run,
    /// `--resume RUN`: carry on from the first step not completed everywhere.
    Resume(Box<Recorded>),
    /// `opsrun rollback RUN`: undo a recorded run.
    Rollback(Box<Recorded>),
}

pub struct Settings {
    pub gates: Gates,
    pub forks: usize,
    pub verbose: bool,
    pub log_dir: PathBuf,
    pub operator: String,
    pub break_lock: bool,
    pub mode: Mode,
    /// Loaded before the run, so a missing key or passphrase stops it before anything changes.
    pub signing: crate::sign::Signing,
}

/// The result of a run: exit code and where its log is.
pub struct RunResult {
    pub exit_code: i32,
    pub log: Option<PathBuf>,
}

pub fn control_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}

/// Runs the planned runbook. The run directory is reserved first and the plan
/// made again with its id, so `run.id` in templates is the id on record, unique
/// even for two runs started in the same second.
pub fn run(planner: &mut Planner, settings: Settings) -> Result<RunResult, Error> {
    run_wired(planner, settings, Wiring::default())
}

/// [`run`], wired to `wiring`.
pub(crate) fn run_wired(
    planner: &mut Planner,
    settings: Settings,
    wiring: Wiring,
) -> Result<RunResult, Error> {
    let base = planner.run_info().id.clone();
    let base_id = match &settings.mode {
        Mode::Run => base,
        Mode::Resume(_) => format!("{base}-resume"),
        Mode::Rollback(_) => format!("{base}-rollback"),
    };
    match (&settings.mode, outputs::check_room(&settings.log_dir)) {
        // Undoing a change must stay possible on the disk its run filled: the
        // rollback's record may be cut (and says so), the hosts come back.
        (Mode::Rollback(_), Err(Error::Stage { message, .. })) => {
            eprintln!("warning: {message}; the rollback runs anyway, its record may be cut")
        }
        (_, r) => r?,
    }
    let rollback = matches!(settings.mode, Mode::Rollback(_));
    let (rec, run_id) =
        Recorder::create(&settings.log_dir, &base_id, !rollback).map_err(record_err)?;
    planner.set_run_id(&run_id);
    let plan = planner.plan()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::Io(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(run_async(planner, &plan, settings, rec, run_id, &wiring))
}

fn record_err(e: crate::record::rundir::RecordError) -> Error {
    Error::Io(e.to_string())
}

fn run_started(
    planner: &Planner,
    plan: &Plan,
    s: &Settings,
    run_id: &str,
    registry_key: &str,
) -> Event {
    let (kind, rollback_of, resume_of) = match &s.mode {
        Mode::Run => (RunKind::Run, None, None),
        Mode::Resume(r) => (RunKind::Resume, None, Some(r.id.clone())),
        Mode::Rollback(r) => (RunKind::Rollback, Some(r.id.clone()), None),
    };
    Event::RunStarted {
        time: events::now(),
        version: events::JOURNAL_VERSION,
        run_id: run_id.to_string(),
        kind,
        rollback_of,
        resume_of,
        runbook: plan.runbook.name.clone(),
        runbook_version: plan.runbook.version.clone(),
        runbook_path: plan.runbook.path.clone(),
        runbook_sha256: plan.runbook.sha256.clone(),
        inventory: plan.inventory.name.clone(),
        inventory_path: plan.inventory.path.clone(),
        inventory_sha256: plan.inventory.sha256.clone(),
        operator: s.operator.clone(),
        control_host: control_host(),
        ticket: plan.run.ticket.clone(),
        opsrun_version: env!("CARGO_PKG_VERSION").into(),
        stamp: planner.template_run().stamp.clone(),
        params: plan
            .params
            .iter()
            .map(|p| ParamRecord {
                name: p.name.clone(),
                secret: p.secret,
                set: p.value.is_some(),
                // A secret's value is masked in the plan already; the journal keeps none.
                value: if p.secret { None } else { p.value.clone() },
            })
            .collect(),
        hosts: plan
            .hosts
            .iter()
            .map(|h| HostInfo {
                name: h.name.clone(),
                address: match h.endpoint.kind {
                    ConnectionKind::Local => "(this machine)".into(),
                    ConnectionKind::Ssh => h.endpoint.address.clone(),
                },
                login: h.login.clone(),
                connection: format!("{:?}", h.endpoint.kind).to_lowercase(),
                ssh: h.resolved.as_ref().map(|r| SshRoute {
                    user: r.user.clone(),
                    hostname: r.hostname.clone(),
                    port: r.port,
                    jump: r.jump.clone(),
                }),
            })
            .collect(),
        start_at: (planner.start_at() > 0).then(|| plan.steps[planner.start_at()].name.clone()),
        limit: planner.limit_pattern().map(str::to_string),
        registry_key: Some(registry_key.to_string()),
    }
}

async fn run_async(
    planner: &Planner,
    plan: &Plan,
    s: Settings,
    rec: Recorder,
    run_id: String,
    wiring: &Wiring,
) -> Result<RunResult, Error> {
    let ui = Ui::new(s.verbose);
    let tmp = RunTmp::create(&run_id).map_err(|e| {
        Error::Io(format!(
            "cannot create the run's temporary directory in {}: {e}",
            std::env::temp_dir().display()
        ))
    })?;
    rec.keep("runbook.yaml", &planner.runbook.source.text)
        .map_err(record_err)?;
    rec.keep("inventory.yaml", &planner.inventory.source.text)
        .map_err(record_err)?;
    let registry_key = supervise::registry_key(&run_id);
    rec.emit(&run_started(planner, plan, &s, &run_id, &registry_key))
        .map_err(record_err)?;
    // Names come from files anyone may have edited: shown escaped, like host output.
    ui.line(&format!(
        "run {run_id}: {} on {} ({})",
        escape_line(&plan.runbook.name),
        escape_line(&plan.inventory.name),
        // Only `local: true` steps (any other run without a host is refused).
        if plan.hosts.is_empty() {
            "this machine only".to_string()
        } else {
            count(plan.hosts.len(), "host", "hosts")
        }
    ));

    let redactor = Redactor::new(planner.secret_values().iter().map(String::as_str));
    let interrupt = &wiring.interrupt;
    // A resume runs again what was in flight; a rollback undoes it.
    let (captures, completed, in_flight) = match &s.mode {
        Mode::Run => (Captures::default(), BTreeMap::new(), BTreeMap::new()),
        Mode::Resume(r) => (r.captures.clone(), r.completed.clone(), BTreeMap::new()),
        Mode::Rollback(r) => (r.captures.clone(), r.completed.clone(), r.in_flight.clone()),
    };
    let mut engine = Engine {
        planner,
        plan,
        conns: HashMap::new(),
        local: wiring.control_machine(tmp.path()),
        rec: &rec,
        ui: &ui,
        gates: s.gates.clone(),
        forks: s.forks,
        operator: s.operator.clone(),
        redactor,
        captures: Mutex::new(captures),
        completed: Mutex::new(completed),
        in_flight: Mutex::new(in_flight),
        interrupt,
        failed_step: Mutex::new(None),
        registry_key,
        tags: Default::default(),
        kill: tokio::sync::watch::Sender::new(Default::default()),
        running: Default::default(),
        keep_locks: Default::default(),
    };

    let signals = tokio::spawn(interrupt::watch_signals(interrupt.ctrl_c()));
    let mut held: Vec<(Endpoint, String)> = Vec::new();
    // A bug (a panic) in the engine must not strand host locks or the record:
    // it ends the run like a failure, and the cleanup below still happens.
    let guarded = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(drive(
        &mut engine,
        plan,
        &s,
        &run_id,
        &mut held,
        wiring,
    )));
    let finish = guarded.await.unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        Ok(Finish {
            outcome: Outcome::Failed,
            message: format!("internal error, a bug in opsrun (please report it): {what}"),
            exit_code: exit::STEP_FAILED,
        })
    });
    signals.abort();
    ui.clear_spinners();
    let finish = match finish {
        Ok(f) => f,
        Err(ExecError::Gate(
            e @ (crate::execute::gate::GateError::Interrupted { .. }
            | crate::execute::gate::GateError::HungUp { .. }),
        )) => Finish {
            outcome: Outcome::Interrupted,
            message: e.to_string(),
            exit_code: exit::INTERRUPTED,
        },
        Err(ExecError::Gate(e)) => Finish {
            outcome: Outcome::NotConfirmed,
            message: e.to_string(),
            exit_code: exit::NOT_CONFIRMED,
        },
        Err(e) => Finish {
            outcome: Outcome::Failed,
            message: e.to_string(),
            exit_code: exit::STEP_FAILED,
        },
    };
    release_locks(&engine, &held, &run_id).await;
    for (_, c) in engine.conns.drain() {
        let _ = c.close().await;
    }
    // Before the verdict, so that a warning about it is not the last line printed.
    tmp.remove(&ui);
    if let Err(e) = rec.emit(&Event::RunFinished {
        time: events::now(),
        outcome: finish.outcome,
        message: finish.message.clone(),
    }) {
        ui.error(&format!("could not record the end of the run: {e}"));
    }
    let log = rec.dir().join(LOG_FILE);
    // The run happened whatever the log's fate: report it, keep the run's own exit code.
    let written = write_log(rec.dir(), &s.signing, None).map_err(|e| ui.error(&e.to_string()));
    rec.drop_reserve(); // The record is complete: its room goes back to the disk.
                        // It quotes step names and host output.
    let finish = Finish {
        message: escape_controls(finish.message.as_bytes()),
        ..finish
    };
    // Before the verdict: the verdict, then the log's path, end what the run prints.
    if let Some(line) = written.ok().and_then(|w| w.chain_line()) {
        ui.line(&line);
    }
    match finish.outcome {
        Outcome::Succeeded => ui.line(&format!(
            "{} {}",
            console::style("succeeded:").green().bold(),
            finish.message
        )),
        // The failing step was already reported as it happened; this is the verdict.
        Outcome::Failed => ui.line(&format!(
            "{} {}",
            console::style("failed:").red().bold(),
            finish.message
        )),
        Outcome::NotConfirmed => ui.line(&format!(
            "{} {}",
            console::style("not confirmed:").yellow().bold(),
            finish.message
        )),
        Outcome::Interrupted => ui.line(&format!(
            "{} {}",
            console::style("interrupted:").yellow().bold(),
            finish.message
        )),
    }
    if finish.outcome == Outcome::Interrupted {
        // What the operator types next, whatever stopped the run.
        match &s.mode {
            Mode::Run => ui.line(&format!(
                "  to undo what it changed: opsrun rollback {}; to go on: the same command with --resume {run_id}",
                rec.dir().display()
            )),
            // A resume's own rollback undoes what the resume did; the steps the run
            // before it completed are that run's to undo.
            Mode::Resume(r) => ui.line(&format!(
                "  to undo: opsrun rollback {} (what this resume did), then opsrun rollback {} (what run {} did); to go on: the same command with --resume {run_id}",
                rec.dir().display(),
                r.id,
                r.id
            )),
            Mode::Rollback(r) => ui.line(&format!(
                "  to go on undoing: opsrun rollback {} (it runs only what is left)",
                r.id
            )),
        }
    }
    Ok(RunResult {
        exit_code: finish.exit_code,
        log: Some(log),
    })
}

/// Opens one master connection per host, all before the first step: a host
/// that cannot be reached fails the run before anything changes.
async fn connect(
    engine: &mut Engine<'_>,
    plan: &Plan,
    wiring: &Wiring,
) -> Result<Vec<String>, ExecError> {
    let endpoints: Vec<Endpoint> = plan.hosts.iter().map(|h| h.endpoint.clone()).collect();
    let clock = std::time::Instant::now();
    let results = wiring.connect_all(&endpoints).await;
    let mut failures = Vec::new();
    for (ep, res) in endpoints.iter().zip(results) {
        match res {
            Ok(c) => {
                if ep.kind == ConnectionKind::Ssh {
                    engine.rec.emit(&Event::Connected {
                        time: events::now(),
                        host: ep.host.clone(),
                        millis: clock.elapsed().as_millis() as u64,
                    })?;
                }
                engine.conns.insert(ep.host.clone(), c);
            }
            Err(e) => {
                engine.rec.emit(&Event::ConnectFailed {
                    time: events::now(),
                    host: ep.host.clone(),
                    error: e.to_string(),
                })?;
                engine.ui.error(&e.to_string());
                failures.push(ep.host.clone());
            }
        }
    }
    Ok(failures)
}

/// Gate, connect, lock, run batches, roll back on failure.
async fn drive(
    engine: &mut Engine<'_>,
    plan: &Plan,
    s: &Settings,
    run_id: &str,
    held: &mut Vec<(Endpoint, String)>,
    wiring: &Wiring,
) -> Result<Finish, ExecError> {
    let inv = &engine.planner.inventory;
    let (what, again) = match &s.mode {
        Mode::Rollback(r) => {
            // What will be undone, where, with the commands: before the gate that allows it.
            let (lines, question) = rollback_preview(engine.planner, plan, r);
            for l in &lines {
                engine.ui.line(l);
            }
            let again = !plan.rollback_guide.is_empty() && !r.rolled_back_by.is_empty();
            if again && engine.gates.yes {
                // `--yes` answers the gate without showing it: what it would have asked
                // about must still reach the operator, not only the journal.
                engine.ui.warn(&format!(
                    "run {} was already rolled back (by {}); --yes runs its rollback guide again",
                    r.id,
                    r.rolled_back_by.join(", by ")
                ));
            }
            (question, again)
        }
        _ => (
            format!(
                "Run `{}` on `{}` ({})?",
                plan.runbook.name,
                inv.name,
                count(plan.hosts.len(), "host", "hosts")
            ),
            false,
        ),
    };
    let started_ok = match plan.start_gate {
        // Typing the environment's name does not answer "it was rolled back already".
        ConfirmMode::Typed => {
            engine.typed_gate(&inv.name)? && (!again || engine.confirm(None, &what)?)
        }
        ConfirmMode::Yes => engine.confirm(None, &what)?,
        ConfirmMode::None if matches!(s.mode, Mode::Rollback(_)) => engine.confirm(None, &what)?,
        ConfirmMode::None => true,
    };
    if !started_ok {
        return Ok(Finish {
            outcome: Outcome::NotConfirmed,
            message: "not confirmed at the start gate".into(),
            exit_code: exit::NOT_CONFIRMED,
        });
    }
    let failures = connect(engine, plan, wiring).await?;
    if !failures.is_empty() {
        return Ok(Finish {
            outcome: Outcome::Failed,
            message: format!(
                "cannot connect to {}: nothing was changed",
                failures.join(", ")
            ),
            exit_code: exit::STEP_FAILED,
        });
    }
    if let Some(refused) = take_locks(engine, plan, s, run_id, held).await? {
        return Ok(Finish {
            outcome: Outcome::Failed,
            message: format!("{refused}\nnothing was changed"),
            exit_code: exit::STEP_FAILED,
        });
    }

    if let Mode::Rollback(recorded) = &s.mode {
        return rollback_recorded(engine, recorded).await;
    }

    let total = engine.plan.steps.len();
    let label = |r: StepRef| match r {
        StepRef::Forward(i) => format!("[{}/{total}]", i + 1),
        StepRef::Guide(i) => format!("[R{}]", i + 1),
    };
    let rerun = match &s.mode {
        Mode::Resume(r) => resume::stale_local_steps(engine.planner, engine.plan, r),
        _ => Vec::new(),
    };
    for &i in &rerun {
        let step = &engine.plan.steps[i];
        engine.ui.line(&format!(
            "re-running step {} `{}`: its capture `{}` was in the temporary directory of an earlier run, removed when that run ended",
            i + 1,
            escape_line(&step.name),
            step.capture.as_ref().map_or("", |c| c.name.as_str())
        ));
    }
    let reran = rerun.len();
    let refs: Vec<StepRef> = rerun
        .into_iter()
        .chain(engine.planner.start_at()..total)
        .map(StepRef::Forward)
        .collect();
    for bi in 0..plan.batches.len() {
        if plan.batches.len() > 1 {
            engine.ui.line(&batch_line(engine.planner, bi + 1));
        }
        let result = interruptible(engine, engine.run_steps(&refs, Some(bi + 1), &label)).await;
        match result {
            None => return stopped(engine).await,
            Some(r) => {
                if let Some(f) = r? {
                    return match f.outcome {
                        Outcome::Failed => rollback_after_failure(engine, f).await,
                        Outcome::Interrupted => stopped(engine).await,
                        _ => Ok(f),
                    };
                }
            }
        }
    }
    // A step of an optional group that matched nothing ran nowhere: it is not "done".
    let (done, nowhere): (Vec<usize>, Vec<usize>) =
        (engine.planner.start_at()..total).partition(|&i| {
            engine.planner.is_local(StepRef::Forward(i))
                || !engine.planner.step_hosts(StepRef::Forward(i)).is_empty()
        });
    let mut message = format!("{} done", count(done.len() + reran, "step", "steps"));
    if !nowhere.is_empty() {
        let _ = write!(message, ", {} on no host", nowhere.len());
    }
    Ok(Finish {
        outcome: Outcome::Succeeded,
        message,
        exit_code: exit::OK,
    })
}

/// After Ctrl-C: stop, and roll back if the operator asked for it.
async fn stopped(engine: &mut Engine<'_>) -> Result<Finish, ExecError> {
    // The stopped step's hosts never finish: their spinners go before the undo list.
    engine.ui.clear_spinners();
    let choice = engine.interrupt.get().unwrap_or(Stop::Now);
    let base = Finish {
        outcome: Outcome::Interrupted,
        message: engine.interrupt.stopped_message(),
        exit_code: exit::INTERRUPTED,
    };
    if choice != Stop::NowAndRollback {
        return Ok(base);
    }
    let gates = engine.gates.clone();
    engine.gates.yes = true; // the operator just chose "roll back": that is the answer to the gate
    let f = rollback_after_failure(
        engine,
        Finish {
            outcome: Outcome::Failed,
            ..base
        },
    )
    .await;
    engine.gates = gates;
    f.map(|f| Finish {
        outcome: Outcome::Interrupted,
        exit_code: exit::INTERRUPTED,
        ..f
    })
}

#[cfg(test)]
mod tests;
