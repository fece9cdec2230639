//! `opsrun show RUNBOOK`: what a runbook asks for and does, without an inventory.

use super::*;

pub(super) fn show(name: &str, root: &Path) -> Result<i32> {
    let rb = load::load_runbook(name, root)?;
    // The runbook's text, shown escaped like host output (a name must not redraw the terminal).
    let esc = crate::sanitize::escape_line;
    outln!("{}  ({})", esc(&rb.name), rb.source.display_path());
    if let Some(v) = &rb.version {
        outln!("version: {}", esc(v));
    }
    if let Some(d) = &rb.description {
        outln!(
            "\n{}",
            crate::sanitize::escape_controls(d.trim().as_bytes())
        );
    }
    if let Some(h) = &rb.hosts {
        outln!("\nhosts: {}", esc(&h.src));
    }
    outln!("\nparams:");
    if rb.params.is_empty() {
        outln!("  (none)");
    }
    for p in &rb.params {
        let mut attrs = vec![format!("{:?}", p.kind).to_lowercase()];
        if p.required {
            attrs.push("required".into());
        }
        if p.secret {
            attrs.push(format!(
                "secret, from OPSRUN_SECRET_{} or a prompt",
                p.name.to_uppercase()
            ));
        }
        if let Some(d) = &p.default {
            // A secret's default is a secret: `show` is for reading over a shoulder.
            let shown = if p.secret { crate::sanitize::MASK } else { d };
            attrs.push(format!("default {shown}"));
        }
        if !p.choices.is_empty() {
            attrs.push(format!("one of {}", p.choices.join("|")));
        }
        outln!(
            "  {:<14} {}  ({})",
            p.name,
            esc(p.description.as_deref().unwrap_or("")),
            attrs.join(", ")
        );
    }
    let describe = |prefix: &str, steps: &[crate::load::runbook::Step]| {
        for (i, s) in steps.iter().enumerate() {
            let mut marks = Vec::new();
            if s.confirm.is_some() {
                marks.push("gate");
            }
            if !s.rollback.is_empty() {
                marks.push("has rollback");
            }
            if s.local {
                marks.push("local");
            }
            let on =
                s.on.as_ref()
                    .map(|o| format!(" on {}", esc(&o.src)))
                    .unwrap_or_default();
            let marks = if marks.is_empty() {
                String::new()
            } else {
                format!("  [{}]", marks.join(", "))
            };
            outln!(
                "  {prefix}{:<3} {}  ({}{on}){marks}",
                i + 1,
                esc(&s.name),
                s.action.kind()
            );
        }
    };
    outln!("\nsteps:");
    describe("", &rb.steps);
    outln!("\nrollback guide:");
    if rb.rollback.is_empty() {
        outln!("  (none: `opsrun rollback` undoes completed steps with their own `rollback`)");
    }
    describe("R", &rb.rollback);
    Ok(exit::OK)
}
