//! Resuming a recorded run: where `--resume` starts, and which earlier steps it
//! must run again first.

use super::RunTmp;
use crate::plan::{HostRef, Plan, Planner, StepRef};
use crate::record::runs::Recorded;

/// Where `--resume` starts: the first step not completed on every host it runs
/// on (an undone step counts as not completed); `None` when every step was.
/// `probe` is planned with the resumed run's params and `--limit`.
pub fn resume_start(probe: &Planner, recorded: &Recorded) -> Option<usize> {
    (0..probe.step_count()).find(|&i| {
        let hosts = if probe.is_local(StepRef::Forward(i)) {
            vec![HostRef::CONTROL_NAME.to_string()]
        } else {
            probe.step_hosts(StepRef::Forward(i)).to_vec()
        };
        hosts.into_iter().any(|h| !recorded.done.contains(&(i, h)))
    })
}

/// The `local: true` steps before a resume's start whose capture points into a run's
/// temporary directory: that directory was removed when its run ended (what the
/// upgrade's package check bundled there is gone), so the resume runs them again
/// first, and later steps read a capture that exists.
pub(super) fn stale_local_steps(planner: &Planner, plan: &Plan, recorded: &Recorded) -> Vec<usize> {
    let prefix = RunTmp::prefix();
    (0..planner.start_at())
        .filter(|&i| {
            let step = &plan.steps[i];
            step.local
                && step.capture.as_ref().is_some_and(|c| {
                    recorded
                        .captures
                        .global
                        .get(&c.name)
                        .is_some_and(|v| v.starts_with(&prefix))
                })
        })
        .collect()
}
