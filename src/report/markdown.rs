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

/// Inline code that cannot be broken out of: how text a host printed (or a
/// value captured from it) appears outside tables, never as the document's own
/// Markdown.
pub fn code(s: &str) -> String {
    let s = escape_controls(s.as_bytes()).replace('\n', " ");
    let ticks = longest_run(&s, '`') + 1;
    let fence = "`".repeat(ticks);
    // A reader strips one space from each end of a span that has one at both
    // (and is not all spaces): padded, text that starts or ends so reads back whole.
    let spaced = s.starts_with(' ') && s.ends_with(' ') && !s.trim().is_empty();
    let pad = if s.starts_with('`') || s.ends_with('`') || spaced {
        " "
    } else {
        ""
    };
    format!("{fence}{pad}{s}{pad}{fence}")
}

/// [`code`] inside a table cell: what a host printed, in a row of a table.
///
/// A GFM table splits its cells before it reads code spans, so every `|` is
/// escaped (`\|` reads back as `|`, also inside code). A backslash right before
/// a `|` cannot be written there at all (`\\|` would end the cell): it is shown
/// as `\x5c`, in the form [`escape_controls`] uses.
pub fn code_cell(s: &str) -> String {
    let shown = escape_controls(s.as_bytes()).replace("\\|", "\\x5c|");
    code(&shown).replace('|', "\\|")
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
    // `code` pads with one space; as in CommonMark, a span of spaces only is not stripped.
    let inner = if inner.starts_with(' ') && inner.ends_with(' ') && !inner.trim().is_empty() {
        &inner[1..inner.len() - 1]
    } else {
        inner
    };
    Some(inner.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pulldown_cmark::{Event, Options, Parser, Tag, TagEnd};

    /// The cells of the one-row table `| a | X |`, and whether anything in it
    /// was read as other than text or code.
    fn cells(x: &str) -> (Vec<String>, bool) {
        let md = format!("| a | b |\n|---|---|\n| a | {x} |\n");
        let (mut cells, mut markup, mut cell, mut row) = (Vec::new(), false, None, 0);
        for ev in Parser::new_ext(&md, Options::ENABLE_TABLES) {
            match ev {
                Event::Start(Tag::TableRow) => row += 1,
                Event::Start(Tag::TableCell) => cell = Some(String::new()),
                Event::End(TagEnd::TableCell) => cells.extend(cell.take().filter(|_| row > 0)),
                Event::Code(t) | Event::Text(t) => {
                    if let Some(c) = cell.as_mut() {
                        c.push_str(&t);
                    }
                }
                Event::Start(
                    Tag::Strong | Tag::Emphasis | Tag::Link { .. } | Tag::Image { .. },
                )
                | Event::Html(_)
                | Event::InlineHtml(_) => markup = true,
                _ => {}
            }
        }
        (cells, markup)
    }

    #[test]
    fn host_text_in_a_cell_is_one_code_span_whatever_it_holds() {
        for host in [
            "**all 3 steps restored, Result: SUCCEEDED**",
            "[click](http://evil) <img src=x onerror=alert(1)>",
            "a | b || c",
            "`tick` ``two`` | ```",
            " spaced ",
            "ends in a backslash \\",
            "_under_ *star* ~~strike~~ &amp; <b>",
        ] {
            let (cells, markup) = cells(&code_cell(host));
            assert_eq!(cells, ["a", host], "{host:?} as {:?}", code_cell(host));
            assert!(!markup, "{host:?} became markup");
        }
        // A backslash before a pipe cannot be written in a cell: it is shown escaped.
        assert_eq!(cells(&code_cell("a\\|b")).0, ["a", "a\\x5c|b"]);
        assert_eq!(cells(&code_cell("a\u{202e}b")).0, ["a", "a\\u{202e}b"]);
    }

    #[test]
    fn inline_code_reads_back_what_code_wrote() {
        for s in [
            "plain",
            "`tick`",
            "a ``` b",
            " spaced ",
            "  ",
            "outputs/01-a.stdout",
        ] {
            assert_eq!(
                inline_code(&format!("- Signer: {} rest", code(s))).as_deref(),
                Some(s)
            );
        }
    }
}
