//! The plan's model: what the operator asked for ([`Options`]) and what the
//! planner produces ([`Plan`], one [`PlanStep`] per step, one [`Target`] per host).

use super::*;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// What the operator asked for, with the clock already read.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `-e KEY=VALUE`, in the order given.
    pub params: Vec<(String, String)>,
    /// Secret values found by the caller (`OPSRUN_SECRET_<NAME>` or a prompt), by param name.
    pub secrets: HashMap<String, String>,
    pub limit: Option<String>,
    pub start_at: Option<String>,
    pub ticket: Option<String>,
    pub operator: String,
    /// The operator's login on the control machine: the ssh user when none is configured.
    pub local_user: String,
    /// The run's start, with the control machine's UTC offset: the id is in UTC
    /// (ids sort by time whatever the time zone), `run.stamp` and `run.date` in
    /// local time (they name files on the hosts, read by people there).
    pub now: crate::clock::Time,
    /// For `opsrun rollback` and `--resume`: templates see the original run's
    /// id, stamp and date, so names built from `run.stamp` match what it created.
    pub original_run: Option<RunInfo>,
}

/// Whether secrets are rendered as themselves (to send) or masked (to show).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reveal {
    Masked,
    Real,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct RunInfo {
    pub id: String,
    pub stamp: String,
    pub date: String,
    pub operator: String,
    pub ticket: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ParamValue {
    pub name: String,
    /// Masked for secrets; `None` when not given (a secret to be asked for at run time).
    pub value: Option<String>,
    pub secret: bool,
    pub source: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlanHost {
    pub name: String,
    pub login: String,
    pub endpoint: Endpoint,
    /// How ssh reaches it (user, HostName, port, jump hosts), from `ssh -G`;
    /// `None` for a local host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolved: Option<crate::transport::ssh::resolve::Resolved>,
    pub groups: Vec<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct UploadTarget {
    pub src: String,
    pub dest: String,
    /// The local file's sha256, checked on the host before the file is moved into
    /// place; `None` when the file cannot be read here (a dry-run elsewhere).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// `template: true`: the file is rendered for this host.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub templated: bool,
    /// The rendered file reads a secret: its sha256 is checked on the host but
    /// never recorded or shown, since with the template anyone could test guesses
    /// of the secret against it offline (a keyed hash would need a key kept from
    /// the verifier, and then it verifies nothing).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub sum_withheld: bool,
    /// A templated upload's rendered text: what is sent (secrets revealed) or
    /// shown (masked). Never serialized, so the revealed one cannot reach a record.
    #[serde(skip)]
    pub content: Option<String>,
}

/// One step on one host, rendered.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct Target {
    pub host: HostRef,
    /// `user@host`, as shown in `[user@host]# command`.
    pub login: String,
    /// The batch (1-based) this rendering is for, when the step reads `batch`:
    /// such a step is rendered once per batch, since its commands differ.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// A `when:` that can only be decided at run time (it reads a capture).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub when_at_run_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    /// Secret `env` values, one per line, sent on stdin before `stdin` to every
    /// command of the step (action, check, rollback).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env_stdin: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upload: Option<UploadTarget>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rollback: Vec<String>,
    /// `expect.stdout` and `expect.stdout_not`, rendered for this host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expect_stdout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expect_stdout_not: Option<String>,
}

/// What to do when a step fails, and a service a step stops or starts: the
/// runbook's own words, which the plan carries unchanged.
pub use crate::load::runbook::{OnFailure, Service, ServiceState};

/// The machine a rendered command runs on: a host of the inventory, or the
/// control machine (a `local: true` step).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostRef {
    Named(String),
    Control,
}

impl HostRef {
    /// The name the control machine has in the plan and the records (journal,
    /// log, output files): journals written by earlier builds use it too.
    pub const CONTROL_NAME: &'static str = "localhost";

    pub fn name(&self) -> &str {
        match self {
            HostRef::Named(n) => n,
            HostRef::Control => HostRef::CONTROL_NAME,
        }
    }

    /// The host a record names: the control machine's name means the control machine.
    pub fn of_recorded(name: &str) -> HostRef {
        match name {
            HostRef::CONTROL_NAME => HostRef::Control,
            n => HostRef::Named(n.to_string()),
        }
    }
}

impl Default for HostRef {
    fn default() -> Self {
        HostRef::Named(String::new())
    }
}

impl std::fmt::Display for HostRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for HostRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// Where a step runs, as the runbook says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum On {
    /// A host pattern (`on:`, else the runbook's `hosts:`).
    Pattern(String),
    /// Neither the step nor the runbook names hosts.
    Unset,
    /// `local: true`: the control machine.
    Control,
}

impl On {
    /// The pattern the step's hosts were matched with; empty when there is none.
    pub fn pattern(&self) -> &str {
        match self {
            On::Pattern(p) => p,
            On::Unset | On::Control => "",
        }
    }
}

impl std::fmt::Display for On {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            On::Pattern(p) => f.write_str(p),
            On::Unset => f.write_str(HostRef::CONTROL_NAME),
            On::Control => write!(f, "{} (local)", HostRef::CONTROL_NAME),
        }
    }
}

impl Serialize for On {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// What a step does, by kind; the commands themselves are in its targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ActionKind {
    Run,
    Script,
    Upload,
    Manual,
    /// A step that only verifies: its `check` is the action.
    Check,
}

/// `capture:`: the name a step's output is kept under, and the expression that
/// picks the value out of it (the whole trimmed output when there is none).
#[derive(Debug, Clone)]
pub struct Capture {
    pub name: String,
    pub regex: Option<regex::Regex>,
}

/// The exit codes that count as success. The `stdout`/`stdout_not` patterns
/// differ per host: each target carries its own, rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expect {
    pub exit: Vec<i32>,
}

/// How a completed step is undone: its `rollback:` commands (rendered per
/// host in its targets), and whether they get the step's own stdin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Undo {
    /// How many `rollback:` commands the step has; none: nothing to undo.
    pub commands: usize,
    /// A `run` step's rollback gets the step's stdin too: undoing a step that
    /// needed a secret (reloading the previous license) needs it again, and
    /// argv is no place for it.
    pub with_stdin: bool,
}

impl Undo {
    pub fn is_empty(&self) -> bool {
        self.commands == 0
    }
}

fn duration_text<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::duration::format(*d))
}

fn timeout_text<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => duration_text(d, s),
        None => s.serialize_none(),
    }
}

fn capture_name<S: serde::Serializer>(c: &Option<Capture>, s: S) -> Result<S::Ok, S::Error> {
    match c {
        Some(c) => s.serialize_str(&c.name),
        None => s.serialize_none(),
    }
}

fn expect_exit<S: serde::Serializer>(e: &Expect, s: S) -> Result<S::Ok, S::Error> {
    e.exit.serialize(s)
}

/// One step as it will run: everything the engine reads, typed. Its display
/// strings (`timeout: 5m`) are made from these values by the preview, and the
/// dry-run JSON keeps the names and forms of earlier builds.
#[derive(Debug, Clone, Serialize)]
pub struct PlanStep {
    /// Which list the step is in, and where: how the engine asks the planner to render it.
    #[serde(skip)]
    pub id: StepRef,
    pub number: usize,
    pub name: String,
    pub action: ActionKind,
    pub on: On,
    pub local: bool,
    /// What the step asks before it acts (`confirm`, `manual` in the JSON).
    #[serde(flatten)]
    pub gates: Gates,
    /// `timeout:` of the runbook step: the remote `timeout` wrapper's limit, and
    /// (plus a grace) how long the control side waits for an answer.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "timeout_text"
    )]
    pub timeout: Option<Duration>,
    pub retries: u32,
    #[serde(serialize_with = "duration_text")]
    pub delay: Duration,
    pub on_failure: OnFailure,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "capture_name"
    )]
    pub capture: Option<Capture>,
    #[serde(rename = "expect_exit", serialize_with = "expect_exit")]
    pub expect: Expect,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<Service>,
    #[serde(skip)]
    pub undo: Undo,
    /// Set when `--start-at` skips this step.
    pub skipped_by_start_at: bool,
    pub targets: Vec<Target>,
}

impl PlanStep {
    pub fn is_manual(&self) -> bool {
        self.action == ActionKind::Manual
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub runbook: RunbookInfo,
    pub inventory: InventoryInfo,
    pub run: RunInfo,
    pub params: Vec<ParamValue>,
    pub hosts: Vec<PlanHost>,
    /// The serial hosts of each batch; the other hosts take part in every batch.
    pub batches: Vec<Vec<String>>,
    /// The gate before anything runs (inventory `confirm:`).
    pub start_gate: ConfirmMode,
    pub steps: Vec<PlanStep>,
    pub rollback_guide: Vec<PlanStep>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunbookInfo {
    pub name: String,
    pub description: Option<String>,
    pub version: Option<String>,
    pub path: String,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct InventoryInfo {
    pub name: String,
    pub path: String,
    pub sha256: String,
}

/// Which list a step belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepRef {
    Forward(usize),
    Guide(usize),
}

/// One host's completion of a forward step: what a rollback undoes, and in which
/// batch, since a step that reads `batch` is undone with the batch it ran for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    pub host: String,
    pub batch: Option<usize>,
}

impl std::fmt::Display for Completion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.batch {
            Some(b) => write!(f, "{} (batch {b})", self.host),
            None => f.write_str(&self.host),
        }
    }
}

/// Captured values so far: per host, and from `local: true` steps (seen by every host).
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct Captures {
    pub global: BTreeMap<String, String>,
    pub hosts: BTreeMap<String, BTreeMap<String, String>>,
}
