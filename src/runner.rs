//! One real run from start to finish: record → gate → connect → execute →
//! roll back if needed → report. The record is written before anything
//! happens on a host, and the log is written however the run ends.

use crate::error::{exit, Error};
use crate::events::{self, Event, HostInfo, Outcome};
use crate::execute::{Engine, ExecError, Finish};
use crate::gate::Gates;
use crate::inventory::ConfirmMode;
use crate::plan::{Captures, Plan, Planner, StepRef};
use crate::record::Recorder;
use crate::sanitize::Redactor;
use crate::transport::{self, Connection, ConnectionKind, Endpoint};
use crate::ui::Ui;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub struct Settings {
    pub gates: Gates,
    pub forks: usize,
    pub verbose: bool,
    pub log_dir: PathBuf,
    pub operator: String,
}

/// The result of a run: exit code and where its log is.
pub struct RunResult {
    pub exit_code: i32,
    pub log: Option<PathBuf>,
    pub run_dir: PathBuf,
}

fn control_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}

pub fn run(planner: &Planner, plan: &Plan, settings: Settings) -> Result<RunResult, Error> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::Io(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(run_async(planner, plan, settings))
}

async fn run_async(planner: &Planner, plan: &Plan, s: Settings) -> Result<RunResult, Error> {
    let (rec, run_id) =
        Recorder::create(&s.log_dir, &plan.run.id).map_err(|e| Error::Io(e.to_string()))?;
    let ui = Ui::new(s.verbose);
    let io = |e: crate::record::RecordError| Error::Io(e.to_string());
    rec.keep("runbook.yaml", &planner.runbook.source.text)
        .map_err(io)?;
    rec.keep("inventory.yaml", &planner.inventory.source.text)
        .map_err(io)?;
    rec.emit(&Event::RunStarted {
        time: events::now(),
        run_id: run_id.clone(),
        kind: "run".into(),
        rollback_of: None,
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
        stamp: plan.run.stamp.clone(),
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
        start_at: planner
            .start_at()
            .checked_sub(0)
            .filter(|i| *i > 0)
            .map(|i| planner.runbook.steps[i].name.clone()),
    })
    .map_err(io)?;
    ui.line(&format!(
        "run {run_id}: {} on {} ({} hosts)",
        plan.runbook.name,
        plan.inventory.name,
        plan.hosts.len()
    ));

    let secrets: Vec<String> = planner.secret_values();
    let redactor = Redactor::new(secrets.iter().map(String::as_str));
    let mut engine = Engine {
        planner,
        conns: HashMap::new(),
        local: Connection::Local(transport::local::LocalConnection::new(&Endpoint::local(
            "localhost",
        ))),
        rec: &rec,
        ui: &ui,
        gates: s.gates.clone(),
        forks: s.forks,
        operator: s.operator.clone(),
        redactor,
        captures: Mutex::new(Captures::default()),
        completed: Vec::new(),
    };

    let finish = tokio::select! {
        f = drive(&mut engine, plan) => f,
        _ = tokio::signal::ctrl_c() => Ok(Finish {
            outcome: Outcome::Interrupted,
            message: "interrupted by the operator (Ctrl-C)".into(),
            exit_code: exit::INTERRUPTED,
        }),
    };
    let finish = match finish {
        Ok(f) => f,
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
    for (_, c) in engine.conns.drain() {
        let _ = c.close().await;
    }
    let recorded = rec.emit(&Event::RunFinished {
        time: events::now(),
        outcome: finish.outcome,
        message: finish.message.clone(),
    });
    if let Err(e) = recorded {
        ui.error(&format!("could not record the end of the run: {e}"));
    }
    let log = write_log(rec.dir()).map_err(io)?;
    match finish.outcome {
        Outcome::Succeeded => ui.line(&format!(
            "{} {}",
            console::style("succeeded:").green().bold(),
            finish.message
        )),
        _ => ui.error(&finish.message),
    }
    Ok(RunResult {
        exit_code: finish.exit_code,
        log: Some(log),
        run_dir: rec.dir().to_path_buf(),
    })
}

/// Renders `log.md` from the journal in `dir`.
pub fn write_log(dir: &Path) -> Result<PathBuf, crate::record::RecordError> {
    let path = dir.join(crate::journal::FILE);
    let replay = crate::journal::read(&path)?;
    let text = crate::report::render(
        &replay.events,
        dir,
        Some("**UNSIGNED**: this log carries no signature."),
    );
    let log = dir.join("log.md");
    std::fs::write(&log, text).map_err(|source| crate::record::RecordError::Output {
        path: log.clone(),
        source,
    })?;
    Ok(log)
}

/// Gate, connect, run batches, roll back on failure.
async fn drive(engine: &mut Engine<'_>, plan: &Plan) -> Result<Finish, ExecError> {
    let inv = &engine.planner.inventory;
    let started_ok = match plan.start_gate {
        ConfirmMode::Typed => engine.typed_gate(&inv.name)?,
        ConfirmMode::Yes => engine.confirm(
            None,
            &format!(
                "Run `{}` on `{}` ({} hosts)?",
                plan.runbook.name,
                inv.name,
                plan.hosts.len()
            ),
        )?,
        ConfirmMode::None => true,
    };
    if !started_ok {
        return Ok(Finish {
            outcome: Outcome::NotConfirmed,
            message: "not confirmed at the start gate".into(),
            exit_code: exit::NOT_CONFIRMED,
        });
    }

    // One master connection per host, all opened before the first step: a host
    // that cannot be reached fails the run before anything changes.
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

    let total = engine.planner.runbook.steps.len();
    let batches = plan.batches.clone();
    for (bi, batch) in batches.iter().enumerate() {
        if batches.len() > 1 {
            engine.ui.line(&format!(
                "batch {}/{}: {}",
                bi + 1,
                batches.len(),
                batch.join(", ")
            ));
        }
        let label = |i: usize| format!("[{}/{total}]", i + 1);
        if let Some(f) = engine.run_steps(batch, &label).await? {
            if f.outcome != Outcome::Failed {
                return Ok(f);
            }
            return rollback_after_failure(engine, f).await;
        }
    }
    Ok(Finish {
        outcome: Outcome::Succeeded,
        message: format!("{} steps done", total - engine.planner.start_at()),
        exit_code: exit::OK,
    })
}

/// After a failed step: show what will be undone, gate it, run it, say what is restored.
async fn rollback_after_failure(
    engine: &mut Engine<'_>,
    failed: Finish,
) -> Result<Finish, ExecError> {
    let last = engine.completed.last().map(|c| c.step);
    let failed_step = engine
        .planner
        .runbook
        .steps
        .iter()
        .position(|s| failed.message.contains(&format!("`{}`", s.name)));
    let policy = failed_step
        .map(|i| engine.planner.runbook.steps[i].on_failure)
        .unwrap_or_default();
    let undoable: Vec<_> = engine
        .completed
        .iter()
        .rev()
        .filter(|c| !engine.planner.runbook.steps[c.step].rollback.is_empty())
        .cloned()
        .collect();
    if policy != crate::runbook::OnFailure::Rollback || undoable.is_empty() {
        let why = if policy == crate::runbook::OnFailure::Abort {
            "on_failure: abort"
        } else {
            "no completed step has a rollback"
        };
        return Ok(Finish {
            message: format!("{}; nothing rolled back ({why})", failed.message),
            ..failed
        });
    }
    let _ = last;
    engine.ui.line("");
    engine.ui.line(&format!(
        "{} these completed steps will be undone, in this order:",
        console::style("rollback:").yellow().bold()
    ));
    for c in &undoable {
        let step = &engine.planner.runbook.steps[c.step];
        engine.ui.line(&format!(
            "  [{}] {} on {}",
            c.step + 1,
            step.name,
            c.hosts.join(", ")
        ));
        for h in &c.hosts {
            let host = (!step.local).then_some(h.as_str());
            let caps = engine
                .captures
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            if let Ok(t) = engine.planner.render(
                StepRef::Forward(c.step),
                host,
                Some(&caps),
                crate::plan::Reveal::Masked,
            ) {
                for r in &t.rollback {
                    engine
                        .ui
                        .line(&crate::preview::prompt_line(&t.login, r, "      "));
                }
            }
        }
    }
    if !engine.confirm(
        None,
        &format!("Roll back {} completed step(s)?", undoable.len()),
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
    let failures = engine.rollback().await?;
    let message = if failures.is_empty() {
        format!(
            "{}; rolled back {} step(s): restored",
            failed.message,
            undoable.len()
        )
    } else {
        let list: Vec<String> = failures
            .iter()
            .map(|(s, h)| format!("`{s}` on {h}"))
            .collect();
        format!(
            "{}; ROLLBACK INCOMPLETE: not restored: {}",
            failed.message,
            list.join(", ")
        )
    };
    Ok(Finish {
        outcome: Outcome::Failed,
        message,
        exit_code: exit::STEP_FAILED,
    })
}
