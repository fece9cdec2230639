//! The log's closing sections, rendered from the run's view (record/view.rs):
//! service downtime per host, and the exceptions (failures, timeouts) in order.

use super::log::fmt_time;
use super::markdown::{cell, code_cell};
use crate::record::view::{Downtime, Exception, ExceptionKind};
use std::fmt::Write as _;

/// Business-impact downtime per service and host: from a stop to the next start.
pub(super) fn downtime(o: &mut String, rows: &[Downtime]) {
    let _ = writeln!(o, "\n## Business-impact downtime\n\n| service | host | stopped | started | downtime |\n|---|---|---|---|---|");
    for r in rows {
        let (s, d) = match r.started {
            Some(t) => (
                fmt_time(&t),
                crate::duration::format((t - r.stopped).to_std().unwrap_or_default()),
            ),
            None => ("**still down**".into(), "open".into()),
        };
        let _ = writeln!(
            o,
            "| {} | {} | {} | {s} | {d} |",
            cell(&r.service),
            cell(&r.host),
            fmt_time(&r.stopped)
        );
    }
}

/// The exception table SOP 003 asks for: every failure in one place.
pub(super) fn exceptions(o: &mut String, rows: &[Exception]) {
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        o,
        "\n## Exceptions\n\n| type | host | step | message |\n|---|---|---|---|"
    );
    for r in rows {
        let kind = match r.kind {
            ExceptionKind::RollbackFailed => "rollback failed",
            ExceptionKind::Timeout => "timeout",
            ExceptionKind::StepFailed => "step failed",
            ExceptionKind::Connection => "connection",
        };
        let step = match &r.step {
            Some((number, step)) => format!("{number}. {}", cell(step)),
            None => "-".into(),
        };
        let _ = writeln!(
            o,
            "| {kind} | {} | {step} | {} |",
            cell(&r.host),
            code_cell(&r.message)
        );
    }
}
