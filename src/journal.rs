//! The journal: `journal.jsonl`, one event per line, fsynced per event.
//!
//! It is the run's single source of truth. A run killed with SIGKILL leaves
//! every event up to the last fsync; a line cut short by a crash mid-write is
//! skipped with a warning when read back.

use crate::events::Event;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

pub const FILE: &str = "journal.jsonl";

pub struct Journal {
    file: File,
    path: PathBuf,
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
        Ok(Journal { file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one event and waits until it is on disk.
    pub fn append(&mut self, event: &Event) -> Result<(), JournalError> {
        let mut line = serde_json::to_vec(event).map_err(|e| JournalError::Write {
            path: self.path.clone(),
            source: std::io::Error::other(e),
        })?;
        line.push(b'\n');
        // One write per line keeps a crash from interleaving half-events.
        self.file
            .write_all(&line)
            .and_then(|()| self.file.sync_data())
            .map_err(|source| JournalError::Write {
                path: self.path.clone(),
                source,
            })
    }
}

/// A journal read back: the events, and warnings about lines that could not be read.
#[derive(Debug, Default)]
pub struct Replay {
    pub events: Vec<Event>,
    pub warnings: Vec<String>,
}

pub fn read(path: &Path) -> Result<Replay, JournalError> {
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
