//! `opsrun run`: bind params and secrets, plan, then print the plan (`--dry-run`)
//! or hand it to the execute stage; also `--resume`.

use super::*;

pub(super) fn parse_extra(extra: &[String]) -> Result<Vec<(String, String)>, Error> {
    extra
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
            _ => Err(Error::Usage(format!("-e {kv}: expected KEY=VALUE"))),
        })
        .collect()
}

/// Secret values from `OPSRUN_SECRET_<NAME>`, or asked for without echo when `ask` is set.
pub(super) fn secrets(
    runbook: &crate::load::runbook::Runbook,
    ask: bool,
) -> Result<HashMap<String, String>, Error> {
    secrets_of(runbook, ask, &|_| true)
}

/// [`secrets`], asking only for those `wanted` says (the others: from the environment or not at all).
pub(super) fn secrets_of(
    runbook: &crate::load::runbook::Runbook,
    ask: bool,
    wanted: &dyn Fn(&str) -> bool,
) -> Result<HashMap<String, String>, Error> {
    let mut out = HashMap::new();
    for p in runbook.params.iter().filter(|p| p.secret) {
        let var = format!("OPSRUN_SECRET_{}", p.name.to_uppercase());
        if let Ok(v) = std::env::var(&var) {
            out.insert(p.name.clone(), check_secret(&p.name, v)?);
            continue;
        }
        if !ask || p.default.is_some() || !wanted(&p.name) {
            continue;
        }
        let term = console::Term::stderr();
        if !std::io::IsTerminal::is_terminal(&std::io::stdin()) || !term.is_term() {
            if p.required {
                return Err(Error::Usage(format!(
                    "secret param `{}` is not set: export {var}=... or run from a terminal to be asked for it",
                    p.name
                )));
            }
            continue;
        }
        let desc = p
            .description
            .as_deref()
            .map(|d| format!(" ({d})"))
            .unwrap_or_default();
        let _ = term.write_str(&format!("{}{desc}: ", p.name));
        let v = term
            .read_secure_line()
            .map_err(|e| Error::Usage(format!("cannot read secret `{}`: {e}", p.name)))?;
        out.insert(p.name.clone(), check_secret(&p.name, v)?);
    }
    Ok(out)
}

/// Output is scrubbed of secrets by value; one or two characters would either
/// stay visible or mask half the output, so such a secret is refused.
pub(super) fn check_secret(name: &str, v: String) -> Result<String, Error> {
    if v.chars().count() < 3 {
        return Err(Error::Usage(format!(
            "secret param `{name}` is shorter than 3 characters: opsrun could not keep it out of logs reliably"
        )));
    }
    Ok(v)
}

/// Builds the planner for a run: load (runbook + inventory) then bind options.
pub(super) fn planner(
    args: &RunArgs,
    root: &Path,
    resume: Option<&Recorded>,
) -> Result<Planner, Error> {
    let loaded = load::load_partial_runbook(&args.runbook, root)?;
    let inventory = load::load_inventory(args.env.as_deref(), args.inventory.as_deref(), root);
    let runbook = match loaded.problems {
        None => loaded.runbook,
        Some(problems) => {
            // The run cannot start: report the template problems of what decoded
            // with the structural ones, in one pass. No secret is asked for that.
            let run = inventory.ok().map(|inventory| {
                let opts = Options {
                    params: parse_extra(&args.extra).unwrap_or_default(),
                    secrets: secrets(&loaded.runbook, false).unwrap_or_default(),
                    limit: args.limit.clone(),
                    local_user: local_user(),
                    now: crate::clock::now(),
                    ..Options::default()
                };
                (inventory, opts)
            });
            return Err(crate::plan::with_template_problems(
                problems,
                loaded.runbook,
                run,
            ));
        }
    };
    let inventory = inventory?;
    let mut params = parse_extra(&args.extra)?;
    if let Some(r) = resume {
        // The original run's params, unless given again: a resume continues the same change.
        for (k, v) in &r.params {
            if !params.iter().any(|(p, _)| p == k) && runbook.params.iter().any(|p| &p.name == k) {
                params.push((k.clone(), v.clone()));
            }
        }
    }
    let mut opts = Options {
        params,
        secrets: secrets(&runbook, !args.dry_run)?,
        limit: args
            .limit
            .clone()
            .or_else(|| resume.and_then(|r| r.limit.clone())),
        start_at: args.start_at.clone(),
        ticket: ticket(args.ticket.as_ref())?.or_else(|| resume.and_then(|r| r.run.ticket.clone())),
        operator: operator()?,
        local_user: local_user(),
        now: crate::clock::now(),
        original_run: resume.map(|r| r.run.clone()),
    };
    if let Some(r) = resume {
        let (kind, name) = r
            .events
            .iter()
            .find_map(|e| match e {
                crate::record::events::Event::RunStarted { kind, runbook, .. } => {
                    Some((kind.word(), runbook.clone()))
                }
                _ => None,
            })
            .unwrap_or_default();
        if kind == "rollback" || name != runbook.name || r.env != inventory.name {
            return Err(Error::Usage(format!(
                "--resume {}: that is a {kind} of `{name}` on `{}`, not a run of `{}` on `{}`",
                r.id, r.env, runbook.name, inventory.name
            )));
        }
    }
    if let (Some(r), None) = (resume, &args.start_at) {
        let probe = Planner::new(runbook.clone(), inventory.clone(), opts.clone())?;
        match runner::resume_start(&probe, r) {
            Some(i) => opts.start_at = Some(runbook.steps[i].name.clone()),
            None => {
                return Err(Error::Usage(format!(
                    "run {} already completed every step on every host: nothing to resume",
                    r.id
                )))
            }
        }
    }
    let mut planner = Planner::new(runbook, inventory, opts)?;
    planner.resolve_logins()?;
    Ok(planner)
}

/// `--dry-run --output plan.md`: the plan as signed Markdown for the change request.
pub(super) fn write_plan(plan: &crate::plan::Plan, out: &Path, signing: &Signing) -> Result<i32> {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "plan.md".into());
    let signed = signing
        .write_document(out, |signer| {
            crate::report::plan_document::markdown(plan, &name, signer)
        })
        .map_err(Error::from)?;
    if let Some(s) = signed {
        eprintln!(
            "plan signed by {} ({}): {}",
            s.signer.identity,
            s.signer.fingerprint,
            s.sig.display()
        );
    }
    outln!("{}", out.display());
    Ok(exit::OK)
}

/// `--format`, `--output` and `--force` as they go together, before anything is loaded.
fn check_output_args(args: &RunArgs, log_dir: &Path) -> Result<()> {
    let usage = |m: String| -> Result<()> { Err(Error::Usage(m).into()) };
    if !args.dry_run {
        // A plan option without --dry-run once ran the runbook for real.
        for (given, flag) in [
            (args.format.is_some(), "--format"),
            (args.output.is_some(), "--output"),
        ] {
            if given {
                return usage(format!("{flag} only applies to --dry-run: add --dry-run"));
            }
        }
    }
    let Some(out) = &args.output else {
        return Ok(());
    };
    if args.format == Some(Format::Json) {
        return usage(
            "--format json cannot go with --output, which writes the signed Markdown plan: to keep the JSON, redirect it (`--format json > plan.json`)".into(),
        );
    }
    // Run directories are records (a log, its signature, the outputs it cites): a
    // plan written there would replace one, even with --force.
    let inside = |dir: &Path| {
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        match (parent.canonicalize(), dir.canonicalize()) {
            (Ok(p), Ok(d)) => p.starts_with(d),
            _ => false,
        }
    };
    if inside(log_dir) {
        return usage(format!(
            "--output {} is inside the log directory `{}`, which holds the records of runs: write the plan elsewhere",
            out.display(),
            log_dir.display()
        ));
    }
    if !args.force && std::fs::symlink_metadata(out).is_ok() {
        return usage(format!(
            "--output {}: the file exists: add --force to replace it",
            out.display()
        ));
    }
    Ok(())
}

pub(super) fn run(args: &RunArgs, root: &Path, log_dir: &Path) -> Result<i32> {
    check_output_args(args, log_dir)?;
    let recorded = match &args.resume {
        Some(spec) => Some(crate::record::runs::load(&crate::record::runs::resolve(
            log_dir, spec,
        )?)?),
        None => None,
    };
    if let Some(r) = &recorded {
        for w in &r.warnings {
            warn(w);
        }
        if let Some(spec) = &args.resume {
            super::rollback::warn_unanchored(&crate::record::runs::resolve(log_dir, spec)?);
        }
    }
    let mut planner = planner(args, root, recorded.as_ref())?;
    let plan = planner.plan()?;
    // After planning, so a broken runbook is reported as such; before the run,
    // so a missing key or passphrase stops it before anything changes.
    let signing = if args.dry_run && args.output.is_none() {
        Signing::Unsigned
    } else {
        signing(&args.sign)?
    };
    if let (true, Some(out)) = (args.dry_run, &args.output) {
        return write_plan(&plan, out, &signing);
    }
    if args.dry_run {
        let out = match args.format.unwrap_or(Format::Text) {
            Format::Text => preview::text(&plan),
            Format::Json => preview::json(&plan),
        };
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{}", out.trim_end());
        return Ok(exit::OK);
    }
    let mode = match recorded {
        Some(r) => runner::Mode::Resume(Box::new(r)),
        None => runner::Mode::Run,
    };
    let settings = settings(&args.exec, args.env.clone(), log_dir, mode, signing)?;
    finish_run(runner::run(&mut planner, settings)?)
}

pub(super) fn settings(
    exec: &ExecArgs,
    env_given: Option<String>,
    log_dir: &Path,
    mode: runner::Mode,
    signing: crate::sign::Signing,
) -> Result<runner::Settings, Error> {
    Ok(runner::Settings {
        gates: Gates::from_env(exec.yes, env_given),
        forks: exec.forks as usize,
        verbose: exec.verbose,
        log_dir: log_dir.to_path_buf(),
        operator: operator()?,
        break_lock: exec.break_lock,
        mode,
        signing,
    })
}

pub(super) fn finish_run(result: runner::RunResult) -> Result<i32> {
    // The last line is the log's path, so scripts can pick it up.
    if let Some(log) = &result.log {
        outln!("{}", log.display());
    }
    Ok(result.exit_code)
}
