//! SSH transport: one OpenSSH master connection per host, driven through the `openssh`
//! crate's native multiplexing client. Every `exec` opens a new session channel on the
//! master over its control socket; no process is spawned on the control machine per
//! command.
//!
//! Lifetime of the master: `close()` asks it to stop and waits for the answer. If a
//! `SshConnection` is merely dropped, `openssh::Session`'s `Drop` sends the same stop
//! request synchronously and removes the control directory, so masters do not outlive
//! a normally ending opsrun. Only if opsrun itself is killed (SIGKILL) does a master
//! stay behind (`ControlPersist=yes`); it lives in opsrun's private control directory
//! and can be ended with `ssh -O exit -S <dir>/.ssh-connection*/master x`.

mod connect_error;
mod options;

use std::path::Path;
use std::time::{Duration, Instant};

use openssh::{KnownHosts, Session, SessionBuilder, Stdio};

use super::{pump, Command, Endpoint, Outcome, Stdin, Stream, TransportError};
use connect_error::classify_connect_error;
use options::{control_dir, known_hosts_option, JumpConfig};

/// Detects a dead network path within about 3 × this interval instead of hanging.
const SERVER_ALIVE_INTERVAL: Duration = Duration::from_secs(15);

#[derive(Debug)]
pub struct SshConnection {
    host: String,
    session: Session,
}

impl SshConnection {
    pub async fn connect(ep: &Endpoint) -> Result<SshConnection, TransportError> {
        if ep.address.is_empty() || ep.address.starts_with('-') {
            return Err(TransportError::Connect {
                host: ep.host.clone(),
                address: ep.address.clone(),
                detail: "invalid address (empty, or starts with '-' and would be read as an \
                         ssh option)"
                    .to_string(),
            });
        }
        let control_dir = control_dir(&ep.host)?;

        let mut b = SessionBuilder::default();
        // Strict always: the crate's default (accept-new) would also override a
        // StrictHostKeyChecking set in the user's ssh_config.
        b.known_hosts_check(KnownHosts::Strict)
            .control_directory(&control_dir)
            .server_alive_interval(SERVER_ALIVE_INTERVAL);
        if let Some(user) = &ep.user {
            b.user(user.clone());
        }
        if let Some(port) = ep.port {
            b.port(port);
        }
        if let Some(key) = &ep.identity_file {
            // The crate adds IdentitiesOnly=yes: with an explicit key, agent keys are
            // not offered (servers drop clients after MaxAuthTries wrong keys).
            b.keyfile(key);
        }
        if let Some(timeout) = ep.connect_timeout {
            // ssh only takes whole seconds, and 0 would mean "no timeout".
            let secs = timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0);
            b.connect_timeout(Duration::from_secs(secs.max(1)));
        }
        let known_hosts = match &ep.known_hosts_file {
            Some(extra) => Some(known_hosts_option(ep, extra).await),
            None => None,
        };
        if let Some(files) = &known_hosts {
            b.user_known_hosts_file(files);
        }
        // Kept until the master is up: the hops read these files when they start.
        let jump_config = if ep.jump.is_empty() {
            None
        } else {
            Some(JumpConfig::write(&control_dir, ep, known_hosts.as_deref())?)
        };
        if let Some(config) = &jump_config {
            b.config_file(&config.master);
        } else if let Some(config) = &ep.config_file {
            b.config_file(config);
        }

        let connected = b.connect_mux(&ep.address).await;
        let hop_log = jump_config
            .as_ref()
            .map(JumpConfig::hop_log)
            .unwrap_or_default();
        drop(jump_config);
        match connected {
            Ok(session) => Ok(SshConnection {
                host: ep.host.clone(),
                session,
            }),
            Err(e) => Err(classify_connect_error(ep, e, &hop_log)),
        }
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// The master's control socket (one per connection, hence one per host).
    pub fn control_socket(&self) -> &Path {
        self.session.control_socket()
    }

    pub async fn exec(
        &self,
        cmd: &Command,
        sink: &mut (dyn FnMut(Stream, &[u8]) + Send),
    ) -> Result<Outcome, TransportError> {
        let start = Instant::now();
        // An empty ssh command string would ask the server for an interactive shell.
        let line = if cmd.line.trim().is_empty() {
            ":"
        } else {
            &cmd.line
        };
        // raw: the line is sent untouched as the ssh command string; the remote login
        // shell runs it with `-c`, exactly like `ssh host 'LINE'`.
        let mut remote = self.session.raw_command(line);
        remote
            .stdin(match cmd.stdin {
                Stdin::None => Stdio::null(),
                _ => Stdio::piped(),
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = remote
            .spawn()
            .await
            .map_err(|e| self.exec_error(e, "starting the command"))?;
        let stdin = child.stdin().take();
        let (Some(stdout), Some(stderr)) = (child.stdout().take(), child.stderr().take()) else {
            unreachable!("stdout and stderr were requested as pipes")
        };

        let (out, err) = pump(&self.host, stdin, &cmd.stdin, stdout, stderr, sink).await?;

        let exit_code = match child.wait().await {
            Ok(status) => status.code(),
            // The crate turns exit status 127 into an error; for opsrun it is just the
            // shell's "command not found" status, reported like any other.
            Err(openssh::Error::Remote(e)) if e.kind() == std::io::ErrorKind::NotFound => Some(127),
            // The mux protocol cannot tell "killed by a signal" from "connection lost";
            // asking the master settles it.
            Err(openssh::Error::RemoteProcessTerminated) => {
                if self.session.check().await.is_err() {
                    return Err(TransportError::Disconnected {
                        host: self.host.clone(),
                    });
                }
                None
            }
            Err(e) => return Err(self.exec_error(e, "waiting for the command")),
        };
        Ok(Outcome {
            exit_code,
            stdout: out,
            stderr: err,
            duration: start.elapsed(),
        })
    }

    /// Stops the master connection and removes its control directory.
    pub async fn close(self) -> Result<(), TransportError> {
        let host = self.host;
        self.session.close().await.map_err(|e| match e {
            openssh::Error::Disconnected => TransportError::Disconnected { host },
            e => TransportError::Mux {
                host,
                what: "close",
                detail: error_chain(&e),
            },
        })
    }

    fn exec_error(&self, e: openssh::Error, what: &'static str) -> TransportError {
        let host = self.host.clone();
        match e {
            openssh::Error::Disconnected => TransportError::Disconnected { host },
            openssh::Error::InvalidCommand => TransportError::InvalidCommand { host },
            openssh::Error::ChildIo(source) => TransportError::Io { host, what, source },
            e => TransportError::Mux {
                host,
                what,
                detail: error_chain(&e),
            },
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}
