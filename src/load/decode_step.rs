//! One step of a runbook, YAML → [`Step`]: its action, its settings, and the
//! combinations of fields that make no sense together, each problem located.
//! The runbook as a whole is decoded in `decode.rs`.

use super::decode::{check_identifier, text, ACTIONS};
use super::runbook::*;
use crate::diagnostic::did_you_mean;
use crate::duration;
use crate::yaml::{self, Error, Fields, Node, Value};
use std::time::Duration;

/// Every step that decodes; the problems of the others go to `errs`, so a bad
/// step does not hide the next one's.
pub(super) fn decode_steps(
    node: &Node,
    what: &str,
    errs: &mut Vec<Error>,
) -> yaml::Result<Vec<Step>> {
    let items = node
        .seq(&format!("a list of steps for `{what}`"))
        .map_err(|e| {
            if matches!(node.value, Value::Map(_)) {
                e.help("start each step with `- `, like `  - name: Stop the service`")
            } else {
                e
            }
        })?;
    let mut steps: Vec<Step> = Vec::new();
    for item in items {
        let step = match decode_step(item) {
            Ok(step) => step,
            Err(e) => {
                errs.push(e);
                continue;
            }
        };
        if let Some(first) = steps.iter().find(|s| s.name == step.name) {
            let name_node = item
                .fields("a step", STEP_FIELDS)?
                .get("name")
                .map(|n| n.span)
                .unwrap_or(item.span);
            errs.push(Error::new(
                name_node,
                format!(
                    "duplicate step name `{}` (first used at line {}): step names must be unique",
                    step.name, first.span.start.line
                ),
            ));
            continue;
        }
        steps.push(step);
    }
    Ok(steps)
}

fn opt_text(f: &Fields, name: &str) -> yaml::Result<Option<Text>> {
    f.get(name)
        .filter(|n| !n.is_null())
        .map(|n| text(n, &format!("`{name}`")))
        .transpose()
}

fn opt_duration(f: &Fields, name: &str) -> yaml::Result<Option<Duration>> {
    f.get(name)
        .filter(|n| !n.is_null())
        .map(|n| {
            let s = n.string(&format!("a duration for `{name}`, like 30s or 5m"))?;
            duration::parse(&s).map_err(|m| Error::new(n.span, m))
        })
        .transpose()
}

fn regex(n: &Node, what: &str) -> yaml::Result<regex::Regex> {
    let s = n.string(&format!("a regular expression for {what}"))?;
    regex::Regex::new(&s).map_err(|e| {
        Error::new(
            n.span,
            format!(
                "invalid regular expression for {what}: {}",
                first_line(&e.to_string())
            ),
        )
    })
}

/// What is wrong with a regular expression, in one line.
pub fn regex_problem(e: &regex::Error) -> String {
    first_line(&e.to_string())
}

/// The regex crate's message is a multi-line picture; its last line says what is wrong.
fn first_line(s: &str) -> String {
    let last = s.lines().last().unwrap_or(s).trim();
    last.strip_prefix("error: ").unwrap_or(last).to_string()
}

fn decode_step(node: &Node) -> yaml::Result<Step> {
    let f = node.fields("a step", STEP_FIELDS)?;
    let name = f.require("name")?.string("a string for the step `name`")?;
    if name.trim().is_empty() {
        return Err(Error::new(
            f.get("name").unwrap_or(node).span,
            "a step name cannot be empty",
        ));
    }
    let present: Vec<&str> = f.names().filter(|n| ACTIONS.contains(n)).collect();
    let action = match present.as_slice() {
        [] => {
            if f.get("check").is_some() {
                Action::CheckOnly
            } else {
                return Err(Error::new(
                    node.span,
                    format!("step `{name}` has no action: expected one of `run`, `script`, `upload`, `manual` (or only a `check`)"),
                ));
            }
        }
        [one] => {
            let n = f.get(one).unwrap_or(node);
            match *one {
                "run" => Action::Run(text(n, "`run`")?),
                "script" => Action::Script(text(n, "`script`")?),
                "manual" => Action::Manual(text(n, "`manual`")?),
                _ => Action::Upload(decode_upload(n)?),
            }
        }
        [first, second, ..] => {
            return Err(Error::new(
                f.key(second).unwrap_or(node).span,
                format!(
                    "step `{name}` has two actions, `{first}` and `{second}`: expected exactly one"
                ),
            )
            .help("split it into two steps"))
        }
    };

    let env = match f.get("env") {
        Some(n) if !n.is_null() => n
            .entries("a mapping of environment variables for `env`")?
            .into_iter()
            .map(|((k, key), v)| {
                check_identifier(key, &k, "environment variable")?;
                Ok((k.clone(), text(v, &format!("`env.{k}`"))?))
            })
            .collect::<yaml::Result<_>>()?,
        _ => Vec::new(),
    };

    let capture = match f.get("capture") {
        None => None,
        Some(n) => Some(match &n.value {
            Value::Map(_) => {
                let cf = n.fields("`capture`", &["name", "regex"])?;
                let cname_node = cf.require("name")?;
                let cname = cname_node.string("a capture name")?;
                check_identifier(cname_node, &cname, "capture")?;
                Capture {
                    name: cname,
                    regex: cf
                        .get("regex")
                        .map(|r| regex(r, "`capture.regex`"))
                        .transpose()?,
                }
            }
            _ => {
                let cname = n.string("a capture name, or `{name, regex}`")?;
                check_identifier(n, &cname, "capture")?;
                Capture {
                    name: cname,
                    regex: None,
                }
            }
        }),
    };

    let mut expect = Expect::default();
    if let Some(n) = f.get("expect") {
        let ef = n.fields("`expect`", &["exit", "stdout", "stdout_not"])?;
        if let Some(e) = ef.get("exit") {
            let codes = match &e.value {
                Value::Seq(items) => items.iter().collect::<Vec<_>>(),
                _ => vec![e],
            };
            expect.exit = codes
                .into_iter()
                .map(|c| {
                    let i = c.int("an exit code (0-255)")?;
                    if (0..=255).contains(&i) {
                        Ok(i as i32)
                    } else {
                        Err(Error::new(
                            c.span,
                            format!("exit code {i} is out of range 0-255"),
                        ))
                    }
                })
                .collect::<yaml::Result<_>>()?;
        }
        for (field, slot) in [
            ("stdout", &mut expect.stdout),
            ("stdout_not", &mut expect.stdout_not),
        ] {
            if let Some(r) = ef.get(field) {
                let what = format!("`expect.{field}`");
                // Without template syntax the pattern is final: check it now, at its place.
                let text = text(r, &format!("a regular expression for {what}"))?;
                if !["{{", "{%", "{#"].iter().any(|m| text.src.contains(m)) {
                    regex(r, &what)?;
                }
                *slot = Some(text);
            }
        }
    }

    let retries = match f.get("retries") {
        Some(n) => {
            let i = n.int("a number of retries")?;
            u32::try_from(i)
                .map_err(|_| Error::new(n.span, format!("`retries` must be 0 or more, not {i}")))?
        }
        None => 0,
    };

    let confirm = match f.get("confirm") {
        None => None,
        Some(n) => match &n.value {
            Value::Bool(true) => Some(None),
            Value::Bool(false) | Value::Null => None,
            Value::Str(_) => Some(Some(text(n, "`confirm`")?)),
            _ => {
                return Err(Error::new(
                    n.span,
                    format!(
                        "expected `true` or a question for `confirm`, found {}",
                        n.kind()
                    ),
                ))
            }
        },
    };

    let rollback = match f.get("rollback") {
        None => Vec::new(),
        Some(n) => match &n.value {
            Value::Seq(items) => items
                .iter()
                .map(|i| text(i, "`rollback`"))
                .collect::<yaml::Result<_>>()?,
            Value::Null => Vec::new(),
            _ => vec![text(n, "`rollback` (a command or a list of commands)")?],
        },
    };

    let on_failure = match f.get("on_failure") {
        None => OnFailure::default(),
        Some(n) => {
            let s = n.string("one of rollback, abort, continue")?;
            match s.as_str() {
                "rollback" => OnFailure::Rollback,
                "abort" => OnFailure::Abort,
                "continue" => OnFailure::Continue,
                other => {
                    return Err(Error::new(
                        n.span,
                        format!(
                            "invalid `on_failure` value `{other}`{}",
                            did_you_mean(other, ["rollback", "abort", "continue"])
                        ),
                    )
                    .help("expected one of: rollback, abort, continue"))
                }
            }
        }
    };

    let service = match f.get("service") {
        None => None,
        Some(n) => {
            let sf = n.fields("`service`", &["name", "state"])?;
            let sname = sf.require("name")?.string("a service name")?;
            let state_node = sf.require("state")?;
            let state = match state_node.string("`stopped` or `started`")?.as_str() {
                "stopped" => ServiceState::Stopped,
                "started" => ServiceState::Started,
                other => {
                    return Err(Error::new(
                        state_node.span,
                        format!(
                            "invalid service state `{other}`{}",
                            did_you_mean(other, ["stopped", "started"])
                        ),
                    )
                    .help("expected `stopped` or `started`"))
                }
            };
            Some(Service { name: sname, state })
        }
    };

    let local = match f.get("local") {
        Some(n) => n.bool("`true` or `false` for `local`")?,
        None => false,
    };

    let lint_allow = match f.get("lint") {
        None => Vec::new(),
        Some(n) => decode_lint(n)?,
    };

    let step = Step {
        name: name.clone(),
        span: node.span,
        on: opt_text(&f, "on")?,
        action,
        as_user: opt_text(&f, "as")?,
        cwd: opt_text(&f, "cwd")?,
        env,
        stdin: opt_text(&f, "stdin")?,
        when: opt_text(&f, "when")?,
        capture,
        expect,
        check: opt_text(&f, "check")?,
        retries,
        delay: opt_duration(&f, "delay")?.unwrap_or(Duration::from_secs(5)),
        timeout: opt_duration(&f, "timeout")?,
        confirm,
        rollback,
        on_failure,
        local,
        service,
        lint_allow,
    };
    check_combinations(&f, &step)?;
    Ok(step)
}

/// Field combinations that would silently not do what the author meant.
fn check_combinations(f: &Fields, s: &Step) -> yaml::Result<()> {
    let conflict = |field: &str, why: &str| -> yaml::Result<()> {
        match f.key(field) {
            Some(k) => Err(Error::new(
                k.span,
                format!("step `{}`: `{field}` {why}", s.name),
            )),
            None => Ok(()),
        }
    };
    match &s.action {
        Action::Script(_) => conflict(
            "stdin",
            "cannot be used with `script`: the script itself is sent on stdin",
        )?,
        Action::Manual(_) => {
            for field in [
                "as", "cwd", "env", "stdin", "capture", "timeout", "expect", "check", "retries",
            ] {
                conflict(field, "does not apply to a `manual` step")?;
            }
            // A rollback would never run: the step completes by an operator's answer,
            // not a command opsrun could undo, and was silently dropped.
            conflict(
                "rollback",
                "cannot be used with `manual`: opsrun never undoes a step done by hand; write the way back in the `manual` text, or in a step of its own",
            )?;
        }
        Action::Upload(_) => {
            for field in ["stdin", "capture", "expect"] {
                conflict(field, "does not apply to an `upload` step")?;
            }
        }
        Action::Run(_) | Action::CheckOnly => {}
    }
    if s.check.is_none() {
        conflict(
            "retries",
            "only applies to a `check`: add one, or remove `retries`",
        )?;
    }
    if s.local {
        conflict("as", "cannot be used with `local: true` (opsrun does not switch users on the control machine)")?;
    }
    Ok(())
}

/// `lint: { allow: [NAME, ...] }`: names are checked, so a typo cannot silently accept nothing.
fn decode_lint(n: &Node) -> yaml::Result<Vec<String>> {
    let f = n.fields("`lint`", &["allow"])?;
    let Some(allow) = f.get("allow") else {
        return Ok(Vec::new());
    };
    let items = match &allow.value {
        Value::Seq(items) => items.iter().collect::<Vec<_>>(),
        _ => vec![allow],
    };
    items
        .into_iter()
        .map(|item| {
            let name = item.string("a lint name for `lint.allow`")?;
            if crate::load::lint::NAMES.contains(&name.as_str()) {
                Ok(name)
            } else {
                Err(Error::new(
                    item.span,
                    format!(
                        "unknown lint `{name}`{}",
                        did_you_mean(&name, crate::load::lint::NAMES.iter().copied())
                    ),
                )
                .help(format!(
                    "expected one of: {}",
                    crate::load::lint::NAMES.join(", ")
                )))
            }
        })
        .collect()
}

fn decode_upload(n: &Node) -> yaml::Result<Upload> {
    let f = n.fields("`upload`", &["src", "dest", "mode", "owner", "template"])?;
    let mode = match f.get("mode") {
        None => None,
        Some(m) => {
            let s = m.raw.clone().unwrap_or_default();
            let ok = (3..=4).contains(&s.len()) && s.chars().all(|c| ('0'..='7').contains(&c));
            if !ok {
                return Err(Error::new(
                    m.span,
                    format!("invalid file mode `{s}`: expected octal digits like \"0644\""),
                ));
            }
            Some(s)
        }
    };
    Ok(Upload {
        src: text(f.require("src")?, "`upload.src`")?,
        dest: text(f.require("dest")?, "`upload.dest`")?,
        mode,
        owner: opt_text(&f, "owner")?,
        template: match f.get("template") {
            Some(t) => t.bool("`true` or `false` for `upload.template`")?,
            None => false,
        },
    })
}
