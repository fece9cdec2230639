//! Printing a plan: the text a `--dry-run` shows and the JSON it emits for tooling.

use crate::load::inventory::ConfirmMode;
use crate::plan::{Plan, PlanStep, Target};
use console::style;
use std::fmt::Write as _;

/// `[user@host]# command`, continuation lines indented under the command.
pub fn prompt_line(login: &str, command: &str, indent: &str) -> String {
    let head = format!("[{login}]# ");
    let pad = " ".repeat(head.chars().count());
    let mut out = String::new();
    for (i, line) in command.lines().enumerate() {
        if i == 0 {
            let _ = write!(out, "{indent}{head}{line}");
        } else {
            let _ = write!(out, "\n{indent}{pad}{line}");
        }
    }
    if command.is_empty() {
        let _ = write!(out, "{indent}{head}");
    }
    out
}

fn indented(text: &str, indent: &str) -> String {
    text.trim_end()
        .lines()
        .map(|l| format!("{indent}{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn text(plan: &Plan) -> String {
    let mut o = String::new();
    let rb = &plan.runbook;
    let _ = writeln!(
        o,
        "{}",
        style("DRY RUN: nothing is executed and no connection is opened.").bold()
    );
    let _ = writeln!(o);
    let version = rb
        .version
        .as_ref()
        .map(|v| format!(" version {v}"))
        .unwrap_or_default();
    let _ = writeln!(
        o,
        "runbook    {}{version}  {}  sha256:{}",
        style(&rb.name).bold(),
        rb.path,
        rb.sha256
    );
    if let Some(d) = &rb.description {
        let _ = writeln!(
            o,
            "           {}",
            d.trim().lines().next().unwrap_or_default()
        );
    }
    let inv = &plan.inventory;
    let _ = writeln!(
        o,
        "inventory  {}  {}  sha256:{}",
        style(&inv.name).bold(),
        inv.path,
        inv.sha256
    );
    let r = &plan.run;
    let _ = writeln!(
        o,
        "run        {}  (stamp {}, operator {}, ticket {})",
        r.id,
        r.stamp,
        r.operator,
        r.ticket.as_deref().unwrap_or("none")
    );
    for (i, p) in plan.params.iter().enumerate() {
        let label = if i == 0 { "params" } else { "" };
        let value = match &p.value {
            Some(v) => v.clone(),
            None if p.secret => "(asked for at run time)".into(),
            None => "(not set)".into(),
        };
        let _ = writeln!(o, "{label:<10} {}={value}  ({})", p.name, p.source);
    }
    let hosts: Vec<String> = plan
        .hosts
        .iter()
        .map(|h| {
            let port = h.endpoint.port.map(|p| format!(":{p}")).unwrap_or_default();
            format!("{} ({}{port})", h.name, h.endpoint.address)
        })
        .collect();
    let _ = writeln!(
        o,
        "hosts      {}",
        if hosts.is_empty() {
            "none".into()
        } else {
            hosts.join(", ")
        }
    );
    if plan.batches.len() > 1 {
        let b: Vec<String> = plan
            .batches
            .iter()
            .map(|b| format!("[{}]", b.join(", ")))
            .collect();
        let serial: Vec<&String> = plan.batches.iter().flatten().collect();
        let every: Vec<&str> = plan
            .hosts
            .iter()
            .filter(|h| !serial.contains(&&h.name))
            .map(|h| h.name.as_str())
            .collect();
        let also = if every.is_empty() {
            String::new()
        } else {
            format!("; {} in every batch", every.join(", "))
        };
        let _ = writeln!(
            o,
            "batches    {} (the step list runs batch by batch{also})",
            b.join(" ")
        );
    }
    match plan.start_gate {
        ConfirmMode::Typed => {
            let _ = writeln!(
                o,
                "\n{} the operator types `{}` before anything runs",
                style("gate:").yellow().bold(),
                inv.name
            );
        }
        ConfirmMode::Yes => {
            let _ = writeln!(
                o,
                "\n{} the operator confirms before anything runs",
                style("gate:").yellow().bold()
            );
        }
        ConfirmMode::None => {}
    }
    let total = plan.steps.len();
    for s in &plan.steps {
        step(&mut o, s, &format!("{}/{total}", s.number), &plan.batches);
    }
    if plan.rollback_guide.is_empty() {
        let _ = writeln!(
            o,
            "\nrollback guide: none (`opsrun rollback RUN` undoes the completed steps with their own `rollback`)"
        );
    } else {
        let how = if plan.batches.len() > 1 {
            "rollback guide (run later with `opsrun rollback RUN`, batch by batch like the run):"
        } else {
            "rollback guide (run later with `opsrun rollback RUN`):"
        };
        let _ = writeln!(o, "\n{}", style(how).bold());
        for s in &plan.rollback_guide {
            step(&mut o, s, &format!("R{}", s.number), &plan.batches);
        }
    }
    o
}

fn step(o: &mut String, s: &PlanStep, number: &str, batches: &[Vec<String>]) {
    let _ = writeln!(o);
    let mut head = format!(
        "{} {}  on: {}",
        style(format!("[{number}]")).cyan().bold(),
        style(&s.name).bold(),
        s.on
    );
    if s.skipped_by_start_at {
        head.push_str("  (skipped: before --start-at)");
    }
    let _ = writeln!(o, "{head}");
    let mut notes = Vec::new();
    if let Some(t) = &s.timeout {
        notes.push(format!("timeout {t}"));
    }
    if let Some(c) = &s.capture {
        notes.push(format!("captures `{c}`"));
    }
    if s.expect_exit != [0] {
        notes.push(format!("exit codes {:?} count as success", s.expect_exit));
    }
    if s.on_failure != crate::load::runbook::OnFailure::Rollback {
        notes.push(format!("on failure: {:?}", s.on_failure).to_lowercase());
    }
    if let Some(svc) = &s.service {
        notes.push(format!("service `{}` {:?}", svc.name, svc.state).to_lowercase());
    }
    if !notes.is_empty() {
        let _ = writeln!(o, "    ({})", notes.join("; "));
    }
    if let Some(q) = &s.confirm {
        let _ = writeln!(o, "    {} {q} [y/N]", style("gate:").yellow().bold());
    }
    if let Some(m) = &s.manual {
        let _ = writeln!(
            o,
            "    {} the operator does this by hand, confirms and may note a ticket id:",
            style("manual:").yellow().bold()
        );
        let _ = writeln!(o, "{}", indented(m, "      | "));
    }
    if s.targets.is_empty() && s.manual.is_none() {
        let _ = writeln!(o, "    no hosts");
    }
    for t in &s.targets {
        // A step that reads `batch` is shown once per batch, each under its batch.
        if let Some(b) = t.batch {
            let members = b
                .checked_sub(1)
                .and_then(|i| batches.get(i))
                .map_or(String::new(), |m| m.join(", "));
            let _ = writeln!(o, "    batch {b} ({members}):");
            let mut one = String::new();
            target(&mut one, t, s.retries, &s.delay);
            let _ = write!(o, "{}", indented(&one, "  "));
            let _ = writeln!(o);
        } else {
            target(o, t, s.retries, &s.delay);
        }
    }
}

/// The output patterns a target's action must (not) match, rendered for its host.
fn expectations(t: &Target) -> impl Iterator<Item = (&'static str, &str)> {
    [
        ("stdout matching", &t.expect_stdout),
        ("stdout not matching", &t.expect_stdout_not),
    ]
    .into_iter()
    .filter_map(|(label, re)| Some((label, re.as_deref()?)))
}

/// One target as the dry-run shows it: command, stdin, check, rollback.
pub fn target_text(t: &Target, retries: u32, delay: &str) -> String {
    let mut o = String::new();
    target(&mut o, t, retries, delay);
    o
}

fn target(o: &mut String, t: &Target, retries: u32, delay: &str) {
    if let Some(why) = &t.skipped {
        let _ = writeln!(o, "    {}: skipped ({why})", t.host);
        return;
    }
    if let Some(w) = &t.when_at_run_time {
        let _ = writeln!(
            o,
            "    {}: runs only if `{w}` (decided at run time, it reads a capture)",
            t.host
        );
    }
    if let Some(u) = &t.upload {
        let how = match u.templated {
            true => format!(" (template, rendered for {})", t.host),
            false => String::new(),
        };
        let _ = writeln!(o, "    upload {}{how} -> {}:{}", u.src, t.host, u.dest);
        if let Some(text) = &u.content {
            let _ = writeln!(o, "      rendered:");
            let _ = writeln!(o, "{}", indented(text, "      | "));
        }
    }
    if let Some(c) = &t.command {
        let _ = writeln!(o, "{}", prompt_line(&t.login, c, "    "));
    }
    if let (Some(stdin), None) = (&t.stdin, &t.upload) {
        let _ = writeln!(o, "      stdin:");
        let _ = writeln!(o, "{}", indented(stdin, "      | "));
    }
    for (label, re) in expectations(t) {
        let _ = writeln!(o, "      expect {label}: /{re}/");
    }
    if let Some(c) = &t.check {
        let label = if retries > 0 {
            format!("check (up to {} tries, {delay} apart):", retries + 1)
        } else {
            "check:".to_string()
        };
        let _ = writeln!(o, "      {label}");
        let _ = writeln!(o, "{}", prompt_line(&t.login, c, "        "));
    }
    for r in &t.rollback {
        let _ = writeln!(o, "      rollback:");
        let _ = writeln!(o, "{}", prompt_line(&t.login, r, "        "));
    }
}

pub fn json(plan: &Plan) -> String {
    serde_json::to_string_pretty(plan).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

/// The plan as Markdown, for a change request: the same content as `text`,
/// escaped like the execution log, with a "How to verify" section naming the
/// signer (`None`: an UNSIGNED banner instead). `file` is the document's own name.
pub fn markdown(
    plan: &Plan,
    file: &str,
    signer: Option<&crate::report::signature::SignerInfo>,
) -> String {
    use crate::report::markdown::{cell, code};
    let mut o = String::new();
    let rb = &plan.runbook;
    let inv = &plan.inventory;
    let r = &plan.run;
    let _ = writeln!(
        o,
        "# opsrun plan: {} on {}\n",
        cell(&rb.name),
        cell(&inv.name)
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
                cell(&rb.name),
                rb.version
                    .as_ref()
                    .map(|v| format!(" (version {})", cell(v)))
                    .unwrap_or_default()
            ),
        ),
        ("Runbook file", code(&rb.path)),
        ("Runbook sha256", code(&rb.sha256)),
        (
            "Inventory",
            format!("{} ({})", cell(&inv.name), code(&inv.path)),
        ),
        ("Inventory sha256", code(&inv.sha256)),
        ("Environment", cell(&inv.name)),
        ("Operator", cell(&r.operator)),
        (
            "Ticket",
            r.ticket
                .as_deref()
                .map(cell)
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
                Some(v) => code(v),
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
        let port = h.endpoint.port.map(|p| format!(":{p}")).unwrap_or_default();
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} |",
            cell(&h.name),
            cell(&format!("{}{port}", h.endpoint.address)),
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
    crate::report::signature::verify_section(&mut o, file, signer, &[]);
    o
}

fn md_step(o: &mut String, s: &PlanStep, number: &str) {
    use crate::report::markdown::{cell, code, fenced};
    let _ = writeln!(o, "\n### {number}. {}\n", cell(&s.name));
    let mut notes = vec![format!("on: {}", code(&s.on))];
    if s.skipped_by_start_at {
        notes.push("**skipped: before --start-at**".into());
    }
    if let Some(t) = &s.timeout {
        notes.push(format!("timeout {}", cell(t)));
    }
    if let Some(c) = &s.capture {
        notes.push(format!("captures {}", code(c)));
    }
    if s.expect_exit != [0] {
        notes.push(format!("exit codes {:?} count as success", s.expect_exit));
    }
    if s.on_failure != crate::load::runbook::OnFailure::Rollback {
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
    if let Some(q) = &s.confirm {
        let _ = writeln!(o, "**Gate**: {} [y/N]\n", cell(q));
    }
    if let Some(m) = &s.manual {
        let _ = writeln!(
            o,
            "**Manual**: the operator does this by hand, confirms and may note a ticket id:\n"
        );
        let _ = writeln!(o, "{}", fenced("text", m));
    }
    if s.targets.is_empty() && s.manual.is_none() {
        let _ = writeln!(o, "No hosts.\n");
    }
    for t in &s.targets {
        if let Some(why) = &t.skipped {
            let _ = writeln!(o, "- {}: skipped ({})\n", cell(&t.host), cell(why));
            continue;
        }
        let _ = writeln!(o, "#### {}\n", cell(&t.host));
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
                    cell(&s.delay)
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
