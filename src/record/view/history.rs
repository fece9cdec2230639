//! What happened during a run, in the order the log shows it: the step × host
//! results of the forward steps and of the rollback, the gates and manual steps,
//! connection failures, downtime per service and the exceptions. A plain data model folded from the events; report/log.rs renders it
//! and interprets no event itself.

use crate::clock::Time;
use crate::load::runbook::{Service, ServiceState};
use crate::record::events::{CheckAttempt, Event, Phase, Saved, Status};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default)]
pub struct History {
    /// Gates and manual steps, in the order they were answered.
    pub prompts: Vec<Prompt>,
    pub connect_failures: Vec<ConnectFailure>,
    /// The forward steps.
    pub steps: StepTable,
    /// The undo or guide steps (one run has only one kind).
    pub rollback: StepTable,
    /// Whether `rollback` holds rollback-guide steps rather than undone forward
    /// steps: the log labels their rows `RN`, not `undo N`.
    pub rollback_is_guide: bool,
    /// `None` when no step stops or starts a service (the log has no such section).
    pub downtime: Option<Vec<Downtime>>,
    pub exceptions: Vec<Exception>,
    /// Every saved stdout/stderr, in the order they were recorded: the files the
    /// log's signature covers.
    pub outputs: Vec<Saved>,
}

/// A question the run asked the operator, and the answer.
#[derive(Debug, Clone)]
pub enum Prompt {
    Gate {
        time: Time,
        /// `None`: the gate before the first step.
        step: Option<String>,
        batch: Option<usize>,
        prompt: String,
        answer: String,
        confirmed: bool,
        by: String,
    },
    Manual {
        time: Time,
        step: String,
        instructions: String,
        confirmed: bool,
        note: Option<String>,
        by: String,
    },
}

#[derive(Debug, Clone)]
pub struct ConnectFailure {
    pub host: String,
    pub error: String,
}

/// The rows of one steps table: finished targets and steps that had no host, step
/// by step in the order they ran, within a step hosts in inventory order (not in
/// the order they happened to finish); then the targets that started and never
/// finished.
#[derive(Debug, Clone, Default)]
pub struct StepTable {
    pub rows: Vec<Row>,
    pub interrupted: Vec<Unfinished>,
}

impl StepTable {
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty() && self.interrupted.is_empty()
    }
}

#[derive(Debug, Clone)]
pub enum Row {
    /// The step's host pattern matched no host: it was skipped.
    NoHosts {
        number: usize,
        step: String,
        time: Time,
    },
    Target(Box<TargetResult>),
}

/// One host's result of one step: its `TargetFinished` event.
#[derive(Debug, Clone)]
pub struct TargetResult {
    pub number: usize,
    pub step: String,
    pub host: String,
    pub login: String,
    pub status: Status,
    pub started: Time,
    pub millis: u64,
    pub exit_code: Option<i32>,
    pub command: Option<String>,
    pub stdin: Option<String>,
    pub stdout: Option<Saved>,
    pub stderr: Option<Saved>,
    pub checks: Vec<CheckAttempt>,
    pub capture: Option<(String, String)>,
    pub upload_sha256: Option<String>,
    /// Why the uploaded file's sha256 is not published (it was rendered with a secret).
    pub upload_sha256_withheld: Option<String>,
    pub reason: Option<String>,
    pub batch: Option<usize>,
}

/// A host that started a step and has no result: the run was killed meanwhile.
#[derive(Debug, Clone)]
pub struct Unfinished {
    pub number: usize,
    pub step: String,
    pub host: String,
    pub time: Time,
    pub command: Option<String>,
}

/// A service down on a host: from a stop to the next start (`None`: still down).
#[derive(Debug, Clone)]
pub struct Downtime {
    pub service: String,
    pub host: String,
    pub stopped: Time,
    pub started: Option<Time>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExceptionKind {
    StepFailed,
    Timeout,
    RollbackFailed,
    Connection,
}

/// One row of the exception table: a failure, a timeout or a connection failure.
#[derive(Debug, Clone)]
pub struct Exception {
    pub kind: ExceptionKind,
    pub host: String,
    /// Step number and name; `None` for a connection failure.
    pub step: Option<(usize, String)>,
    pub message: String,
}

impl History {
    /// `hosts` orders the hosts within a step: the inventory order of the run.
    pub fn fold(events: &[Event], hosts: &[String]) -> History {
        let mut h = History {
            steps: step_table(events, hosts, false),
            rollback: step_table(events, hosts, true),
            rollback_is_guide: events.iter().any(|e| {
                matches!(
                    e,
                    Event::StepStarted {
                        phase: Phase::Guide,
                        ..
                    }
                )
            }),
            downtime: downtime(events),
            ..History::default()
        };
        for e in events {
            h.apply(e);
        }
        h
    }

    fn apply(&mut self, e: &Event) {
        match e {
            Event::Gate {
                time,
                step,
                batch,
                prompt,
                answer,
                confirmed,
                by,
            } => self.prompts.push(Prompt::Gate {
                time: *time,
                step: step.clone(),
                batch: *batch,
                prompt: prompt.clone(),
                answer: answer.clone(),
                confirmed: *confirmed,
                by: by.clone(),
            }),
            Event::Manual {
                time,
                step,
                instructions,
                confirmed,
                note,
                by,
            } => self.prompts.push(Prompt::Manual {
                time: *time,
                step: step.clone(),
                instructions: instructions.clone(),
                confirmed: *confirmed,
                note: note.clone(),
                by: by.clone(),
            }),
            Event::ConnectFailed { host, error, .. } => {
                self.connect_failures.push(ConnectFailure {
                    host: host.clone(),
                    error: error.clone(),
                });
                self.exceptions.push(Exception {
                    kind: ExceptionKind::Connection,
                    host: host.clone(),
                    step: None,
                    message: error.clone(),
                });
            }
            Event::TargetFinished {
                phase,
                number,
                step,
                host,
                status,
                reason,
                stdout,
                stderr,
                ..
            } => {
                let kind = match (phase, status) {
                    (_, Status::Ok | Status::Skipped) => None,
                    (Phase::Undo | Phase::Guide, _) => Some(ExceptionKind::RollbackFailed),
                    (_, Status::TimedOut) => Some(ExceptionKind::Timeout),
                    _ => Some(ExceptionKind::StepFailed),
                };
                if let Some(kind) = kind {
                    self.exceptions.push(Exception {
                        kind,
                        host: host.clone(),
                        step: Some((*number, step.clone())),
                        message: reason.clone().unwrap_or_default(),
                    });
                }
                self.outputs.extend(stdout.iter().chain(stderr).cloned());
            }
            _ => {}
        }
    }
}

fn step_table(events: &[Event], hosts: &[String], rollback: bool) -> StepTable {
    let host_order: BTreeMap<&str, usize> = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| (h.as_str(), i))
        .collect();
    // A row sorts by where its step started (a step's rows stay together even when
    // its batches interleave with other events), then by the host's rank.
    let mut step_start: BTreeMap<usize, usize> = BTreeMap::new();
    let mut rows: Vec<((usize, usize), Row)> = Vec::new();
    // A start without its finish; a host in every batch starts a step once per batch.
    let mut running: Vec<Unfinished> = Vec::new();
    for (at, e) in events.iter().enumerate() {
        match e {
            Event::StepStarted {
                phase,
                number,
                step,
                hosts,
                time,
                ..
            } if phase.is_rollback() == rollback => {
                step_start.insert(*number, at);
                if hosts.is_empty() {
                    let row = Row::NoHosts {
                        number: *number,
                        step: step.clone(),
                        time: *time,
                    };
                    rows.push(((at, 0), row));
                }
            }
            Event::TargetStarted {
                phase,
                number,
                step,
                host,
                time,
                command,
                ..
            } if phase.is_rollback() == rollback => running.push(Unfinished {
                number: *number,
                step: step.clone(),
                host: host.clone(),
                time: *time,
                command: command.clone(),
            }),
            Event::TargetFinished {
                phase,
                number,
                step,
                host,
                login,
                status,
                started,
                millis,
                exit_code,
                command,
                stdin,
                stdout,
                stderr,
                checks,
                capture,
                upload_sha256,
                upload_sha256_withheld,
                reason,
                batch,
                ..
            } if phase.is_rollback() == rollback => {
                if let Some(i) = running
                    .iter()
                    .position(|s| s.number == *number && s.host == *host)
                {
                    running.remove(i);
                }
                let key = (
                    step_start.get(number).copied().unwrap_or(at),
                    host_order.get(host.as_str()).copied().unwrap_or(usize::MAX),
                );
                let result = TargetResult {
                    number: *number,
                    step: step.clone(),
                    host: host.clone(),
                    login: login.clone(),
                    status: *status,
                    started: *started,
                    millis: *millis,
                    exit_code: *exit_code,
                    command: command.clone(),
                    stdin: stdin.clone(),
                    stdout: stdout.clone(),
                    stderr: stderr.clone(),
                    checks: checks.clone(),
                    capture: capture.clone(),
                    upload_sha256: upload_sha256.clone(),
                    upload_sha256_withheld: upload_sha256_withheld.clone(),
                    reason: reason.clone(),
                    batch: *batch,
                };
                rows.push((key, Row::Target(Box::new(result))));
            }
            _ => {}
        }
    }
    // Stable: rows of one host and step (one per batch) keep the order they ran in.
    rows.sort_by_key(|(key, _)| *key);
    StepTable {
        rows: rows.into_iter().map(|(_, r)| r).collect(),
        interrupted: running,
    }
}

/// Business-impact downtime per service and host: from a stop to the next start.
/// Rows in the order the services came back up, then the ones still down.
fn downtime(events: &[Event]) -> Option<Vec<Downtime>> {
    let mut service_of: BTreeMap<(Phase, usize), &Service> = BTreeMap::new();
    for e in events {
        if let Event::StepStarted {
            phase,
            number,
            service: Some(s),
            ..
        } = e
        {
            service_of.insert((*phase, *number), s);
        }
    }
    if service_of.is_empty() {
        return None;
    }
    let mut open: BTreeMap<(String, String), Time> = BTreeMap::new();
    let mut rows = Vec::new();
    for e in events {
        if let Event::TargetFinished {
            phase,
            number,
            host,
            status: Status::Ok,
            time,
            ..
        } = e
        {
            let Some(svc) = service_of.get(&(*phase, *number)) else {
                continue;
            };
            let key = (svc.name.clone(), host.clone());
            match svc.state {
                ServiceState::Stopped => {
                    open.entry(key).or_insert(*time);
                }
                ServiceState::Started => {
                    if let Some(stopped) = open.remove(&key) {
                        rows.push(Downtime {
                            service: key.0,
                            host: key.1,
                            stopped,
                            started: Some(*time),
                        });
                    }
                }
            }
        }
    }
    for ((service, host), stopped) in open {
        rows.push(Downtime {
            service,
            host,
            stopped,
            started: None,
        });
    }
    Some(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::now;

    fn step(phase: Phase, number: usize, hosts: &[&str]) -> Event {
        Event::StepStarted {
            time: now(),
            phase,
            number,
            step: format!("step {number}"),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            service: None,
        }
    }

    fn started(number: usize, host: &str) -> Event {
        Event::TargetStarted {
            time: now(),
            phase: Phase::Forward,
            number,
            step: format!("step {number}"),
            host: host.into(),
            command: Some("true".into()),
            batch: None,
        }
    }

    fn finished(phase: Phase, number: usize, host: &str, status: Status) -> Event {
        Event::TargetFinished {
            time: now(),
            phase,
            number,
            step: format!("step {number}"),
            host: host.into(),
            login: "root".into(),
            status,
            started: now(),
            millis: 1,
            exit_code: Some(0),
            command: None,
            stdin: None,
            stdout: None,
            stderr: None,
            checks: Vec::new(),
            capture: None,
            upload_sha256: None,
            upload_sha256_withheld: None,
            reason: Some("why".into()),
            batch: None,
        }
    }

    fn hosts_of(t: &StepTable) -> Vec<String> {
        t.rows
            .iter()
            .map(|r| match r {
                Row::Target(t) => format!("{} {}", t.number, t.host),
                Row::NoHosts { number, .. } => format!("{number} (no hosts)"),
            })
            .collect()
    }

    /// Rows go step by step, hosts in inventory order whatever order they finished
    /// in; a target that never finished is listed apart; undo rows are the
    /// rollback's; failures are exceptions.
    #[test]
    fn the_history_orders_rows_by_step_then_inventory() {
        let events = [
            step(Phase::Forward, 1, &["a", "b"]),
            started(1, "b"),
            finished(Phase::Forward, 1, "b", Status::Ok),
            started(1, "a"),
            finished(Phase::Forward, 1, "a", Status::Ok),
            step(Phase::Forward, 2, &[]),
            step(Phase::Forward, 3, &["a", "b"]),
            started(3, "a"),
            started(3, "b"),
            finished(Phase::Forward, 3, "b", Status::Failed),
            step(Phase::Undo, 1, &["b"]),
            finished(Phase::Undo, 1, "b", Status::Ok),
        ];
        let h = History::fold(&events, &["a".into(), "b".into()]);
        assert_eq!(hosts_of(&h.steps), ["1 a", "1 b", "2 (no hosts)", "3 b"]);
        let unfinished: Vec<_> = h
            .steps
            .interrupted
            .iter()
            .map(|u| (u.number, u.host.as_str()))
            .collect();
        assert_eq!(unfinished, [(3, "a")]);
        assert_eq!(hosts_of(&h.rollback), ["1 b"]);
        assert!(h.rollback.interrupted.is_empty());
        let exceptions: Vec<_> = h
            .exceptions
            .iter()
            .map(|e| (e.kind, e.host.as_str(), e.step.clone()))
            .collect();
        assert_eq!(
            exceptions,
            [(
                ExceptionKind::StepFailed,
                "b",
                Some((3, "step 3".to_string()))
            )]
        );
        assert!(h.downtime.is_none(), "no step names a service");
    }
}
