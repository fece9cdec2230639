//! Past runs, read back from their journals: `opsrun runs`, `log`, `rollback`, `--resume`.

use crate::error::Error;
use crate::plan::{Captures, Completion, RunInfo};
use crate::record::events::{Event, Outcome, RunKind, Time};
use crate::record::journal;
use crate::record::view::{self, Identity, RunView};
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
    /// `None`: the journal has no start event.
    pub kind: Option<RunKind>,
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
    /// A signal stopped the run's own rollback before every undo ran.
    pub rollback_stopped: bool,
    /// Later `opsrun rollback` runs of this run, oldest first: (id, outcome).
    pub rollbacks: Vec<(String, Option<Outcome>)>,
    pub start: Option<Time>,
    pub end: Option<Time>,
    /// What is wrong with the journal's hash chain: the run is shown as read up to the break.
    pub warnings: Vec<String>,
    /// The journal no longer matches its signed log: nothing it says is shown as the result.
    pub edited: bool,
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
        if self.edited {
            return "JOURNAL EDITED after its signed log".to_string();
        }
        let ended = outcome_word(self.outcome);
        if self.kind == Some(RunKind::Rollback) {
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
            None if self.rollback_stopped => Some("rollback interrupted"),
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

impl Summary {
    fn of(v: &RunView) -> Summary {
        let start = v.start.as_ref();
        let text = |f: fn(&Identity) -> &String| start.map(f).cloned().unwrap_or_default();
        Summary {
            id: v.id.clone(),
            kind: v.kind(),
            runbook: text(|s| &s.runbook),
            env: text(|s| &s.inventory),
            operator: text(|s| &s.operator),
            ticket: start.and_then(|s| s.ticket.clone()),
            rollback_of: v.rollback_of().map(str::to_string),
            outcome: v.outcome(),
            undone: v.restored,
            rollback_stopped: v.rollback_stopped,
            rollbacks: Vec::new(),
            start: start.map(|s| s.time),
            end: v.last,
            warnings: Vec::new(),
            edited: false,
        }
    }
}

/// Every run in the log directory, oldest first, each with the later rollbacks of it.
pub fn list(log_dir: &Path) -> Vec<Summary> {
    let mut views: Vec<(RunView, bool, Vec<String>)> = view::run_dirs(log_dir)
        .iter()
        .filter_map(|d| {
            view::read(d)
                .ok()
                .map(|(v, r)| (v, r.disagrees_with_log().is_some(), r.chain_warnings))
        })
        .collect();
    views.sort_by(|a, b| view::order(&a.0, &b.0));
    let mut all: Vec<Summary> = views
        .into_iter()
        .map(|(v, edited, warnings)| Summary {
            warnings,
            edited,
            ..Summary::of(&v)
        })
        .collect();
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
pub fn rollbacks_of(log_dir: &Path, id: &str) -> Vec<Summary> {
    view::rollbacks_of(log_dir, id)
        .iter()
        .map(Summary::of)
        .collect()
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
    /// Forward steps (0-based) and the hosts where each was in flight when the run
    /// stopped (started, never finished ok or failed) and was not already undone.
    pub in_flight: BTreeMap<usize, Vec<Completion>>,
    /// Every (step, host) that finished ok, to find where a resume starts.
    pub done: BTreeSet<(usize, String)>,
    /// The run's `--limit`, reused by its rollback.
    pub limit: Option<String>,
    /// What already undid (part of) this run: "its own automatic rollback" and
    /// "run ID" for each `opsrun rollback` that undid something, oldest first.
    pub rolled_back_by: Vec<String>,
}

pub fn load(dir: &Path) -> Result<Recorded, Error> {
    let (mut view, replay) = view::read(dir).map_err(|e| Error::Io(e.to_string()))?;
    if let Some(b) = replay.disagrees_with_log() {
        return Err(Error::EditedJournal {
            run: view.id.clone(),
            at: b.to_string(),
        });
    }
    let Some(start) = view.start.clone() else {
        return Err(Error::Io(format!(
            "{}: the journal has no start event",
            dir.display()
        )));
    };
    let mut rolled_back_by = Vec::new();
    if view.rolled_back {
        rolled_back_by.push("its own automatic rollback".to_string());
    }
    // Undoing a step twice would repeat it over a restored host (its backup may be
    // gone by then): what later `opsrun rollback` runs undid is not completed.
    let later = view::rollbacks_of(view::log_dir_of(dir), &view.id);
    view.apply_rollbacks(&later);
    // A resume of this run that rolled back undid this run's steps as well.
    let resumes = view::resumes_of(view::log_dir_of(dir), &view.id);
    view.apply_rollbacks(&resumes);
    rolled_back_by.extend(
        resumes
            .iter()
            .filter(|r| r.rolled_back)
            .map(|r| format!("the automatic rollback of its resume {}", r.id)),
    );
    rolled_back_by.extend(
        later
            .iter()
            .filter(|r| r.rolled_back)
            .map(|r| format!("run {}", r.id)),
    );
    Ok(Recorded {
        id: view.id,
        events: replay.events,
        warnings: replay.warnings,
        run: RunInfo {
            id: start.run_id,
            date: start.stamp.get(..8).unwrap_or_default().to_string(),
            stamp: start.stamp,
            operator: start.operator,
            ticket: start.ticket,
        },
        env: start.inventory,
        // Secrets are asked for again; a param without a value stays without one.
        params: start
            .params
            .into_iter()
            .filter(|p| !p.secret)
            .filter_map(|p| Some((p.name, p.value?)))
            .collect(),
        captures: view.captures,
        completed: view.completed,
        in_flight: view.in_flight,
        done: view.done,
        limit: start.limit,
        rolled_back_by,
    })
}
