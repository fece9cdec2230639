//! SSH transport: one OpenSSH master connection per host, driven through the `openssh`
//! crate's native multiplexing client. Every `exec` opens a new session channel on the
//! master over its control socket; no process is spawned on the control machine per
//! command.
//!
//! Lifetime of the master (master.rs): opsrun starts it itself, as its own child in the
//! foreground (`ControlPersist=no`, whatever the user's ssh_config says), in a session
//! of its own, with SIGTERM as its parent-death signal. So:
//! - a Ctrl-C or hangup of the terminal never reaches the master or its jump-host
//!   helper (`ssh -W`); only opsrun handles it, and the connection stays usable;
//! - `close()` asks the master to exit over the mux, reaps it and removes its control
//!   directory; dropping a `SshConnection` SIGTERMs the master (and its helper), reaps
//!   it and removes the directory;
//! - if opsrun dies in any way, even by SIGKILL, the kernel sends each master SIGTERM
//!   and it ends, closing its jump helper: no master outlives opsrun.

mod connect_error;
mod master;
mod options;
pub mod resolve;

use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, Instant};

use openssh::{Session, Stdio};

use super::{pump, Command, Endpoint, Outcome, Stdin, Stream, TransportError};
use connect_error::{classify_connect_error, master_log_message};
use master::{Master, StartError};
use options::{control_dir, known_hosts_option, JumpConfig};

/// Detects a dead network path within about 3 × this interval instead of hanging.
const SERVER_ALIVE_INTERVAL: Duration = Duration::from_secs(15);
/// The connect timeout when neither the inventory nor the user's ssh
/// configuration sets one. ssh's own default is the system's TCP timeout (about
/// two minutes on Linux), during which a run to a host that accepts TCP and never
/// answers printed nothing at all.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Beyond the connect timeout(s): authentication and the jump hops' own handshakes.
const START_MARGIN: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub struct SshConnection {
    host: String,
    /// Attached to the master's socket; does nothing on drop (`Master` does).
    session: Session,
    master: Master,
}

/// The safety bound on starting a master. ssh's ConnectTimeout normally ends a
/// hopeless attempt long before; this catches a server that accepts the handshake
/// and then stalls, which ConnectTimeout does not cover. Each jump hop may spend its
/// own timeout.
fn start_bound(ep: &Endpoint) -> Duration {
    let per_hop = ep.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT);
    let hops = u32::try_from(ep.jump.len() + 1).unwrap_or(u32::MAX);
    per_hop.saturating_mul(hops).saturating_add(START_MARGIN)
}

/// The options every ssh that reaches `ep` gets, before `-F` and the destination:
/// the master's (below), and `ssh -G` asking what they resolve to (resolve.rs), so
/// what is shown is what the connection does.
pub(super) fn login_options(ep: &Endpoint) -> Vec<OsString> {
    // The options the `openssh` crate passed when it launched masters, kept as they
    // were; master.rs adds the ones that tie the master's life to opsrun's.
    let mut options: Vec<OsString> = Vec::new();
    let mut opt = |o: &str| options.extend(["-o".into(), o.into()]);
    opt("BatchMode=yes");
    // Strict always: accept-new would also override a StrictHostKeyChecking set in
    // the user's ssh_config.
    opt("StrictHostKeyChecking=yes");
    if let Some(timeout) = ep.connect_timeout {
        // ssh only takes whole seconds, and 0 would mean "no timeout".
        let secs = timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0);
        opt(&format!("ConnectTimeout={}", secs.max(1)));
    }
    opt(&format!(
        "ServerAliveInterval={}",
        SERVER_ALIVE_INTERVAL.as_secs()
    ));
    if let Some(port) = ep.port {
        options.extend(["-p".into(), port.to_string().into()]);
    }
    if let Some(user) = &ep.user {
        options.extend(["-l".into(), user.into()]);
    }
    if let Some(key) = &ep.identity_file {
        // With an explicit key, agent keys are not offered (servers drop clients
        // after MaxAuthTries wrong keys).
        options.extend(["-o".into(), "IdentitiesOnly=yes".into(), "-i".into()]);
        options.push(key.into());
    }
    options
}

/// `ep` with the connect timeout it will use: the inventory's `connect_timeout`,
/// else the `ConnectTimeout` of the user's ssh configuration (an `-o` on the
/// command line would override it, so it is read first with `ssh -G`), else
/// [`DEFAULT_CONNECT_TIMEOUT`].
async fn with_connect_timeout(ep: &Endpoint) -> Endpoint {
    let mut ep = ep.clone();
    if ep.connect_timeout.is_none() {
        let query = ep.clone();
        let configured = tokio::task::spawn_blocking(move || resolve::resolve(&query))
            .await
            .ok()
            .and_then(Result::ok)
            .and_then(|r| r.connect_timeout);
        ep.connect_timeout = Some(configured.unwrap_or(DEFAULT_CONNECT_TIMEOUT));
    }
    ep
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
        let with_timeout = with_connect_timeout(ep).await;
        let ep = &with_timeout;

        let mut options = login_options(ep);
        let known_hosts = match &ep.known_hosts_file {
            Some(extra) => Some(known_hosts_option(ep, extra).await),
            None => None,
        };
        // Kept until the master is up: the hops read these files when they start.
        let jump_config = if ep.jump.is_empty() {
            None
        } else {
            Some(JumpConfig::write(&control_dir, ep, known_hosts.as_deref())?)
        };
        if let Some(config) = jump_config
            .as_ref()
            .map(|j| &j.master)
            .or(ep.config_file.as_ref())
        {
            options.extend(["-F".into(), config.into()]);
        }
        if let Some(files) = &known_hosts {
            let mut o = OsString::from("UserKnownHostsFile=");
            o.push(files);
            options.extend(["-o".into(), o]);
        }
        options.extend(["--".into(), ep.address.clone().into()]);

        let started = Master::start(&control_dir, options, start_bound(ep)).await;
        let hop_log = jump_config
            .as_ref()
            .map(JumpConfig::hop_log)
            .unwrap_or_default();
        drop(jump_config);
        match started {
            Ok((master, session)) => Ok(SshConnection {
                host: ep.host.clone(),
                session,
                master,
            }),
            Err(StartError::Exited { log }) => Err(classify_connect_error(ep, &log, &hop_log)),
            Err(StartError::NoAnswer { log, waited }) => Err(TransportError::Timeout {
                host: ep.host.clone(),
                address: ep.address.clone(),
                port: ep.port.map_or_else(|| "22".to_string(), |p| p.to_string()),
                detail: format!(
                    "no connection after {}s, ssh was stopped; its log: {}",
                    waited.as_secs(),
                    master_log_message(&format!("{log}\n{hop_log}"))
                ),
            }),
            Err(StartError::Forked) => Err(TransportError::Connect {
                host: ep.host.clone(),
                address: ep.address.clone(),
                detail: "ssh went to the background by itself (ForkAfterAuthentication in \
                         ssh_config?); opsrun keeps its ssh masters in the foreground so that \
                         they end with it, so it stopped that one"
                    .to_string(),
            }),
            Err(StartError::Local { what, source }) => Err(TransportError::Connect {
                host: ep.host.clone(),
                address: ep.address.clone(),
                detail: format!("{what}: {source}"),
            }),
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

    /// Asks the master to exit, waits for it and removes its control directory.
    pub async fn close(self) -> Result<(), TransportError> {
        let host = self.host;
        let asked = self.session.close().await;
        // Whatever the answer: a master that did not take the request is signalled.
        self.master.finish().await;
        asked.map_err(|e| match e {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_bound_allows_every_hop_its_connect_timeout() {
        let mut ep = Endpoint::ssh("web1", "10.0.0.5");
        assert_eq!(start_bound(&ep), DEFAULT_CONNECT_TIMEOUT + START_MARGIN);
        ep.connect_timeout = Some(Duration::from_secs(10));
        ep.jump = vec!["bastion".into(), "inner".into()];
        assert_eq!(start_bound(&ep), Duration::from_secs(60));
    }
}
