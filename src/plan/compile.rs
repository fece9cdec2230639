//! Template compilation: every template of a runbook compiled once, all syntax
//! errors reported together, and the vars each one reads.

use super::*;

pub(super) struct StepTemplates {
    pub(super) action: Option<TemplateId>,
    pub(super) upload: Option<(TemplateId, TemplateId, Option<TemplateId>)>,
    pub(super) as_user: Option<TemplateId>,
    pub(super) cwd: Option<TemplateId>,
    pub(super) env: Vec<(String, TemplateId)>,
    pub(super) stdin: Option<TemplateId>,
    pub(super) when: Option<TemplateId>,
    pub(super) check: Option<TemplateId>,
    pub(super) rollback: Vec<TemplateId>,
    pub(super) confirm: Option<TemplateId>,
    pub(super) expect_stdout: Option<TemplateId>,
    pub(super) expect_stdout_not: Option<TemplateId>,
}

/// A file uploaded with `template: true`, compiled once however many hosts render it.
pub(super) struct FileTemplate {
    pub(super) templates: Templates,
    pub(super) id: TemplateId,
    pub(super) source: Arc<crate::diagnostic::SourceFile>,
}

/// Compiles an upload's source file (`template: true`) as one template; errors
/// point into that file, or at the step's `src` when it cannot be read.
pub(super) fn compile_file_template(
    runbook: &Runbook,
    step: &Step,
    src: &str,
) -> Result<Arc<FileTemplate>, Diagnostic> {
    let at_src = |message: String| {
        let span = match &step.action {
            Action::Upload(u) => u.src.span,
            _ => step.span,
        };
        Diagnostic::error(
            runbook.source.clone(),
            span,
            format!("in step `{}`: {message}", step.name),
            None,
        )
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
    templates.belong_to(format!("in upload template `{src}`"));
    let id = templates
        .add(&whole, Kind::Text)
        .map_err(|e| e.in_file(&source))?;
    Ok(Arc::new(FileTemplate {
        templates,
        id,
        source,
    }))
}

/// Per runbook var, every name it reads, through the vars it reads in turn.
pub(super) fn var_reads(
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
    pub(super) fn ids(&self) -> Vec<TemplateId> {
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

pub(super) type Compiled = (
    Templates,
    Vec<(String, TemplateId)>,
    Vec<StepTemplates>,
    Vec<StepTemplates>,
);

/// Compiles every template of a runbook, reporting all syntax errors at once.
/// The templates, and the syntax errors of those that failed (which render as
/// empty text, so the caller can look for the other errors of the file too).
pub(super) fn compile_templates(rb: &Runbook) -> (Compiled, Option<Error>) {
    let mut t = Templates::for_source(rb.source.clone());
    let mut errs = Vec::new();
    let vars = rb
        .vars
        .iter()
        .map(|(n, x)| {
            t.belong_to(format!("in var `{n}`"));
            (n.clone(), t.add_noting(x, Kind::Text, &mut errs))
        })
        .collect();
    let forward = rb
        .steps
        .iter()
        .map(|s| {
            t.belong_to(format!("in step `{}`", s.name));
            compile_step(s, &mut t, &mut errs)
        })
        .collect();
    let guide = rb
        .rollback
        .iter()
        .map(|s| {
            t.belong_to(format!("in rollback step `{}`", s.name));
            compile_step(s, &mut t, &mut errs)
        })
        .collect();
    let compiled = (t, vars, forward, guide);
    let mut errors: Vec<Error> = errs.into_iter().map(|e| yaml_err(rb, e)).collect();
    errors.extend(super::stdin_only::secrets_in_argv_only(rb, &compiled));
    (compiled, Error::merge(errors))
}

/// `opsrun check`: the runbook's templates compile (no inventory is needed for that).
pub fn check_templates(rb: &Runbook) -> Result<(), Error> {
    let ((t, vars, forward, guide), errors) = compile_templates(rb);
    if let Some(e) = errors {
        return Err(e);
    }
    // `check` has no inventory to render with, but a template that fails
    // whatever its variables hold (a bomb: `range(100000)` nested in itself; or
    // one that reads none: `{{ range(100000000) }}`) must fail here as in the
    // dry-run: each is rendered once with every variable it reads as empty text.
    let mut found = Vec::new();
    let mut probe = |what: String, id: TemplateId| {
        if let Some(e) = t.fails_whatever_its_variables(id) {
            let span = t.text(id).span;
            found.push(yaml_err(rb, yaml::Error::new(span, format!("{what}: {e}"))));
        }
    };
    for (name, id) in &vars {
        probe(format!("in var `{name}`"), *id);
    }
    for (step, ts) in rb.steps.iter().zip(&forward) {
        for id in ts.ids() {
            probe(format!("in step `{}`", step.name), id);
        }
    }
    for (step, ts) in rb.rollback.iter().zip(&guide) {
        for id in ts.ids() {
            probe(format!("in rollback step `{}`", step.name), id);
        }
    }
    // An upload template whose path is plain text is the same file for every
    // host: it is compiled and probed like the runbook's own templates.
    for step in rb.steps.iter().chain(&rb.rollback) {
        let Action::Upload(u) = &step.action else {
            continue;
        };
        if !u.template || u.src.src.contains("{{") || u.src.src.contains("{%") {
            continue;
        }
        match compile_file_template(rb, step, &u.src.src) {
            Err(d) => found.push(Error::from(d)),
            Ok(ft) => {
                if let Some(e) = ft.templates.fails_whatever_its_variables(ft.id) {
                    found.push(Error::from(Diagnostic::error(
                        ft.source.clone(),
                        ft.templates.text(ft.id).span,
                        format!("in step `{}`: {e}", step.name),
                        None,
                    )));
                }
            }
        }
    }
    Error::merge(found).map_or(Ok(()), Err)
}

/// A runbook with structural problems, reported with the template problems of
/// what did decode (`load::Loaded`), all in one pass in file order: a bad param
/// must not hide a broken template. Syntax errors need no inventory; given one
/// and the run's options (a dry-run or a run), the undefined variables too.
pub fn with_template_problems(
    problems: Error,
    runbook: Runbook,
    run: Option<(Inventory, Options)>,
) -> Error {
    let source = runbook.source.clone();
    let mut found = vec![problems];
    found.extend(check_templates(&runbook).err());
    if let Some((inventory, opts)) = run {
        let planned = Planner::new(runbook, inventory, opts).and_then(|p| p.plan().map(drop));
        // Only located problems: one without a place (a param not given on the
        // command line) is about this run, not about the file being fixed.
        found.extend(
            planned
                .err()
                .filter(|e| matches!(e, Error::Invalid(_) | Error::InvalidAll(_))),
        );
    }
    match Error::merge(found) {
        Some(Error::InvalidAll(mut all)) => {
            // The runbook's problems by position, then those of other files
            // (templated uploads) as found; the sort is stable.
            all.sort_by_key(|d| {
                let elsewhere = !Arc::ptr_eq(&d.source, &source);
                (
                    elsewhere,
                    if elsewhere {
                        Default::default()
                    } else {
                        d.span.start
                    },
                )
            });
            Error::InvalidAll(all)
        }
        Some(e) => e,
        None => Error::Usage("the runbook has problems".into()),
    }
}

pub(super) fn compile_step(
    s: &Step,
    t: &mut Templates,
    errs: &mut Vec<yaml::Error>,
) -> StepTemplates {
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
