//! Where a host's step output goes: its file names, and what the record says
//! when an output could not be saved whole.

use super::attempt::Record;
use super::engine::Engine;
use crate::record::events::Saved;
use crate::record::rundir::output_stem;

impl Engine<'_> {
    /// The name of a host's output files for this step (`outputs/<stem>.stdout`).
    pub(super) fn stem(&self, rec: &Record<'_>) -> String {
        // Every step of a rolling run names its batch, whether or not it reads
        // `batch`: a host in every batch (a load balancer, `local`) runs it in each.
        let batch = rec
            .shown
            .batch
            .or(rec.batch.filter(|_| self.planner.batches().len() > 1));
        output_stem(
            rec.phase.is_rollback(),
            rec.number,
            &rec.step.name,
            rec.host,
            batch,
        )
    }
}

/// The finish reason, plus which output files were cut (the log disk is full).
pub(super) fn cut_reason(reason: Option<String>, saved: [&Option<Saved>; 2]) -> Option<String> {
    let cut: Vec<&str> = saved
        .into_iter()
        .flatten()
        .filter(|s| s.cut.is_some())
        .map(|s| s.file.as_str())
        .collect();
    if cut.is_empty() {
        return reason;
    }
    let note = format!("output cut, the log disk is full: {}", cut.join(", "));
    Some(match reason {
        Some(r) => format!("{r}; {note}"),
        None => note,
    })
}
