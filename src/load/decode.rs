//! YAML → runbook: decodes a parsed runbook file into the [`Runbook`] model,
//! every value with its position, every problem as a located `yaml::Error`.

use super::runbook::*;
use crate::diagnostic::{did_you_mean, SourceFile};
use crate::yaml::{self, Error, Node, Value};
use std::sync::Arc;

use super::decode_step::decode_steps;
pub use super::decode_step::regex_problem;

/// Decodes a YAML string as template text, keeping where it was written.
pub(super) fn text(node: &Node, what: &str) -> yaml::Result<Text> {
    Ok(Text {
        src: node.string(&format!("a string for {what}"))?,
        span: node.span,
    })
}

pub(super) const ACTIONS: &[&str] = &["run", "script", "upload", "manual"];

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
///
/// Besides the problems (in file order), the runbook as far as it decoded: the
/// params, vars and steps that had a problem are left out. `None` when nothing
/// could be decoded. The caller checks its templates too, so a structural
/// problem does not hide the template problems of the same file.
pub fn decode(root: &Node, source: Arc<SourceFile>) -> (Option<Runbook>, Vec<Error>) {
    let mut errs = Vec::new();
    let runbook = decode_into(root, source, &mut errs);
    match runbook {
        Ok(rb) => (Some(rb), errs),
        Err(e) => {
            errs.push(e);
            errs.sort_by_key(|e| (e.span.start.line, e.span.start.col));
            (None, errs)
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
