//! The engine: walks the plan step by step over open connections.
//!
//! Steps are barriers: a step finishes on all its hosts before the next one
//! starts; within a step hosts run in parallel, at most `--forks` at once.
//! Every command is rendered through `Planner::render`, the same code the
//! dry-run printed, once with secrets (to send) and once masked (to record).

use crate::error::exit;
use crate::events::{self, CheckAttempt, Event, Outcome as RunOutcome, Phase, Status};
use crate::gate::{Answer, GateError, Gates};
use crate::plan::{Captures, Planner, Reveal, StepRef, Target};
use crate::record::{slug, RecordError, Recorder};
use crate::runbook::{Action, OnFailure, Step};
use crate::sanitize::{escape_controls, Redactor};
use crate::transport::{Command, Connection, Stdin};
use crate::ui::Ui;
use futures::future::join_all;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Extra time past a step's `timeout` before the control side gives up on the
/// channel: the remote `timeout` wrapper normally ends the command first.
const TIMEOUT_GRACE: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error(transparent)]
    Gate(#[from] GateError),
    #[error("{0}")]
    Render(String),
}

/// A step that completed on some hosts: what a rollback undoes.
#[derive(Debug, Clone)]
pub struct Completed {
    pub step: usize,
    pub hosts: Vec<String>,
}

/// How a run ended, for the exit code and the last lines printed.
#[derive(Debug, Clone)]
pub struct Finish {
    pub outcome: RunOutcome,
    pub message: String,
    pub exit_code: i32,
}

pub struct Engine<'a> {
    pub planner: &'a Planner,
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
    pub completed: Mutex<BTreeMap<usize, Vec<String>>>,
    pub interrupt: &'a Interrupt,
}

/// What the operator asked for with Ctrl-C.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Let the running step finish, then stop.
    AfterStep,
    /// Stop now, leaving the running step unfinished.
    Now,
    /// Stop now and undo the completed steps.
    NowAndRollback,
}

/// Ctrl-C state shared between the signal handler and the engine.
#[derive(Debug, Default)]
pub struct Interrupt {
    choice: Mutex<Option<Stop>>,
    pub now: tokio::sync::Notify,
}

impl Interrupt {
    pub fn set(&self, stop: Stop) {
        *self.choice.lock().unwrap_or_else(|p| p.into_inner()) = Some(stop);
        if stop != Stop::AfterStep {
            self.now.notify_waiters();
            self.now.notify_one();
        }
    }

    pub fn get(&self) -> Option<Stop> {
        *self.choice.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What one host did in one step.
struct Done {
    host: String,
    status: Status,
    detail: String,
}

fn first_line(b: &[u8]) -> String {
    let s = escape_controls(b);
    s.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default()
        .chars()
        .take(160)
        .collect()
}

impl Engine<'_> {
    fn step_def(&self, r: StepRef) -> &Step {
        match r {
            StepRef::Forward(i) => &self.planner.runbook.steps[i],
            StepRef::Guide(i) => &self.planner.runbook.rollback[i],
        }
    }

    fn gate_event(&self, step: Option<&str>, prompt: &str, a: &Answer) -> Result<(), ExecError> {
        self.rec.emit(&Event::Gate {
            time: events::now(),
            step: step.map(str::to_string),
            prompt: prompt.to_string(),
            answer: a.text.clone(),
            confirmed: a.confirmed,
            by: self.operator.clone(),
        })?;
        Ok(())
    }

    /// Asks a yes/no gate and records the answer; `Ok(false)` means "not confirmed".
    pub fn confirm(&self, step: Option<&str>, question: &str) -> Result<bool, ExecError> {
        match self.gates.confirm(self.ui, question) {
            Ok(a) => {
                self.gate_event(step, question, &a)?;
                Ok(a.confirmed)
            }
            Err(e) => {
                let a = Answer {
                    confirmed: false,
                    text: format!("(no answer: {e})"),
                };
                self.gate_event(step, question, &a)?;
                Err(e.into())
            }
        }
    }

    pub fn typed_gate(&self, env: &str) -> Result<bool, ExecError> {
        let prompt = format!("type `{env}` to start");
        match self.gates.typed(self.ui, env) {
            Ok(a) => {
                self.gate_event(None, &prompt, &a)?;
                Ok(a.confirmed)
            }
            Err(e) => {
                let a = Answer {
                    confirmed: false,
                    text: format!("(no answer: {e})"),
                };
                self.gate_event(None, &prompt, &a)?;
                Err(e.into())
            }
        }
    }

    fn conn(&self, step: &Step, host: &str) -> Option<&Connection> {
        if step.local {
            Some(&self.local)
        } else {
            self.conns.get(host)
        }
    }

    /// Runs steps in order on a batch of hosts; `Ok(Some(_))` when the run stops early.
    /// `Err` only when the record cannot be written or a gate cannot be asked.
    pub async fn run_steps(
        &self,
        refs: &[StepRef],
        batch: &[String],
        label_of: &dyn Fn(StepRef) -> String,
    ) -> Result<Option<Finish>, ExecError> {
        for &r in refs {
            if self.interrupt.get().is_some() {
                return Ok(Some(Finish {
                    outcome: RunOutcome::Interrupted,
                    message: "stopped by the operator (Ctrl-C) after the running step".into(),
                    exit_code: exit::INTERRUPTED,
                }));
            }
            let i = match r {
                StepRef::Forward(i) | StepRef::Guide(i) => i,
            };
            let step = self.step_def(r).clone();
            let hosts: Vec<String> = if step.local {
                vec!["localhost".to_string()]
            } else {
                self.planner
                    .step_hosts(r)
                    .iter()
                    .filter(|h| batch.contains(h))
                    .cloned()
                    .collect()
            };
            if hosts.is_empty() && !matches!(step.action, Action::Manual(_)) {
                continue;
            }
            self.ui.step(&label_of(r), &step.name, hosts.len());
            if let Some(q) = self
                .planner
                .confirm_prompt(r)
                .map_err(|e| ExecError::Render(e.to_string()))?
            {
                if !self.confirm(Some(&step.name), &q)? {
                    return Ok(Some(Finish {
                        outcome: RunOutcome::NotConfirmed,
                        message: format!("not confirmed at step `{}`", step.name),
                        exit_code: exit::NOT_CONFIRMED,
                    }));
                }
            }
            if let Action::Manual(_) = step.action {
                let text = self
                    .planner
                    .manual_text(r)
                    .map_err(|e| ExecError::Render(e.to_string()))?
                    .unwrap_or_default();
                let (a, note) = self.gates.manual(self.ui, &text)?;
                self.rec.emit(&Event::Manual {
                    time: events::now(),
                    step: step.name.clone(),
                    instructions: text,
                    confirmed: a.confirmed,
                    note,
                    by: self.operator.clone(),
                })?;
                if !a.confirmed {
                    return Ok(Some(Finish {
                        outcome: RunOutcome::NotConfirmed,
                        message: format!("manual step `{}` not confirmed", step.name),
                        exit_code: exit::NOT_CONFIRMED,
                    }));
                }
                continue;
            }
            let results = self
                .run_step(Phase::Forward, r, i + 1, &step, &hosts)
                .await?;
            let failed: Vec<&Done> = results
                .iter()
                .filter(|d| matches!(d.status, Status::Failed | Status::TimedOut))
                .collect();
            if failed.is_empty() || step.on_failure == OnFailure::Continue {
                if !failed.is_empty() {
                    self.ui.warn(&format!(
                        "step `{}` failed on {} host(s); on_failure: continue",
                        step.name,
                        failed.len()
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
            return Ok(Some(Finish {
                outcome: RunOutcome::Failed,
                message,
                exit_code: exit::STEP_FAILED,
            }));
        }
        Ok(None)
    }

    /// One step on its hosts, in parallel up to `forks`; returns per-host results.
    async fn run_step(
        &self,
        phase: Phase,
        r: StepRef,
        number: usize,
        step: &Step,
        hosts: &[String],
    ) -> Result<Vec<Done>, ExecError> {
        self.rec.emit(&Event::StepStarted {
            time: events::now(),
            phase,
            number,
            step: step.name.clone(),
            hosts: hosts.to_vec(),
            service: step.service.clone(),
        })?;
        let permits = Semaphore::new(self.forks.max(1));
        let futures = hosts.iter().map(|h| async {
            let _permit = permits.acquire().await;
            self.run_target(phase, r, number, step, h).await
        });
        let results: Vec<Done> = join_all(futures)
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        let failed: Vec<String> = results
            .iter()
            .filter(|d| matches!(d.status, Status::Failed | Status::TimedOut))
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

    fn render(&self, r: StepRef, host: Option<&str>, reveal: Reveal) -> Result<Target, String> {
        let caps = self
            .captures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        self.planner
            .render(r, host, Some(&caps), reveal)
            .map_err(|e| e.to_string())
    }

    async fn exec(
        &self,
        conn: &Connection,
        line: &str,
        stdin: Stdin,
        host: &str,
        timeout: Option<Duration>,
    ) -> Result<crate::transport::Outcome, String> {
        let cmd = Command {
            line: line.to_string(),
            stdin,
        };
        let redactor = &self.redactor;
        let ui = self.ui;
        // The live view (-v) shows whole lines only: a command that writes a secret
        // in two pieces arrives in two chunks, and masking each chunk alone would
        // show both halves. A very long line without a newline is let through in
        // pieces so that output stays live.
        const MAX_PENDING: usize = 64 * 1024;
        let mut pending = (Vec::new(), Vec::new());
        let result = {
            let mut sink = |s: crate::transport::Stream, chunk: &[u8]| {
                let buf = match s {
                    crate::transport::Stream::Stdout => &mut pending.0,
                    crate::transport::Stream::Stderr => &mut pending.1,
                };
                buf.extend_from_slice(chunk);
                let upto = if buf.len() > MAX_PENDING {
                    Some(buf.len())
                } else {
                    buf.iter().rposition(|b| *b == b'\n').map(|i| i + 1)
                };
                if let Some(end) = upto {
                    let lines: Vec<u8> = buf.drain(..end).collect();
                    ui.output(host, &redactor.redact_bytes(&lines));
                }
            };
            let fut = conn.exec(&cmd, &mut sink);
            match timeout {
                Some(t) => match tokio::time::timeout(t + TIMEOUT_GRACE, fut).await {
                    Ok(r) => r.map_err(|e| e.to_string()),
                    Err(_) => Err(format!(
                        "no answer within {} (timeout + grace)",
                        crate::duration::format(t + TIMEOUT_GRACE)
                    )),
                },
                None => fut.await.map_err(|e| e.to_string()),
            }
        };
        for rest in [pending.0, pending.1] {
            if !rest.is_empty() {
                ui.output(host, &redactor.redact_bytes(&rest));
            }
        }
        result
    }

    /// One step on one host: action, expectations, capture, check.
    async fn run_target(
        &self,
        phase: Phase,
        r: StepRef,
        number: usize,
        step: &Step,
        host: &str,
    ) -> Result<Done, ExecError> {
        let started = events::now();
        let clock = Instant::now();
        let host_opt = (!step.local).then_some(host);
        let (real, shown) = match (
            self.render(r, host_opt, Reveal::Real),
            self.render(r, host_opt, Reveal::Masked),
        ) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => {
                return self
                    .finish(
                        phase,
                        number,
                        step,
                        host,
                        &Target::default(),
                        started,
                        clock,
                        Status::Failed,
                        None,
                        None,
                        None,
                        vec![],
                        None,
                        None,
                        Some(e),
                    )
                    .await;
            }
        };
        if let Some(why) = &real.skipped {
            return self
                .finish(
                    phase,
                    number,
                    step,
                    host,
                    &shown,
                    started,
                    clock,
                    Status::Skipped,
                    None,
                    None,
                    None,
                    vec![],
                    None,
                    None,
                    Some(why.clone()),
                )
                .await;
        }
        self.ui.host_started(host);
        self.rec.emit(&Event::TargetStarted {
            time: started,
            phase,
            number,
            step: step.name.clone(),
            host: host.to_string(),
            command: shown.command.clone(),
        })?;
        let Some(conn) = self.conn(step, host) else {
            return self
                .finish(
                    phase,
                    number,
                    step,
                    host,
                    &shown,
                    started,
                    clock,
                    Status::Failed,
                    None,
                    None,
                    None,
                    vec![],
                    None,
                    None,
                    Some("no connection to this host".into()),
                )
                .await;
        };

        let mut exit_code = None;
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut upload_sha = None;
        if let Some(line) = &real.command {
            let stdin = match (&step.action, &real.upload, &real.stdin) {
                (_, Some(u), _) => Stdin::File(u.src.clone().into()),
                (_, None, Some(s)) => Stdin::Bytes(s.clone().into_bytes()),
                _ => Stdin::None,
            };
            if let Some(u) = &real.upload {
                match std::fs::read(&u.src) {
                    Ok(bytes) => upload_sha = Some(crate::record::sha256_hex(&bytes)),
                    Err(e) => {
                        let why = format!("cannot read upload source `{}`: {e}", u.src);
                        return self
                            .finish(
                                phase,
                                number,
                                step,
                                host,
                                &shown,
                                started,
                                clock,
                                Status::Failed,
                                None,
                                None,
                                None,
                                vec![],
                                None,
                                None,
                                Some(why),
                            )
                            .await;
                    }
                }
            }
            match self.exec(conn, line, stdin, host, step.timeout).await {
                Ok(o) => {
                    exit_code = o.exit_code;
                    out = o.stdout;
                    err = o.stderr;
                }
                Err(e) => {
                    let status = if e.contains("grace") {
                        Status::TimedOut
                    } else {
                        Status::Failed
                    };
                    return self
                        .finish(
                            phase,
                            number,
                            step,
                            host,
                            &shown,
                            started,
                            clock,
                            status,
                            None,
                            Some(&out),
                            Some(&err),
                            vec![],
                            None,
                            upload_sha,
                            Some(e),
                        )
                        .await;
                }
            }
            let timed_out = step.timeout.is_some() && matches!(exit_code, Some(124) | Some(137));
            if timed_out {
                let why = format!(
                    "timed out after {}: the command was killed on the host",
                    crate::duration::format(step.timeout.unwrap_or_default())
                );
                return self
                    .finish(
                        phase,
                        number,
                        step,
                        host,
                        &shown,
                        started,
                        clock,
                        Status::TimedOut,
                        exit_code,
                        Some(&out),
                        Some(&err),
                        vec![],
                        None,
                        upload_sha,
                        Some(why),
                    )
                    .await;
            }
            let mut problem = None;
            let code_ok = exit_code.is_some_and(|c| step.expect.exit.contains(&c));
            let stdout_text = String::from_utf8_lossy(&out).to_string();
            if !code_ok {
                let tail = first_line(if err.is_empty() { &out } else { &err });
                problem = Some(match exit_code {
                    Some(c) => format!(
                        "exit {c}{}",
                        if tail.is_empty() {
                            String::new()
                        } else {
                            format!(": {tail}")
                        }
                    ),
                    None => "killed by a signal".to_string(),
                });
            } else if let Some(re) = &step.expect.stdout {
                if !re.is_match(&stdout_text) {
                    problem = Some(format!("stdout does not match /{}/", re.as_str()));
                }
            }
            if problem.is_none() {
                if let Some(re) = &step.expect.stdout_not {
                    if re.is_match(&stdout_text) {
                        problem = Some(format!("stdout matches /{}/", re.as_str()));
                    }
                }
            }
            if problem.is_none() {
                if let (Some(sum), Some(_)) = (&upload_sha, &real.upload) {
                    if !stdout_text
                        .split_whitespace()
                        .next()
                        .is_some_and(|h| h == sum)
                    {
                        problem = Some(format!(
                            "sha256 on the host does not match the local file ({sum})"
                        ));
                    }
                }
            }
            if let Some(p) = problem {
                return self
                    .finish(
                        phase,
                        number,
                        step,
                        host,
                        &shown,
                        started,
                        clock,
                        Status::Failed,
                        exit_code,
                        Some(&out),
                        Some(&err),
                        vec![],
                        None,
                        upload_sha,
                        Some(p),
                    )
                    .await;
            }
        }

        let mut capture = None;
        if let (Some(c), Phase::Forward) = (&step.capture, phase) {
            let text = String::from_utf8_lossy(&out).trim().to_string();
            let value = match &c.regex {
                Some(re) => re.captures(&text).map(|m| {
                    m.get(1)
                        .or_else(|| m.get(0))
                        .map_or(String::new(), |g| g.as_str().to_string())
                }),
                None => Some(text),
            };
            let Some(value) = value else {
                let why = format!(
                    "capture `{}`: /{}/ does not match the output",
                    c.name,
                    c.regex.as_ref().map_or("", |r| r.as_str())
                );
                return self
                    .finish(
                        phase,
                        number,
                        step,
                        host,
                        &shown,
                        started,
                        clock,
                        Status::Failed,
                        exit_code,
                        Some(&out),
                        Some(&err),
                        vec![],
                        None,
                        upload_sha,
                        Some(why),
                    )
                    .await;
            };
            let mut caps = self.captures.lock().unwrap_or_else(|p| p.into_inner());
            if step.local {
                caps.global.insert(c.name.clone(), value.clone());
            } else {
                caps.hosts
                    .entry(host.to_string())
                    .or_default()
                    .insert(c.name.clone(), value.clone());
            }
            capture = Some((c.name.clone(), self.redactor.redact(&value)));
        }

        let mut checks = Vec::new();
        if step.check.is_some() {
            // The check reads captures of this very step: render it now.
            let check_line = match self.render(r, host_opt, Reveal::Real) {
                Ok(t) => t.check,
                Err(e) => {
                    return self
                        .finish(
                            phase,
                            number,
                            step,
                            host,
                            &shown,
                            started,
                            clock,
                            Status::Failed,
                            exit_code,
                            Some(&out),
                            Some(&err),
                            checks,
                            capture,
                            upload_sha,
                            Some(e),
                        )
                        .await;
                }
            };
            if let Some(line) = check_line {
                let mut passed = false;
                for attempt in 1..=step.retries + 1 {
                    let res = self
                        .exec(conn, &line, Stdin::None, host, step.timeout)
                        .await;
                    let (code, output) = match res {
                        Ok(o) => {
                            let mut text = o.stdout.clone();
                            text.extend_from_slice(&o.stderr);
                            (
                                o.exit_code,
                                escape_controls(&self.redactor.redact_bytes(&text)),
                            )
                        }
                        Err(e) => (None, e),
                    };
                    let ok = code == Some(0);
                    checks.push(CheckAttempt {
                        attempt,
                        exit_code: code,
                        ok,
                        output: output.chars().take(2000).collect(),
                    });
                    if ok {
                        passed = true;
                        break;
                    }
                    if attempt <= step.retries {
                        tokio::time::sleep(step.delay).await;
                    }
                }
                if !passed {
                    let why = format!("check failed after {} attempt(s)", checks.len());
                    return self
                        .finish(
                            phase,
                            number,
                            step,
                            host,
                            &shown,
                            started,
                            clock,
                            Status::Failed,
                            exit_code,
                            Some(&out),
                            Some(&err),
                            checks,
                            capture,
                            upload_sha,
                            Some(why),
                        )
                        .await;
                }
            }
        }
        self.finish(
            phase,
            number,
            step,
            host,
            &shown,
            started,
            clock,
            Status::Ok,
            exit_code,
            Some(&out),
            Some(&err),
            checks,
            capture,
            upload_sha,
            None,
        )
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn finish(
        &self,
        phase: Phase,
        number: usize,
        step: &Step,
        host: &str,
        shown: &Target,
        started: events::Time,
        clock: Instant,
        status: Status,
        exit_code: Option<i32>,
        out: Option<&[u8]>,
        err: Option<&[u8]>,
        checks: Vec<CheckAttempt>,
        capture: Option<(String, String)>,
        upload_sha256: Option<String>,
        reason: Option<String>,
    ) -> Result<Done, ExecError> {
        let took = clock.elapsed();
        let prefix = match phase {
            Phase::Forward => format!("{number:02}"),
            Phase::Rollback => format!("rb{number:02}"),
        };
        let stem = format!("{prefix}-{}-{}", slug(&step.name), slug(host));
        let stdout = match out {
            Some(o) => self
                .rec
                .save(&stem, "stdout", &self.redactor.redact_bytes(o))?,
            None => None,
        };
        let stderr = match err {
            Some(e) => self
                .rec
                .save(&stem, "stderr", &self.redactor.redact_bytes(e))?,
            None => None,
        };
        let reason = reason.map(|r| self.redactor.redact(&r));
        self.rec.emit(&Event::TargetFinished {
            time: events::now(),
            phase,
            number,
            step: step.name.clone(),
            host: host.to_string(),
            login: shown.login.clone(),
            status,
            started,
            millis: took.as_millis() as u64,
            exit_code,
            command: shown.command.clone(),
            stdin: shown.stdin.clone(),
            stdout,
            stderr,
            checks,
            capture,
            upload_sha256,
            reason: reason.clone(),
        })?;
        if let (Phase::Forward, Status::Ok) = (phase, status) {
            let mut done = self.completed.lock().unwrap_or_else(|p| p.into_inner());
            done.entry(number - 1).or_default().push(host.to_string());
        }
        let detail = reason.clone().unwrap_or_default();
        self.ui.host_finished(host, status, took, &detail);
        Ok(Done {
            host: host.to_string(),
            status,
            detail,
        })
    }

    /// Completed steps that have a rollback, last first.
    pub fn undoable(&self) -> Vec<Completed> {
        let done = self.completed.lock().unwrap_or_else(|p| p.into_inner());
        done.iter()
            .rev()
            .filter(|(i, _)| {
                self.planner
                    .runbook
                    .steps
                    .get(**i)
                    .is_some_and(|s| !s.rollback.is_empty())
            })
            .map(|(i, hosts)| Completed {
                step: *i,
                hosts: hosts.clone(),
            })
            .collect()
    }

    /// Undoes completed steps in reverse order, on the hosts where each completed.
    /// Returns the hosts/steps whose rollback failed.
    pub async fn rollback(&mut self) -> Result<Vec<(String, String)>, ExecError> {
        let mut failures = Vec::new();
        for c in self.undoable() {
            let r = StepRef::Forward(c.step);
            let step = self.step_def(r).clone();
            if step.rollback.is_empty() {
                continue;
            }
            self.ui
                .step(&format!("[undo {}]", c.step + 1), &step.name, c.hosts.len());
            let results = self
                .run_rollback_step(r, c.step + 1, &step, &c.hosts)
                .await?;
            for d in results
                .into_iter()
                .filter(|d| d.status != Status::Ok && d.status != Status::Skipped)
            {
                failures.push((step.name.clone(), d.host));
            }
        }
        Ok(failures)
    }

    async fn run_rollback_step(
        &self,
        r: StepRef,
        number: usize,
        step: &Step,
        hosts: &[String],
    ) -> Result<Vec<Done>, ExecError> {
        self.rec.emit(&Event::StepStarted {
            time: events::now(),
            phase: Phase::Rollback,
            number,
            step: step.name.clone(),
            hosts: hosts.to_vec(),
            // Undoing a stop is a start (and vice versa): the downtime report follows it.
            service: step.service.clone().map(|mut s| {
                s.state = match s.state {
                    crate::runbook::ServiceState::Stopped => crate::runbook::ServiceState::Started,
                    crate::runbook::ServiceState::Started => crate::runbook::ServiceState::Stopped,
                };
                s
            }),
        })?;
        let permits = Semaphore::new(self.forks.max(1));
        let futures = hosts.iter().map(|h| async {
            let _permit = permits.acquire().await;
            self.undo_target(r, number, step, h).await
        });
        let results: Vec<Done> = join_all(futures)
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        let failed: Vec<String> = results
            .iter()
            .filter(|d| d.status != Status::Ok)
            .map(|d| d.host.clone())
            .collect();
        self.rec.emit(&Event::StepFinished {
            time: events::now(),
            phase: Phase::Rollback,
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

    async fn undo_target(
        &self,
        r: StepRef,
        number: usize,
        step: &Step,
        host: &str,
    ) -> Result<Done, ExecError> {
        let started = events::now();
        let clock = Instant::now();
        let host_opt = (!step.local).then_some(host);
        let (real, shown) = match (
            self.render(r, host_opt, Reveal::Real),
            self.render(r, host_opt, Reveal::Masked),
        ) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => {
                return self
                    .finish(
                        Phase::Rollback,
                        number,
                        step,
                        host,
                        &Target::default(),
                        started,
                        clock,
                        Status::Failed,
                        None,
                        None,
                        None,
                        vec![],
                        None,
                        None,
                        Some(e),
                    )
                    .await;
            }
        };
        // A `run` step's rollback gets the step's stdin too: undoing a step that needed a
        // secret (reloading the previous license) needs it again, and argv is no place for it.
        let rb_stdin = |t: &Target| match &step.action {
            Action::Run(_) => t.stdin.clone(),
            _ => None,
        };
        let shown_rb = Target {
            command: Some(shown.rollback.join("\n")),
            stdin: rb_stdin(&shown),
            ..shown.clone()
        };
        let real_stdin = rb_stdin(&real);
        self.ui.host_started(host);
        let Some(conn) = self.conn(step, host) else {
            return self
                .finish(
                    Phase::Rollback,
                    number,
                    step,
                    host,
                    &shown_rb,
                    started,
                    clock,
                    Status::Failed,
                    None,
                    None,
                    None,
                    vec![],
                    None,
                    None,
                    Some("no connection to this host".into()),
                )
                .await;
        };
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut code = Some(0);
        for line in &real.rollback {
            let stdin = match &real_stdin {
                Some(s) => Stdin::Bytes(s.clone().into_bytes()),
                None => Stdin::None,
            };
            match self.exec(conn, line, stdin, host, step.timeout).await {
                Ok(o) => {
                    out.extend_from_slice(&o.stdout);
                    err.extend_from_slice(&o.stderr);
                    code = o.exit_code;
                    if code != Some(0) {
                        break;
                    }
                }
                Err(e) => {
                    return self
                        .finish(
                            Phase::Rollback,
                            number,
                            step,
                            host,
                            &shown_rb,
                            started,
                            clock,
                            Status::Failed,
                            None,
                            Some(&out),
                            Some(&err),
                            vec![],
                            None,
                            None,
                            Some(e),
                        )
                        .await;
                }
            }
        }
        let (status, reason) = if code == Some(0) {
            (Status::Ok, None)
        } else {
            (
                Status::Failed,
                Some(format!(
                    "rollback exit {}: {}",
                    code.map_or("signal".into(), |c| c.to_string()),
                    first_line(&err)
                )),
            )
        };
        self.finish(
            Phase::Rollback,
            number,
            step,
            host,
            &shown_rb,
            started,
            clock,
            status,
            code,
            Some(&out),
            Some(&err),
            vec![],
            None,
            None,
            reason,
        )
        .await
    }
}
