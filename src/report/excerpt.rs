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

/// Files larger than this are not read whole for the log: only their ends.
const READ_WHOLE: u64 = 256 * 1024;

/// How much of each end of a large file the excerpt reads.
const END_BYTES: u64 = 8 * 1024;

/// The log's excerpt of a saved output and whether it is cut. A large file is
/// never read whole (outputs can be gigabytes): its first and last lines only.
pub(super) fn excerpt(run_dir: &Path, file: &str) -> (String, bool) {
    use std::io::{Read, Seek, SeekFrom};
    let path = run_dir.join(file);
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    if size <= READ_WHOLE {
        return truncate(&read_output(run_dir, file));
    }
    let ends = (|| -> std::io::Result<(Vec<u8>, Vec<u8>)> {
        let mut f = std::fs::File::open(&path)?;
        let mut head = vec![0u8; END_BYTES as usize];
        f.read_exact(&mut head)?;
        f.seek(SeekFrom::Start(size - END_BYTES))?;
        let mut tail = vec![0u8; END_BYTES as usize];
        f.read_exact(&mut tail)?;
        Ok((head, tail))
    })();
    let (head, tail) = match ends {
        Ok(ends) => ends,
        Err(e) => return (format!("(cannot read {file}: {e})"), false),
    };
    let head = escape_controls(&head);
    let tail = escape_controls(&tail);
    // Whole lines only: the cut ends of the two pieces are dropped.
    let head: Vec<&str> = head.lines().take(MAX_LINES / 2).collect();
    let tail: Vec<&str> = tail.lines().skip(1).collect();
    let tail = &tail[tail.len().saturating_sub(MAX_LINES / 2)..];
    let cap = |s: String| -> String {
        match s.char_indices().nth(MAX_BYTES / 2) {
            Some((i, _)) => s[..i].to_string(),
            None => s,
        }
    };
    (
        format!(
            "{}\n[... about {} omitted: see the full output file ...]\n{}",
            cap(head.join("\n")),
            crate::plural::count((size - 2 * END_BYTES) as usize, "byte", "bytes"),
            cap(tail.join("\n"))
        ),
        true,
    )
}
