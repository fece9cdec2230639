//! The Markdown execution log, rendered from the journal alone.
//!
//! It is written to be attached to a change ticket: readable as plain text,
//! rendered well by GitHub/GitLab, and robust against whatever a host prints
//! (backticks, `|`, ANSI escapes, NUL bytes, CJK): fences are made longer than
//! any backtick run inside them, table cells are escaped, controls are shown.
//! What a host printed (and every text that may quote it: a failure's message,
//! a reason, a question rendered with a captured value) is only ever inside a
//! code span or a fence, never the document's own Markdown.

use crate::record::events::{Event, Outcome, RunKind, Saved, Status, Time};
use crate::record::view::{Identity, Prompt, Row, RunView, StepTable, TargetResult};
use crate::report::excerpt::excerpt;
use crate::report::markdown::{cell, code, code_cell, fenced};
use crate::report::sections::{downtime, exceptions};
use crate::report::signature::{verify_section, Binding, SignerInfo, UNSIGNED_BANNER};
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
        Status::Interrupted => "INTERRUPTED",
    }
}

/// The undos of this rollback run that undid a step in flight when run `of`
/// stopped (it may have been partly applied): `` `Long` on web1, web2 ``. The
/// Rollback rows cannot tell them from the undos of completed steps.
fn undone_in_flight(events: &[Event], run_dir: &Path, of: &str) -> Vec<String> {
    let dir = crate::record::view::log_dir_of(run_dir).join(of);
    let Ok((original, _)) = crate::record::view::read(&dir) else {
        return Vec::new();
    };
    let mut per_step: Vec<(String, Vec<String>)> = Vec::new();
    for e in events {
        let Event::TargetFinished {
            phase: crate::record::events::Phase::Undo,
            status: Status::Ok,
            number,
            step,
            host,
            ..
        } = e
        else {
            continue;
        };
        let was = original
            .in_flight
            .get(&number.saturating_sub(1))
            .is_some_and(|hosts| hosts.iter().any(|c| c.host == *host));
        if !was {
            continue;
        }
        match per_step.iter_mut().find(|(s, _)| s == step) {
            Some((_, hosts)) => hosts.push(host.clone()),
            None => per_step.push((step.clone(), vec![host.clone()])),
        }
    }
    per_step
        .into_iter()
        .map(|(s, mut hosts)| {
            hosts.sort();
            format!("`{s}` on {}", hosts.join(", "))
        })
        .collect()
}

/// Renders the log. `signer` is who is about to sign it (stamped into the
/// "How to verify" section); `None` puts the UNSIGNED banner at the top.
/// `binding` (run, chain hash, cited files) is stated there too; its operator
/// is filled in from the journal.
pub fn render(
    events: &[Event],
    run_dir: &Path,
    signer: Option<&SignerInfo>,
    binding: Option<&Binding>,
) -> String {
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
        code(&runbook),
        code(&inventory)
    );
    if signer.is_none() {
        let _ = writeln!(o, "> {UNSIGNED_BANNER}\n");
    }
    if let Some(r) = binding.and_then(|b| b.rendered.as_ref()) {
        let _ = writeln!(
            o,
            "> **Rendered later**: {}.\n",
            crate::report::signature::rendered_later(r)
        );
    }
    if finished.is_none() {
        let _ = writeln!(
            o,
            "> **INCOMPLETE**: the run ended without a final event (killed or crashed). Everything up to the last recorded event is below.\n"
        );
    }
    let last_time = view.last.unwrap_or(start);
    let end = finished.as_ref().map_or(last_time, |f| f.0);
    // The verdict is opsrun's own word; the message quotes what a host printed.
    let verdict = |word: &str, m: &str| match m.is_empty() {
        true => format!("**{word}**"),
        false => format!("**{word}**: {}", code_cell(m)),
    };
    let result = match &finished {
        Some((_, Outcome::Succeeded, _)) => verdict("SUCCEEDED", ""),
        Some((_, Outcome::Failed, m)) => verdict("FAILED", m),
        Some((_, Outcome::NotConfirmed, m)) => verdict("NOT CONFIRMED", m),
        Some((_, Outcome::Interrupted, m)) => verdict("INTERRUPTED", m),
        None => verdict("INCOMPLETE (interrupted)", ""),
    };
    let dur = (end - start).to_std().unwrap_or_default();
    let rows: Vec<(&str, String)> = vec![
        (
            "Runbook",
            format!(
                "{}{}",
                code_cell(&runbook),
                runbook_version
                    .map(|v| format!(" (version {})", code_cell(&v)))
                    .unwrap_or_default()
            ),
        ),
        ("Runbook file", code_cell(&runbook_path)),
        ("Runbook sha256", code(&runbook_sha256)),
        (
            "Inventory",
            format!("{} ({})", code_cell(&inventory), code_cell(&inventory_path)),
        ),
        ("Inventory sha256", code(&inventory_sha256)),
        // What the operator (or a file) says, never the document's own Markdown.
        ("Environment", code_cell(&inventory)),
        ("Operator", code_cell(&operator)),
        ("Control host", code_cell(&control_host)),
        (
            "Ticket",
            ticket
                .as_deref()
                .map(code_cell)
                .unwrap_or_else(|| "none".into()),
        ),
        ("opsrun version", cell(&opsrun_version)),
        ("Run id", code(&run_id)),
        ("Start", fmt_time(&start)),
        ("End", fmt_time(&end)),
        ("Duration", crate::duration::format(dur)),
        ("Result", result),
        ("Dry run", "no".into()),
    ];
    let _ = writeln!(o, "| | |\n|---|---|");
    for (k, v) in rows {
        let _ = writeln!(o, "| {k} | {v} |");
    }
    if let Some(of) = rollback_of {
        let _ = writeln!(o, "| Rolls back run | {} |", code(&of));
        let flying = undone_in_flight(events, run_dir, &of);
        if !flying.is_empty() {
            let _ = writeln!(
                o,
                "| In flight when the run stopped | {}: undone here |",
                cell(&flying.join(", "))
            );
        }
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
            let _ = writeln!(o, "| {} | {} |", cell(&p.name), code_cell(p.shown()));
        }
    }
    // How ssh reached each host (`ssh -G` at planning): only when the run had ssh
    // hosts, so a log of local hosts keeps its four columns.
    let routes = hosts.iter().any(|h| h.ssh.is_some());
    let _ = writeln!(
        o,
        "\n## Hosts\n\n{}",
        if routes {
            "| host | address | login | HostName | port | jump | connection |\n|---|---|---|---|---|---|---|"
        } else {
            "| host | address | login | connection |\n|---|---|---|---|"
        }
    );
    for h in &hosts {
        let route = match (&h.ssh, routes) {
            (_, false) => String::new(),
            (Some(r), true) => format!(
                " {} | {} | {} |",
                cell(&r.hostname),
                r.port,
                cell(&if r.jump.is_empty() {
                    "—".to_string()
                } else {
                    r.jump.join(" → ")
                })
            ),
            (None, true) => " — | — | — |".to_string(),
        };
        let _ = writeln!(
            o,
            "| {} | {} | {} |{route} {} |",
            cell(&h.name),
            cell(&h.address),
            cell(&h.login),
            cell(&h.connection)
        );
    }

    let history = &view.history;
    gates(&mut o, &history.prompts);
    if !history.connect_failures.is_empty() {
        let _ = writeln!(o, "\n## Connection failures\n\n| host | error |\n|---|---|");
        for f in &history.connect_failures {
            let _ = writeln!(o, "| {} | {} |", cell(&f.host), code_cell(&f.error));
        }
    }

    // The forward steps, then the rollback (undo or guide steps: one run has only
    // one kind).
    if history.steps.is_empty() {
        let _ = writeln!(o, "\n## Steps\n\nNo step ran.");
    }
    // Rows of the Rollback section undo a forward step of the same number and
    // name, or are steps of the guide: labelled so, never as the forward row.
    let rollback_label = if history.rollback_is_guide {
        "R"
    } else {
        "undo "
    };
    for (heading, table, label) in [
        ("Steps", &history.steps, ""),
        ("Rollback", &history.rollback, rollback_label),
    ] {
        steps_table(&mut o, heading, table, label, run_dir);
    }

    if let Some(rows) = &history.downtime {
        downtime(&mut o, rows);
    }
    exceptions(&mut o, &history.exceptions);
    let outputs: Vec<&Saved> = history.outputs.iter().collect();
    let binding = binding.map(|b| Binding {
        operator: operator.clone(),
        ..b.clone()
    });
    verify_section(&mut o, "log.md", signer, &outputs, binding.as_ref());
    o
}

/// The "Gates and manual steps" section: every question asked, and its answer.
fn gates(o: &mut String, prompts: &[Prompt]) {
    if prompts.is_empty() {
        return;
    }
    let _ = writeln!(o, "\n## Gates and manual steps\n\n| time | step | question | answer | by |\n|---|---|---|---|---|");
    for p in prompts {
        match p {
            Prompt::Gate {
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
                    code_cell(prompt),
                    cell(answer),
                    cell(by)
                );
            }
            Prompt::Manual {
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
                    code_cell(instructions),
                    cell(by)
                );
            }
        }
    }
}

/// One steps table (`Steps` or `Rollback`) and the per-host details under it;
/// nothing for an empty table.
fn steps_table(o: &mut String, heading: &str, table: &StepTable, label: &str, run_dir: &Path) {
    if table.is_empty() {
        return;
    }
    let _ = writeln!(o, "\n## {heading}\n\n| # | step | host | status | start | duration | exit |\n|---|---|---|---|---|---|---|");
    for row in &table.rows {
        let _ = writeln!(o, "{}", table_row(row, label));
    }
    for u in &table.interrupted {
        let _ = writeln!(
            o,
            "| {label}{} | {} | {} | **INTERRUPTED** | {} | - | - |",
            u.number,
            cell(&u.step),
            cell(&u.host),
            u.time.format("%H:%M:%S")
        );
    }
    let _ = writeln!(o);
    let mut last_step = None;
    for row in &table.rows {
        let (number, step) = match row {
            Row::NoHosts { number, step, .. } => (*number, step),
            Row::Target(t) => (t.number, &t.step),
        };
        step_heading(o, label, number, step, &mut last_step);
        match row {
            Row::NoHosts { .. } => {
                let _ = writeln!(
                    o,
                    "No hosts: the step's host pattern matches none in this inventory; skipped.\n"
                );
            }
            Row::Target(t) => target_details(o, t, run_dir),
        }
    }
    for u in &table.interrupted {
        step_heading(o, label, u.number, &u.step, &mut last_step);
        let _ = writeln!(
            o,
            "#### {}: INTERRUPTED (no result recorded)\n",
            cell(&u.host)
        );
        if let Some(c) = &u.command {
            let _ = write!(o, "{}", fenced("console", &format!("[?@{}]# {c}", u.host)));
        }
    }
}

/// One row of a steps table: a host's result of a step, or a step with no host;
/// `label` goes before the step's number (`undo 2`, `R1`).
fn table_row(row: &Row, label: &str) -> String {
    match row {
        Row::Target(t) => format!(
            "| {label}{} | {} | {} | {} | {} | {} | {} |",
            t.number,
            cell(&t.step),
            cell(&with_batch(&t.host, t.batch)),
            status_word(t.status),
            t.started.format("%H:%M:%S"),
            fmt_ms(t.millis),
            t.exit_code.map_or("-".into(), |c| c.to_string())
        ),
        Row::NoHosts { number, step, time } => format!(
            "| {label}{number} | {} | (no hosts) | skipped | {} | - | - |",
            cell(step),
            time.format("%H:%M:%S"),
        ),
    }
}

/// `### N. step` (`### undo N. step`, ...) before the first detail of each step.
fn step_heading(
    o: &mut String,
    label: &str,
    number: usize,
    step: &str,
    last: &mut Option<(usize, String)>,
) {
    if last
        .as_ref()
        .is_some_and(|(n, s)| *n == number && s == step)
    {
        return;
    }
    let _ = writeln!(o, "### {label}{number}. {}\n", cell(step));
    *last = Some((number, step.to_string()));
}

/// A host, and the batch when the step was rendered for one (`lb1 (batch 2)`).
fn with_batch(host: &str, batch: Option<usize>) -> String {
    match batch {
        Some(b) => format!("{host} (batch {b})"),
        None => host.to_string(),
    }
}

/// A host's result of a step: command, input, outputs (cut), checks, capture.
fn target_details(o: &mut String, t: &TargetResult, run_dir: &Path) {
    let TargetResult {
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
    } = t;
    let exit = exit_code.map(|c| format!(", exit {c}")).unwrap_or_default();
    let _ = writeln!(
        o,
        "#### {}: {}{exit}, {}\n",
        cell(&with_batch(host, *batch)),
        status_word(*status),
        fmt_ms(*millis)
    );
    if let Some(r) = reason {
        let _ = writeln!(o, "Reason: {}\n", code(r));
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
            let (shown, cut) = excerpt(run_dir, &s.file);
            let mut cut_note = if cut { ", truncated here" } else { "" }.to_string();
            if let Some(why) = &s.cut {
                // The file itself is incomplete: say so before anyone trusts it.
                cut_note.push_str(&format!("; NOT COMPLETE, the log disk is full: {why}"));
            }
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
