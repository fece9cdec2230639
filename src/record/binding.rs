//! What binds a run's log to its run: the run directory's name, the journal's
//! chain (how many events, the hash of the last) and the sha256 of the files
//! of the run directory the log cites. The report writes these lines into the
//! log's "How to verify" section; `opsrun verify` checks them against the run
//! directory; and every reader of the journal checks the journal against the
//! log beside it, which is how an edited *last* line is found (nothing follows
//! it in the chain, but the log states the hash the chain ended at).

use crate::record::chain::{Break, Problem};
use crate::record::journal::Replay;
use std::path::Path;

/// The log file of a run directory.
pub const LOG_FILE: &str = "log.md";

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Binding {
    pub run: String,
    /// `(events, chain hash)`; `None`: the journal has no chain (written by an older opsrun).
    pub journal: Option<(u64, String)>,
    pub operator: String,
    pub files: Vec<(String, String)>,
    /// Set when the log is rendered by `opsrun log` after the run, not at its end.
    pub rendered: Option<Rendered>,
}

/// When and by whom a log was rendered from the journal after its run: such a
/// log is not the one written at the end of the run, and says so.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    /// As the log writes times.
    pub at: String,
    pub by: String,
}

/// The labels of the binding lines, shared by the writer and the readers.
pub mod labels {
    pub const RUN: &str = "- Run: ";
    pub const JOURNAL: &str = "- Journal: ";
    pub const NO_CHAIN: &str = "no chain (written by an older opsrun)";
    pub const CHAIN_HASH: &str = " events, chain hash ";
    pub const OPERATOR: &str = "- Operator: ";
    pub const FILE: &str = "- File: ";
    pub const RENDERED: &str = "- Rendered: ";
}

/// The lines of a Markdown document outside its fenced blocks: host output
/// goes in fences and may imitate any line, so nothing is read from inside one.
pub fn outside_fences(text: &str) -> impl Iterator<Item = &str> {
    let mut fence: Option<usize> = None;
    text.lines().filter(move |line| {
        let ticks = line.chars().take_while(|c| *c == '`').count();
        match fence {
            Some(open) => {
                if ticks >= open && line[ticks..].trim().is_empty() {
                    fence = None;
                }
                false
            }
            None if ticks >= 3 => {
                fence = Some(ticks);
                false
            }
            None => true,
        }
    })
}

/// The rest of a `- Journal: ` line: `` `journal.jsonl`, N events, chain hash `HEX` ``.
/// Digits and hex hold no backtick: no Markdown unescaping is needed.
pub fn parse_journal(rest: &str) -> Option<(u64, String)> {
    let (before, after) = rest.split_once(labels::CHAIN_HASH)?;
    let n = before.rsplit_once(", ")?.1.trim().parse().ok()?;
    let head = after.trim().strip_prefix('`')?.strip_suffix('`')?;
    head.chars()
        .all(|c| c.is_ascii_hexdigit())
        .then(|| (n, head.to_string()))
}

/// The journal chain a log states, if it states one.
pub fn stated_journal(log: &str) -> Option<(u64, String)> {
    outside_fences(log)
        .filter_map(|l| l.strip_prefix(labels::JOURNAL))
        .filter_map(parse_journal)
        .last()
}

/// The run a log states it is of (`` - Run: `ID` ``), if it states one. Run
/// ids hold no backtick: no Markdown unescaping is needed.
pub fn stated_run(log: &str) -> Option<String> {
    outside_fences(log)
        .filter_map(|l| {
            l.strip_prefix(labels::RUN)?
                .strip_prefix('`')?
                .strip_suffix('`')
        })
        .find(|id| !id.contains('`'))
        .map(str::to_string)
}

/// The sha256 a log states for the run directory's file `name`
/// (`` - File: `runbook.yaml` sha256 `HEX` ``), if it states one.
pub fn stated_file(log: &str, name: &str) -> Option<String> {
    let want = format!("{}`{name}` sha256 `", labels::FILE);
    outside_fences(log)
        .filter_map(|l| l.strip_prefix(want.as_str())?.strip_suffix('`'))
        .find(|h| h.chars().all(|c| c.is_ascii_hexdigit()))
        .map(str::to_string)
}

/// How the journal read into `replay` differs from the one a log was written
/// from (`n` events, chain hash `head`), if it does.
pub fn differs(replay: &Replay, n: u64, head: &str) -> Option<Problem> {
    match replay.head_at(n) {
        // Nothing is journaled after the log is written: more events were appended.
        Some(h) if h == head && replay.chained_events() > n => Some(Problem::Longer {
            logged: n,
            found: replay.chained_events(),
        }),
        Some(h) if h == head => None,
        Some(_) => Some(Problem::NotLogged { seq: n }),
        None => Some(Problem::Shorter {
            logged: n,
            found: replay.chained_events(),
        }),
    }
}

/// Where a journal that `differs` from its log (stated `n` events) breaks, and
/// how many of the events read are kept: those before the break.
pub fn break_at(replay: &Replay, n: u64, problem: &Problem) -> (usize, usize) {
    let line = usize::try_from(n).unwrap_or(usize::MAX);
    // A damaged first event is not in `events` (`record::recover` rebuilds it).
    let skip = usize::from(replay.start_damaged.is_some());
    match problem {
        Problem::NotLogged { .. } => (line, line.saturating_sub(1 + skip)),
        Problem::Longer { .. } => (line + 1, line.saturating_sub(skip)),
        _ => (line, replay.events.len()),
    }
}

/// Checks the journal read into `replay` against the log in `dir`, when that
/// log states a chain: a journal edited after its log was written breaks there.
pub fn check_against_log(dir: &Path, replay: &mut Replay) {
    if replay.broken().is_some() {
        return;
    }
    let Ok(log) = std::fs::read_to_string(dir.join(LOG_FILE)) else {
        return;
    };
    let Some((n, head)) = stated_journal(&log) else {
        return;
    };
    // A log of another run (copied in by mistake or on purpose) says nothing
    // of this journal: it is no anchor, and this journal is not cut at it.
    let run = replay.events.iter().find_map(|e| match e {
        crate::record::events::Event::RunStarted { run_id, .. } => Some(run_id.as_str()),
        _ => None,
    });
    if let (Some(logged), Some(run)) = (stated_run(&log), run) {
        if logged != run {
            let w = format!(
                "{} is the log of run `{logged}`, not of run `{run}` whose journal is beside it: it is not used to check the journal (`opsrun log {run}` writes this run's own)",
                dir.join(LOG_FILE).display()
            );
            replay.warnings.push(w.clone());
            replay.chain_warnings.push(w);
            return;
        }
    }
    let Some(problem) = differs(replay, n, &head) else {
        return;
    };
    let (line, keep) = break_at(replay, n, &problem);
    replay.events.truncate(keep);
    replay.set_broken(
        Break { line, problem },
        &dir.join(crate::record::journal::FILE),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stated_chain_is_read_outside_fences_only() {
        let real = "- Journal: `journal.jsonl`, 12 events, chain hash `ab12`\n";
        let fake = "- Journal: `journal.jsonl`, 3 events, chain hash `ffff`\n";
        let log = format!("# log\n\n{real}\n````\n{fake}```\n{fake}````\n");
        assert_eq!(stated_journal(&log), Some((12, "ab12".into())));
        assert_eq!(stated_journal(&log.replace(real, "")), None);
        assert_eq!(
            parse_journal("`journal.jsonl`, 2 events, chain hash `a|b`"),
            None
        );
    }

    /// A recovered first line's runbook is checked against this: a host's output
    /// (in a fence) must not be able to state it.
    #[test]
    fn a_stated_file_digest_is_read_outside_fences_only() {
        let real = "- File: `runbook.yaml` sha256 `ab12`\n";
        let fake = "- File: `runbook.yaml` sha256 `ffff`\n";
        let log = format!("```\n{fake}```\n{real}");
        assert_eq!(stated_file(&log, "runbook.yaml"), Some("ab12".into()));
        assert_eq!(stated_file(&log, "inventory.yaml"), None);
        assert_eq!(stated_file(&log.replace(real, ""), "runbook.yaml"), None);
    }
}
