//! The whole plan, step by step: what `--dry-run` prints and the log records.

use super::*;

impl Planner {
    pub(super) fn plan_step(&self, r: StepRef, number: usize) -> Result<PlanStep, Error> {
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
        let on = match step.on.as_ref().or(self.runbook.hosts.as_ref()) {
            _ if step.local => On::Control,
            Some(t) => On::Pattern(t.src.clone()),
            None => On::Unset,
        };
        Ok(PlanStep {
            id: r,
            number,
            name: step.name.clone(),
            action: match step.action {
                Action::Run(_) => ActionKind::Run,
                Action::Script(_) => ActionKind::Script,
                Action::Upload(_) => ActionKind::Upload,
                Action::Manual(_) => ActionKind::Manual,
                Action::CheckOnly => ActionKind::Check,
            },
            on,
            local: step.local,
            gates: self.gates(r)?,
            timeout: step.timeout,
            retries: step.retries,
            delay: step.delay,
            on_failure: step.on_failure,
            capture: step.capture.as_ref().map(|c| Capture {
                name: c.name.clone(),
                regex: c.regex.clone(),
            }),
            expect: Expect {
                exit: step.expect.exit.clone(),
            },
            service: step.service.clone(),
            undo: Undo {
                commands: step.rollback.len(),
                with_stdin: matches!(step.action, Action::Run(_)),
            },
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
                resolved: self.resolved(&h.name).cloned(),
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
    pub(super) fn plan_steps_parallel(&self) -> Vec<Result<PlanStep, Error>> {
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
}
