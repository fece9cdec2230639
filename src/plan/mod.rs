//! The plan: which hosts each step runs on and the exact commands it sends.
//!
//! Planning is pure (no connection, no prompt, no clock: the caller freezes the
//! time). `--dry-run` prints the plan, and execution renders every command
//! through the same `Planner::render`, so a dry-run cannot drift from a run.
//! Values only known once a step has captured them show as `<captured: NAME>`.

pub mod pattern;

use crate::diagnostic::{did_you_mean, Diagnostic, Span};
use crate::error::Error;
use crate::load::inventory::{ConfirmMode, Host, Inventory};
use crate::load::runbook::{Action, OnFailure, Runbook, Serial, Service, Step};
use crate::sanitize::MASK;
use crate::shell::{self, Wrap};
use crate::template::{self, Context, Kind, RenderError, TemplateId, Templates};
use crate::transport::{ConnectionKind, Endpoint};
use crate::yaml;
use minijinja::value::Value;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

/// The source of a param left unset whose value is an inventory var of the same name.
const FROM_INVENTORY: &str = "inventory var";

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

struct StepTemplates {
    action: Option<TemplateId>,
    upload: Option<(TemplateId, TemplateId, Option<TemplateId>)>,
    as_user: Option<TemplateId>,
    cwd: Option<TemplateId>,
    env: Vec<(String, TemplateId)>,
    stdin: Option<TemplateId>,
    when: Option<TemplateId>,
    check: Option<TemplateId>,
    rollback: Vec<TemplateId>,
    confirm: Option<TemplateId>,
    expect_stdout: Option<TemplateId>,
    expect_stdout_not: Option<TemplateId>,
}

/// A file uploaded with `template: true`, compiled once however many hosts render it.
struct FileTemplate {
    templates: Templates,
    id: TemplateId,
    source: Arc<crate::diagnostic::SourceFile>,
}

/// A template that could not be rendered, and where it is in the runbook.
struct Failure {
    error: RenderError,
    span: Span,
}

/// Holds everything needed to render any step on any host.
pub struct Planner {
    pub runbook: Arc<Runbook>,
    pub inventory: Arc<Inventory>,
    opts: Options,
    run: RunInfo,
    /// What templates see as `run`: this run, or the original one (rollback, resume).
    template_run: RunInfo,
    params: Vec<ParamValue>,
    templates: Templates,
    vars: Vec<(String, TemplateId)>,
    forward: Vec<StepTemplates>,
    guide: Vec<StepTemplates>,
    /// Hosts each step runs on (after `--limit`).
    targets: HashMap<(bool, usize), Vec<String>>,
    limit: Option<HashSet<String>>,
    start_at: usize,
    /// Host contexts for planning, by (host, captures in scope, reveal).
    #[allow(clippy::type_complexity)]
    contexts:
        std::sync::RwLock<HashMap<(Option<usize>, usize, Reveal), (Context, Arc<HashSet<String>>)>>,
    /// Host name → position in the inventory: renders look hosts up 100 000 times.
    host_index: HashMap<String, usize>,
    /// `hosts` as a template value, for the steps whose templates read it.
    host_lists: HashMap<(bool, usize), Value>,
    /// The steps whose templates read `batch`, directly or through runbook vars.
    reads_batch: HashSet<(bool, usize)>,
    /// The steps that read `hosts` or `batch` through a runbook var: their vars
    /// are rendered with those values, so their context cannot be shared.
    per_step_vars: HashSet<(bool, usize)>,
    /// Rolling batches of the serial hosts (those of the runbook's `hosts:`).
    batches: Vec<Vec<String>>,
    serial_hosts: HashSet<String>,
    /// `batch` as a template value: per batch, and all serial hosts (for a
    /// rendering outside any batch: the rollback guide).
    batch_values: Vec<Value>,
    all_batches_value: Value,
    /// Secret params, and runbook vars built from them.
    secret_names: HashSet<String>,
    /// sha256 of local upload sources, by path.
    upload_sums: Mutex<HashMap<String, Option<String>>>,
    /// Upload sources with `template: true`, compiled, by path.
    #[allow(clippy::type_complexity)]
    upload_templates: Mutex<HashMap<String, Result<Arc<FileTemplate>, Diagnostic>>>,
    /// Captures in scope before each step: `capture_scopes[i]` for step i.
    capture_scopes: Vec<Vec<String>>,
}

fn step_key(r: StepRef) -> (bool, usize) {
    match r {
        StepRef::Forward(i) => (false, i),
        StepRef::Guide(i) => (true, i),
    }
}

fn diag(rb: &Runbook, span: Span, message: String) -> Error {
    Error::from(Diagnostic {
        level: crate::diagnostic::Level::Error,
        source: rb.source.clone(),
        span,
        message,
        help: None,
    })
}

fn yaml_err(rb: &Runbook, e: yaml::Error) -> Error {
    Error::from(Diagnostic {
        level: crate::diagnostic::Level::Error,
        source: rb.source.clone(),
        span: e.span,
        message: e.message,
        help: e.help,
    })
}

/// A run that would touch no host at all is refused: it would "succeed" and sign
/// a log of nothing. One step whose glob matches nothing (an optional `lb*`
/// group) is fine, and so is a runbook of `local: true` steps only.
fn no_host_at_all(
    rb: &Runbook,
    inventory: &Inventory,
    opts: &Options,
    targets: &HashMap<(bool, usize), Vec<String>>,
) -> Result<(), Error> {
    let remote: Vec<(usize, &crate::load::runbook::Text)> = rb
        .steps
        .iter()
        .enumerate()
        .filter(|(_, s)| !s.local)
        .filter_map(|(i, s)| Some((i, s.on.as_ref().or(rb.hosts.as_ref())?)))
        .collect();
    if remote
        .iter()
        .any(|(i, _)| targets.get(&(false, *i)).is_some_and(|h| !h.is_empty()))
    {
        return Ok(());
    }
    let Some(&(_, first)) = remote.first() else {
        return Ok(());
    };
    let mut patterns: Vec<&str> = Vec::new();
    for (_, p) in &remote {
        if !patterns.contains(&p.src.as_str()) {
            patterns.push(&p.src);
        }
    }
    let quoted = patterns
        .iter()
        .map(|p| format!("`{p}`"))
        .collect::<Vec<_>>()
        .join(", ");
    // Patterns were resolved above, so they are valid: only the limit can be at fault
    // when they match hosts on their own.
    let unlimited = remote
        .iter()
        .any(|(_, p)| pattern::resolve(&p.src, inventory).is_ok_and(|h| !h.is_empty()));
    if let (Some(limit), true) = (&opts.limit, unlimited) {
        return Err(Error::Usage(format!(
            "--limit `{limit}` matches none of the hosts runbook `{}` runs on ({quoted} in inventory `{}`): there is nothing to run",
            rb.name, inventory.name
        )));
    }
    Err(Error::from(Diagnostic {
        level: crate::diagnostic::Level::Error,
        source: rb.source.clone(),
        span: first.span,
        message: format!(
            "{quoted} {} no host in inventory `{}`: there is nothing to run",
            if patterns.len() == 1 { "matches" } else { "match" },
            inventory.name
        ),
        help: Some(
            "a step's `on:` glob may match nothing (an optional group), but a run needs at least one host"
                .into(),
        ),
    }))
}

impl Planner {
    pub fn new(runbook: Runbook, inventory: Inventory, opts: Options) -> Result<Planner, Error> {
        let rb = Arc::new(runbook);
        let stamp = opts.now.format("%Y%m%d-%H%M%S").to_string();
        let utc = opts.now.naive_utc().format("%Y%m%d-%H%M%SZ");
        let run = RunInfo {
            id: format!("{utc}-{}-{}", rb.name, inventory.name)
                .chars()
                .map(|c| {
                    if c.is_alphanumeric() || matches!(c, '-' | '_' | '.') {
                        c
                    } else {
                        '_'
                    }
                })
                .collect(),
            date: opts.now.format("%Y%m%d").to_string(),
            stamp,
            operator: opts.operator.clone(),
            ticket: opts.ticket.clone(),
        };
        let mut params = bind_params(&rb, &opts)?;
        // A param left unset falls back to an inventory var of the same name
        // (precedence: inventory vars < params): say so instead of "not set".
        for p in params.iter_mut().filter(|p| p.value.is_none() && !p.secret) {
            if let Some((_, v)) = inventory.vars.iter().find(|(k, _)| k == &p.name) {
                p.value = Some(v.raw.clone().unwrap_or_else(|| v.to_json().to_string()));
                p.source = FROM_INVENTORY;
            } else if inventory
                .hosts
                .iter()
                .any(|h| h.vars.iter().any(|(k, _)| k == &p.name))
                || inventory
                    .groups
                    .iter()
                    .any(|g| g.vars.iter().any(|(k, _)| k == &p.name))
            {
                p.source = "per host, from inventory vars";
            }
        }

        let (templates, vars, forward, guide) = compile_templates(&rb)?;

        let limit = match &opts.limit {
            Some(l) => Some(
                pattern::resolve(l, &inventory)
                    .map_err(|e| Error::Usage(format!("--limit: {}", e.message)))?
                    .into_iter()
                    .collect::<HashSet<_>>(),
            ),
            None => None,
        };
        let resolve = |p: &crate::load::runbook::Text| {
            let hosts = pattern::resolve(&p.src, &inventory).map_err(|e| {
                // Point at the term at fault, not the whole pattern.
                let span = e
                    .term
                    .as_deref()
                    .and_then(|t| Some((p.src.find(t)?, t.chars().count())))
                    .map_or(p.span, |(at, width)| p.locate(&rb.source, at, width));
                diag(&rb, span, e.message)
            })?;
            Ok::<Vec<String>, Error>(match &limit {
                Some(l) => hosts.into_iter().filter(|h| l.contains(h)).collect(),
                None => hosts,
            })
        };
        let mut targets = HashMap::new();
        for (guide_list, steps) in [(false, &rb.steps), (true, &rb.rollback)] {
            for (i, s) in steps.iter().enumerate() {
                let pat = s.on.as_ref().or(rb.hosts.as_ref());
                let hosts = match pat {
                    Some(p) => resolve(p)?,
                    None if s.local => Vec::new(),
                    None => {
                        return Err(diag(
                            &rb,
                            s.span,
                            format!(
                                "step `{}` has no hosts: set `hosts:` at the top of the runbook or `on:` in the step",
                                s.name
                            ),
                        ))
                    }
                };
                targets.insert((guide_list, i), hosts);
            }
        }
        no_host_at_all(&rb, &inventory, &opts, &targets)?;
        // Batches are cut from the runbook's own hosts: a step on other hosts (a load
        // balancer) takes part in every batch instead of getting a batch of its own.
        let serial_list: Vec<String> = match &rb.hosts {
            Some(p) => resolve(p)?,
            None => {
                let used: HashSet<&String> = targets.values().flatten().collect();
                inventory
                    .hosts
                    .iter()
                    .filter(|h| used.contains(&h.name))
                    .map(|h| h.name.clone())
                    .collect()
            }
        };
        let batches = cut_batches(rb.serial, &serial_list);
        let start_at = match &opts.start_at {
            None => 0,
            Some(name) => rb
                .steps
                .iter()
                .position(|s| &s.name == name)
                .ok_or_else(|| {
                    Error::Usage(format!(
                        "--start-at: runbook `{}` has no step `{name}`{}",
                        rb.name,
                        did_you_mean(name, rb.steps.iter().map(|s| s.name.as_str()))
                    ))
                })?,
        };
        let var_reads = var_reads(&templates, &vars);
        let mut host_lists = HashMap::new();
        let mut reads_batch = HashSet::new();
        let mut per_step_vars = HashSet::new();
        for (key, hosts) in &targets {
            let st = if key.0 {
                &guide[key.1]
            } else {
                &forward[key.1]
            };
            let direct: HashSet<&String> = st
                .ids()
                .iter()
                .flat_map(|id| templates.variables(*id))
                .collect();
            let through_vars: HashSet<&String> = direct
                .iter()
                .filter_map(|v| var_reads.get(*v))
                .flatten()
                .collect();
            let reads = |name: &str| {
                direct.iter().any(|v| *v == name) || through_vars.iter().any(|v| *v == name)
            };
            if reads("hosts") {
                host_lists.insert(*key, Value::from_serialize(hosts));
            }
            if reads("batch") {
                reads_batch.insert(*key);
            }
            if through_vars.iter().any(|v| *v == "hosts" || *v == "batch") {
                per_step_vars.insert(*key);
            }
        }
        let batch_value = |names: &[String]| {
            let list: Vec<serde_json::Value> = names
                .iter()
                .filter_map(|n| inventory.host(n))
                .map(|h| {
                    let mut vars = serde_json::Map::new();
                    let groups = inventory
                        .groups
                        .iter()
                        .filter(|g| h.groups.contains(&g.name));
                    for vs in std::iter::once(&inventory.vars)
                        .chain(groups.map(|g| &g.vars))
                        .chain(std::iter::once(&h.vars))
                    {
                        for (k, v) in vs {
                            vars.insert(k.clone(), v.to_json());
                        }
                    }
                    serde_json::json!({
                        "name": h.name, "address": h.address, "groups": h.groups, "vars": vars,
                    })
                })
                .collect();
            Value::from_serialize(list)
        };
        // Only runbooks that read `batch` pay for it (a large estate has many host vars).
        let (batch_values, all_batches_value) = if reads_batch.is_empty() {
            (Vec::new(), Value::UNDEFINED)
        } else {
            (
                batches.iter().map(|b| batch_value(b)).collect(),
                batch_value(&serial_list),
            )
        };
        let serial_hosts = serial_list.into_iter().collect();
        let mut secret_names: HashSet<String> = rb
            .params
            .iter()
            .filter(|p| p.secret)
            .map(|p| p.name.clone())
            .collect();
        for (name, id) in &vars {
            if templates
                .variables(*id)
                .iter()
                .any(|n| secret_names.contains(n))
            {
                secret_names.insert(name.clone());
            }
        }
        let mut capture_scopes = vec![Vec::new()];
        for s in &rb.steps {
            let mut next = capture_scopes.last().cloned().unwrap_or_default();
            if let Some(c) = &s.capture {
                next.push(c.name.clone());
            }
            capture_scopes.push(next);
        }
        let inventory_index: HashMap<String, usize> = inventory
            .hosts
            .iter()
            .enumerate()
            .map(|(i, h)| (h.name.clone(), i))
            .collect();
        let template_run = opts.original_run.clone().unwrap_or_else(|| run.clone());
        let planner = Planner {
            runbook: rb,
            inventory: Arc::new(inventory),
            opts,
            template_run,
            run,
            params,
            templates,
            vars,
            forward,
            guide,
            targets,
            limit,
            start_at,
            contexts: std::sync::RwLock::new(HashMap::new()),
            host_index: inventory_index,
            host_lists,
            reads_batch,
            per_step_vars,
            batches,
            serial_hosts,
            batch_values,
            all_batches_value,
            capture_scopes,
            upload_sums: Mutex::new(HashMap::new()),
            upload_templates: Mutex::new(HashMap::new()),
            secret_names,
        };
        Ok(planner)
    }

    /// The secret values in use, so output can be scrubbed of them.
    pub fn secret_values(&self) -> Vec<String> {
        self.runbook
            .params
            .iter()
            .filter(|p| p.secret)
            .filter_map(|p| {
                self.opts
                    .secrets
                    .get(&p.name)
                    .cloned()
                    .or_else(|| p.default.clone())
            })
            .collect()
    }

    /// The sha256 of a local file to upload, hashed once per file (not per host).
    fn local_sha256(&self, src: &str) -> Option<String> {
        let mut cache = self.upload_sums.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .entry(src.to_string())
            .or_insert_with(|| crate::digest::sha256_file(std::path::Path::new(src)).ok())
            .clone()
    }

    /// Gives the run the id it is recorded under (the run directory's name).
    pub fn set_run_id(&mut self, id: &str) {
        self.run.id = id.to_string();
        if self.opts.original_run.is_none() {
            self.template_run.id = id.to_string();
        }
        // Cached contexts hold the old `run.id`.
        self.contexts
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// The run as templates see it (the original run's, for rollback and resume).
    pub fn template_run(&self) -> &RunInfo {
        &self.template_run
    }

    pub fn run_info(&self) -> &RunInfo {
        &self.run
    }

    fn step(&self, r: StepRef) -> (&Step, &StepTemplates) {
        match r {
            StepRef::Forward(i) => (&self.runbook.steps[i], &self.forward[i]),
            StepRef::Guide(i) => (&self.runbook.rollback[i], &self.guide[i]),
        }
    }

    /// The hosts a step runs on, after `--limit`, in inventory order.
    pub fn step_hosts(&self, r: StepRef) -> &[String] {
        let key = match r {
            StepRef::Forward(i) => (false, i),
            StepRef::Guide(i) => (true, i),
        };
        self.targets.get(&key).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Every host the run touches, in inventory order.
    pub fn run_hosts(&self) -> Vec<&Host> {
        let used: HashSet<&String> = self.targets.values().flatten().collect();
        self.inventory
            .hosts
            .iter()
            .filter(|h| used.contains(&h.name))
            .collect()
    }

    pub fn endpoint(&self, h: &Host) -> Endpoint {
        Endpoint {
            host: h.name.clone(),
            kind: h.connection,
            address: h.address.clone(),
            user: h.ssh.user.clone(),
            port: h.ssh.port,
            jump: h.ssh.jump.clone(),
            identity_file: h.ssh.identity_file.clone(),
            known_hosts_file: h.ssh.known_hosts_file.clone(),
            config_file: h.ssh.config_file.clone(),
            connect_timeout: h.ssh.connect_timeout,
        }
    }

    fn login(&self, host: Option<&Host>) -> String {
        match host {
            Some(h) if h.connection == ConnectionKind::Ssh => format!(
                "{}@{}",
                h.ssh.user.as_deref().unwrap_or(&self.opts.local_user),
                h.name
            ),
            Some(h) => format!("{}@{}", self.opts.local_user, h.name),
            None => format!("{}@localhost", self.opts.local_user),
        }
    }

    /// Variables of one host (or of the control machine), before captures and runbook vars.
    fn base_map(&self, host: Option<&Host>, reveal: Reveal) -> BTreeMap<String, Value> {
        let mut m: BTreeMap<String, Value> = BTreeMap::new();
        let inv = &self.inventory;
        let put = |m: &mut BTreeMap<String, Value>, vars: &crate::load::inventory::Vars| {
            for (k, v) in vars {
                m.insert(k.clone(), Value::from_serialize(v.to_json()));
            }
        };
        put(&mut m, &inv.vars);
        if let Some(h) = host {
            for g in inv.groups.iter().filter(|g| h.groups.contains(&g.name)) {
                put(&mut m, &g.vars);
            }
            put(&mut m, &h.vars);
        }
        // A param shown as coming from the inventory is the inventory var itself,
        // already in the map with its own type.
        for p in self.params.iter().filter(|p| p.source != FROM_INVENTORY) {
            let v = match (reveal, p.secret) {
                (Reveal::Real, true) => self.opts.secrets.get(&p.name).cloned().or_else(|| {
                    let decl = self.runbook.params.iter().find(|d| d.name == p.name);
                    decl.and_then(|d| d.default.clone())
                }),
                (Reveal::Masked, true) => Some(MASK.to_string()),
                _ => p.value.clone(),
            };
            if let Some(v) = v {
                m.insert(p.name.clone(), Value::from(v));
            }
        }
        let (name, address, groups) = match host {
            Some(h) => (h.name.clone(), h.address.clone(), h.groups.clone()),
            None => ("localhost".into(), "localhost".into(), Vec::new()),
        };
        m.insert(
            "host".into(),
            Value::from_serialize(
                serde_json::json!({"name": name, "address": address, "groups": groups}),
            ),
        );
        m.insert("env".into(), Value::from(inv.name.clone()));
        m.insert(
            "run".into(),
            Value::from_serialize(serde_json::json!({
                "id": self.template_run.id, "stamp": self.template_run.stamp, "date": self.template_run.date,
                "operator": self.run.operator, "ticket": self.run.ticket.clone().unwrap_or_default(),
            })),
        );
        let groups: BTreeMap<&str, &Vec<String>> = inv
            .groups
            .iter()
            .map(|g| (g.name.as_str(), &g.hosts))
            .collect();
        m.insert("groups".into(), Value::from_serialize(groups));
        m
    }

    /// Where in the file a template failed: at the name at fault when it can be found.
    fn error_span(&self, id: TemplateId, e: &RenderError) -> Span {
        if let RenderError::Located { span, .. } = e {
            return *span;
        }
        let text = self.templates.text(id);
        match self.templates.locate_error(id, e) {
            Some((offset, width)) => text.locate(&self.runbook.source, offset, width),
            None => text.span,
        }
    }

    fn failure(&self, id: TemplateId, error: RenderError) -> Failure {
        Failure {
            span: self.error_span(id, &error),
            error,
        }
    }

    /// Names captured by the steps before `upto` (exclusive), in order.
    fn capture_names(&self, upto: usize) -> &[String] {
        &self.capture_scopes[upto.min(self.runbook.steps.len())]
    }

    /// The context a step's templates see on a host, plus the names whose values
    /// are only known at run time. Without real captures (planning) the host's
    /// context is the same for every step with the same captures in scope, so
    /// it is built once and shared.
    fn context(
        &self,
        host: Option<&Host>,
        reveal: Reveal,
        r: StepRef,
        in_scope: &[String],
        captures: Option<&Captures>,
        batch: Option<usize>,
    ) -> Result<(Context, Arc<HashSet<String>>), Failure> {
        // `hosts` differs per step and `batch` per batch; only the steps that read
        // them pay for adding them.
        let key = step_key(r);
        let mut extra = Vec::new();
        if let Some(v) = self.host_lists.get(&key) {
            extra.push(("hosts".to_string(), v.clone()));
        }
        if self.reads_batch.contains(&key) {
            let v = match batch {
                None => self.all_batches_value.clone(),
                Some(b) => match b.checked_sub(1).and_then(|i| self.batch_values.get(i)) {
                    Some(v) => v.clone(),
                    None => {
                        return Err(Failure {
                            error: RenderError::Other(format!(
                                "batch {b} does not exist: this run has {}",
                                crate::plural::count(self.batches.len(), "batch", "batches")
                            )),
                            span: self.step(r).0.span,
                        })
                    }
                },
            };
            extra.push(("batch".to_string(), v));
        }
        if captures.is_some() || self.per_step_vars.contains(&key) {
            let (ctx, deferred) = self.build_context(host, reveal, in_scope, captures, extra)?;
            return Ok((ctx, Arc::new(deferred)));
        }
        let index = host.and_then(|h| self.host_index.get(&h.name).copied());
        let key = (index, in_scope.len(), reveal);
        let cached = self
            .contexts
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .cloned();
        let (ctx, deferred) = match cached {
            Some(c) => c,
            None => {
                let (ctx, deferred) =
                    self.build_context(host, reveal, in_scope, None, Vec::new())?;
                let entry = (ctx, Arc::new(deferred));
                self.contexts
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key, entry.clone());
                entry
            }
        };
        let ctx = if extra.is_empty() {
            ctx
        } else {
            ctx.with(extra)
        };
        Ok((ctx, deferred))
    }

    /// The full context: base, captures (real or placeholders), runbook vars rendered.
    fn build_context(
        &self,
        host: Option<&Host>,
        reveal: Reveal,
        in_scope: &[String],
        captures: Option<&Captures>,
        extra: Vec<(String, Value)>,
    ) -> Result<(Context, HashSet<String>), Failure> {
        let mut m = self.base_map(host, reveal);
        m.extend(extra);
        let mut deferred: HashSet<String> = HashSet::new();
        for name in in_scope {
            let v = match captures {
                Some(c) => host
                    .and_then(|h| c.hosts.get(&h.name))
                    .and_then(|hc| hc.get(name))
                    .or_else(|| c.global.get(name))
                    .cloned(),
                None => {
                    deferred.insert(name.to_string());
                    Some(template::capture_placeholder(name))
                }
            };
            if let Some(v) = v {
                m.insert(name.to_string(), Value::from(v));
            }
        }
        let mut ctx = Context::new(m);
        for (name, id) in &self.vars {
            if in_scope.contains(name) {
                continue;
            }
            // Runbook vars are rendered for every step, including `local: true` steps
            // that have no host vars: a var that cannot be rendered here is only an
            // error if this step's templates read it.
            let v = match self.templates.render(*id, &ctx) {
                Ok(v) => v,
                Err(e) => {
                    // Located now, at the var's own text: that is what needs fixing.
                    let located = |e: RenderError| {
                        let span = self.error_span(*id, &e);
                        let message = match e {
                            RenderError::Undefined {
                                name: missing,
                                hint,
                            } => format!(
                                "variable `{name}` reads undefined variable `{missing}`{hint}"
                            ),
                            other => format!("variable `{name}`: {other}"),
                        };
                        RenderError::Located { message, span }
                    };
                    let why = match e {
                        RenderError::Many(all) => {
                            RenderError::Many(all.into_iter().map(located).collect())
                        }
                        e => located(e),
                    };
                    ctx = ctx.with_broken(name, why);
                    continue;
                }
            };
            if self
                .templates
                .variables(*id)
                .iter()
                .any(|x| deferred.contains(x))
            {
                deferred.insert(name.clone());
            }
            ctx = ctx.with([(name.clone(), Value::from(v))]);
        }
        Ok((ctx, deferred))
    }

    /// Renders one step for one host (`None`: the control machine) — the single
    /// code path shared by the dry-run and the run. `batch` is the batch number
    /// the step runs for (`None`: outside batches, `batch` is every serial host).
    pub fn render(
        &self,
        r: StepRef,
        host_name: Option<&str>,
        captures: Option<&Captures>,
        reveal: Reveal,
        batch: Option<usize>,
    ) -> Result<Target, Error> {
        let (step, t) = self.step(r);
        let host =
            host_name.and_then(|n| self.host_index.get(n).map(|i| &self.inventory.hosts[*i]));
        let scope_before = match r {
            StepRef::Forward(i) => self.capture_names(i),
            StepRef::Guide(_) => self.capture_names(usize::MAX),
        };
        let scope_after = match r {
            StepRef::Forward(i) => self.capture_names(i + 1),
            StepRef::Guide(_) => scope_before,
        };
        let fail = |f: Failure| -> Error {
            let on = host_name
                .map(|h| format!(" on host `{h}`"))
                .unwrap_or_default();
            diag(
                &self.runbook,
                f.span,
                format!("in step `{}`{on}: {}", step.name, f.error),
            )
        };
        let (ctx, deferred) = self
            .context(host, reveal, r, scope_before, captures, batch)
            .map_err(fail)?;
        let mut target = Target {
            host: host_name.unwrap_or("localhost").to_string(),
            login: self.login(host),
            batch: batch.filter(|_| self.reads_batch(r)),
            ..Target::default()
        };
        // Every template of the step is rendered even after one fails, so that all
        // its errors are reported at once; nothing is returned when there is one.
        let fail_render = |id: TemplateId, e: RenderError| -> Error {
            let parts = match e {
                RenderError::Many(all) => all,
                e => vec![e],
            };
            let errors = parts.into_iter().map(|e| fail(self.failure(id, e)));
            Error::merge(errors.collect()).unwrap_or_else(|| {
                fail(self.failure(id, RenderError::Other("cannot be rendered".into())))
            })
        };
        let noted: std::cell::RefCell<Vec<Error>> = Default::default();
        let render = |id: TemplateId, ctx: &Context| -> Result<String, Error> {
            match self.templates.render(id, ctx) {
                Ok(s) => Ok(template::show_placeholders(s)),
                Err(e) => {
                    noted.borrow_mut().push(fail_render(id, e));
                    Ok(String::new())
                }
            }
        };
        let so_far = || Error::merge(noted.take()).map_or(Ok(()), Err);

        if let Some(w) = t.when {
            let reads_capture = self
                .templates
                .variables(w)
                .iter()
                .any(|v| deferred.contains(v));
            if reads_capture {
                target.when_at_run_time = step.when.as_ref().map(|w| w.src.trim().to_string());
            } else if !self
                .templates
                .condition(w, &ctx)
                .map_err(|e| fail_render(w, e))?
            {
                target.skipped = Some(format!(
                    "when: {} is false",
                    step.when.as_ref().map(|w| w.src.trim()).unwrap_or_default()
                ));
                return Ok(target);
            }
        }

        // Env values that read a secret go in on stdin (see `Wrap::stdin_env`).
        let mut env: Vec<(String, String)> = Vec::new();
        let mut stdin_env: Vec<String> = Vec::new();
        let mut env_lines = String::new();
        for (k, id) in &t.env {
            let v = render(*id, &ctx)?;
            if self
                .templates
                .variables(*id)
                .iter()
                .any(|n| self.secret_names.contains(n))
            {
                if v.contains('\n') || matches!(step.action, Action::Upload(_)) {
                    return Err(diag(
                        &self.runbook,
                        step.span,
                        format!(
                            "in step `{}`: `env.{k}` carries a secret, which opsrun passes on stdin; that needs a one-line value and a step that is not an upload",
                            step.name
                        ),
                    ));
                }
                stdin_env.push(k.clone());
                env_lines.push_str(&v);
                env_lines.push('\n');
            } else {
                env.push((k.clone(), v));
            }
        }
        target.env_stdin = (!env_lines.is_empty()).then_some(env_lines);
        let as_user = t.as_user.map(|id| render(id, &ctx)).transpose()?;
        let cwd = t.cwd.map(|id| render(id, &ctx)).transpose()?;
        let wrap = Wrap {
            as_user: as_user.as_deref(),
            become_with: host.and_then(|h| h.ssh.become_with).unwrap_or_default(),
            cwd: cwd.as_deref(),
            env: &env,
            stdin_env: &stdin_env,
            timeout: step.timeout,
        };
        match &step.action {
            Action::Run(_) => {
                target.command = Some(shell::wrap(
                    &render(t.action.expect("run template"), &ctx)?,
                    &wrap,
                ));
            }
            Action::Script(_) => {
                target.command = Some(shell::wrap("sh -e", &wrap));
                target.stdin = Some(render(t.action.expect("script template"), &ctx)?);
            }
            Action::Upload(u) => {
                let (src_id, dest_id, owner_id) = t.upload.expect("upload templates");
                let src = render(src_id, &ctx)?;
                let mut dest = render(dest_id, &ctx)?;
                if dest.ends_with('/') {
                    dest.push_str(src.trim_end_matches('/').rsplit('/').next().unwrap_or(&src));
                }
                let owner = owner_id.map(|id| render(id, &ctx)).transpose()?;
                let (sha256, shown_sum, content) = if u.template {
                    // The file's name must have rendered before the file can be read.
                    so_far()?;
                    let (content, hidden) =
                        self.render_upload_template(step, host_name, &src, &ctx)?;
                    let shown = template::show_placeholders(content.clone());
                    // A masked secret or a capture not yet known: the sum of this
                    // text is not the sum of the file a run sends.
                    let sha256 = (!(hidden && reveal == Reveal::Masked) && shown == content)
                        .then(|| crate::digest::sha256_hex(content.as_bytes()));
                    let shown_sum = sha256
                        .clone()
                        .unwrap_or_else(|| format!("<sha256 of {src}, rendered>"));
                    (sha256, Some(shown_sum), Some(shown))
                } else {
                    let sha256 = self.local_sha256(&src);
                    // Planning on a machine without the file still shows the check.
                    let shown_sum = sha256
                        .clone()
                        .or_else(|| captures.is_none().then(|| format!("<sha256 of {src}>")));
                    (sha256, shown_sum, None)
                };
                let line = shell::upload_command(
                    &dest,
                    u.mode.as_deref(),
                    owner.as_deref(),
                    &self.template_run.stamp,
                    shown_sum.as_deref(),
                );
                target.command = Some(shell::wrap(&line, &wrap));
                target.stdin = Some(match u.template {
                    true => format!("<contents of {src}, rendered for this host>"),
                    false => format!("<contents of {src}>"),
                });
                target.upload = Some(UploadTarget {
                    src,
                    dest,
                    sha256,
                    templated: u.template,
                    content,
                });
            }
            Action::Manual(_) | Action::CheckOnly => {}
        }
        if t.stdin.is_some() && target.stdin.is_none() {
            target.stdin = t.stdin.map(|id| render(id, &ctx)).transpose()?;
        }
        // Checked against the action's output, before its capture is stored.
        let pattern = |id: Option<TemplateId>, field: &str| -> Result<Option<String>, Error> {
            let Some(id) = id else { return Ok(None) };
            let rendered = render(id, &ctx)?;
            if noted.borrow().is_empty() {
                if let Err(e) = regex::Regex::new(&rendered) {
                    let secret = self
                        .templates
                        .variables(id)
                        .iter()
                        .any(|n| self.secret_names.contains(n));
                    let shown = if secret && reveal == Reveal::Real {
                        MASK
                    } else {
                        rendered.as_str()
                    };
                    noted.borrow_mut().push(fail(Failure {
                        error: RenderError::Other(format!(
                            "invalid regular expression for `expect.{field}` once rendered (`{shown}`): {}",
                            crate::load::runbook::regex_problem(&e)
                        )),
                        span: {
                            let text = self.templates.text(id);
                            text.locate(&self.runbook.source, 0, text.src.chars().count())
                        },
                    }));
                }
            }
            Ok(Some(rendered))
        };
        target.expect_stdout = pattern(t.expect_stdout, "stdout")?;
        target.expect_stdout_not = pattern(t.expect_stdout_not, "stdout_not")?;
        // The check and the rollback run after the action, so they may read its capture.
        // Before the action has run that value does not exist yet; the engine renders
        // them again when it runs them, so until then the capture is only pending.
        let pending = captures.and_then(|c| {
            let name = &step.capture.as_ref()?.name;
            let known = match host_name {
                Some(h) => c.hosts.get(h).is_some_and(|m| m.contains_key(name)),
                None => false,
            } || c.global.contains_key(name);
            (!known).then(|| {
                let mut c = c.clone();
                let value = template::capture_placeholder(name);
                match host_name {
                    Some(h) => c.hosts.entry(h.to_string()).or_default(),
                    None => &mut c.global,
                }
                .insert(name.clone(), value);
                c
            })
        });
        let after_captures = pending.as_ref().or(captures);
        let (after_ctx, _): (Context, Arc<HashSet<String>>) =
            if scope_after.len() != scope_before.len() {
                self.context(host, reveal, r, scope_after, after_captures, batch)
                    .map_err(fail)?
            } else {
                (ctx, deferred)
            };
        if let Some(id) = t.check {
            target.check = Some(shell::wrap(&render(id, &after_ctx)?, &wrap));
        }
        for id in &t.rollback {
            target
                .rollback
                .push(shell::wrap(&render(*id, &after_ctx)?, &wrap));
        }
        so_far()?;
        Ok(target)
    }

    /// Renders an upload's source file as a template for one host: its text, and
    /// whether it reads a secret. Errors point into that file.
    fn render_upload_template(
        &self,
        step: &Step,
        host_name: Option<&str>,
        src: &str,
        ctx: &Context,
    ) -> Result<(String, bool), Error> {
        let ft = {
            let mut cache = self
                .upload_templates
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            cache
                .entry(src.to_string())
                .or_insert_with(|| self.compile_upload_template(step, src))
                .clone()?
        };
        let hidden = ft
            .templates
            .variables(ft.id)
            .iter()
            .any(|v| self.secret_names.contains(v));
        let content = ft.templates.render(ft.id, ctx).map_err(|e| {
            let on = host_name
                .map(|h| format!(" on host `{h}`"))
                .unwrap_or_default();
            let message = format!("in step `{}`{on}: {e}", step.name);
            match &e {
                // A runbook var the file reads failed: that is in the runbook.
                RenderError::Located { span, .. } => diag(&self.runbook, *span, message),
                _ => {
                    let text = ft.templates.text(ft.id);
                    let span = match ft.templates.locate_error(ft.id, &e) {
                        Some((offset, width)) => text.locate(&ft.source, offset, width),
                        None => text.span,
                    };
                    Error::from(Diagnostic {
                        level: crate::diagnostic::Level::Error,
                        source: ft.source.clone(),
                        span,
                        message,
                        help: None,
                    })
                }
            }
        })?;
        Ok((content, hidden))
    }

    fn compile_upload_template(
        &self,
        step: &Step,
        src: &str,
    ) -> Result<Arc<FileTemplate>, Diagnostic> {
        let at_src = |message: String| {
            let span = match &step.action {
                Action::Upload(u) => u.src.span,
                _ => step.span,
            };
            Diagnostic {
                level: crate::diagnostic::Level::Error,
                source: self.runbook.source.clone(),
                span,
                message: format!("in step `{}`: {message}", step.name),
                help: None,
            }
        };
        let bytes = std::fs::read(src)
            .map_err(|e| at_src(format!("cannot read upload template `{src}`: {e}")))?;
        let text = String::from_utf8(bytes).map_err(|_| {
            at_src(format!(
                "upload template `{src}` is not UTF-8 text: only text files can be templates"
            ))
        })?;
        let source = crate::diagnostic::SourceFile::new(src, text.clone());
        let lines = text.lines().count();
        // The whole file, spanning its lines, so positions are found line by line.
        let whole = crate::load::runbook::Text {
            src: text,
            span: Span {
                start: crate::diagnostic::Pos { line: 1, col: 1 },
                end: crate::diagnostic::Pos {
                    line: lines + 1,
                    col: 1,
                },
            },
        };
        let mut templates = Templates::for_source(source.clone());
        let id = templates.add(&whole, Kind::Text).map_err(|e| Diagnostic {
            level: crate::diagnostic::Level::Error,
            source: source.clone(),
            span: e.span,
            message: e.message,
            help: e.help,
        })?;
        Ok(Arc::new(FileTemplate {
            templates,
            id,
            source,
        }))
    }

    /// The confirmation question of a step, if it has a gate.
    pub fn confirm_prompt(&self, r: StepRef) -> Result<Option<String>, Error> {
        let (step, t) = self.step(r);
        match (&step.confirm, t.confirm) {
            (None, _) => Ok(None),
            (Some(_), None) => Ok(Some(format!("Run step `{}`?", step.name))),
            (Some(_), Some(id)) => Ok(Some(self.render_control(r, id)?)),
        }
    }

    /// The instructions of a manual step.
    pub fn manual_text(&self, r: StepRef) -> Result<Option<String>, Error> {
        let (step, t) = self.step(r);
        match (&step.action, t.action) {
            (Action::Manual(_), Some(id)) => Ok(Some(self.render_control(r, id)?)),
            _ => Ok(None),
        }
    }

    /// Texts shown once per step are rendered for the control machine.
    fn render_control(&self, r: StepRef, id: TemplateId) -> Result<String, Error> {
        let (step, _) = self.step(r);
        let scope = match r {
            StepRef::Forward(i) => self.capture_names(i),
            StepRef::Guide(_) => self.capture_names(usize::MAX),
        };
        let fail = |f: Failure| {
            diag(
                &self.runbook,
                f.span,
                format!("in step `{}`: {}", step.name, f.error),
            )
        };
        let (ctx, _) = self
            .context(None, Reveal::Masked, r, scope, None, None)
            .map_err(fail)?;
        self.templates
            .render(id, &ctx)
            .map(|s| template::show_placeholders(s).trim_end().to_string())
            .map_err(|e| fail(self.failure(id, e)))
    }

    fn plan_step(&self, r: StepRef, number: usize) -> Result<PlanStep, Error> {
        let (step, _) = self.step(r);
        // A step that reads `batch` says something different in each batch: show
        // each. The rollback guide runs batch by batch too.
        let batches: Vec<Option<usize>> = if self.reads_batch(r) {
            (1..=self.batches.len()).map(Some).collect()
        } else {
            vec![None]
        };
        let mut targets = Vec::new();
        for batch in batches {
            if step.local {
                targets.push(self.render(r, None, None, Reveal::Masked, batch)?);
            } else if !matches!(step.action, Action::Manual(_)) {
                for h in self.batch_hosts(r, batch) {
                    targets.push(self.render(r, Some(&h), None, Reveal::Masked, batch)?);
                }
            }
        }
        let on = step
            .on
            .as_ref()
            .or(self.runbook.hosts.as_ref())
            .map(|t| t.src.clone())
            .unwrap_or_else(|| "localhost".into());
        Ok(PlanStep {
            number,
            name: step.name.clone(),
            action: step.action.kind(),
            on: if step.local {
                "localhost (local)".into()
            } else {
                on
            },
            local: step.local,
            confirm: self.confirm_prompt(r)?,
            manual: self.manual_text(r)?,
            timeout: step.timeout.map(crate::duration::format),
            retries: step.retries,
            delay: crate::duration::format(step.delay),
            on_failure: step.on_failure,
            capture: step.capture.as_ref().map(|c| c.name.clone()),
            expect_exit: step.expect.exit.clone(),
            service: step.service.clone(),
            skipped_by_start_at: matches!(r, StepRef::Forward(i) if i < self.start_at),
            targets,
        })
    }

    /// The whole plan, secrets masked: what `--dry-run` prints.
    pub fn plan(&self) -> Result<Plan, Error> {
        // Every step is planned even after one fails: all the errors of the
        // runbook are reported in one pass.
        let mut results = self.plan_steps_parallel();
        let forward_len = results.len();
        results.extend(
            (0..self.runbook.rollback.len()).map(|i| self.plan_step(StepRef::Guide(i), i + 1)),
        );
        let mut planned = Vec::with_capacity(results.len());
        let mut errors = Vec::new();
        for r in results {
            match r {
                Ok(p) => planned.push(p),
                Err(e) => errors.push(e),
            }
        }
        if let Some(e) = Error::merge(errors) {
            return Err(e);
        }
        let rollback_guide = planned.split_off(forward_len);
        let steps = planned;
        let hosts: Vec<PlanHost> = self
            .run_hosts()
            .into_iter()
            .map(|h| PlanHost {
                name: h.name.clone(),
                login: self.login(Some(h)),
                endpoint: self.endpoint(h),
                groups: h.groups.clone(),
            })
            .collect();
        Ok(Plan {
            runbook: RunbookInfo {
                name: self.runbook.name.clone(),
                description: self.runbook.description.clone(),
                version: self.runbook.version.clone(),
                path: self.runbook.source.display_path(),
                sha256: self.runbook.source.sha256(),
            },
            inventory: InventoryInfo {
                name: self.inventory.name.clone(),
                path: self.inventory.source.display_path(),
                sha256: self.inventory.source.sha256(),
            },
            run: self.run.clone(),
            params: self.params.clone(),
            batches: self.batches.clone(),
            hosts,
            start_gate: self.inventory.confirm,
            steps,
            rollback_guide,
        })
    }

    /// Plans the forward steps on every core: each step renders independently,
    /// and a large estate (500 hosts) makes this the bulk of planning.
    fn plan_steps_parallel(&self) -> Vec<Result<PlanStep, Error>> {
        let n = self.runbook.steps.len();
        let work: usize = (0..n)
            .map(|i| self.step_hosts(StepRef::Forward(i)).len())
            .sum();
        let threads = std::thread::available_parallelism()
            .map_or(1, |t| t.get())
            .min(8);
        if threads < 2 || work < 2000 {
            return (0..n)
                .map(|i| self.plan_step(StepRef::Forward(i), i + 1))
                .collect();
        }
        let chunk = n.div_ceil(threads);
        let parts: Vec<Vec<Result<PlanStep, Error>>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..n)
                .step_by(chunk)
                .map(|start| {
                    scope.spawn(move || {
                        (start..(start + chunk).min(n))
                            .map(|i| self.plan_step(StepRef::Forward(i), i + 1))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        });
        parts.into_iter().flatten().collect()
    }

    /// The rolling batches of serial hosts, in order (batch numbers count from 1).
    pub fn batches(&self) -> &[Vec<String>] {
        &self.batches
    }

    /// The hosts a step runs on in a batch: its serial hosts in that batch and
    /// all its other hosts. `None`: outside any batch, every host of the step.
    pub fn batch_hosts(&self, r: StepRef, batch: Option<usize>) -> Vec<String> {
        let hosts = self.step_hosts(r);
        let Some(members) = batch.and_then(|b| self.batches.get(b.checked_sub(1)?)) else {
            return hosts.to_vec();
        };
        let members: HashSet<&String> = members.iter().collect();
        hosts
            .iter()
            .filter(|h| !self.serial_hosts.contains(*h) || members.contains(h))
            .cloned()
            .collect()
    }

    /// Where a step's gate applies, said with its question: `(on oa1, oa2)`, or
    /// with `serial` `(batch 1/2: oa1)` (`(on lb1; batch 1/2: oa1)` for a step on
    /// other hosts), so the operator knows which hosts the answer is for.
    pub fn gate_hosts(&self, step: &Step, hosts: &[String], batch: Option<usize>) -> String {
        // A long list is cut: the dry-run and the log name every host.
        const SHOWN: usize = 20;
        let list = |names: &[String]| {
            let mut s = names
                .iter()
                .take(SHOWN)
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(", ");
            if names.len() > SHOWN {
                s.push_str(&format!(" and {} more", names.len() - SHOWN));
            }
            s
        };
        let on = if step.local {
            "on this machine".to_string()
        } else {
            format!("on {}", list(hosts))
        };
        let members = batch
            .filter(|_| self.batches.len() > 1)
            .and_then(|b| Some((b, self.batches.get(b.checked_sub(1)?)?)));
        match members {
            None => format!("({on})"),
            Some((b, m)) if !step.local && m.as_slice() == hosts => {
                format!("(batch {b}/{}: {})", self.batches.len(), list(m))
            }
            Some((b, m)) => format!("({on}; batch {b}/{}: {})", self.batches.len(), list(m)),
        }
    }

    /// Whether a step's templates read `batch`: it is then rendered per batch.
    pub fn reads_batch(&self, r: StepRef) -> bool {
        self.reads_batch.contains(&step_key(r))
    }

    pub fn start_at(&self) -> usize {
        self.start_at
    }

    /// `--limit` as given.
    pub fn limit_pattern(&self) -> Option<&str> {
        self.opts.limit.as_deref()
    }

    pub fn is_limited(&self) -> bool {
        self.limit.is_some()
    }
}

/// Rolling batches per the runbook's `serial` (one batch of everything without
/// it). There is always a batch, even an empty one: steps on hosts outside the
/// serial set, and `local: true` steps, still run once.
fn cut_batches(serial: Option<Serial>, hosts: &[String]) -> Vec<Vec<String>> {
    let size = match serial {
        None => hosts.len(),
        Some(Serial::Count(n)) => n,
        Some(Serial::Percent(p)) => (hosts.len() * usize::from(p)).div_ceil(100),
    }
    .max(1);
    let batches: Vec<Vec<String>> = hosts.chunks(size).map(<[String]>::to_vec).collect();
    if batches.is_empty() {
        vec![Vec::new()]
    } else {
        batches
    }
}

/// Per runbook var, every name it reads, through the vars it reads in turn.
fn var_reads(
    templates: &Templates,
    vars: &[(String, TemplateId)],
) -> HashMap<String, HashSet<String>> {
    let mut reads: HashMap<String, HashSet<String>> = vars
        .iter()
        .map(|(n, id)| (n.clone(), templates.variables(*id).clone()))
        .collect();
    // A handful of vars: iterate to the fixed point rather than order them.
    loop {
        let mut grew = false;
        for (name, _) in vars {
            let inner: HashSet<String> = reads[name]
                .iter()
                .filter(|v| *v != name)
                .filter_map(|v| reads.get(v))
                .flatten()
                .cloned()
                .collect();
            let mine = reads.get_mut(name).expect("every var has an entry");
            for v in inner {
                grew |= mine.insert(v);
            }
        }
        if !grew {
            return reads;
        }
    }
}

impl StepTemplates {
    fn ids(&self) -> Vec<TemplateId> {
        let mut v: Vec<TemplateId> = [
            self.action,
            self.as_user,
            self.cwd,
            self.stdin,
            self.when,
            self.check,
            self.confirm,
            self.expect_stdout,
            self.expect_stdout_not,
        ]
        .into_iter()
        .flatten()
        .collect();
        if let Some((a, b, c)) = self.upload {
            v.extend([a, b]);
            v.extend(c);
        }
        v.extend(self.env.iter().map(|(_, id)| *id));
        v.extend(self.rollback.iter().copied());
        v
    }
}

type Compiled = (
    Templates,
    Vec<(String, TemplateId)>,
    Vec<StepTemplates>,
    Vec<StepTemplates>,
);

/// Compiles every template of a runbook, reporting all syntax errors at once.
fn compile_templates(rb: &Runbook) -> Result<Compiled, Error> {
    let mut t = Templates::for_source(rb.source.clone());
    let mut errs = Vec::new();
    let vars = rb
        .vars
        .iter()
        .map(|(n, x)| (n.clone(), t.add_noting(x, Kind::Text, &mut errs)))
        .collect();
    let forward = rb
        .steps
        .iter()
        .map(|s| compile_step(s, &mut t, &mut errs))
        .collect();
    let guide = rb
        .rollback
        .iter()
        .map(|s| compile_step(s, &mut t, &mut errs))
        .collect();
    match Error::merge(errs.into_iter().map(|e| yaml_err(rb, e)).collect()) {
        Some(e) => Err(e),
        None => Ok((t, vars, forward, guide)),
    }
}

/// `opsrun check`: the runbook's templates compile (no inventory is needed for that).
pub fn check_templates(rb: &Runbook) -> Result<(), Error> {
    compile_templates(rb).map(|_| ())
}

fn compile_step(s: &Step, t: &mut Templates, errs: &mut Vec<yaml::Error>) -> StepTemplates {
    let mut add =
        |t: &mut Templates, x: &crate::load::runbook::Text, kind: Kind| t.add_noting(x, kind, errs);
    let action = match &s.action {
        Action::Run(x) | Action::Script(x) | Action::Manual(x) => Some(add(t, x, Kind::Text)),
        _ => None,
    };
    let upload = match &s.action {
        Action::Upload(u) => Some((
            add(t, &u.src, Kind::Text),
            add(t, &u.dest, Kind::Text),
            u.owner.as_ref().map(|x| add(t, x, Kind::Text)),
        )),
        _ => None,
    };
    let mut opt = |t: &mut Templates, x: &Option<crate::load::runbook::Text>| {
        x.as_ref().map(|x| add(t, x, Kind::Text))
    };
    let as_user = opt(t, &s.as_user);
    let cwd = opt(t, &s.cwd);
    let stdin = opt(t, &s.stdin);
    let check = opt(t, &s.check);
    let expect_stdout = opt(t, &s.expect.stdout);
    let expect_stdout_not = opt(t, &s.expect.stdout_not);
    let confirm = match &s.confirm {
        Some(p) => opt(t, p),
        None => None,
    };
    StepTemplates {
        action,
        upload,
        as_user,
        cwd,
        env: s
            .env
            .iter()
            .map(|(k, v)| (k.clone(), add(t, v, Kind::Text)))
            .collect(),
        stdin,
        when: s.when.as_ref().map(|w| add(t, w, Kind::Condition)),
        check,
        rollback: s.rollback.iter().map(|r| add(t, r, Kind::Text)).collect(),
        confirm,
        expect_stdout,
        expect_stdout_not,
    }
}

/// Binds `-e` values, defaults and secrets to the runbook's params.
fn bind_params(rb: &Runbook, opts: &Options) -> Result<Vec<ParamValue>, Error> {
    for (k, _) in &opts.params {
        if !rb.params.iter().any(|p| &p.name == k) {
            let declared: Vec<&str> = rb.params.iter().map(|p| p.name.as_str()).collect();
            return Err(Error::Usage(format!(
                "-e {k}: runbook `{}` has no param `{k}`{}{}",
                rb.name,
                did_you_mean(k, declared.iter().copied()),
                if declared.is_empty() {
                    " (it declares no params)".to_string()
                } else {
                    format!(" (params: {})", declared.join(", "))
                }
            )));
        }
    }
    let mut out = Vec::new();
    for p in &rb.params {
        let given = opts
            .params
            .iter()
            .rev()
            .find(|(k, _)| k == &p.name)
            .map(|(_, v)| v.clone());
        if p.secret {
            if given.is_some() {
                return Err(Error::Usage(format!(
                    "-e {}: `{}` is a secret param and cannot be given on the command line (it would show in `ps` and the shell history); set OPSRUN_SECRET_{} or answer the prompt",
                    p.name,
                    p.name,
                    p.name.to_uppercase()
                )));
            }
            let have = opts.secrets.contains_key(&p.name);
            if let Some(v) = opts.secrets.get(&p.name) {
                p.check_value(v)
                    .map_err(|m| Error::Usage(format!("secret param `{}`: {m}", p.name)))?;
            }
            out.push(ParamValue {
                name: p.name.clone(),
                value: (have || p.default.is_some()).then(|| MASK.to_string()),
                secret: true,
                source: if have {
                    "secret"
                } else if p.default.is_some() {
                    "default"
                } else {
                    "not given"
                },
            });
            continue;
        }
        let (value, source) = match (given, &p.default) {
            (Some(v), _) => (Some(v), "-e"),
            (None, Some(d)) => (Some(d.clone()), "default"),
            (None, None) if p.required => {
                return Err(diag(
                    rb,
                    p.span,
                    format!(
                        "missing required param `{}`{}: pass it with -e {}=VALUE",
                        p.name,
                        p.description
                            .as_ref()
                            .map(|d| format!(" ({d})"))
                            .unwrap_or_default(),
                        p.name
                    ),
                ))
            }
            (None, None) => (None, "not given"),
        };
        if let (Some(v), "-e") = (&value, source) {
            p.check_value(v)
                .map_err(|m| Error::Usage(format!("-e {}: {m}", p.name)))?;
        }
        out.push(ParamValue {
            name: p.name.clone(),
            value,
            secret: false,
            source,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnostic::SourceFile;
    use crate::load::{inventory_from_source, runbook_from_source};

    const INVENTORY: &str = "\
name: t
groups:
  app:
    vars: { http_port: 6888 }
    hosts:
      oa1: { address: 10.0.0.1 }
      oa2: { address: 10.0.0.2, vars: { http_port: 7001 } }
      oa3: { address: 10.0.0.3 }
  lb:
    hosts:
      nginx1: { address: 10.0.0.9 }
";

    fn planner(runbook: &str, inventory: &str, limit: Option<&str>) -> Planner {
        let rb = runbook_from_source(SourceFile::new("rb.yaml", runbook)).unwrap();
        let inv = inventory_from_source(SourceFile::new("inv.yaml", inventory)).unwrap();
        let opts = Options {
            operator: "tester".into(),
            local_user: "tester".into(),
            limit: limit.map(str::to_string),
            ..Options::default()
        };
        Planner::new(rb, inv, opts).unwrap()
    }

    const ROLLING: &str = r#"
name: rolling
hosts: app
serial: 2
vars:
  servers: "{% for h in batch %}{{ h.address }}:{{ h.vars.http_port }} {% endfor %}"
steps:
  - name: drain
    on: "lb*"
    run: "drain {{ servers }}"
    rollback: "undrain {{ batch | map(attribute='name') | join(',') }}"
  - name: stop
    run: "stop {{ host.name }}"
  - name: everyone
    on: app
    run: "echo {{ hosts | length }}"
"#;

    #[test]
    fn batches_are_cut_from_the_runbook_hosts_and_other_hosts_join_every_batch() {
        let p = planner(ROLLING, INVENTORY, None);
        assert_eq!(p.batches(), [vec!["oa1", "oa2"], vec!["oa3"]]);
        let drain = StepRef::Forward(0);
        assert_eq!(p.batch_hosts(drain, Some(1)), ["nginx1"]);
        assert_eq!(p.batch_hosts(drain, Some(2)), ["nginx1"]);
        let stop = StepRef::Forward(1);
        assert_eq!(p.batch_hosts(stop, Some(1)), ["oa1", "oa2"]);
        assert_eq!(p.batch_hosts(stop, Some(2)), ["oa3"]);
        assert_eq!(p.batch_hosts(stop, None), ["oa1", "oa2", "oa3"]);
    }

    #[test]
    fn batch_lists_the_current_batch_with_each_node_s_own_vars() {
        let p = planner(ROLLING, INVENTORY, None);
        let drain = StepRef::Forward(0);
        assert!(p.reads_batch(drain));
        assert!(!p.reads_batch(StepRef::Forward(1)));
        let t = p
            .render(drain, Some("nginx1"), None, Reveal::Masked, Some(1))
            .unwrap();
        assert_eq!(
            t.command.as_deref(),
            Some("drain 10.0.0.1:6888 10.0.0.2:7001")
        );
        assert_eq!(t.rollback, ["undrain oa1,oa2"]);
        assert_eq!(t.batch, Some(1));
        // The run path (real captures) renders the same.
        let t = p
            .render(
                drain,
                Some("nginx1"),
                Some(&Captures::default()),
                Reveal::Real,
                Some(2),
            )
            .unwrap();
        assert_eq!(t.command.as_deref(), Some("drain 10.0.0.3:6888"));
        // Outside batches (the rollback guide), `batch` is every serial host.
        let t = p
            .render(drain, Some("nginx1"), None, Reveal::Masked, None)
            .unwrap();
        assert_eq!(t.rollback, ["undrain oa1,oa2,oa3"]);
        assert_eq!(t.batch, None);
        let e = p
            .render(drain, Some("nginx1"), None, Reveal::Masked, Some(3))
            .unwrap_err();
        assert!(e.to_string().contains("batch 3 does not exist"), "{e}");
        // A step that does not read `batch` is not tied to one.
        let t = p
            .render(
                StepRef::Forward(2),
                Some("oa1"),
                None,
                Reveal::Masked,
                Some(1),
            )
            .unwrap();
        assert_eq!(t.command.as_deref(), Some("echo 3"));
        assert_eq!(t.batch, None);
    }

    #[test]
    fn the_plan_shows_a_batch_reading_step_once_per_batch() {
        let plan = planner(ROLLING, INVENTORY, None).plan().unwrap();
        let drain: Vec<(Option<usize>, &str)> = plan.steps[0]
            .targets
            .iter()
            .map(|t| (t.batch, t.command.as_deref().unwrap_or_default()))
            .collect();
        assert_eq!(
            drain,
            [
                (Some(1), "drain 10.0.0.1:6888 10.0.0.2:7001"),
                (Some(2), "drain 10.0.0.3:6888"),
            ]
        );
        assert_eq!(plan.steps[1].targets.len(), 3);
        assert!(plan.steps[1].targets.iter().all(|t| t.batch.is_none()));
        let json = crate::report::preview::json(&plan);
        assert!(json.contains("\"batch\": 2"), "{json}");
        let text = crate::report::preview::text(&plan);
        assert!(
            text.contains("batches    [oa1, oa2] [oa3] (the step list runs batch by batch; nginx1 in every batch)"),
            "{text}"
        );
        assert!(
            text.contains("    batch 2 (oa3):\n      [tester@nginx1]# drain 10.0.0.3:6888"),
            "{text}"
        );
    }

    #[test]
    fn an_optional_group_the_inventory_lacks_gives_a_step_no_hosts() {
        let inventory = INVENTORY.replace(
            "  lb:\n    hosts:\n      nginx1: { address: 10.0.0.9 }\n",
            "",
        );
        let p = planner(ROLLING, &inventory, None);
        assert!(p.step_hosts(StepRef::Forward(0)).is_empty());
        assert!(p.batch_hosts(StepRef::Forward(0), Some(1)).is_empty());
        let plan = p.plan().unwrap();
        assert!(plan.steps[0].targets.is_empty());
        assert!(crate::report::preview::text(&plan).contains("on: lb*\n    no hosts\n"));
    }

    #[test]
    fn a_runbook_of_local_steps_only_needs_no_host() {
        // Runs on no host are refused, but this one runs on the control machine.
        let rb = "name: l\nhosts: \"web*\"\nsteps:\n  - name: check package\n    local: true\n    run: test -f x\n";
        let plan = planner(rb, INVENTORY, Some("oa1")).plan().unwrap();
        assert_eq!(plan.steps.len(), 1);
    }

    #[test]
    fn limit_narrows_the_batches_to_the_serial_hosts_left() {
        let p = planner(ROLLING, INVENTORY, Some("oa3:nginx1"));
        assert_eq!(p.batches(), [vec!["oa3"]]);
        assert_eq!(p.batch_hosts(StepRef::Forward(0), Some(1)), ["nginx1"]);
        // Nothing of the serial set left: one empty batch, so the other steps still run.
        let p = planner(ROLLING, INVENTORY, Some("nginx1"));
        assert_eq!(p.batches(), [Vec::<String>::new()]);
    }
}
