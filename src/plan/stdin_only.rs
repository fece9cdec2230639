//! Where a secret cannot go: the parts of a step that only a command line can
//! carry (`as:`, `cwd:`, `upload.dest`, `upload.owner`). A secret anywhere else
//! reaches the host on stdin (see `shell::Wrap::stdin_env`); in these it would
//! be in the host's process list (and, for `upload.dest`, in a file name), so a
//! runbook that puts one there is refused, by `opsrun check` and the planner
//! alike. A captured value is only known at run time: `Planner::render` refuses
//! one that turns out to hold a secret in these places before anything is sent.

use super::compile::Compiled;
use super::*;
use crate::load::runbook::Text;

/// The fields of a step that have no stdin form, with their templates.
pub(super) fn argv_only<'a>(
    s: &'a Step,
    t: &StepTemplates,
) -> Vec<(&'static str, &'a Text, TemplateId)> {
    let mut out = Vec::new();
    if let (Some(x), Some(id)) = (&s.as_user, t.as_user) {
        out.push(("as", x, id));
    }
    if let (Some(x), Some(id)) = (&s.cwd, t.cwd) {
        out.push(("cwd", x, id));
    }
    if let (Action::Upload(u), Some((_, dest, owner))) = (&s.action, t.upload) {
        out.push(("upload.dest", &u.dest, dest));
        if let (Some(x), Some(id)) = (&u.owner, owner) {
            out.push(("upload.owner", x, id));
        }
    }
    out
}

/// A located error for each argv-only field that reads a secret param
/// (directly or through runbook vars).
pub(super) fn secrets_in_argv_only(rb: &Runbook, compiled: &Compiled) -> Vec<Error> {
    let (templates, vars, forward, guide) = compiled;
    let reads = var_reads(templates, vars);
    let is_param = |n: &str| rb.params.iter().any(|p| p.secret && p.name == n);
    let secret =
        |n: &String| is_param(n) || reads.get(n).is_some_and(|r| r.iter().any(|v| is_param(v)));
    let steps = rb
        .steps
        .iter()
        .zip(forward)
        .chain(rb.rollback.iter().zip(guide));
    let mut out = Vec::new();
    for (step, t) in steps {
        for (field, text, id) in argv_only(step, t) {
            let Some(name) = templates.variables(id).iter().filter(|n| secret(n)).min() else {
                continue;
            };
            let at = text
                .src
                .match_indices(name.as_str())
                .map(|(at, _)| at)
                .next()
                .unwrap_or(0);
            out.push(diag(
                rb,
                text.locate(&rb.source, at, name.chars().count()),
                refusal(
                    &step.name,
                    field,
                    &match is_param(name) {
                        true => format!("secret `{name}`"),
                        false => format!("`{name}` (built from a secret)"),
                    },
                ),
            ));
        }
    }
    out
}

/// Why a step is refused: `what` (a secret, or a captured value that holds one)
/// would be on the host's command line.
pub(super) fn refusal(step: &str, field: &str, what: &str) -> String {
    format!(
        "in step `{step}`: `{field}` reads {what}; `{field}` is part of the command line on the host (visible in its process list), and opsrun sends secrets only on stdin: use a value that is not secret here (pass the secret with `env:` or `stdin:`)"
    )
}
