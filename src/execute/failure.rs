//! Why one host's part of a step did not succeed: a typed failure, displayed
//! as the reason the terminal, the journal and the log show.

use crate::duration;
use crate::transport::TransportError;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The control side stopped waiting: the step's `timeout` plus the grace passed
    /// with no answer (the remote `timeout` wrapper normally ends the command first).
    #[error("no answer within {} (timeout + grace)", duration::format(*.waited))]
    NoAnswer { waited: Duration },
    /// The remote `timeout` wrapper killed the command (exit 124 or 137).
    #[error("timed out after {}: the command was killed on the host", duration::format(*.timeout))]
    KilledOnHost { timeout: Duration },
    #[error("{0}")]
    ConnectionLost(TransportError),
    /// "Stop now" (a second Ctrl-C, SIGTERM or SIGHUP, or the Ctrl-C menu): opsrun
    /// killed the command on the host before it finished.
    #[error("stopped: the command was killed on the host before it finished ({why})")]
    Stopped { why: String },
    #[error("{0}")]
    Transport(TransportError),
    #[error("no connection to this host")]
    NoConnection,
    /// The step could not be rendered for this host (a value it reads is missing).
    #[error("{0}")]
    Render(crate::error::Error),
    #[error("cannot read upload source `{src}`")]
    UploadUnreadable { src: String },
    /// The command ended with an exit code `expect.exit` does not list (`None`:
    /// killed by a signal); `quote` is the output line that says why.
    #[error("{}", exit_text(*.code, .quote))]
    UnexpectedExit { code: Option<i32>, quote: String },
    /// The rendered `expect.stdout`/`stdout_not` is not a regular expression.
    #[error("invalid regular expression /{shown}/")]
    InvalidPattern { shown: String },
    #[error("stdout does not match /{shown}/")]
    OutputMissing { shown: String },
    #[error("stdout matches /{shown}/")]
    OutputForbidden { shown: String },
    #[error("sha256 on the host does not match the local file ({sha256})")]
    ChecksumMismatch { sha256: String },
    #[error("capture `{name}`: /{regex}/ does not match the output")]
    CaptureMissing { name: String, regex: String },
    #[error("check failed after {}", crate::plural::count(*.attempts, "attempt", "attempts"))]
    CheckFailed { attempts: usize },
    /// The command ended with an exit code `expect.exit` does not list, and its
    /// output could not be saved whole (the log disk is full).
    #[error("{}; its output could not be saved whole (the log disk is full)", exit_text(*.code, ""))]
    OutputNotSaved { code: Option<i32> },
    /// A `rollback:` command failed (`None`: killed by a signal).
    #[error("rollback exit {}: {quote}", .code.map_or("signal".into(), |c| c.to_string()))]
    RollbackExit { code: Option<i32>, quote: String },
}

fn exit_text(code: Option<i32>, quote: &str) -> String {
    match code {
        Some(c) if quote.is_empty() => format!("exit {c}"),
        Some(c) => format!("exit {c}: {quote}"),
        None => "killed by a signal".to_string(),
    }
}

impl Failure {
    /// Whether the command may have been partly applied because it did not run to
    /// its end: recorded as interrupted, and undone by a rollback.
    pub fn is_interrupted(&self) -> bool {
        matches!(self, Failure::ConnectionLost(_) | Failure::Stopped { .. })
    }

    /// Whether the step's `timeout` ended it: recorded as timed out, not failed.
    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            Failure::NoAnswer { .. } | Failure::KilledOnHost { .. }
        )
    }
}

impl From<TransportError> for Failure {
    fn from(e: TransportError) -> Self {
        match e {
            TransportError::Disconnected { .. } => Failure::ConnectionLost(e),
            e => Failure::Transport(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_reads_as_the_reason_recorded_by_earlier_builds() {
        let cases = [
            (
                Failure::NoAnswer {
                    waited: Duration::from_secs(25),
                },
                "no answer within 25s (timeout + grace)",
            ),
            (
                Failure::KilledOnHost {
                    timeout: Duration::from_secs(5),
                },
                "timed out after 5s: the command was killed on the host",
            ),
            (
                Failure::UnexpectedExit {
                    code: Some(2),
                    quote: String::new(),
                },
                "exit 2",
            ),
            (
                Failure::UnexpectedExit {
                    code: Some(1),
                    quote: "tar: x: Cannot open".into(),
                },
                "exit 1: tar: x: Cannot open",
            ),
            (
                Failure::UnexpectedExit {
                    code: None,
                    quote: "ignored".into(),
                },
                "killed by a signal",
            ),
            (
                Failure::RollbackExit {
                    code: None,
                    quote: "gone".into(),
                },
                "rollback exit signal: gone",
            ),
            (
                Failure::CheckFailed { attempts: 1 },
                "check failed after 1 attempt",
            ),
            (
                Failure::CaptureMissing {
                    name: "pid".into(),
                    regex: "pid (\\d+)".into(),
                },
                "capture `pid`: /pid (\\d+)/ does not match the output",
            ),
        ];
        for (f, text) in cases {
            assert_eq!(f.to_string(), text);
        }
    }

    /// A timeout was once told by the word "grace" in the message: a host named
    /// `grace` whose connection dropped was recorded as timed out.
    #[test]
    fn only_the_timeout_counts_as_a_timeout_whatever_the_host_is_called() {
        let lost = Failure::from(TransportError::Disconnected {
            host: "grace".into(),
        });
        assert!(matches!(lost, Failure::ConnectionLost(_)));
        assert_eq!(lost.to_string(), "host grace: the ssh connection was lost");
        assert!(!lost.is_timeout());
        let waited = Failure::NoAnswer {
            waited: Duration::from_secs(80),
        };
        assert!(waited.is_timeout());
    }
}
