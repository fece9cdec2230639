//! Undo: the `rollback:` of each completed step, run latest first. A rolling
//! run (`serial`) is undone rolling too: batch by batch, the last batch the run
//! reached first (after a failure: the failed one), each batch's steps latest
//! first, so a node is never undone together with the others.

use super::attempt::{error_line, with_env_lines, Record, Verdict};
use super::engine::*;
use super::failure::Failure;
use crate::plan::Target;
use crate::plan::{Completion, Plan, PlanStep, Planner, ServiceState, StepRef};
use crate::record::events::{Phase, Status};
use crate::transport::Stdin;
use std::collections::BTreeMap;
use std::collections::HashMap;

pub(super) mod text;

/// What a rollback did: the (step, host) pairs undone, in the order they were,
/// and the (step, host) pairs whose undo failed.
#[derive(Debug, Default)]
pub struct Undone {
    pub ok: Vec<(String, Completion)>,
    pub failed: Vec<(String, String)>,
    /// Per host, in undo order: the step whose undo failed, then every earlier
    /// step whose undo was not run after it. What is still applied where.
    pub still: Vec<(String, String)>,
    /// The (step, host) pairs among `ok` that were in flight when the run stopped.
    pub flight: Vec<(String, String)>,
    /// In flight, and its rollback cannot be rendered (it reads what the step never
    /// got to capture): (step, host, why). Left to the operator; the earlier undos
    /// of that host still run, since nothing ran in its place.
    pub by_hand: Vec<(String, String, String)>,
    /// A signal stopped the rollback between two undos: what it was. The undos
    /// not run are in `still`.
    pub halted: Option<&'static str>,
}

impl Undone {
    /// What was undone, per host in inventory order: `on oa1: `Stop`, `Back up`; on
    /// lb1: `Drain` of batch 1`. Hosts that had the same steps undone share one
    /// entry, so a large estate stays one line.
    pub fn summary(&self, planner: &Planner) -> String {
        let mut per_host: Vec<(&str, Vec<String>)> = Vec::new();
        for (step, c) in &self.ok {
            let mut what = match c.batch {
                Some(b) => format!("`{step}` of batch {b}"),
                None => format!("`{step}`"),
            };
            if self.flight.iter().any(|(s, h)| s == step && *h == c.host) {
                what.push_str(" (in flight when the run stopped)");
            }
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
            .map(|(hosts, steps)| format!("on {}: {}", hosts.join(", "), steps.join(", ")))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// What an undo runs over: the completions, and after them the targets in flight
/// when the run stopped (the latest step on their host: steps are barriers).
pub fn with_in_flight(
    done: &BTreeMap<usize, Vec<Completion>>,
    in_flight: &BTreeMap<usize, Vec<Completion>>,
) -> BTreeMap<usize, Vec<Completion>> {
    let mut all = done.clone();
    for (step, hosts) in in_flight {
        all.entry(*step).or_default().extend(hosts.iter().cloned());
    }
    all
}

/// Steps without a rollback that were in flight, with their hosts: nothing can
/// undo them, so the operator is told to check them by hand.
pub fn unchecked(
    plan: &Plan,
    in_flight: &BTreeMap<usize, Vec<Completion>>,
) -> Vec<(usize, Vec<String>)> {
    in_flight
        .iter()
        .rev()
        .filter(|(i, _)| plan.steps.get(**i).is_some_and(|s| s.undo.is_empty()))
        .map(|(i, hosts)| {
            let mut names: Vec<String> = hosts.iter().map(|c| c.host.clone()).collect();
            names.dedup();
            (*i, names)
        })
        .collect()
}

/// `; in flight when the run stopped, no rollback: check by hand: `Migrate` on oa1`,
/// or nothing.
pub fn unchecked_note(plan: &Plan, in_flight: &BTreeMap<usize, Vec<Completion>>) -> String {
    let list: Vec<String> = unchecked(plan, in_flight)
        .into_iter()
        .map(|(i, hosts)| format!("`{}` on {}", plan.steps[i].name, hosts.join(", ")))
        .collect();
    if list.is_empty() {
        return String::new();
    }
    format!(
        "; in flight when the run stopped, no rollback: check by hand: {}",
        list.join(", ")
    )
}

/// Completed steps that have a rollback, last first: what an undo would run.
pub fn undoable(plan: &Plan, done: &BTreeMap<usize, Vec<Completion>>) -> Vec<Completed> {
    done.iter()
        .rev()
        .filter(|(i, _)| plan.steps.get(**i).is_some_and(|s| !s.undo.is_empty()))
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

/// One batch's share of an undo: its steps latest first, each with the hosts that
/// completed it in that batch (each once), in inventory order. `batch` is `None`
/// for a run without batches.
#[derive(Debug, Clone, PartialEq)]
pub struct UndoBatch {
    pub batch: Option<usize>,
    pub steps: Vec<(usize, Vec<Completion>)>,
}

/// The order an undo runs in. Without batches: each step latest first (a host that
/// completed a step several times is undone once per round, see [`undo_rounds`]).
/// With batches: the batches latest first, each one's steps latest first. A
/// completion's batch is the one it recorded (a step that read `batch`), else the
/// batch its host belongs to, else (a host in every batch: a load balancer, or this
/// machine) the n-th time it completed the step is batch n.
pub fn undo_batches(
    planner: &Planner,
    plan: &Plan,
    done: &BTreeMap<usize, Vec<Completion>>,
) -> Vec<UndoBatch> {
    let order: Vec<&str> = planner
        .run_hosts()
        .iter()
        .map(|h| h.name.as_str())
        .collect();
    let rank = |c: &Completion| {
        order
            .iter()
            .position(|o| *o == c.host)
            .unwrap_or(usize::MAX)
    };
    let undo = undoable(plan, done);
    let all = planner.batches();
    if all.len() <= 1 {
        let steps = undo
            .iter()
            .flat_map(|c| {
                undo_rounds(&c.hosts).into_iter().map(|mut round| {
                    round.sort_by_key(|h| rank(h));
                    (c.step, round)
                })
            })
            .collect();
        return vec![UndoBatch { batch: None, steps }];
    }
    let mut per_batch: BTreeMap<usize, Vec<(usize, Vec<Completion>)>> = BTreeMap::new();
    for c in &undo {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for h in &c.hosts {
            let nth = seen.entry(h.host.as_str()).or_insert(0);
            *nth += 1;
            let b = h
                .batch
                .or_else(|| all.iter().position(|m| m.contains(&h.host)).map(|i| i + 1))
                .unwrap_or((*nth).min(all.len()));
            let steps = per_batch.entry(b).or_default();
            match steps.iter_mut().find(|(s, _)| *s == c.step) {
                Some((_, hosts)) => hosts.push(h.clone()),
                None => steps.push((c.step, vec![h.clone()])),
            }
        }
    }
    per_batch
        .into_iter()
        .rev()
        .map(|(b, mut steps)| {
            for (_, hosts) in &mut steps {
                hosts.sort_by_key(|h| rank(h));
            }
            UndoBatch {
                batch: Some(b),
                steps,
            }
        })
        .collect()
}

/// The hosts an undo touches, in inventory order (`this machine` last).
pub fn undo_hosts(planner: &Planner, batches: &[UndoBatch]) -> Vec<String> {
    let on: std::collections::HashSet<&str> = batches
        .iter()
        .flat_map(|b| b.steps.iter())
        .flat_map(|(_, hosts)| hosts.iter().map(|h| h.host.as_str()))
        .collect();
    let mut hosts: Vec<String> = planner
        .run_hosts()
        .into_iter()
        .filter(|h| on.contains(h.name.as_str()))
        .map(|h| h.name.clone())
        .collect();
    if on.contains("localhost") {
        hosts.push("this machine".into());
    }
    hosts
}

impl Engine<'_> {
    /// The targets in flight when the run stopped, not undone yet.
    pub fn in_flight(&self) -> BTreeMap<usize, Vec<Completion>> {
        self.in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// What an undo runs over: completions, then what was in flight.
    fn to_undo(&self) -> BTreeMap<usize, Vec<Completion>> {
        let done = self.completed.lock().unwrap_or_else(|p| p.into_inner());
        with_in_flight(&done, &self.in_flight())
    }

    /// The order this run's completed (and in-flight) steps would be undone in.
    pub fn undo_batches(&self) -> Vec<UndoBatch> {
        undo_batches(self.planner, self.plan, &self.to_undo())
    }

    /// Completed (and in-flight) steps that have a rollback, last first.
    pub fn undoable(&self) -> Vec<Completed> {
        undoable(self.plan, &self.to_undo())
    }

    /// Undoes completed and in-flight steps in reverse order, on the hosts where
    /// each ran, batch by batch for a rolling run. Once an undo fails on a host,
    /// the undos of earlier steps do not run there (they may destroy what the
    /// failed one needs: its backup); the other hosts go on.
    pub async fn rollback(&mut self) -> Result<Undone, ExecError> {
        let in_flight = self.in_flight();
        let mut undone = Undone::default();
        // Hosts where an undo failed, with that step's name.
        let mut stopped: HashMap<String, String> = HashMap::new();
        // A Ctrl-C, SIGTERM or SIGHUP from now on: the running undo finishes, no
        // other starts (what is left is said, and `opsrun rollback` goes on).
        let signals = crate::execute::interrupt::sigint_mark();
        let mut halted = false;
        for part in self.undo_batches() {
            if let Some(b) = part.batch {
                self.ui.line(&format!(
                    "undo {}",
                    super::rollback::batch_line(self.planner, b)
                ));
            }
            for (index, round) in &part.steps {
                let r = StepRef::Forward(*index);
                let step = self.step(r).clone();
                if halted || crate::execute::interrupt::sigint_mark() != signals {
                    if !halted {
                        self.ui.warn(&format!(
                            "rollback stopped by {} before `{}`: the undos left are not run",
                            crate::execute::interrupt::last_signal(),
                            step.name
                        ));
                    }
                    halted = true;
                    undone.halted = Some(crate::execute::interrupt::last_signal());
                    for c in round {
                        undone.still.push((step.name.clone(), c.host.clone()));
                    }
                    continue;
                }
                let (held, go): (Vec<Completion>, Vec<Completion>) = round
                    .iter()
                    .cloned()
                    .partition(|c| stopped.contains_key(&c.host));
                for c in &held {
                    self.ui.warn(&format!(
                        "[undo {}] `{}` not run on {}: the undo of `{}` failed there, and this one may destroy what it needs",
                        index + 1,
                        step.name,
                        c.host,
                        stopped[&c.host]
                    ));
                    undone.still.push((step.name.clone(), c.host.clone()));
                }
                let flying = |h: &str| {
                    in_flight
                        .get(index)
                        .is_some_and(|hosts| hosts.iter().any(|c| c.host == h))
                };
                let (go, unrendered): (Vec<Completion>, Vec<Completion>) = go
                    .into_iter()
                    .partition(|c| !flying(&c.host) || self.lacks_capture(r, &step, c).is_none());
                for c in &unrendered {
                    let why = self.lacks_capture(r, &step, c).unwrap_or_default();
                    self.ui.warn(&format!(
                        "[undo {}] `{}` on {}: in flight when the run stopped, and its rollback reads {why}: check by hand",
                        index + 1,
                        step.name,
                        c.host
                    ));
                    undone
                        .by_hand
                        .push((step.name.clone(), c.host.clone(), why));
                }
                if go.is_empty() {
                    continue;
                }
                let failures = self.undo_round(r, *index, &step, &go, part.batch).await?;
                for h in &go {
                    if failures.iter().any(|(_, f)| *f == h.host) {
                        stopped.insert(h.host.clone(), step.name.clone());
                        undone.still.push((step.name.clone(), h.host.clone()));
                        continue;
                    }
                    if flying(&h.host) {
                        undone.flight.push((step.name.clone(), h.host.clone()));
                    }
                    undone.ok.push((step.name.clone(), h.clone()));
                }
                undone.failed.extend(failures);
            }
        }
        if undone.halted.is_some() {
            self.rec
                .emit(&crate::record::events::Event::RollbackStopped {
                    time: crate::record::events::now(),
                    signal: crate::execute::interrupt::last_signal_kind(),
                    left: undone.still.clone(),
                })?;
        }
        Ok(undone)
    }

    /// For a step in flight: `Some("`backup`, which it never captured")` when its
    /// rollback reads the step's own capture and the step never got to record it
    /// on that host. The rollback would run with a placeholder in its place.
    fn lacks_capture(&self, r: StepRef, step: &PlanStep, c: &Completion) -> Option<String> {
        let name = &step.capture.as_ref()?.name;
        let caps = self.captures.lock().unwrap_or_else(|p| p.into_inner());
        let have = match step.local {
            true => caps.global.contains_key(name),
            false => caps
                .hosts
                .get(&c.host)
                .is_some_and(|m| m.contains_key(name)),
        };
        drop(caps);
        if have {
            return None;
        }
        let host = (!step.local).then_some(c.host.as_str());
        let shown = self
            .render(r, host, crate::plan::Reveal::Masked, c.batch)
            .ok()?;
        let mark = format!("<captured: {name}");
        shown
            .rollback
            .iter()
            .any(|l| l.contains(&mark))
            .then(|| format!("`{name}`, which the step never captured there"))
    }

    /// Undoes one step on hosts that each completed it once (in one batch).
    pub(super) async fn undo_round(
        &self,
        r: StepRef,
        index: usize,
        step: &PlanStep,
        round: &[Completion],
        batch: Option<usize>,
    ) -> Result<Vec<(String, String)>, ExecError> {
        let mut failures = Vec::new();
        let hosts: Vec<String> = round.iter().map(|c| c.host.clone()).collect();
        let batch_of = |h: &str| round.iter().find(|c| c.host == h).and_then(|c| c.batch);
        let label = match batch.or_else(|| round.iter().find_map(|c| c.batch)) {
            Some(b) => format!("[undo {} batch {b}]", index + 1),
            None => format!("[undo {}]", index + 1),
        };
        self.ui.step(&label, &step.name, hosts.len());
        // Undoing a stop is a start (and vice versa): the downtime report follows it.
        let service = step.service.clone().map(|mut s| {
            s.state = match s.state {
                ServiceState::Stopped => ServiceState::Started,
                ServiceState::Started => ServiceState::Stopped,
            };
            s
        });
        let results = self
            .on_hosts(Phase::Undo, index + 1, step, &hosts, service, |h| {
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

    pub(super) async fn undo_target(
        &self,
        r: StepRef,
        number: usize,
        step: &PlanStep,
        host: &str,
        batch: Option<usize>,
    ) -> Result<Done, ExecError> {
        let mut rec = Record::new(Phase::Undo, number, step, host, batch);
        let verdict = self.undo(r, &mut rec).await?;
        self.finish(rec, verdict).await
    }

    pub(super) async fn undo(
        &self,
        r: StepRef,
        rec: &mut Record<'_>,
    ) -> Result<Verdict, ExecError> {
        let (step, host) = (rec.step, rec.host);
        let (real, shown) = match self.render_pair(r, (!step.local).then_some(host), rec.batch) {
            Ok(pair) => pair,
            Err(e) => return Ok(Verdict::Failed(e)),
        };
        // The plan says whether the rollback gets the step's stdin (`Undo::with_stdin`).
        let stdin_of = |t: &Target| match step.undo.with_stdin {
            true => with_env_lines(t, t.stdin.as_deref()),
            false => with_env_lines(t, None),
        };
        rec.shown = Target {
            command: Some(shown.rollback.join("\n")),
            stdin: stdin_of(&shown),
            ..shown.clone()
        };
        let stdin = stdin_of(&real);
        self.ui.host_started(host);
        let Some(conn) = self.conn(step, host) else {
            return Ok(Verdict::Failed(Failure::NoConnection));
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
                        return Ok(Verdict::Failed(Failure::RollbackExit {
                            code: o.exit_code,
                            quote: error_line(&rec.err, &self.redactor),
                        }));
                    }
                }
                Err(e) => return Ok(Verdict::Failed(e)),
            }
        }
        Ok(Verdict::Ok)
    }
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
