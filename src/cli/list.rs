//! `opsrun list`: the runbooks found, each with the first sentence of its description.

use super::*;

pub(super) fn list(root: &Path) -> Result<i32> {
    let books = load::list_runbooks(root);
    let width = books.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
    for (name, origin) in books {
        let where_ = match &origin {
            Origin::File(p) => p.display().to_string(),
            Origin::Library(_) => "built-in".to_string(),
        };
        let desc = summary(&name, root).unwrap_or_default();
        outln!("{name:<width$}  {desc}  [{where_}]");
    }
    Ok(exit::OK)
}

/// What `opsrun list` says of a runbook: its description's first sentence.
pub(super) fn summary(name: &str, root: &Path) -> Option<String> {
    match load::find_runbook(name, root).and_then(|(src, _)| load::runbook_from_source(src)) {
        Ok(rb) => rb.description.as_deref().map(first_sentence),
        Err(_) => Some("(invalid: run `opsrun check`)".to_string()),
    }
}

/// A description's first sentence, whole even when it runs over several lines
/// (a cut mid-sentence reads as a different statement), as one line with
/// control characters escaped: the file could hold anything.
pub(super) fn first_sentence(description: &str) -> String {
    let text = description.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut end = text.len();
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let next_blank = chars.peek().map_or(true, |(_, n)| *n == ' ');
        if matches!(c, '。' | '！' | '？') || (matches!(c, '.' | '!' | '?') && next_blank) {
            end = i + c.len_utf8();
            break;
        }
    }
    crate::sanitize::escape_controls(&text.as_bytes()[..end])
}
