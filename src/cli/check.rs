//! `opsrun check [RUNBOOK...]`: decode, lint and compile runbooks; count each problem.

use super::*;

pub(super) fn check(names: &[String], root: &Path) -> Result<i32> {
    let mut problems = 0usize;
    let mut checked = 0usize;
    let mut report = |label: String, result: Result<Vec<crate::diagnostic::Diagnostic>, Error>| {
        checked += 1;
        match result {
            Ok(warnings) if warnings.is_empty() => outln!("ok       {label}"),
            Ok(warnings) => {
                problems += warnings.len();
                outln!(
                    "warning  {label}: {}",
                    crate::plural::count(warnings.len(), "lint warning", "lint warnings")
                );
                // Diagnostics quote the runbook's own lines: shown escaped.
                for w in warnings {
                    eprintln!(
                        "{}\n",
                        crate::sanitize::escape_controls(w.to_string().as_bytes())
                    );
                }
            }
            Err(e) => {
                problems += e.problems();
                outln!("error    {label}");
                eprintln!(
                    "{}\n",
                    crate::sanitize::escape_controls(e.to_string().as_bytes())
                );
            }
        }
    };
    let books: Vec<String> = if names.is_empty() {
        load::list_runbooks(root)
            .into_iter()
            .map(|(n, _)| n)
            .collect()
    } else {
        names.to_vec()
    };
    for name in &books {
        // Template syntax needs no inventory: `check` finds those errors too.
        // A structural problem must not hide the template errors of what decoded.
        let result = load::load_partial_runbook(name, root).and_then(|loaded| match loaded {
            load::Loaded {
                runbook,
                problems: Some(problems),
            } => Err(crate::plan::with_template_problems(problems, runbook, None)),
            load::Loaded { runbook, .. } => {
                crate::plan::check_templates(&runbook)?;
                Ok(lint::lint(&runbook))
            }
        });
        report(format!("runbook {name}"), result);
    }
    if names.is_empty() {
        for env in load::list_envs(root) {
            let result = load::load_inventory(Some(&env), None, root).map(|_| Vec::new());
            report(format!("inventory {env}"), result);
        }
    }
    if problems > 0 {
        eprintln!(
            "{} in {}",
            crate::plural::count(problems, "problem", "problems"),
            crate::plural::count(checked, "file", "files")
        );
        Ok(exit::INVALID_INPUT)
    } else {
        outln!(
            "{} checked, no problems",
            crate::plural::count(checked, "file", "files")
        );
        Ok(exit::OK)
    }
}
