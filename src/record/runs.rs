//! Past runs, read back from their journals: `opsrun runs`, `log`, `rollback`, `--resume`.

use crate::error::Error;
use crate::plan::{Captures, Completion, RunInfo};
use crate::record::events::{Event, Outcome, Phase, Status, Time};
use crate::record::journal;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Finds a run directory from a run id, a run directory, or a path to its log or journal.
pub fn resolve(log_dir: &Path, spec: &str) -> Result<PathBuf, Error> {
    let p = PathBuf::from(spec);
    let candidates = [
        p.clone(),
        p.parent().map(Path::to_path_buf).unwrap_or_default(),
        log_dir.join(spec),
    ];
    for c in candidates {
        if c.join(journal::FILE).is_file() {
            return Ok(c);
        }
    }
    let known: Vec<String> = list(log_dir).into_iter().map(|s| s.id).collect();
    let hint = crate::diagnostic::did_you_mean(spec, known.iter().map(String::as_str));
    Err(Error::Usage(format!(
        "no recorded run `{spec}` in {}{hint} (`opsrun runs` lists them; --log-dir or OPSRUN_LOG_DIR select another place)",
        log_dir.display()
    )))
}

/// One line of `opsrun runs`.
#[derive(Debug, Clone)]
pub struct Summary {
    pub id: String,
    pub kind: String,
    pub runbook: String,
    pub env: String,
    pub operator: String,
    pub ticket: Option<String>,
    /// For `opsrun rollback` runs: the run they undo.
    pub rollback_of: Option<String>,
    /// `None`: the run never recorded its end (killed, crashed): interrupted.
    pub outcome: Option<Outcome>,
    /// The run's own rollback after a failure: `Some(true)` if everything it
    /// undid was restored, `Some(false)` if an undo failed, `None` if none ran.
    pub undone: Option<bool>,
    /// Later `opsrun rollback` runs of this run, oldest first: (id, outcome).
    pub rollbacks: Vec<(String, Option<Outcome>)>,
    pub start: Option<Time>,
    pub end: Option<Time>,
}

fn outcome_word(outcome: Option<Outcome>) -> &'static str {
    match outcome {
        Some(Outcome::Succeeded) => "succeeded",
        Some(Outcome::Failed) => "failed",
        Some(Outcome::NotConfirmed) => "not confirmed",
        Some(Outcome::Interrupted) | None => "interrupted",
    }
}

impl Summary {
    /// How the run ended, and in what state it left the hosts: "failed, rolled
    /// back" and "failed, ROLLBACK INCOMPLETE" call for very different mornings.
    pub fn result(&self) -> String {
        let ended = outcome_word(self.outcome);
        if self.kind == "rollback" {
            return ended.to_string();
        }
        // The latest later rollback that did anything (a declined one did not)
        // says how the hosts were left; else the run's own rollback.
        let later = self
            .rollbacks
            .iter()
            .rev()
            .find(|(_, o)| *o != Some(Outcome::NotConfirmed));
        let state = match later {
            Some((_, Some(Outcome::Succeeded))) => Some("rolled back"),
            Some((_, Some(Outcome::Failed))) => Some("ROLLBACK INCOMPLETE"),
            Some(_) => Some("rollback interrupted"),
            None => self.undone.map(|restored| {
                if restored {
                    "rolled back"
                } else {
                    "ROLLBACK INCOMPLETE"
                }
            }),
        };
        match state {
            Some(state) => format!("{ended}, {state}"),
            None => ended.to_string(),
        }
    }
}

pub fn summarize(dir: &Path) -> Option<Summary> {
    let replay = journal::read(&dir.join(journal::FILE)).ok()?;
    let mut s = Summary {
        id: dir.file_name()?.to_string_lossy().into_owned(),
        kind: String::new(),
        runbook: String::new(),
        env: String::new(),
        operator: String::new(),
        ticket: None,
        rollback_of: None,
        outcome: None,
        undone: None,
        rollbacks: Vec::new(),
        start: None,
        end: replay.events.last().map(Event::time),
    };
    for e in &replay.events {
        match e {
            Event::RunStarted {
                time,
                kind,
                runbook,
                inventory,
                operator,
                ticket,
                rollback_of,
                ..
            } => {
                s.start = Some(*time);
                s.kind = kind.clone();
                s.runbook = runbook.clone();
                s.env = inventory.clone();
                s.operator = operator.clone();
                s.ticket = ticket.clone();
                s.rollback_of = rollback_of.clone();
            }
            Event::TargetFinished {
                phase: Phase::Rollback,
                status,
                ..
            } => {
                let restored = matches!(status, Status::Ok | Status::Skipped);
                s.undone = Some(s.undone.unwrap_or(true) && restored);
            }
            Event::RunFinished { outcome, .. } => s.outcome = Some(*outcome),
            _ => {}
        }
    }
    Some(s)
}

fn run_dirs(log_dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(log_dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.join(journal::FILE).is_file())
                .collect()
        })
        .unwrap_or_default()
}

/// Every run in the log directory, oldest first, each with the later rollbacks
/// of it. Sorted by the recorded start, not by id: ids made by older versions
/// are in the control machine's local time, which sorts wrong across time zones.
pub fn list(log_dir: &Path) -> Vec<Summary> {
    let mut all: Vec<Summary> = run_dirs(log_dir)
        .iter()
        .filter_map(|d| summarize(d))
        .collect();
    all.sort_by(|a, b| (a.start, &a.id).cmp(&(b.start, &b.id)));
    let index: BTreeMap<String, usize> = all
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id.clone(), i))
        .collect();
    for i in 0..all.len() {
        if let Some(of) = all[i].rollback_of.as_ref().and_then(|of| index.get(of)) {
            let entry = (all[i].id.clone(), all[i].outcome);
            all[*of].rollbacks.push(entry);
        }
    }
    all
}

/// The `opsrun rollback` runs of run `id` in the log directory, oldest first.
/// Only each journal's first line is read to find them: this runs whenever a log
/// is rendered, and a log directory holds many runs.
pub fn rollbacks_of(log_dir: &Path, id: &str) -> Vec<Summary> {
    let mut found: Vec<Summary> = run_dirs(log_dir)
        .iter()
        .filter(|d| {
            first_event(&d.join(journal::FILE)).is_some_and(
                |e| matches!(e, Event::RunStarted { rollback_of: Some(of), .. } if of == id),
            )
        })
        .filter_map(|d| summarize(d))
        .collect();
    found.sort_by(|a, b| (a.start, &a.id).cmp(&(b.start, &b.id)));
    found
}

fn first_event(path: &Path) -> Option<Event> {
    use std::io::BufRead;
    let file = std::fs::File::open(path).ok()?;
    let mut line = String::new();
    // A start event is a few kB (more with many hosts); a first line far longer is
    // no journal of ours.
    std::io::BufReader::new(std::io::Read::take(file, 1 << 22))
        .read_line(&mut line)
        .ok()?;
    serde_json::from_str(&line).ok()
}

/// What a recorded run left behind, as needed to undo or resume it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub id: String,
    pub events: Vec<Event>,
    pub warnings: Vec<String>,
    pub run: RunInfo,
    pub env: String,
    /// Non-secret params as given; secrets are asked for again.
    pub params: Vec<(String, String)>,
    pub captures: Captures,
    /// Forward steps (0-based) and the hosts where each completed and was not already undone.
    pub completed: BTreeMap<usize, Vec<Completion>>,
    /// Every (step, host) that finished ok, to find where a resume starts.
    pub done: BTreeSet<(usize, String)>,
    pub finished: bool,
    /// The run's `--limit`, reused by its rollback.
    pub limit: Option<String>,
    /// What already undid (part of) this run: "its own automatic rollback" and
    /// "run ID" for each `opsrun rollback` that undid something, oldest first.
    pub rolled_back_by: Vec<String>,
}

pub fn load(dir: &Path) -> Result<Recorded, Error> {
    let replay = journal::read(&dir.join(journal::FILE)).map_err(|e| Error::Io(e.to_string()))?;
    let mut r = Recorded {
        id: dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        events: Vec::new(),
        warnings: replay.warnings,
        run: RunInfo {
            id: String::new(),
            stamp: String::new(),
            date: String::new(),
            operator: String::new(),
            ticket: None,
        },
        env: String::new(),
        params: Vec::new(),
        captures: Captures::default(),
        completed: BTreeMap::new(),
        done: BTreeSet::new(),
        finished: false,
        limit: None,
        rolled_back_by: Vec::new(),
    };
    let mut started = false;
    for e in &replay.events {
        match e {
            Event::RunStarted {
                run_id,
                stamp,
                limit,
                operator,
                ticket,
                params,
                inventory,
                ..
            } => {
                started = true;
                r.limit = limit.clone();
                r.run = RunInfo {
                    id: run_id.clone(),
                    date: stamp.get(..8).unwrap_or_default().to_string(),
                    stamp: stamp.clone(),
                    operator: operator.clone(),
                    ticket: ticket.clone(),
                };
                r.env = inventory.clone();
                r.params = params
                    .iter()
                    .filter(|(_, v)| v != crate::sanitize::MASK && v != "(not set)")
                    .cloned()
                    .collect();
            }
            Event::TargetFinished {
                phase,
                number,
                host,
                status: Status::Ok,
                capture,
                batch,
                ..
            } => {
                let step = number.saturating_sub(1);
                match phase {
                    Phase::Forward => {
                        r.completed.entry(step).or_default().push(Completion {
                            host: host.clone(),
                            batch: *batch,
                        });
                        r.done.insert((step, host.clone()));
                        if let Some((name, value)) = capture {
                            if host == "localhost" {
                                r.captures.global.insert(name.clone(), value.clone());
                            } else {
                                r.captures
                                    .hosts
                                    .entry(host.clone())
                                    .or_default()
                                    .insert(name.clone(), value.clone());
                            }
                        }
                    }
                    Phase::Rollback => {
                        if r.rolled_back_by.is_empty() {
                            r.rolled_back_by.push("its own automatic rollback".into());
                        }
                        // Undone here: a resume must run it again.
                        r.done.remove(&(step, host.clone()));
                        if let Some(hosts) = r.completed.get_mut(&step) {
                            // Only the completion undone: a load balancer drained in
                            // two batches and undone in one still has the other.
                            if let Some(at) = hosts
                                .iter()
                                .rposition(|c| &c.host == host && c.batch == *batch)
                            {
                                hosts.remove(at);
                            }
                        }
                    }
                }
            }
            Event::TargetFinished {
                phase: Phase::Forward,
                number,
                host,
                status: Status::Skipped,
                ..
            } => {
                r.done.insert((number.saturating_sub(1), host.clone()));
            }
            Event::RunFinished { .. } => r.finished = true,
            _ => {}
        }
    }
    if let Some(log_dir) = dir.parent() {
        // Forward step names by index: an undo is recorded under its step's own name,
        // a rollback-guide step under another, which undoes nothing by number.
        let names: BTreeMap<usize, String> = replay
            .events
            .iter()
            .filter_map(|e| match e {
                Event::StepStarted {
                    phase: Phase::Forward,
                    number,
                    step,
                    ..
                } => Some((number.saturating_sub(1), step.clone())),
                _ => None,
            })
            .collect();
        r.rolled_back_by.extend(undone_by_later_rollbacks(
            log_dir,
            &r.id,
            &names,
            &mut r.completed,
        ));
    }
    r.completed.retain(|_, hosts| !hosts.is_empty());
    if !started {
        return Err(Error::Io(format!(
            "{}: the journal has no start event",
            dir.display()
        )));
    }
    r.events = replay.events;
    Ok(r)
}

/// Removes what `opsrun rollback` runs of run `id` already undid: undoing a step
/// twice would repeat it over a restored host (its backup may be gone by then).
/// Returns "run ID" for each of those runs that undid anything (guide steps included).
fn undone_by_later_rollbacks(
    log_dir: &Path,
    id: &str,
    names: &BTreeMap<usize, String>,
    completed: &mut BTreeMap<usize, Vec<Completion>>,
) -> Vec<String> {
    let mut by = Vec::new();
    let Ok(entries) = std::fs::read_dir(log_dir) else {
        return by;
    };
    let mut entries: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    // Run ids sort by time: the oldest rollback is named first.
    entries.sort();
    for entry in entries {
        let Ok(replay) = journal::read(&entry.join(journal::FILE)) else {
            continue;
        };
        let of_this_run = replay
            .events
            .iter()
            .any(|e| matches!(e, Event::RunStarted { rollback_of: Some(of), .. } if of == id));
        if !of_this_run {
            continue;
        }
        let undid = replay.events.iter().any(|e| {
            matches!(
                e,
                Event::TargetFinished {
                    phase: Phase::Rollback,
                    status: Status::Ok,
                    ..
                }
            )
        });
        if undid {
            by.push(format!(
                "run {}",
                entry
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            ));
        }
        for e in &replay.events {
            if let Event::TargetFinished {
                phase: Phase::Rollback,
                number,
                host,
                status: Status::Ok,
                batch,
                step,
                ..
            } = e
            {
                let index = number.saturating_sub(1);
                if names.get(&index) != Some(step) {
                    continue;
                }
                if let Some(hosts) = completed.get_mut(&index) {
                    hosts.retain(|c| !(&c.host == host && c.batch == *batch));
                }
            }
        }
    }
    by
}
