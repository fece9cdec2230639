//! Host output in the log: cut to a head and a tail when long (the full text
//! stays in `outputs/`), and read back from the run directory.

use crate::sanitize::escape_controls;
use std::path::Path;

/// Output longer than this (lines or bytes) is cut in the log; the full text stays in `outputs/`.
pub(super) const MAX_LINES: usize = 40;

pub(super) const MAX_BYTES: usize = 4000;

pub(super) fn truncate(text: &str) -> (String, bool) {
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() <= MAX_LINES && text.len() <= MAX_BYTES {
        return (text.to_string(), false);
    }
    let head: Vec<&str> = lines.iter().take(MAX_LINES / 2).copied().collect();
    let tail: Vec<&str> = lines
        .iter()
        .rev()
        .take(MAX_LINES / 2)
        .rev()
        .copied()
        .collect();
    let mut out = head.join("\n");
    if out.len() > MAX_BYTES / 2 {
        out = out.chars().take(MAX_BYTES / 2).collect();
    }
    let omitted = lines.len().saturating_sub(head.len() + tail.len());
    let mut t = tail.join("\n");
    if t.len() > MAX_BYTES / 2 {
        t = t
            .chars()
            .rev()
            .take(MAX_BYTES / 2)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
    }
    (
        format!(
            "{out}\n[... {} omitted: see the full output file ...]\n{t}",
            crate::plural::count(omitted, "line", "lines")
        ),
        true,
    )
}

/// Reads a saved output file back (it is the full, redacted text).
pub(super) fn read_output(run_dir: &Path, file: &str) -> String {
    std::fs::read(run_dir.join(file))
        .map(|b| escape_controls(&b))
        .unwrap_or_else(|e| format!("(cannot read {file}: {e})"))
}
