//! One host's attempt at one step: render the command (real and masked), run
//! it with its timeout and retries, check `expect`, save the output, and turn
//! the result into a [`Done`] for the step loop.

use super::engine::*;
use super::failure::Failure;
use super::outputs::{cut_reason, recorded_stdin};
use crate::plan::{Completion, PlanStep, Reveal, StepRef, Target};
use crate::record::events::Saved;
use crate::record::events::{self, CheckAttempt, Event, Phase, Status};
use crate::record::output::OutputWriter;
use crate::sanitize::{escape_controls, Redactor};
use crate::transport::Stdin;
use std::time::Instant;

/// Words of a line that says what went wrong (`tar (child): x: Cannot open: No such
/// file or directory`), as opposed to the summary a program prints after it.
pub(super) const ERROR_WORDS: &[&str] = &[
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
///
/// Masked before it is cut: a secret crossing the cut would otherwise leave its
/// first characters in the failure line, the journal and the log.
pub(super) fn error_line(b: &[u8], redactor: &Redactor) -> String {
    let s = escape_controls(&redactor.redact_bytes(b));
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

/// Why a templated upload that reads a secret has no sha256 on record.
const SUM_WITHHELD: &str = "the file was rendered with a secret, and its sha256 would let anyone holding the template test guesses of the secret offline; the host checked the copy against it";

/// Stdin for a command of the step: the secret env lines first, then `rest`.
pub(super) fn with_env_lines(t: &Target, rest: Option<&str>) -> Option<String> {
    match (&t.env_stdin, rest) {
        (None, rest) => rest.map(str::to_string),
        (Some(lines), rest) => Some(format!("{lines}{}", rest.unwrap_or_default())),
    }
}

pub(super) fn env_stdin(t: &Target) -> Stdin {
    t.env_stdin
        .as_ref()
        .map_or(Stdin::None, |l| Stdin::Bytes(l.clone().into_bytes()))
}

/// How one host's part of a step ended.
pub(super) enum Verdict {
    Ok,
    /// The plan skips this host (`when:`); the reason as the plan says it.
    Skipped(String),
    /// Failed, or timed out when the failure is the step's timeout.
    Failed(Failure),
}

/// What one host did in one step, gathered as it happens and recorded once.
pub(super) struct Record<'s> {
    pub(super) phase: Phase,
    pub(super) number: usize,
    pub(super) step: &'s PlanStep,
    pub(super) host: &'s str,
    /// The batch the step runs (or is undone) for.
    pub(super) batch: Option<usize>,
    pub(super) shown: Target,
    pub(super) started: events::Time,
    pub(super) clock: Instant,
    pub(super) exit_code: Option<i32>,
    pub(super) out: Vec<u8>,
    pub(super) err: Vec<u8>,
    pub(super) checks: Vec<CheckAttempt>,
    pub(super) capture: Option<(String, String)>,
    /// The command's stdout and stderr as streamed to `outputs/` (`None`: not
    /// streamed, `finish` saves `out`/`err`).
    pub(super) saved: Option<[Option<Saved>; 2]>,
    upload_sha256: Option<String>,
    upload_sha256_withheld: Option<String>,
}

impl<'s> Record<'s> {
    pub(super) fn new(
        phase: Phase,
        number: usize,
        step: &'s PlanStep,
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
            saved: None,
            upload_sha256: None,
            upload_sha256_withheld: None,
        }
    }
}

/// Why a finished command does not count as success: exit code, expected
/// output, or an upload whose checksum on the host differs.
pub(super) fn unexpected(
    step: &PlanStep,
    rec: &Record<'_>,
    real: &Target,
    redactor: &Redactor,
) -> Option<Failure> {
    let upload = real.upload.is_some();
    if !rec.exit_code.is_some_and(|c| step.expect.exit.contains(&c)) {
        let quote = error_line(
            if rec.err.is_empty() {
                &rec.out
            } else {
                &rec.err
            },
            redactor,
        );
        return Some(Failure::UnexpectedExit {
            code: rec.exit_code,
            quote,
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
        let shown = shown.clone().unwrap_or_default();
        let re = match regex::Regex::new(pattern) {
            Ok(re) => re,
            Err(_) => return Some(Failure::InvalidPattern { shown }),
        };
        match (must_match, re.is_match(&stdout)) {
            (true, false) => return Some(Failure::OutputMissing { shown }),
            (false, true) => return Some(Failure::OutputForbidden { shown }),
            _ => {}
        }
    }
    if let (true, Some(sum)) = (upload, &rec.upload_sha256) {
        if stdout.split_whitespace().next() != Some(sum.as_str()) {
            return Some(Failure::ChecksumMismatch {
                sha256: sum.clone(),
            });
        }
    }
    None
}

impl Engine<'_> {
    pub(super) fn render(
        &self,
        r: StepRef,
        host: Option<&str>,
        reveal: Reveal,
        batch: Option<usize>,
    ) -> Result<Target, Failure> {
        let caps = self.captures_as(reveal);
        let mut target = self
            .planner
            .render(r, host, Some(&caps), reveal, batch)
            .map_err(Failure::Render)?;
        if reveal == Reveal::Masked {
            // Belt and braces: a filter (`upper`, `replace`) could still have carried a secret through.
            // The values read from stdin too: a capture turned back into the
            // secret (`{{ printed | lower }}`) renders as itself even masked.
            let texts = [
                &mut target.command,
                &mut target.stdin,
                &mut target.check,
                &mut target.env_stdin,
            ];
            for text in texts.into_iter().flatten() {
                *text = self.redactor.redact(text);
            }
            for text in &mut target.rollback {
                *text = self.redactor.redact(text);
            }
        }
        Ok(target)
    }

    /// The values captured so far, as a text rendered with them may show them.
    pub(super) fn captures_as(&self, reveal: Reveal) -> crate::plan::Captures {
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
        caps
    }

    /// The command to send (secrets in) and the command to record (secrets masked).
    pub(super) fn render_pair(
        &self,
        r: StepRef,
        host: Option<&str>,
        batch: Option<usize>,
    ) -> Result<(Target, Target), Failure> {
        Ok((
            self.render(r, host, Reveal::Real, batch)?,
            self.render(r, host, Reveal::Masked, batch)?,
        ))
    }

    /// One step on one host: action, expectations, capture, check; recorded once.
    pub(super) async fn run_target(
        &self,
        phase: Phase,
        r: StepRef,
        number: usize,
        step: &PlanStep,
        host: &str,
        batch: Option<usize>,
    ) -> Result<Done, ExecError> {
        if self.stopping() {
            // Queued behind --forks when the run was stopped: it never started,
            // so nothing is recorded that a rollback or a resume would misread.
            return Ok(Done {
                host: host.to_string(),
                status: Status::Skipped,
                detail: format!("not started: {}", self.stop_reason()),
                output: None,
            });
        }
        let mut rec = Record::new(phase, number, step, host, batch);
        let verdict = self.attempt(r, &mut rec).await?;
        self.finish(rec, verdict).await
    }

    pub(super) async fn attempt(
        &self,
        r: StepRef,
        rec: &mut Record<'_>,
    ) -> Result<Verdict, ExecError> {
        let (step, host) = (rec.step, rec.host);
        let host_opt = (!step.local).then_some(host);
        let (real, shown) = match self.render_pair(r, host_opt, rec.batch) {
            Ok(pair) => pair,
            Err(e) => return Ok(Verdict::Failed(e)),
        };
        rec.shown = Target {
            stdin: recorded_stdin(with_env_lines(&shown, shown.stdin.as_deref())),
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
            batch: rec.shown.batch,
        })?;
        let Some(conn) = self.conn(step, host) else {
            return Ok(Verdict::Failed(Failure::NoConnection));
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
                    // The host's `sha256sum -c` is the check; the sum stays off the record.
                    Some(_) if u.sum_withheld => {
                        rec.upload_sha256_withheld = Some(SUM_WITHHELD.to_string())
                    }
                    Some(sum) => rec.upload_sha256 = Some(sum.clone()),
                    None => {
                        return Ok(Verdict::Failed(Failure::UploadUnreadable {
                            src: u.src.clone(),
                        }))
                    }
                }
            }
            let stem = self.stem(rec);
            let mut files = [
                self.rec.output(&stem, "stdout", &self.redactor),
                self.rec.output(&stem, "stderr", &self.redactor),
            ];
            let result = self
                .exec_to(conn, line, stdin, host, step.timeout, Some(&mut files))
                .await;
            let cut = files.iter().any(OutputWriter::is_cut);
            let [out, err] = files;
            rec.saved = Some([out.finish(), err.finish()]);
            match result {
                Ok(o) => {
                    rec.exit_code = o.exit_code;
                    rec.out = o.stdout;
                    rec.err = o.stderr;
                }
                Err(e) => return Ok(Verdict::Failed(e)),
            }
            if cut {
                // What the command did is recorded as it was (its exit code, and a
                // success stays a success: a rollback must undo it); the run stops
                // after this step because the record is no longer complete.
                let code = rec.exit_code;
                if !code.is_some_and(|c| step.expect.exit.contains(&c)) {
                    return Ok(Verdict::Failed(Failure::OutputNotSaved { code }));
                }
                return Ok(Verdict::Ok);
            }
            if let (Some(timeout), Some(124 | 137)) = (step.timeout, rec.exit_code) {
                return Ok(Verdict::Failed(Failure::KilledOnHost { timeout }));
            }
            if let Some(problem) = unexpected(step, rec, &real, &self.redactor) {
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
                return Ok(Verdict::Failed(Failure::CaptureMissing {
                    name: c.name.clone(),
                    regex: c.regex.as_ref().map_or("", |r| r.as_str()).to_string(),
                }));
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

        if real.check.is_some() {
            // The check may read this very step's capture: render it now.
            // Its stdin too: a capture holding a secret sends the check's text there.
            let (line, check_stdin) = match self.render(r, host_opt, Reveal::Real, rec.batch) {
                Ok(t) => (t.check.clone(), t),
                Err(e) => return Ok(Verdict::Failed(e)),
            };
            if let Some(line) = line {
                for attempt in 1..=step.retries + 1 {
                    if self.stopping() {
                        return Ok(Verdict::Failed(Failure::Stopped {
                            why: format!("{}; before check attempt {attempt}", self.stop_reason()),
                        }));
                    }
                    let (code, output) = match self
                        .exec(conn, &line, env_stdin(&check_stdin), host, step.timeout)
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
                        Err(e) => (None, e.to_string()),
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
                        // "Stop now" ends the wait between attempts too.
                        let mut kill = self.kill.subscribe();
                        tokio::select! {
                            _ = tokio::time::sleep(step.delay) => {}
                            _ = kill.wait_for(|k| *k != super::supervise::Kill::None) => {}
                        }
                    }
                }
                return Ok(Verdict::Failed(Failure::CheckFailed {
                    attempts: rec.checks.len(),
                }));
            }
        }
        Ok(Verdict::Ok)
    }

    /// Saves the outputs, records the result, updates the view and what a rollback would undo.
    pub(super) async fn finish(
        &self,
        mut rec: Record<'_>,
        verdict: Verdict,
    ) -> Result<Done, ExecError> {
        let took = rec.clock.elapsed();
        let (status, reason) = match verdict {
            Verdict::Ok => (Status::Ok, None),
            Verdict::Skipped(why) => (Status::Skipped, Some(why)),
            Verdict::Failed(f) if f.is_timeout() => (Status::TimedOut, Some(f.to_string())),
            Verdict::Failed(f) if f.is_interrupted() => (Status::Interrupted, Some(f.to_string())),
            Verdict::Failed(f) => (Status::Failed, Some(f.to_string())),
        };
        let (stdout, stderr) = match rec.saved.take() {
            Some([out, err]) => (out, err),
            None => {
                let stem = self.stem(&rec);
                (
                    self.rec
                        .save(&stem, "stdout", &self.redactor.redact_bytes(&rec.out))?,
                    self.rec
                        .save(&stem, "stderr", &self.redactor.redact_bytes(&rec.err))?,
                )
            }
        };
        let reason = cut_reason(reason, [&stdout, &stderr]);
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
            upload_sha256_withheld: rec.upload_sha256_withheld,
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
}
