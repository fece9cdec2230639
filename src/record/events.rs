//! What happens during a run, as a stream of events.
//!
//! The engine emits events; the journal stores them (the run's single source
//! of truth), the terminal view shows them, and the Markdown log is rendered
//! from them. Everything in an event is already masked: no secret reaches it.

use serde::{Deserialize, Serialize};

pub use crate::clock::{now, Time};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    Failed,
    Skipped,
    TimedOut,
    /// Stopped or lost before it finished (stop now, the connection dropped): the
    /// command may have been partly applied, so a rollback undoes it too.
    Interrupted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Succeeded,
    Failed,
    /// The operator said no at a gate, or stdin could not answer one.
    NotConfirmed,
    Interrupted,
}

impl Status {
    /// Whether the host's part did not succeed (failed, timed out or interrupted).
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            Status::Failed | Status::TimedOut | Status::Interrupted
        )
    }
}

/// The journal format [`Event::RunStarted`] records. Version 0 (no `version`
/// field) is what opsrun wrote before the format had one; `record::legacy`
/// reads it. Version 1 had no hash chain; version 2 is chained.
pub const JOURNAL_VERSION: u32 = 2;

/// The first journal version whose every line carries its chain fields: a
/// journal that says this version (or later) without them had them stripped,
/// and is broken, not one from an older opsrun.
pub const CHAINED_SINCE: u32 = 2;

/// What a step's events are part of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Forward,
    /// A forward step's own `rollback`, recorded under that step's number and name.
    /// Version 0 wrote `rollback` for this and for [`Phase::Guide`]; it is read as
    /// this, and `record::legacy` tells the guide's steps apart.
    #[serde(alias = "rollback")]
    Undo,
    /// A step of the runbook's rollback guide (`opsrun rollback`), numbered in the guide.
    Guide,
}

impl Phase {
    /// Undo and guide steps: what the log's Rollback section and a run's
    /// "rolled back" state are made of.
    pub fn is_rollback(self) -> bool {
        matches!(self, Phase::Undo | Phase::Guide)
    }
}

/// Why a run was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunKind {
    Run,
    /// `opsrun run --resume` of an earlier run.
    Resume,
    /// `opsrun rollback` of an earlier run.
    Rollback,
}

impl RunKind {
    pub fn word(self) -> &'static str {
        match self {
            RunKind::Run => "run",
            RunKind::Resume => "resume",
            RunKind::Rollback => "rollback",
        }
    }
}

/// One param of the run. A secret's value never reaches the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamRecord {
    pub name: String,
    pub secret: bool,
    /// Whether the param had a value (given, or its default).
    pub set: bool,
    /// The value; `None` for a secret and for a param without one.
    pub value: Option<String>,
}

impl ParamRecord {
    /// The value as the log shows it.
    pub fn shown(&self) -> &str {
        match (&self.value, self.secret, self.set) {
            (Some(v), false, _) => v,
            (_, true, true) => crate::sanitize::MASK,
            _ => "(not set)",
        }
    }
}

/// What happened to a host lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LockAction {
    Taken,
    /// Held by someone else: the run refused to start.
    Held,
    /// Broken with `--break-lock`.
    Broken,
    Released,
    #[serde(alias = "release failed")]
    ReleaseFailed,
    /// Left by an earlier run of the same change that was killed (its process
    /// is gone), and taken over by its `opsrun rollback` or `--resume`.
    TakenOver,
    /// Not released: a command of the run is still running on the host. The
    /// run's rollback or resume takes it over.
    KeptBusy,
}

/// What the operator chose at Ctrl-C. Version 0 wrote the variant names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stop {
    /// Let the running step finish, then stop.
    #[serde(alias = "AfterStep")]
    AfterStep,
    /// Stop now, leaving the running step unfinished.
    #[serde(alias = "Now")]
    Now,
    /// Stop now and undo the completed steps.
    #[serde(alias = "NowAndRollback")]
    NowAndRollback,
}

/// What stopped a run from outside: the operator's Ctrl-C, or a signal from
/// the system (`kill`, a shutdown) or the terminal (the SSH session to the
/// jump box dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    /// SIGINT: Ctrl-C at the terminal.
    CtrlC,
    #[serde(rename = "sigterm")]
    Term,
    /// SIGHUP: the terminal is gone.
    #[serde(rename = "sighup")]
    Hangup,
}

impl Signal {
    pub fn name(self) -> &'static str {
        match self {
            Signal::CtrlC => "Ctrl-C",
            Signal::Term => "SIGTERM",
            Signal::Hangup => "SIGHUP (the terminal hung up)",
        }
    }
}

/// One saved output stream: where the full text is and its digest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Saved {
    /// Relative to the run directory.
    pub file: String,
    pub sha256: String,
    pub bytes: u64,
    /// Set when the file does not hold the whole output (the log disk filled up):
    /// why, and how much of the output is in the file. `sha256` and `bytes` are
    /// those of the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cut: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckAttempt {
    pub attempt: u32,
    pub exit_code: Option<i32>,
    pub ok: bool,
    pub output: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostInfo {
    pub name: String,
    pub address: String,
    pub login: String,
    pub connection: String,
    /// How ssh reached the host, as `ssh -G` resolved it while planning; absent
    /// for local hosts and in journals from before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh: Option<SshRoute>,
}

/// The login user, HostName, port and jump hosts ssh uses for a host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SshRoute {
    pub user: String,
    pub hostname: String,
    pub port: u16,
    /// First hop first; empty when direct.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jump: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    RunStarted {
        time: Time,
        /// [`JOURNAL_VERSION`] when written; 0 for journals from before it existed.
        #[serde(default)]
        version: u32,
        run_id: String,
        kind: RunKind,
        rollback_of: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume_of: Option<String>,
        runbook: String,
        runbook_version: Option<String>,
        runbook_path: String,
        runbook_sha256: String,
        inventory: String,
        inventory_path: String,
        inventory_sha256: String,
        operator: String,
        control_host: String,
        ticket: Option<String>,
        opsrun_version: String,
        stamp: String,
        /// Version 0 wrote `[name, value]` pairs: `record::legacy` reads them.
        #[serde(deserialize_with = "crate::record::legacy::params")]
        params: Vec<ParamRecord>,
        hosts: Vec<HostInfo>,
        start_at: Option<String>,
        /// `--limit`, so a later rollback or resume touches the same hosts.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<String>,
        /// Where the run's commands register on its hosts (`execute::supervise`):
        /// how a later rollback or resume finds what the run left running.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        registry_key: Option<String>,
    },
    Gate {
        time: Time,
        step: Option<String>,
        /// The batch whose step asked (with `serial`): each batch has its own gate.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        batch: Option<usize>,
        prompt: String,
        answer: String,
        confirmed: bool,
        by: String,
    },
    Connected {
        time: Time,
        host: String,
        millis: u64,
    },
    ConnectFailed {
        time: Time,
        host: String,
        error: String,
    },
    StepStarted {
        time: Time,
        phase: Phase,
        number: usize,
        step: String,
        hosts: Vec<String>,
        /// The service this step stops or starts, for the downtime report.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        service: Option<crate::load::runbook::Service>,
    },
    TargetStarted {
        time: Time,
        phase: Phase,
        number: usize,
        step: String,
        host: String,
        command: Option<String>,
        /// As in `TargetFinished`: a step cut off before it finished is undone
        /// for the batch it ran for.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        batch: Option<usize>,
    },
    TargetFinished {
        time: Time,
        phase: Phase,
        number: usize,
        step: String,
        host: String,
        login: String,
        status: Status,
        started: Time,
        millis: u64,
        exit_code: Option<i32>,
        command: Option<String>,
        stdin: Option<String>,
        stdout: Option<Saved>,
        stderr: Option<Saved>,
        checks: Vec<CheckAttempt>,
        capture: Option<(String, String)>,
        upload_sha256: Option<String>,
        /// Why `upload_sha256` is absent although the host checked one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        upload_sha256_withheld: Option<String>,
        reason: Option<String>,
        /// The batch this was for, when the step reads `batch` (a load balancer
        /// drains a different node in each): undoing it needs the same batch.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        batch: Option<usize>,
    },
    Manual {
        time: Time,
        step: String,
        instructions: String,
        confirmed: bool,
        note: Option<String>,
        by: String,
    },
    StepFinished {
        time: Time,
        phase: Phase,
        number: usize,
        step: String,
        status: Status,
        failed_hosts: Vec<String>,
    },
    /// A host lock taken, found held, broken (`--break-lock`) or released.
    Lock {
        time: Time,
        host: String,
        path: String,
        action: LockAction,
        detail: String,
    },
    /// A command of an earlier run of the change (killed, or cut off) that was
    /// still running on a host when this run came to it, and what became of it.
    Leftover {
        time: Time,
        host: String,
        /// The run that started it.
        of_run: String,
        /// Its session on the host.
        session: u32,
        /// Killed now; `false`: it could not be killed from this login and still runs.
        killed: bool,
    },
    /// A signal stopped a rollback between two undos: these (step, host) were not undone.
    RollbackStopped {
        time: Time,
        signal: Signal,
        left: Vec<(String, String)>,
    },
    /// The operator pressed Ctrl-C, or a signal came, and what it decided.
    Interrupt {
        time: Time,
        choice: Stop,
        /// What asked: absent in journals from before SIGTERM and SIGHUP were handled (Ctrl-C).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signal: Option<Signal>,
    },
    RunFinished {
        time: Time,
        outcome: Outcome,
        message: String,
    },
}

impl Event {
    pub fn time(&self) -> Time {
        match self {
            Event::RunStarted { time, .. }
            | Event::Gate { time, .. }
            | Event::Connected { time, .. }
            | Event::ConnectFailed { time, .. }
            | Event::StepStarted { time, .. }
            | Event::TargetStarted { time, .. }
            | Event::TargetFinished { time, .. }
            | Event::Manual { time, .. }
            | Event::StepFinished { time, .. }
            | Event::Lock { time, .. }
            | Event::Interrupt { time, .. }
            | Event::Leftover { time, .. }
            | Event::RollbackStopped { time, .. }
            | Event::RunFinished { time, .. } => *time,
        }
    }
}
