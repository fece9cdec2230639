//! The typed errors opsrun reports, and the exit code each one maps to.

use crate::diagnostic::Diagnostic;
use std::path::PathBuf;

/// Exit codes, as documented in the README.
pub mod exit {
    pub const OK: i32 = 0;
    pub const STEP_FAILED: i32 = 1;
    pub const INVALID_INPUT: i32 = 2;
    pub const NOT_CONFIRMED: i32 = 3;
    pub const INTERRUPTED: i32 = 130;
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A runbook or inventory problem with its position in the file.
    #[error("{0}")]
    Invalid(Box<Diagnostic>),
    // Not named `source`: thiserror would chain it, and `{:#}` would print the reason twice.
    #[error("error: cannot read `{}`: {reason}", path.display())]
    Read {
        path: PathBuf,
        reason: std::io::Error,
    },
    #[error("error: no runbook `{name}`{hint}\n  looked in: {searched}")]
    RunbookNotFound {
        name: String,
        hint: String,
        searched: String,
    },
    #[error("error: no inventory for environment `{env}`: `{}` does not exist{hint}", path.display())]
    InventoryNotFound {
        env: String,
        path: PathBuf,
        hint: String,
    },
    /// `-i FILE` with a `--env` other than that inventory's name: the name is the
    /// inventory's own (it is what typed gates ask for and what records say).
    #[error("error: --env `{given}` does not name inventory `{}`, whose name is `{name}`: give `--env {name}` or leave --env out", path.display())]
    EnvMismatch {
        given: String,
        name: String,
        path: PathBuf,
    },
    /// `inventories/X.yaml` whose `name:` is not X: `--env` selects an inventory
    /// there by its name, so a file named otherwise could never be selected by
    /// the name that typed gates ask for and records show.
    #[error("error: inventory `{}` is named `{name}`: under inventories/ an inventory's file is named after it (`--env NAME` reads inventories/NAME.yaml); rename the file to {name}.yaml, or remove `name:`", path.display())]
    MisnamedInventory { name: String, path: PathBuf },
    /// How ssh reaches hosts could not be resolved (`ssh -G`): one message per host.
    #[error("{}", .0.iter().map(|m| format!("error: {m}")).collect::<Vec<_>>().join("\n"))]
    SshConfig(Vec<String>),
    /// Every problem found in one pass over a file (template errors), in file order of discovery.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n\n"))]
    InvalidAll(Vec<Diagnostic>),
    /// Operator-given text that is recorded as one line (the operator's name, an
    /// identity in allowed_signers; a ticket id) but holds a newline, a control or
    /// an invisible character: it could pose as another line of the record.
    #[error("error: {what} `{shown}` holds a newline, a control or an invisible character: {why}")]
    NotOneLine {
        what: &'static str,
        shown: String,
        why: &'static str,
    },
    /// A run directory's copy of its runbook or inventory is not the file the
    /// run recorded: it was changed after the run, and is not run.
    #[error("error: `{}` is not the file run {run} ran: its sha256 is {found}, the run recorded {expected} (it was changed after the run); refusing to run it", path.display())]
    CopyChanged {
        path: PathBuf,
        run: String,
        expected: String,
        found: String,
    },
    /// A run's journal no longer matches the signed log beside it: no command is
    /// built from it (an unkeyed chain can be recomputed by whoever edits it).
    #[error("error: the journal of run {run} no longer matches its signed log (at {at}), so opsrun builds no command from it; compare the run directory with the signed log on the ticket (`opsrun verify {run}`)")]
    EditedJournal { run: String, at: String },
    /// Bad command-line input (arguments, `-e` values) that has no file position.
    #[error("error: {0}")]
    Usage(String),
    #[error("not confirmed: {0}")]
    NotConfirmed(String),
    #[error("error: {0}")]
    Io(String),
    /// A later stage's failure (signing), already worded, with its exit code:
    /// this leaf names no stage, so each stage converts its own error.
    #[error("error: {message}")]
    Stage { message: String, exit_code: i32 },
}

impl Error {
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Invalid(_)
            | Error::InvalidAll(_)
            | Error::Read { .. }
            | Error::RunbookNotFound { .. }
            | Error::InventoryNotFound { .. }
            | Error::EnvMismatch { .. }
            | Error::MisnamedInventory { .. }
            | Error::SshConfig(_)
            | Error::NotOneLine { .. }
            | Error::CopyChanged { .. }
            | Error::EditedJournal { .. }
            | Error::Usage(_) => exit::INVALID_INPUT,
            Error::NotConfirmed(_) => exit::NOT_CONFIRMED,
            Error::Io(_) => exit::STEP_FAILED,
            Error::Stage { exit_code, .. } => *exit_code,
        }
    }
}

impl Error {
    /// How many problems this error reports: each diagnostic of a one-pass
    /// report counts, so `check`'s summary agrees with what it printed.
    pub fn problems(&self) -> usize {
        match self {
            Error::InvalidAll(ds) => ds.len(),
            _ => 1,
        }
    }

    /// One error for several found in one pass: located ones together (each
    /// once), or else the first. `None` when there is none.
    pub fn merge(errors: Vec<Error>) -> Option<Error> {
        let mut all: Vec<Diagnostic> = Vec::new();
        let mut other = None;
        for e in errors {
            let found = match e {
                Error::Invalid(d) => vec![*d],
                Error::InvalidAll(ds) => ds,
                e => {
                    other.get_or_insert(e);
                    continue;
                }
            };
            for d in found {
                // The same template fails the same way wherever it is rendered.
                if !all
                    .iter()
                    .any(|x| x.location() == d.location() && x.message == d.message)
                {
                    all.push(d);
                }
            }
        }
        if let Some(e) = other {
            return Some(e);
        }
        match all.len() {
            0 => None,
            1 => all.pop().map(Error::from),
            _ => Some(Error::InvalidAll(all)),
        }
    }
}

impl From<Diagnostic> for Error {
    fn from(d: Diagnostic) -> Self {
        Error::Invalid(Box::new(d))
    }
}
