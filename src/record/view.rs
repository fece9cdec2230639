//! One fold of a journal into what the run was and what it left behind. `opsrun
//! runs` (record/runs.rs `summarize`), the log (report/log.rs), `opsrun rollback`
//! and `--resume` (record/runs.rs `load`) all read a [`RunView`], so they agree
//! on what a run completed, undid and how it ended.

mod history;

pub use history::{
    Downtime, Exception, ExceptionKind, History, Prompt, Row, StepTable, TargetResult,
};

use crate::plan::{Captures, Completion};
use crate::record::events::{Event, HostInfo, Outcome, ParamRecord, Phase, RunKind, Status, Time};
use crate::record::journal::{self, JournalError, Replay};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Who started the run, on what, with which params: its `RunStarted` event.
#[derive(Debug, Clone)]
pub struct Identity {
    pub time: Time,
    pub run_id: String,
    pub kind: RunKind,
    pub rollback_of: Option<String>,
    pub runbook: String,
    pub runbook_version: Option<String>,
    pub runbook_path: String,
    pub runbook_sha256: String,
    pub inventory: String,
    pub inventory_path: String,
    pub inventory_sha256: String,
    pub operator: String,
    pub control_host: String,
    pub ticket: Option<String>,
    pub opsrun_version: String,
    pub stamp: String,
    pub params: Vec<ParamRecord>,
    pub hosts: Vec<HostInfo>,
    pub start_at: Option<String>,
    pub limit: Option<String>,
}

/// How the run ended: its `RunFinished` event.
#[derive(Debug, Clone)]
pub struct Finish {
    pub time: Time,
    pub outcome: Outcome,
    pub message: String,
}

/// One undo that finished ok: forward step index (0-based), host, batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undid {
    pub step: usize,
    pub host: String,
    pub batch: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct RunView {
    /// The run directory's name: what other runs (`rollback_of`) call it.
    pub id: String,
    /// `None`: the journal has no start event.
    pub start: Option<Identity>,
    /// `None`: the run never recorded its end (killed, crashed).
    pub finish: Option<Finish>,
    /// The time of the last event.
    pub last: Option<Time>,
    /// Forward steps (0-based) and where each completed and was not undone by this run.
    pub completed: BTreeMap<usize, Vec<Completion>>,
    /// Forward steps (0-based) and the hosts where each started and never finished
    /// (killed run, lost connection) or finished interrupted, not undone since: the
    /// step may be partly applied there, so a rollback undoes it too.
    pub in_flight: BTreeMap<usize, Vec<Completion>>,
    /// Every forward (step, host) that finished ok or skipped and was not undone:
    /// where a resume starts.
    pub done: BTreeSet<(usize, String)>,
    pub captures: Captures,
    /// The run's rollback steps: `Some(true)` if every one restored its host,
    /// `Some(false)` if one failed, `None` if none ran.
    pub restored: Option<bool>,
    /// Undos that finished ok, in order.
    pub undid: Vec<Undid>,
    /// Whether any undo or guide step finished ok: the run changed hosts back.
    pub rolled_back: bool,
    /// A signal stopped the run's rollback before every undo ran.
    pub rollback_stopped: bool,
    /// Everything else the log shows, step by step and host by host.
    pub history: History,
}

impl RunView {
    pub fn fold(id: &str, events: &[Event]) -> RunView {
        let mut v = RunView {
            id: id.to_string(),
            start: None,
            finish: None,
            last: events.last().map(Event::time),
            completed: BTreeMap::new(),
            in_flight: BTreeMap::new(),
            done: BTreeSet::new(),
            captures: Captures::default(),
            restored: None,
            undid: Vec::new(),
            rolled_back: false,
            rollback_stopped: false,
            history: History::default(),
        };
        for e in events {
            v.apply(e);
        }
        let hosts: Vec<String> = v
            .start
            .iter()
            .flat_map(|s| &s.hosts)
            .map(|h| h.name.clone())
            .collect();
        v.history = History::fold(events, &hosts);
        v.completed.retain(|_, hosts| !hosts.is_empty());
        v.in_flight.retain(|_, hosts| !hosts.is_empty());
        v
    }

    fn apply(&mut self, e: &Event) {
        match e {
            Event::RunStarted {
                time,
                run_id,
                kind,
                rollback_of,
                runbook,
                runbook_version,
                runbook_path,
                runbook_sha256,
                inventory,
                inventory_path,
                inventory_sha256,
                operator,
                control_host,
                ticket,
                opsrun_version,
                stamp,
                params,
                hosts,
                start_at,
                limit,
                ..
            } if self.start.is_none() => {
                self.start = Some(Identity {
                    time: *time,
                    run_id: run_id.clone(),
                    kind: *kind,
                    rollback_of: rollback_of.clone(),
                    runbook: runbook.clone(),
                    runbook_version: runbook_version.clone(),
                    runbook_path: runbook_path.clone(),
                    runbook_sha256: runbook_sha256.clone(),
                    inventory: inventory.clone(),
                    inventory_path: inventory_path.clone(),
                    inventory_sha256: inventory_sha256.clone(),
                    operator: operator.clone(),
                    control_host: control_host.clone(),
                    ticket: ticket.clone(),
                    opsrun_version: opsrun_version.clone(),
                    stamp: stamp.clone(),
                    params: params.clone(),
                    hosts: hosts.clone(),
                    start_at: start_at.clone(),
                    limit: limit.clone(),
                })
            }
            // Started: in flight until it finishes (a killed run never says so).
            Event::TargetStarted {
                phase: Phase::Forward,
                number,
                host,
                batch,
                ..
            } => {
                let step = number.saturating_sub(1);
                self.in_flight.entry(step).or_default().push(Completion {
                    host: host.clone(),
                    batch: *batch,
                });
            }
            Event::TargetFinished {
                phase,
                number,
                host,
                status,
                capture,
                batch,
                ..
            } => {
                let step = number.saturating_sub(1);
                if *phase == Phase::Forward {
                    if let Some(hosts) = self.in_flight.get_mut(&step) {
                        // The entry its start made (with the same batch; journals
                        // from before the start recorded one say none).
                        if let Some(at) = hosts.iter().rposition(|c| {
                            c.host == *host && (c.batch == *batch || c.batch.is_none())
                        }) {
                            hosts.remove(at);
                        }
                    }
                }
                if phase.is_rollback() {
                    let ok = matches!(status, Status::Ok | Status::Skipped);
                    self.restored = Some(self.restored.unwrap_or(true) && ok);
                }
                match (phase, status) {
                    (Phase::Forward, Status::Ok) => {
                        self.completed.entry(step).or_default().push(Completion {
                            host: host.clone(),
                            batch: *batch,
                        });
                        self.done.insert((step, host.clone()));
                        if let Some((name, value)) = capture {
                            if host == "localhost" {
                                self.captures.global.insert(name.clone(), value.clone());
                            } else {
                                self.captures
                                    .hosts
                                    .entry(host.clone())
                                    .or_default()
                                    .insert(name.clone(), value.clone());
                            }
                        }
                    }
                    (Phase::Forward, Status::Skipped) => {
                        self.done.insert((step, host.clone()));
                    }
                    // Stopped part way: may be applied, so it is undone like a completion.
                    (Phase::Forward, Status::Interrupted) => {
                        self.in_flight.entry(step).or_default().push(Completion {
                            host: host.clone(),
                            batch: *batch,
                        });
                    }
                    (Phase::Undo, Status::Ok) => {
                        self.rolled_back = true;
                        let undid = Undid {
                            step,
                            host: host.clone(),
                            batch: *batch,
                        };
                        // Undone here: a resume must run it again.
                        self.done.remove(&(step, host.clone()));
                        self.uncomplete(&undid, false);
                        self.undid.push(undid);
                    }
                    (Phase::Guide, Status::Ok) => self.rolled_back = true,
                    _ => {}
                }
            }
            Event::RollbackStopped { .. } => self.rollback_stopped = true,
            Event::RunFinished {
                time,
                outcome,
                message,
            } => {
                self.finish = Some(Finish {
                    time: *time,
                    outcome: *outcome,
                    message: message.clone(),
                })
            }
            _ => {}
        }
    }

    /// Takes an undone completion off `completed`. The run's own undo takes off
    /// one completion: a load balancer drained in two batches and undone in one
    /// still has the other. A later `opsrun rollback` (`all`) takes off every
    /// completion of that host and batch.
    ///
    /// An undo also covers the step where it was in flight on that host: that is
    /// the latest step there (steps are barriers), so it is taken off first.
    fn uncomplete(&mut self, undid: &Undid, all: bool) {
        let same = |c: &Completion| c.host == undid.host && c.batch == undid.batch;
        // What was in flight is undone for the batch it ran in, or with none when
        // the journal never said which.
        let flying = |c: &Completion| same(c) || (c.host == undid.host && c.batch.is_none());
        if let Some(hosts) = self.in_flight.get_mut(&undid.step) {
            if let Some(at) = hosts.iter().rposition(flying) {
                hosts.remove(at);
                if !all {
                    return;
                }
                hosts.retain(|c| !flying(c));
            }
        }
        if let Some(hosts) = self.completed.get_mut(&undid.step) {
            if all {
                hosts.retain(|c| !same(c));
            } else if let Some(at) = hosts.iter().rposition(same) {
                hosts.remove(at);
            }
        }
    }

    /// What later `opsrun rollback` runs undid is no longer completed.
    pub fn apply_rollbacks(&mut self, later: &[RunView]) {
        for r in later {
            for u in &r.undid {
                self.uncomplete(u, true);
            }
        }
        self.completed.retain(|_, hosts| !hosts.is_empty());
        self.in_flight.retain(|_, hosts| !hosts.is_empty());
    }

    pub fn kind(&self) -> Option<RunKind> {
        self.start.as_ref().map(|s| s.kind)
    }

    pub fn outcome(&self) -> Option<Outcome> {
        self.finish.as_ref().map(|f| f.outcome)
    }

    pub fn rollback_of(&self) -> Option<&str> {
        self.start.as_ref()?.rollback_of.as_deref()
    }
}

/// The run directory's name.
pub fn dir_name(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The log directory a run directory is in. `opsrun log RUN` run inside the log
/// directory names the run by a relative path whose parent is empty.
pub fn log_dir_of(dir: &Path) -> &Path {
    match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        Some(_) => Path::new("."),
        None => dir,
    }
}

/// Reads and folds the journal of the run directory `dir`.
/// A damaged first event is rebuilt from what is intact (`record::recover`), with a warning.
pub fn read(dir: &Path) -> Result<(RunView, Replay), JournalError> {
    let mut replay = journal::read(&dir.join(journal::FILE))?;
    crate::record::binding::check_against_log(dir, &mut replay);
    if replay.start_damaged.is_some() {
        let (start, note) = crate::record::recover::start(dir, &replay.events);
        replay.events.insert(0, start);
        replay.warnings.push(note.clone());
        replay.chain_warnings.push(note);
    }
    Ok((RunView::fold(&dir_name(dir), &replay.events), replay))
}

/// The run directories in a log directory.
pub fn run_dirs(log_dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(log_dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.join(journal::FILE).is_file())
                .collect()
        })
        .unwrap_or_default()
}

/// Orders runs by their recorded start, then id: ids made by older versions are
/// in the control machine's local time, which sorts wrong across time zones.
pub fn sort(views: &mut [RunView]) {
    views.sort_by(order);
}

/// The order of [`sort`].
pub fn order(a: &RunView, b: &RunView) -> std::cmp::Ordering {
    let key = |v: &RunView| v.start.as_ref().map(|s| s.time);
    (key(a), &a.id).cmp(&(key(b), &b.id))
}

/// The `opsrun rollback` runs of run `id` in the log directory, oldest first.
/// Only each journal's first line is read to find them: this runs whenever a log
/// is rendered, and a log directory holds many runs.
pub fn rollbacks_of(log_dir: &Path, id: &str) -> Vec<RunView> {
    later_runs(
        log_dir,
        |e| matches!(e, Event::RunStarted { rollback_of: Some(of), .. } if of == id),
    )
}

/// The `--resume` runs of run `id`, oldest first. A resume's automatic rollback
/// undoes the steps that run `id` completed too (it starts from them): what it
/// undid is no longer to undo for `opsrun rollback ID`.
pub fn resumes_of(log_dir: &Path, id: &str) -> Vec<RunView> {
    later_runs(
        log_dir,
        |e| matches!(e, Event::RunStarted { resume_of: Some(of), .. } if of == id),
    )
}

fn later_runs(log_dir: &Path, first: impl Fn(&Event) -> bool) -> Vec<RunView> {
    let mut found: Vec<RunView> = run_dirs(log_dir)
        .iter()
        .filter(|d| first_event(&d.join(journal::FILE)).is_some_and(|e| first(&e)))
        .filter_map(|d| read(d).ok().map(|(v, _)| v))
        .collect();
    sort(&mut found);
    found
}

/// The runs that carry run `id` on: its `opsrun rollback` runs and its
/// `--resume` runs, and theirs in turn (ids). A stale lock left by one of them
/// belongs to the same change: a rollback or resume of `id` may take it over.
pub fn continuations_of(log_dir: &Path, id: &str) -> Vec<String> {
    let starts: Vec<(String, Option<String>, Option<String>)> = run_dirs(log_dir)
        .iter()
        .filter_map(|d| match first_event(&d.join(journal::FILE))? {
            Event::RunStarted {
                rollback_of,
                resume_of,
                ..
            } => Some((dir_name(d), rollback_of, resume_of)),
            _ => None,
        })
        .collect();
    let mut found = vec![id.to_string()];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i].clone();
        for (run, rollback_of, resume_of) in &starts {
            let continues = [rollback_of, resume_of]
                .iter()
                .any(|of| of.as_deref() == Some(parent.as_str()));
            if continues && !found.contains(run) {
                found.push(run.clone());
            }
        }
        i += 1;
    }
    found.remove(0);
    found
}

/// The runs of the change `id` (it and the runs that carry it on) with their
/// registry keys (`execute::supervise`): where their commands may still run.
pub fn registry_keys_of(log_dir: &Path, id: &str) -> Vec<(String, String)> {
    std::iter::once(id.to_string())
        .chain(continuations_of(log_dir, id))
        .filter_map(
            |run| match first_event(&log_dir.join(&run).join(journal::FILE))? {
                Event::RunStarted {
                    registry_key: Some(key),
                    ..
                } => Some((run, key)),
                _ => None,
            },
        )
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::events::{now, JOURNAL_VERSION};

    fn started(params: Vec<ParamRecord>) -> Event {
        Event::RunStarted {
            time: now(),
            version: JOURNAL_VERSION,
            run_id: "r".into(),
            kind: RunKind::Run,
            rollback_of: None,
            resume_of: None,
            runbook: "rb".into(),
            runbook_version: None,
            runbook_path: "rb.yaml".into(),
            runbook_sha256: String::new(),
            inventory: "inv".into(),
            inventory_path: "inv.yaml".into(),
            inventory_sha256: String::new(),
            operator: "op".into(),
            control_host: "vm".into(),
            ticket: None,
            opsrun_version: "0".into(),
            stamp: "20261202-000000".into(),
            params,
            hosts: Vec::new(),
            start_at: None,
            limit: None,
            registry_key: None,
        }
    }

    fn target(
        phase: Phase,
        number: usize,
        host: &str,
        status: Status,
        batch: Option<usize>,
    ) -> Event {
        Event::TargetFinished {
            time: now(),
            phase,
            number,
            step: format!("s{number}"),
            host: host.into(),
            login: "u".into(),
            status,
            started: now(),
            millis: 0,
            exit_code: None,
            command: None,
            stdin: None,
            stdout: None,
            stderr: None,
            checks: Vec::new(),
            capture: None,
            upload_sha256: None,
            upload_sha256_withheld: None,
            reason: None,
            batch,
        }
    }

    fn target_started(number: usize, host: &str) -> Event {
        Event::TargetStarted {
            time: now(),
            phase: Phase::Forward,
            number,
            step: format!("s{number}"),
            host: host.into(),
            command: None,
            batch: None,
        }
    }

    fn at(host: &str, batch: Option<usize>) -> Completion {
        Completion {
            host: host.into(),
            batch,
        }
    }

    /// Started and never finished, or finished interrupted: in flight, with the
    /// batch when the finish says it; an undo (of this run or a later rollback)
    /// takes it off, and a finished target is not in flight.
    #[test]
    fn targets_started_and_not_finished_or_interrupted_are_in_flight_until_undone() {
        let events = vec![
            started(Vec::new()),
            target_started(1, "a"),
            target_started(1, "b"),
            target(Phase::Forward, 1, "a", Status::Ok, None),
            target(Phase::Forward, 1, "b", Status::Ok, None),
            target_started(2, "a"),
            target_started(2, "b"),
            target(Phase::Forward, 2, "b", Status::Interrupted, Some(2)),
        ];
        let v = RunView::fold("r", &events);
        assert_eq!(
            v.completed,
            BTreeMap::from([(0, vec![at("a", None), at("b", None)])])
        );
        assert_eq!(
            v.in_flight,
            BTreeMap::from([(1, vec![at("a", None), at("b", Some(2))])])
        );
        // The run's own undo of b's interrupted step.
        let mut undone = events.clone();
        undone.push(target(Phase::Undo, 2, "b", Status::Ok, Some(2)));
        let v = RunView::fold("r", &undone);
        assert_eq!(v.in_flight, BTreeMap::from([(1, vec![at("a", None)])]));
        // A later rollback that undid a's.
        let mut v = RunView::fold("r", &events);
        let later = RunView::fold(
            "rb",
            &[
                started(Vec::new()),
                target(Phase::Undo, 2, "a", Status::Ok, None),
            ],
        );
        v.apply_rollbacks(&[later]);
        assert_eq!(v.in_flight, BTreeMap::from([(1, vec![at("b", Some(2))])]));
    }

    /// A param whose real value is `******` is a value like any other: the
    /// journal says which params are secret, so a resume keeps it.
    #[test]
    fn a_param_whose_value_is_the_mask_is_kept_on_resume() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("r");
        std::fs::create_dir(&run).unwrap();
        let mut j = journal::Journal::create(&run).unwrap();
        let param = |name: &str, secret: bool, value: Option<&str>| ParamRecord {
            name: name.into(),
            secret,
            set: secret || value.is_some(),
            value: value.map(str::to_string),
        };
        j.append(&started(vec![
            param("pattern", false, Some("******")),
            param("token", true, None),
            param("note", false, None),
        ]))
        .unwrap();
        j.sync().unwrap();
        drop(j);
        let recorded = crate::record::runs::load(&run).unwrap();
        assert_eq!(
            recorded.params,
            [("pattern".to_string(), "******".to_string())]
        );
    }
}
