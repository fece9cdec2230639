//! `opsrun runs`: the recorded runs, newest first.

use super::*;

pub(super) fn runs(log_dir: &Path) -> Result<i32> {
    let all = crate::record::runs::list(log_dir);
    if all.is_empty() {
        outln!("no runs recorded in {}", log_dir.display());
        return Ok(exit::OK);
    }
    // A journal is a file anyone could edit: its text is shown escaped, on one line.
    let shown = |s: &str| crate::sanitize::escape_controls(s.as_bytes()).replace(['\n', '\t'], " ");
    let mut rows: Vec<[String; 8]> = vec![[
        "id", "runbook", "env", "ticket", "operator", "result", "start", "duration",
    ]
    .map(String::from)];
    for r in all {
        for w in &r.warnings {
            eprintln!("warning: {}", shown(w));
        }
        // In the viewer's local time with its offset: runs recorded in other
        // time zones read in one clock, and the offset says which.
        let start = r
            .start
            .map(|t| {
                t.with_timezone(&chrono::Local)
                    .format("%Y-%m-%d %H:%M:%S %:z")
                    .to_string()
            })
            .unwrap_or_else(|| "-".into());
        let dur = match (r.start, r.end) {
            (Some(a), Some(b)) => crate::duration::format((b - a).to_std().unwrap_or_default()),
            _ => "-".into(),
        };
        let runbook = match r.kind {
            Some(crate::record::events::RunKind::Run) | None => r.runbook.clone(),
            Some(kind) => format!("{} ({})", r.runbook, kind.word()),
        };
        rows.push([
            shown(&r.id),
            shown(&runbook),
            shown(&r.env),
            r.ticket.as_deref().map_or_else(|| "-".into(), shown),
            shown(&r.operator),
            r.result(),
            start,
            dur,
        ]);
    }
    // Widths in terminal columns: a CJK character takes two.
    let mut widths = [0usize; 8];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(console::measure_text_width(cell));
        }
    }
    for row in &rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let padded = console::pad_str(cell, widths[i], console::Alignment::Left, None);
                line.push_str(&padded);
                line.push_str("  ");
            }
        }
        outln!("{}", line.trim_end());
    }
    Ok(exit::OK)
}
