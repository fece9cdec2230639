//! The Markdown primitives of every document opsrun writes, and their readers:
//! the log and plan writers escape with these, and the verifier reads inline
//! code back with [`inline_code`], so the two cannot drift apart.

use crate::sanitize::escape_controls;

/// A table cell: one line, pipes escaped, controls visible.
pub fn cell(s: &str) -> String {
    escape_controls(s.as_bytes())
        .replace('\\', "\\\\")
        .replace('|', "\\|")
        .replace(['\n', '\t'], " ")
        .replace('`', "\\`")
}

/// Inline code that cannot be broken out of.
pub fn code(s: &str) -> String {
    let s = escape_controls(s.as_bytes()).replace('\n', " ");
    let ticks = longest_run(&s, '`') + 1;
    let fence = "`".repeat(ticks);
    let pad = if s.starts_with('`') || s.ends_with('`') {
        " "
    } else {
        ""
    };
    format!("{fence}{pad}{s}{pad}{fence}")
}

fn longest_run(s: &str, c: char) -> usize {
    let (mut best, mut cur) = (0, 0);
    for ch in s.chars() {
        if ch == c {
            cur += 1;
            best = best.max(cur);
        } else {
            cur = 0;
        }
    }
    best
}

/// A fenced block whose fence is longer than any backtick run in the text.
pub fn fenced(lang: &str, text: &str) -> String {
    let body = escape_controls(text.as_bytes());
    let fence = "`".repeat(longest_run(&body, '`').max(2) + 1);
    format!("{fence}{lang}\n{}\n{fence}\n", body.trim_end_matches('\n'))
}

/// The text between the first pair of backticks on a line (inline code as [`code`] writes it).
pub(crate) fn inline_code(s: &str) -> Option<String> {
    let start = s.find('`')?;
    let ticks = s[start..].chars().take_while(|c| *c == '`').count();
    let fence = "`".repeat(ticks);
    let rest = &s[start + ticks..];
    let end = rest.find(&fence)?;
    let inner = &rest[..end];
    // `code` pads with one space when the text starts or ends with a backtick.
    let inner = if inner.len() >= 2 && inner.starts_with(' ') && inner.ends_with(' ') {
        &inner[1..inner.len() - 1]
    } else {
        inner
    };
    Some(inner.to_string())
}
