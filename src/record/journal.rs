//! The journal: `journal.jsonl`, one event per line.
//!
//! It is the run's single source of truth. Every event is written to the file
//! (one `write` per line) before `append` returns, so a run killed with SIGKILL,
//! or one that panics, leaves every event it emitted; a line cut short by a crash
//! mid-write is skipped with a warning when read back.
//!
//! Every event is also fsynced, by a background thread that commits in groups:
//! one `fdatasync` covers all lines written before it started. The engine does not
//! wait for it on every event: on the machines we measured an fdatasync costs
//! ~5 ms, and waiting four times per step made a step of `true` cost ~4× a
//! command on an open connection (BENCHMARKS.md). What that gives up is only
//! power loss or a kernel crash on the control machine within one fsync of an
//! event. Events that record a decision or an end ([`Journal::sync`] callers:
//! gates, manual steps, start and end of the run) are waited for.

use crate::record::events::Event;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

pub const FILE: &str = "journal.jsonl";

pub struct Journal {
    file: Arc<File>,
    path: PathBuf,
    syncer: Arc<Syncer>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot write the journal `{}`: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read the journal `{}`: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Counts of lines written and fsynced; the first fsync error sticks.
#[derive(Default)]
struct SyncState {
    written: u64,
    synced: u64,
    error: Option<(std::io::ErrorKind, String)>,
    closing: bool,
}

#[derive(Default)]
struct Syncer {
    state: Mutex<SyncState>,
    changed: Condvar,
}

impl Syncer {
    fn lock(&self) -> MutexGuard<'_, SyncState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn run(&self, file: &File) {
        loop {
            let target = {
                let mut s = self.lock();
                while s.synced == s.written && !s.closing {
                    s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
                }
                if s.synced == s.written {
                    return;
                }
                s.written
            };
            let result = file.sync_data();
            let mut s = self.lock();
            match result {
                Ok(()) => s.synced = target,
                Err(e) => s.error = Some((e.kind(), e.to_string())),
            }
            let failed = s.error.is_some();
            drop(s);
            self.changed.notify_all();
            if failed {
                return;
            }
        }
    }
}

impl Journal {
    /// Creates the journal in `dir`; refuses to overwrite an existing one.
    pub fn create(dir: &Path) -> Result<Journal, JournalError> {
        let path = dir.join(FILE);
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(|source| JournalError::Write {
                path: path.clone(),
                source,
            })?;
        let file = Arc::new(file);
        let syncer = Arc::new(Syncer::default());
        let thread = {
            let (file, syncer) = (Arc::clone(&file), Arc::clone(&syncer));
            std::thread::Builder::new()
                .name("journal-sync".into())
                .spawn(move || syncer.run(&file))
                .map_err(|source| JournalError::Write {
                    path: path.clone(),
                    source,
                })?
        };
        Ok(Journal {
            file,
            path,
            syncer,
            thread: Some(thread),
        })
    }

    fn sync_error(&self, s: &SyncState) -> Result<(), JournalError> {
        match &s.error {
            Some((kind, msg)) => Err(JournalError::Write {
                path: self.path.clone(),
                source: std::io::Error::new(*kind, format!("fsync: {msg}")),
            }),
            None => Ok(()),
        }
    }

    /// Appends one event: in the file when this returns, on disk shortly after.
    /// A failed background fsync is reported by the next call.
    pub fn append(&mut self, event: &Event) -> Result<(), JournalError> {
        self.sync_error(&self.syncer.lock())?;
        let mut line = serde_json::to_vec(event).map_err(|e| JournalError::Write {
            path: self.path.clone(),
            source: std::io::Error::other(e),
        })?;
        line.push(b'\n');
        // One write per line keeps a crash from interleaving half-events.
        (&*self.file)
            .write_all(&line)
            .map_err(|source| JournalError::Write {
                path: self.path.clone(),
                source,
            })?;
        self.syncer.lock().written += 1;
        self.syncer.changed.notify_all();
        Ok(())
    }

    /// Waits until every event appended so far is on disk.
    pub fn sync(&self) -> Result<(), JournalError> {
        let mut s = self.syncer.lock();
        while s.synced < s.written && s.error.is_none() {
            s = self
                .syncer
                .changed
                .wait(s)
                .unwrap_or_else(|p| p.into_inner());
        }
        self.sync_error(&s)
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        // The syncer commits what is left, then exits.
        self.syncer.lock().closing = true;
        self.syncer.changed.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A journal read back: the events, and warnings about lines that could not be read.
#[derive(Debug, Default)]
pub struct Replay {
    pub events: Vec<Event>,
    pub warnings: Vec<String>,
}

/// Reads a journal of any version, in the current vocabulary.
pub fn read(path: &Path) -> Result<Replay, JournalError> {
    let mut replay = read_raw(path)?;
    crate::record::legacy::upgrade(&mut replay.events, path.parent().unwrap_or(path));
    Ok(replay)
}

/// Reads a journal as its lines decode, without the version 0 upgrade that
/// needs other runs' journals.
pub(crate) fn read_raw(path: &Path) -> Result<Replay, JournalError> {
    let file = File::open(path).map_err(|source| JournalError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut replay = Replay::default();
    let mut lines = BufReader::new(file).split(b'\n').enumerate().peekable();
    while let Some((i, line)) = lines.next() {
        let line = line.map_err(|source| JournalError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<Event>(&line) {
            Ok(e) => replay.events.push(e),
            Err(e) => {
                let last = lines.peek().is_none();
                replay.warnings.push(if last {
                    format!(
                        "{}:{}: the last line is incomplete (the run was cut off while writing it); read up to the last whole event",
                        path.display(),
                        i + 1
                    )
                } else {
                    format!("{}:{}: unreadable event skipped: {e}", path.display(), i + 1)
                });
            }
        }
    }
    Ok(replay)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::events::{now, Outcome};

    fn event(n: usize) -> Event {
        Event::RunFinished {
            time: now(),
            outcome: Outcome::Succeeded,
            message: format!("event {n}"),
        }
    }

    #[test]
    fn every_event_is_in_the_file_when_append_returns() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::create(dir.path()).unwrap();
        for n in 0..50 {
            j.append(&event(n)).unwrap();
            // Read back at once, without a sync: what SIGKILL right now would leave.
            let replay = read(&dir.path().join(FILE)).unwrap();
            assert_eq!(replay.events.len(), n + 1);
        }
        j.sync().unwrap();
        let s = j.syncer.lock();
        assert_eq!((s.written, s.synced), (50, 50));
    }

    #[test]
    fn drop_commits_what_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::create(dir.path()).unwrap();
        for n in 0..10 {
            j.append(&event(n)).unwrap();
        }
        let syncer = Arc::clone(&j.syncer);
        drop(j);
        let s = syncer.lock();
        assert_eq!((s.written, s.synced), (10, 10));
    }
}
