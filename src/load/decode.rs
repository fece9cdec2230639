//! YAML → runbook: decodes a parsed runbook file into the [`Runbook`] model,
//! every value with its position, every problem as a located `yaml::Error`.

use super::runbook::*;
use crate::diagnostic::{did_you_mean, SourceFile};
use crate::duration;
use crate::yaml::{self, Error, Fields, Node, Value};
use std::sync::Arc;
use std::time::Duration;

/// Decodes a YAML string as template text, keeping where it was written.
fn text(node: &Node, what: &str) -> yaml::Result<Text> {
    Ok(Text {
        src: node.string(&format!("a string for {what}"))?,
        span: node.span,
    })
}

const ACTIONS: &[&str] = &["run", "script", "upload", "manual"];

/// Names usable in templates: `{{ name }}` must parse as one identifier.
pub fn check_identifier(node: &Node, name: &str, what: &str) -> yaml::Result<()> {
    let mut chars = name.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Error::new(
            node.span,
            format!("invalid {what} name `{name}`: expected ASCII letters, digits and `_`, not starting with a digit"),
        ))
    }
}

/// Decodes a runbook, reporting every problem it can find in one pass: a bad
/// param, var or step does not stop the others from being checked. Only a
/// problem that leaves nothing to decode (not a mapping, an unknown top-level
/// field) stops at once.
pub fn decode(root: &Node, source: Arc<SourceFile>) -> Result<Runbook, Vec<Error>> {
    let mut errs = Vec::new();
    let runbook = decode_into(root, source, &mut errs);
    match (runbook, errs.is_empty()) {
        (Ok(rb), true) => Ok(rb),
        (Ok(_), false) => Err(errs),
        (Err(e), _) => {
            errs.push(e);
            errs.sort_by_key(|e| (e.span.start.line, e.span.start.col));
            Err(errs)
        }
    }
}

fn decode_into(
    root: &Node,
    source: Arc<SourceFile>,
    errs: &mut Vec<Error>,
) -> yaml::Result<Runbook> {
    if root.is_null() {
        return Err(Error::new(
            root.span,
            "the runbook is empty: expected a mapping with `name` and `steps`",
        ));
    }
    let f = root.fields("the runbook", RUNBOOK_FIELDS)?;
    // A problem of one field is kept and the next field decoded anyway.
    let mut keep = |r: yaml::Result<()>| {
        if let Err(e) = r {
            errs.push(e);
        }
    };
    let mut name = String::new();
    keep(f.require("name").and_then(|n| {
        name = n.string("a string for the runbook `name`")?;
        Ok(())
    }));
    let mut serial = None;
    keep(
        f.get("serial")
            .map(decode_serial)
            .transpose()
            .map(|s| serial = s),
    );
    let mut description = None;
    keep(f.opt_string("description").map(|d| description = d));
    let mut version = None;
    keep(f.opt_string("version").map(|v| version = v));
    let mut hosts = None;
    keep(
        f.get("hosts")
            .map(|n| text(n, "`hosts`"))
            .transpose()
            .map(|h| hosts = h),
    );
    let mut params = Vec::new();
    if let Some(p) = f.get("params").filter(|p| !p.is_null()) {
        let mut found = Vec::new();
        let r = decode_params(p, &mut found).map(|p| params = p);
        errs.extend(found);
        if let Err(e) = r {
            errs.push(e);
        }
    }
    let mut vars = Vec::new();
    if let Some(v) = f.get("vars").filter(|v| !v.is_null()) {
        let mut found = Vec::new();
        let r = decode_vars(v, &mut found).map(|v| vars = v);
        errs.extend(found);
        if let Err(e) = r {
            errs.push(e);
        }
    }
    let mut steps = Vec::new();
    match f.require("steps") {
        Err(e) => errs.push(e),
        Ok(steps_node) => {
            let mut found = Vec::new();
            match decode_steps(steps_node, "steps", &mut found) {
                Ok(s) if s.is_empty() && found.is_empty() => errs.push(Error::new(
                    steps_node.span,
                    "the runbook has no steps: expected a list of steps",
                )),
                Ok(s) => steps = s,
                Err(e) => errs.push(e),
            }
            errs.extend(found);
        }
    }
    let mut rollback = Vec::new();
    if let Some(r) = f.get("rollback").filter(|r| !r.is_null()) {
        let mut found = Vec::new();
        match decode_steps(r, "the rollback guide", &mut found) {
            Ok(s) => rollback = s,
            Err(e) => errs.push(e),
        }
        errs.extend(found);
    }
    for var in &vars {
        if let Some(p) = params.iter().find(|p| p.name == var.0) {
            let key = f
                .get("vars")
                .and_then(|v| v.entries("").ok())
                .and_then(|e| e.into_iter().find(|((k, _), _)| *k == var.0))
                .map_or(var.1.span, |((_, k), _)| k.span);
            errs.push(
                Error::new(
                    key,
                    format!("`{}` is both a param and a var: rename one", p.name),
                )
                .help(format!(
                    "the param `{}` is declared at line {}",
                    p.name, p.span.start.line
                )),
            );
        }
    }
    // In file order, as an operator fixes them.
    errs.sort_by_key(|e| (e.span.start.line, e.span.start.col));
    Ok(Runbook {
        name,
        description,
        version,
        hosts,
        serial,
        params,
        vars,
        steps,
        rollback,
        source,
    })
}

fn decode_serial(n: &Node) -> yaml::Result<Serial> {
    let bad = || {
        let shown = match &n.raw {
            Some(raw) => format!("`{raw}`"),
            None => n.kind().to_string(),
        };
        Error::new(
            n.span,
            format!(
                "invalid `serial` value {shown}: expected a number of hosts per batch (1 or more) or a percentage from 1% to 100% (like \"30%\")"
            ),
        )
    };
    match &n.value {
        Value::Int(i) if *i >= 1 => Ok(Serial::Count(*i as usize)),
        Value::Str(s) => {
            let pct = s.strip_suffix('%').ok_or_else(bad)?;
            match pct.trim().parse::<u8>() {
                Ok(p) if (1..=100).contains(&p) => Ok(Serial::Percent(p)),
                _ => Err(bad()),
            }
        }
        _ => Err(bad()),
    }
}

/// Every param that decodes; the problems of the others go to `errs`, so one pass
/// reports them all.
fn decode_params(node: &Node, errs: &mut Vec<Error>) -> yaml::Result<Vec<Param>> {
    let mut out = Vec::new();
    for ((name, key), def) in node.entries("a mapping of param names to their definitions")? {
        match decode_param(&name, key, def) {
            Ok(p) => out.push(p),
            Err(e) => errs.push(e),
        }
    }
    Ok(out)
}

fn decode_param(name: &str, key: &Node, def: &Node) -> yaml::Result<Param> {
    let name = name.to_string();
    {
        check_identifier(key, &name, "param")?;
        let mut p = Param {
            name: name.clone(),
            span: key.span,
            required: false,
            secret: false,
            default: None,
            description: None,
            kind: ParamType::String,
            choices: Vec::new(),
        };
        if !def.is_null() {
            let f = def.fields(
                &format!("param `{name}`"),
                &[
                    "required",
                    "secret",
                    "default",
                    "description",
                    "type",
                    "choices",
                ],
            )?;
            if let Some(n) = f.get("required") {
                p.required = n.bool("`true` or `false` for `required`")?;
            }
            if let Some(n) = f.get("secret") {
                p.secret = n.bool("`true` or `false` for `secret`")?;
            }
            p.description = f.opt_string("description")?;
            if let Some(n) = f.get("type") {
                let t = n.string("a type name")?;
                p.kind = match t.as_str() {
                    "string" | "str" => ParamType::String,
                    "int" | "integer" => ParamType::Int,
                    "bool" | "boolean" => ParamType::Bool,
                    other => {
                        return Err(Error::new(
                            n.span,
                            format!(
                                "unknown param type `{other}`{}",
                                did_you_mean(other, ["string", "int", "bool"])
                            ),
                        )
                        .help("expected one of: string, int, bool"))
                    }
                };
            }
            if let Some(n) = f.get("choices") {
                p.choices = n
                    .seq("a list of allowed values for `choices`")?
                    .iter()
                    .map(|c| c.string("a value"))
                    .collect::<yaml::Result<_>>()?;
            }
            if let Some(n) = f.get("default") {
                if !n.is_null() {
                    let v = n.string("a scalar default value")?;
                    if let Err(msg) = p.check_value(&v) {
                        return Err(Error::new(
                            n.span,
                            format!("default of param `{name}`: {msg}"),
                        ));
                    }
                    p.default = Some(v);
                }
            }
            if p.required && p.default.is_some() {
                return Err(Error::new(
                    key.span,
                    format!(
                        "param `{name}` is `required` and has a `default`: give one or the other"
                    ),
                ));
            }
        }
        Ok(p)
    }
}

/// Every var that decodes; the problems of the others go to `errs`.
fn decode_vars(node: &Node, errs: &mut Vec<Error>) -> yaml::Result<Vec<(String, Text)>> {
    let mut out = Vec::new();
    for ((name, key), v) in node.entries("a mapping of variable names to values")? {
        let var = check_identifier(key, &name, "variable")
            .and_then(|()| text(v, &format!("variable `{name}`")));
        match var {
            Ok(t) => out.push((name.clone(), t)),
            Err(e) => errs.push(e),
        }
    }
    Ok(out)
}

/// Every step that decodes; the problems of the others go to `errs`, so a bad
/// step does not hide the next one's.
fn decode_steps(node: &Node, what: &str, errs: &mut Vec<Error>) -> yaml::Result<Vec<Step>> {
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
