//! Rolling batches (`serial`), and which hosts of a batch a step and its gate cover.

use super::*;

/// Rolling batches per the runbook's `serial` (one batch of everything without
/// it). There is always a batch, even an empty one: steps on hosts outside the
/// serial set, and `local: true` steps, still run once.
pub(super) fn cut_batches(serial: Option<Serial>, hosts: &[String]) -> Vec<Vec<String>> {
    let size = match serial {
        None => hosts.len(),
        Some(Serial::Count(n)) => n,
        Some(Serial::Percent(p)) => (hosts.len() * usize::from(p)).div_ceil(100),
    }
    .max(1);
    let batches: Vec<Vec<String>> = hosts.chunks(size).map(<[String]>::to_vec).collect();
    if batches.is_empty() {
        vec![Vec::new()]
    } else {
        batches
    }
}

impl Planner {
    /// The rolling batches of serial hosts, in order (batch numbers count from 1).
    pub fn batches(&self) -> &[Vec<String>] {
        &self.batches
    }

    /// The hosts a step runs on in a batch: its serial hosts in that batch and
    /// all its other hosts. `None`: outside any batch, every host of the step.
    pub fn batch_hosts(&self, r: StepRef, batch: Option<usize>) -> Vec<String> {
        let hosts = self.step_hosts(r);
        let Some(members) = batch.and_then(|b| self.batches.get(b.checked_sub(1)?)) else {
            return hosts.to_vec();
        };
        let members: HashSet<&String> = members.iter().collect();
        hosts
            .iter()
            .filter(|h| !self.serial_hosts.contains(*h) || members.contains(h))
            .cloned()
            .collect()
    }

    /// Where a step's gate applies, said with its question: `(on oa1, oa2)`, or
    /// with `serial` `(batch 1/2: oa1)` (`(on lb1; batch 1/2: oa1)` for a step on
    /// other hosts), so the operator knows which hosts the answer is for.
    pub fn gate_hosts(&self, local: bool, hosts: &[String], batch: Option<usize>) -> String {
        // A long list is cut: the dry-run and the log name every host.
        const SHOWN: usize = 20;
        let list = |names: &[String]| {
            let mut s = names
                .iter()
                .take(SHOWN)
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(", ");
            if names.len() > SHOWN {
                s.push_str(&format!(" and {} more", names.len() - SHOWN));
            }
            s
        };
        let on = if local {
            "on this machine".to_string()
        } else {
            format!("on {}", list(hosts))
        };
        let members = batch
            .filter(|_| self.batches.len() > 1)
            .and_then(|b| Some((b, self.batches.get(b.checked_sub(1)?)?)));
        match members {
            None => format!("({on})"),
            Some((b, m)) if !local && m.as_slice() == hosts => {
                format!("(batch {b}/{}: {})", self.batches.len(), list(m))
            }
            Some((b, m)) => format!("({on}; batch {b}/{}: {})", self.batches.len(), list(m)),
        }
    }

    /// Whether a step's templates read `batch`: it is then rendered per batch.
    pub fn reads_batch(&self, r: StepRef) -> bool {
        self.reads_batch.contains(&step_key(r))
    }
}
