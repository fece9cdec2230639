//! How commands reach a host: SSH (one native-mux master per host) or a local
//! subprocess; in the crate's own tests, also a scripted host (`fake`).
//!
//! Both transports share the same contract: a [`Command`] is one complete POSIX sh
//! command line, its stdin is fed (and then closed) while stdout and stderr are
//! drained concurrently, every chunk is handed to a sink as it arrives, and the
//! output comes back in an [`Outcome`] (whole up to [`KEEP_HEAD`], else its head
//! and tail: memory stays bounded, the sink saves everything).

#[cfg(test)]
pub mod fake;
pub mod local;
pub mod ssh;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How to reach one inventory host (built by the planner from the inventory).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Endpoint {
    /// Inventory host name, used in every message.
    pub host: String,
    pub kind: ConnectionKind,
    /// Hostname/IP or `~/.ssh/config` alias.
    pub address: String,
    pub user: Option<String>,
    pub port: Option<u16>,
    /// ProxyJump chain, first hop first.
    pub jump: Vec<String>,
    pub identity_file: Option<PathBuf>,
    /// Checked in addition to the user's default known_hosts files.
    pub known_hosts_file: Option<PathBuf>,
    /// If set, this ssh_config is used instead of `~/.ssh/config` (`ssh -F`).
    pub config_file: Option<PathBuf>,
    pub connect_timeout: Option<Duration>,
}

impl Endpoint {
    /// An SSH endpoint with every optional setting left to ssh's own configuration.
    pub fn ssh(host: impl Into<String>, address: impl Into<String>) -> Self {
        Endpoint {
            host: host.into(),
            kind: ConnectionKind::Ssh,
            address: address.into(),
            user: None,
            port: None,
            jump: Vec::new(),
            identity_file: None,
            known_hosts_file: None,
            config_file: None,
            connect_timeout: None,
        }
    }

    /// A host whose commands run as subprocesses of opsrun itself.
    pub fn local(host: impl Into<String>) -> Self {
        Endpoint {
            kind: ConnectionKind::Local,
            address: "localhost".to_string(),
            ..Endpoint::ssh(host, "")
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnectionKind {
    Ssh,
    Local,
}

/// What the command reads on its standard input. Always closed after it is written,
/// so the command sees EOF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stdin {
    None,
    Bytes(Vec<u8>),
    /// Streamed in chunks, never read into memory as a whole (uploads can be large).
    File(PathBuf),
}

/// One complete POSIX sh command line plus its stdin.
///
/// Over SSH the line is the ssh "command string", run by the remote user's login
/// shell as `$SHELL -c LINE`; locally it is run as `/bin/sh -c LINE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub line: String,
    pub stdin: Stdin,
}

impl Command {
    pub fn new(line: impl Into<String>) -> Self {
        Command {
            line: line.into(),
            stdin: Stdin::None,
        }
    }

    pub fn with_stdin(line: impl Into<String>, stdin: Stdin) -> Self {
        Command {
            line: line.into(),
            stdin,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// `None`: killed by a signal, or the remote side reported no exit status.
    pub exit_code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub duration: Duration,
}

impl Outcome {
    pub fn success(&self) -> bool {
        self.exit_code == Some(0)
    }
}

/// An open connection to one host.
#[derive(Debug)]
pub enum Connection {
    Ssh(ssh::SshConnection),
    Local(local::LocalConnection),
    /// A scripted host (engine tests); no endpoint dials it.
    #[cfg(test)]
    Fake(fake::FakeConnection),
}

impl Connection {
    pub async fn connect(ep: &Endpoint) -> Result<Connection, TransportError> {
        match ep.kind {
            ConnectionKind::Ssh => ssh::SshConnection::connect(ep).await.map(Connection::Ssh),
            ConnectionKind::Local => Ok(Connection::Local(local::LocalConnection::new(ep))),
        }
    }

    /// The inventory host name this connection belongs to.
    pub fn host(&self) -> &str {
        match self {
            Connection::Ssh(c) => c.host(),
            Connection::Local(c) => c.host(),
            #[cfg(test)]
            Connection::Fake(c) => c.host(),
        }
    }

    /// Runs one command; `sink` receives output chunks as they arrive (for the live
    /// view / -v, and the output files); [`Outcome`] keeps a bounded part (`KEEP_HEAD`).
    pub async fn exec(
        &self,
        cmd: &Command,
        sink: &mut (dyn FnMut(Stream, &[u8]) + Send),
    ) -> Result<Outcome, TransportError> {
        match self {
            Connection::Ssh(c) => c.exec(cmd, sink).await,
            Connection::Local(c) => c.exec(cmd, sink).await,
            #[cfg(test)]
            Connection::Fake(c) => c.exec(cmd, sink).await,
        }
    }

    pub async fn close(self) -> Result<(), TransportError> {
        match self {
            Connection::Ssh(c) => c.close().await,
            Connection::Local(_) => Ok(()),
            #[cfg(test)]
            Connection::Fake(_) => Ok(()),
        }
    }
}

/// Opens every endpoint concurrently (at most `parallel` handshakes at once — the key
/// exchange is CPU-bound); returns results in input order.
pub async fn connect_all(
    eps: &[Endpoint],
    parallel: usize,
) -> Vec<Result<Connection, TransportError>> {
    let permits = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
    let tasks: Vec<_> = eps
        .iter()
        .cloned()
        .map(|ep| {
            let permits = Arc::clone(&permits);
            tokio::spawn(async move {
                // The semaphore is never closed, so acquire cannot fail.
                let _permit = permits.acquire_owned().await;
                Connection::connect(&ep).await
            })
        })
        .collect();
    let mut results = Vec::with_capacity(tasks.len());
    for task in tasks {
        match task.await {
            Ok(result) => results.push(result),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => unreachable!("connect tasks are never aborted"),
        }
    }
    results
}

/// Everything that can go wrong reaching a host or running a command on it.
/// Every message starts with the inventory host name.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error(
        "host {host}: the SSH host key of {target} is not known, and opsrun never accepts \
         host keys automatically.\n  Check the key's fingerprint with the host's owner \
         (`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` on the host), then add it:\n    \
         {keyscan} >> ~/.ssh/known_hosts\n  and compare `{keyscan} | ssh-keygen -lf -` with \
         the fingerprint; or put the line in the inventory's `known_hosts_file`.\n  ssh said: {detail}"
    )]
    UnknownHostKey {
        host: String,
        /// The name ssh looked up in known_hosts (`addr` or `[addr]:port`, or a jump host).
        target: String,
        /// A ready-to-run `ssh-keyscan` invocation for the key in question.
        keyscan: String,
        detail: String,
    },

    #[error(
        "host {host}: WARNING: THE SSH HOST KEY OF {target} HAS CHANGED — connection refused.\n  \
         Someone could be intercepting the connection (man-in-the-middle), or the host was \
         reinstalled or its keys rotated.\n  Do not continue until the new fingerprint is \
         confirmed with the host's owner. Then remove the stale entry:\n    {keygen_r}\n  \
         and add the new key (see `ssh-keyscan`).\n  ssh said: {detail}"
    )]
    HostKeyChanged {
        host: String,
        target: String,
        /// A ready-to-run `ssh-keygen -R` invocation for the stale entry.
        keygen_r: String,
        detail: String,
    },

    #[error(
        "host {host}: authentication failed for {user_at} (publickey; opsrun never prompts). \
         Check the user, the identity_file / ssh-agent keys, and the server's \
         authorized_keys.\n  ssh said: {detail}"
    )]
    AuthFailed {
        host: String,
        user_at: String,
        detail: String,
    },

    #[error(
        "host {host}: connection refused by {address} (port {port}): no SSH server listening \
         there — check the address/port or whether sshd is running.\n  ssh said: {detail}"
    )]
    ConnectionRefused {
        host: String,
        address: String,
        port: String,
        detail: String,
    },

    #[error(
        "host {host}: timed out connecting to {address} (port {port}): host down, \
         filtered by a firewall, or wrong address.\n  ssh said: {detail}"
    )]
    Timeout {
        host: String,
        address: String,
        port: String,
        detail: String,
    },

    #[error("host {host}: cannot resolve address {address}.\n  ssh said: {detail}")]
    Resolve {
        host: String,
        address: String,
        detail: String,
    },

    /// `ssh -G` could not say how the host is reached (a broken ssh_config, a
    /// missing `config_file`): found while planning, before any connection.
    #[error("host {host}: cannot tell how ssh reaches it: {detail}")]
    SshConfig { host: String, detail: String },

    #[error("host {host}: ssh connection to {address} failed.\n  ssh said: {detail}")]
    Connect {
        host: String,
        address: String,
        detail: String,
    },

    #[error("host {host}: cannot prepare the ssh control directory {path}: {reason}")]
    ControlDir {
        host: String,
        path: PathBuf,
        reason: String,
    },

    #[error("host {host}: the command line contains a NUL byte and cannot be sent")]
    InvalidCommand { host: String },

    #[error("host {host}: cannot open stdin file {path}: {source}")]
    StdinFile {
        host: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("host {host}: the ssh connection was lost")]
    Disconnected { host: String },

    #[error("host {host}: could not start the command: {source}")]
    Spawn {
        host: String,
        #[source]
        source: std::io::Error,
    },

    #[error("host {host}: {what}: {source}")]
    Io {
        host: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },

    #[error("host {host}: ssh multiplexing failed during {what}: {detail}")]
    Mux {
        host: String,
        what: &'static str,
        detail: String,
    },
}

impl TransportError {
    /// The inventory host the error belongs to.
    pub fn host(&self) -> &str {
        use TransportError::*;
        match self {
            UnknownHostKey { host, .. }
            | HostKeyChanged { host, .. }
            | AuthFailed { host, .. }
            | ConnectionRefused { host, .. }
            | Timeout { host, .. }
            | Resolve { host, .. }
            | SshConfig { host, .. }
            | Connect { host, .. }
            | ControlDir { host, .. }
            | InvalidCommand { host }
            | StdinFile { host, .. }
            | Disconnected { host }
            | Spawn { host, .. }
            | Io { host, .. }
            | Mux { host, .. } => host,
        }
    }
}

/// The variables of opsrun's own environment that hold secret values
/// (`OPSRUN_SECRET_<NAME>`): read once by the CLI, and removed from the
/// environment of everything opsrun starts (a `local: true` step, ssh), so a
/// command cannot read a secret its step was not given (`env`, `/proc/PID/environ`).
pub(crate) fn secret_env_vars() -> Vec<std::ffi::OsString> {
    std::env::vars_os()
        .map(|(k, _)| k)
        .filter(|k| k.to_string_lossy().starts_with("OPSRUN_SECRET_"))
        .collect()
}

const CHUNK: usize = 64 * 1024;

/// How much of a stream the [`Outcome`] keeps from its start: what `capture:`
/// and `expect.stdout` see. The whole stream goes to the sink (which saves it to
/// the run directory); memory stays bounded however much a command prints.
pub const KEEP_HEAD: usize = 4 * 1024 * 1024;

/// How much of a stream's end is kept past [`KEEP_HEAD`]: the log's excerpt and
/// the failure quote (often the last line) read it.
pub const KEEP_TAIL: usize = 64 * 1024;

/// Put between head and tail when a stream was longer than both: says in the
/// journal (`capture`, failure quotes) and the log that the middle is not there.
/// How it begins and ends is the `Redactor`'s to know (`sanitize::CUT_OPENS`):
/// the head before it may end inside a secret and the tail after it start
/// inside one, and it masks those pieces.
pub fn cut_marker(omitted: u64) -> String {
    use crate::sanitize::{CUT_CLOSES, CUT_OPENS};
    format!("{CUT_OPENS} the first 4 MiB and the last 64 KiB in memory: {omitted} bytes omitted here; the output file has everything{CUT_CLOSES}")
}

/// The part of a stream kept in memory: its head and a rolling tail.
#[derive(Default)]
struct Kept {
    head: Vec<u8>,
    tail: std::collections::VecDeque<u8>,
    total: u64,
}

impl Kept {
    fn push(&mut self, mut b: &[u8]) {
        self.total += b.len() as u64;
        if self.head.len() < KEEP_HEAD {
            let n = b.len().min(KEEP_HEAD - self.head.len());
            self.head.extend_from_slice(&b[..n]);
            b = &b[n..];
        }
        if b.len() >= KEEP_TAIL {
            self.tail.clear();
            b = &b[b.len() - KEEP_TAIL..];
        }
        let over = (self.tail.len() + b.len()).saturating_sub(KEEP_TAIL);
        self.tail.drain(..over);
        self.tail.extend(b);
    }

    fn into_bytes(self) -> Vec<u8> {
        let mut v = self.head;
        let omitted = self.total - v.len() as u64 - self.tail.len() as u64;
        if omitted > 0 {
            v.extend_from_slice(cut_marker(omitted).as_bytes());
        }
        v.extend(self.tail);
        v
    }
}

/// Feeds stdin and drains stdout/stderr of a started command at the same time, so
/// neither side can block the other however much data flows each way.
pub(crate) async fn pump<W, O, E>(
    host: &str,
    stdin: Option<W>,
    source: &Stdin,
    stdout: O,
    stderr: E,
    sink: &mut (dyn FnMut(Stream, &[u8]) + Send),
) -> Result<(Vec<u8>, Vec<u8>), TransportError>
where
    W: AsyncWrite + Unpin,
    O: AsyncRead + Unpin,
    E: AsyncRead + Unpin,
{
    let feed = async {
        let Some(mut w) = stdin else { return Ok(()) };
        let result = match source {
            Stdin::None => Ok(()),
            Stdin::Bytes(bytes) => w.write_all(bytes).await,
            Stdin::File(path) => {
                let mut file = tokio::fs::File::open(path).await.map_err(|source| {
                    TransportError::StdinFile {
                        host: host.to_string(),
                        path: path.clone(),
                        source,
                    }
                })?;
                copy_chunks(&mut file, &mut w).await
            }
        };
        let result = match result {
            Ok(()) => w.shutdown().await,
            Err(e) => Err(e),
        };
        // Dropping the writer is what delivers EOF to the command.
        drop(w);
        match result {
            // A command may exit without reading all of its input (`true`, `head`);
            // like a shell pipeline, that is not an error of the transport.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            Err(source) => Err(TransportError::Io {
                host: host.to_string(),
                what: "writing stdin",
                source,
            }),
            Ok(()) => Ok(()),
        }
    };

    let drain = async {
        let (mut stdout, mut stderr) = (stdout, stderr);
        let (mut out, mut err) = (Kept::default(), Kept::default());
        let (mut out_open, mut err_open) = (true, true);
        let mut out_buf = vec![0u8; CHUNK];
        let mut err_buf = vec![0u8; CHUNK];
        while out_open || err_open {
            tokio::select! {
                r = stdout.read(&mut out_buf), if out_open => {
                    let n = r.map_err(|source| TransportError::Io {
                        host: host.to_string(), what: "reading stdout", source,
                    })?;
                    if n == 0 {
                        out_open = false;
                    } else {
                        sink(Stream::Stdout, &out_buf[..n]);
                        out.push(&out_buf[..n]);
                    }
                }
                r = stderr.read(&mut err_buf), if err_open => {
                    let n = r.map_err(|source| TransportError::Io {
                        host: host.to_string(), what: "reading stderr", source,
                    })?;
                    if n == 0 {
                        err_open = false;
                    } else {
                        sink(Stream::Stderr, &err_buf[..n]);
                        err.push(&err_buf[..n]);
                    }
                }
            }
        }
        Ok::<_, TransportError>((out.into_bytes(), err.into_bytes()))
    };

    // try_join: if one side fails the other is dropped instead of waiting on a
    // command that may never read its stdin or close its output.
    let ((), output) = tokio::try_join!(feed, drain)?;
    Ok(output)
}

async fn copy_chunks<R, W>(r: &mut R, w: &mut W) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        w.write_all(&buf[..n]).await?;
    }
}
