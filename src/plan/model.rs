//! The plan's model: what the operator asked for ([`Options`]) and what the
//! planner produces ([`Plan`], one [`PlanStep`] per step, one [`Target`] per host).

use super::*;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

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
    /// A templated upload's rendered text: what is sent (secrets revealed) or
    /// shown (masked). Never serialized, so the revealed one cannot reach a record.
    #[serde(skip)]
    pub content: Option<String>,
}

/// One step on one host, rendered.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct Target {
    pub host: String,
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

#[derive(Debug, Clone, Serialize)]
pub struct PlanStep {
    pub number: usize,
    pub name: String,
    pub action: &'static str,
    pub on: String,
    pub local: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confirm: Option<String>,
    /// The gate as it is asked, with its hosts: once per batch that runs the step.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gates: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manual: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    pub retries: u32,
    pub delay: String,
    pub on_failure: OnFailure,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capture: Option<String>,
    pub expect_exit: Vec<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<Service>,
    /// Set when `--start-at` skips this step.
    pub skipped_by_start_at: bool,
    pub targets: Vec<Target>,
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
