//! Printing a plan: the text a `--dry-run` shows and the JSON it emits for tooling.

use crate::load::inventory::ConfirmMode;
use crate::plan::{AnswerKind, Plan, PlanStep, Target};
use crate::sanitize::{escape_controls, escape_line};
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

/// The dry-run for a person. What comes from the runbook, the inventory or the
/// command line (names, questions, commands) is escaped like host output: this
/// is printed on a terminal, and a name must not redraw it.
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
        style(escape_line(&rb.name)).bold(),
        rb.path,
        rb.sha256
    );
    if let Some(d) = &rb.description {
        let _ = writeln!(
            o,
            "           {}",
            escape_line(d.trim().lines().next().unwrap_or_default())
        );
    }
    let inv = &plan.inventory;
    let _ = writeln!(
        o,
        "inventory  {}  {}  sha256:{}",
        style(escape_line(&inv.name)).bold(),
        inv.path,
        inv.sha256
    );
    let r = &plan.run;
    let _ = writeln!(
        o,
        "run        {}  (stamp {}, operator {}, ticket {})",
        r.id,
        r.stamp,
        escape_line(&r.operator),
        escape_line(r.ticket.as_deref().unwrap_or("none"))
    );
    for (i, p) in plan.params.iter().enumerate() {
        let label = if i == 0 { "params" } else { "" };
        let value = match &p.value {
            Some(v) => v.clone(),
            None if p.secret => "(asked for at run time)".into(),
            None => "(not set)".into(),
        };
        let value = escape_line(&value);
        let _ = writeln!(o, "{label:<10} {}={value}  ({})", p.name, p.source);
    }
    let hosts: Vec<String> = plan
        .hosts
        .iter()
        .map(|h| match &h.resolved {
            // Where ssh really goes: an alias's HostName and port, and its jump hosts.
            Some(r) => format!("{} ({})", h.name, r.destination()),
            None => {
                let port = h.endpoint.port.map(|p| format!(":{p}")).unwrap_or_default();
                format!("{} ({}{port})", h.name, h.endpoint.address)
            }
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
                escape_line(&inv.name)
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
        style(escape_line(&s.name)).bold(),
        escape_line(&s.on.to_string())
    );
    if s.skipped_by_start_at {
        head.push_str("  (skipped: before --start-at)");
    }
    let _ = writeln!(o, "{head}");
    let mut notes = Vec::new();
    if let Some(t) = s.timeout {
        notes.push(format!("timeout {}", crate::duration::format(t)));
    }
    if let Some(c) = &s.capture {
        notes.push(format!("captures `{}`", c.name));
    }
    if s.expect.exit != [0] {
        notes.push(format!("exit codes {:?} count as success", s.expect.exit));
    }
    if s.on_failure != crate::plan::OnFailure::Rollback {
        notes.push(format!("on failure: {:?}", s.on_failure).to_lowercase());
    }
    if let Some(svc) = &s.service {
        notes.push(format!("service `{}` {:?}", svc.name, svc.state).to_lowercase());
    }
    if !notes.is_empty() {
        let _ = writeln!(o, "    ({})", notes.join("; "));
    }
    for gate in &s.gates.0 {
        match gate.answer {
            AnswerKind::YesNo => {
                // Once per batch that runs the step, naming the hosts it is for.
                for ask in gate.asks.iter().filter(|a| a.batch.is_some()) {
                    let q = escape_line(&format!("{} {}", gate.text, ask.hosts));
                    let _ = writeln!(o, "    {} {q} [y/N]", style("gate:").yellow().bold());
                }
            }
            AnswerKind::Done => {
                let _ = writeln!(
                    o,
                    "    {} the operator does this by hand, confirms and may note a ticket id:",
                    style("manual:").yellow().bold()
                );
                let _ = writeln!(
                    o,
                    "{}",
                    indented(&escape_controls(gate.text.as_bytes()), "      | ")
                );
            }
        }
    }
    if s.targets.is_empty() && s.gates.of(AnswerKind::Done).is_none() {
        let _ = writeln!(o, "    no hosts");
    }
    let delay = crate::duration::format(s.delay);
    for t in &s.targets {
        // A step that reads `batch` is shown once per batch, each under its batch.
        if let Some(b) = t.batch {
            let members = b
                .checked_sub(1)
                .and_then(|i| batches.get(i))
                .map_or(String::new(), |m| m.join(", "));
            let _ = writeln!(o, "    batch {b} ({members}):");
            let one = target_text(t, s.retries, &delay);
            let _ = write!(o, "{}", indented(&one, "  "));
            let _ = writeln!(o);
        } else {
            o.push_str(&target_text(t, s.retries, &delay));
        }
    }
}

/// The output patterns a target's action must (not) match, rendered for its host.
pub(super) fn expectations(t: &Target) -> impl Iterator<Item = (&'static str, &str)> {
    [
        ("stdout matching", &t.expect_stdout),
        ("stdout not matching", &t.expect_stdout_not),
    ]
    .into_iter()
    .filter_map(|(label, re)| Some((label, re.as_deref()?)))
}

/// One target as the dry-run shows it: command, stdin, check, rollback; escaped
/// (commands and rendered files carry runbook text and captured host output).
pub fn target_text(t: &Target, retries: u32, delay: &str) -> String {
    let mut o = String::new();
    target(&mut o, t, retries, delay);
    escape_controls(o.as_bytes())
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
    if let Some(lines) = &t.env_stdin {
        // What holds a secret is sent here rather than on the command line.
        let _ = writeln!(
            o,
            "      read first from stdin (values that hold a secret):"
        );
        let _ = writeln!(o, "{}", indented(lines, "      | "));
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
