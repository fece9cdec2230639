//! The binary's edge: parse arguments, dispatch commands, turn errors into exit codes.
//!
//! Receives the process arguments and environment; drives the stages
//! (load → plan → execute, or record/report/sign for `runs`, `log`, `verify`)
//! and produces output and an exit code. One file per subcommand.

pub(crate) mod args;

/// Writes a line to stdout, ignoring a closed pipe (`opsrun runs | head`):
/// the exit code must stay the command's own, never a panic's.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

// After `outln!`, so that every subcommand can use it.
mod check;
mod completions;
mod inventory;
mod list;
mod rollback;
mod run;
mod runs;
mod show;
mod verify;

use check::check;
use completions::completion_command;
use inventory::inventory_tree;
use list::list;
use rollback::rollback;
use run::run;
use runs::runs;
use show::show;
use verify::verify;

use crate::cli::args::{
    Cli, Color, Command, ExecArgs, Format, RollbackArgs, RunArgs, SignArgs, VerifyArgs,
};
use crate::error::{exit, Error};
use crate::execute as runner;
use crate::execute::gate::Gates;
use crate::load::inventory::Inventory;
use crate::load::lint;
use crate::load::{self, Origin};
use crate::plan::{Options, Planner};
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
            // An error may quote a runbook, a journal or what a host or ssh printed.
            eprintln!(
                "{}",
                crate::sanitize::escape_controls(format!("{e:#}").as_bytes())
            );
            code
        }
    }
}

/// A warning about a recorded run: it may quote the journal, which anyone could edit.
fn warn(w: &str) {
    eprintln!("warning: {}", crate::sanitize::escape_line(w));
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
            let hosts: Vec<&crate::load::inventory::Host> = inv.hosts.iter().collect();
            let logins = crate::plan::resolve_logins(&hosts)?;
            outln!("{}", inventory_tree(&inv, &logins).trim_end());
            Ok(exit::OK)
        }
        Command::Runs => runs(&cli.log_dir),
        Command::Log { run, sign } => {
            let dir = crate::record::runs::resolve(&cli.log_dir, &run)?;
            let (view, replay) =
                crate::record::view::read(&dir).map_err(|e| Error::Io(e.to_string()))?;
            for w in &replay.warnings {
                warn(w);
            }
            let signing = signing(&sign)?;
            // The signer must be the operator the log names (`opsrun verify` checks it).
            let me = operator()?;
            // A teammate's signature would replace the operator's with one that
            // `opsrun verify` fails: refused before anything is written.
            match view.start.as_ref().map(|s| &s.operator) {
                Some(ran) if !sign.no_sign && *ran != me => {
                    return Err(Error::Usage(format!(
                        "run {} was run by `{ran}`, and a log is signed by the operator who ran it: signing it as `{me}` would replace its signature with one `opsrun verify` fails; run `opsrun log` as `{ran}` (OPSRUN_OPERATOR and their key)",
                        view.id,
                    ))
                    .into())
                }
                _ => {}
            }
            let written = runner::write_log(&dir, &signing, Some(&me))
                .map_err(|e| Error::Io(e.to_string()))?;
            for n in &written.notes {
                warn(n);
            }
            let log = written.log;
            if let Some(s) = written.signed {
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
        Command::Verify(args) => verify(&args, &cli.log_dir),
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut completion_command(root), "opsrun", &mut script);
            // `opsrun completions zsh | head -1`: a closed pipe ends the output, not the process.
            let _ = std::io::stdout().write_all(&script);
            Ok(exit::OK)
        }
    }
}

/// Who runs opsrun: recorded in the run and shown in the log. It is an
/// identity (the principal of an allowed_signers line, the log's Operator
/// row): one that is not one line of visible text is refused.
pub(crate) fn operator() -> Result<String, Error> {
    let name = std::env::var("OPSRUN_OPERATOR")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(local_user);
    one_line(
        "OPSRUN_OPERATOR",
        name,
        "an operator's name is an identity (an allowed_signers principal, the log's Operator row) and must be one line of visible text",
    )
}

/// A `--ticket` as given: recorded as one row of the log, so one line of visible text.
pub(crate) fn ticket(given: Option<&String>) -> Result<Option<String>, Error> {
    given
        .map(|t| {
            one_line(
                "--ticket",
                t.clone(),
                "a ticket id is one row of the log and must be one line of visible text",
            )
        })
        .transpose()
}

fn one_line(what: &'static str, text: String, why: &'static str) -> Result<String, Error> {
    match crate::sanitize::is_one_visible_line(&text) {
        true => Ok(text),
        false => Err(Error::NotOneLine {
            what,
            shown: crate::sanitize::escape_line(&text),
            why,
        }),
    }
}

/// The login name on the control machine.
pub(crate) fn local_user() -> String {
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

/// The key that signs what this invocation writes, as the current operator.
/// Loaded up front: no key (without `--no-sign`) or no passphrase stops before anything runs.
pub(crate) fn signing(args: &SignArgs) -> Result<Signing, Error> {
    let opts = SignOptions {
        key: args.sign_key.clone(),
        identity: operator()?,
    };
    Ok(Signing::new(args.no_sign, &opts)?)
}
