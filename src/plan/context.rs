//! The template context: what a template on a host sees (run, host, inventory
//! vars, params, captures), built once per host and step and cached.

use super::*;

impl Planner {
    /// Variables of one host (or of the control machine), before captures and runbook vars.
    pub(super) fn base_map(&self, host: Option<&Host>, reveal: Reveal) -> BTreeMap<String, Value> {
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
            None => (
                HostRef::CONTROL_NAME.into(),
                HostRef::CONTROL_NAME.into(),
                Vec::new(),
            ),
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

    /// Names captured by the steps before `upto` (exclusive), in order.
    pub(super) fn capture_names(&self, upto: usize) -> &[String] {
        &self.capture_scopes[upto.min(self.runbook.steps.len())]
    }

    /// The context a step's templates see on a host, plus the names whose values
    /// are only known at run time. Without real captures (planning) the host's
    /// context is the same for every step with the same captures in scope, so
    /// it is built once and shared.
    pub(super) fn context(
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
    pub(super) fn build_context(
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
            let v = match self.render_as(*id, &ctx, reveal) {
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
}
