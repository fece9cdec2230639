//! The runbook: what a YAML runbook file means, decoded with positions.

use crate::diagnostic::{did_you_mean, SourceFile, Span};
use std::sync::Arc;
use std::time::Duration;

pub use crate::template::Text;

#[derive(Debug, Clone)]
pub struct Runbook {
    pub name: String,
    pub description: Option<String>,
    pub version: Option<String>,
    pub hosts: Option<Text>,
    pub serial: Option<Serial>,
    pub params: Vec<Param>,
    pub vars: Vec<(String, Text)>,
    pub steps: Vec<Step>,
    pub rollback: Vec<Step>,
    pub source: Arc<SourceFile>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Serial {
    Count(usize),
    Percent(u8),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    String,
    Int,
    Bool,
}

#[derive(Debug, Clone)]
pub struct Param {
    pub name: String,
    pub span: Span,
    pub required: bool,
    pub secret: bool,
    pub default: Option<String>,
    pub description: Option<String>,
    pub kind: ParamType,
    pub choices: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Run(Text),
    Script(Text),
    Upload(Upload),
    Manual(Text),
    /// A step that only verifies: its `check` is the action.
    CheckOnly,
}

impl Action {
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Run(_) => "run",
            Action::Script(_) => "script",
            Action::Upload(_) => "upload",
            Action::Manual(_) => "manual",
            Action::CheckOnly => "check",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Upload {
    pub src: Text,
    pub dest: Text,
    pub mode: Option<String>,
    pub owner: Option<Text>,
    /// `template: true`: the file is rendered per host before it is uploaded.
    pub template: bool,
}

#[derive(Debug, Clone)]
pub struct Capture {
    pub name: String,
    pub regex: Option<regex::Regex>,
}

/// `stdout` and `stdout_not` are templates (`pid {{ old_pid }}$`), made regular
/// expressions once rendered for a host.
#[derive(Debug, Clone)]
pub struct Expect {
    pub exit: Vec<i32>,
    pub stdout: Option<Text>,
    pub stdout_not: Option<Text>,
}

impl Default for Expect {
    fn default() -> Self {
        Expect {
            exit: vec![0],
            stdout: None,
            stdout_not: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    #[default]
    Rollback,
    Abort,
    Continue,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceState {
    Stopped,
    Started,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Service {
    pub name: String,
    pub state: ServiceState,
}

#[derive(Debug, Clone)]
pub struct Step {
    pub name: String,
    /// The whole step mapping: where "step X ..." errors point.
    pub span: Span,
    pub on: Option<Text>,
    pub action: Action,
    pub as_user: Option<Text>,
    pub cwd: Option<Text>,
    pub env: Vec<(String, Text)>,
    pub stdin: Option<Text>,
    pub when: Option<Text>,
    pub capture: Option<Capture>,
    pub expect: Expect,
    pub check: Option<Text>,
    pub retries: u32,
    pub delay: Duration,
    pub timeout: Option<Duration>,
    /// `Some(None)`: a plain yes/no gate; `Some(Some(prompt))`: a gate with its own question.
    pub confirm: Option<Option<Text>>,
    pub rollback: Vec<Text>,
    pub on_failure: OnFailure,
    pub local: bool,
    pub service: Option<Service>,
    /// Lints this step accepts (`lint: { allow: [non-ascii] }`), by their names in `lint::NAMES`.
    pub lint_allow: Vec<String>,
}

pub const RUNBOOK_FIELDS: &[&str] = &[
    "name",
    "description",
    "version",
    "hosts",
    "serial",
    "params",
    "vars",
    "steps",
    "rollback",
];

pub const STEP_FIELDS: &[&str] = &[
    "name",
    "on",
    "run",
    "script",
    "upload",
    "manual",
    "as",
    "cwd",
    "env",
    "stdin",
    "when",
    "capture",
    "expect",
    "check",
    "retries",
    "delay",
    "timeout",
    "confirm",
    "rollback",
    "on_failure",
    "local",
    "service",
    "lint",
];

impl Param {
    /// Checks a value given for this param against its type and choices.
    pub fn check_value(&self, v: &str) -> Result<(), String> {
        // A secret's value is never part of what is said about it: not in a type
        // error, not in a choice error, not in a "did you mean".
        let shown = if self.secret {
            crate::sanitize::MASK
        } else {
            v
        };
        match self.kind {
            ParamType::Int if v.trim().parse::<i64>().is_err() => {
                return Err(format!("`{shown}` is not an integer"))
            }
            ParamType::Bool if !matches!(v, "true" | "false") => {
                return Err(format!("`{shown}` is not `true` or `false`"))
            }
            _ => {}
        }
        if !self.choices.is_empty() && !self.choices.iter().any(|c| c == v) {
            return Err(format!(
                "`{shown}` is not one of the choices: {}{}",
                self.choices.join(", "),
                if self.secret {
                    String::new()
                } else {
                    did_you_mean(v, self.choices.iter().map(String::as_str))
                }
            ));
        }
        Ok(())
    }
}
