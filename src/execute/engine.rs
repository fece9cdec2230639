//! The engine: walks the plan step by step over open connections.
//!
//! Steps are barriers: a step finishes on all its hosts before the next one
//! starts; within a step hosts run in parallel, at most `--forks` at once.
//! Every command is rendered through `Planner::render`, the same code the
//! dry-run printed, once with secrets (to send) and once masked (to record).

use crate::error::exit;
use crate::execute::gate::{Answer, GateError, Gates};
use crate::execute::interrupt::Interrupt;
use crate::execute::view::Ui;
use crate::plan::{
    AnswerKind, Captures, Completion, HostRef, OnFailure, Plan, PlanStep, Planner, Service, StepRef,
};
use crate::record::events::{self, Event, Outcome as RunOutcome, Phase, Status};
use crate::record::rundir::{RecordError, Recorder};
use crate::sanitize::Redactor;
use crate::transport::Connection;
use futures::future::join_all;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use tokio::sync::Semaphore;

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error(transparent)]
    Gate(#[from] GateError),
}

/// A step that completed on some hosts: what a rollback undoes.
#[derive(Debug, Clone)]
pub struct Completed {
    pub step: usize,
    pub hosts: Vec<Completion>,
}

/// How a run ended, for the exit code and the last lines printed.
#[derive(Debug, Clone)]
pub struct Finish {
    pub outcome: RunOutcome,
    pub message: String,
    pub exit_code: i32,
}

pub struct Engine<'a> {
    /// Renders commands at run time (with the captures so far, secrets revealed).
    pub planner: &'a Planner,
    /// What runs: every step's settings, read from here only.
    pub plan: &'a Plan,
    pub conns: HashMap<String, Connection>,
    pub local: Connection,
    pub rec: &'a Recorder,
    pub ui: &'a Ui,
    pub gates: Gates,
    pub forks: usize,
    pub operator: String,
    pub redactor: Redactor,
    pub captures: Mutex<Captures>,
    /// Forward steps (0-based) and the hosts where each finished ok so far:
    /// updated as each host finishes, so an interrupted step is counted too.
    /// A host outside the serial set (a load balancer) may appear once per batch.
    pub completed: Mutex<BTreeMap<usize, Vec<Completion>>>,
    /// Forward steps (0-based) and the hosts where each started and did not
    /// finish (stopped now, the connection lost, interrupted): possibly partly
    /// applied, so a rollback undoes them too. For `opsrun rollback`: the
    /// recorded run's.
    pub in_flight: Mutex<BTreeMap<usize, Vec<Completion>>>,
    pub interrupt: &'a Interrupt,
    /// The forward step that stopped the run, whose `on_failure` decides what follows.
    pub failed_step: Mutex<Option<usize>>,
    /// Where the run's commands register on each host (`supervise::registry_key`).
    pub registry_key: String,
    /// Numbers the commands of the run, for their registry entries.
    pub tags: std::sync::atomic::AtomicU64,
    /// "Stop now" and what it killed (`supervise`).
    pub kill: tokio::sync::watch::Sender<crate::execute::supervise::Kill>,
    /// The (host, tag) of each command on its way: a scripted host's "stop now"
    /// kills these, and a host with one left after "stop now" keeps its lock.
    pub running: Mutex<std::collections::HashSet<(String, String)>>,
    /// Hosts whose lock must not be released: a command stopped there never
    /// ended on the channel (something it started may still run).
    pub keep_locks: Mutex<std::collections::HashSet<String>>,
}

/// What one host did in one step.
pub(super) struct Done {
    pub(super) host: String,
    pub(super) status: Status,
    pub(super) detail: String,
    /// The saved output the detail was quoted from: where the operator reads the rest.
    pub(super) output: Option<std::path::PathBuf>,
}

impl Engine<'_> {
    pub(super) fn step(&self, r: StepRef) -> &PlanStep {
        match r {
            StepRef::Forward(i) => &self.plan.steps[i],
            StepRef::Guide(i) => &self.plan.rollback_guide[i],
        }
    }

    pub(super) fn gate_event(
        &self,
        step: Option<&str>,
        batch: Option<usize>,
        prompt: &str,
        a: &Answer,
    ) -> Result<(), ExecError> {
        self.rec.emit(&Event::Gate {
            time: events::now(),
            step: step.map(str::to_string),
            batch,
            prompt: prompt.to_string(),
            answer: a.text.clone(),
            confirmed: a.confirmed,
            by: self.operator.clone(),
        })?;
        Ok(())
    }

    /// Asks a yes/no gate and records the answer; `Ok(false)` means "not confirmed".
    pub fn confirm(&self, step: Option<&str>, question: &str) -> Result<bool, ExecError> {
        self.confirm_in(step, None, question)
    }

    /// A gate of a step in a batch: recorded with it, so the log tells the batches apart.
    pub(super) fn confirm_in(
        &self,
        step: Option<&str>,
        batch: Option<usize>,
        question: &str,
    ) -> Result<bool, ExecError> {
        match self.gates.confirm(self.ui, question) {
            Ok(a) => {
                self.gate_event(step, batch, question, &a)?;
                Ok(a.confirmed)
            }
            Err(e) => {
                let a = Answer {
                    confirmed: false,
                    text: format!("(no answer: {e})"),
                };
                self.gate_event(step, batch, question, &a)?;
                Err(e.into())
            }
        }
    }

    pub fn typed_gate(&self, env: &str) -> Result<bool, ExecError> {
        let prompt = format!("type `{env}` to start");
        match self.gates.typed(self.ui, env) {
            Ok(a) => {
                self.gate_event(None, None, &prompt, &a)?;
                Ok(a.confirmed)
            }
            Err(e) => {
                let a = Answer {
                    confirmed: false,
                    text: format!("(no answer: {e})"),
                };
                self.gate_event(None, None, &prompt, &a)?;
                Err(e.into())
            }
        }
    }

    pub(super) fn conn(&self, step: &PlanStep, host: &str) -> Option<&Connection> {
        if step.local {
            Some(&self.local)
        } else {
            self.conns.get(host)
        }
    }

    /// Runs steps in order for one batch (`None`: every host at once, as the
    /// rollback guide does); `Ok(Some(_))` when the run stops early.
    /// `Err` only when the record cannot be written or a gate cannot be asked.
    pub async fn run_steps(
        &self,
        refs: &[StepRef],
        batch: Option<usize>,
        label_of: &dyn Fn(StepRef) -> String,
    ) -> Result<Option<Finish>, ExecError> {
        for &r in refs {
            if self.interrupt.get().is_some() {
                return Ok(Some(Finish {
                    outcome: RunOutcome::Interrupted,
                    message: self.interrupt.stopped_message(),
                    exit_code: exit::INTERRUPTED,
                }));
            }
            let i = match r {
                StepRef::Forward(i) | StepRef::Guide(i) => i,
            };
            let step = self.step(r);
            let hosts: Vec<String> = if step.local {
                vec![HostRef::Control.to_string()]
            } else {
                self.planner.batch_hosts(r, batch)
            };
            if hosts.is_empty() && !step.is_manual() {
                // A step with no host at all (an optional group the inventory lacks)
                // is said so in the record; one whose hosts are all in other batches
                // simply has nothing to do in this one.
                if self.planner.step_hosts(r).is_empty() {
                    self.no_hosts(r, i + 1, step, &label_of(r))?;
                }
                continue;
            }
            self.ui.step(&label_of(r), &step.name, hosts.len());
            // The plan says what to ask and how it is answered; this only asks.
            for gate in &step.gates.0 {
                let message = match gate.answer {
                    AnswerKind::YesNo => {
                        // Asked with the values captured so far: what is approved is seen.
                        let mut confirmed = true;
                        for q in self.gate_questions(r, step, gate, batch) {
                            if !self.confirm_in(Some(&step.name), batch, &q)? {
                                confirmed = false;
                                break;
                            }
                        }
                        if confirmed {
                            continue;
                        }
                        format!("not confirmed at step `{}`", step.name)
                    }
                    AnswerKind::Done => {
                        let instructions = self.manual_instructions(r, step, gate, &hosts, batch);
                        let (a, note) = self.gates.manual(self.ui, &instructions)?;
                        self.rec.emit(&Event::Manual {
                            time: events::now(),
                            step: step.name.clone(),
                            instructions,
                            confirmed: a.confirmed,
                            note,
                            by: self.operator.clone(),
                        })?;
                        if a.confirmed {
                            continue;
                        }
                        format!("manual step `{}` not confirmed", step.name)
                    }
                };
                return Ok(Some(Finish {
                    outcome: RunOutcome::NotConfirmed,
                    message,
                    exit_code: exit::NOT_CONFIRMED,
                }));
            }
            if step.is_manual() {
                continue;
            }
            let results = self
                .run_step(
                    // The rollback guide's steps are recorded as rollback, never as
                    // forward steps that a resume or a rollback would count as done.
                    match r {
                        StepRef::Forward(_) => Phase::Forward,
                        StepRef::Guide(_) => Phase::Guide,
                    },
                    r,
                    i + 1,
                    step,
                    &hosts,
                    batch,
                )
                .await?;
            // Killed by "stop now": the stop is the verdict, not a failure of the step.
            if self.stopping() {
                return Ok(Some(Finish {
                    outcome: RunOutcome::Interrupted,
                    message: self.interrupt.stopped_message(),
                    exit_code: exit::INTERRUPTED,
                }));
            }
            if self.rec.disk_full() {
                // The record is no longer complete: stop as after a failed step
                // (the same rollback gate), whatever `on_failure` says.
                *self.failed_step.lock().unwrap_or_else(|p| p.into_inner()) = Some(i);
                return Ok(Some(self.disk_full_finish(step, &results)));
            }
            let failed: Vec<&Done> = results.iter().filter(|d| d.status.is_failure()).collect();
            if failed.is_empty() || step.on_failure == OnFailure::Continue {
                if !failed.is_empty() {
                    self.ui.warn(&format!(
                        "step `{}` failed on {}; on_failure: continue",
                        step.name,
                        crate::plural::count(failed.len(), "host", "hosts")
                    ));
                }
                continue;
            }
            let names: Vec<String> = failed
                .iter()
                .map(|d| format!("{} ({})", d.host, d.detail))
                .collect();
            let message = format!("step `{}` failed on {}", step.name, names.join(", "));
            self.ui.error(&message);
            // One line quoted is a guess: say where the whole output is.
            let log = self.rec.dir().join(crate::execute::LOG_FILE);
            for d in &failed {
                if let Some(path) = &d.output {
                    let stream = path
                        .extension()
                        .map_or_else(|| "output".into(), |e| e.to_string_lossy().into_owned());
                    self.ui.line(&format!(
                        "  {}: full {stream} in {} (and in the log, {})",
                        d.host,
                        path.display(),
                        log.display()
                    ));
                }
            }
            *self.failed_step.lock().unwrap_or_else(|p| p.into_inner()) = Some(i);
            return Ok(Some(Finish {
                outcome: RunOutcome::Failed,
                message,
                exit_code: exit::STEP_FAILED,
            }));
        }
        Ok(None)
    }

    /// One step on its hosts, in parallel up to `forks`, between its start and
    /// finish events; `each` does one host. Shared by forward steps and undo.
    pub(super) async fn on_hosts<'h, F, Fut>(
        &self,
        phase: Phase,
        number: usize,
        step: &PlanStep,
        hosts: &'h [String],
        service: Option<Service>,
        each: F,
    ) -> Result<Vec<Done>, ExecError>
    where
        F: Fn(&'h str) -> Fut,
        Fut: std::future::Future<Output = Result<Done, ExecError>>,
    {
        self.rec.emit(&Event::StepStarted {
            time: events::now(),
            phase,
            number,
            step: step.name.clone(),
            hosts: hosts.to_vec(),
            service,
        })?;
        let permits = Semaphore::new(self.forks.max(1));
        let futures = hosts.iter().map(|h| async {
            let _permit = permits.acquire().await;
            each(h).await
        });
        let results: Vec<Done> = join_all(futures)
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        let failed: Vec<String> = results
            .iter()
            .filter(|d| d.status.is_failure())
            .map(|d| d.host.clone())
            .collect();
        self.rec.emit(&Event::StepFinished {
            time: events::now(),
            phase,
            number,
            step: step.name.clone(),
            status: if failed.is_empty() {
                Status::Ok
            } else {
                Status::Failed
            },
            failed_hosts: failed,
        })?;
        Ok(results)
    }

    /// Records a step that has no host to run on, so the log shows it was not forgotten.
    pub(super) fn no_hosts(
        &self,
        r: StepRef,
        number: usize,
        step: &PlanStep,
        label: &str,
    ) -> Result<(), ExecError> {
        let on = step.on.pattern();
        let phase = match r {
            StepRef::Forward(_) => Phase::Forward,
            StepRef::Guide(_) => Phase::Guide,
        };
        self.ui.line(&format!(
            "{label} {}: no hosts (`{}` matches none{})",
            crate::sanitize::escape_line(&step.name),
            crate::sanitize::escape_line(on),
            if self.planner.is_limited() {
                " within --limit"
            } else {
                ""
            }
        ));
        self.rec.emit(&Event::StepStarted {
            time: events::now(),
            phase,
            number,
            step: step.name.clone(),
            hosts: Vec::new(),
            service: None,
        })?;
        self.rec.emit(&Event::StepFinished {
            time: events::now(),
            phase,
            number,
            step: step.name.clone(),
            status: Status::Skipped,
            failed_hosts: Vec::new(),
        })?;
        Ok(())
    }

    pub(super) async fn run_step(
        &self,
        phase: Phase,
        r: StepRef,
        number: usize,
        step: &PlanStep,
        hosts: &[String],
        batch: Option<usize>,
    ) -> Result<Vec<Done>, ExecError> {
        // The batch the target is recorded with: what its undo renders with.
        let batch_of = batch.filter(|_| self.planner.reads_batch(r));
        self.on_hosts(
            phase,
            number,
            step,
            hosts,
            step.service.clone(),
            |h| async move {
                // In flight until it finishes: a "stop now" drops this future half way.
                let flying = phase == Phase::Forward;
                let entry = Completion {
                    host: h.to_string(),
                    batch: batch_of,
                };
                if flying {
                    self.flight(number - 1, &entry, true);
                }
                let done = self.run_target(phase, r, number, step, h, batch).await?;
                if flying && done.status != Status::Interrupted {
                    self.flight(number - 1, &entry, false);
                }
                Ok(done)
            },
        )
        .await
    }

    /// Marks a forward target in flight (`on`) or no longer.
    fn flight(&self, step: usize, c: &Completion, on: bool) {
        let mut all = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let hosts = all.entry(step).or_default();
        if on {
            hosts.push(c.clone());
        } else if let Some(at) = hosts.iter().rposition(|x| x == c) {
            hosts.remove(at);
        }
        all.retain(|_, hosts| !hosts.is_empty());
    }
}
