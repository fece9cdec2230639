//! Gates: the points where the operator must say yes before opsrun goes on.
//!
//! A gate is answered by `--yes` or by a person at a terminal. It never reads
//! an answer from a pipe: with stdin not a terminal and no `--yes`, it fails
//! at once (exit 3) instead of taking a stray "y" or hanging.

use crate::execute::interrupt::{
    count_sigints, discard_typeahead, last_signal, read_line_or_ctrl_c, sigint_mark, terminal_gone,
};
use crate::execute::view::Ui;
use crate::sanitize::{escape_controls, escape_line};
use std::io::IsTerminal;

#[derive(Debug, Clone)]
pub struct Gates {
    pub yes: bool,
    /// `--env` as given on the command line: with `--yes`, it answers a typed gate
    /// only when it is the inventory's own name.
    pub env_explicit: Option<String>,
    pub interactive: bool,
}

/// The answer to a gate, as recorded in the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub confirmed: bool,
    pub text: String,
}

#[derive(Debug, thiserror::Error)]
pub enum GateError {
    /// Ctrl-C, SIGTERM or SIGHUP while the question was open.
    #[error("interrupted ({by}) at \"{prompt}\"")]
    Interrupted { prompt: String, by: &'static str },
    /// The terminal hung up (SIGHUP): nothing may be asked of it any more.
    #[error("gate \"{prompt}\" not asked: the terminal hung up (SIGHUP), and opsrun never asks a terminal that is gone")]
    HungUp { prompt: String },
    #[error("gate \"{prompt}\" needs an answer, but stdin is not a terminal and --yes was not given (opsrun never reads an answer from a pipe)")]
    NoTerminal { prompt: String },
    #[error("inventory `{env}` asks for its name to be typed (confirm: typed): with --yes, name it explicitly with `--env {env}`")]
    TypedNeedsEnv { env: String },
    #[error("cannot read the answer to \"{prompt}\": {source}")]
    Read {
        prompt: String,
        source: std::io::Error,
    },
}

impl Gates {
    pub fn from_env(yes: bool, env_explicit: Option<String>) -> Gates {
        count_sigints();
        Gates {
            yes,
            env_explicit,
            interactive: std::io::stdin().is_terminal(),
        }
    }

    /// Asks `prompt` (a runbook's question, with its step's hosts) on the terminal,
    /// escaped: a carriage return in it could otherwise draw another question over it.
    fn ask(&self, ui: &Ui, prompt: &str) -> Result<String, GateError> {
        if terminal_gone() {
            return Err(GateError::HungUp {
                prompt: prompt.to_string(),
            });
        }
        if !self.interactive {
            return Err(GateError::NoTerminal {
                prompt: prompt.to_string(),
            });
        }
        let mark = sigint_mark();
        let read = ui.suspend(|| {
            discard_typeahead();
            eprint!("{} ", escape_line(prompt));
            read_line_or_ctrl_c(mark)
        });
        match read {
            None => {
                // The answer line was never ended: what follows starts on a line of its own.
                use std::io::Write;
                let _ = writeln!(std::io::stderr());
                Err(GateError::Interrupted {
                    prompt: prompt.to_string(),
                    by: last_signal(),
                })
            }
            Some(r) => r
                .map(|l| l.trim().to_string())
                .map_err(|source| GateError::Read {
                    prompt: prompt.to_string(),
                    source,
                }),
        }
    }

    /// A yes/no question; only `y` or `yes` proceeds.
    pub fn confirm(&self, ui: &Ui, question: &str) -> Result<Answer, GateError> {
        if self.yes {
            return Ok(Answer {
                confirmed: true,
                text: "--yes".into(),
            });
        }
        let text = self.ask(ui, &format!("{question} [y/N]"))?;
        let confirmed = matches!(text.to_lowercase().as_str(), "y" | "yes");
        Ok(Answer { confirmed, text })
    }

    /// The operator types the environment's name: `env` is the inventory's name.
    pub fn typed(&self, ui: &Ui, env: &str) -> Result<Answer, GateError> {
        if self.yes && self.env_explicit.as_deref() == Some(env) {
            return Ok(Answer {
                confirmed: true,
                text: format!("--yes --env {env}"),
            });
        }
        // --yes alone does not answer a typed gate; without a terminal to type
        // at, say what does rather than that --yes is missing.
        if self.yes && !self.interactive {
            return Err(GateError::TypedNeedsEnv {
                env: env.to_string(),
            });
        }
        let text = self.ask(
            ui,
            &format!("This runs against `{env}`. Type the environment name to continue:"),
        )?;
        Ok(Answer {
            confirmed: text == env,
            text,
        })
    }

    /// A manual step: the operator does it by hand, confirms, and may leave a note.
    pub fn manual(
        &self,
        ui: &Ui,
        instructions: &str,
    ) -> Result<(Answer, Option<String>), GateError> {
        ui.suspend(|| {
            eprintln!("  manual step, do this by hand:");
            // Escaped before it is split, so a carriage return shows as in the dry-run.
            for line in escape_controls(instructions.as_bytes()).lines() {
                eprintln!("  | {line}");
            }
        });
        if self.yes {
            return Ok((
                Answer {
                    confirmed: true,
                    text: "--yes".into(),
                },
                None,
            ));
        }
        let answer = self.confirm(ui, "Done?")?;
        if !answer.confirmed {
            return Ok((answer, None));
        }
        let note = self.ask(ui, "Note or ticket id for the log (Enter for none):")?;
        Ok((answer, (!note.is_empty()).then_some(note)))
    }
}
