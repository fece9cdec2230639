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
//!
//! Every line carries its sequence number and the hash of the line before it
//! (`record::chain`): reading stops at the first line that breaks the chain.

use crate::record::chain::{self, Chain, Checker, LineIn, LineOut, Verdict};
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
    /// The next line's sequence number and the hash of the last line written.
    seq: u64,
    prev: String,
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
            seq: 1,
            prev: chain::START.to_string(),
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
        let out = LineOut {
            event,
            seq: self.seq,
            prev: &self.prev,
        };
        let mut line = serde_json::to_vec(&out).map_err(|e| JournalError::Write {
            path: self.path.clone(),
            source: std::io::Error::other(e),
        })?;
        let link = chain::link(&line);
        line.push(b'\n');
        // One write per line keeps a crash from interleaving half-events.
        (&*self.file)
            .write_all(&line)
            .map_err(|source| JournalError::Write {
                path: self.path.clone(),
                source,
            })?;
        self.seq += 1;
        self.prev = link;
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
/// When the chain breaks, `events` holds only the events before the break.
#[derive(Debug, Default)]
pub struct Replay {
    pub events: Vec<Event>,
    pub warnings: Vec<String>,
    pub chain: Chain,
    /// The first line was unreadable or edited; `events` starts at event #2 and
    /// has no `RunStarted` (`record::recover` rebuilds one).
    pub start_damaged: Option<chain::Break>,
    /// The warnings about the chain (a break, a damaged first event): also in
    /// `warnings`; `opsrun runs` shows only these.
    pub chain_warnings: Vec<String>,
    /// Hashes along the chain: the final one, and the one after any count of events.
    links: Checker,
}

impl Replay {
    /// Where the journal parts from the signed log beside it (its chain does not
    /// reach the head the log states): then it was changed after the log was
    /// written, and no event of it can be trusted to build commands from.
    pub fn disagrees_with_log(&self) -> Option<&chain::Break> {
        match &self.chain {
            Chain::Broken(b) if disowning(&b.problem) => Some(b),
            _ => None,
        }
    }

    /// The journal's final chain hash (`None` for a journal without a chain).
    pub fn head(&self) -> Option<&str> {
        self.links.head()
    }

    /// How many events the chain holds, up to any break.
    pub fn chained_events(&self) -> u64 {
        self.links.count()
    }

    /// The chain hash after the first `n` events, when the journal still holds them.
    pub fn head_at(&self, n: u64) -> Option<&str> {
        self.links.head_at(n)
    }

    /// Marks the chain broken at `b` (found by a check beyond the chain itself),
    /// with the same warning a break in the chain gets.
    pub fn set_broken(&mut self, b: chain::Break, path: &Path) {
        let w = if disowning(&b.problem) {
            // Where the journal and its signed log part is not where it was changed:
            // an unkeyed chain can be recomputed from line 1, so no part is trusted.
            format!(
                "{}: the journal no longer matches its signed log (at {b}): it was changed after the log was written, and nothing in it is trusted: `opsrun rollback` and `--resume` refuse it; what was done is what the signed log says",
                path.display()
            )
        } else {
            break_warning(path, &b, self.events.len())
        };
        self.warnings.push(w.clone());
        self.chain_warnings.push(w);
        self.chain = Chain::Broken(b);
    }

    /// The break in the chain, if any.
    pub fn broken(&self) -> Option<&chain::Break> {
        match &self.chain {
            Chain::Broken(b) => Some(b),
            _ => None,
        }
    }
}

/// A break found against the signed log (not inside the chain) that leaves no
/// trusted prefix: event `n`'s hash differs from the log's, or events are gone.
/// (Events appended past the log's head leave the logged ones trusted.)
fn disowning(p: &chain::Problem) -> bool {
    matches!(
        p,
        chain::Problem::NotLogged { .. } | chain::Problem::Shorter { .. }
    )
}

fn break_warning(path: &Path, b: &chain::Break, kept: usize) -> String {
    format!(
        "{}: the hash chain is broken at {b}; only the {} before it are used",
        path.display(),
        crate::plural::count(kept, "event", "events")
    )
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
    let at = |line: usize| format!("{}:{line}", path.display());
    let mut lines = BufReader::new(file).split(b'\n').enumerate().peekable();
    while let Some((i, line)) = lines.next() {
        let line = line.map_err(|source| JournalError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<LineIn>(&line) {
            Ok(l) => {
                let verdict = replay.links.check(i + 1, &line, &l);
                if !matches!(verdict, Verdict::Break(_)) {
                    if let Some((n, e)) = replay.links.skipped() {
                        // The line after it chains to the one before: nothing is lost.
                        replay
                            .warnings
                            .push(format!("{}: unreadable event skipped: {e}", at(n)));
                    }
                }
                match verdict {
                    Verdict::Accept => replay.events.push(l.event),
                    Verdict::DropFirst => {
                        replay.events.clear();
                        replay.events.push(l.event);
                    }
                    Verdict::Break(b) => {
                        let w = break_warning(path, &b, replay.events.len());
                        replay.warnings.push(w.clone());
                        replay.chain_warnings.push(w);
                        replay.chain = Chain::Broken(b);
                        break;
                    }
                }
            }
            Err(e) => {
                if lines.peek().is_none() {
                    replay.warnings.push(format!(
                        "{}: the last line is incomplete (the run was cut off while writing it); read up to the last whole event",
                        at(i + 1)
                    ));
                } else if replay.links.chained() {
                    // Skipped or a break: the next line tells which.
                    replay.links.unreadable(i + 1, e.to_string());
                } else if i == 0 {
                    // Possibly the first event of a chained journal, damaged: as above.
                    replay.links.unreadable(i + 1, e.to_string());
                } else {
                    replay
                        .warnings
                        .push(format!("{}: unreadable event skipped: {e}", at(i + 1)));
                }
            }
        }
    }
    if replay.chain == Chain::Unchained && replay.links.chained() {
        replay.chain = Chain::Intact;
    }
    if let (Some((n, e)), None) = (replay.links.skipped(), replay.broken()) {
        replay
            .warnings
            .push(format!("{}: unreadable event skipped: {e}", at(n)));
    }
    if let Some(b) = replay.links.start_damaged.clone() {
        let w = format!(
            "{}: the run's first event is damaged (at {b}); the other events are intact and used",
            path.display(),
        );
        replay.warnings.insert(0, w.clone());
        replay.chain_warnings.insert(0, w);
        replay.start_damaged = Some(b);
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

    /// A journal of `n` events, as lines.
    fn lines(n: usize) -> (tempfile::TempDir, Vec<String>) {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::create(dir.path()).unwrap();
        for k in 0..n {
            j.append(&event(k)).unwrap();
        }
        drop(j);
        let text = std::fs::read_to_string(dir.path().join(FILE)).unwrap();
        (dir, text.lines().map(str::to_string).collect())
    }

    fn reread(dir: &Path, lines: &[String]) -> Replay {
        std::fs::write(dir.join(FILE), lines.join("\n") + "\n").unwrap();
        read(&dir.join(FILE)).unwrap()
    }

    #[test]
    fn the_chain_finds_a_dropped_duplicated_reordered_or_edited_line_and_says_where() {
        let (dir, good) = lines(6);
        let intact = reread(dir.path(), &good);
        assert_eq!(intact.chain, Chain::Intact);
        assert_eq!(intact.chained_events(), 6);
        assert_eq!(
            intact.head(),
            Some(chain::link(good[5].as_bytes()).as_str())
        );
        assert_eq!(
            intact.head_at(3),
            Some(chain::link(good[2].as_bytes()).as_str())
        );

        let mut dropped = good.clone();
        dropped.remove(3);
        let r = reread(dir.path(), &dropped);
        assert_eq!(r.events.len(), 3);
        assert_eq!(
            r.broken().unwrap().to_string(),
            "line 4: expected event #4, found #5: event #4 is missing here (a line was removed, or moved further down)"
        );

        let mut twice = good.clone();
        twice.insert(3, good[2].clone());
        let r = reread(dir.path(), &twice);
        assert_eq!(r.events.len(), 3);
        assert_eq!(
            r.broken().unwrap().to_string(),
            "line 4: event #3 again (a copy of line 3)"
        );

        let mut moved = good.clone();
        moved.swap(2, 3);
        let r = reread(dir.path(), &moved);
        assert_eq!(r.broken().unwrap().line, 3);
        assert_eq!(r.events.len(), 2);

        let mut edited = good.clone();
        edited[2] = edited[2].replace("event 2", "event two");
        let r = reread(dir.path(), &edited);
        assert_eq!(r.broken().unwrap().line, 4, "the line that does not chain");
        assert_eq!(
            r.events.len(),
            3,
            "the edited line is read but nothing after it"
        );
        assert!(
            r.warnings[0].contains(
                "line 3 (event #3) was changed after it was written: line 4 does not chain to it"
            ),
            "{:?}",
            r.warnings
        );

        let mut garbled = good.clone();
        garbled[2] = "{\"event\":\"run_fin".into();
        let r = reread(dir.path(), &garbled);
        assert_eq!(r.broken().unwrap().line, 3);
        assert!(
            r.warnings[0].contains("line 3: event #3 is unreadable"),
            "{:?}",
            r.warnings
        );

        // A line inserted without replacing one: skipped, nothing lost.
        let mut inserted = good.clone();
        inserted.insert(2, "{\"event\":\"run_fin".into());
        let r = reread(dir.path(), &inserted);
        assert_eq!((r.chain.clone(), r.events.len()), (Chain::Intact, 6));
        assert!(
            r.warnings[0].contains(":3: unreadable event skipped"),
            "{:?}",
            r.warnings
        );
    }

    #[test]
    fn a_damaged_first_line_leaves_the_rest_of_the_chain_usable() {
        let (dir, good) = lines(4);
        for first in [
            "garbage".to_string(),
            good[0].replace("event 0", "event zero"),
        ] {
            let mut damaged = good.clone();
            damaged[0] = first;
            let r = reread(dir.path(), &damaged);
            assert_eq!(r.chain, Chain::Intact);
            assert!(r.start_damaged.is_some());
            assert_eq!(r.events.len(), 3, "events #2 to #4");
            assert_eq!(r.chained_events(), 4);
            assert_eq!(r.head(), Some(chain::link(good[3].as_bytes()).as_str()));
            assert!(
                r.warnings[0].contains("the run's first event is damaged"),
                "{:?}",
                r.warnings
            );
        }
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
