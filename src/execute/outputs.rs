//! Where a host's step output goes: its file names, and what the record says
//! when an output could not be saved whole.

use super::attempt::Record;
use super::engine::{Done, Engine, Finish};
use crate::error::exit;
use crate::plan::PlanStep;
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

impl Engine<'_> {
    /// How a run ends when an output could not be saved (the log disk is full):
    /// failed, with what is still applied; the rollback is offered after it.
    pub(super) fn disk_full_finish(&self, step: &PlanStep, results: &[Done]) -> Finish {
        let hosts: Vec<String> = results
            .iter()
            .map(|d| match d.detail.is_empty() {
                true => d.host.clone(),
                false => format!("{} ({})", d.host, d.detail),
            })
            .collect();
        let applied: Vec<String> = {
            let done = self.completed.lock().unwrap_or_else(|p| p.into_inner());
            done.iter()
                .map(|(i, c)| {
                    let hosts: Vec<&str> = c.iter().map(|c| c.host.as_str()).collect();
                    format!("`{}` on {}", self.plan.steps[*i].name, hosts.join(", "))
                })
                .collect()
        };
        let applied = match applied.is_empty() {
            true => "nothing".to_string(),
            false => applied.join("; "),
        };
        let message = format!(
            "the log disk is full: step `{}` could not save its output whole on {}; the run stops here. Still applied: {applied}",
            step.name,
            hosts.join(", ")
        );
        self.ui.error(&message);
        Finish {
            outcome: crate::record::events::Outcome::Failed,
            message,
            exit_code: exit::STEP_FAILED,
        }
    }
}

/// A run that cannot be recorded must not start (its journal is what a
/// rollback reads): refused as invalid input of the environment.
pub(super) fn check_room(log_dir: &std::path::Path) -> Result<(), crate::error::Error> {
    crate::record::reserve::check_room(log_dir).map_err(|message| crate::error::Error::Stage {
        message,
        exit_code: exit::INVALID_INPUT,
    })
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

/// How much of a step's stdin (env lines and `stdin:`) the journal and the log keep.
pub(super) const STDIN_RECORDED: usize = 4096;

/// The stdin as recorded: whole up to [`STDIN_RECORDED`] bytes, else its start
/// and what identifies the whole (size and sha256 of the masked text, which is
/// the text sent when it reads no secret): a large `stdin:` is not copied into
/// every record of every host.
pub(super) fn recorded_stdin(stdin: Option<String>) -> Option<String> {
    let s = stdin?;
    if s.len() <= STDIN_RECORDED {
        return Some(s);
    }
    let mut end = STDIN_RECORDED;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Some(format!(
        "{}\n[... stdin cut by opsrun: first {end} of {} bytes recorded; sha256 of the whole {} ...]",
        &s[..end],
        s.len(),
        crate::digest::sha256_hex(s.as_bytes())
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_stdin_is_recorded_cut_with_its_size_and_digest() {
        assert_eq!(recorded_stdin(Some("abc".into())).as_deref(), Some("abc"));
        assert_eq!(recorded_stdin(None), None);
        let big = "é".repeat(5000);
        let r = recorded_stdin(Some(big.clone())).unwrap();
        assert!(r.starts_with(&"é".repeat(2048)));
        assert!(r.contains("first 4096 of 10000 bytes recorded"), "{r}");
        assert!(r.contains(&crate::digest::sha256_hex(big.as_bytes())));
        assert!(r.len() < 4300);
    }
}
