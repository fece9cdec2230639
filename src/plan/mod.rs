//! The plan: which hosts each step runs on and the exact commands it sends.
//!
//! Planning is pure (no connection, no prompt, no clock: the caller freezes the
//! time). `--dry-run` prints the plan, and execution renders every command
//! through the same `Planner::render`, so a dry-run cannot drift from a run.
//! Values only known once a step has captured them show as `<captured: NAME>`.
//!
//! Receives the load stage's runbook and inventory and the operator's
//! [`Options`]; produces a [`Planner`] (renders any step on any host) and the
//! [`Plan`] it prints. One file per concept: `model`, `run_id`, `params`,
//! `targets` (with `pattern`), `batches`, `compile`, `context`, `render`,
//! `secret_reads` (which names carry a secret), `stdin_only` (where a secret
//! cannot go), `document`.

mod batches;
mod compile;
mod context;
mod document;
mod gate;
mod logins;
mod model;
mod params;
pub mod pattern;
mod render;
mod run_id;
mod secret_reads;
mod stdin_only;
mod targets;

use batches::cut_batches;
pub use compile::{check_templates, with_template_problems};
use compile::{compile_file_template, compile_templates, var_reads, FileTemplate, StepTemplates};
pub use gate::{AnswerKind, Gate, GateAsk, Gates};
pub use logins::resolve as resolve_logins;
pub use model::{
    ActionKind, Capture, Captures, Completion, Expect, HostRef, InventoryInfo, On, OnFailure,
    Options, ParamValue, Plan, PlanHost, PlanStep, Reveal, RunInfo, RunbookInfo, Service,
    ServiceState, StepRef, Target, Undo, UploadTarget,
};
use params::{bind_params, FROM_INVENTORY};
use targets::no_host_at_all;

use crate::diagnostic::{did_you_mean, Diagnostic, Span};
use crate::error::Error;
use crate::load::inventory::{ConfirmMode, Host, Inventory};
use crate::load::runbook::{Action, Runbook, Serial, Step};
use crate::sanitize::MASK;
use crate::shell::{self, Wrap};
use crate::template::{self, Context, Kind, RenderError, TemplateId, Templates};
use crate::transport::{ConnectionKind, Endpoint};
use crate::yaml;
use minijinja::value::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

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
    /// How ssh reaches each of the run's ssh hosts (`logins.rs`); empty until
    /// [`Planner::resolve_logins`], and for runs on `connection: local` only.
    logins: HashMap<String, crate::transport::ssh::resolve::Resolved>,
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
    /// Secret params, and runbook vars built from them (`secret_reads`).
    secret_names: HashSet<String>,
    /// Those, and the captures (and vars) that come from a step reading one: a
    /// text that reads any of them is sent on stdin (`secret_reads::from_secret`).
    from_secret: HashSet<String>,
    /// The templates that read a secret, each with its text as the record
    /// shows it: every `{{ }}` reading one masked whole (`secret_reads::masked_twins`).
    masked: HashMap<TemplateId, TemplateId>,
    /// The secret values in use: a rendered value that holds one (a captured
    /// value can) goes to the host on stdin, never on its command line.
    redactor: crate::sanitize::Redactor,
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
    Error::from(Diagnostic::error(rb.source.clone(), span, message, None))
}

fn yaml_err(rb: &Runbook, e: yaml::Error) -> Error {
    Error::from(e.in_file(&rb.source))
}

/// Output is masked by secret value: a secret that occurs in the run's own names
/// (the runbook and the environment, which make up every run id) would mask them
/// wherever they are shown, and the masked name would tell the secret to anyone
/// who knows the name; leaving those names unmasked would tell it too. Such a value
/// is refused before anything runs.
fn secrets_apart_from_names(runbook: &str, env: &str, opts: &Options) -> Result<(), Error> {
    let names = [
        ("the runbook name (part of every run id)", runbook),
        ("the environment name (part of every run id)", env),
    ];
    let mut secrets: Vec<(&String, &String)> = opts.secrets.iter().collect();
    secrets.sort();
    for (param, value) in secrets {
        if value.is_empty() {
            continue;
        }
        // Says which name, never the name itself: that would narrow the value down.
        if let Some((what, _)) = names.iter().find(|(_, n)| n.contains(value.as_str())) {
            return Err(Error::Usage(format!(
                "secret param `{param}`: its value occurs in {what}; opsrun masks secrets by value, so it would mask that name wherever it is shown and tell the value to anyone who knows the name: use a secret that is not part of those names"
            )));
        }
    }
    Ok(())
}

impl Planner {
    pub fn new(runbook: Runbook, inventory: Inventory, opts: Options) -> Result<Planner, Error> {
        let rb = Arc::new(runbook);
        let run = run_id::mint(&rb.name, &inventory.name, &opts);
        let mut params = bind_params(&rb, &opts)?;
        secrets_apart_from_names(&rb.name, &inventory.name, &opts)?;
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

        let ((mut templates, vars, forward, guide), syntax_errors) = compile_templates(&rb);

        let limit = match &opts.limit {
            Some(l) => {
                let hosts: HashSet<String> = pattern::resolve(l, &inventory)
                    .map_err(|e| Error::Usage(format!("--limit: {}", e.message)))?
                    .into_iter()
                    .collect();
                // A limit that keeps no host is a typo, whatever the runbook: even a
                // runbook of local steps only would run as if it had been left out.
                if hosts.is_empty() {
                    return Err(Error::Usage(format!(
                        "--limit `{l}` matches no host in inventory `{}`",
                        inventory.name
                    )));
                }
                Some(hosts)
            }
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
        let secret_names = secret_reads::secret_names(&rb, &templates, &vars);
        let from_secret =
            secret_reads::from_secret(&rb, &templates, &vars, &forward, &secret_names);
        let masked =
            secret_reads::masked_twins(&mut templates, &vars, &forward, &guide, &secret_names);
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
        let mut planner = Planner {
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
            logins: HashMap::new(),
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
            from_secret,
            masked,
            redactor: Default::default(),
        };
        planner.redactor =
            crate::sanitize::Redactor::new(planner.secret_values().iter().map(String::as_str));
        if let Some(syntax) = syntax_errors {
            // A syntax error must not hide the undefined variables of the templates
            // that compiled: plan them too, and report everything in one pass. A
            // planner with a failed template is never returned.
            let rendered = planner
                .plan()
                .err()
                .filter(|e| matches!(e, Error::Invalid(_) | Error::InvalidAll(_)));
            let all: Vec<Error> = std::iter::once(syntax).chain(rendered).collect();
            return Err(Error::merge(all)
                .unwrap_or_else(|| Error::Usage("the runbook's templates do not compile".into())));
        }
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

    /// The secret params these steps read (any of their templates, directly or
    /// through runbook vars), in the runbook's order: what running just them needs.
    pub fn secrets_read(&self, refs: &[StepRef]) -> Vec<String> {
        let var_reads = compile::var_reads(&self.templates, &self.vars);
        let mut read: HashSet<&String> = HashSet::new();
        for r in refs {
            for id in self.step(*r).1.ids() {
                for v in self.templates.variables(id) {
                    read.insert(v);
                    read.extend(var_reads.get(v).into_iter().flatten());
                }
            }
        }
        self.runbook
            .params
            .iter()
            .filter(|p| p.secret && read.contains(&p.name))
            .map(|p| p.name.clone())
            .collect()
    }

    pub fn start_at(&self) -> usize {
        self.start_at
    }
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

    /// The plan carries each gate whole: the question, how it is answered, and
    /// per batch the hosts it names; the dry-run and its JSON print the same text.
    #[test]
    fn a_step_s_gate_names_the_hosts_of_each_batch_in_the_plan() {
        let rb = r#"
name: gated
hosts: app
serial: 2
steps:
  - name: stop
    run: "stop {{ host.name }}"
    confirm: "Stop {{ hosts | length }} servers?"
  - name: tell
    on: "lb*"
    manual: "Tell the duty officer"
"#;
        let p = planner(rb, INVENTORY, None);
        let plan = p.plan().unwrap();
        let stop = &plan.steps[0].gates;
        let gate = stop.of(AnswerKind::YesNo).unwrap();
        assert_eq!(gate.text, "Stop 3 servers?");
        assert_eq!(
            gate.question(Some(1)),
            "Stop 3 servers? (batch 1/2: oa1, oa2)"
        );
        assert_eq!(gate.question(Some(2)), "Stop 3 servers? (batch 2/2: oa3)");
        assert_eq!(gate.question(None), "Stop 3 servers? (on oa1, oa2, oa3)");
        assert!(stop.of(AnswerKind::Done).is_none());
        let tell = &plan.steps[1].gates;
        assert_eq!(tell.0.len(), 1);
        let manual = tell.of(AnswerKind::Done).unwrap();
        assert_eq!(manual.text, "Tell the duty officer");
        assert!(manual.asks.is_empty(), "manual instructions name no hosts");
        let json = crate::report::preview::json(&plan);
        assert!(json.contains("\"confirm\": \"Stop 3 servers?\""), "{json}");
        assert!(
            json.contains("\"manual\": \"Tell the duty officer\""),
            "{json}"
        );
        let text = crate::report::preview::text(&plan);
        // Once per batch, naming the batch's hosts.
        assert!(
            text.contains(
                "gate: Stop 3 servers? (batch 1/2: oa1, oa2) [y/N]\n    gate: Stop 3 servers? (batch 2/2: oa3) [y/N]\n"
            ),
            "{text}"
        );
    }

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

    /// `timeout` goes from the YAML to the plan as a duration, the one the engine
    /// waits on; the dry-run shows it (and the JSON writes it) as the runbook did.
    #[test]
    fn a_step_s_settings_are_typed_in_the_plan_and_shown_as_written() {
        let rb = "name: t\nhosts: app\nsteps:\n  - name: wait\n    run: sleep 1\n    timeout: 90s\n    check: test -f x\n    retries: 2\n    delay: 5s\n    capture: { name: pid, regex: 'pid (\\d+)' }\n    expect: { exit: [0, 3] }\n    rollback: kill 1\n  - name: here\n    local: true\n    run: date\n";
        let plan = planner(rb, INVENTORY, Some("oa1")).plan().unwrap();
        let (wait, here) = (&plan.steps[0], &plan.steps[1]);
        assert_eq!(wait.timeout, Some(std::time::Duration::from_secs(90)));
        assert_eq!(wait.delay, std::time::Duration::from_secs(5));
        assert_eq!(wait.expect.exit, [0, 3]);
        assert_eq!(wait.capture.as_ref().map(|c| c.name.as_str()), Some("pid"));
        assert_eq!(wait.undo.commands, 1);
        assert_eq!(
            (wait.id, wait.action),
            (StepRef::Forward(0), ActionKind::Run)
        );
        assert_eq!(wait.targets[0].host, HostRef::Named("oa1".into()));
        assert_eq!(
            (&here.on, &here.targets[0].host),
            (&On::Control, &HostRef::Control)
        );
        let json = serde_json::to_value(wait).unwrap();
        assert_eq!(json["timeout"], "1m30s");
        assert_eq!(json["delay"], "5s");
        assert_eq!(json["capture"], "pid");
        assert_eq!(json["expect_exit"], serde_json::json!([0, 3]));
        assert_eq!(
            serde_json::to_value(here).unwrap()["on"],
            "localhost (local)"
        );
        assert_eq!(
            serde_json::to_value(&here.targets[0]).unwrap()["host"],
            "localhost"
        );
        let text = crate::report::preview::text(&plan);
        assert!(
            text.contains("(timeout 1m30s; captures `pid`; exit codes [0, 3] count as success)"),
            "{text}"
        );
    }

    #[test]
    fn limit_narrows_the_batches_to_the_serial_hosts_left() {
        let p = planner(ROLLING, INVENTORY, Some("oa3:nginx1"));
        assert_eq!(p.batches(), [vec!["oa3"]]);
        assert_eq!(p.batch_hosts(StepRef::Forward(0), Some(1)), ["nginx1"]);
    }

    #[test]
    fn a_limit_that_leaves_none_of_the_runbook_hosts_is_refused() {
        // Only the load balancer steps would run: nginx edited with no node drained.
        let rb = runbook_from_source(SourceFile::new("rb.yaml", ROLLING)).unwrap();
        let inv = inventory_from_source(SourceFile::new("inv.yaml", INVENTORY)).unwrap();
        let opts = Options {
            limit: Some("nginx1".into()),
            ..Options::default()
        };
        let Err(Error::Usage(message)) = Planner::new(rb, inv, opts) else {
            panic!("a run of the load balancer steps alone was planned");
        };
        assert!(
            message.ends_with("only its steps on `lb*` would run"),
            "{message}"
        );
    }
}
