//! What an undo says: the list shown before it runs (`undo_lines`), and what it
//! did and left applied (`undone_message`).

use super::super::engine::Engine;
use super::super::rollback::batch_line;
use crate::plan::{Captures, Plan, Planner, Reveal, StepRef};
use crate::sanitize::escape_controls;
use std::collections::BTreeMap;

/// Says what a rollback undid, and what it could not: `undone on oa1: `Start the
/// application`, ...` names the steps undone ("restored oa1 (`Start ...`)" read as
/// if the application had been started again).
///
/// After a failed undo it says what is still applied on each host (the failed
/// undo's step and the earlier ones not run after it), and that `opsrun rollback
/// RUN` (`run`) retries from there.
pub(in crate::execute) fn undone_message(
    planner: &Planner,
    undone: &crate::execute::undo::Undone,
    run: &str,
) -> String {
    let by_hand = if undone.by_hand.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = undone
            .by_hand
            .iter()
            .map(|(s, h, why)| format!("`{s}` on {h} ({why})"))
            .collect();
        format!(
            "; in flight when the run stopped, its rollback cannot be rendered: check by hand: {}",
            list.join(", ")
        )
    };
    if let (true, Some(signal)) = (undone.failed.is_empty(), undone.halted) {
        let done = if undone.ok.is_empty() {
            "nothing undone".to_string()
        } else {
            format!("undone {}", undone.summary(planner))
        };
        return format!(
            "ROLLBACK STOPPED by {signal}: {done}; still applied: {}{by_hand}; `opsrun rollback {run}` goes on from there",
            still_applied(planner, &undone.still).join("; ")
        );
    }
    if undone.failed.is_empty() {
        if undone.ok.is_empty() {
            return format!("nothing undone{by_hand}");
        }
        return format!("undone {}{by_hand}", undone.summary(planner));
    }
    // One entry per step, in the order they were undone, hosts in inventory order:
    // not in the order the hosts happened to fail.
    let order: Vec<&str> = planner
        .run_hosts()
        .iter()
        .map(|h| h.name.as_str())
        .collect();
    let mut per_step: Vec<(&str, Vec<&str>)> = Vec::new();
    for (s, h) in &undone.failed {
        match per_step.iter_mut().find(|(n, _)| n == s) {
            Some((_, hosts)) => hosts.push(h),
            None => per_step.push((s, vec![h])),
        }
    }
    let list: Vec<String> = per_step
        .iter_mut()
        .map(|(s, hosts)| {
            hosts.sort_by_key(|h| order.iter().position(|o| o == h).unwrap_or(usize::MAX));
            hosts.dedup();
            format!("`{s}` on {}", hosts.join(", "))
        })
        .collect();
    let still = still_applied(planner, &undone.still);
    let done = if undone.ok.is_empty() {
        String::new()
    } else {
        format!("; undone {}", undone.summary(planner))
    };
    format!(
        "ROLLBACK INCOMPLETE: not restored: {}; still applied: {}{done}{by_hand}; `opsrun rollback {run}` retries from the failed undo",
        list.join(", "),
        still.join("; ")
    )
}

/// What is still applied, per host in inventory order (hosts left with the same
/// steps share one entry, as in the summary): `on web1, web2: `Two`, `One``.
fn still_applied(planner: &Planner, left: &[(String, String)]) -> Vec<String> {
    let order: Vec<&str> = planner
        .run_hosts()
        .iter()
        .map(|h| h.name.as_str())
        .collect();
    let mut still: Vec<(&str, Vec<String>)> = Vec::new();
    for (s, h) in left {
        let what = format!("`{s}`");
        match still.iter_mut().find(|(host, _)| host == h) {
            Some((_, steps)) => steps.push(what),
            None => still.push((h, vec![what])),
        }
    }
    still.sort_by_key(|(h, _)| order.iter().position(|o| o == h).unwrap_or(usize::MAX));
    // Hosts left with the same steps share one entry, as in the summary.
    let mut same: Vec<(Vec<&str>, Vec<String>)> = Vec::new();
    for (h, steps) in still {
        match same.iter_mut().find(|(_, s)| *s == steps) {
            Some((hosts, _)) => hosts.push(h),
            None => same.push((vec![h], steps)),
        }
    }
    same.iter()
        .map(|(hosts, steps)| format!("on {}: {}", hosts.join(", "), steps.join(", ")))
        .collect()
}

pub(in crate::execute) fn show_undo(engine: &Engine<'_>) {
    let caps = engine
        .captures
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let in_flight = engine.in_flight();
    for l in undo_lines(
        engine.planner,
        engine.plan,
        &caps,
        &engine.undo_batches(),
        &in_flight,
    ) {
        engine.ui.line(&engine.redactor.redact(&l));
    }
}

/// The completed steps an undo will run, in order (batch by batch for a rolling
/// run), with their rollback commands; the hosts where a step was in flight when
/// the run stopped are said so, and in-flight steps nothing can undo are listed.
pub(in crate::execute) fn undo_lines(
    planner: &Planner,
    plan: &Plan,
    caps: &Captures,
    batches: &[crate::execute::undo::UndoBatch],
    in_flight: &BTreeMap<usize, Vec<crate::plan::Completion>>,
) -> Vec<String> {
    let rolling = batches.iter().any(|b| b.batch.is_some());
    let mut lines = vec![format!(
        "{} these completed steps will be undone, in this order{}:",
        console::style("rollback:").yellow().bold(),
        if rolling {
            ", batch by batch, the last batch first"
        } else {
            ""
        }
    )];
    for part in batches {
        if let Some(b) = part.batch {
            lines.push(format!("  undo {}", batch_line(planner, b)));
        }
        for (index, round) in &part.steps {
            let step = &plan.steps[*index];
            let flying = |h: &str| {
                in_flight
                    .get(index)
                    .is_some_and(|hs| hs.iter().any(|c| c.host == h))
            };
            let hosts: Vec<String> = round
                .iter()
                .map(|h| match flying(&h.host) {
                    true => format!("{} (in flight when the run stopped)", h.host),
                    false => h.host.clone(),
                })
                .collect();
            lines.push(format!(
                "  [{}] {} on {}",
                index + 1,
                crate::sanitize::escape_line(&step.name),
                hosts.join(", ")
            ));
            for h in round {
                let host = (!step.local).then_some(h.host.as_str());
                if let Ok(t) = planner.render(
                    StepRef::Forward(*index),
                    host,
                    Some(caps),
                    Reveal::Masked,
                    h.batch,
                ) {
                    // In flight before it captured what its rollback reads: not run.
                    let own = step
                        .capture
                        .as_ref()
                        .map(|c| format!("<captured: {}", c.name));
                    if flying(&h.host)
                        && own
                            .as_ref()
                            .is_some_and(|m| t.rollback.iter().any(|l| l.contains(m.as_str())))
                    {
                        lines.push(format!(
                            "      {}: not run, its rollback reads what the step never captured there: check by hand",
                            h.host
                        ));
                        continue;
                    }
                    for r in &t.rollback {
                        // A command may carry a captured value: what a host printed.
                        let line = crate::report::preview::prompt_line(&t.login, r, "      ");
                        lines.push(escape_controls(line.as_bytes()));
                    }
                }
            }
        }
    }
    for (i, hosts) in crate::execute::undo::unchecked(plan, in_flight) {
        lines.push(format!(
            "  [{}] {} on {}: in flight when the run stopped, no rollback: check by hand",
            i + 1,
            crate::sanitize::escape_line(&plan.steps[i].name),
            hosts.join(", ")
        ));
    }
    lines
}
