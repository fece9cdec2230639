//! The binary's edge: parse arguments, dispatch commands, turn errors into exit codes.

pub mod args;

/// Writes a line to stdout, ignoring a closed pipe (`opsrun runs | head`):
/// the exit code must stay the command's own, never a panic's.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

use crate::cli::args::{
    Cli, Color, Command, ExecArgs, Format, RollbackArgs, RunArgs, SignArgs, VerifyArgs,
};
use crate::error::{exit, Error};
use crate::execute as runner;
use crate::execute::gate::Gates;
use crate::load::inventory::Inventory;
use crate::load::lint;
use crate::load::{self, Origin};
use crate::plan::{Options, Planner, StepRef};
use crate::record::runs::Recorded;
use crate::report::preview;
use crate::sign::{SignOptions, Signing};
use anyhow::Result;
use clap::{CommandFactory, Parser};
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

/// Runs opsrun with the process arguments; returns the exit code.
pub fn main() -> i32 {
    let args = crate::cli::args::normalize_args(std::env::args().collect());
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    exit::OK
                }
                _ => exit::INVALID_INPUT,
            };
        }
    };
    set_colors(cli.color);
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            let code = e
                .downcast_ref::<Error>()
                .map_or(exit::STEP_FAILED, Error::exit_code);
            eprintln!("{e:#}");
            code
        }
    }
}

fn set_colors(c: Color) {
    let on = match c {
        Color::Always => true,
        Color::Never => false,
        Color::Auto => std::env::var_os("NO_COLOR").is_none() && console::Term::stderr().is_term(),
    };
    console::set_colors_enabled(on);
    console::set_colors_enabled_stderr(on);
}

fn dispatch(cli: Cli) -> Result<i32> {
    let root = Path::new("");
    match cli.command {
        Command::Run(args) => run(&args, root, &cli.log_dir),
        Command::List => list(root),
        Command::Show { runbook } => show(&runbook, root),
        Command::Check { runbooks } => check(&runbooks, root),
        Command::Inventory { env, inventory } => {
            let inv = load::load_inventory(env.as_deref(), inventory.as_deref(), root)?;
            outln!("{}", inventory_tree(&inv).trim_end());
            Ok(exit::OK)
        }
        Command::Runs => runs(&cli.log_dir),
        Command::Log { run, sign } => {
            let dir = crate::record::runs::resolve(&cli.log_dir, &run)?;
            for w in crate::record::journal::read(&dir.join(crate::record::journal::FILE))
                .map_err(|e| Error::Io(e.to_string()))?
                .warnings
            {
                eprintln!("warning: {w}");
            }
            let signing = signing(&sign)?;
            let (log, signed) =
                runner::write_log(&dir, &signing).map_err(|e| Error::Io(e.to_string()))?;
            if let Some(s) = signed {
                eprintln!(
                    "signed by {} ({}): {}",
                    s.signer.identity,
                    s.signer.fingerprint,
                    s.sig.display()
                );
            }
            outln!("{}", log.display());
            Ok(exit::OK)
        }
        Command::Rollback(args) => rollback(&args, &cli.log_dir),
        Command::Verify(args) => verify(&args),
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut completion_command(root), "opsrun", &mut script);
            // `opsrun completions zsh | head -1`: a closed pipe ends the output, not the process.
            let _ = std::io::stdout().write_all(&script);
            Ok(exit::OK)
        }
    }
}

/// Who runs opsrun: recorded in the run and shown in the log.
pub fn operator() -> String {
    std::env::var("OPSRUN_OPERATOR")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(local_user)
}

/// The login name on the control machine.
pub fn local_user() -> String {
    for var in ["USER", "LOGNAME"] {
        if let Ok(u) = std::env::var(var) {
            if !u.is_empty() {
                return u;
            }
        }
    }
    // SAFETY: getpwuid returns a pointer into static storage or null; we copy the name out at once.
    unsafe {
        let pw = libc::getpwuid(libc::getuid());
        if !pw.is_null() {
            if let Ok(name) = std::ffi::CStr::from_ptr((*pw).pw_name).to_str() {
                return name.to_string();
            }
        }
    }
    "unknown".to_string()
}

fn parse_extra(extra: &[String]) -> Result<Vec<(String, String)>, Error> {
    extra
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
            _ => Err(Error::Usage(format!("-e {kv}: expected KEY=VALUE"))),
        })
        .collect()
}

/// Secret values from `OPSRUN_SECRET_<NAME>`, or asked for without echo when `ask` is set.
fn secrets(
    runbook: &crate::load::runbook::Runbook,
    ask: bool,
) -> Result<HashMap<String, String>, Error> {
    let mut out = HashMap::new();
    for p in runbook.params.iter().filter(|p| p.secret) {
        let var = format!("OPSRUN_SECRET_{}", p.name.to_uppercase());
        if let Ok(v) = std::env::var(&var) {
            out.insert(p.name.clone(), check_secret(&p.name, v)?);
            continue;
        }
        if !ask || p.default.is_some() {
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
fn check_secret(name: &str, v: String) -> Result<String, Error> {
    if v.chars().count() < 3 {
        return Err(Error::Usage(format!(
            "secret param `{name}` is shorter than 3 characters: opsrun could not keep it out of logs reliably"
        )));
    }
    Ok(v)
}

/// Builds the planner for a run: load (runbook + inventory) then bind options.
pub fn planner(args: &RunArgs, root: &Path, resume: Option<&Recorded>) -> Result<Planner, Error> {
    let runbook = load::load_runbook(&args.runbook, root)?;
    let inventory = load::load_inventory(args.env.as_deref(), args.inventory.as_deref(), root)?;
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
        ticket: args
            .ticket
            .clone()
            .or_else(|| resume.and_then(|r| r.run.ticket.clone())),
        operator: operator(),
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
                    Some((kind.clone(), runbook.clone()))
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
        let first = (0..runbook.steps.len()).find(|i| {
            let hosts = probe.step_hosts(StepRef::Forward(*i));
            let hosts: Vec<&str> = if runbook.steps[*i].local {
                vec!["localhost"]
            } else {
                hosts.iter().map(String::as_str).collect()
            };
            hosts.iter().any(|h| !r.done.contains(&(*i, h.to_string())))
        });
        match first {
            Some(i) => opts.start_at = Some(runbook.steps[i].name.clone()),
            None => {
                return Err(Error::Usage(format!(
                    "run {} already completed every step on every host: nothing to resume",
                    r.id
                )))
            }
        }
    }
    Planner::new(runbook, inventory, opts)
}

/// The key that signs what this invocation writes, as the current operator.
/// Loaded up front: no key (without `--no-sign`) or no passphrase stops before anything runs.
pub fn signing(args: &SignArgs) -> Result<Signing, Error> {
    let opts = SignOptions {
        key: args.sign_key.clone(),
        identity: operator(),
    };
    Ok(Signing::new(args.no_sign, &opts)?)
}

/// `--dry-run --output plan.md`: the plan as signed Markdown for the change request.
fn write_plan(plan: &crate::plan::Plan, out: &Path, signing: &Signing) -> Result<i32> {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "plan.md".into());
    let signed = signing
        .write_document(out, |signer| preview::markdown(plan, &name, signer))
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

fn run(args: &RunArgs, root: &Path, log_dir: &Path) -> Result<i32> {
    let recorded = match &args.resume {
        Some(spec) => Some(crate::record::runs::load(&crate::record::runs::resolve(
            log_dir, spec,
        )?)?),
        None => None,
    };
    if let Some(r) = &recorded {
        for w in &r.warnings {
            eprintln!("warning: {w}");
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
        let out = match args.format {
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
    let settings = settings(&args.exec, args.env.is_some(), log_dir, mode, signing);
    finish_run(runner::run(&mut planner, settings)?)
}

fn settings(
    exec: &ExecArgs,
    env_given: bool,
    log_dir: &Path,
    mode: runner::Mode,
    signing: crate::sign::Signing,
) -> runner::Settings {
    runner::Settings {
        gates: Gates::from_env(exec.yes, env_given),
        forks: exec.forks as usize,
        verbose: exec.verbose,
        log_dir: log_dir.to_path_buf(),
        operator: operator(),
        break_lock: exec.break_lock,
        mode,
        signing,
    }
}

fn finish_run(result: runner::RunResult) -> Result<i32> {
    // The last line is the log's path, so scripts can pick it up.
    if let Some(log) = &result.log {
        outln!("{}", log.display());
    }
    Ok(result.exit_code)
}

/// `opsrun rollback RUN`: re-plans the recorded runbook and inventory with the
/// run's params, stamp and captures, then undoes it as a run of its own.
fn rollback(args: &RollbackArgs, log_dir: &Path) -> Result<i32> {
    let dir = crate::record::runs::resolve(log_dir, &args.run)?;
    let recorded = crate::record::runs::load(&dir)?;
    for w in &recorded.warnings {
        eprintln!("warning: {w}");
    }
    if let Some(env) = &args.env {
        if env != &recorded.env {
            return Err(Error::Usage(format!(
                "--env {env}: run {} ran on `{}`",
                recorded.id, recorded.env
            ))
            .into());
        }
    }
    let (runbook_path, inventory_path) = recorded
        .events
        .iter()
        .find_map(|e| match e {
            crate::record::events::Event::RunStarted {
                runbook_path,
                inventory_path,
                ..
            } => Some((runbook_path.clone(), inventory_path.clone())),
            _ => None,
        })
        .unwrap_or_default();
    // The copies kept in the run directory are what ran; their original paths keep
    // relative `ssh:` paths (known_hosts_file, ...) resolving as they did.
    let copy = |name: &str,
                original: &str|
     -> Result<std::sync::Arc<crate::diagnostic::SourceFile>, Error> {
        let text = std::fs::read_to_string(dir.join(name)).map_err(|reason| Error::Read {
            path: dir.join(name),
            reason,
        })?;
        Ok(crate::diagnostic::SourceFile::new(original, text))
    };
    let runbook = load::runbook_from_source(copy("runbook.yaml", &runbook_path)?)?;
    let inventory = load::inventory_from_source(copy("inventory.yaml", &inventory_path)?)?;
    let opts = Options {
        params: recorded
            .params
            .iter()
            .filter(|(k, _)| runbook.params.iter().any(|p| &p.name == k && !p.secret))
            .cloned()
            .collect(),
        secrets: secrets(&runbook, !args.dry_run)?,
        // The rollback touches the hosts the run touched, not every host the runbook names.
        limit: recorded.limit.clone(),
        start_at: None,
        ticket: args.ticket.clone().or_else(|| recorded.run.ticket.clone()),
        operator: operator(),
        local_user: local_user(),
        now: crate::clock::now(),
        original_run: Some(recorded.run.clone()),
    };
    let mut planner = Planner::new(runbook, inventory, opts)?;
    // Planning errors are reported before the run directory is made.
    planner.plan()?;
    if args.dry_run {
        // The same preview the gate shows, from the record alone: no run, no connection.
        let (lines, question) = runner::rollback_preview(&planner, &recorded);
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
    let settings = settings(&args.exec, args.env.is_some(), log_dir, mode, signing);
    finish_run(runner::run(&mut planner, settings)?)
}

fn runs(log_dir: &Path) -> Result<i32> {
    let all = crate::record::runs::list(log_dir);
    if all.is_empty() {
        outln!("no runs recorded in {}", log_dir.display());
        return Ok(exit::OK);
    }
    // A journal is a file anyone could edit: its text is shown escaped, on one line.
    let shown = |s: &str| crate::sanitize::escape_controls(s.as_bytes()).replace(['\n', '\t'], " ");
    let mut rows: Vec<[String; 8]> = vec![[
        "id", "runbook", "env", "ticket", "operator", "result", "start", "duration",
    ]
    .map(String::from)];
    for r in all {
        // In the viewer's local time with its offset: runs recorded in other
        // time zones read in one clock, and the offset says which.
        let start = r
            .start
            .map(|t| {
                t.with_timezone(&chrono::Local)
                    .format("%Y-%m-%d %H:%M:%S %:z")
                    .to_string()
            })
            .unwrap_or_else(|| "-".into());
        let dur = match (r.start, r.end) {
            (Some(a), Some(b)) => crate::duration::format((b - a).to_std().unwrap_or_default()),
            _ => "-".into(),
        };
        let runbook = if r.kind == "run" || r.kind.is_empty() {
            r.runbook.clone()
        } else {
            format!("{} ({})", r.runbook, r.kind)
        };
        rows.push([
            shown(&r.id),
            shown(&runbook),
            shown(&r.env),
            r.ticket.as_deref().map_or_else(|| "-".into(), shown),
            shown(&r.operator),
            r.result(),
            start,
            dur,
        ]);
    }
    // Widths in terminal columns: a CJK character takes two.
    let mut widths = [0usize; 8];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(console::measure_text_width(cell));
        }
    }
    for row in &rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let padded = console::pad_str(cell, widths[i], console::Alignment::Left, None);
                line.push_str(&padded);
                line.push_str("  ");
            }
        }
        outln!("{}", line.trim_end());
    }
    Ok(exit::OK)
}

fn verify(args: &VerifyArgs) -> Result<i32> {
    let opts = crate::sign::VerifyOptions {
        allowed_signers: args.allowed_signers.clone(),
        identity: args.identity.clone(),
    };
    let v = crate::sign::verify(&args.log, &opts).map_err(Error::from)?;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "document   {}", v.document.display());
    let _ = writeln!(out, "signature  {}", v.sig.display());
    let _ = writeln!(
        out,
        "signer     {} (key {}{})",
        v.identity.as_deref().unwrap_or("(not stated)"),
        v.fingerprint.as_deref().unwrap_or("unknown"),
        v.algorithm
            .as_deref()
            .map(|a| format!(", {a}"))
            .unwrap_or_default()
    );
    let _ = writeln!(
        out,
        "signed at  {}",
        v.signed_at.as_deref().unwrap_or("(not stated)")
    );
    for c in &v.checks {
        let mark = if c.ok {
            console::style("ok    ").green()
        } else {
            console::style("FAILED").red().bold()
        };
        let _ = writeln!(
            out,
            "{mark}  {}: {}",
            c.name,
            crate::sanitize::escape_controls(c.detail.as_bytes())
        );
    }
    if !v.authenticated && args.allowed_signers.is_none() {
        let _ = writeln!(
            out,
            "{} signer NOT AUTHENTICATED: without --allowed-signers the key is simply the one the signature carries, and anyone able to edit the log could re-sign it with their own. Compare the fingerprint with the signer's known key, or pass --allowed-signers FILE.",
            console::style("warning:").yellow().bold()
        );
    }
    let failed = v.checks.iter().filter(|c| !c.ok).count();
    if v.ok() {
        let _ = writeln!(
            out,
            "result     {} ({} passed{})",
            console::style("VERIFIED").green().bold(),
            crate::plural::count(v.checks.len(), "check", "checks"),
            if v.authenticated {
                ", signer authenticated"
            } else {
                ", signer not authenticated"
            }
        );
        Ok(exit::OK)
    } else {
        let _ = writeln!(
            out,
            "result     {} ({failed} of {} failed)",
            console::style("FAILED").red().bold(),
            crate::plural::count(v.checks.len(), "check", "checks")
        );
        Ok(exit::STEP_FAILED)
    }
}

fn list(root: &Path) -> Result<i32> {
    let books = load::list_runbooks(root);
    let width = books.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
    for (name, origin) in books {
        let where_ = match &origin {
            Origin::File(p) => p.display().to_string(),
            Origin::Library(_) => "built-in".to_string(),
        };
        let desc = summary(&name, root).unwrap_or_default();
        outln!("{name:<width$}  {desc}  [{where_}]");
    }
    Ok(exit::OK)
}

/// What `opsrun list` says of a runbook: its description's first sentence.
fn summary(name: &str, root: &Path) -> Option<String> {
    match load::find_runbook(name, root).and_then(|(src, _)| load::runbook_from_source(src)) {
        Ok(rb) => rb.description.as_deref().map(first_sentence),
        Err(_) => Some("(invalid: run `opsrun check`)".to_string()),
    }
}

/// The command line as completion scripts see it. Runbooks are run as
/// `opsrun NAME`, so each one found (here and in the library) is offered as a
/// command with `run`'s flags; `show` and `check` offer the names and `--env`
/// the inventories. They are those present when the script is generated.
fn completion_command(root: &Path) -> clap::Command {
    // clap keeps possible values as `&'static str`; this process ends right after.
    let leak =
        |v: Vec<String>| -> Vec<&'static str> { v.into_iter().map(|s| &*s.leak()).collect() };
    let envs = leak(load::list_envs(root));
    let mut names: Vec<String> = load::list_runbooks(root)
        .into_iter()
        .map(|(n, _)| n)
        // A name that is a command, or that a shell would split, cannot be completed as one.
        .filter(|n| {
            !crate::cli::args::SUBCOMMANDS.contains(&n.as_str())
                && !n.starts_with('-')
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        })
        .collect();
    // `x.yaml` next to `x.yml`: one command (clap refuses two of a name).
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.clone()));
    let with_envs =
        |a: clap::Arg| a.value_parser(clap::builder::PossibleValuesParser::new(envs.clone()));
    let mut cmd = Cli::command()
        .mut_subcommand("run", |c| c.mut_arg("env", with_envs))
        .mut_subcommand("inventory", |c| c.mut_arg("env", with_envs))
        .mut_subcommand("rollback", |c| c.mut_arg("env", with_envs));
    let books = leak(names);
    for (sub, arg) in [("show", "runbook"), ("check", "runbooks")] {
        cmd = cmd.mut_subcommand(sub, |c| {
            c.mut_arg(arg, |a| {
                a.value_parser(clap::builder::PossibleValuesParser::new(books.clone()))
            })
        });
    }
    let run = cmd
        .find_subcommand("run")
        .cloned()
        .unwrap_or_else(|| clap::Command::new("run"));
    for &name in &books {
        let about = summary(name, root).unwrap_or_else(|| "Run this runbook".into());
        cmd = cmd.subcommand(
            clap::Command::new(name).about(about).args(
                run.get_arguments()
                    .filter(|a| a.get_id() != "runbook")
                    .cloned(),
            ),
        );
    }
    cmd
}

/// A description's first sentence, whole even when it runs over several lines
/// (a cut mid-sentence reads as a different statement), as one line with
/// control characters escaped: the file could hold anything.
fn first_sentence(description: &str) -> String {
    let text = description.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut end = text.len();
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let next_blank = chars.peek().map_or(true, |(_, n)| *n == ' ');
        if matches!(c, '。' | '！' | '？') || (matches!(c, '.' | '!' | '?') && next_blank) {
            end = i + c.len_utf8();
            break;
        }
    }
    crate::sanitize::escape_controls(&text.as_bytes()[..end])
}

fn show(name: &str, root: &Path) -> Result<i32> {
    let rb = load::load_runbook(name, root)?;
    outln!("{}  ({})", rb.name, rb.source.display_path());
    if let Some(v) = &rb.version {
        outln!("version: {v}");
    }
    if let Some(d) = &rb.description {
        outln!("\n{}", d.trim());
    }
    if let Some(h) = &rb.hosts {
        outln!("\nhosts: {}", h.src);
    }
    outln!("\nparams:");
    if rb.params.is_empty() {
        outln!("  (none)");
    }
    for p in &rb.params {
        let mut attrs = vec![format!("{:?}", p.kind).to_lowercase()];
        if p.required {
            attrs.push("required".into());
        }
        if p.secret {
            attrs.push(format!(
                "secret, from OPSRUN_SECRET_{} or a prompt",
                p.name.to_uppercase()
            ));
        }
        if let Some(d) = &p.default {
            attrs.push(format!("default {d}"));
        }
        if !p.choices.is_empty() {
            attrs.push(format!("one of {}", p.choices.join("|")));
        }
        outln!(
            "  {:<14} {}  ({})",
            p.name,
            p.description.as_deref().unwrap_or(""),
            attrs.join(", ")
        );
    }
    let describe = |prefix: &str, steps: &[crate::load::runbook::Step]| {
        for (i, s) in steps.iter().enumerate() {
            let mut marks = Vec::new();
            if s.confirm.is_some() {
                marks.push("gate");
            }
            if !s.rollback.is_empty() {
                marks.push("has rollback");
            }
            if s.local {
                marks.push("local");
            }
            let on =
                s.on.as_ref()
                    .map(|o| format!(" on {}", o.src))
                    .unwrap_or_default();
            let marks = if marks.is_empty() {
                String::new()
            } else {
                format!("  [{}]", marks.join(", "))
            };
            outln!(
                "  {prefix}{:<3} {}  ({}{on}){marks}",
                i + 1,
                s.name,
                s.action.kind()
            );
        }
    };
    outln!("\nsteps:");
    describe("", &rb.steps);
    outln!("\nrollback guide:");
    if rb.rollback.is_empty() {
        outln!("  (none: `opsrun rollback` undoes completed steps with their own `rollback`)");
    }
    describe("R", &rb.rollback);
    Ok(exit::OK)
}

fn check(names: &[String], root: &Path) -> Result<i32> {
    let mut problems = 0usize;
    let mut checked = 0usize;
    let mut report = |label: String, result: Result<Vec<crate::diagnostic::Diagnostic>, Error>| {
        checked += 1;
        match result {
            Ok(warnings) if warnings.is_empty() => outln!("ok       {label}"),
            Ok(warnings) => {
                problems += warnings.len();
                outln!(
                    "warning  {label}: {}",
                    crate::plural::count(warnings.len(), "lint warning", "lint warnings")
                );
                for w in warnings {
                    eprintln!("{w}\n");
                }
            }
            Err(e) => {
                problems += e.problems();
                outln!("error    {label}");
                eprintln!("{e}\n");
            }
        }
    };
    let books: Vec<String> = if names.is_empty() {
        load::list_runbooks(root)
            .into_iter()
            .map(|(n, _)| n)
            .collect()
    } else {
        names.to_vec()
    };
    for name in &books {
        // Template syntax needs no inventory: `check` finds those errors too.
        let result = load::load_runbook(name, root).and_then(|rb| {
            crate::plan::check_templates(&rb)?;
            Ok(lint::lint(&rb))
        });
        report(format!("runbook {name}"), result);
    }
    if names.is_empty() {
        for env in load::list_envs(root) {
            let result = load::load_inventory(Some(&env), None, root).map(|_| Vec::new());
            report(format!("inventory {env}"), result);
        }
    }
    if problems > 0 {
        eprintln!(
            "{} in {}",
            crate::plural::count(problems, "problem", "problems"),
            crate::plural::count(checked, "file", "files")
        );
        Ok(exit::INVALID_INPUT)
    } else {
        outln!(
            "{} checked, no problems",
            crate::plural::count(checked, "file", "files")
        );
        Ok(exit::OK)
    }
}

fn inventory_tree(inv: &Inventory) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{}  ({}, {})",
        inv.name,
        inv.source.display_path(),
        crate::plural::count(inv.hosts.len(), "host", "hosts")
    );
    for (gi, g) in inv.groups.iter().enumerate() {
        let last_g = gi + 1 == inv.groups.len();
        let _ = writeln!(o, "{} {}", if last_g { "└──" } else { "├──" }, g.name);
        for (hi, hname) in g.hosts.iter().enumerate() {
            let last_h = hi + 1 == g.hosts.len();
            let Some(h) = inv.host(hname) else { continue };
            let conn = match h.connection {
                crate::transport::ConnectionKind::Local => "local".to_string(),
                crate::transport::ConnectionKind::Ssh => {
                    let user = h
                        .ssh
                        .user
                        .as_deref()
                        .map(|u| format!("{u}@"))
                        .unwrap_or_default();
                    let port = h.ssh.port.map(|p| format!(":{p}")).unwrap_or_default();
                    format!("ssh {user}{}{port}", h.address)
                }
            };
            let _ = writeln!(
                o,
                "{}   {} {}  ({conn})",
                if last_g { " " } else { "│" },
                if last_h { "└──" } else { "├──" },
                h.name
            );
        }
    }
    o
}
