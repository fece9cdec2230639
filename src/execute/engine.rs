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
use crate::load::runbook::{Action, OnFailure, Step};
use crate::plan::{Captures, Completion, Planner, Reveal, StepRef, Target};
use crate::record::events::{self, CheckAttempt, Event, Outcome as RunOutcome, Phase, Status};
use crate::record::rundir::{slug, RecordError, Recorder};
use crate::sanitize::{escape_controls, Redactor};
use crate::transport::{Command, Connection, Stdin};
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
    /// A host outside the serial set (a load balancer) may appear once per batch.
    pub completed: Mutex<BTreeMap<usize, Vec<Completion>>>,
    pub interrupt: &'a Interrupt,
    /// The forward step that stopped the run, whose `on_failure` decides what follows.
    pub failed_step: Mutex<Option<usize>>,
}

/// What one host did in one step.
struct Done {
    host: String,
    status: Status,
    detail: String,
    /// The saved output the detail was quoted from: where the operator reads the rest.
    output: Option<std::path::PathBuf>,
}

/// Words of a line that says what went wrong (`tar (child): x: Cannot open: No such
/// file or directory`), as opposed to the summary a program prints after it.
const ERROR_WORDS: &[&str] = &[
    "error",
    "fail",
    "fatal",
    "cannot",
    "can't",
    "could not",
    "couldn't",
    "unable",
    "not found",
    "no such",
    "denied",
    "not permitted",
    "refused",
    "invalid",
    "exception",
    "severe",
    "panic",
    "timed out",
];

/// The lines to quote for a failed command: the first that looks like an error
/// (the cause: `tar (child): ...: Cannot open`), then the last line when it is
/// another one (often the summary: "exiting now", "no healthy answer after 3
/// tries"); the last line alone when none looks like an error.
fn error_line(b: &[u8]) -> String {
    let s = escape_controls(b);
    let lines: Vec<&str> = s.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let cut = |l: &str| -> String { l.chars().take(160).collect() };
    let first = lines.iter().find(|l| {
        let l = l.to_lowercase();
        ERROR_WORDS.iter().any(|w| l.contains(w))
    });
    match (first, lines.last()) {
        (Some(f), Some(l)) if f != l => format!("{} … {}", cut(f), cut(l)),
        (Some(f), _) => cut(f),
        (None, Some(l)) => cut(l),
        (None, None) => String::new(),
    }
}

impl Engine<'_> {
    fn step_def(&self, r: StepRef) -> &Step {
        match r {
            StepRef::Forward(i) => &self.planner.runbook.steps[i],
            StepRef::Guide(i) => &self.planner.runbook.rollback[i],
        }
    }

    fn gate_event(
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
    fn confirm_in(
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

    fn conn(&self, step: &Step, host: &str) -> Option<&Connection> {
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
                self.planner.batch_hosts(r, batch)
            };
            if hosts.is_empty() && !matches!(step.action, Action::Manual(_)) {
                // A step with no host at all (an optional group the inventory lacks)
                // is said so in the record; one whose hosts are all in other batches
                // simply has nothing to do in this one.
                if self.planner.step_hosts(r).is_empty() {
                    self.no_hosts(r, i + 1, &step, &label_of(r))?;
                }
                continue;
            }
            self.ui.step(&label_of(r), &step.name, hosts.len());
            if let Some(q) = self
                .planner
                .confirm_prompt(r)
                .map_err(|e| ExecError::Render(e.to_string()))?
            {
                let q = format!("{q} {}", self.planner.gate_hosts(&step, &hosts, batch));
                if !self.confirm_in(Some(&step.name), batch, &q)? {
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
                .run_step(
                    // The rollback guide's steps are recorded as rollback, never as
                    // forward steps that a resume or a rollback would count as done.
                    match r {
                        StepRef::Forward(_) => Phase::Forward,
                        StepRef::Guide(_) => Phase::Rollback,
                    },
                    r,
                    i + 1,
                    &step,
                    &hosts,
                    batch,
                )
                .await?;
            let failed: Vec<&Done> = results
                .iter()
                .filter(|d| matches!(d.status, Status::Failed | Status::TimedOut))
                .collect();
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
    async fn on_hosts<'h, F, Fut>(
        &self,
        phase: Phase,
        number: usize,
        step: &Step,
        hosts: &'h [String],
        service: Option<crate::load::runbook::Service>,
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

    /// Records a step that has no host to run on, so the log shows it was not forgotten.
    fn no_hosts(
        &self,
        r: StepRef,
        number: usize,
        step: &Step,
        label: &str,
    ) -> Result<(), ExecError> {
        let on = step
            .on
            .as_ref()
            .or(self.planner.runbook.hosts.as_ref())
            .map_or(String::new(), |p| p.src.clone());
        let phase = match r {
            StepRef::Forward(_) => Phase::Forward,
            StepRef::Guide(_) => Phase::Rollback,
        };
        self.ui.line(&format!(
            "{label} {}: no hosts (`{on}` matches none{})",
            step.name,
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

    async fn run_step(
        &self,
        phase: Phase,
        r: StepRef,
        number: usize,
        step: &Step,
        hosts: &[String],
        batch: Option<usize>,
    ) -> Result<Vec<Done>, ExecError> {
        self.on_hosts(phase, number, step, hosts, step.service.clone(), |h| {
            self.run_target(phase, r, number, step, h, batch)
        })
        .await
    }

    fn render(
        &self,
        r: StepRef,
        host: Option<&str>,
        reveal: Reveal,
        batch: Option<usize>,
    ) -> Result<Target, String> {
        let mut caps = self
            .captures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if reveal == Reveal::Masked {
            // A host may print a secret into a captured value: the recorded command
            // must not carry it back in.
            let values = caps
                .global
                .values_mut()
                .chain(caps.hosts.values_mut().flat_map(|m| m.values_mut()));
            for v in values {
                *v = self.redactor.redact(v);
            }
        }
        let mut target = self
            .planner
            .render(r, host, Some(&caps), reveal, batch)
            .map_err(|e| self.redactor.redact(&e.to_string()))?;
        if reveal == Reveal::Masked {
            // Belt and braces: a filter (`upper`, `replace`) could still have carried a secret through.
            for text in [&mut target.command, &mut target.stdin, &mut target.check]
                .into_iter()
                .flatten()
            {
                *text = self.redactor.redact(text);
            }
            for text in &mut target.rollback {
                *text = self.redactor.redact(text);
            }
        }
        Ok(target)
    }

    /// The command to send (secrets in) and the command to record (secrets masked).
    fn render_pair(
        &self,
        r: StepRef,
        host: Option<&str>,
        batch: Option<usize>,
    ) -> Result<(Target, Target), String> {
        Ok((
            self.render(r, host, Reveal::Real, batch)?,
            self.render(r, host, Reveal::Masked, batch)?,
        ))
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
                Some(t) => match tokio::time::timeout(t.saturating_add(TIMEOUT_GRACE), fut).await {
                    Ok(r) => r.map_err(|e| e.to_string()),
                    Err(_) => Err(format!(
                        "no answer within {} (timeout + grace)",
                        crate::duration::format(t.saturating_add(TIMEOUT_GRACE))
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

    /// One step on one host: action, expectations, capture, check; recorded once.
    async fn run_target(
        &self,
        phase: Phase,
        r: StepRef,
        number: usize,
        step: &Step,
        host: &str,
        batch: Option<usize>,
    ) -> Result<Done, ExecError> {
        let mut rec = Record::new(phase, number, step, host, batch);
        let verdict = self.attempt(r, &mut rec).await?;
        self.finish(rec, verdict).await
    }

    async fn attempt(&self, r: StepRef, rec: &mut Record<'_>) -> Result<Verdict, ExecError> {
        let (step, host) = (rec.step, rec.host);
        let host_opt = (!step.local).then_some(host);
        let (real, shown) = match self.render_pair(r, host_opt, rec.batch) {
            Ok(pair) => pair,
            Err(e) => return Ok(Verdict::Failed(e)),
        };
        rec.shown = Target {
            stdin: with_env_lines(&shown, shown.stdin.as_deref()),
            ..shown
        };
        if let Some(why) = &real.skipped {
            return Ok(Verdict::Skipped(why.clone()));
        }
        self.ui.host_started(host);
        self.rec.emit(&Event::TargetStarted {
            time: rec.started,
            phase: rec.phase,
            number: rec.number,
            step: step.name.clone(),
            host: host.to_string(),
            command: rec.shown.command.clone(),
        })?;
        let Some(conn) = self.conn(step, host) else {
            return Ok(Verdict::Failed("no connection to this host".into()));
        };

        if let Some(line) = &real.command {
            let stdin = match (&real.upload, with_env_lines(&real, real.stdin.as_deref())) {
                // A templated upload sends the text rendered for this host.
                (Some(u), _) => match &u.content {
                    Some(text) => Stdin::Bytes(text.clone().into_bytes()),
                    None => Stdin::File(u.src.clone().into()),
                },
                (None, Some(s)) => Stdin::Bytes(s.into_bytes()),
                _ => Stdin::None,
            };
            if let Some(u) = &real.upload {
                // Hashed while rendering; the host checks the copy against it.
                match &u.sha256 {
                    Some(sum) => rec.upload_sha256 = Some(sum.clone()),
                    None => {
                        return Ok(Verdict::Failed(format!(
                            "cannot read upload source `{}`",
                            u.src
                        )))
                    }
                }
            }
            match self.exec(conn, line, stdin, host, step.timeout).await {
                Ok(o) => {
                    rec.exit_code = o.exit_code;
                    rec.out = o.stdout;
                    rec.err = o.stderr;
                }
                Err(e) if e.contains("grace") => return Ok(Verdict::TimedOut(e)),
                Err(e) => return Ok(Verdict::Failed(e)),
            }
            if step.timeout.is_some() && matches!(rec.exit_code, Some(124) | Some(137)) {
                return Ok(Verdict::TimedOut(format!(
                    "timed out after {}: the command was killed on the host",
                    crate::duration::format(step.timeout.unwrap_or_default())
                )));
            }
            if let Some(problem) = unexpected(step, rec, &real) {
                return Ok(Verdict::Failed(problem));
            }
        }

        if let (Some(c), Phase::Forward) = (&step.capture, rec.phase) {
            let text = String::from_utf8_lossy(&rec.out).trim().to_string();
            let value = match &c.regex {
                Some(re) => re.captures(&text).map(|m| {
                    m.get(1)
                        .or_else(|| m.get(0))
                        .map_or(String::new(), |g| g.as_str().to_string())
                }),
                None => Some(text),
            };
            let Some(value) = value else {
                return Ok(Verdict::Failed(format!(
                    "capture `{}`: /{}/ does not match the output",
                    c.name,
                    c.regex.as_ref().map_or("", |r| r.as_str())
                )));
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
            rec.capture = Some((c.name.clone(), self.redactor.redact(&value)));
        }

        if step.check.is_some() {
            // The check may read this very step's capture: render it now.
            let line = match self.render(r, host_opt, Reveal::Real, rec.batch) {
                Ok(t) => t.check,
                Err(e) => return Ok(Verdict::Failed(e)),
            };
            if let Some(line) = line {
                for attempt in 1..=step.retries + 1 {
                    let (code, output) = match self
                        .exec(conn, &line, env_stdin(&real), host, step.timeout)
                        .await
                    {
                        Ok(o) => {
                            let mut text = o.stdout;
                            text.extend_from_slice(&o.stderr);
                            (
                                o.exit_code,
                                escape_controls(&self.redactor.redact_bytes(&text)),
                            )
                        }
                        Err(e) => (None, e),
                    };
                    let ok = code == Some(0);
                    rec.checks.push(CheckAttempt {
                        attempt,
                        exit_code: code,
                        ok,
                        output: output.chars().take(2000).collect(),
                    });
                    if ok {
                        return Ok(Verdict::Ok);
                    }
                    if attempt <= step.retries {
                        tokio::time::sleep(step.delay).await;
                    }
                }
                return Ok(Verdict::Failed(format!(
                    "check failed after {}",
                    crate::plural::count(rec.checks.len(), "attempt", "attempts")
                )));
            }
        }
        Ok(Verdict::Ok)
    }

    /// Saves the outputs, records the result, updates the view and what a rollback would undo.
    async fn finish(&self, rec: Record<'_>, verdict: Verdict) -> Result<Done, ExecError> {
        let took = rec.clock.elapsed();
        let (status, reason) = match verdict {
            Verdict::Ok => (Status::Ok, None),
            Verdict::Skipped(why) => (Status::Skipped, Some(why)),
            Verdict::Failed(why) => (Status::Failed, Some(why)),
            Verdict::TimedOut(why) => (Status::TimedOut, Some(why)),
        };
        let prefix = match rec.phase {
            Phase::Forward => format!("{:02}", rec.number),
            Phase::Rollback => format!("rb{:02}", rec.number),
        };
        let stem = match rec.shown.batch {
            Some(b) => format!("{prefix}-{}-{}-b{b}", slug(&rec.step.name), slug(rec.host)),
            None => format!("{prefix}-{}-{}", slug(&rec.step.name), slug(rec.host)),
        };
        let stdout = self
            .rec
            .save(&stem, "stdout", &self.redactor.redact_bytes(&rec.out))?;
        let stderr = self
            .rec
            .save(&stem, "stderr", &self.redactor.redact_bytes(&rec.err))?;
        let reason = reason.map(|r| self.redactor.redact(&r));
        // A failure quotes stderr when there is any, else stdout (see `unexpected`).
        let output = stderr
            .as_ref()
            .or(stdout.as_ref())
            .map(|saved| self.rec.dir().join(&saved.file));
        self.rec.emit(&Event::TargetFinished {
            time: events::now(),
            phase: rec.phase,
            number: rec.number,
            step: rec.step.name.clone(),
            host: rec.host.to_string(),
            login: rec.shown.login.clone(),
            status,
            started: rec.started,
            millis: took.as_millis() as u64,
            exit_code: rec.exit_code,
            command: rec.shown.command.clone(),
            stdin: rec.shown.stdin.clone(),
            stdout,
            stderr,
            checks: rec.checks,
            capture: rec.capture,
            upload_sha256: rec.upload_sha256,
            reason: reason.clone(),
            batch: rec.shown.batch,
        })?;
        if let (Phase::Forward, Status::Ok) = (rec.phase, status) {
            let mut done = self.completed.lock().unwrap_or_else(|p| p.into_inner());
            done.entry(rec.number - 1).or_default().push(Completion {
                host: rec.host.to_string(),
                batch: rec.shown.batch,
            });
        }
        let detail = reason.unwrap_or_default();
        self.ui.host_finished(rec.host, status, took, &detail);
        Ok(Done {
            host: rec.host.to_string(),
            status,
            detail,
            output,
        })
    }

    /// Completed steps that have a rollback, last first.
    pub fn undoable(&self) -> Vec<Completed> {
        let done = self.completed.lock().unwrap_or_else(|p| p.into_inner());
        undoable(self.planner, &done)
    }

    /// Undoes completed steps in reverse order, on the hosts where each completed;
    /// a failed undo does not stop the others.
    pub async fn rollback(&mut self) -> Result<Undone, ExecError> {
        let mut undone = Undone::default();
        for c in self.undoable() {
            let r = StepRef::Forward(c.step);
            let step = self.step_def(r).clone();
            for round in undo_rounds(&c.hosts) {
                let failures = self.undo_round(r, c.step, &step, &round).await?;
                for h in &round {
                    if !failures.iter().any(|(_, f)| *f == h.host) {
                        undone.ok.push((step.name.clone(), h.clone()));
                    }
                }
                undone.failed.extend(failures);
            }
        }
        Ok(undone)
    }

    /// Undoes one step on hosts that each completed it once (in one batch).
    async fn undo_round(
        &self,
        r: StepRef,
        index: usize,
        step: &Step,
        round: &[Completion],
    ) -> Result<Vec<(String, String)>, ExecError> {
        let mut failures = Vec::new();
        let hosts: Vec<String> = round.iter().map(|c| c.host.clone()).collect();
        let batch_of = |h: &str| round.iter().find(|c| c.host == h).and_then(|c| c.batch);
        let label = match round.iter().find_map(|c| c.batch) {
            Some(b) => format!("[undo {} batch {b}]", index + 1),
            None => format!("[undo {}]", index + 1),
        };
        self.ui.step(&label, &step.name, hosts.len());
        // Undoing a stop is a start (and vice versa): the downtime report follows it.
        let service = step.service.clone().map(|mut s| {
            s.state = match s.state {
                crate::load::runbook::ServiceState::Stopped => {
                    crate::load::runbook::ServiceState::Started
                }
                crate::load::runbook::ServiceState::Started => {
                    crate::load::runbook::ServiceState::Stopped
                }
            };
            s
        });
        let results = self
            .on_hosts(Phase::Rollback, index + 1, step, &hosts, service, |h| {
                self.undo_target(r, index + 1, step, h, batch_of(h))
            })
            .await?;
        for d in results
            .into_iter()
            .filter(|d| d.status != Status::Ok && d.status != Status::Skipped)
        {
            self.ui.error(&format!(
                "ROLLBACK FAILED: `{}` on {}: {}",
                step.name, d.host, d.detail
            ));
            failures.push((step.name.clone(), d.host));
        }
        Ok(failures)
    }

    async fn undo_target(
        &self,
        r: StepRef,
        number: usize,
        step: &Step,
        host: &str,
        batch: Option<usize>,
    ) -> Result<Done, ExecError> {
        let mut rec = Record::new(Phase::Rollback, number, step, host, batch);
        let verdict = self.undo(r, &mut rec).await?;
        self.finish(rec, verdict).await
    }

    async fn undo(&self, r: StepRef, rec: &mut Record<'_>) -> Result<Verdict, ExecError> {
        let (step, host) = (rec.step, rec.host);
        let (real, shown) = match self.render_pair(r, (!step.local).then_some(host), rec.batch) {
            Ok(pair) => pair,
            Err(e) => return Ok(Verdict::Failed(e)),
        };
        // A `run` step's rollback gets the step's stdin too: undoing a step that needed a
        // secret (reloading the previous license) needs it again, and argv is no place for it.
        let stdin_of = |t: &Target| match &step.action {
            Action::Run(_) => with_env_lines(t, t.stdin.as_deref()),
            _ => with_env_lines(t, None),
        };
        rec.shown = Target {
            command: Some(shown.rollback.join("\n")),
            stdin: stdin_of(&shown),
            ..shown.clone()
        };
        let stdin = stdin_of(&real);
        self.ui.host_started(host);
        let Some(conn) = self.conn(step, host) else {
            return Ok(Verdict::Failed("no connection to this host".into()));
        };
        rec.exit_code = Some(0);
        for line in &real.rollback {
            let input = stdin
                .as_ref()
                .map_or(Stdin::None, |s| Stdin::Bytes(s.clone().into_bytes()));
            match self.exec(conn, line, input, host, step.timeout).await {
                Ok(o) => {
                    rec.out.extend_from_slice(&o.stdout);
                    rec.err.extend_from_slice(&o.stderr);
                    rec.exit_code = o.exit_code;
                    if o.exit_code != Some(0) {
                        return Ok(Verdict::Failed(format!(
                            "rollback exit {}: {}",
                            o.exit_code.map_or("signal".into(), |c| c.to_string()),
                            error_line(&rec.err)
                        )));
                    }
                }
                Err(e) => return Ok(Verdict::Failed(e)),
            }
        }
        Ok(Verdict::Ok)
    }
}

/// What a rollback did: the (step, host) pairs undone, in the order they were,
/// and the (step, host) pairs whose undo failed.
#[derive(Debug, Default)]
pub struct Undone {
    pub ok: Vec<(String, Completion)>,
    pub failed: Vec<(String, String)>,
}

impl Undone {
    /// What was undone, per host in inventory order: `oa1 (`Stop`, `Back up`); lb1
    /// (`Drain` of batch 1)`. Hosts that had the same steps undone share one entry,
    /// so a large estate stays one line.
    pub fn summary(&self, planner: &Planner) -> String {
        let mut per_host: Vec<(&str, Vec<String>)> = Vec::new();
        for (step, c) in &self.ok {
            let what = match c.batch {
                Some(b) => format!("`{step}` of batch {b}"),
                None => format!("`{step}`"),
            };
            match per_host.iter_mut().find(|(h, _)| *h == c.host) {
                Some((_, steps)) => steps.push(what),
                None => per_host.push((&c.host, vec![what])),
            }
        }
        // Hosts finish in any order: the message must not depend on it.
        let order: Vec<&str> = planner
            .run_hosts()
            .iter()
            .map(|h| h.name.as_str())
            .collect();
        per_host.sort_by_key(|(h, _)| order.iter().position(|o| o == h).unwrap_or(usize::MAX));
        let mut groups: Vec<(Vec<&str>, Vec<String>)> = Vec::new();
        for (host, steps) in per_host {
            match groups.iter_mut().find(|(_, s)| *s == steps) {
                Some((hosts, _)) => hosts.push(host),
                None => groups.push((vec![host], steps)),
            }
        }
        groups
            .iter()
            .map(|(hosts, steps)| format!("{} ({})", hosts.join(", "), steps.join(", ")))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Completed steps that have a rollback, last first: what an undo would run.
pub fn undoable(planner: &Planner, done: &BTreeMap<usize, Vec<Completion>>) -> Vec<Completed> {
    done.iter()
        .rev()
        .filter(|(i, _)| {
            planner
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

/// Splits a step's completions into rounds to undo one after the other: a host
/// that completed the step in several batches (a load balancer, drained once
/// per batch) is undone once per round, latest batch first; every other host
/// is undone in the first round, all in parallel as before.
pub fn undo_rounds(done: &[Completion]) -> Vec<Vec<Completion>> {
    let mut rounds: Vec<Vec<Completion>> = Vec::new();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for c in done.iter().rev() {
        let k = seen.entry(c.host.as_str()).or_insert(0);
        if rounds.len() <= *k {
            rounds.push(Vec::new());
        }
        rounds[*k].push(c.clone());
        *k += 1;
    }
    // Within a round, hosts in the order they completed.
    for r in &mut rounds {
        r.reverse();
    }
    rounds
}

/// Stdin for a command of the step: the secret env lines first, then `rest`.
fn with_env_lines(t: &Target, rest: Option<&str>) -> Option<String> {
    match (&t.env_stdin, rest) {
        (None, rest) => rest.map(str::to_string),
        (Some(lines), rest) => Some(format!("{lines}{}", rest.unwrap_or_default())),
    }
}

fn env_stdin(t: &Target) -> Stdin {
    t.env_stdin
        .as_ref()
        .map_or(Stdin::None, |l| Stdin::Bytes(l.clone().into_bytes()))
}

/// How one host's part of a step ended.
enum Verdict {
    Ok,
    Skipped(String),
    Failed(String),
    TimedOut(String),
}

/// What one host did in one step, gathered as it happens and recorded once.
struct Record<'s> {
    phase: Phase,
    number: usize,
    step: &'s Step,
    host: &'s str,
    /// The batch the step runs (or is undone) for.
    batch: Option<usize>,
    shown: Target,
    started: events::Time,
    clock: Instant,
    exit_code: Option<i32>,
    out: Vec<u8>,
    err: Vec<u8>,
    checks: Vec<CheckAttempt>,
    capture: Option<(String, String)>,
    upload_sha256: Option<String>,
}

impl<'s> Record<'s> {
    fn new(
        phase: Phase,
        number: usize,
        step: &'s Step,
        host: &'s str,
        batch: Option<usize>,
    ) -> Record<'s> {
        Record {
            phase,
            number,
            step,
            host,
            batch,
            shown: Target::default(),
            started: events::now(),
            clock: Instant::now(),
            exit_code: None,
            out: Vec::new(),
            err: Vec::new(),
            checks: Vec::new(),
            capture: None,
            upload_sha256: None,
        }
    }
}

/// Why a finished command does not count as success: exit code, expected
/// output, or an upload whose checksum on the host differs.
fn unexpected(step: &Step, rec: &Record<'_>, real: &Target) -> Option<String> {
    let upload = real.upload.is_some();
    if !rec.exit_code.is_some_and(|c| step.expect.exit.contains(&c)) {
        let tail = error_line(if rec.err.is_empty() {
            &rec.out
        } else {
            &rec.err
        });
        return Some(match rec.exit_code {
            Some(c) if tail.is_empty() => format!("exit {c}"),
            Some(c) => format!("exit {c}: {tail}"),
            None => "killed by a signal".to_string(),
        });
    }
    let stdout = String::from_utf8_lossy(&rec.out);
    // The patterns were rendered for this host (and checked when rendered);
    // messages show them as recorded, secrets masked.
    let expectations = [
        (&real.expect_stdout, &rec.shown.expect_stdout, true),
        (&real.expect_stdout_not, &rec.shown.expect_stdout_not, false),
    ];
    for (pattern, shown, must_match) in expectations {
        let Some(pattern) = pattern else { continue };
        let shown = shown.as_deref().unwrap_or_default();
        let re = match regex::Regex::new(pattern) {
            Ok(re) => re,
            Err(_) => return Some(format!("invalid regular expression /{shown}/")),
        };
        match (must_match, re.is_match(&stdout)) {
            (true, false) => return Some(format!("stdout does not match /{shown}/")),
            (false, true) => return Some(format!("stdout matches /{shown}/")),
            _ => {}
        }
    }
    if let (true, Some(sum)) = (upload, &rec.upload_sha256) {
        if stdout.split_whitespace().next() != Some(sum.as_str()) {
            return Some(format!(
                "sha256 on the host does not match the local file ({sum})"
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(host: &str, batch: Option<usize>) -> Completion {
        Completion {
            host: host.into(),
            batch,
        }
    }

    #[test]
    fn a_host_in_every_batch_is_undone_once_per_batch_latest_first() {
        let done = [c("lb1", Some(1)), c("lb2", Some(1)), c("lb1", Some(2))];
        assert_eq!(
            undo_rounds(&done),
            [
                vec![c("lb2", Some(1)), c("lb1", Some(2))],
                vec![c("lb1", Some(1))]
            ]
        );
        // Hosts that completed once are all undone together, as before batches mattered.
        let done = [c("oa1", None), c("oa2", None)];
        assert_eq!(undo_rounds(&done), [done.to_vec()]);
    }
}
