//! The plan as a Markdown document (`--dry-run --format markdown --output`),
//! signable like a log, for approval before the run.

use super::preview::*;
use crate::load::inventory::ConfirmMode;
use crate::plan::{AnswerKind, Plan, PlanStep};
use std::fmt::Write as _;

/// The plan as Markdown, for a change request: the same content as `text`,
/// escaped like the execution log, with a "How to verify" section naming the
/// signer (`None`: an UNSIGNED banner instead). `file` is the document's own name.
pub fn markdown(
    plan: &Plan,
    file: &str,
    signer: Option<&crate::report::signature::SignerInfo>,
) -> String {
    use crate::report::markdown::{cell, code, code_cell};
    let mut o = String::new();
    let rb = &plan.runbook;
    let inv = &plan.inventory;
    let r = &plan.run;
    let _ = writeln!(
        o,
        "# opsrun plan: {} on {}\n",
        code(&rb.name),
        code(&inv.name)
    );
    let _ = writeln!(
        o,
        "> **DRY RUN**: nothing has been executed and no connection was opened. This is exactly what the run will send, host by host.\n"
    );
    if signer.is_none() {
        let _ = writeln!(o, "> {}\n", crate::report::signature::UNSIGNED_BANNER);
    }
    if let Some(d) = &rb.description {
        let _ = writeln!(o, "{}\n", cell(d.trim()));
    }
    let rows: Vec<(&str, String)> = vec![
        (
            "Runbook",
            format!(
                "{}{}",
                code_cell(&rb.name),
                rb.version
                    .as_ref()
                    .map(|v| format!(" (version {})", code_cell(v)))
                    .unwrap_or_default()
            ),
        ),
        ("Runbook file", code_cell(&rb.path)),
        ("Runbook sha256", code(&rb.sha256)),
        (
            "Inventory",
            format!("{} ({})", code_cell(&inv.name), code_cell(&inv.path)),
        ),
        ("Inventory sha256", code(&inv.sha256)),
        // What the operator (or a file) says, never the document's own Markdown.
        ("Environment", code_cell(&inv.name)),
        ("Operator", code_cell(&r.operator)),
        (
            "Ticket",
            r.ticket
                .as_deref()
                .map(code_cell)
                .unwrap_or_else(|| "none".into()),
        ),
        ("opsrun version", cell(env!("CARGO_PKG_VERSION"))),
        ("Planned run id", code(&r.id)),
        ("Dry run", "**yes**".into()),
    ];
    let _ = writeln!(o, "| | |\n|---|---|");
    for (k, v) in rows {
        let _ = writeln!(o, "| {k} | {v} |");
    }
    if !plan.params.is_empty() {
        let _ = writeln!(
            o,
            "\n## Parameters\n\n| name | value | from |\n|---|---|---|"
        );
        for p in &plan.params {
            let value = match &p.value {
                Some(v) => code_cell(v),
                None if p.secret => "(asked for at run time)".into(),
                None => "(not set)".into(),
            };
            let _ = writeln!(o, "| {} | {value} | {} |", cell(&p.name), cell(p.source));
        }
    }
    let _ = writeln!(
        o,
        "\n## Hosts\n\n| host | address | login | groups |\n|---|---|---|---|"
    );
    for h in &plan.hosts {
        // Where ssh really goes (`ssh -G`): an alias's HostName, port and jump hosts.
        let address = match &h.resolved {
            Some(r) => r.destination(),
            None => {
                let port = h.endpoint.port.map(|p| format!(":{p}")).unwrap_or_default();
                format!("{}{port}", h.endpoint.address)
            }
        };
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} |",
            cell(&h.name),
            cell(&address),
            cell(&h.login),
            cell(&h.groups.join(", "))
        );
    }
    if plan.batches.len() > 1 {
        let b: Vec<String> = plan
            .batches
            .iter()
            .map(|b| format!("[{}]", cell(&b.join(", "))))
            .collect();
        let _ = writeln!(
            o,
            "\nBatches: {} (the step list runs batch by batch).",
            b.join(" ")
        );
    }
    match plan.start_gate {
        ConfirmMode::Typed => {
            let _ = writeln!(
                o,
                "\n**Gate at the start**: the operator types {} before anything runs.",
                code(&inv.name)
            );
        }
        ConfirmMode::Yes => {
            let _ = writeln!(
                o,
                "\n**Gate at the start**: the operator confirms before anything runs."
            );
        }
        ConfirmMode::None => {}
    }
    let _ = writeln!(o, "\n## Steps");
    for s in &plan.steps {
        md_step(&mut o, s, &s.number.to_string());
    }
    let _ = writeln!(o, "\n## Rollback guide\n");
    if plan.rollback_guide.is_empty() {
        let _ = writeln!(
            o,
            "None: `opsrun rollback RUN` undoes the completed steps with their own `rollback`."
        );
    } else {
        let _ = writeln!(o, "Run later with `opsrun rollback RUN`.");
        for s in &plan.rollback_guide {
            md_step(&mut o, s, &format!("R{}", s.number));
        }
    }
    crate::report::signature::verify_section(&mut o, file, signer, &[], None);
    o
}

pub(super) fn md_step(o: &mut String, s: &PlanStep, number: &str) {
    use crate::report::markdown::{cell, code, fenced};
    let _ = writeln!(o, "\n### {number}. {}\n", cell(&s.name));
    let mut notes = vec![format!("on: {}", code(&s.on.to_string()))];
    if s.skipped_by_start_at {
        notes.push("**skipped: before --start-at**".into());
    }
    if let Some(t) = s.timeout {
        notes.push(format!("timeout {}", cell(&crate::duration::format(t))));
    }
    if let Some(c) = &s.capture {
        notes.push(format!("captures {}", code(&c.name)));
    }
    if s.expect.exit != [0] {
        notes.push(format!("exit codes {:?} count as success", s.expect.exit));
    }
    if s.on_failure != crate::plan::OnFailure::Rollback {
        notes.push(format!("on failure: {:?}", s.on_failure).to_lowercase());
    }
    if let Some(svc) = &s.service {
        notes.push(format!(
            "service {} {}",
            code(&svc.name),
            format!("{:?}", svc.state).to_lowercase()
        ));
    }
    let _ = writeln!(o, "{}\n", notes.join("; "));
    for gate in &s.gates.0 {
        match gate.answer {
            AnswerKind::YesNo => {
                for ask in gate.asks.iter().filter(|a| a.batch.is_some()) {
                    let q = format!("{} {}", gate.text, ask.hosts);
                    // Rendered: a resume's plan fills in what a host printed (captures).
                    let _ = writeln!(o, "**Gate**: {} [y/N]\n", code(&q));
                }
            }
            AnswerKind::Done => {
                let _ = writeln!(
                    o,
                    "**Manual**: the operator does this by hand, confirms and may note a ticket id:\n"
                );
                let _ = writeln!(o, "{}", fenced("text", &gate.text));
            }
        }
    }
    if s.targets.is_empty() && s.gates.of(AnswerKind::Done).is_none() {
        let _ = writeln!(o, "No hosts.\n");
    }
    for t in &s.targets {
        if let Some(why) = &t.skipped {
            let _ = writeln!(o, "- {}: skipped ({})\n", cell(t.host.name()), code(why));
            continue;
        }
        let _ = writeln!(o, "#### {}\n", cell(t.host.name()));
        if let Some(w) = &t.when_at_run_time {
            let _ = writeln!(
                o,
                "Runs only if {} (decided at run time: it reads a capture).\n",
                code(w)
            );
        }
        if let Some(u) = &t.upload {
            let _ = writeln!(
                o,
                "Upload {}{} to {}.\n",
                code(&u.src),
                if u.templated {
                    ", rendered as a template for this host,"
                } else {
                    ""
                },
                code(&format!("{}:{}", t.host, u.dest))
            );
            if let Some(text) = &u.content {
                let _ = writeln!(o, "Rendered file:\n\n{}", fenced("text", text));
            }
        }
        if let Some(c) = &t.command {
            let _ = writeln!(o, "{}", fenced("console", &prompt_line(&t.login, c, "")));
        }
        if let Some(lines) = &t.env_stdin {
            let _ = writeln!(
                o,
                "Read first from standard input (values that hold a secret):\n\n{}",
                fenced("text", lines)
            );
        }
        if let (Some(stdin), None) = (&t.stdin, &t.upload) {
            let _ = writeln!(o, "Standard input:\n\n{}", fenced("text", stdin));
        }
        for (label, re) in expectations(t) {
            let _ = writeln!(o, "Expect {label}: {}\n", code(&format!("/{re}/")));
        }
        if let Some(c) = &t.check {
            let label = if s.retries > 0 {
                format!(
                    "Check (up to {} tries, {} apart):",
                    s.retries + 1,
                    cell(&crate::duration::format(s.delay))
                )
            } else {
                "Check:".to_string()
            };
            let _ = writeln!(
                o,
                "{label}\n\n{}",
                fenced("console", &prompt_line(&t.login, c, ""))
            );
        }
        for r in &t.rollback {
            let _ = writeln!(
                o,
                "Rollback:\n\n{}",
                fenced("console", &prompt_line(&t.login, r, ""))
            );
        }
    }
}
