//! What a template's tags read, from its text: the names it slices, and the
//! tags that read a secret. minijinja's `undeclared_variables` does not
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
    for tag in tags(src) {
        names_in_tag(&src[tag.body.clone()], &mut out, false);
    }
    out
}

/// The text with every `{{ }}` tag that reads one of `secret` (by the same
/// rules as above, so a slice too) replaced by `mask`: what the record shows
/// for a text whose secret a filter transforms (`{{ pw | upper }}` has no
/// masked value to be found by). `None`: no tag reads one.
pub(super) fn masked_tags(src: &str, secret: &HashSet<String>, mask: &str) -> Option<String> {
    let mut out = String::new();
    let mut at = 0;
    for tag in tags(src).into_iter().filter(|t| t.expression) {
        let mut names = HashSet::new();
        names_in_tag(&src[tag.body.clone()], &mut names, true);
        if names.iter().any(|n| secret.contains(n)) {
            out.push_str(&src[at..tag.whole.start]);
            out.push_str(mask);
            at = tag.whole.end;
        }
    }
    (at > 0).then(|| out + &src[at..])
}

struct Tag {
    /// From `{{` to `}}` (or `{%` to `%}`), both included.
    whole: std::ops::Range<usize>,
    /// Between the delimiters (and whitespace control).
    body: std::ops::Range<usize>,
    /// `{{ }}`, not `{% %}`.
    expression: bool,
}

fn tags(src: &str) -> Vec<Tag> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(open) = [src[from..].find("{{"), src[from..].find("{%")]
        .into_iter()
        .flatten()
        .min()
    {
        let open = from + open;
        let expression = src[open..].starts_with("{{");
        let close = if expression { "}}" } else { "%}" };
        let start = open + 2;
        let end = start + tag_end(&src[start..], close);
        let whole_end = (end + 2).min(src.len());
        out.push(Tag {
            whole: open..whole_end,
            body: start..end,
            expression,
        });
        if expression
            || !src[start..end]
                .trim_start_matches(['-', '+'])
                .trim_start()
                .starts_with("raw")
        {
            from = whole_end;
        } else {
            // `{% raw %}`: nothing up to `{% endraw %}` is a tag.
            from = src[whole_end..]
                .find("endraw")
                .map_or(src.len(), |i| whole_end + i);
        }
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

/// The names of a tag: those indexed (`every` false), or every one (`every`).
fn names_in_tag(tag: &str, out: &mut HashSet<String>, every: bool) {
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
            if every || paren_indexed || word.2 == Some('[') {
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
        assert_eq!(
            names("{% raw %}{{ d[0] }}{% endraw %}"),
            Vec::<String>::new()
        );
    }

    #[test]
    fn every_tag_that_reads_a_secret_is_masked_whole() {
        let secret: HashSet<String> = ["pw".to_string()].into();
        assert_eq!(
            masked_tags(
                "echo {{ pw[1:] }} {{ pw | upper }} {{ host.name }} {{ x.pw }}",
                &secret,
                "******"
            )
            .as_deref(),
            Some("echo ****** ****** {{ host.name }} {{ x.pw }}")
        );
        assert_eq!(masked_tags("echo {{ user }}", &secret, "******"), None);
    }
}
