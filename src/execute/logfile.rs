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

/// Why the log already in a run directory cannot anchor the journal it is
/// checked against, if it cannot: the chain hash it states is only worth its
/// signature. One edited along with a rewritten journal would agree with it.
/// `Ok(Some(note))`: an unsigned log (`--no-sign`), used but no anchor.
pub fn anchor(log: &Path) -> Result<Option<String>, String> {
    let Ok(text) = std::fs::read_to_string(log) else {
        return Ok(None);
    };
    if crate::record::binding::stated_journal(&text).is_none() {
        return Ok(None);
    }
    let sig = crate::sign::sig_path(log);
    let name = |p: &Path| p.display().to_string();
    if !sig.exists() {
        return match crate::report::signature::stated(&text).unsigned {
            true => Ok(Some(format!(
                "{} is unsigned (--no-sign): the chain hash it states is no anchor, the new log rests on the journal alone",
                name(log)
            ))),
            false => Err(format!(
                "{} is missing: {} says it is signed, so the chain hash it states is no anchor",
                name(&sig),
                name(log)
            )),
        };
    }
    let v = crate::sign::verify(log, &crate::sign::VerifyOptions::default())
        .map_err(|e| e.to_string())?;
    match v
        .checks
        .iter()
        .find(|c| !c.ok && (c.name == "signature" || c.name == "stated key"))
    {
        Some(c) => Err(format!(
            "{}'s signature does not verify against the public key it states ({}): it was changed after it was signed, so the chain hash it states is no anchor",
            name(log),
            c.detail
        )),
        None => Ok(None),
    }
}

/// What binds the log to the run directory `dir`.
fn binding(dir: &Path, replay: &Replay) -> Binding {
    Binding {
        // The run is the one its journal names (a run directory may be archived
        // under another name); the directory's name where the first event is lost.
        run: replay
            .events
            .iter()
            .find_map(|e| match e {
                crate::record::events::Event::RunStarted { run_id, .. } => Some(run_id.clone()),
                _ => None,
            })
            .unwrap_or_else(|| crate::record::view::dir_name(dir)),
        journal: replay
            .head()
            .map(|h| (replay.chained_events(), h.to_string())),
        operator: String::new(),
        rendered: None,
        files: CITED
            .iter()
            .filter_map(|f| {
                let sha = crate::digest::sha256_file(&dir.join(f)).ok()?;
                Some((f.to_string(), sha))
            })
            .collect(),
    }
}

/// A log written: where, how it was signed, and what the reader should know.
#[derive(Debug)]
pub struct Written {
    pub log: PathBuf,
    pub signed: Option<crate::sign::SignInfo>,
    /// The journal's final chain hash and its number of events, as the log states them.
    pub head: Option<(u64, String)>,
    pub notes: Vec<String>,
}

impl Written {
    /// The line the run ends with before the log's path: the journal's final
    /// chain hash. Put on the ticket, off this machine, it is what a rewritten
    /// journal with a re-signed log cannot match.
    pub fn chain_line(&self) -> Option<String> {
        let (n, head) = self.head.as_ref()?;
        let n = usize::try_from(*n).unwrap_or(usize::MAX);
        Some(format!(
            "journal chain hash {head} ({}): put it on the ticket with the log",
            crate::plural::count(n, "event", "events")
        ))
    }
}

/// (Re)renders `log.md` from the journal in `dir` and signs it into
/// `log.md.sig` (or marks it UNSIGNED). `later`: rendered by `opsrun log` as
/// this operator after the run, which the log then says of itself.
pub fn write_log(
    dir: &Path,
    signing: &crate::sign::Signing,
    later: Option<&str>,
) -> Result<Written, LogError> {
    let journal = dir.join(crate::record::journal::FILE);
    let log = dir.join(LOG_FILE);
    let mut notes = Vec::new();
    match anchor(&log) {
        Ok(note) => notes.extend(note),
        Err(problem) => {
            let problem = format!(
                "{problem} (move {} away to render a new log from the journal alone)",
                log.display()
            );
            return Err(LogError::Untrusted {
                journal,
                log,
                problem,
            });
        }
    }
    let mut replay =
        crate::record::journal::read(&journal).map_err(crate::record::rundir::RecordError::from)?;
    crate::record::binding::check_against_log(dir, &mut replay);
    if let Some(problem) = untrusted(&replay) {
        return Err(LogError::Untrusted {
            journal,
            log,
            problem,
        });
    }
    let mut binding = binding(dir, &replay);
    binding.rendered = later.map(|by| crate::record::binding::Rendered {
        at: crate::clock::now()
            .format(crate::report::signature::TIME_FORMAT)
            .to_string(),
        by: by.to_string(),
    });
    let signed = signing
        .write_document(&log, |signer| {
            crate::report::log::render(&replay.events, dir, signer, Some(&binding))
        })
        .map_err(|source| LogError::Sign {
            path: log.clone(),
            source,
        })?;
    Ok(Written {
        log,
        signed,
        head: binding.journal,
        notes,
    })
}
