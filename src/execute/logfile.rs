//! The run's `log.md`: rendered from the journal by the report stage and
//! signed by the sign stage, at the end of a run and by `opsrun log`.
//!
//! It is never written over a journal that cannot be trusted: a broken hash
//! chain, a damaged first event, or a journal that no longer holds the events
//! the existing log was written from (its last line edited: nothing follows it
//! in the chain, but the log states the chain hash it ended at).

use super::*;
use crate::record::binding::Binding;
pub use crate::record::binding::LOG_FILE;
use crate::record::journal::Replay;

/// Files of the run directory the log cites besides the outputs: what ran.
const CITED: &[&str] = &["runbook.yaml", "inventory.yaml"];

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error(transparent)]
    Journal(#[from] crate::record::rundir::RecordError),
    #[error("cannot write or sign the log `{}`: {source}", path.display())]
    Sign {
        path: PathBuf,
        source: crate::sign::SignError,
    },
    #[error("refusing to write the log over an untrustworthy journal: {}: {problem}; `{}` is left as it was", journal.display(), log.display())]
    Untrusted {
        journal: PathBuf,
        log: PathBuf,
        problem: String,
    },
}

/// Why the journal cannot be signed over, if it cannot.
fn untrusted(replay: &Replay) -> Option<String> {
    if let Some(b) = replay.broken() {
        return Some(format!("the hash chain is broken at {b}"));
    }
    replay
        .start_damaged
        .as_ref()
        .map(|b| format!("the run's first event is damaged (at {b})"))
}

/// What binds the log to the run directory `dir`.
fn binding(dir: &Path, replay: &Replay) -> Binding {
    Binding {
        run: crate::record::view::dir_name(dir),
        journal: replay
            .head()
            .map(|h| (replay.chained_events(), h.to_string())),
        operator: String::new(),
        files: CITED
            .iter()
            .filter_map(|f| {
                let sha = crate::digest::sha256_file(&dir.join(f)).ok()?;
                Some((f.to_string(), sha))
            })
            .collect(),
    }
}

/// (Re)renders `log.md` from the journal in `dir` and signs it into
/// `log.md.sig` (or marks it UNSIGNED). Returns the log's path and how it was signed.
pub fn write_log(
    dir: &Path,
    signing: &crate::sign::Signing,
) -> Result<(PathBuf, Option<crate::sign::SignInfo>), LogError> {
    let journal = dir.join(crate::record::journal::FILE);
    let mut replay =
        crate::record::journal::read(&journal).map_err(crate::record::rundir::RecordError::from)?;
    crate::record::binding::check_against_log(dir, &mut replay);
    let log = dir.join(LOG_FILE);
    if let Some(problem) = untrusted(&replay) {
        return Err(LogError::Untrusted {
            journal,
            log,
            problem,
        });
    }
    let binding = binding(dir, &replay);
    let signed = signing
        .write_document(&log, |signer| {
            crate::report::log::render(&replay.events, dir, signer, Some(&binding))
        })
        .map_err(|source| LogError::Sign {
            path: log.clone(),
            source,
        })?;
    Ok((log, signed))
}
