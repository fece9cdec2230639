//! `opsrun rollback RUN`: re-plan a recorded run, preview what would be undone, and undo it.

use super::run::{finish_run, secrets_of, settings};
use super::*;

/// `opsrun rollback RUN`: re-plans the recorded runbook and inventory with the
/// run's params, stamp and captures, then undoes it as a run of its own.
pub(super) fn rollback(args: &RollbackArgs, log_dir: &Path) -> Result<i32> {
    let dir = crate::record::runs::resolve(log_dir, &args.run)?;
    let recorded = crate::record::runs::load(&dir)?;
    for w in &recorded.warnings {
        warn(w);
    }
    warn_unanchored(&dir);
    if let Some(env) = &args.env {
        if env != &recorded.env {
            return Err(Error::Usage(format!(
                "--env {env}: run {} ran on `{}`",
                recorded.id, recorded.env
            ))
            .into());
        }
    }
    let ((runbook_path, runbook_sha), (inventory_path, inventory_sha)) = recorded
        .events
        .iter()
        .find_map(|e| match e {
            crate::record::events::Event::RunStarted {
                runbook_path,
                runbook_sha256,
                inventory_path,
                inventory_sha256,
                ..
            } => Some((
                (runbook_path.clone(), runbook_sha256.clone()),
                (inventory_path.clone(), inventory_sha256.clone()),
            )),
            _ => None,
        })
        .unwrap_or_default();
    // The copies kept in the run directory are what ran; their original paths keep
    // relative `ssh:` paths (known_hosts_file, ...) resolving as they did. A copy
    // edited since is not what ran, and anything in it would run on the hosts.
    let copy = |name: &str,
                original: &str,
                expected: &str|
     -> Result<std::sync::Arc<crate::diagnostic::SourceFile>, Error> {
        let path = dir.join(name);
        let text = std::fs::read_to_string(&path).map_err(|reason| Error::Read {
            path: path.clone(),
            reason,
        })?;
        let found = crate::digest::sha256_hex(text.as_bytes());
        if found != expected {
            return Err(Error::CopyChanged {
                path,
                run: recorded.id.clone(),
                expected: expected.to_string(),
                found,
            });
        }
        Ok(crate::diagnostic::SourceFile::new(original, text))
    };
    let runbook = load::runbook_from_source(copy("runbook.yaml", &runbook_path, &runbook_sha)?)?;
    let inventory =
        load::inventory_from_source(copy("inventory.yaml", &inventory_path, &inventory_sha)?)?;
    let mut opts = Options {
        params: recorded
            .params
            .iter()
            .filter(|(k, _)| runbook.params.iter().any(|p| &p.name == k && !p.secret))
            .cloned()
            .collect(),
        // Asked below, once the preview shows which steps run: only what they read.
        secrets: secrets_of(&runbook, false, &|_| false)?,
        // The rollback touches the hosts the run touched, not every host the runbook names.
        limit: recorded.limit.clone(),
        start_at: None,
        ticket: ticket(args.ticket.as_ref())?.or_else(|| recorded.run.ticket.clone()),
        operator: operator()?,
        local_user: local_user(),
        now: crate::clock::now(),
        original_run: Some(recorded.run.clone()),
    };
    let mut planner = Planner::new(runbook.clone(), inventory.clone(), opts.clone())?;
    planner.resolve_logins()?;
    // Planning errors are reported before the run directory is made.
    let mut plan = planner.plan()?;
    let steps = runner::rollback_steps(&plan, &recorded);
    let missing: Vec<String> = planner
        .secrets_read(&steps)
        .into_iter()
        .filter(|s| !opts.secrets.contains_key(s))
        .collect();
    if !args.dry_run && !missing.is_empty() {
        // What the secrets are for, before they are asked; the run shows it again at its gate.
        let (lines, _) = runner::rollback_preview(&planner, &plan, &recorded);
        for l in &lines {
            eprintln!("{l}");
        }
        eprintln!(
            "the steps above read {} {}: asked now (or set {})",
            if missing.len() == 1 {
                "secret param"
            } else {
                "secret params"
            },
            missing
                .iter()
                .map(|m| format!("`{m}`"))
                .collect::<Vec<_>>()
                .join(", "),
            missing
                .iter()
                .map(|m| format!("OPSRUN_SECRET_{}", m.to_uppercase()))
                .collect::<Vec<_>>()
                .join(", ")
        );
        opts.secrets.extend(secrets_of(&runbook, true, &|p| {
            missing.iter().any(|m| m == p)
        })?);
        let mut again = Planner::new(runbook, inventory, opts)?;
        again.keep_logins_of(&planner);
        planner = again;
        plan = planner.plan()?;
    }
    if args.dry_run {
        // The same preview the gate shows, from the record alone: no run, no connection.
        let (lines, question) = runner::rollback_preview(&planner, &plan, &recorded);
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(
            stdout,
            "{}\n",
            console::style("DRY RUN: nothing is executed and no connection is opened.").bold()
        );
        for l in &lines {
            let _ = writeln!(stdout, "{l}");
        }
        let _ = writeln!(
            stdout,
            "\n{} {question} [y/N]",
            console::style("gate:").yellow().bold()
        );
        return Ok(exit::OK);
    }
    let signing = signing(&args.sign)?;
    let mode = runner::Mode::Rollback(Box::new(recorded));
    let settings = settings(&args.exec, args.env.clone(), log_dir, mode, signing)?;
    finish_run(runner::run(&mut planner, settings)?)
}

/// The journal is read against the chain hash its log states; a log whose
/// signature fails may state a forged one (undo events appended, the head
/// moved along). The rollback goes on (undoing must stay possible) and says so.
pub(super) fn warn_unanchored(dir: &Path) {
    if let Err(problem) = runner::log_anchor(&dir.join(runner::LOG_FILE)) {
        warn(&format!(
            "{problem}; the journal's events up to that hash are used as they are: check them against the log on the ticket"
        ));
    }
}
