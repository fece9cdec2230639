//! YAML → a tree of nodes that remember where they came from.
//!
//! opsrun decodes runbooks and inventories from this tree by hand rather than
//! through serde: only then can every error (unknown field, wrong type,
//! duplicate name) point at the exact line and column and suggest the near
//! miss. The parser underneath is `saphyr-parser`, a maintained, pure-Rust
//! YAML 1.2 parser that reports errors instead of panicking.

use crate::diagnostic::{did_you_mean, Pos, Span};
use saphyr_parser::{Event, Parser, ScalarStyle};
use std::collections::HashMap;

/// Aliases can multiply a small file into a huge tree ("billion laughs").
const MAX_NODES: usize = 200_000;
const MAX_DEPTH: usize = 64;

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    pub span: Span,
    /// The scalar as written: `port: 022` decoded into a string field stays "022".
    pub raw: Option<String>,
}

/// A problem with a position; the loader adds the file to make a `Diagnostic`.
#[derive(Debug, Clone, PartialEq)]
pub struct Error {
    pub span: Span,
    pub message: String,
    pub help: Option<String>,
}

impl Error {
    /// This error as a diagnostic of `source`: the one way a YAML problem is reported.
    pub fn in_file(
        self,
        source: &std::sync::Arc<crate::diagnostic::SourceFile>,
    ) -> crate::diagnostic::Diagnostic {
        crate::diagnostic::Diagnostic::error(source.clone(), self.span, self.message, self.help)
    }

    pub fn new(span: Span, message: impl Into<String>) -> Error {
        Error {
            span,
            message: message.into(),
            help: None,
        }
    }

    pub fn help(mut self, help: impl Into<String>) -> Error {
        self.help = Some(help.into());
        self
    }
}

pub type Result<T> = std::result::Result<T, Error>;

fn pos(m: saphyr_parser::Marker) -> Pos {
    Pos {
        line: m.line(),
        col: m.col() + 1,
    }
}

fn span(s: saphyr_parser::Span) -> Span {
    Span {
        start: pos(s.start),
        end: pos(s.end),
    }
}

/// Parses exactly one YAML document. An empty file is `Null` at 1:1.
pub fn parse(text: &str) -> Result<Node> {
    let mut b = Builder {
        parser: Parser::new_from_str(text),
        text,
        anchors: HashMap::new(),
        nodes: 0,
        open: Vec::new(),
    };
    let mut doc: Option<Node> = None;
    loop {
        let (ev, sp) = b.next()?;
        match ev {
            Event::StreamStart | Event::DocumentEnd | Event::Nothing => {}
            Event::StreamEnd => break,
            Event::DocumentStart(_) => {
                if doc.is_some() {
                    return Err(Error::new(
                        span(sp),
                        "a second YAML document (`---`) in the same file",
                    )
                    .help("keep one runbook or inventory per file"));
                }
                let (ev, sp) = b.next()?;
                doc = Some(b.node(ev, sp, 0)?);
            }
            other => {
                return Err(Error::new(
                    span(sp),
                    format!("unexpected YAML event {other:?}"),
                ))
            }
        }
    }
    Ok(doc.unwrap_or(Node {
        value: Value::Null,
        span: Span::point(Pos { line: 1, col: 1 }),
        raw: None,
    }))
}

struct Builder<'a> {
    parser: Parser<'a, saphyr_parser::StrInput<'a>>,
    text: &'a str,
    anchors: HashMap<usize, Node>,
    nodes: usize,
    /// Where each collection being built starts: an unclosed `[` or `{` is reported there.
    open: Vec<Pos>,
}

impl<'a> Builder<'a> {
    fn next(&mut self) -> Result<(Event<'a>, saphyr_parser::Span)> {
        match self.parser.next_event() {
            Some(Ok(x)) => Ok(x),
            Some(Err(e)) => Err(self.syntax_error(pos(*e.marker()), e.info())),
            None => Err(Error::new(Span::default(), "unexpected end of YAML input")),
        }
    }

    /// The parser's message, moved to where the mistake is and explained where it is terse.
    fn syntax_error(&self, at: Pos, info: &str) -> Error {
        let lines: Vec<&str> = self.text.lines().collect();
        let mut at = at;
        // Errors found at the end of input point past the last line, where no source can be shown.
        if at.line > lines.len() || at.line == 0 {
            match lines.iter().rposition(|l| !l.trim().is_empty()) {
                Some(i) => {
                    at = Pos {
                        line: i + 1,
                        col: lines[i].chars().count() + 1,
                    }
                }
                None => at = Pos { line: 1, col: 1 },
            }
        }
        let line = lines.get(at.line - 1).copied().unwrap_or_default();
        let mut err = Error::new(Span::point(at), format!("invalid YAML: {info}"));
        if info.contains("tab") {
            if let Some(col) = line.chars().position(|c| c == '\t') {
                err.span = Span::point(Pos {
                    line: at.line,
                    col: col + 1,
                });
                err.message = "invalid YAML: a tab character where YAML expects spaces".into();
                return err.help("YAML indentation must use spaces: replace the tab with spaces");
            }
        }
        if info.contains("unknown anchor") {
            let name: String = line
                .chars()
                .skip(at.col - 1)
                .skip_while(|c| *c == '*')
                .take_while(|c| !c.is_whitespace() && !matches!(c, ',' | ']' | '}'))
                .collect();
            if !name.is_empty() {
                let mut end = at;
                end.col += name.chars().count() + 1;
                err.span.end = end;
                err.message = format!(
                    "invalid YAML: alias `*{name}` refers to no anchor `&{name}` defined before it"
                );
                return err;
            }
        }
        if info.contains("flow sequence") || info.contains("flow mapping") {
            let opener = self.open.iter().rev().find_map(|p| {
                let c = lines
                    .get(p.line.checked_sub(1)?)?
                    .chars()
                    .nth(p.col.checked_sub(1)?)?;
                matches!(c, '[' | '{').then_some((c, *p))
            });
            if let Some((c, p)) = opener {
                let close = if c == '[' { ']' } else { '}' };
                return err.help(format!(
                    "the `{c}` at line {}, column {} needs a closing `{close}`, and items inside it are separated by `,`",
                    p.line, p.col
                ));
            }
        }
        if info.contains("quoted scalar") {
            return err.help("a quoted string runs until its closing quote: is one missing?");
        }
        if info.contains("block collection")
            || info.contains("block mapping")
            || info.contains("indentation")
        {
            return err.help("check the indentation: keys of one mapping, and items of one list, must start in the same column");
        }
        err
    }

    fn count(&mut self, sp: Span, n: usize) -> Result<()> {
        self.nodes += n;
        if self.nodes > MAX_NODES {
            return Err(Error::new(
                sp,
                format!("document too large: more than {MAX_NODES} nodes (alias expansion?)"),
            ));
        }
        Ok(())
    }

    fn node(&mut self, ev: Event<'a>, sp: saphyr_parser::Span, depth: usize) -> Result<Node> {
        let sp_ = span(sp);
        if depth > MAX_DEPTH {
            return Err(Error::new(
                sp_,
                format!("nesting deeper than {MAX_DEPTH} levels"),
            ));
        }
        self.count(sp_, 1)?;
        let (node, anchor) = match ev {
            Event::Scalar(text, style, anchor, tag) => {
                let value = if style == ScalarStyle::Plain && tag.is_none() {
                    resolve_plain(&text)
                } else if let Some(tag) = tag.filter(|t| t.is_yaml_core_schema()) {
                    resolve_tagged(&tag.suffix, &text, sp_)?
                } else {
                    Value::Str(text.to_string())
                };
                let node = Node {
                    value,
                    span: sp_,
                    raw: Some(text.into_owned()),
                };
                (node, anchor)
            }
            Event::SequenceStart(anchor, _) => {
                let mut items = Vec::new();
                let end;
                self.open.push(sp_.start);
                loop {
                    let (ev, sp) = self.next()?;
                    if let Event::SequenceEnd = ev {
                        end = span(sp).end;
                        break;
                    }
                    items.push(self.node(ev, sp, depth + 1)?);
                }
                self.open.pop();
                let node = Node {
                    value: Value::Seq(items),
                    span: Span {
                        start: sp_.start,
                        end,
                    },
                    raw: None,
                };
                (node, anchor)
            }
            Event::MappingStart(anchor, _) => {
                let mut entries: Vec<(Node, Node)> = Vec::new();
                let mut merged: Vec<(Node, Node)> = Vec::new();
                let end;
                self.open.push(sp_.start);
                loop {
                    let (ev, sp) = self.next()?;
                    if let Event::MappingEnd = ev {
                        end = span(sp).end;
                        break;
                    }
                    let key = self.node(ev, sp, depth + 1)?;
                    let (ev, sp) = self.next()?;
                    let value = self.node(ev, sp, depth + 1)?;
                    if key.raw.as_deref() == Some("<<") && matches!(key.value, Value::Str(_)) {
                        merge_into(&mut merged, value)?;
                        continue;
                    }
                    if let Some((first, _)) = entries.iter().find(|(k, _)| k.value == key.value) {
                        return Err(Error::new(
                            key.span,
                            format!(
                                "duplicate key `{}` (first given at line {})",
                                key.describe_key(),
                                first.span.start.line
                            ),
                        ));
                    }
                    entries.push((key, value));
                }
                self.open.pop();
                // Explicit keys win over merged ones, as YAML's merge-key spec says.
                for (k, v) in merged {
                    if !entries.iter().any(|(e, _)| e.value == k.value) {
                        entries.push((k, v));
                    }
                }
                let node = Node {
                    value: Value::Map(entries),
                    span: Span {
                        start: sp_.start,
                        end,
                    },
                    raw: None,
                };
                (node, anchor)
            }
            Event::Alias(id) => {
                let target = self.anchors.get(&id).cloned().ok_or_else(|| {
                    Error::new(
                        sp_,
                        "alias refers to an anchor that is not defined before it",
                    )
                })?;
                let n = target.size();
                self.count(sp_, n)?;
                return Ok(target);
            }
            other => return Err(Error::new(sp_, format!("unexpected YAML event {other:?}"))),
        };
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
        Ok(node)
    }
}

fn merge_into(merged: &mut Vec<(Node, Node)>, value: Node) -> Result<()> {
    match value.value {
        Value::Map(entries) => {
            for (k, v) in entries {
                if !merged.iter().any(|(e, _)| e.value == k.value) {
                    merged.push((k, v));
                }
            }
            Ok(())
        }
        Value::Seq(items) => items.into_iter().try_for_each(|i| merge_into(merged, i)),
        _ => Err(Error::new(
            value.span,
            "a merge key `<<` needs a mapping or a list of mappings",
        )),
    }
}

/// YAML 1.2 core schema for plain scalars (so `no` stays a string, unlike YAML 1.1).
fn resolve_plain(s: &str) -> Value {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    if let Some(i) = parse_int(s) {
        return Value::Int(i);
    }
    let looks_float = s
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'))
        && s.chars().any(|c| c.is_ascii_digit());
    if looks_float {
        if let Ok(f) = s.parse::<f64>() {
            return Value::Float(f);
        }
    }
    Value::Str(s.to_string())
}

fn parse_int(s: &str) -> Option<i64> {
    let (neg, body) = match s.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let v = if let Some(h) = body.strip_prefix("0x") {
        i64::from_str_radix(h, 16).ok()?
    } else if let Some(o) = body.strip_prefix("0o") {
        i64::from_str_radix(o, 8).ok()?
    } else if !body.is_empty() && body.chars().all(|c| c.is_ascii_digit()) {
        body.parse().ok()?
    } else {
        return None;
    };
    Some(if neg { -v } else { v })
}

fn resolve_tagged(suffix: &str, text: &str, sp: Span) -> Result<Value> {
    let bad = || Error::new(sp, format!("`{text}` is not a valid !!{suffix}"));
    Ok(match suffix {
        "str" => Value::Str(text.to_string()),
        "int" => Value::Int(parse_int(text).ok_or_else(bad)?),
        "float" => Value::Float(text.parse().map_err(|_| bad())?),
        "bool" => match resolve_plain(text) {
            Value::Bool(b) => Value::Bool(b),
            _ => return Err(bad()),
        },
        "null" => Value::Null,
        _ => Value::Str(text.to_string()),
    })
}

impl Node {
    fn size(&self) -> usize {
        match &self.value {
            Value::Seq(items) => 1 + items.iter().map(Node::size).sum::<usize>(),
            Value::Map(e) => 1 + e.iter().map(|(k, v)| k.size() + v.size()).sum::<usize>(),
            _ => 1,
        }
    }

    /// What kind of YAML value this is, for "expected X, found Y" messages.
    pub fn kind(&self) -> &'static str {
        match self.value {
            Value::Null => "nothing (null)",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    fn describe_key(&self) -> String {
        self.raw.clone().unwrap_or_else(|| self.kind().to_string())
    }

    fn mismatch(&self, expected: &str) -> Error {
        Error::new(
            self.span,
            format!("expected {expected}, found {}", self.kind()),
        )
    }

    /// The value without positions, for templates and comparisons.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Value::Str(s) => J::String(s.clone()),
            Value::Seq(items) => J::Array(items.iter().map(Node::to_json).collect()),
            Value::Map(entries) => J::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.raw.clone().unwrap_or_default(), v.to_json()))
                    .collect(),
            ),
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self.value, Value::Null)
    }

    /// A string; numbers and booleans are taken as written (`version: 1.10` stays "1.10").
    pub fn string(&self, expected: &str) -> Result<String> {
        match &self.value {
            Value::Str(s) => Ok(s.clone()),
            Value::Int(_) | Value::Float(_) | Value::Bool(_) => {
                Ok(self.raw.clone().unwrap_or_default())
            }
            _ => Err(self.mismatch(expected)),
        }
    }

    pub fn bool(&self, expected: &str) -> Result<bool> {
        match &self.value {
            Value::Bool(b) => Ok(*b),
            // YAML 1.1 habits: opsrun reads YAML 1.2, where these are plain strings.
            Value::Str(s)
                if matches!(
                    s.to_lowercase().as_str(),
                    "yes" | "no" | "on" | "off" | "y" | "n"
                ) =>
            {
                let b = matches!(s.to_lowercase().as_str(), "yes" | "on" | "y");
                Err(self
                    .mismatch(expected)
                    .help(format!("`{s}` is a string in YAML 1.2: write `{b}`")))
            }
            _ => Err(self.mismatch(expected)),
        }
    }

    pub fn int(&self, expected: &str) -> Result<i64> {
        match self.value {
            Value::Int(i) => Ok(i),
            _ => Err(self.mismatch(expected)),
        }
    }

    pub fn seq(&self, expected: &str) -> Result<&[Node]> {
        match &self.value {
            Value::Seq(items) => Ok(items),
            _ => Err(self.mismatch(expected)),
        }
    }

    /// A mapping whose keys are strings, checked against the allowed field names.
    pub fn fields<'n>(&'n self, what: &str, allowed: &[&'static str]) -> Result<Fields<'n>> {
        let entries = self.entries(&format!("{what} (a mapping)"))?;
        for (k, _) in &entries {
            if !allowed.contains(&k.0.as_str()) {
                return Err(Error::new(
                    k.1.span,
                    format!(
                        "unknown field `{}` in {what}{}",
                        k.0,
                        did_you_mean(&k.0, allowed.iter().copied())
                    ),
                )
                .help(format!("expected one of: {}", allowed.join(", "))));
            }
        }
        Ok(Fields {
            node: self,
            what: what.to_string(),
            entries,
        })
    }

    /// The entries of a mapping with string keys, in file order.
    #[allow(clippy::type_complexity)]
    pub fn entries(&self, expected: &str) -> Result<Vec<((String, &Node), &Node)>> {
        match &self.value {
            Value::Map(entries) => entries
                .iter()
                .map(|(k, v)| match &k.value {
                    Value::Seq(_) | Value::Map(_) | Value::Null => Err(Error::new(
                        k.span,
                        format!("expected a name as key, found {}", k.kind()),
                    )),
                    _ => Ok(((k.raw.clone().unwrap_or_default(), k), v)),
                })
                .collect(),
            _ => Err(self.mismatch(expected)),
        }
    }
}

/// The fields of one mapping, already checked for unknown names.
pub struct Fields<'n> {
    pub node: &'n Node,
    what: String,
    #[allow(clippy::type_complexity)]
    entries: Vec<((String, &'n Node), &'n Node)>,
}

impl<'n> Fields<'n> {
    pub fn get(&self, name: &str) -> Option<&'n Node> {
        self.entries
            .iter()
            .find(|((k, _), _)| k == name)
            .map(|(_, v)| *v)
    }

    /// The key node of a field, to point at the name rather than the value.
    pub fn key(&self, name: &str) -> Option<&'n Node> {
        self.entries
            .iter()
            .find(|((k, _), _)| k == name)
            .map(|((_, k), _)| *k)
    }

    pub fn require(&self, name: &str) -> Result<&'n Node> {
        self.get(name).ok_or_else(|| {
            Error::new(
                Span::point(self.node.span.start),
                format!("missing field `{name}` in {}", self.what),
            )
        })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|((k, _), _)| k.as_str())
    }

    pub fn opt_string(&self, name: &str) -> Result<Option<String>> {
        self.get(name)
            .filter(|n| !n.is_null())
            .map(|n| n.string(&format!("a string for `{name}`")))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_positions() {
        let n = parse("a: 1\nb:\n  - x\n  - 'y'\n").unwrap();
        let f = n.fields("test", &["a", "b"]).unwrap();
        let b = f.get("b").unwrap().seq("list").unwrap();
        assert_eq!(b[1].span.start, Pos { line: 4, col: 5 });
        assert_eq!(f.get("a").unwrap().value, Value::Int(1));
    }

    #[test]
    fn core_schema_not_yaml_1_1() {
        let n = parse("[no, yes, on, 0x1f, 1.5, ~, 010]").unwrap();
        let items = n.seq("list").unwrap();
        assert_eq!(items[0].value, Value::Str("no".into()));
        assert_eq!(items[3].value, Value::Int(31));
        assert_eq!(items[4].value, Value::Float(1.5));
        assert_eq!(items[5].value, Value::Null);
        assert_eq!(items[6].string("s").unwrap(), "010");
    }

    #[test]
    fn duplicate_keys_are_errors() {
        let e = parse("a: 1\nb: 2\na: 3\n").unwrap_err();
        assert_eq!(e.message, "duplicate key `a` (first given at line 1)");
        assert_eq!(e.span.start, Pos { line: 3, col: 1 });
    }

    #[test]
    fn merge_keys_and_aliases() {
        let n = parse("base: &b {user: root, port: 22}\nh:\n  <<: *b\n  port: 2222\n").unwrap();
        let f = n.fields("t", &["base", "h"]).unwrap();
        let h = f.get("h").unwrap().fields("h", &["user", "port"]).unwrap();
        assert_eq!(h.get("port").unwrap().value, Value::Int(2222));
        assert_eq!(h.get("user").unwrap().value, Value::Str("root".into()));
    }

    #[test]
    fn billion_laughs_is_refused() {
        let mut s = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        let mut prev = 'a';
        for c in 'b'..='j' {
            s.push_str(&format!(
                "{c}: &{c} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
            ));
            prev = c;
        }
        let e = parse(&s).unwrap_err();
        assert!(e.message.contains("too large"), "{}", e.message);
    }
}
