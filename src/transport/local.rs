//! Local transport: each command is a `/bin/sh -c LINE` subprocess of opsrun.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Instant;

use super::{pump, Command, Endpoint, Outcome, Stdin, Stream, TransportError};

#[derive(Debug, Clone)]
pub struct LocalConnection {
    host: String,
    /// `TMPDIR` for every command: the run's own directory, removed when it ends.
    tmpdir: Option<PathBuf>,
}

impl LocalConnection {
    pub fn new(ep: &Endpoint) -> LocalConnection {
        LocalConnection {
            host: ep.host.clone(),
            tmpdir: None,
        }
    }

    /// Commands see `TMPDIR=dir`, so what they create with `mktemp` goes away with it.
    pub fn with_tmpdir(ep: &Endpoint, dir: PathBuf) -> LocalConnection {
        LocalConnection {
            tmpdir: Some(dir),
            ..LocalConnection::new(ep)
        }
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub async fn exec(
        &self,
        cmd: &Command,
        sink: &mut (dyn FnMut(Stream, &[u8]) + Send),
    ) -> Result<Outcome, TransportError> {
        let start = Instant::now();
        let mut command = tokio::process::Command::new("/bin/sh");
        for k in super::secret_env_vars() {
            command.env_remove(k);
        }
        if let Some(dir) = &self.tmpdir {
            command.env("TMPDIR", dir);
        }
        command
            .arg("-c")
            .arg(&cmd.line)
            .stdin(match cmd.stdin {
                Stdin::None => Stdio::null(),
                _ => Stdio::piped(),
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // If the engine gives up on a command (timeout, Ctrl-C), dropping the
            // future must not leave the shell running.
            .kill_on_drop(true);
        // A session of its own, as sshd gives each channel: the terminal's
        // Ctrl-C reaches opsrun only (which decides what stops), and "stop now"
        // kills the command's session (`shell::envelope`), never opsrun's own.
        // SAFETY: setsid is async-signal-safe and has no preconditions.
        unsafe {
            command.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let mut child = command.spawn().map_err(|source| TransportError::Spawn {
            host: self.host.clone(),
            source,
        })?;
        let stdin = child.stdin.take();
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            unreachable!("stdout and stderr were requested as pipes")
        };

        let (out, err) = pump(&self.host, stdin, &cmd.stdin, stdout, stderr, sink).await?;

        let status = child.wait().await.map_err(|source| TransportError::Io {
            host: self.host.clone(),
            what: "waiting for the command",
            source,
        })?;
        Ok(Outcome {
            exit_code: status.code(),
            stdout: out,
            stderr: err,
            duration: start.elapsed(),
        })
    }
}
