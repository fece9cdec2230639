//! Templates: minijinja with strict undefined, and the filters runbooks need.
//!
//! All templates of a runbook are compiled once (planning 200 steps on 500
//! hosts renders 100 000 of them), and the variables each one reads are
//! known up front, so an undefined variable is reported by name with a
//! suggestion rather than as minijinja's generic "undefined value".

use crate::diagnostic::{did_you_mean, Pos, Span};
use crate::runbook::Text;
use crate::shell;
use crate::yaml;
use minijinja::value::Value;
use minijinja::{Environment, ErrorKind, UndefinedBehavior};
use std::collections::{BTreeMap, HashSet};

/// Stands in for a value that is only known once a step has captured it.
/// It passes through `quote` untouched so the plan can show `<captured: NAME>`.
const CAPTURE_MARK: char = '\u{1}';

pub fn capture_placeholder(name: &str) -> String {
    format!("{CAPTURE_MARK}captured:{name}{CAPTURE_MARK}")
}

/// Replaces capture placeholders with the readable `<captured: NAME>`.
pub fn show_placeholders(s: &str) -> String {
    if !s.contains(CAPTURE_MARK) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut parts = s.split(CAPTURE_MARK);
    if let Some(first) = parts.next() {
        out.push_str(first);
    }
    let mut inside = true;
    for part in parts {
        if inside {
            out.push_str(&format!("<{}>", part.replacen(':', ": ", 1)));
        } else {
            out.push_str(part);
        }
        inside = !inside;
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TemplateId(usize);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Text with `{{ }}` substitutions.
    Text,
    /// A `when:` expression; renders to true or false.
    Condition,
}

pub struct Templates {
    env: Environment<'static>,
    /// Per template: the top-level variables it reads, and its span for errors.
    meta: Vec<(HashSet<String>, Span, Kind)>,
}

impl Default for Templates {
    fn default() -> Self {
        Self::new()
    }
}

/// Why a template could not be rendered for a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenderError {
    Undefined { name: String, hint: String },
    Other(String),
}

impl std::fmt::Display for RenderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RenderError::Undefined { name, hint } => write!(f, "undefined variable `{name}`{hint}"),
            RenderError::Other(m) => f.write_str(m),
        }
    }
}

fn quote_filter(v: Value) -> Result<String, minijinja::Error> {
    let s = v.to_string();
    if s.starts_with(CAPTURE_MARK) && s.ends_with(CAPTURE_MARK) && s.len() > 1 {
        return Ok(s);
    }
    if s.contains('\0') {
        return Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            "a NUL byte cannot be passed to a shell command",
        ));
    }
    Ok(shell::quote(&s))
}

fn basename_filter(v: String) -> String {
    let t = v.trim_end_matches('/');
    t.rsplit('/').next().unwrap_or(t).to_string()
}

fn dirname_filter(v: String) -> String {
    let t = v.trim_end_matches('/');
    match t.rfind('/') {
        Some(0) => "/".to_string(),
        Some(i) => t[..i].to_string(),
        None => ".".to_string(),
    }
}

impl Templates {
    pub fn new() -> Templates {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        // Commands are not HTML: never escape.
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
        env.set_keep_trailing_newline(true);
        env.add_filter("quote", quote_filter);
        env.add_filter("basename", basename_filter);
        env.add_filter("dirname", dirname_filter);
        Templates {
            env,
            meta: Vec::new(),
        }
    }

    /// Compiles a template; syntax errors point into the file.
    pub fn add(&mut self, text: &Text, kind: Kind) -> yaml::Result<TemplateId> {
        let id = self.meta.len();
        let source = match kind {
            Kind::Text => text.src.clone(),
            Kind::Condition => format!(
                "{{% if {} %}}true{{% else %}}false{{% endif %}}",
                text.src.trim()
            ),
        };
        let name = format!("t{id}");
        if let Err(e) = self.env.add_template_owned(name.clone(), source) {
            let mut span = text.span;
            // minijinja counts lines within the template; block scalars start one line below their key.
            if let Some(line) = e.line() {
                if line > 1 {
                    span = Span::point(Pos {
                        line: text.span.start.line + line - 1
                            + usize::from(text.src.contains('\n')),
                        col: 1,
                    });
                }
            }
            let what = match kind {
                Kind::Text => "template",
                Kind::Condition => "`when` expression",
            };
            return Err(yaml::Error::new(
                span,
                format!(
                    "{what} syntax error: {}",
                    e.detail().unwrap_or("invalid syntax")
                ),
            ));
        }
        let tmpl = self
            .env
            .get_template(&name)
            .map_err(|e| yaml::Error::new(text.span, e.to_string()))?;
        let vars = tmpl.undeclared_variables(false);
        self.meta.push((vars, text.span, kind));
        Ok(TemplateId(id))
    }

    pub fn span(&self, id: TemplateId) -> Span {
        self.meta[id.0].1
    }

    /// The top-level variables a template reads.
    pub fn variables(&self, id: TemplateId) -> &HashSet<String> {
        &self.meta[id.0].0
    }

    pub fn render(&self, id: TemplateId, ctx: &Context) -> Result<String, RenderError> {
        let (vars, _, _) = &self.meta[id.0];
        // Missing names are only an error if the template really uses them:
        // `{{ x | default('') }}` and `x is defined` are how a runbook reads an
        // optional inventory var. minijinja's error does not name the variable,
        // so the missing names are worked out here for the message.
        let mut missing: Vec<&String> = vars
            .iter()
            .filter(|v| {
                !ctx.map.contains_key(v.as_str()) && self.env.globals().all(|(g, _)| g != *v)
            })
            .collect();
        missing.sort();
        let tmpl = self
            .env
            .get_template(&format!("t{}", id.0))
            .map_err(|e| RenderError::Other(e.to_string()))?;
        tmpl.render(&ctx.value).map_err(|e| {
            let detail = e
                .detail()
                .map(str::to_string)
                .unwrap_or_else(|| e.kind().to_string());
            if let Some(broken) = missing.iter().find_map(|v| ctx.broken.get(v.as_str())) {
                return broken.clone();
            }
            match (e.kind(), missing.first()) {
                (ErrorKind::UndefinedError, Some(v)) => RenderError::Undefined {
                    name: v.to_string(),
                    hint: did_you_mean(v, ctx.map.keys().map(String::as_str)),
                },
                (ErrorKind::UndefinedError, None) => {
                    RenderError::Other(format!("undefined value: {detail}"))
                }
                _ => RenderError::Other(detail),
            }
        })
    }

    pub fn condition(&self, id: TemplateId, ctx: &Context) -> Result<bool, RenderError> {
        Ok(self.render(id, ctx)? == "true")
    }
}

/// The variables visible to templates on one host, highest precedence last in.
#[derive(Clone, Debug, Default)]
pub struct Context {
    map: BTreeMap<String, Value>,
    value: Value,
    /// Variables that could not be rendered here, with why: reported only if read.
    broken: BTreeMap<String, RenderError>,
}

impl Context {
    pub fn new(map: BTreeMap<String, Value>) -> Context {
        let value = Value::from(map.clone());
        Context {
            map,
            value,
            broken: BTreeMap::new(),
        }
    }

    pub fn with(&self, extra: impl IntoIterator<Item = (String, Value)>) -> Context {
        let mut map = self.map.clone();
        map.extend(extra);
        Context {
            broken: self.broken.clone(),
            ..Context::new(map)
        }
    }

    /// Marks `name` as unavailable: a template reading it fails with `why`.
    pub fn with_broken(mut self, name: &str, why: RenderError) -> Context {
        self.map.remove(name);
        self.value = Value::from(self.map.clone());
        self.broken.insert(name.to_string(), why);
        self
    }

    pub fn contains(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Text {
        Text {
            src: s.to_string(),
            span: Span::default(),
        }
    }

    #[test]
    fn filters_and_strictness() {
        let mut t = Templates::new();
        let id = t
            .add(
                &text("tar czf {{ backup | quote }} {{ pkg | basename }}"),
                Kind::Text,
            )
            .unwrap();
        let ctx = Context::new(BTreeMap::from([
            ("backup".to_string(), Value::from("/d/bak 1.tgz")),
            ("pkg".to_string(), Value::from("/tmp/x/app.zip")),
        ]));
        assert_eq!(
            t.render(id, &ctx).unwrap(),
            "tar czf '/d/bak 1.tgz' app.zip"
        );
        let id2 = t.add(&text("echo {{ bakup }}"), Kind::Text).unwrap();
        assert_eq!(
            t.render(id2, &ctx).unwrap_err().to_string(),
            "undefined variable `bakup`, did you mean `backup`?"
        );
    }

    #[test]
    fn optional_variables_with_default_or_is_defined() {
        let mut t = Templates::new();
        let id = t
            .add(
                &text("{{ home | default('/opt/app') }}{% if extra is defined %} {{ extra }}{% endif %}"),
                Kind::Text,
            )
            .unwrap();
        let empty = Context::new(BTreeMap::new());
        assert_eq!(t.render(id, &empty).unwrap(), "/opt/app");
        let ctx = Context::new(BTreeMap::from([
            ("home".to_string(), Value::from("/data")),
            ("extra".to_string(), Value::from("x")),
        ]));
        assert_eq!(t.render(id, &ctx).unwrap(), "/data x");
        let cond = t
            .add(&text("sharedata is defined"), Kind::Condition)
            .unwrap();
        assert!(!t.condition(cond, &empty).unwrap());
    }

    #[test]
    fn placeholders_survive_quote() {
        let mut t = Templates::new();
        let id = t
            .add(&text("tar xzf {{ f | quote }} -C {{ d }}"), Kind::Text)
            .unwrap();
        let ctx = Context::new(BTreeMap::from([
            ("f".to_string(), Value::from(capture_placeholder("f"))),
            ("d".to_string(), Value::from("/x")),
        ]));
        assert_eq!(
            show_placeholders(&t.render(id, &ctx).unwrap()),
            "tar xzf <captured: f> -C /x"
        );
    }

    #[test]
    fn conditions() {
        let mut t = Templates::new();
        let id = t.add(&text("role == 'primary'"), Kind::Condition).unwrap();
        let ctx = Context::new(BTreeMap::from([(
            "role".to_string(),
            Value::from("primary"),
        )]));
        assert!(t.condition(id, &ctx).unwrap());
        let bad = t.add(&text("role =="), Kind::Condition).unwrap_err();
        assert!(
            bad.message.starts_with("`when` expression syntax error"),
            "{}",
            bad.message
        );
    }
}
