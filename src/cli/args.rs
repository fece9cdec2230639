//! The command line, as the README's "Command line" section documents it.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "opsrun",
    version,
    about = "Run YAML runbooks over SSH with gates, exact dry-runs, rollback and a signed execution log",
    override_usage = "opsrun <RUNBOOK> --env ENV [OPTIONS]\n       opsrun <COMMAND> [ARGS]",
    after_help = "Run a runbook by name (runbooks/NAME.yaml, else the built-in library) or with `opsrun run FILE`.\nExit codes: 0 success, 1 a step failed, 2 invalid input, 3 not confirmed, 130 interrupted."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// When to use colours: auto (a terminal, and NO_COLOR unset), always, never.
    #[arg(long, global = true, value_enum, default_value_t = Color::Auto)]
    pub color: Color,

    /// Where runs are recorded and read from.
    #[arg(long, global = true, env = "OPSRUN_LOG_DIR", default_value = "runs")]
    pub log_dir: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Color {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a runbook given by file path (or name).
    Run(RunArgs),
    /// List the runbooks found here and in the built-in library.
    List,
    /// Show a runbook's params, steps and rollback guide.
    Show {
        /// Runbook name or file.
        runbook: String,
    },
    /// Validate and lint runbooks and inventories; non-zero on any problem.
    Check {
        /// Runbooks to check (default: every runbook and inventory found).
        runbooks: Vec<String>,
    },
    /// Show an environment's groups and hosts as a tree.
    Inventory {
        /// Environment: reads inventories/ENV.yaml.
        #[arg(long, short = 'E')]
        env: Option<String>,
        /// Inventory file (instead of inventories/ENV.yaml).
        #[arg(long, short = 'i', value_name = "FILE")]
        inventory: Option<PathBuf>,
    },
    /// List past runs: id, runbook, env, ticket, operator, result, start, duration.
    Runs,
    /// (Re)render a run's Markdown log from its journal.
    Log {
        /// Run id, run directory, or the path of its log.
        run: String,
        #[command(flatten)]
        sign: SignArgs,
    },
    /// Undo a recorded run: the runbook's rollback guide, or the completed steps' rollbacks.
    Rollback(RollbackArgs),
    /// Check a log's (or plan's) signature and that every output file it cites is unchanged.
    Verify(VerifyArgs),
    /// Print shell completions.
    Completions {
        /// The shell to write the completion script for.
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Runbook name or file.
    pub runbook: String,

    /// Environment: reads inventories/ENV.yaml.
    #[arg(long, short = 'E')]
    pub env: Option<String>,

    /// Inventory file (instead of inventories/ENV.yaml).
    #[arg(long, short = 'i', value_name = "FILE")]
    pub inventory: Option<PathBuf>,

    /// Set a param: -e KEY=VALUE (repeatable). Secret params come from OPSRUN_SECRET_<NAME> or a prompt.
    #[arg(short = 'e', long = "extra", value_name = "KEY=VALUE")]
    pub extra: Vec<String>,

    /// Show exactly what would run, where, in what order; execute nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// With --dry-run: print the plan as text (the default) or as JSON for tooling.
    // Checked in `run`, not with clap's `requires`: its usage line for a missing
    // --dry-run lists every argument given and read as garbled.
    #[arg(long, value_enum)]
    pub format: Option<Format>,

    /// Change ticket id, recorded in the log.
    #[arg(long)]
    pub ticket: Option<String>,

    /// Only run on hosts matching this pattern.
    #[arg(long)]
    pub limit: Option<String>,

    /// Begin at this step (after a fix).
    #[arg(long, value_name = "STEP")]
    pub start_at: Option<String>,

    /// Continue a failed or interrupted run from the first step not completed on every host,
    /// with its stamp and captures.
    #[arg(long, value_name = "RUN")]
    pub resume: Option<String>,

    /// With --dry-run: write the plan as Markdown to FILE for the change request, signed like a log.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// With --output: replace FILE if it exists.
    #[arg(long)]
    pub force: bool,

    #[command(flatten)]
    pub exec: ExecArgs,

    #[command(flatten)]
    pub sign: SignArgs,
}

/// How a run (or a rollback run) executes: shared by `run` and `rollback`.
#[derive(Debug, Clone, Args)]
pub struct ExecArgs {
    /// Answer yes to every gate (a typed gate also needs --env given explicitly).
    #[arg(long, short = 'y')]
    pub yes: bool,

    /// Hosts run in parallel within a step.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub forks: u32,

    /// Stream remote output.
    #[arg(short, long)]
    pub verbose: bool,

    /// Break a stale host lock (its owner is gone); recorded in the journal.
    #[arg(long)]
    pub break_lock: bool,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// Run id, run directory, or the path of its log.
    pub run: String,

    /// Must match the run's environment when given (a typed gate needs it with --yes).
    #[arg(long, short = 'E')]
    pub env: Option<String>,

    /// Change ticket id for the rollback run (default: the original run's).
    #[arg(long)]
    pub ticket: Option<String>,

    /// Show what would be undone, where, with the exact commands; connect to nothing.
    #[arg(long)]
    pub dry_run: bool,

    #[command(flatten)]
    pub exec: ExecArgs,

    #[command(flatten)]
    pub sign: SignArgs,
}

/// How logs and plans are signed (SSHSIG, namespace `opsrun-log`).
#[derive(Debug, Clone, Args)]
pub struct SignArgs {
    /// SSH key to sign with (default: ~/.ssh/id_ed25519, id_ecdsa, id_rsa). A `.pub` file signs with the key held by ssh-agent. An encrypted key's passphrase comes from OPSRUN_SIGN_PASSPHRASE or a prompt.
    #[arg(long, env = "OPSRUN_SIGN_KEY", value_name = "FILE")]
    pub sign_key: Option<PathBuf>,

    /// Write an unsigned log or plan (it says UNSIGNED at the top).
    #[arg(long)]
    pub no_sign: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The log (or plan) to check, or a run id as for `opsrun log`; its signature is the same path plus `.sig`.
    pub log: PathBuf,

    /// Trusted keys per identity, as for `ssh-keygen -Y verify -f`. Without it the signer is not authenticated.
    #[arg(long, value_name = "FILE")]
    pub allowed_signers: Option<PathBuf>,

    /// Identity (principal) the signer must have in allowed_signers (default: the signer the log names).
    #[arg(long, short = 'I', value_name = "ID")]
    pub identity: Option<String>,
}

/// Commands that are not runbook names: everything else in first position is a runbook.
pub const SUBCOMMANDS: &[&str] = &[
    "run",
    "list",
    "show",
    "check",
    "inventory",
    "runs",
    "log",
    "rollback",
    "verify",
    "completions",
    "help",
];

/// `opsrun upgrade --env prod` is `opsrun run upgrade --env prod`.
pub fn normalize_args(mut args: Vec<String>) -> Vec<String> {
    let mut i = 1;
    while i < args.len() {
        let a = args[i].as_str();
        if matches!(a, "--color" | "--log-dir") {
            // Global options given before the runbook name take a separate value.
            i += 2;
            continue;
        }
        if a.starts_with('-') && a != "-" {
            i += 1;
            continue;
        }
        if !SUBCOMMANDS.contains(&a) {
            args.insert(i, "run".to_string());
        }
        break;
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn v(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    /// Every argument and command of every subcommand says what it is for in `--help`.
    #[test]
    fn every_argument_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            if cmd.get_about().is_none() && !path.is_empty() {
                missing.push(format!("`opsrun{path}` has no about"));
            }
            for a in cmd.get_arguments() {
                match a.get_help() {
                    None => missing.push(format!("`opsrun{path}`: argument `{}`", a.get_id())),
                    Some(h) if h.to_string().contains('\n') => missing.push(format!(
                        "`opsrun{path}`: argument `{}` (not one line)",
                        a.get_id()
                    )),
                    Some(_) => {}
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut cmd = Cli::command();
        cmd.build();
        let mut missing = Vec::new();
        walk(&cmd, "", &mut missing);
        assert!(missing.is_empty(), "without help:\n{}", missing.join("\n"));
    }

    #[test]
    fn runbook_name_becomes_run() {
        assert_eq!(
            normalize_args(v("opsrun upgrade --env prod")),
            v("opsrun run upgrade --env prod")
        );
        assert_eq!(normalize_args(v("opsrun list")), v("opsrun list"));
        assert_eq!(normalize_args(v("opsrun --version")), v("opsrun --version"));
        assert_eq!(
            normalize_args(v("opsrun --color never upgrade --env x")),
            v("opsrun --color never run upgrade --env x")
        );
    }
}
