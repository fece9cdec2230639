//! Run ids: minted from the frozen start time (in UTC, so ids sort by time
//! whatever the time zone), the runbook and the environment; `run.stamp` and
//! `run.date` are local time, since they name files people read on the hosts.

use super::{Options, RunInfo};

/// The run's id, stamp and date, from the clock the caller read once.
pub(super) fn mint(runbook: &str, inventory: &str, opts: &Options) -> RunInfo {
    let stamp = opts.now.format("%Y%m%d-%H%M%S").to_string();
    let utc = opts.now.naive_utc().format("%Y%m%d-%H%M%SZ");
    RunInfo {
        id: format!("{utc}-{runbook}-{inventory}")
            .chars()
            .map(|c| {
                if c.is_alphanumeric() || matches!(c, '-' | '_' | '.') {
                    c
                } else {
                    '_'
                }
            })
            .collect(),
        date: opts.now.format("%Y%m%d").to_string(),
        stamp,
        operator: opts.operator.clone(),
        ticket: opts.ticket.clone(),
    }
}
