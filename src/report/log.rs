//! The Markdown execution log, rendered from the journal alone.
//!
//! It is written to be attached to a change ticket: readable as plain text,
//! rendered well by GitHub/GitLab, and robust against whatever a host prints
//! (backticks, `|`, ANSI escapes, NUL bytes, CJK): fences are made longer than
//! any backtick run inside them, table cells are escaped, controls are shown.

use crate::record::events::{Event, Outcome, Phase, RunKind, Status, Time};
use crate::record::view::{Identity, RunView};
use crate::report::excerpt::{read_output, truncate};
use crate::report::markdown::{cell, code, fenced};
use crate::report::sections::{downtime, exceptions};
use crate::report::signature::{verify_section, SignerInfo, UNSIGNED_BANNER};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

pub(super) fn fmt_time(t: &Time) -> String {
    t.format("%Y-%m-%d %H:%M:%S %:z").to_string()
}

fn fmt_ms(ms: u64) -> String {
    crate::duration::format(std::time::Duration::from_millis(ms))
}

fn status_word(s: Status) -> &'static str {
    match s {
        Status::Ok => "ok",
        Status::Failed => "FAILED",
        Status::Skipped => "skipped",
        Status::TimedOut => "TIMED OUT",
    }
}

/// Renders the log. `signer` is who is about to sign it (stamped into the
/// "How to verify" section); `None` puts the UNSIGNED banner at the top.
pub fn render(events: &[Event], run_dir: &Path, signer: Option<&SignerInfo>) -> String {
    let mut o = String::new();
    let id = crate::record::view::dir_name(run_dir);
    let view = RunView::fold(&id, events);
    let Some(Identity {
        time: start,
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
        params,
        hosts,
        start_at,
        ..
    }) = view.start
    else {
        return "# opsrun execution log\n\n**INCOMPLETE**: the journal has no start event.\n"
            .to_string();
    };
    let finished = view.finish.map(|f| (f.time, f.outcome, f.message));
    let title = if kind == RunKind::Rollback {
        "rollback"
    } else {
        "execution log"
    };
    let _ = writeln!(
        o,
        "# opsrun {title}: {} on {}\n",
        cell(&runbook),
        cell(&inventory)
    );
    if signer.is_none() {
        let _ = writeln!(o, "> {UNSIGNED_BANNER}\n");
    }
    if finished.is_none() {
        let _ = writeln!(
            o,
            "> **INCOMPLETE**: the run ended without a final event (killed or crashed). Everything up to the last recorded event is below.\n"
        );
    }
    let last_time = view.last.unwrap_or(start);
    let end = finished.as_ref().map_or(last_time, |f| f.0);
    let result = match &finished {
        Some((_, Outcome::Succeeded, _)) => "SUCCEEDED".to_string(),
        Some((_, Outcome::Failed, m)) => format!("FAILED: {m}"),
        Some((_, Outcome::NotConfirmed, m)) => format!("NOT CONFIRMED: {m}"),
        Some((_, Outcome::Interrupted, m)) => format!("INTERRUPTED: {m}"),
        None => "INCOMPLETE (interrupted)".to_string(),
    };
    let dur = (end - start).to_std().unwrap_or_default();
    let rows: Vec<(&str, String)> = vec![
        (
            "Runbook",
            format!(
                "{}{}",
                cell(&runbook),
                runbook_version
                    .map(|v| format!(" (version {})", cell(&v)))
                    .unwrap_or_default()
            ),
        ),
        ("Runbook file", code(&runbook_path)),
        ("Runbook sha256", code(&runbook_sha256)),
        (
            "Inventory",
            format!("{} ({})", cell(&inventory), code(&inventory_path)),
        ),
        ("Inventory sha256", code(&inventory_sha256)),
        ("Environment", cell(&inventory)),
        ("Operator", cell(&operator)),
        ("Control host", cell(&control_host)),
        (
            "Ticket",
            ticket.as_deref().map(cell).unwrap_or_else(|| "none".into()),
        ),
        ("opsrun version", cell(&opsrun_version)),
        ("Run id", code(&run_id)),
        ("Start", fmt_time(&start)),
        ("End", fmt_time(&end)),
        ("Duration", crate::duration::format(dur)),
        ("Result", format!("**{}**", cell(&result))),
        ("Dry run", "no".into()),
    ];
    let _ = writeln!(o, "| | |\n|---|---|");
    for (k, v) in rows {
        let _ = writeln!(o, "| {k} | {v} |");
    }
    if let Some(of) = rollback_of {
        let _ = writeln!(o, "| Rolls back run | {} |", code(&of));
    }
    // Undone later by `opsrun rollback`: a run on record as succeeded may no longer
    // be in place. Rollbacks name the run by its directory.
    let id = if id.is_empty() { run_id } else { id };
    for r in crate::record::runs::rollbacks_of(crate::record::view::log_dir_of(run_dir), &id) {
        if r.outcome != Some(Outcome::NotConfirmed) {
            let _ = writeln!(
                o,
                "| Rolled back by | {} ({}) |",
                code(&r.id),
                cell(&r.result())
            );
        }
    }
    if let Some(s) = start_at {
        let _ = writeln!(o, "| Started at step | {} |", cell(&s));
    }
    if !params.is_empty() {
        let _ = writeln!(o, "\n## Parameters\n\n| name | value |\n|---|---|");
        for p in &params {
            let _ = writeln!(o, "| {} | {} |", cell(&p.name), code(p.shown()));
        }
    }
    let _ = writeln!(
        o,
        "\n## Hosts\n\n| host | address | login | connection |\n|---|---|---|---|"
    );
    for h in &hosts {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} |",
            cell(&h.name),
            cell(&h.address),
            cell(&h.login),
            cell(&h.connection)
        );
    }

    let gates: Vec<&Event> = events
        .iter()
        .filter(|e| matches!(e, Event::Gate { .. } | Event::Manual { .. }))
        .collect();
    if !gates.is_empty() {
        let _ = writeln!(o, "\n## Gates and manual steps\n\n| time | step | question | answer | by |\n|---|---|---|---|---|");
        for g in gates {
            match g {
                Event::Gate {
                    time,
                    step,
                    batch,
                    prompt,
                    answer,
                    confirmed,
                    by,
                } => {
                    let verdict = if *confirmed { "yes" } else { "**no**" };
                    let _ = writeln!(
                        o,
                        "| {} | {} | {} | {verdict} ({}) | {} |",
                        fmt_time(time),
                        match (step.as_deref(), batch) {
                            (Some(s), Some(b)) => format!("{} (batch {b})", cell(s)),
                            (Some(s), None) => cell(s),
                            (None, _) => "(start)".into(),
                        },
                        cell(prompt),
                        cell(answer),
                        cell(by)
                    );
                }
                Event::Manual {
                    time,
                    step,
                    instructions,
                    confirmed,
                    note,
                    by,
                } => {
                    let verdict = if *confirmed { "done" } else { "**not done**" };
                    let note = note
                        .as_deref()
                        .map(|n| format!(", note: {}", cell(n)))
                        .unwrap_or_default();
                    let _ = writeln!(
                        o,
                        "| {} | {} | manual: {} | {verdict}{note} | {} |",
                        fmt_time(time),
                        cell(step),
                        cell(instructions),
                        cell(by)
                    );
                }
                _ => {}
            }
        }
    }

    let conn_failures: Vec<(&String, &String)> = events
        .iter()
        .filter_map(|e| match e {
            Event::ConnectFailed { host, error, .. } => Some((host, error)),
            _ => None,
        })
        .collect();
    if !conn_failures.is_empty() {
        let _ = writeln!(o, "\n## Connection failures\n\n| host | error |\n|---|---|");
        for (h, e) in conn_failures {
            let _ = writeln!(o, "| {} | {} |", cell(h), cell(e));
        }
    }

    // The forward steps, then the rollback (undo or guide steps: one run has only
    // one kind). Rows of the Rollback section undo a forward step of the same
    // number and name, or are steps of the guide: labelled so, never as the forward row.
    let guide = events.iter().any(|e| {
        matches!(
            e,
            Event::StepStarted {
                phase: Phase::Guide,
                ..
            }
        )
    });
    for rollback in [false, true] {
        let label = |number: usize| match (rollback, guide) {
            (false, _) => number.to_string(),
            (true, false) => format!("undo {number}"),
            (true, true) => format!("R{number}"),
        };
        // Finished targets, and steps that had no host at all, step by step in the
        // order they ran; within a step, hosts in inventory order (the Hosts table's),
        // not in the order they happened to finish.
        let host_order: BTreeMap<&str, usize> = hosts
            .iter()
            .enumerate()
            .map(|(i, h)| (h.name.as_str(), i))
            .collect();
        let mut step_start: BTreeMap<usize, usize> = BTreeMap::new();
        let mut finished: Vec<((usize, usize), &Event)> = Vec::new();
        for (at, e) in events.iter().enumerate() {
            match e {
                Event::StepStarted {
                    phase: p,
                    number,
                    hosts,
                    ..
                } if p.is_rollback() == rollback => {
                    step_start.insert(*number, at);
                    if hosts.is_empty() {
                        finished.push(((at, 0), e));
                    }
                }
                Event::TargetFinished {
                    phase: p,
                    number,
                    host,
                    ..
                } if p.is_rollback() == rollback => {
                    let step = step_start.get(number).copied().unwrap_or(at);
                    let rank = host_order.get(host.as_str()).copied().unwrap_or(usize::MAX);
                    finished.push(((step, rank), e));
                }
                _ => {}
            }
        }
        finished.sort_by_key(|(key, _)| *key);
        let finished: Vec<&Event> = finished.into_iter().map(|(_, e)| e).collect();
        // A start without its finish; a host in every batch starts a step once per batch.
        let mut running: Vec<&Event> = Vec::new();
        for e in events {
            match e {
                Event::TargetStarted { phase: p, .. } if p.is_rollback() == rollback => running.push(e),
                Event::TargetFinished {
                    phase: p,
                    number,
                    host,
                    ..
                } if p.is_rollback() == rollback => {
                    if let Some(at) = running.iter().position(|s| {
                        matches!(s, Event::TargetStarted { number: n, host: h, .. } if n == number && h == host)
                    }) {
                        running.remove(at);
                    }
                }
                _ => {}
            }
        }
        if finished.is_empty() && running.is_empty() {
            if rollback {
                continue;
            }
            let _ = writeln!(o, "\n## Steps\n\nNo step ran.");
            continue;
        }
        let heading = if rollback { "Rollback" } else { "Steps" };
        let _ = writeln!(o, "\n## {heading}\n\n| # | step | host | status | start | duration | exit |\n|---|---|---|---|---|---|---|");
        for e in &finished {
            match e {
                Event::TargetFinished {
                    number,
                    step,
                    host,
                    status,
                    started,
                    millis,
                    exit_code,
                    batch,
                    ..
                } => {
                    let _ = writeln!(
                        o,
                        "| {} | {} | {} | {} | {} | {} | {} |",
                        label(*number),
                        cell(step),
                        cell(&with_batch(host, *batch)),
                        status_word(*status),
                        started.format("%H:%M:%S"),
                        fmt_ms(*millis),
                        exit_code.map_or("-".into(), |c| c.to_string())
                    );
                }
                Event::StepStarted {
                    number, step, time, ..
                } => {
                    let _ = writeln!(
                        o,
                        "| {} | {} | (no hosts) | skipped | {} | - | - |",
                        label(*number),
                        cell(step),
                        time.format("%H:%M:%S"),
                    );
                }
                _ => {}
            }
        }
        for e in &running {
            if let Event::TargetStarted {
                number,
                step,
                host,
                time,
                ..
            } = e
            {
                let _ = writeln!(
                    o,
                    "| {} | {} | {} | **INTERRUPTED** | {} | - | - |",
                    label(*number),
                    cell(step),
                    cell(host),
                    time.format("%H:%M:%S")
                );
            }
        }
        let _ = writeln!(o);
        let mut last_step = None;
        for e in finished.iter().chain(running.iter()) {
            details(&mut o, e, run_dir, &label, &mut last_step);
        }
    }

    downtime(&mut o, events);
    exceptions(&mut o, events);
    let outputs: Vec<&crate::record::events::Saved> = events
        .iter()
        .filter_map(|e| match e {
            Event::TargetFinished { stdout, stderr, .. } => Some([stdout, stderr]),
            _ => None,
        })
        .flatten()
        .flatten()
        .collect();
    verify_section(&mut o, "log.md", signer, &outputs);
    o
}

/// A host, and the batch when the step was rendered for one (`lb1 (batch 2)`).
fn with_batch(host: &str, batch: Option<usize>) -> String {
    match batch {
        Some(b) => format!("{host} (batch {b})"),
        None => host.to_string(),
    }
}

fn details(
    o: &mut String,
    e: &Event,
    run_dir: &Path,
    label: &dyn Fn(usize) -> String,
    last: &mut Option<(usize, String)>,
) {
    let (number, step) = match e {
        Event::TargetFinished { number, step, .. }
        | Event::TargetStarted { number, step, .. }
        | Event::StepStarted { number, step, .. } => (*number, step.clone()),
        _ => return,
    };
    if last.as_ref() != Some(&(number, step.clone())) {
        let _ = writeln!(o, "### {}. {}\n", label(number), cell(&step));
        *last = Some((number, step));
    }
    match e {
        Event::StepStarted { .. } => {
            let _ = writeln!(
                o,
                "No hosts: the step's host pattern matches none in this inventory; skipped.\n"
            );
        }
        Event::TargetStarted { host, command, .. } => {
            let _ = writeln!(o, "#### {}: INTERRUPTED (no result recorded)\n", cell(host));
            if let Some(c) = command {
                let _ = write!(o, "{}", fenced("console", &format!("[?@{host}]# {c}")));
            }
        }
        Event::TargetFinished {
            host,
            login,
            status,
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
        } => {
            let exit = exit_code.map(|c| format!(", exit {c}")).unwrap_or_default();
            let _ = writeln!(
                o,
                "#### {}: {}{exit}, {}\n",
                cell(&with_batch(host, *batch)),
                status_word(*status),
                fmt_ms(*millis)
            );
            if let Some(r) = reason {
                let _ = writeln!(o, "Reason: {}\n", cell(r));
            }
            if let Some(c) = command {
                let _ = write!(
                    o,
                    "{}",
                    fenced(
                        "console",
                        &crate::report::preview::prompt_line(login, c, "")
                    )
                );
                let _ = writeln!(o);
            }
            if let Some(s) = stdin {
                let _ = writeln!(o, "Standard input:\n");
                let _ = write!(o, "{}", fenced("text", s));
                let _ = writeln!(o);
            }
            if let Some(sum) = upload_sha256 {
                let _ = writeln!(o, "Uploaded file sha256: {}\n", code(sum));
            }
            if let Some(why) = upload_sha256_withheld {
                let _ = writeln!(o, "Uploaded file sha256: withheld: {}\n", cell(why));
            }
            for (label, saved) in [("stdout", stdout), ("stderr", stderr)] {
                if let Some(s) = saved {
                    let text = read_output(run_dir, &s.file);
                    let (shown, cut) = truncate(&text);
                    let cut_note = if cut { ", truncated here" } else { "" };
                    let _ = writeln!(
                        o,
                        "{label} ({}{cut_note}; full output {} sha256 {}):\n",
                        crate::plural::count(s.bytes as usize, "byte", "bytes"),
                        code(&s.file),
                        code(&s.sha256)
                    );
                    let _ = write!(o, "{}", fenced("text", &shown));
                    let _ = writeln!(o);
                }
            }
            for c in checks {
                let verdict = if c.ok { "passed" } else { "failed" };
                let _ = writeln!(
                    o,
                    "Check attempt {}: {verdict} (exit {}){}\n",
                    c.attempt,
                    c.exit_code.map_or("-".into(), |x| x.to_string()),
                    if c.output.trim().is_empty() {
                        String::new()
                    } else {
                        format!(": {}", code(c.output.trim()))
                    }
                );
            }
            if let Some((name, value)) = capture {
                let _ = writeln!(o, "Captured {} = {}\n", code(name), code(value));
            }
        }
        _ => {}
    }
}
