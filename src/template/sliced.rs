//! The names a template slices. minijinja's `undeclared_variables` does not
//! look inside a slice (`{{ pw[1:] }}` reads nothing, by its count), and the
//! variables a template reads decide where a secret goes (stdin) and which
//! renderings may be shared (the memo: a masked rendering must never be the
//! run's). This finds them from the text, erring towards too many names: one
//! too many only costs the memo, one too few puts a secret on a command line.

use std::collections::HashSet;

/// Words of the template language that are not variables.
const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "not",
    "in",
    "is",
    "if",
    "else",
    "elif",
    "for",
    "true",
    "false",
    "none",
    "True",
    "False",
    "None",
    "recursive",
    "loop",
];

/// Every name read before a `[` in a `{{ }}` or `{% %}` tag (`pw[1:]`,
/// `pw [::2]`); where what is indexed is in parentheses (`(pw ~ x)[1:]`), every
/// name of that tag.
pub(super) fn sliced_names(src: &str) -> HashSet<String> {
    let mut out = HashSet::new();
    let mut rest = src;
    while let Some(open) = rest.find("{{").into_iter().chain(rest.find("{%")).min() {
        let close = if rest[open..].starts_with("{{") {
            "}}"
        } else {
            "%}"
        };
        let body = &rest[open + 2..];
        let end = tag_end(body, close);
        names_in_tag(&body[..end], &mut out);
        rest = &body[(end + 2).min(body.len())..];
    }
    out
}

/// Where a tag's closing delimiter is, outside string literals.
fn tag_end(body: &str, close: &str) -> usize {
    let mut quote: Option<char> = None;
    for (i, c) in body.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '\'' || c == '"' => quote = Some(c),
            None if body[i..].starts_with(close) => return i,
            None => {}
        }
    }
    body.len()
}

fn names_in_tag(tag: &str, out: &mut HashSet<String>) {
    // Identifiers outside strings, each with the character before it and the
    // first one after it (spaces skipped).
    let chars: Vec<char> = tag.chars().collect();
    let mut words: Vec<(String, Option<char>, Option<char>)> = Vec::new();
    let mut paren_indexed = false;
    let mut quote: Option<char> = None;
    let mut i = 0;
    let before = |i: usize| {
        chars[..i]
            .iter()
            .rev()
            .find(|c| !c.is_whitespace())
            .copied()
    };
    let after = |i: usize| chars[i..].iter().find(|c| !c.is_whitespace()).copied();
    while i < chars.len() {
        let c = chars[i];
        if let Some(q) = quote {
            if c == q {
                quote = None;
            }
            i += 1;
        } else if c == '\'' || c == '"' {
            quote = Some(c);
            i += 1;
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            words.push((word, before(start), after(i)));
        } else {
            if c == ')' && after(i + 1) == Some('[') {
                paren_indexed = true;
            }
            i += 1;
        }
    }
    let variable = |(w, before, _): &(String, Option<char>, Option<char>)| {
        !KEYWORDS.contains(&w.as_str()) && !matches!(before, Some('.' | '|'))
    };
    // The root a dotted name hangs from (`host` of `host.vars[1:]`).
    let mut root: Option<&String> = None;
    for word in &words {
        if variable(word) {
            root = Some(&word.0);
            if paren_indexed || word.2 == Some('[') {
                out.insert(word.0.clone());
            }
        } else if word.1 == Some('.') && word.2 == Some('[') {
            out.extend(root.cloned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(src: &str) -> Vec<String> {
        let mut v: Vec<String> = sliced_names(src).into_iter().collect();
        v.sort();
        v
    }

    #[test]
    fn a_sliced_name_is_found_wherever_the_slice_is() {
        assert_eq!(names("echo {{ pw[1:] }} {{ pw | upper }}"), ["pw"]);
        assert_eq!(names("{{ host.vars[1:] }} {{ a [::2] }}"), ["a", "host"]);
        assert_eq!(
            names("{% set x = (pw ~ 'y')[1:] %}{{ x }}"),
            ["pw", "set", "x"]
        );
        assert_eq!(
            names("{{ '[not]' }} text[1:] {{ b }}"),
            Vec::<String>::new()
        );
        // A call indexed: every name of the tag, rather than one too few.
        assert_eq!(names("{{ b | default('x')[0] }}"), ["b"]);
        assert_eq!(names("{{ \"}}\" }} {{ c[0] }}"), ["c"]);
    }
}
