//! Source positions and the error messages built on them.
//!
//! Every runbook and inventory error points at `file:line:column`, shows the
//! offending line with a caret, says what was expected and, where a near miss
//! is likely, suggests it. The format follows rustc/just so it reads familiar.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A loaded text file, kept whole so errors can quote the offending line.
#[derive(Debug)]
pub struct SourceFile {
    /// The path as the user would recognise it (relative when given relative).
    pub path: PathBuf,
    pub text: String,
}

impl SourceFile {
    pub fn new(path: impl Into<PathBuf>, text: impl Into<String>) -> Arc<Self> {
        Arc::new(SourceFile {
            path: path.into(),
            text: text.into(),
        })
    }

    pub fn display_path(&self) -> String {
        self.path.display().to_string()
    }

    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or_else(|| Path::new("."))
    }

    pub fn sha256(&self) -> String {
        crate::digest::sha256_hex(self.text.as_bytes())
    }

    fn line_text(&self, line: usize) -> Option<&str> {
        self.text.lines().nth(line.checked_sub(1)?)
    }
}

/// A position in a source file: line and column are 1-based, counted in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, PartialOrd, Ord)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

/// A half-open range of positions in one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    pub start: Pos,
    pub end: Pos,
}

impl Span {
    pub fn point(pos: Pos) -> Span {
        Span {
            start: pos,
            end: pos,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Level {
    #[default]
    Error,
    Warning,
}

/// A problem located in a source file, with what was expected and a hint.
#[derive(Debug, Clone)]
pub struct Diagnostic {
    pub level: Level,
    pub source: Arc<SourceFile>,
    pub span: Span,
    pub message: String,
    pub help: Option<String>,
}

impl Diagnostic {
    /// An error at `span` of `source`: how every stage reports a located problem.
    pub fn error(
        source: Arc<SourceFile>,
        span: Span,
        message: String,
        help: Option<String>,
    ) -> Self {
        Diagnostic {
            level: Level::Error,
            source,
            span,
            message,
            help,
        }
    }

    pub fn location(&self) -> String {
        format!(
            "{}:{}:{}",
            self.source.display_path(),
            self.span.start.line,
            self.span.start.col
        )
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.level {
            Level::Error => "error",
            Level::Warning => "warning",
        };
        writeln!(f, "{level}: {}", self.message)?;
        write!(f, "  --> {}", self.location())?;
        let line_no = self.span.start.line;
        if let Some(line) = self.source.line_text(line_no) {
            let gutter = line_no.to_string().len();
            let shown = printable(line);
            let col = self.span.start.col.max(1);
            let width = if self.span.end.line == line_no && self.span.end.col > col {
                self.span.end.col - col
            } else {
                1
            };
            // Trailing spaces in the caret line would be noise in tests and terminals.
            let width = width.min(shown.chars().count().saturating_sub(col - 1).max(1));
            // Columns count characters; the caret line counts terminal cells, so
            // that it stays under a wide (CJK) name like `备注`.
            let before: String = shown.chars().take(col - 1).collect();
            let under: String = shown.chars().skip(col - 1).take(width).collect();
            writeln!(f)?;
            writeln!(f, "{:gutter$} |", "")?;
            writeln!(f, "{line_no} | {shown}")?;
            write!(
                f,
                "{:gutter$} | {}{}",
                "",
                " ".repeat(console::measure_text_width(&before)),
                "^".repeat(console::measure_text_width(&under).max(1))
            )?;
        }
        if let Some(help) = &self.help {
            write!(f, "\n  = help: {help}")?;
        }
        Ok(())
    }
}

/// Tabs and control characters would misplace the caret or garble the terminal.
fn printable(line: &str) -> String {
    line.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The candidate closest to `word`, if it is close enough to be a plausible typo.
pub fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = match word.chars().count() {
        0..=2 => 1,
        3..=5 => 2,
        _ => 3,
    };
    let word = word.to_lowercase();
    candidates
        .into_iter()
        .map(|c| (edit_distance(&word, &c.to_lowercase()), c))
        .filter(|(d, _)| *d <= limit)
        // On a tie, the candidate sharing the longer prefix: `ofline` means `offline`, not `online`.
        .min_by_key(|(d, c)| {
            (
                *d,
                std::cmp::Reverse(common_prefix(&word, &c.to_lowercase())),
            )
        })
        .map(|(_, c)| c)
}

fn common_prefix(a: &str, b: &str) -> usize {
    a.chars().zip(b.chars()).take_while(|(x, y)| x == y).count()
}

/// Levenshtein distance with adjacent transpositions (optimal string alignment).
pub fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev2: Vec<usize> = vec![0; b.len() + 1];
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut cur = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                cur[j] = cur[j].min(prev2[j - 2] + 1);
            }
        }
        prev2 = std::mem::replace(&mut prev, cur);
    }
    prev[b.len()]
}

/// ", did you mean `x`?" or nothing: appended to messages about unknown names.
pub fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    match suggest(word, candidates) {
        Some(s) => format!(", did you mean `{s}`?"),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_near_misses_only() {
        let fields = ["run", "rollback", "retries", "timeout"];
        assert_eq!(suggest("rollbak", fields), Some("rollback"));
        assert_eq!(suggest("timout", fields), Some("timeout"));
        assert_eq!(suggest("tiemout", fields), Some("timeout"));
        assert_eq!(suggest("xyz", fields), None);
        assert_eq!(suggest("ofline", ["online", "offline"]), Some("offline"));
    }

    #[test]
    fn renders_caret_under_span() {
        let src = SourceFile::new("r.yaml", "steps:\n  - rollbak: x\n");
        let d = Diagnostic {
            level: Level::Error,
            source: src,
            span: Span {
                start: Pos { line: 2, col: 5 },
                end: Pos { line: 2, col: 12 },
            },
            message: "unknown field `rollbak`".into(),
            help: None,
        };
        assert_eq!(
            d.to_string(),
            "error: unknown field `rollbak`\n  --> r.yaml:2:5\n  |\n2 |   - rollbak: x\n  |     ^^^^^^^"
        );
    }
}
