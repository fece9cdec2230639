//! The journal's hash chain: every line carries its sequence number and the
//! sha256 of the previous line's exact bytes, so a dropped, duplicated,
//! reordered or edited line is found, and where.
//!
//! The chain cannot protect the last line by itself (nothing follows it): the
//! signed log states the journal's final chain hash (its `head`), which covers
//! the last line and, through it, every line before.

use crate::digest::sha256_hex;
use crate::record::events::Event;
use serde::{Deserialize, Serialize};

/// `prev` of the first line: there is no line before it.
pub const START: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The hash a line is chained by: sha256 of its bytes, without the newline.
pub fn link(line: &[u8]) -> String {
    sha256_hex(line)
}

/// One journal line as written: the event, then its place in the chain.
#[derive(Serialize)]
pub(crate) struct LineOut<'a> {
    #[serde(flatten)]
    pub event: &'a Event,
    pub seq: u64,
    pub prev: &'a str,
}

/// One journal line as read: journals written before the chain have neither field.
#[derive(Deserialize)]
pub(crate) struct LineIn {
    #[serde(flatten)]
    pub event: Event,
    #[serde(default)]
    pub seq: Option<u64>,
    #[serde(default)]
    pub prev: Option<String>,
}

/// What is wrong at the line where the chain breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The line holds a later event than the next one: events are missing.
    Missing { expected: u64, found: u64 },
    /// The line holds an event already read (the same bytes again).
    Duplicated { seq: u64, first_line: usize },
    /// The line holds an earlier event than the next one, not a copy: lines were moved.
    Reordered { expected: u64, found: u64 },
    /// The line's `prev` is not the hash of the event before it: that event
    /// (at `changed_line`) was edited after it was written.
    Edited { changed_line: usize, seq: u64 },
    /// An unreadable line stands where event `seq` was (the next line chains to it).
    Damaged { seq: u64, reason: String },
    /// A line without chain fields in a chained journal, or one with only one of them.
    Unchained,
    /// Event `seq` is not the one the run's log was written from (its chain
    /// hash is not the one the log states): the journal was edited since.
    NotLogged { seq: u64 },
    /// The run's log was written from `logged` events; the journal holds fewer.
    Shorter { logged: u64, found: u64 },
    /// The run's log was written from `logged` events; the journal holds more.
    /// Nothing is journaled after a run's log is written: they were appended.
    Longer { logged: u64, found: u64 },
    /// The first line says journal `version`, which is chained, but the lines
    /// carry no chain fields: they were removed (a downgrade to "no chain").
    Stripped { version: u32 },
}

/// Where the chain breaks: `line` is 1-based in the journal file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Break {
    pub line: usize,
    pub problem: Problem,
}

impl std::fmt::Display for Break {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let line = self.line;
        match &self.problem {
            Problem::Missing { expected, found } => write!(
                f,
                "line {line}: expected event #{expected}, found #{found}: {} missing here (a line was removed, or moved further down)",
                if found - expected == 1 {
                    format!("event #{expected} is")
                } else {
                    format!("events #{expected} to #{} are", found - 1)
                }
            ),
            Problem::Duplicated { seq, first_line } => write!(
                f,
                "line {line}: event #{seq} again (a copy of line {first_line})"
            ),
            Problem::Reordered { expected, found } => write!(
                f,
                "line {line}: expected event #{expected}, found #{found} (lines were moved)"
            ),
            Problem::Edited { changed_line, seq } => write!(
                f,
                "line {changed_line} (event #{seq}) was changed after it was written: line {line} does not chain to it"
            ),
            Problem::Damaged { seq, reason } => write!(
                f,
                "line {line}: event #{seq} is unreadable ({reason})"
            ),
            Problem::NotLogged { seq } => write!(
                f,
                "line {line}: event #{seq} is not the one log.md was written from (its chain hash is not the one log.md states): the journal was edited after its log was written"
            ),
            Problem::Shorter { logged, found } => write!(
                f,
                "the end: the journal holds {found} events, log.md was written from {logged} (lines were removed from its end)"
            ),
            Problem::Longer { logged, found } => write!(
                f,
                "line {line}: event #{} follows the last event log.md was written from (#{logged}; the journal holds {found}): nothing is journaled after a run's log is written, so these events were appended later",
                logged + 1
            ),
            Problem::Stripped { version } => write!(
                f,
                "line {line}: the journal says version {version}, whose every line carries a sequence number and previous-line hash, but its lines have none (they were removed)"
            ),
            Problem::Unchained => write!(
                f,
                "line {line}: no sequence number or previous-line hash, in a journal whose other lines have them"
            ),
        }
    }
}

/// The state of a journal's chain, once read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Chain {
    /// No line carries chain fields: the journal was written by an older opsrun.
    #[default]
    Unchained,
    Intact,
    Broken(Break),
}

/// Follows the chain line by line as a journal is read.
#[derive(Debug, Default)]
pub(crate) struct Checker {
    /// The hash after each accepted event: `heads[k]` covers events 1..=k+1.
    heads: Vec<String>,
    /// `(line, link)` of each accepted event, to name a duplicated line's original.
    seen: Vec<(usize, String)>,
    /// The last unreadable line since the last accepted event, and why.
    unreadable: Option<(usize, String)>,
    chained: Option<bool>,
    /// The first line was unreadable or edited, and the chain was picked up at
    /// the next event (`record::recover` rebuilds the run's identity).
    pub start_damaged: Option<Break>,
}

/// What to do with a line that parsed.
pub(crate) enum Verdict {
    Accept,
    /// Accept, and drop the first event read: it was edited (the next line does
    /// not chain to it), and the chain is picked up here.
    DropFirst,
    /// The chain breaks here: stop reading.
    Break(Break),
}

impl Checker {
    fn expected(&self) -> u64 {
        self.heads.len() as u64 + 1 + u64::from(self.start_damaged.is_some())
    }

    fn prev(&self) -> &str {
        self.heads.last().map_or(START, String::as_str)
    }

    pub fn unreadable(&mut self, line: usize, reason: String) {
        self.unreadable = Some((line, reason));
    }

    /// An unreadable line that the next event chained past: it was inserted,
    /// nothing is lost. Taken once.
    pub fn skipped(&mut self) -> Option<(usize, String)> {
        self.unreadable.take()
    }

    pub fn chained(&self) -> bool {
        self.chained == Some(true)
    }

    /// The hash after the first `n` events, when the chain reaches that far.
    pub fn head_at(&self, n: u64) -> Option<&str> {
        let skip = u64::from(self.start_damaged.is_some());
        let k = n.checked_sub(1 + skip)?;
        self.heads.get(usize::try_from(k).ok()?).map(String::as_str)
    }

    /// The hash of the last accepted event: the journal's final chain hash.
    pub fn head(&self) -> Option<&str> {
        self.heads.last().map(String::as_str)
    }

    /// The number of events the chain holds (counting a damaged first one).
    pub fn count(&self) -> u64 {
        self.expected() - 1
    }

    pub fn check(&mut self, number: usize, bytes: &[u8], line: &LineIn) -> Verdict {
        let here = link(bytes);
        let (seq, prev) = match (line.seq, &line.prev) {
            (None, None) if self.chained != Some(true) => {
                let first = self.chained.is_none();
                self.chained = Some(false);
                match &line.event {
                    Event::RunStarted { version, .. }
                        if first && *version >= crate::record::events::CHAINED_SINCE =>
                    {
                        return Verdict::Break(Break {
                            line: number,
                            problem: Problem::Stripped { version: *version },
                        })
                    }
                    _ => return Verdict::Accept,
                }
            }
            (Some(seq), Some(prev)) if self.chained != Some(false) => (seq, prev.as_str()),
            _ => {
                return Verdict::Break(Break {
                    line: number,
                    problem: Problem::Unchained,
                })
            }
        };
        let first = self.chained.is_none();
        self.chained = Some(true);
        let expected = self.expected();
        // Left for `skipped` when the line is accepted: it was only inserted.
        let unreadable = self.unreadable.clone();
        // An unreadable or edited first line: pick the chain up at event #2, so
        // the rest of the run stays usable (the caller says so).
        if first && seq == 2 {
            let problem = match self.unreadable.take() {
                Some((_, reason)) => Problem::Damaged { seq: 1, reason },
                None => Problem::Missing {
                    expected: 1,
                    found: 2,
                },
            };
            self.start_damaged = Some(Break { line: 1, problem });
            return self.accept(number, here);
        }
        if seq == expected && prev == self.prev() {
            return self.accept(number, here);
        }
        let problem = if seq == expected {
            match self.seen.last() {
                Some((line, _)) if self.seen.len() == 1 && self.start_damaged.is_none() => {
                    // The first event was edited: the rest is picked up as after a damaged one.
                    let at = *line;
                    self.heads.clear();
                    self.seen.clear();
                    self.start_damaged = Some(Break {
                        line: number,
                        problem: Problem::Edited {
                            changed_line: at,
                            seq: 1,
                        },
                    });
                    self.accept(number, here);
                    return Verdict::DropFirst;
                }
                Some((line, _)) => Problem::Edited {
                    changed_line: *line,
                    seq: expected - 1,
                },
                None => Problem::Edited {
                    changed_line: number,
                    seq,
                },
            }
        } else if seq == expected + 1 && unreadable.is_some() {
            let (line, reason) = unreadable.unwrap_or_default();
            return Verdict::Break(Break {
                line,
                problem: Problem::Damaged {
                    seq: expected,
                    reason,
                },
            });
        } else if seq > expected {
            Problem::Missing {
                expected,
                found: seq,
            }
        } else {
            match self.seen.iter().find(|(_, l)| *l == here) {
                Some((first_line, _)) => Problem::Duplicated {
                    seq,
                    first_line: *first_line,
                },
                None => Problem::Reordered {
                    expected,
                    found: seq,
                },
            }
        };
        Verdict::Break(Break {
            line: number,
            problem,
        })
    }

    fn accept(&mut self, number: usize, here: String) -> Verdict {
        self.seen.push((number, here.clone()));
        self.heads.push(here);
        Verdict::Accept
    }
}
