//! `opsrun completions SHELL`: a completion script that offers runbooks and environments.

use super::list::summary;
use super::*;

/// The command line as completion scripts see it. Runbooks are run as
/// `opsrun NAME`, so each one found (here and in the library) is offered as a
/// command with `run`'s flags; `show` and `check` offer the names and `--env`
/// the inventories. They are those present when the script is generated.
pub(super) fn completion_command(root: &Path) -> clap::Command {
    // clap keeps possible values as `&'static str`; this process ends right after.
    let leak =
        |v: Vec<String>| -> Vec<&'static str> { v.into_iter().map(|s| &*s.leak()).collect() };
    let envs = leak(
        load::list_envs(root)
            .into_iter()
            .filter(|n| one_word(n))
            .collect(),
    );
    let mut names: Vec<String> = load::list_runbooks(root)
        .into_iter()
        .map(|(n, _)| n)
        // A name that is a command cannot be completed as a runbook.
        .filter(|n| one_word(n) && !crate::cli::args::SUBCOMMANDS.contains(&n.as_str()))
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

/// Whether `name` (a file name found on disk) may go into a completion script.
///
/// clap_complete writes possible values unquoted into shell code (bash's
/// `compgen -W "..."`, fish's `-a "..."`), where `$(...)`, a backquote or a quote
/// in a file name would run when the operator presses TAB. So only names made of
/// characters no shell gives a meaning to are offered; the others can still be
/// typed.
fn one_word(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}
