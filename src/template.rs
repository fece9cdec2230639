//! Templates: minijinja with strict undefined, and the filters runbooks need.
//!
//! All templates of a runbook are compiled once (planning 200 steps on 500
//! hosts renders 100 000 of them), and the variables each one reads are
//! known up front, so an undefined variable is reported by name with a
//! suggestion rather than as minijinja's generic "undefined value".

pub mod budget;
mod tags;

use crate::diagnostic::{did_you_mean, Pos, SourceFile, Span};
use crate::shell;
use crate::yaml;
use minijinja::value::Value;
use minijinja::{Environment, ErrorKind, UndefinedBehavior};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

/// A piece of template text from the file, with where it was written.
#[derive(Debug, Clone, PartialEq)]
pub struct Text {
    pub src: String,
    pub span: Span,
}

impl Text {
    /// Where byte `offset` of the text sits in the file, `width` characters wide.
    ///
    /// Exact for plain and block scalars; in a quoted scalar an escape before
    /// the offset shifts it. When the text cannot be found, the whole value.
    pub fn locate(&self, source: &SourceFile, offset: usize, width: usize) -> Span {
        let offset = offset.min(self.src.len());
        if !self.src.is_char_boundary(offset) {
            return self.span;
        }
        let before = &self.src[..offset];
        let line_idx = before.matches('\n').count();
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let col_in_line = self.src[line_start..offset].chars().count();
        let content_line = self.src[line_start..].lines().next().unwrap_or_default();
        let src_lines: Vec<&str> = source.text.lines().collect();
        let start = self.span.start;
        let pos = if self.src.contains('\n') || self.span.end.line > start.line {
            // A block scalar: find the content line below the key.
            let guess = start.line
                + line_idx
                + usize::from(!first_line_on_key_line(&src_lines, start, &self.src));
            let indent = content_line.len() - content_line.trim_start().len();
            match src_lines.get(guess.wrapping_sub(1)).and_then(|l| {
                l.find(content_line.trim_start())
                    .filter(|_| !content_line.trim().is_empty())
                    .map(|byte| (l, byte))
            }) {
                Some((l, byte)) => Pos {
                    line: guess,
                    col: (l[..byte].chars().count() + 1 + col_in_line).saturating_sub(indent),
                },
                None => return self.span,
            }
        } else {
            let line = src_lines
                .get(start.line.wrapping_sub(1))
                .copied()
                .unwrap_or_default();
            let quoted = line
                .chars()
                .nth(start.col.saturating_sub(1))
                .is_some_and(|c| c == '"' || c == '\'');
            Pos {
                line: start.line,
                col: start.col + col_in_line + usize::from(quoted),
            }
        };
        Span {
            start: pos,
            end: Pos {
                line: pos.line,
                col: pos.col + width.max(1),
            },
        }
    }
}

/// Stands in for a value that is only known once a step has captured it.
/// It passes through `quote` untouched so the plan can show `<captured: NAME>`.
const CAPTURE_MARK: char = '\u{1}';

/// A per-process random key inside every placeholder: a value from an
/// operator, an inventory or a host's output cannot pose as a placeholder and
/// slip through `quote` unquoted.
fn nonce() -> &'static str {
    static NONCE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NONCE.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        let part = || {
            std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish()
        };
        format!("{:016x}{:016x}", part(), part())
    })
}

fn open_mark() -> &'static str {
    static OPEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    OPEN.get_or_init(|| format!("{CAPTURE_MARK}{}", nonce()))
}

pub fn capture_placeholder(name: &str) -> String {
    format!("{}captured:{name}{CAPTURE_MARK}", open_mark())
}

/// The inside of a genuine placeholder (`captured:NAME`, maybe with filters).
fn placeholder_body(s: &str) -> Option<&str> {
    let body = s.strip_prefix(open_mark())?.strip_suffix(CAPTURE_MARK)?;
    (!body.contains(CAPTURE_MARK)).then_some(body)
}

/// Replaces capture placeholders with the readable `<captured: NAME>`.
pub fn show_placeholders(s: String) -> String {
    // Nearly every rendered text has no marker at all: a char scan settles it.
    if !s.contains(CAPTURE_MARK) {
        return s;
    }
    let open = open_mark();
    if !s.contains(open) {
        return s;
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s.as_str();
    while let Some(start) = rest.find(open) {
        let after = &rest[start + open.len()..];
        let Some(end) = after.find(CAPTURE_MARK) else {
            break;
        };
        out.push_str(&rest[..start]);
        out.push_str(&format!("<{}>", after[..end].replacen(':', ": ", 1)));
        rest = &after[end + CAPTURE_MARK.len_utf8()..];
    }
    out.push_str(rest);
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
    /// The file the templates come from, to point syntax errors at the exact column.
    source: Option<Arc<SourceFile>>,
    /// Per template: the top-level variables it reads, and its text for errors.
    meta: Vec<(HashSet<String>, Text, Kind)>,
    /// Template names by id, so rendering does not format one each time.
    names: Vec<String>,
    /// Each template's variables in a fixed order: the memo key.
    sorted_vars: Vec<Vec<String>>,
    /// Rendered text by template and the values of the variables it reads:
    /// most commands read only group- or inventory-wide values, so on 500 hosts
    /// they render to the same text and need rendering once.
    #[allow(clippy::type_complexity)]
    memo: Vec<std::sync::Mutex<std::collections::HashMap<Vec<Value>, String>>>,
    /// Where each template is, for the render watch (`budget::Watch`).
    sites: Vec<Arc<budget::Site>>,
    /// What the templates added now belong to (`in step `X``), for the watch's message.
    owner: Option<String>,
}

impl Default for Templates {
    fn default() -> Self {
        Self::new()
    }
}

/// Why a template could not be rendered for a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenderError {
    Undefined {
        name: String,
        hint: String,
    },
    /// `{{ host.nmae }}`: the object exists, the attribute does not.
    NoAttribute {
        object: String,
        attr: String,
        hint: String,
    },
    Other(String),
    /// Several problems of one template (every undefined variable it reads), in text order.
    Many(Vec<RenderError>),
    /// An error already placed in the file (a runbook var that failed to render).
    Located {
        message: String,
        span: Span,
    },
    /// The template ran into the render budget (`budget`).
    Budget(budget::Exceeded),
}

impl std::fmt::Display for RenderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RenderError::Undefined { name, hint } => write!(f, "undefined variable `{name}`{hint}"),
            RenderError::NoAttribute { object, attr, hint } => {
                write!(f, "`{object}` has no attribute `{attr}`{hint}")
            }
            RenderError::Other(m) | RenderError::Located { message: m, .. } => f.write_str(m),
            RenderError::Many(all) => {
                let shown: Vec<String> = all.iter().map(ToString::to_string).collect();
                f.write_str(&shown.join("; "))
            }
            RenderError::Budget(exceeded) => exceeded.fmt(f),
        }
    }
}

fn quote_filter(v: Value) -> Result<String, minijinja::Error> {
    // Strict undefined must hold through the filter: `{{ typo | quote }}` would
    // otherwise become `''` and run.
    if v.is_undefined() {
        return Err(minijinja::Error::new(
            ErrorKind::UndefinedError,
            "undefined value passed to `quote`",
        ));
    }
    let s = v.to_string();
    if placeholder_body(&s).is_some() {
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

/// A path filter applied to a value only known at run time stays visible as such in
/// the plan (`<captured: dm_bin | dirname>`) instead of being computed from the marker.
fn placeholder_with(v: &str, filter: &str) -> Option<String> {
    let inner = placeholder_body(v)?;
    Some(format!("{}{inner} | {filter}{CAPTURE_MARK}", open_mark()))
}

fn basename_filter(v: String) -> String {
    if let Some(p) = placeholder_with(&v, "basename") {
        return p;
    }
    let t = v.trim_end_matches('/');
    t.rsplit('/').next().unwrap_or(t).to_string()
}

fn dirname_filter(v: String) -> String {
    if let Some(p) = placeholder_with(&v, "dirname") {
        return p;
    }
    let t = v.trim_end_matches('/');
    match t.rfind('/') {
        Some(0) => "/".to_string(),
        Some(i) => t[..i].to_string(),
        None => ".".to_string(),
    }
}

/// `{{ v | regex_escape }}`: a value matched as text inside an `expect` pattern.
///
/// Unescaped, a captured `v1.2|` turns `installed {{ want }}` into an alternation
/// that matches anything. A value of several lines is refused rather than
/// escaped: `(?m)^pid {{ old }}$` would then match no line, and a `stdout_not`
/// would pass while the old pid still runs.
fn regex_escape_filter(v: Value) -> Result<String, minijinja::Error> {
    if v.is_undefined() {
        return Err(minijinja::Error::new(
            ErrorKind::UndefinedError,
            "undefined value passed to `regex_escape`",
        ));
    }
    let s = v.to_string();
    if let Some(p) = placeholder_with(&s, "regex_escape") {
        return Ok(p);
    }
    if s.contains('\n') {
        return Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            "`regex_escape` was given a value of more than one line: capture one line (`| head -n 1`), or match each line in a step of its own",
        ));
    }
    Ok(regex::escape(&s))
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
        env.add_filter("regex_escape", regex_escape_filter);
        // A runbook is input: no template may loop, nest or grow without bound.
        env.set_fuel(Some(budget::INSTRUCTIONS));
        env.set_recursion_limit(budget::RECURSION);
        env.add_filter("replace", budget::replace);
        Templates {
            env,
            source: None,
            meta: Vec::new(),
            names: Vec::new(),
            memo: Vec::new(),
            sorted_vars: Vec::new(),
            sites: Vec::new(),
            owner: None,
        }
    }

    /// Names what the templates added from now on belong to (`in step `X``):
    /// the watch's message says it, as the planner's errors do.
    pub fn belong_to(&mut self, owner: impl Into<String>) {
        self.owner = Some(owner.into());
    }

    /// Templates from one file: syntax errors inside block scalars get an exact column.
    pub fn for_source(source: Arc<SourceFile>) -> Templates {
        Templates {
            source: Some(source),
            ..Templates::new()
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
        let site = self.site(text);
        // Compiling folds constant expressions: `{{ 'x' * 100000000 ~ ... }}` is
        // built here, before any render, so the watch looks at this too.
        let sliced = tags::sliced_names(&source);
        let watched = budget::watched(&site);
        let compiled = self.env.add_template_owned(name.clone(), source);
        let kept = watched.kept();
        drop(watched);
        // A runbook of many such templates would otherwise keep each one's
        // constant: 100 MB per step, within every per-render budget.
        if compiled.is_ok() && kept > budget::OUTPUT_BYTES {
            let _ = self.env.add_template_owned(name, String::new());
            let what = self
                .owner
                .as_ref()
                .map(|o| format!("{o}: "))
                .unwrap_or_default();
            return Err(yaml::Error::new(
                text.span,
                format!("{what}{}", budget::Exceeded::Compiled(kept)),
            ));
        }
        if let Err(e) = compiled {
            let mut span = text.span;
            // minijinja counts lines within the template; point at that line of the value.
            if let Some(line) = e.line() {
                let lines = text.src.lines().count().max(1);
                // "Unexpected end of input" is reported on the line after the last one.
                let line = line.clamp(1, lines);
                if text.src.contains('\n') {
                    let offset: usize = text
                        .src
                        .split_inclusive('\n')
                        .take(line - 1)
                        .map(str::len)
                        .sum();
                    let first = text.src[offset..].lines().next().unwrap_or_default();
                    let indent = first.len() - first.trim_start().len();
                    let width = first.trim().chars().count();
                    span = match &self.source {
                        Some(source) => text.locate(source, offset + indent, width),
                        // Without the file, only the line is known: a block's content starts below its key.
                        None => Span::point(Pos {
                            line: text.span.start.line + line,
                            col: 1,
                        }),
                    };
                }
            }
            // `${#VAR}` (the shell's length) opens a Jinja comment that never closes:
            // point at the `{#`, not at the whole text.
            let comment = e
                .detail()
                .is_some_and(|d| d.contains("end of comment"))
                .then(|| unclosed_comment(&text.src))
                .flatten();
            if let (Some(at), Some(source)) = (comment, &self.source) {
                span = text.locate(source, at, 2);
            }
            let what = match kind {
                Kind::Text => "template",
                Kind::Condition => "`when` expression",
            };
            let detail = e.detail().unwrap_or("invalid syntax");
            let err = match kind {
                Kind::Text => yaml::Error::new(span, format!("{what} syntax error: {detail}")),
                // The expression sits inside `{% if ... %}`: "block" would mean nothing to the author.
                Kind::Condition => yaml::Error::new(
                    span,
                    format!(
                        "{what} syntax error: {}",
                        detail.replace("end of block", "end of expression")
                    ),
                ),
            };
            return Err(if kind == Kind::Condition && text.src.contains("{{") {
                err.help("`when` is an expression, not a template: write `http_port == 6888`, without `{{ }}`")
            } else if comment.is_some() {
                err.help("`{#` opens a template comment: for the shell's `${#VAR}` write `${{ '{#' }}VAR}`, or wrap the text in `{% raw %}...{% endraw %}`")
            } else {
                err
            });
        }
        let tmpl = self
            .env
            .get_template(&name)
            .map_err(|e| yaml::Error::new(text.span, e.to_string()))?;
        let mut vars = tmpl.undeclared_variables(false);
        vars.extend(sliced);
        let mut sorted: Vec<String> = vars.iter().cloned().collect();
        sorted.sort();
        self.sorted_vars.push(sorted);
        self.memo.push(Default::default());
        self.sites.push(site);
        self.meta.push((vars, text.clone(), kind));
        self.names.push(name);
        Ok(TemplateId(id))
    }

    /// The text of `id` with each `{{ }}` that reads one of `secret` shown as
    /// `mask`, compiled: what the record renders instead of `id`, so a secret
    /// a filter transforms is shown masked, not as the filter of the mask
    /// (`{{ pw | length }}` would say 6). `None`: no tag of it reads one (or
    /// the masked text does not compile, and `id` is rendered as it is).
    pub fn add_masked(
        &mut self,
        id: TemplateId,
        secret: &HashSet<String>,
        mask: &str,
    ) -> Option<TemplateId> {
        let (_, text, kind) = &self.meta[id.0];
        if *kind != Kind::Text {
            return None;
        }
        let src = tags::masked_tags(&text.src, secret, mask)?;
        let text = Text {
            src,
            span: text.span,
        };
        self.add(&text, Kind::Text).ok()
    }

    /// Like `add`, but a syntax error is noted in `errors` and the id stands for
    /// nothing renderable: every syntax error of a file is reported in one pass,
    /// and nothing is rendered when there is one.
    pub fn add_noting(
        &mut self,
        text: &Text,
        kind: Kind,
        errors: &mut Vec<yaml::Error>,
    ) -> TemplateId {
        match self.add(text, kind) {
            Ok(id) => id,
            Err(e) => {
                errors.push(e);
                let id = self.meta.len();
                // It renders as empty text (a `when` as false), so the other templates
                // can still be rendered for their own errors; the planner never hands
                // out templates of which one failed (see `Planner::new`).
                let name = format!("t{id}");
                let stand_in = match kind {
                    Kind::Text => "",
                    Kind::Condition => "false",
                };
                let _ = self
                    .env
                    .add_template_owned(name.clone(), stand_in.to_string());
                self.sorted_vars.push(Vec::new());
                self.memo.push(Default::default());
                self.sites.push(self.site(text));
                self.meta.push((HashSet::new(), text.clone(), kind));
                self.names.push(name);
                TemplateId(id)
            }
        }
    }

    fn site(&self, text: &Text) -> Arc<budget::Site> {
        Arc::new(budget::Site::new(
            self.owner.clone(),
            self.source.clone(),
            text.span,
            text.src.clone(),
        ))
    }

    /// The template as written in the file.
    pub fn text(&self, id: TemplateId) -> &Text {
        &self.meta[id.0].1
    }

    /// The top-level variables a template reads.
    pub fn variables(&self, id: TemplateId) -> &HashSet<String> {
        &self.meta[id.0].0
    }

    pub fn render(&self, id: TemplateId, ctx: &Context) -> Result<String, RenderError> {
        let (vars, _, _) = &self.meta[id.0];
        let key: Option<Vec<Value>> = self.sorted_vars[id.0]
            .iter()
            .map(|v| ctx.get(v).cloned())
            .collect();
        // One lock per template: threads planning different steps never wait on each other.
        let memo = &self.memo[id.0];
        if let Some(key) = &key {
            if let Some(hit) = memo.lock().unwrap_or_else(|p| p.into_inner()).get(key) {
                return Ok(hit.clone());
            }
        }
        let out = self.render_uncached(id, ctx, vars)?;
        if let Some(key) = key {
            memo.lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key, out.clone());
        }
        Ok(out)
    }

    fn render_uncached(
        &self,
        id: TemplateId,
        ctx: &Context,
        vars: &HashSet<String>,
    ) -> Result<String, RenderError> {
        let tmpl = self
            .env
            .get_template(&self.names[id.0])
            .map_err(|e| RenderError::Other(e.to_string()))?;
        let _watched = budget::watched(&self.sites[id.0]);
        render_bounded(&tmpl, &ctx.value).map_err(|e| {
            let e = match e {
                Bounded::Exceeded(exceeded) => return RenderError::Budget(exceeded),
                Bounded::Failed(e) => e,
            };
            // Missing names are only an error if the template really uses them:
            // `{{ x | default('') }}` and `x is defined` are how a runbook reads an
            // optional inventory var. minijinja's error does not name the variable,
            // so the missing names are worked out here, on failure only.
            let mut missing: Vec<&String> = vars
                .iter()
                .filter(|v| !ctx.contains(v.as_str()) && self.env.globals().all(|(g, _)| g != *v))
                .collect();
            missing.sort();
            let detail = e
                .detail()
                .map(str::to_string)
                .unwrap_or_else(|| e.kind().to_string());
            if let Some(broken) = missing.iter().find_map(|v| ctx.broken.get(v.as_str())) {
                return broken.clone();
            }
            match (e.kind(), missing.first()) {
                // Every missing name at once: fixing one to be told of the next is slow.
                (ErrorKind::UndefinedError, Some(_)) => {
                    let required = required_names(&tmpl, ctx, &missing);
                    // A typo of an attribute (`host.nmae`) next to an undefined name is
                    // one more problem of the same pass, not one for the next run.
                    let mut all: Vec<(usize, RenderError)> = required
                        .iter()
                        .map(|v| RenderError::Undefined {
                            name: v.to_string(),
                            hint: did_you_mean(v, ctx.keys()),
                        })
                        .chain(self.missing_attributes(id, ctx))
                        .map(|err| {
                            let at = self.locate_error(id, &err).map_or(usize::MAX, |(o, _)| o);
                            (at, err)
                        })
                        .collect();
                    all.sort_by_key(|(at, _)| *at);
                    let mut all: Vec<RenderError> = all.into_iter().map(|(_, e)| e).collect();
                    if all.len() == 1 {
                        all.remove(0)
                    } else {
                        RenderError::Many(all)
                    }
                }
                (ErrorKind::UndefinedError, None) => {
                    let mut all = self.missing_attributes(id, ctx);
                    match all.len() {
                        0 => RenderError::Other(format!("undefined value: {detail}")),
                        1 => all.remove(0),
                        _ => RenderError::Many(all),
                    }
                }
                _ => RenderError::Other(detail),
            }
        })
    }

    /// minijinja says only "undefined value"; find every `object.attr` that has no such attribute.
    fn missing_attributes(&self, id: TemplateId, ctx: &Context) -> Vec<RenderError> {
        let mut found = Vec::new();
        let src = &self.meta[id.0].1.src;
        let kind = self.meta[id.0].2;
        for (offset, _) in src.match_indices('.') {
            if kind == Kind::Text && !inside_expression(src, offset) {
                continue;
            }
            let Some(object) = ident_before(src, offset) else {
                continue;
            };
            // Only top-level names: in `host.groups.x` the object of `.x` is not the variable `groups`.
            let object_start = src[..offset].trim_end().len() - object.len();
            if src[..object_start].trim_end().ends_with('.') {
                continue;
            }
            let Some(attr) = ident_after(src, offset + 1) else {
                continue;
            };
            // `host.vars.x | default('')` and `host.x is defined` read an optional attribute.
            let after = src[offset + 1..]
                .trim_start()
                .get(attr.len()..)
                .unwrap_or("")
                .trim_start();
            let filter = after.strip_prefix('|').map(str::trim_start);
            if after.starts_with("is ")
                || filter.is_some_and(|f| f.starts_with("default") || f.starts_with("d("))
            {
                continue;
            }
            let Some(value) = ctx.get(object) else {
                continue;
            };
            if value.kind() != minijinja::value::ValueKind::Map {
                continue;
            }
            if value.get_attr(attr).map_or(true, |v| v.is_undefined()) {
                let keys: Vec<String> = value
                    .try_iter()
                    .map(|it| it.map(|k| k.to_string()).collect())
                    .unwrap_or_default();
                found.push(RenderError::NoAttribute {
                    object: object.to_string(),
                    attr: attr.to_string(),
                    hint: did_you_mean(attr, keys.iter().map(String::as_str)),
                });
            }
        }
        found
    }

    /// Byte offset and width (in characters) of the name a render error is about.
    pub fn locate_error(&self, id: TemplateId, e: &RenderError) -> Option<(usize, usize)> {
        let (_, text, kind) = &self.meta[id.0];
        let src = text.src.as_str();
        let in_expr = |at: usize| *kind == Kind::Condition || inside_expression(src, at);
        let is_word_at = |at: usize, word: &str| {
            !src[..at].ends_with(is_ident) && !src[at + word.len()..].starts_with(is_ident)
        };
        match e {
            RenderError::Undefined { name, .. } => src
                .match_indices(name.as_str())
                .map(|(at, _)| at)
                .find(|&at| in_expr(at) && is_word_at(at, name))
                .map(|at| (at, name.chars().count())),
            RenderError::NoAttribute { object, attr, .. } => src
                .match_indices(object.as_str())
                .map(|(at, _)| at)
                .filter(|&at| {
                    in_expr(at) && is_word_at(at, object) && !src[..at].trim_end().ends_with('.')
                })
                .find_map(|at| {
                    let rest = src[at + object.len()..].trim_start().strip_prefix('.')?;
                    let rest_trimmed = rest.trim_start();
                    let word = ident_after(rest_trimmed, 0)?;
                    (word == attr).then(|| {
                        let end = src.len() - rest_trimmed.len() + word.len();
                        (at, src[at..end].chars().count())
                    })
                }),
            RenderError::Other(_)
            | RenderError::Located { .. }
            | RenderError::Many(_)
            | RenderError::Budget(_) => None,
        }
    }

    /// What `opsrun check` can tell of a template without an inventory: the
    /// error of rendering it with every variable it reads as empty text, if that
    /// error holds whatever the variables are. A budget error does (a bomb is one
    /// whatever it is fed); any error does when the template reads no variable at
    /// all (`{{ range(100000000) }}`), since nothing an inventory gives changes it.
    pub fn fails_whatever_its_variables(&self, id: TemplateId) -> Option<RenderError> {
        let globals: HashSet<&str> = self.env.globals().map(|(g, _)| g).collect();
        let stand_ins: BTreeMap<String, Value> = self.meta[id.0]
            .0
            .iter()
            // `range` and the other functions are read like variables.
            .filter(|v| !globals.contains(v.as_str()))
            .map(|v| (v.clone(), Value::from("")))
            .collect();
        let constant = stand_ins.is_empty();
        match self.render(id, &Context::new(stand_ins)) {
            Err(e @ RenderError::Budget(_)) => Some(e),
            Err(e) if constant => Some(e),
            _ => None,
        }
    }

    pub fn condition(&self, id: TemplateId, ctx: &Context) -> Result<bool, RenderError> {
        Ok(self.render(id, ctx)? == "true")
    }
}

/// Why a render within the budget produced no text.
enum Bounded {
    Exceeded(budget::Exceeded),
    Failed(minijinja::Error),
}

/// Renders with the output capped at the budget (`budget::Output`).
fn render_bounded(tmpl: &minijinja::Template<'_, '_>, value: &Value) -> Result<String, Bounded> {
    let mut out = budget::Output::default();
    match tmpl.render_captured_to(value, &mut out) {
        // Templates and values are `str`: the output is UTF-8 (lossless all the same).
        Ok(_) => Ok(String::from_utf8(out.text)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())),
        Err(e) => Err(match budget::Exceeded::of(&e, &out) {
            Some(exceeded) => Bounded::Exceeded(exceeded),
            None => Bounded::Failed(e),
        }),
    }
}

/// Which of the `missing` names a failed render really needs: a name read only
/// through `default(...)` or `is defined` is not one. Worked out on failure only,
/// by rendering with the other names given a stand-in value; when that cannot
/// tell, the first missing name, as minijinja does not name it.
fn required_names<'a>(
    tmpl: &minijinja::Template<'_, '_>,
    ctx: &Context,
    missing: &[&'a String],
) -> Vec<&'a String> {
    let stand_in = |except: Option<&str>| {
        ctx.with(
            missing
                .iter()
                .filter(|v| Some(v.as_str()) != except)
                .map(|v| (v.to_string(), Value::from(""))),
        )
    };
    let fails_without = |name: &str| {
        render_bounded(tmpl, &stand_in(Some(name)).value).is_err_and(
            |e| matches!(e, Bounded::Failed(e) if e.kind() == ErrorKind::UndefinedError),
        )
    };
    let required: Vec<&String> =
        if missing.len() > 1 && render_bounded(tmpl, &stand_in(None).value).is_ok() {
            missing
                .iter()
                .copied()
                .filter(|v| fails_without(v))
                .collect()
        } else {
            Vec::new()
        };
    if required.is_empty() {
        missing.first().copied().into_iter().collect()
    } else {
        required
    }
}

/// Byte offset of the first `{#` that no `#}` closes.
fn unclosed_comment(src: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = src[from..].find("{#") {
        let at = from + i;
        match src[at + 2..].find("#}") {
            Some(j) => from = at + 2 + j + 2,
            None => return Some(at),
        }
    }
    None
}

/// Whether byte `offset` is inside `{{ }}` or `{% %}` rather than literal text.
fn inside_expression(src: &str, offset: usize) -> bool {
    let head = &src[..offset];
    let open = head.rfind("{{").max(head.rfind("{%"));
    let close = head.rfind("}}").max(head.rfind("%}"));
    match (open, close) {
        (Some(o), Some(c)) => o > c,
        (Some(_), None) => true,
        _ => false,
    }
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The identifier ending at byte `end` (spaces before `end` allowed, as in `host .name`).
fn ident_before(src: &str, end: usize) -> Option<&str> {
    let head = src[..end].trim_end();
    let start = head
        .char_indices()
        .rev()
        .take_while(|(_, c)| is_ident(*c))
        .last()
        .map(|(i, _)| i)?;
    let word = &head[start..];
    word.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        .then_some(word)
}

fn ident_after(src: &str, start: usize) -> Option<&str> {
    let tail = src[start..].trim_start();
    let len = tail.find(|c: char| !is_ident(c)).unwrap_or(tail.len());
    let word = &tail[..len];
    word.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        .then_some(word)
}

/// The variables visible to templates on one host, highest precedence last in.
///
/// Layered so that adding a few per-step variables to a cached host context
/// costs a small map, not a copy of everything (planning renders 100 000
/// targets for 200 steps on 500 hosts).
#[derive(Clone, Debug, Default)]
pub struct Context {
    layers: Vec<Arc<BTreeMap<String, Value>>>,
    value: Value,
    /// Variables that could not be rendered here, with why: reported only if read.
    broken: Arc<BTreeMap<String, RenderError>>,
}

impl Context {
    pub fn new(map: BTreeMap<String, Value>) -> Context {
        let value = Value::from(map.clone());
        Context {
            layers: vec![Arc::new(map)],
            value,
            broken: Arc::new(BTreeMap::new()),
        }
    }

    /// This context with `extra` on top (later keys win).
    pub fn with(&self, extra: impl IntoIterator<Item = (String, Value)>) -> Context {
        let map: BTreeMap<String, Value> = extra.into_iter().collect();
        let value = minijinja::value::merge_maps([self.value.clone(), Value::from(map.clone())]);
        let mut layers = self.layers.clone();
        layers.push(Arc::new(map));
        Context {
            layers,
            value,
            broken: self.broken.clone(),
        }
    }

    /// Marks `name` as unavailable: a template reading it fails with `why`.
    /// (Runbook vars are only ever added after they render, so there is nothing to remove.)
    pub fn with_broken(mut self, name: &str, why: RenderError) -> Context {
        Arc::make_mut(&mut self.broken).insert(name.to_string(), why);
        self
    }

    pub fn contains(&self, name: &str) -> bool {
        self.layers.iter().any(|l| l.contains_key(name))
    }

    pub fn get(&self, name: &str) -> Option<&Value> {
        self.layers.iter().rev().find_map(|l| l.get(name))
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.layers
            .iter()
            .flat_map(|l| l.keys().map(String::as_str))
    }
}

fn first_line_on_key_line(src_lines: &[&str], start: Pos, text: &str) -> bool {
    let first = text.lines().next().unwrap_or_default().trim();
    !first.is_empty()
        && src_lines
            .get(start.line.wrapping_sub(1))
            .is_some_and(|l| l.contains(first))
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
    fn every_undefined_variable_is_reported_but_not_an_optional_one() {
        let mut t = Templates::new();
        let id = t
            .add(
                &text("{{ b }} {{ opt | default('') }}{% if x is defined %}{{ x }}{% endif %} {{ a }}"),
                Kind::Text,
            )
            .unwrap();
        let err = t.render(id, &Context::new(BTreeMap::new())).unwrap_err();
        assert_eq!(
            err.to_string(),
            "undefined variable `b`; undefined variable `a`",
            "in text order, without `opt` and `x`"
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
            show_placeholders(t.render(id, &ctx).unwrap()),
            "tar xzf <captured: f> -C /x"
        );
        let id = t
            .add(&text("{{ (f | dirname ~ '/x') | quote }}"), Kind::Text)
            .unwrap();
        assert_eq!(
            show_placeholders(t.render(id, &ctx).unwrap()),
            "'<captured: f | dirname>/x'"
        );
    }

    #[test]
    fn a_value_cannot_pose_as_a_placeholder() {
        let mut t = Templates::new();
        let id = t
            .add(&text("echo {{ label | quote }}"), Kind::Text)
            .unwrap();
        let forged = "\u{1}/dev/null\u{1} ; touch /tmp/pwned ; echo \u{1}x\u{1}";
        let ctx = Context::new(BTreeMap::from([("label".to_string(), Value::from(forged))]));
        let out = show_placeholders(t.render(id, &ctx).unwrap());
        assert_eq!(out, format!("echo {}", shell::quote(forged)));
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
