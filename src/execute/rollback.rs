//! Rollback policy: what is undone after a failure (`on_failure`), by
//! `opsrun rollback` of a recorded run, and the rollback guide, with the
//! preview the operator confirms first.

pub(super) use super::undo::text::{show_undo, undo_lines, undone_message};
use super::*;
use crate::plan::AnswerKind;

/// `opsrun rollback RUN`: the runbook's rollback guide, or the completed steps' own rollbacks.
pub(super) async fn rollback_recorded(
    engine: &mut Engine<'_>,
    recorded: &Recorded,
) -> Result<Finish, ExecError> {
    let guide = engine.plan.rollback_guide.len();
    if guide > 0 {
        engine.ui.line(&format!(
            "running the rollback guide of `{}` for run {}",
            crate::sanitize::escape_line(&engine.plan.runbook.name),
            recorded.id
        ));
        let refs: Vec<StepRef> = (0..guide).map(StepRef::Guide).collect();
        let label = |r: StepRef| match r {
            StepRef::Forward(i) | StepRef::Guide(i) => format!("[R{}/{guide}]", i + 1),
        };
        let batches = guide_batches(engine.planner, recorded);
        let hosts = guide_hosts(engine.planner, engine.plan, &batches);
        let running = super::settle::settle_hosts(engine, recorded, &hosts).await?;
        if !running.is_empty() {
            return Ok(still_running(recorded, &running));
        }
        if batches.is_empty() {
            return Ok(Finish {
                outcome: Outcome::Succeeded,
                message: format!(
                    "run {} reached no node: its rollback guide has nothing to restore",
                    recorded.id
                ),
                exit_code: exit::OK,
            });
        }
        for b in &batches {
            if let Some(b) = b {
                engine.ui.line(&batch_line(engine.planner, *b));
            }
            // Step by step, so that a stop says what the guide had already done to
            // this batch: a node left drained and stopped must not go unsaid.
            for (n, r) in refs.iter().enumerate() {
                let fut = engine.run_steps(std::slice::from_ref(r), *b, &label);
                if let Some(f) = fut.await? {
                    return Ok(Finish {
                        message: format!(
                            "rollback guide stopped: {}; run {} is NOT fully restored{}",
                            f.message,
                            recorded.id,
                            guide_done(engine.planner, engine.plan, &refs[..n], *b)
                        ),
                        ..f
                    });
                }
            }
        }
        return Ok(Finish {
            outcome: Outcome::Succeeded,
            message: format!(
                "rolled back run {} with the rollback guide ({}{})",
                recorded.id,
                count(guide, "step", "steps"),
                guide_where(engine.planner, engine.plan, &batches)
            ),
            exit_code: exit::OK,
        });
    }
    let undo = engine.undoable();
    let unchecked = crate::execute::undo::unchecked_note(engine.plan, &engine.in_flight());
    if undo.is_empty() {
        return Ok(Finish {
            outcome: Outcome::Succeeded,
            message: format!(
                "run {} has no completed step left to undo{unchecked}",
                recorded.id
            ),
            exit_code: exit::OK,
        });
    }
    let hosts = crate::execute::undo::undo_hosts(engine.planner, &engine.undo_batches());
    let running = super::settle::settle_hosts(engine, recorded, &hosts).await?;
    if !running.is_empty() {
        return Ok(still_running(recorded, &running));
    }
    let undone = engine.rollback().await?;
    if undone.failed.is_empty() && undone.halted.is_some() {
        return Ok(Finish {
            outcome: Outcome::Interrupted,
            message: format!(
                "{}{unchecked}",
                undone_message(engine.planner, &undone, &recorded.id)
            ),
            exit_code: exit::INTERRUPTED,
        });
    }
    Ok(Finish {
        outcome: if undone.failed.is_empty() {
            Outcome::Succeeded
        } else {
            Outcome::Failed
        },
        message: if undone.failed.is_empty() {
            format!(
                "rolled back {} of run {}: {}{unchecked}",
                count(undo.len(), "step", "steps"),
                recorded.id,
                undone_message(engine.planner, &undone, &recorded.id)
            )
        } else {
            format!(
                "{}{unchecked}",
                undone_message(engine.planner, &undone, &recorded.id)
            )
        },
        exit_code: if undone.failed.is_empty() {
            exit::OK
        } else {
            exit::STEP_FAILED
        },
    })
}

/// What the guide steps `done` did in `batch` before the guide stopped, as the
/// state a node is left in: `; batch 1/2 (oa1) is left as [R1] `Drain` (lb1) and
/// [R2] `Stop` (oa1) made it`. Empty when none had run there.
fn guide_done(planner: &Planner, plan: &Plan, done: &[StepRef], batch: Option<usize>) -> String {
    let mut did = Vec::new();
    for r in done {
        let StepRef::Guide(i) = *r else { continue };
        let step = &plan.rollback_guide[i];
        if step.is_manual() {
            continue;
        }
        let hosts = if step.local {
            vec!["this machine".to_string()]
        } else {
            planner.batch_hosts(*r, batch)
        };
        if !hosts.is_empty() {
            did.push(format!(
                "[R{}] `{}` ({})",
                i + 1,
                crate::sanitize::escape_line(&step.name),
                hosts.join(", ")
            ));
        }
    }
    if did.is_empty() {
        return String::new();
    }
    let which = match batch.and_then(|b| Some((b, planner.batches().get(b.checked_sub(1)?)?))) {
        Some((b, m)) if planner.batches().len() > 1 => {
            format!(
                "batch {b}/{} ({}) is",
                planner.batches().len(),
                m.join(", ")
            )
        }
        _ => "its hosts are".to_string(),
    };
    format!(
        "; {which} left as the guide's completed steps made it: {}",
        did.join(", ")
    )
}

/// `batch 1/2: oa1 (with lb1 in every batch)`: the line that opens a batch.
pub(super) fn batch_line(planner: &Planner, batch: usize) -> String {
    let all = planner.batches();
    let serial: std::collections::HashSet<&String> = all.iter().flatten().collect();
    let every: Vec<&str> = planner
        .run_hosts()
        .into_iter()
        .filter(|h| !serial.contains(&h.name))
        .map(|h| h.name.as_str())
        .collect();
    let also = if every.is_empty() {
        String::new()
    } else {
        format!(" (with {} in every batch)", every.join(", "))
    };
    let members = batch
        .checked_sub(1)
        .and_then(|i| all.get(i))
        .map_or(String::new(), |m| m.join(", "));
    format!("batch {batch}/{}: {members}{also}", all.len())
}

/// The batches the rollback guide runs for: with `serial`, the guide is rolling like
/// the run, one batch after the other, and only for the batches the run reached (a
/// node the run never touched has no backup to restore); `None`: all hosts at once.
pub(super) fn guide_batches(planner: &Planner, recorded: &Recorded) -> Vec<Option<usize>> {
    let all = planner.batches();
    if all.len() <= 1 {
        return vec![None];
    }
    let touched: std::collections::HashSet<&str> = recorded
        .events
        .iter()
        .filter_map(|e| match e {
            Event::TargetStarted {
                phase: events::Phase::Forward,
                host,
                ..
            } => Some(host.as_str()),
            _ => None,
        })
        .collect();
    (1..=all.len())
        .filter(|b| all[b - 1].iter().any(|h| touched.contains(h.as_str())))
        .map(Some)
        .collect()
}

/// The hosts the guide's steps run on, in inventory order.
pub(super) fn guide_hosts(
    planner: &Planner,
    plan: &Plan,
    batches: &[Option<usize>],
) -> Vec<String> {
    let mut on = std::collections::HashSet::new();
    for (i, step) in plan.rollback_guide.iter().enumerate() {
        let r = StepRef::Guide(i);
        if step.local {
            continue;
        }
        for b in batches {
            on.extend(planner.batch_hosts(r, *b));
        }
    }
    planner
        .run_hosts()
        .into_iter()
        .filter(|h| on.contains(&h.name))
        .map(|h| h.name.clone())
        .collect()
}

/// ` on oa1, oa2`, or with batches `, batch by batch: [oa1] [oa2], lb1 in every batch`.
pub(super) fn guide_where(planner: &Planner, plan: &Plan, batches: &[Option<usize>]) -> String {
    let hosts = guide_hosts(planner, plan, batches);
    if !batches.iter().any(Option::is_some) {
        return if hosts.is_empty() {
            String::new()
        } else {
            format!(" on {}", hosts.join(", "))
        };
    }
    let all = planner.batches();
    let shown: Vec<String> = batches
        .iter()
        .flatten()
        .filter_map(|b| all.get(b.checked_sub(1)?))
        .map(|m| format!("[{}]", m.join(", ")))
        .collect();
    let serial: std::collections::HashSet<&String> = all.iter().flatten().collect();
    let every: Vec<&str> = hosts
        .iter()
        .filter(|h| !serial.contains(h))
        .map(String::as_str)
        .collect();
    let also = if every.is_empty() {
        String::new()
    } else {
        format!(", {} in every batch", every.join(", "))
    };
    format!(", batch by batch: {}{also}", shown.join(" "))
}

/// The steps `opsrun rollback RUN` runs: the guide's, or the completed steps it undoes.
pub fn rollback_steps(plan: &Plan, recorded: &Recorded) -> Vec<StepRef> {
    let guide = plan.rollback_guide.len();
    if guide > 0 {
        return (0..guide).map(StepRef::Guide).collect();
    }
    let all = crate::execute::undo::with_in_flight(&recorded.completed, &recorded.in_flight);
    crate::execute::undo::undoable(plan, &all)
        .iter()
        .map(|c| StepRef::Forward(c.step))
        .collect()
}

/// What `opsrun rollback RUN` will do, as shown before its gate and by `--dry-run`:
/// each step, where, with the exact commands (secrets masked); and the gate's question.
pub fn rollback_preview(
    planner: &Planner,
    plan: &Plan,
    recorded: &Recorded,
) -> (Vec<String>, String) {
    let redactor = Redactor::new(planner.secret_values().iter().map(String::as_str));
    // Shown on the terminal (and the question asked there): escaped like host output.
    let inv = &crate::sanitize::escape_line(&planner.inventory.name);
    let name = &crate::sanitize::escape_line(&plan.runbook.name);
    let mut lines = Vec::new();
    let guide = plan.rollback_guide.len();
    if guide == 0 {
        let all = crate::execute::undo::with_in_flight(&recorded.completed, &recorded.in_flight);
        let undo = crate::execute::undo::undoable(plan, &all);
        let batches = crate::execute::undo::undo_batches(planner, plan, &all);
        lines.extend(undo_lines(
            planner,
            plan,
            &recorded.captures,
            &batches,
            &recorded.in_flight,
        ));
        let hosts = crate::execute::undo::undo_hosts(planner, &batches);
        let question = if undo.is_empty() {
            format!(
                "Roll back run `{}` ({name} on `{inv}`)? It has no completed step left to undo.",
                recorded.id
            )
        } else {
            // The operator answers for what was in flight too: the question says so.
            let flying = undo
                .iter()
                .filter(|c| recorded.in_flight.contains_key(&c.step))
                .count();
            format!(
                "Roll back run `{}` ({name} on `{inv}`): undo {}{} on {}?",
                recorded.id,
                count(undo.len(), "step", "steps"),
                match flying {
                    0 => String::new(),
                    n => format!(" ({n} in flight when the run stopped)"),
                },
                hosts.join(", ")
            )
        };
        return (lines.iter().map(|l| redactor.redact(l)).collect(), question);
    }
    let batches = guide_batches(planner, recorded);
    let rolling = planner.batches().len() > 1;
    lines.push(format!(
        "{} the rollback guide of `{name}` for run {}{}:",
        console::style("rollback:").yellow().bold(),
        recorded.id,
        if rolling {
            ", batch by batch as the run went"
        } else {
            ""
        }
    ));
    for b in &batches {
        if let Some(b) = b {
            lines.push(batch_line(planner, *b));
        }
        for i in 0..guide {
            guide_step_lines(planner, plan, recorded, StepRef::Guide(i), *b, &mut lines);
        }
    }
    for b in 1..=planner.batches().len() {
        if rolling && !batches.contains(&Some(b)) {
            lines.push(format!(
                "{}: not reached by run {}, left as it is",
                batch_line(planner, b),
                recorded.id
            ));
        }
    }
    let hosts = guide_hosts(planner, plan, &batches).join(", ");
    let question = if batches.is_empty() {
        format!(
            "Roll back run `{}` ({name} on `{inv}`)? It reached no node: its rollback guide has nothing to restore.",
            recorded.id
        )
    } else if recorded.rolled_back_by.is_empty() {
        format!(
            "Roll back run `{}` ({name} on `{inv}`) with its rollback guide, on {hosts}?",
            recorded.id
        )
    } else {
        format!(
            "Run `{}` was already rolled back (by {}). Run its rollback guide again, on {hosts}?",
            recorded.id,
            recorded.rolled_back_by.join(", by ")
        )
    };
    (lines.iter().map(|l| redactor.redact(l)).collect(), question)
}

/// One guide step in one batch: its name and hosts, gate, manual text and commands.
pub(super) fn guide_step_lines(
    planner: &Planner,
    plan: &Plan,
    recorded: &Recorded,
    r: StepRef,
    batch: Option<usize>,
    lines: &mut Vec<String>,
) {
    let StepRef::Guide(i) = r else { return };
    // Everything below is rendered, and may carry captured values: what a host printed.
    let start = lines.len();
    guide_step_rendered(planner, plan, recorded, r, i, batch, lines);
    for l in &mut lines[start..] {
        *l = escape_controls(l.as_bytes());
    }
}

pub(super) fn guide_step_rendered(
    planner: &Planner,
    plan: &Plan,
    recorded: &Recorded,
    r: StepRef,
    i: usize,
    batch: Option<usize>,
    lines: &mut Vec<String>,
) {
    let step = &plan.rollback_guide[i];
    let total = plan.rollback_guide.len();
    let hosts: Vec<String> = if step.local {
        vec![HostRef::Control.to_string()]
    } else {
        planner.batch_hosts(r, batch)
    };
    let manual = step.is_manual();
    if hosts.is_empty() && !manual {
        return;
    }
    let on = if hosts.is_empty() {
        String::new()
    } else {
        format!(" on {}", hosts.join(", "))
    };
    lines.push(format!("  [R{}/{total}] {}{on}", i + 1, step.name));
    let fail = |e: &dyn std::fmt::Display| format!("      (cannot render: {e})");
    if let Some(gate) = step.gates.of(AnswerKind::YesNo) {
        lines.push(format!("      gate: {} [y/N]", gate.question(batch)));
    }
    if manual {
        lines.push("      manual: the operator does this by hand and confirms:".into());
        let text = step
            .gates
            .of(AnswerKind::Done)
            .map_or("", |g| g.text.as_str());
        for l in text.lines() {
            lines.push(format!("        | {l}"));
        }
        return;
    }
    for h in &hosts {
        let host = (!step.local).then_some(h.as_str());
        match planner.render(r, host, Some(&recorded.captures), Reveal::Masked, batch) {
            Ok(t) => {
                let text = crate::report::preview::target_text(
                    &t,
                    step.retries,
                    &crate::duration::format(step.delay),
                );
                lines.extend(text.lines().map(|l| format!("  {l}")));
            }
            Err(e) => lines.push(fail(&e)),
        }
    }
}

/// After a failed step: show what will be undone, gate it, run it, say what is restored.
pub(super) async fn rollback_after_failure(
    engine: &mut Engine<'_>,
    failed: Finish,
) -> Result<Finish, ExecError> {
    let failed_step = *engine.failed_step.lock().unwrap_or_else(|p| p.into_inner());
    let policy = failed_step
        .map(|i| engine.plan.steps[i].on_failure)
        .unwrap_or_default();
    let undoable = engine.undoable();
    let unchecked = crate::execute::undo::unchecked_note(engine.plan, &engine.in_flight());
    if policy != OnFailure::Rollback || undoable.is_empty() {
        let why = if policy == OnFailure::Abort {
            "on_failure: abort"
        } else {
            "no completed step has a rollback"
        };
        return Ok(Finish {
            message: format!("{}; nothing rolled back ({why}){unchecked}", failed.message),
            ..failed
        });
    }
    engine.ui.line("");
    show_undo(engine);
    let hosts = crate::execute::undo::undo_hosts(engine.planner, &engine.undo_batches());
    let asked = engine.confirm(
        Some("(rollback)"),
        &format!(
            "Roll back {} on {}?",
            count(undoable.len(), "completed step", "completed steps"),
            hosts.join(", ")
        ),
    );
    // A terminal that hung up cannot answer: the failure stays the verdict,
    // and the message says how to roll back later.
    if let Err(ExecError::Gate(crate::execute::gate::GateError::HungUp { .. })) = &asked {
        return Ok(Finish {
            message: format!(
                "{}; the terminal hung up before the rollback could be confirmed: nothing restored; `opsrun rollback {}` undoes it",
                failed.message,
                crate::record::view::dir_name(engine.rec.dir())
            ),
            ..failed
        });
    }
    if !asked? {
        return Ok(Finish {
            outcome: Outcome::Failed,
            message: format!(
                "{}; rollback declined by the operator: nothing restored",
                failed.message
            ),
            exit_code: exit::STEP_FAILED,
        });
    }
    let undone = engine.rollback().await?;
    let run = crate::record::view::dir_name(engine.rec.dir());
    let message = if undone.failed.is_empty() && undone.halted.is_none() {
        format!(
            "{}; rolled back {}: {}{unchecked}",
            failed.message,
            count(undoable.len(), "step", "steps"),
            undone_message(engine.planner, &undone, &run)
        )
    } else {
        format!(
            "{}; {}{unchecked}",
            failed.message,
            undone_message(engine.planner, &undone, &run)
        )
    };
    Ok(Finish {
        outcome: Outcome::Failed,
        message,
        exit_code: exit::STEP_FAILED,
    })
}

/// `opsrun rollback` refused: an undo must not race the command it undoes.
fn still_running(recorded: &Recorded, running: &[String]) -> Finish {
    Finish {
        outcome: Outcome::Failed,
        message: format!(
            "nothing was undone: {}; stop it on the host (as the user it runs as), then run `opsrun rollback {}` again",
            running.join("; "),
            recorded.id
        ),
        exit_code: exit::STEP_FAILED,
    }
}
