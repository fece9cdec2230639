//! One real run from start to finish: record → gate → connect → lock →
//! execute → roll back if needed → unlock → report. The record is written
//! before anything happens on a host, and the log is written however the run
//! ends; a run killed outright still leaves its journal.

mod attempt;
pub mod engine;
pub mod gate;
pub mod interrupt;
pub mod lock;
mod undo;
pub mod view;

use crate::error::{exit, Error};
use crate::execute::engine::{Engine, ExecError, Finish};
use crate::execute::gate::Gates;
use crate::execute::interrupt::{interruptible, Interrupt, Stop};
use crate::execute::view::Ui;
use crate::load::inventory::ConfirmMode;
use crate::plan::{Captures, Plan, Planner, Reveal, StepRef};
use crate::plural::count;
use crate::record::events::{self, Event, HostInfo, Outcome};
use crate::record::rundir::Recorder;
use crate::record::runs::Recorded;
use crate::sanitize::{escape_controls, Redactor};
use crate::transport::{self, Command, Connection, ConnectionKind, Endpoint};
use std::collections::{BTreeMap, HashMap};
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
    pub run_dir: PathBuf,
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
    let base = planner.run_info().id.clone();
    let base_id = match &settings.mode {
        Mode::Run => base,
        Mode::Resume(_) => format!("{base}-resume"),
        Mode::Rollback(_) => format!("{base}-rollback"),
    };
    let (rec, run_id) = Recorder::create(&settings.log_dir, &base_id).map_err(record_err)?;
    planner.set_run_id(&run_id);
    let plan = planner.plan()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::Io(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(run_async(planner, &plan, settings, rec, run_id))
}

fn record_err(e: crate::record::rundir::RecordError) -> Error {
    Error::Io(e.to_string())
}

fn run_started(planner: &Planner, plan: &Plan, s: &Settings, run_id: &str) -> Event {
    let (kind, rollback_of, resume_of) = match &s.mode {
        Mode::Run => ("run", None, None),
        Mode::Resume(r) => ("resume", None, Some(r.id.clone())),
        Mode::Rollback(r) => ("rollback", Some(r.id.clone()), None),
    };
    Event::RunStarted {
        time: events::now(),
        run_id: run_id.to_string(),
        kind: kind.into(),
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
            .map(|p| {
                (
                    p.name.clone(),
                    p.value.clone().unwrap_or_else(|| "(not set)".into()),
                )
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
            })
            .collect(),
        start_at: (planner.start_at() > 0)
            .then(|| planner.runbook.steps[planner.start_at()].name.clone()),
        limit: planner.limit_pattern().map(str::to_string),
    }
}

async fn run_async(
    planner: &Planner,
    plan: &Plan,
    s: Settings,
    rec: Recorder,
    run_id: String,
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
    rec.emit(&run_started(planner, plan, &s, &run_id))
        .map_err(record_err)?;
    ui.line(&format!(
        "run {run_id}: {} on {} ({})",
        plan.runbook.name,
        plan.inventory.name,
        count(plan.hosts.len(), "host", "hosts")
    ));

    let redactor = Redactor::new(planner.secret_values().iter().map(String::as_str));
    let interrupt = Interrupt::default();
    let (captures, completed) = match &s.mode {
        Mode::Run => (Captures::default(), BTreeMap::new()),
        Mode::Resume(r) => (r.captures.clone(), r.completed.clone()),
        Mode::Rollback(r) => (r.captures.clone(), r.completed.clone()),
    };
    let mut engine = Engine {
        planner,
        conns: HashMap::new(),
        local: Connection::Local(transport::local::LocalConnection::with_tmpdir(
            &Endpoint::local("localhost"),
            tmp.path().to_path_buf(),
        )),
        rec: &rec,
        ui: &ui,
        gates: s.gates.clone(),
        forks: s.forks,
        operator: s.operator.clone(),
        redactor,
        captures: Mutex::new(captures),
        completed: Mutex::new(completed),
        interrupt: &interrupt,
        failed_step: Mutex::new(None),
    };

    let signals = tokio::spawn(interrupt::watch_signals());
    let mut held: Vec<(Endpoint, String)> = Vec::new();
    // A bug (a panic) in the engine must not strand host locks or the record:
    // it ends the run like a failure, and the cleanup below still happens.
    let guarded = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(drive(
        &mut engine,
        plan,
        &s,
        &run_id,
        &mut held,
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
    let finish = match finish {
        Ok(f) => f,
        Err(ExecError::Gate(e @ crate::execute::gate::GateError::Interrupted { .. })) => Finish {
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
    if let Err(e) = write_log(rec.dir(), &s.signing) {
        // The run happened whatever the log's fate: report it, keep the run's own exit code.
        ui.error(&e.to_string());
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
    Ok(RunResult {
        exit_code: finish.exit_code,
        log: Some(log),
        run_dir: rec.dir().to_path_buf(),
    })
}

/// The run's private temporary directory on the control machine, given to `local`
/// steps as `TMPDIR`: what they stage there (an upgrade's copy of its packages, GBs)
/// is removed when the run ends, however it ends, short of SIGKILL.
struct RunTmp(Option<PathBuf>);

impl RunTmp {
    /// `opsrun-RUN.XXXXXX` in the system temp dir (`$TMPDIR` or /tmp), made by
    /// mkdtemp: mode 0700, and a name no other user can have prepared.
    fn create(run_id: &str) -> std::io::Result<RunTmp> {
        use std::os::unix::ffi::{OsStrExt, OsStringExt};
        let template = std::env::temp_dir().join(format!("opsrun-{run_id}.XXXXXX"));
        let mut bytes =
            std::ffi::CString::new(template.as_os_str().as_bytes())?.into_bytes_with_nul();
        // SAFETY: a NUL-terminated buffer that mkdtemp rewrites in place, within its length.
        if unsafe { libc::mkdtemp(bytes.as_mut_ptr().cast()) }.is_null() {
            return Err(std::io::Error::last_os_error());
        }
        bytes.pop();
        Ok(RunTmp(Some(PathBuf::from(std::ffi::OsString::from_vec(
            bytes,
        )))))
    }

    fn path(&self) -> &Path {
        self.0.as_deref().unwrap_or(Path::new(""))
    }

    /// Removes it, saying so if that fails: the operator must know what is left behind.
    fn remove(mut self, ui: &Ui) {
        if let Some(dir) = self.0.take() {
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                ui.warn(&format!(
                    "could not remove the run's temporary directory {}: {e}",
                    dir.display()
                ));
            }
        }
    }
}

impl Drop for RunTmp {
    /// A run that ends on an error (the record cannot be written) cleans up too.
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

pub const LOG_FILE: &str = "log.md";

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error(transparent)]
    Journal(#[from] crate::record::rundir::RecordError),
    #[error("cannot write or sign the log `{}`: {source}", path.display())]
    Sign {
        path: PathBuf,
        source: crate::sign::SignError,
    },
}

/// (Re)renders `log.md` from the journal in `dir` and signs it into
/// `log.md.sig` (or marks it UNSIGNED). Returns the log's path and how it was signed.
pub fn write_log(
    dir: &Path,
    signing: &crate::sign::Signing,
) -> Result<(PathBuf, Option<crate::sign::SignInfo>), LogError> {
    let replay = crate::record::journal::read(&dir.join(crate::record::journal::FILE))
        .map_err(crate::record::rundir::RecordError::from)?;
    let log = dir.join(LOG_FILE);
    let signed = signing
        .write_document(&log, |signer| {
            crate::report::log::render(&replay.events, dir, signer)
        })
        .map_err(|source| LogError::Sign {
            path: log.clone(),
            source,
        })?;
    Ok((log, signed))
}

/// Opens one master connection per host, all before the first step: a host
/// that cannot be reached fails the run before anything changes.
async fn connect(engine: &mut Engine<'_>, plan: &Plan) -> Result<Vec<String>, ExecError> {
    let endpoints: Vec<Endpoint> = plan.hosts.iter().map(|h| h.endpoint.clone()).collect();
    let clock = std::time::Instant::now();
    let results = transport::connect_all(&endpoints, 8).await;
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

fn lock_event(
    engine: &Engine<'_>,
    host: &str,
    path: &str,
    action: &str,
    detail: String,
) -> Result<(), ExecError> {
    engine.rec.emit(&Event::Lock {
        time: events::now(),
        host: host.into(),
        path: path.into(),
        action: action.into(),
        detail,
    })?;
    Ok(())
}

/// Takes every host's lock, or none: refuses (naming the holder) if one is held.
async fn take_locks(
    engine: &Engine<'_>,
    plan: &Plan,
    s: &Settings,
    run_id: &str,
    held: &mut Vec<(Endpoint, String)>,
) -> Result<Option<String>, ExecError> {
    let me = lock::Owner {
        run_id: run_id.to_string(),
        operator: s.operator.clone(),
        control_host: control_host(),
        pid: std::process::id(),
        started: events::now().to_rfc3339(),
    };
    let mut refused = Vec::new();
    for h in &plan.hosts {
        let Some(conn) = engine.conns.get(&h.name) else {
            continue;
        };
        let path = lock::path(&h.endpoint);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let out = conn
                .exec(
                    &Command::new(lock::acquire_command(&path, &me)),
                    &mut |_, _| {},
                )
                .await;
            let stdout = match out {
                Ok(o) => String::from_utf8_lossy(&o.stdout).to_string(),
                Err(e) => {
                    refused.push(format!("{}: cannot take the lock: {e}", h.name));
                    break;
                }
            };
            match lock::parse_acquire(&stdout) {
                lock::Acquired::Taken => {
                    lock_event(engine, &h.name, &path, "taken", String::new())?;
                    held.push((h.endpoint.clone(), path.clone()));
                    break;
                }
                lock::Acquired::Held(owner) => {
                    let who = lock::describe(&owner);
                    let stale = owner
                        .as_ref()
                        .is_some_and(|o| lock::is_stale(o, &control_host()));
                    // Only a lock known to be dead is broken: its owner's pid is gone on
                    // this machine, or it has no readable owner. A run from another
                    // control machine cannot be checked from here.
                    let elsewhere = owner
                        .as_ref()
                        .is_some_and(|o| o.control_host != control_host());
                    if s.break_lock && attempt == 1 && (stale || owner.is_none()) {
                        let _ = conn
                            .exec(&Command::new(lock::break_command(&path)), &mut |_, _| {})
                            .await;
                        lock_event(
                            engine,
                            &h.name,
                            &path,
                            "broken",
                            format!("--break-lock by {}: was held by {who}", s.operator),
                        )?;
                        engine
                            .ui
                            .warn(&format!("{}: broke the lock held by {who}", h.name));
                        continue;
                    }
                    lock_event(engine, &h.name, &path, "held", who.clone())?;
                    let remove = format!("ssh {} rm -rf {path}", h.endpoint.address);
                    let advice = if stale {
                        "that process is gone: the lock is stale; rerun with --break-lock to break it".to_string()
                    } else if elsewhere {
                        format!("it was taken from another control machine, which opsrun cannot check from here; if that run is dead, remove the lock by hand ({remove})")
                    } else if s.break_lock {
                        "its owner is still running: --break-lock only breaks a stale lock"
                            .to_string()
                    } else {
                        "wait for it to finish, or if that run is dead, rerun with --break-lock"
                            .to_string()
                    };
                    refused.push(format!("{} is locked ({path}) by {who}: {advice}", h.name));
                    break;
                }
            }
        }
    }
    Ok((!refused.is_empty()).then(|| refused.join("\n")))
}

async fn release_locks(engine: &Engine<'_>, held: &[(Endpoint, String)], run_id: &str) {
    for (ep, path) in held {
        if let Some(conn) = engine.conns.get(&ep.host) {
            let ok = conn
                .exec(
                    &Command::new(lock::release_command(path, run_id)),
                    &mut |_, _| {},
                )
                .await
                .is_ok_and(|o| o.success());
            let _ = lock_event(
                engine,
                &ep.host,
                path,
                if ok { "released" } else { "release failed" },
                String::new(),
            );
        }
    }
}

/// Gate, connect, lock, run batches, roll back on failure.
async fn drive(
    engine: &mut Engine<'_>,
    plan: &Plan,
    s: &Settings,
    run_id: &str,
    held: &mut Vec<(Endpoint, String)>,
) -> Result<Finish, ExecError> {
    let inv = &engine.planner.inventory;
    let (what, again) = match &s.mode {
        Mode::Rollback(r) => {
            // What will be undone, where, with the commands: before the gate that allows it.
            let (lines, question) = rollback_preview(engine.planner, r);
            for l in &lines {
                engine.ui.line(l);
            }
            let again = !engine.planner.runbook.rollback.is_empty() && !r.rolled_back_by.is_empty();
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
    let failures = connect(engine, plan).await?;
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

    let total = engine.planner.runbook.steps.len();
    let label = |r: StepRef| match r {
        StepRef::Forward(i) => format!("[{}/{total}]", i + 1),
        StepRef::Guide(i) => format!("[R{}]", i + 1),
    };
    let refs: Vec<StepRef> = (engine.planner.start_at()..total)
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
    Ok(Finish {
        outcome: Outcome::Succeeded,
        message: format!(
            "{} done",
            count(total - engine.planner.start_at(), "step", "steps")
        ),
        exit_code: exit::OK,
    })
}

/// After Ctrl-C: stop, and roll back if the operator asked for it.
async fn stopped(engine: &mut Engine<'_>) -> Result<Finish, ExecError> {
    let choice = engine.interrupt.get().unwrap_or(Stop::Now);
    let base = Finish {
        outcome: Outcome::Interrupted,
        message: match choice {
            Stop::AfterStep => "stopped by the operator (Ctrl-C) after the running step".into(),
            _ => {
                "interrupted by the operator (Ctrl-C); the running step was left unfinished".into()
            }
        },
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

/// `opsrun rollback RUN`: the runbook's rollback guide, or the completed steps' own rollbacks.
async fn rollback_recorded(
    engine: &mut Engine<'_>,
    recorded: &Recorded,
) -> Result<Finish, ExecError> {
    let guide = engine.planner.runbook.rollback.len();
    if guide > 0 {
        engine.ui.line(&format!(
            "running the rollback guide of `{}` for run {}",
            engine.planner.runbook.name, recorded.id
        ));
        let refs: Vec<StepRef> = (0..guide).map(StepRef::Guide).collect();
        let label = |r: StepRef| match r {
            StepRef::Forward(i) | StepRef::Guide(i) => format!("[R{}/{guide}]", i + 1),
        };
        let batches = guide_batches(engine.planner, recorded);
        if batches.is_empty() {
            return Ok(Finish {
                outcome: Outcome::Succeeded,
                message: format!(
                    "run {} reached no node: its rollback guide has nothing to restore",
                    recorded.id
                ),
                exit_code: exit::OK,
            });
        }
        for b in &batches {
            if let Some(b) = b {
                engine.ui.line(&batch_line(engine.planner, *b));
            }
            let fut = engine.run_steps(&refs, *b, &label);
            if let Some(f) = fut.await? {
                return Ok(Finish {
                    message: format!(
                        "rollback guide stopped: {}; run {} is NOT fully restored",
                        f.message, recorded.id
                    ),
                    ..f
                });
            }
        }
        return Ok(Finish {
            outcome: Outcome::Succeeded,
            message: format!(
                "rolled back run {} with the rollback guide ({}{})",
                recorded.id,
                count(guide, "step", "steps"),
                guide_where(engine.planner, &batches)
            ),
            exit_code: exit::OK,
        });
    }
    let undo = engine.undoable();
    if undo.is_empty() {
        return Ok(Finish {
            outcome: Outcome::Succeeded,
            message: format!("run {} has no completed step left to undo", recorded.id),
            exit_code: exit::OK,
        });
    }
    let undone = engine.rollback().await?;
    Ok(Finish {
        outcome: if undone.failed.is_empty() {
            Outcome::Succeeded
        } else {
            Outcome::Failed
        },
        message: if undone.failed.is_empty() {
            format!(
                "rolled back {} of run {}: {}",
                count(undo.len(), "step", "steps"),
                recorded.id,
                undone_message(engine.planner, &undone)
            )
        } else {
            undone_message(engine.planner, &undone)
        },
        exit_code: if undone.failed.is_empty() {
            exit::OK
        } else {
            exit::STEP_FAILED
        },
    })
}

/// Says what a rollback restored, and what it could not.
fn undone_message(planner: &Planner, undone: &crate::execute::undo::Undone) -> String {
    if undone.failed.is_empty() {
        return format!("restored {}", undone.summary(planner));
    }
    let list: Vec<String> = undone
        .failed
        .iter()
        .map(|(s, h)| format!("`{s}` on {h}"))
        .collect();
    let done = if undone.ok.is_empty() {
        String::new()
    } else {
        format!("; undone: {}", undone.summary(planner))
    };
    format!(
        "ROLLBACK INCOMPLETE: not restored: {}{done}",
        list.join(", ")
    )
}

/// `batch 1/2: oa1 (with lb1 in every batch)`: the line that opens a batch.
fn batch_line(planner: &Planner, batch: usize) -> String {
    let all = planner.batches();
    let serial: std::collections::HashSet<&String> = all.iter().flatten().collect();
    let every: Vec<&str> = planner
        .run_hosts()
        .into_iter()
        .filter(|h| !serial.contains(&h.name))
        .map(|h| h.name.as_str())
        .collect();
    let also = if every.is_empty() {
        String::new()
    } else {
        format!(" (with {} in every batch)", every.join(", "))
    };
    let members = batch
        .checked_sub(1)
        .and_then(|i| all.get(i))
        .map_or(String::new(), |m| m.join(", "));
    format!("batch {batch}/{}: {members}{also}", all.len())
}

/// The batches the rollback guide runs for: with `serial`, the guide is rolling like
/// the run, one batch after the other, and only for the batches the run reached (a
/// node the run never touched has no backup to restore); `None`: all hosts at once.
fn guide_batches(planner: &Planner, recorded: &Recorded) -> Vec<Option<usize>> {
    let all = planner.batches();
    if all.len() <= 1 {
        return vec![None];
    }
    let touched: std::collections::HashSet<&str> = recorded
        .events
        .iter()
        .filter_map(|e| match e {
            Event::TargetStarted {
                phase: events::Phase::Forward,
                host,
                ..
            } => Some(host.as_str()),
            _ => None,
        })
        .collect();
    (1..=all.len())
        .filter(|b| all[b - 1].iter().any(|h| touched.contains(h.as_str())))
        .map(Some)
        .collect()
}

/// The hosts the guide's steps run on, in inventory order.
fn guide_hosts(planner: &Planner, batches: &[Option<usize>]) -> Vec<String> {
    let mut on = std::collections::HashSet::new();
    for i in 0..planner.runbook.rollback.len() {
        let r = StepRef::Guide(i);
        if planner.runbook.rollback[i].local {
            continue;
        }
        for b in batches {
            on.extend(planner.batch_hosts(r, *b));
        }
    }
    planner
        .run_hosts()
        .into_iter()
        .filter(|h| on.contains(&h.name))
        .map(|h| h.name.clone())
        .collect()
}

/// ` on oa1, oa2`, or with batches `, batch by batch: [oa1] [oa2], lb1 in every batch`.
fn guide_where(planner: &Planner, batches: &[Option<usize>]) -> String {
    let hosts = guide_hosts(planner, batches);
    if !batches.iter().any(Option::is_some) {
        return if hosts.is_empty() {
            String::new()
        } else {
            format!(" on {}", hosts.join(", "))
        };
    }
    let all = planner.batches();
    let shown: Vec<String> = batches
        .iter()
        .flatten()
        .filter_map(|b| all.get(b.checked_sub(1)?))
        .map(|m| format!("[{}]", m.join(", ")))
        .collect();
    let serial: std::collections::HashSet<&String> = all.iter().flatten().collect();
    let every: Vec<&str> = hosts
        .iter()
        .filter(|h| !serial.contains(h))
        .map(String::as_str)
        .collect();
    let also = if every.is_empty() {
        String::new()
    } else {
        format!(", {} in every batch", every.join(", "))
    };
    format!(", batch by batch: {}{also}", shown.join(" "))
}

/// What `opsrun rollback RUN` will do, as shown before its gate and by `--dry-run`:
/// each step, where, with the exact commands (secrets masked); and the gate's question.
pub fn rollback_preview(planner: &Planner, recorded: &Recorded) -> (Vec<String>, String) {
    let redactor = Redactor::new(planner.secret_values().iter().map(String::as_str));
    let inv = &planner.inventory.name;
    let name = &planner.runbook.name;
    let mut lines = Vec::new();
    let guide = planner.runbook.rollback.len();
    if guide == 0 {
        let undo = crate::execute::undo::undoable(planner, &recorded.completed);
        lines.extend(undo_lines(planner, &recorded.captures, &undo));
        let mut on = std::collections::HashSet::new();
        for c in &undo {
            on.extend(c.hosts.iter().map(|h| h.host.clone()));
        }
        let mut hosts: Vec<String> = planner
            .run_hosts()
            .into_iter()
            .filter(|h| on.contains(&h.name))
            .map(|h| h.name.clone())
            .collect();
        if on.contains("localhost") {
            hosts.push("this machine".into());
        }
        let question = if undo.is_empty() {
            format!(
                "Roll back run `{}` ({name} on `{inv}`)? It has no completed step left to undo.",
                recorded.id
            )
        } else {
            format!(
                "Roll back run `{}` ({name} on `{inv}`): undo {} on {}?",
                recorded.id,
                count(undo.len(), "step", "steps"),
                hosts.join(", ")
            )
        };
        return (lines.iter().map(|l| redactor.redact(l)).collect(), question);
    }
    let batches = guide_batches(planner, recorded);
    let rolling = planner.batches().len() > 1;
    lines.push(format!(
        "{} the rollback guide of `{name}` for run {}{}:",
        console::style("rollback:").yellow().bold(),
        recorded.id,
        if rolling {
            ", batch by batch as the run went"
        } else {
            ""
        }
    ));
    for b in &batches {
        if let Some(b) = b {
            lines.push(batch_line(planner, *b));
        }
        for i in 0..guide {
            guide_step_lines(planner, recorded, StepRef::Guide(i), *b, &mut lines);
        }
    }
    for b in 1..=planner.batches().len() {
        if rolling && !batches.contains(&Some(b)) {
            lines.push(format!(
                "{}: not reached by run {}, left as it is",
                batch_line(planner, b),
                recorded.id
            ));
        }
    }
    let hosts = guide_hosts(planner, &batches).join(", ");
    let question = if batches.is_empty() {
        format!(
            "Roll back run `{}` ({name} on `{inv}`)? It reached no node: its rollback guide has nothing to restore.",
            recorded.id
        )
    } else if recorded.rolled_back_by.is_empty() {
        format!(
            "Roll back run `{}` ({name} on `{inv}`) with its rollback guide, on {hosts}?",
            recorded.id
        )
    } else {
        format!(
            "Run `{}` was already rolled back (by {}). Run its rollback guide again, on {hosts}?",
            recorded.id,
            recorded.rolled_back_by.join(", by ")
        )
    };
    (lines.iter().map(|l| redactor.redact(l)).collect(), question)
}

/// One guide step in one batch: its name and hosts, gate, manual text and commands.
fn guide_step_lines(
    planner: &Planner,
    recorded: &Recorded,
    r: StepRef,
    batch: Option<usize>,
    lines: &mut Vec<String>,
) {
    let StepRef::Guide(i) = r else { return };
    // Everything below is rendered, and may carry captured values: what a host printed.
    let start = lines.len();
    guide_step_rendered(planner, recorded, r, i, batch, lines);
    for l in &mut lines[start..] {
        *l = escape_controls(l.as_bytes());
    }
}

fn guide_step_rendered(
    planner: &Planner,
    recorded: &Recorded,
    r: StepRef,
    i: usize,
    batch: Option<usize>,
    lines: &mut Vec<String>,
) {
    let step = &planner.runbook.rollback[i];
    let total = planner.runbook.rollback.len();
    let hosts: Vec<String> = if step.local {
        vec!["localhost".into()]
    } else {
        planner.batch_hosts(r, batch)
    };
    let manual = matches!(step.action, crate::load::runbook::Action::Manual(_));
    if hosts.is_empty() && !manual {
        return;
    }
    let on = if hosts.is_empty() {
        String::new()
    } else {
        format!(" on {}", hosts.join(", "))
    };
    lines.push(format!("  [R{}/{total}] {}{on}", i + 1, step.name));
    let fail = |e: &dyn std::fmt::Display| format!("      (cannot render: {e})");
    match planner.confirm_prompt(r) {
        Ok(Some(q)) => lines.push(format!(
            "      gate: {q} {} [y/N]",
            planner.gate_hosts(step, &hosts, batch)
        )),
        Ok(None) => {}
        Err(e) => lines.push(fail(&e)),
    }
    if manual {
        match planner.manual_text(r) {
            Ok(text) => {
                lines.push("      manual: the operator does this by hand and confirms:".into());
                for l in text.unwrap_or_default().lines() {
                    lines.push(format!("        | {l}"));
                }
            }
            Err(e) => lines.push(fail(&e)),
        }
        return;
    }
    for h in &hosts {
        let host = (!step.local).then_some(h.as_str());
        match planner.render(r, host, Some(&recorded.captures), Reveal::Masked, batch) {
            Ok(t) => {
                let text = crate::report::preview::target_text(
                    &t,
                    step.retries,
                    &crate::duration::format(step.delay),
                );
                lines.extend(text.lines().map(|l| format!("  {l}")));
            }
            Err(e) => lines.push(fail(&e)),
        }
    }
}

fn show_undo(engine: &Engine<'_>) {
    let caps = engine
        .captures
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    for l in undo_lines(engine.planner, &caps, &engine.undoable()) {
        engine.ui.line(&engine.redactor.redact(&l));
    }
}

/// The completed steps an undo will run, in order, with their rollback commands.
fn undo_lines(
    planner: &Planner,
    caps: &Captures,
    undo: &[crate::execute::engine::Completed],
) -> Vec<String> {
    let mut lines = vec![format!(
        "{} these completed steps will be undone, in this order:",
        console::style("rollback:").yellow().bold()
    )];
    for c in undo {
        let step = &planner.runbook.steps[c.step];
        for round in crate::execute::undo::undo_rounds(&c.hosts) {
            let hosts: Vec<String> = round.iter().map(ToString::to_string).collect();
            lines.push(format!(
                "  [{}] {} on {}",
                c.step + 1,
                step.name,
                hosts.join(", ")
            ));
            for h in &round {
                let host = (!step.local).then_some(h.host.as_str());
                if let Ok(t) = planner.render(
                    StepRef::Forward(c.step),
                    host,
                    Some(caps),
                    Reveal::Masked,
                    h.batch,
                ) {
                    for r in &t.rollback {
                        // A command may carry a captured value: what a host printed.
                        let line = crate::report::preview::prompt_line(&t.login, r, "      ");
                        lines.push(escape_controls(line.as_bytes()));
                    }
                }
            }
        }
    }
    lines
}

/// After a failed step: show what will be undone, gate it, run it, say what is restored.
async fn rollback_after_failure(
    engine: &mut Engine<'_>,
    failed: Finish,
) -> Result<Finish, ExecError> {
    let failed_step = *engine.failed_step.lock().unwrap_or_else(|p| p.into_inner());
    let policy = failed_step
        .map(|i| engine.planner.runbook.steps[i].on_failure)
        .unwrap_or_default();
    let undoable = engine.undoable();
    if policy != crate::load::runbook::OnFailure::Rollback || undoable.is_empty() {
        let why = if policy == crate::load::runbook::OnFailure::Abort {
            "on_failure: abort"
        } else {
            "no completed step has a rollback"
        };
        return Ok(Finish {
            message: format!("{}; nothing rolled back ({why})", failed.message),
            ..failed
        });
    }
    engine.ui.line("");
    show_undo(engine);
    if !engine.confirm(
        Some("(rollback)"),
        &format!(
            "Roll back {}?",
            count(undoable.len(), "completed step", "completed steps")
        ),
    )? {
        return Ok(Finish {
            outcome: Outcome::Failed,
            message: format!(
                "{}; rollback declined by the operator: nothing restored",
                failed.message
            ),
            exit_code: exit::STEP_FAILED,
        });
    }
    let undone = engine.rollback().await?;
    let message = if undone.failed.is_empty() {
        format!(
            "{}; rolled back {}: {}",
            failed.message,
            count(undoable.len(), "step", "steps"),
            undone_message(engine.planner, &undone)
        )
    } else {
        format!(
            "{}; {}",
            failed.message,
            undone_message(engine.planner, &undone)
        )
    };
    Ok(Finish {
        outcome: Outcome::Failed,
        message,
        exit_code: exit::STEP_FAILED,
    })
}
