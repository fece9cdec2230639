//! The run directory: `<log-dir>/<run-id>/` with the journal, full outputs,
//! copies of the runbook and inventory, and (at the end) the Markdown log.

use crate::digest::sha256_hex;
use crate::record::events::{Event, Saved};
use crate::record::journal::{Journal, JournalError};
use crate::record::output::OutputWriter;
use crate::record::reserve::Reserve;
use crate::sanitize::Redactor;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub struct Recorder {
    dir: PathBuf,
    journal: Mutex<Journal>,
    /// Room kept for the journal and the log should the disk fill up (reserve.rs).
    reserve: Arc<Reserve>,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("cannot create the run directory `{}`: {source}", path.display())]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("cannot save output `{}`: {source}", path.display())]
    Output {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// File names from step names and hosts: letters and digits of any script (a
/// Chinese step name stays readable), `-` for everything else, never empty.
/// Unique because the names it is part of also carry the step number and host.
pub fn slug(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_alphanumeric() {
            out.extend(c.to_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    // 40 characters, at most 80 bytes: two of them, the step number and an
    // extension stay well within a file name's 255 bytes.
    let mut t = String::new();
    for c in out.trim_matches('-').chars().take(40) {
        if t.len() + c.len_utf8() > 80 {
            break;
        }
        t.push(c);
    }
    match t.trim_end_matches('-') {
        "" => "step".to_string(),
        t => t.to_string(),
    }
}

/// A host's part of an output file name: the name itself when it is already a
/// slug (`web1`, `app-2`), else its slug and a short digest of the exact name, so
/// hosts that differ only in case or punctuation (`AB1`, `ab1`, `a.b1`) never
/// share a name, whatever the file system's case rules; the same host is always
/// named the same way.
pub fn host_slug(host: &str) -> String {
    let s = slug(host);
    if s == host {
        return s;
    }
    format!("{s}-{}", &sha256_hex(host.as_bytes())[..6])
}

/// The name (without extension) of one host's output of one step:
/// `01-back-up-ecology-oa1`, `-b2` for the batch in a rolling run, `rb` before
/// the number for a rollback.
pub fn output_stem(
    rollback: bool,
    number: usize,
    step: &str,
    host: &str,
    batch: Option<usize>,
) -> String {
    let phase = if rollback { "rb" } else { "" };
    let batch = batch.map(|b| format!("-b{b}")).unwrap_or_default();
    format!(
        "{phase}{number:02}-{}-{}{batch}",
        slug(step),
        host_slug(host)
    )
}

impl Recorder {
    /// Creates a fresh run directory; a clash (two runs in the same second) gets a suffix.
    /// `must_reserve`: refuse when the reserve cannot be written (a rollback goes on without).
    pub fn create(
        log_dir: &Path,
        run_id: &str,
        must_reserve: bool,
    ) -> Result<(Recorder, String), RecordError> {
        std::fs::create_dir_all(log_dir).map_err(|source| RecordError::Create {
            path: log_dir.to_path_buf(),
            source,
        })?;
        let mut id = run_id.to_string();
        let mut n = 1;
        let dir = loop {
            let dir = log_dir.join(&id);
            match std::fs::create_dir(&dir) {
                Ok(()) => break dir,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    n += 1;
                    id = format!("{run_id}-{n}");
                }
                Err(source) => return Err(RecordError::Create { path: dir, source }),
            }
        };
        std::fs::create_dir(dir.join("outputs")).map_err(|source| RecordError::Create {
            path: dir.join("outputs"),
            source,
        })?;
        let journal = Journal::create(&dir)?;
        // Without it a full disk would take the journal's last events and the
        // log with the output that filled it.
        let reserve = match Reserve::create(&dir) {
            Ok(r) => r,
            Err(_) if !must_reserve => Reserve::none(),
            Err(source) => {
                return Err(RecordError::Create {
                    path: dir.join(".reserve"),
                    source,
                })
            }
        };
        Ok((
            Recorder {
                dir,
                journal: Mutex::new(journal),
                reserve: Arc::new(reserve),
            },
            id,
        ))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Records an event. Decisions and the run's start and end are waited for until
    /// they are on disk; other events are fsynced in the background (journal.rs).
    pub fn emit(&self, event: &Event) -> Result<(), RecordError> {
        let mut j = self.journal.lock().unwrap_or_else(|p| p.into_inner());
        j.append(event)?;
        if matches!(
            event,
            Event::RunStarted { .. }
                | Event::Gate { .. }
                | Event::Manual { .. }
                | Event::RunFinished { .. }
        ) {
            j.sync()?;
        }
        Ok(())
    }

    /// Keeps a copy of an input file so a later `opsrun rollback` uses exactly what ran.
    pub fn keep(&self, name: &str, text: &str) -> Result<(), RecordError> {
        let path = self.dir.join(name);
        std::fs::write(&path, text).map_err(|source| RecordError::Output { path, source })
    }

    /// A writer that streams one output stream into `outputs/<stem>.<ext>`.
    pub fn output(&self, stem: &str, ext: &'static str, redactor: &Redactor) -> OutputWriter {
        OutputWriter::new(
            &self.dir,
            stem,
            ext,
            redactor.clone(),
            Arc::clone(&self.reserve),
        )
    }

    /// Whether an output of this run could not be saved because the disk is full.
    pub fn disk_full(&self) -> bool {
        self.reserve.is_spent()
    }

    /// The reserve is not needed once the log is written.
    pub fn drop_reserve(&self) {
        self.reserve.remove();
    }

    /// Writes one output stream (already redacted) and returns where it is and its digest.
    pub fn save(&self, stem: &str, ext: &str, bytes: &[u8]) -> Result<Option<Saved>, RecordError> {
        if bytes.is_empty() {
            return Ok(None);
        }
        // Stems are unique per step, host and batch (`output_stem`); what runs twice
        // under one stem all the same (the undo of a load balancer drained in two
        // batches, by a step that does not read `batch`) must not overwrite what was
        // saved and recorded first: it gets `.2`.
        let mut n = 1;
        let (rel, path) = loop {
            let rel = match n {
                1 => format!("outputs/{stem}.{ext}"),
                _ => format!("outputs/{stem}.{n}.{ext}"),
            };
            let path = self.dir.join(&rel);
            if !path.exists() {
                break (rel, path);
            }
            n += 1;
        };
        std::fs::write(&path, bytes).map_err(|source| RecordError::Output { path, source })?;
        Ok(Some(Saved {
            file: rel,
            sha256: sha256_hex(bytes),
            bytes: bytes.len() as u64,
            cut: None,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::slug;

    #[test]
    fn slugs_keep_letters_of_any_script_and_are_never_empty() {
        assert_eq!(slug("Back up ecology"), "back-up-ecology");
        assert_eq!(slug("重启应用"), "重启应用");
        assert_eq!(slug("检查：状态 (Ⅱ)"), "检查-状态-ⅱ");
        assert_eq!(slug("！！"), "step");
        // 3 bytes a character: cut at 80 bytes, not 40 characters.
        assert_eq!(slug(&"长".repeat(50)), "长".repeat(26));
        assert_eq!(slug(&"a".repeat(50)), "a".repeat(40));
    }

    #[test]
    fn host_names_that_slug_alike_stay_apart() {
        use super::host_slug;
        assert_eq!(host_slug("ab1"), "ab1");
        assert_ne!(host_slug("AB1"), host_slug("ab1"));
        assert_ne!(host_slug("a.b1"), host_slug("a_b1"));
        assert!(host_slug("AB1").starts_with("ab1-"));
        assert_eq!(host_slug("AB1"), host_slug("AB1"));
    }
}
