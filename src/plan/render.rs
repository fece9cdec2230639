//! Rendering one step on one host: the exact command, upload, check and gate
//! text, through the same code for the dry-run and the run.

use super::*;
use crate::shell::StdinVar;

impl Planner {
    /// Where in the file a template failed: at the name at fault when it can be found.
    pub(super) fn error_span(&self, id: TemplateId, e: &RenderError) -> Span {
        if let RenderError::Located { span, .. } = e {
            return *span;
        }
        let text = self.templates.text(id);
        match self.templates.locate_error(id, e) {
            Some((offset, width)) => text.locate(&self.runbook.source, offset, width),
            None => text.span,
        }
    }

    pub(super) fn failure(&self, id: TemplateId, error: RenderError) -> Failure {
        Failure {
            span: self.error_span(id, &error),
            error,
        }
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
            host: host_name.map_or(HostRef::Control, |h| HostRef::Named(h.to_string())),
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
            match self.render_as(id, ctx, reveal) {
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

        // Env values that hold a secret go in on stdin (see `Wrap::stdin_env`):
        // those that read a secret param, and those a captured value with a
        // secret in it turns out to fill (known only now, at run time).
        let mut env: Vec<(String, String)> = Vec::new();
        let mut stdin_env: Vec<StdinVar> = Vec::new();
        let mut env_lines = String::new();
        for (k, id) in &t.env {
            let v = render(*id, &ctx)?;
            let upload = matches!(step.action, Action::Upload(_));
            // A capture from a step that read a secret may hold it transformed:
            // on stdin too, where there is one (an upload's stdin is its file).
            let derived = self.reads_from_secret(*id) && !upload;
            if self.reads_secret(*id) || self.holds_secret(&v) || derived {
                if upload {
                    return Err(diag(
                        &self.runbook,
                        step.span,
                        format!(
                            "in step `{}`: `env.{k}` carries a secret, which opsrun passes on stdin; an upload's stdin is the file, so it cannot take one",
                            step.name
                        ),
                    ));
                }
                let var = StdinVar::new(k, &v, true);
                env_lines.push_str(&var.lines(&v));
                stdin_env.push(var);
            } else {
                env.push((k.clone(), v));
            }
        }
        // These are on the host's command line however they are sent: a
        // captured value that brings a secret into one fails the step here,
        // before anything is sent (a secret param in one is refused earlier,
        // by `stdin_only`).
        let argv_only = |field: &str, v: &Option<String>| -> Result<(), Error> {
            match v {
                Some(v) if self.holds_secret(v) => Err(diag(
                    &self.runbook,
                    step.span,
                    stdin_only::refusal(&step.name, field, "a value that holds a secret"),
                )),
                _ => Ok(()),
            }
        };
        let as_user = t.as_user.map(|id| render(id, &ctx)).transpose()?;
        argv_only("as", &as_user)?;
        let cwd = t.cwd.map(|id| render(id, &ctx)).transpose()?;
        argv_only("cwd", &cwd)?;
        // The command lines are wrapped last, once every value they read from
        // stdin is known: each of them reads all of those, in the same order.
        let mut action_text: Option<String> = None;
        let mut upload_line: Option<String> = None;
        match &step.action {
            Action::Run(_) => {
                action_text = Some(render(t.action.expect("run template"), &ctx)?);
            }
            Action::Script(_) => {
                action_text = Some("sh -e".to_string());
                target.stdin = Some(render(t.action.expect("script template"), &ctx)?);
            }
            Action::Upload(u) => {
                let (src_id, dest_id, owner_id) = t.upload.expect("upload templates");
                let src = render(src_id, &ctx)?;
                let mut dest = render(dest_id, &ctx)?;
                if dest.ends_with('/') {
                    dest.push_str(src.trim_end_matches('/').rsplit('/').next().unwrap_or(&src));
                }
                argv_only("upload.dest", &Some(dest.clone()))?;
                let owner = owner_id.map(|id| render(id, &ctx)).transpose()?;
                argv_only("upload.owner", &owner)?;
                let mut withheld = false;
                let (sha256, shown_sum, content) = if u.template {
                    // The file's name must have rendered before the file can be read.
                    so_far()?;
                    let (content, hidden) =
                        self.render_upload_template(step, host_name, &src, &ctx)?;
                    withheld = hidden;
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
                    !withheld,
                );
                upload_line = Some(line);
                target.stdin = Some(match u.template {
                    true => format!("<contents of {src}, rendered for this host>"),
                    false => format!("<contents of {src}>"),
                });
                target.upload = Some(UploadTarget {
                    src,
                    dest,
                    sha256,
                    templated: u.template,
                    sum_withheld: withheld,
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
                            crate::load::decode::regex_problem(&e)
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
        let check_text = t.check.map(|id| render(id, &after_ctx)).transpose()?;
        let mut rollback_texts = Vec::new();
        for id in &t.rollback {
            rollback_texts.push(render(*id, &after_ctx)?);
        }
        so_far()?;

        // A command text that holds a secret, or whose template reads one
        // (however transformed: `{{ pw | upper }}` is not found by value), is
        // sent on stdin too, and the command line only runs it (`eval`):
        // nothing of it is in `ps`.
        let mut on_stdin = |name: String, text: String, id: Option<TemplateId>| -> String {
            if !self.holds_secret(&text) && !id.is_some_and(|id| self.reads_from_secret(id)) {
                return text;
            }
            let text = shell::wrap(&text, &Wrap::default());
            let var = StdinVar::new(&name, &text, false);
            env_lines.push_str(&var.lines(&text));
            stdin_env.push(var);
            format!("eval \"${name}\"")
        };
        // A script's text is its stdin already: its command line is `sh -e`.
        let run_id = t.action.filter(|_| matches!(step.action, Action::Run(_)));
        let action_text = action_text.map(|x| on_stdin("OPSRUN_RUN".into(), x, run_id));
        let check_text = check_text.map(|x| on_stdin("OPSRUN_CHECK".into(), x, t.check));
        let rollback_texts: Vec<String> = (rollback_texts.into_iter().enumerate())
            .map(|(i, x)| {
                on_stdin(
                    format!("OPSRUN_UNDO_{}", i + 1),
                    x,
                    t.rollback.get(i).copied(),
                )
            })
            .collect();
        let wrap = Wrap {
            as_user: as_user.as_deref(),
            become_with: host.and_then(|h| h.ssh.become_with).unwrap_or_default(),
            cwd: cwd.as_deref(),
            env: &env,
            stdin_env: &stdin_env,
            timeout: step.timeout,
        };
        target.env_stdin = (!env_lines.is_empty()).then_some(env_lines.clone());
        target.command = match upload_line {
            // The upload's stdin is the file: its line reads nothing before it.
            Some(line) => Some(shell::wrap(
                &line,
                &Wrap {
                    stdin_env: &[],
                    ..wrap
                },
            )),
            None => action_text.map(|x| shell::wrap(&x, &wrap)),
        };
        target.check = check_text.map(|x| shell::wrap(&x, &wrap));
        target.rollback = rollback_texts
            .iter()
            .map(|x| shell::wrap(x, &wrap))
            .collect();
        Ok(target)
    }

    /// Whether a template reads a secret param (or a runbook var built from one).
    fn reads_secret(&self, id: TemplateId) -> bool {
        self.templates
            .variables(id)
            .iter()
            .any(|n| self.secret_names.contains(n))
    }

    /// Renders a template as `reveal` shows it: masked, a template that reads
    /// a secret is rendered through its masked twin (`secret_reads::masked_twins`),
    /// once the template itself rendered (its errors point into its own text).
    pub(super) fn render_as(
        &self,
        id: TemplateId,
        ctx: &Context,
        reveal: Reveal,
    ) -> Result<String, RenderError> {
        let own = self.templates.render(id, ctx)?;
        match (reveal, self.masked.get(&id)) {
            (Reveal::Masked, Some(twin)) => Ok(self.templates.render(*twin, ctx).unwrap_or(own)),
            _ => Ok(own),
        }
    }

    /// Whether a template reads a secret, or a value that came from one (a
    /// capture of a step that read one): its text is sent on stdin.
    fn reads_from_secret(&self, id: TemplateId) -> bool {
        self.templates
            .variables(id)
            .iter()
            .any(|n| self.from_secret.contains(n))
    }

    /// Whether a rendered value holds a secret: its value (a run's rendering),
    /// or the mask (the recorded rendering, where secrets and the captured
    /// values that held one are masked), so that what is recorded is sent the
    /// same way as what is run.
    fn holds_secret(&self, v: &str) -> bool {
        v.contains(MASK) || self.redactor.finds(v)
    }

    /// Renders an upload's source file as a template for one host: its text, and
    /// whether it reads a secret. Errors point into that file.
    pub(super) fn render_upload_template(
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
                .or_insert_with(|| compile_file_template(&self.runbook, step, src))
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
                    Error::from(Diagnostic::error(ft.source.clone(), span, message, None))
                }
            }
        })?;
        Ok((content, hidden))
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
    pub(super) fn render_control(&self, r: StepRef, id: TemplateId) -> Result<String, Error> {
        self.render_gate_text(r, id, None, None, None)
    }

    /// A gate's text (`answer`: the `confirm:` question or the manual
    /// instructions) as a run asks it: with the values captured so far, for
    /// `host` (`None`: the control machine), secrets masked. `Ok(None)` when the
    /// step has no such text of a template (`confirm: true` asks a fixed question).
    pub fn gate_text(
        &self,
        r: StepRef,
        answer: AnswerKind,
        host: Option<&str>,
        captures: &Captures,
        batch: Option<usize>,
    ) -> Result<Option<String>, Error> {
        let (step, t) = self.step(r);
        let id = match answer {
            AnswerKind::YesNo => t.confirm.filter(|_| step.confirm.is_some()),
            AnswerKind::Done => t
                .action
                .filter(|_| matches!(step.action, Action::Manual(_))),
        };
        id.map(|id| self.render_gate_text(r, id, host, Some(captures), batch))
            .transpose()
    }

    fn render_gate_text(
        &self,
        r: StepRef,
        id: TemplateId,
        host_name: Option<&str>,
        captures: Option<&Captures>,
        batch: Option<usize>,
    ) -> Result<String, Error> {
        let (step, _) = self.step(r);
        let host =
            host_name.and_then(|n| self.host_index.get(n).map(|i| &self.inventory.hosts[*i]));
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
            .context(host, Reveal::Masked, r, scope, captures, batch)
            .map_err(fail)?;
        self.render_as(id, &ctx, Reveal::Masked)
            .map(|s| template::show_placeholders(s).trim_end().to_string())
            .map_err(|e| fail(self.failure(id, e)))
    }
}
