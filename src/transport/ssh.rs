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

use std::ffi::OsString;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use openssh::{KnownHosts, Session, SessionBuilder, Stdio};

use super::{pump, Command, Endpoint, Outcome, Stdin, Stream, TransportError};

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

/// A private 0700 directory for control sockets. `$XDG_RUNTIME_DIR` (a per-user tmpfs)
/// is preferred over the crate's default `~/.local/state`, so sockets of a killed run
/// do not pile up in the home directory. The `openssh` crate creates a random 0700
/// subdirectory per master inside it.
fn control_dir(host: &str) -> Result<PathBuf, TransportError> {
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute() && p.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    let dir = base.join(format!("opsrun-{uid}"));
    let fail = |reason: String| TransportError::ControlDir {
        host: host.to_string(),
        path: dir.clone(),
        reason,
    };
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(fail(e.to_string())),
    }
    // The name is predictable (it may sit in a shared /tmp): refuse one that someone
    // else created or that others can enter.
    let md = std::fs::symlink_metadata(&dir).map_err(|e| fail(e.to_string()))?;
    if !md.is_dir() || md.uid() != uid || md.mode() & 0o077 != 0 {
        return Err(fail(format!(
            "must be a directory owned by uid {uid} with mode 0700; remove it and retry"
        )));
    }
    Ok(dir)
}

/// The ssh_config files used when the endpoint has jump hosts.
///
/// The crate's `jump_hosts()` (`ssh -J`) is not used: ssh starts each hop as
/// `ssh -l USER -p PORT -F CONFIG -W HOST:PORT HOP` without our `-o` settings, so a
/// hop's host key would be checked per the user's config (maybe accept-new, or a
/// prompt on the terminal), and a ControlPersist master sends the hops' stderr to
/// /dev/null, losing "host key unknown" for a bastion. Instead:
/// - `hop.ssh_config` forces strict checking and batch mode, then includes the
///   configuration ssh would have read anyway (ssh keeps the first value it finds);
/// - `master.ssh_config` adds a `ProxyCommand` that runs the last hop with
///   `-F hop.ssh_config` (earlier hops via its own `-J`, which passes `-F` on) and
///   appends every hop's stderr to `hop.log`, read back if the connection fails.
struct JumpConfig {
    master: PathBuf,
    hop: PathBuf,
    log: PathBuf,
}

impl JumpConfig {
    fn write(
        control_dir: &Path,
        ep: &Endpoint,
        known_hosts: Option<&std::ffi::OsStr>,
    ) -> Result<JumpConfig, TransportError> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static SEQ: AtomicU64 = AtomicU64::new(0);

        let stem = format!(
            "jump-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let files = JumpConfig {
            master: control_dir.join(format!("{stem}.master.ssh_config")),
            hop: control_dir.join(format!("{stem}.hop.ssh_config")),
            log: control_dir.join(format!("{stem}.hop.log")),
        };

        let mut hop = String::from(
            "# Written by opsrun for one connection; removed once connected.\n\
             StrictHostKeyChecking yes\n\
             BatchMode yes\n",
        );
        if let Some(files) = known_hosts {
            hop.push_str(&format!("UserKnownHostsFile {}\n", files.to_string_lossy()));
        }
        match &ep.config_file {
            // `-F FILE` semantics: that file only, no system-wide config.
            Some(config) => {
                let config = std::path::absolute(config).unwrap_or_else(|_| config.clone());
                hop.push_str(&format!(
                    "Include {}\n",
                    ssh_config_quote(&config.to_string_lossy())
                ));
            }
            None => hop.push_str("Include ~/.ssh/config\nInclude /etc/ssh/ssh_config\n"),
        }

        let (last, earlier) = ep.jump.split_last().expect("only used with jump hosts");
        // ProxyCommand is run by /bin/sh after ssh expands %-tokens in it.
        let arg = |s: &str| crate::shell::quote(&s.replace('%', "%%"));
        let mut proxy = format!("ssh -F {}", arg(&files.hop.to_string_lossy()));
        if !earlier.is_empty() {
            proxy.push_str(&format!(" -J {}", arg(&earlier.join(","))));
        }
        proxy.push_str(&format!(
            " -W '[%h]:%p' -- {} 2>>{}",
            arg(&jump_destination(last)),
            arg(&files.log.to_string_lossy())
        ));
        let master = format!(
            "# Written by opsrun for one connection; removed once connected.\n\
             ProxyCommand {proxy}\n\
             Include {}\n",
            ssh_config_quote(&files.hop.to_string_lossy())
        );

        let written = private_file(&files.hop, &hop)
            .and_then(|()| private_file(&files.master, &master))
            .and_then(|()| private_file(&files.log, ""));
        match written {
            Ok(()) => Ok(files),
            Err(e) => Err(TransportError::ControlDir {
                host: ep.host.clone(),
                path: control_dir.to_path_buf(),
                reason: e.to_string(),
            }),
        }
    }

    fn hop_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for JumpConfig {
    fn drop(&mut self) {
        for path in [&self.master, &self.hop, &self.log] {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn private_file(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?
        .write_all(text.as_bytes())
}

/// A `-J` hop (`[user@]host[:port]`) as an ssh destination argument.
fn jump_destination(hop: &str) -> String {
    let bare_ipv6 = !hop.contains('[') && hop.matches(':').count() > 1;
    if hop.starts_with("ssh://") || bare_ipv6 {
        hop.to_string()
    } else {
        format!("ssh://{hop}")
    }
}

/// The value for `UserKnownHostsFile`: the files ssh would use anyway, plus `extra`.
///
/// Why this and not `GlobalKnownHostsFile`: `SessionBuilder` has no generic `-o`, only
/// `user_known_hosts_file`, and a command-line `UserKnownHostsFile` *replaces* the
/// configured list. ssh accepts several files in that option, so the current list is
/// asked from `ssh -G` (same -F/-p/-l, so `~/.ssh/config` settings are kept) and the
/// extra file is appended; if `ssh -G` fails, OpenSSH's defaults are used.
async fn known_hosts_option(ep: &Endpoint, extra: &Path) -> OsString {
    let mut files = resolved_user_known_hosts(ep)
        .await
        .unwrap_or_else(|| vec!["~/.ssh/known_hosts".into(), "~/.ssh/known_hosts2".into()]);
    let extra = std::path::absolute(extra).unwrap_or_else(|_| extra.to_path_buf());
    files.push(extra.to_string_lossy().replace('%', "%%"));
    let quoted: Vec<String> = files.iter().map(|f| ssh_config_quote(f)).collect();
    OsString::from(quoted.join(" "))
}

fn ssh_config_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

async fn resolved_user_known_hosts(ep: &Endpoint) -> Option<Vec<String>> {
    let mut g = tokio::process::Command::new("ssh");
    g.arg("-G");
    if let Some(config) = &ep.config_file {
        g.arg("-F").arg(config);
    }
    if let Some(port) = ep.port {
        g.arg("-p").arg(port.to_string());
    }
    if let Some(user) = &ep.user {
        g.arg("-l").arg(user);
    }
    g.arg("--").arg(&ep.address);
    g.stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = g.output().await.ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("userknownhostsfile "))
        .map(|v| v.split_whitespace().map(str::to_string).collect())
        .filter(|v: &Vec<String>| !v.is_empty())
}

/// Turns what ssh printed when the master failed to start into an actionable error.
/// The crate hands back the master's whole log (`ssh -E`) as the io::Error message.
/// `hop_log` is what the jump hosts printed, which explains most failures through them.
fn classify_connect_error(ep: &Endpoint, e: openssh::Error, hop_log: &str) -> TransportError {
    let host = ep.host.clone();
    let detail = match &e {
        openssh::Error::Connect(io) => io.to_string(),
        other => error_chain(other),
    };
    let detail = if hop_log.trim().is_empty() {
        detail
    } else {
        format!("{}\n(via jump host) {}", detail.trim(), hop_log.trim())
    };
    let text = detail.replace('\r', "");
    let detail = text.trim().to_string();
    let port_or_default = || {
        ep.port
            .map(|p| p.to_string())
            .unwrap_or_else(|| "22".to_string())
    };

    if text.contains("REMOTE HOST IDENTIFICATION HAS CHANGED") || text.contains(" has changed and ")
    {
        let target = between(&text, "Host key for ", " has changed")
            .unwrap_or_else(|| keyscan_target(ep, &port_or_default()));
        let file = offending_file(&text);
        let keygen_r = match file {
            Some(f) => format!(
                "ssh-keygen -R {} -f {}",
                crate::shell::quote(&target),
                crate::shell::quote(&f)
            ),
            None => format!("ssh-keygen -R {}", crate::shell::quote(&target)),
        };
        return TransportError::HostKeyChanged {
            host,
            target,
            keygen_r,
            detail,
        };
    }
    if let Some(target) = between(&text, "host key is known for ", " and you have requested") {
        let keyscan = keyscan_command(&target);
        return TransportError::UnknownHostKey {
            host,
            target,
            keyscan,
            detail,
        };
    }
    if text.contains("Permission denied (") {
        let user_at = text
            .lines()
            .find_map(|l| l.split_once(": Permission denied").map(|(u, _)| u))
            .map(|u| u.trim_start_matches("ssh: ").to_string())
            .unwrap_or_else(|| match &ep.user {
                Some(u) => format!("{u}@{}", ep.address),
                None => ep.address.clone(),
            });
        return TransportError::AuthFailed {
            host,
            user_at,
            detail,
        };
    }
    let (address, port) =
        connect_target(&text).unwrap_or_else(|| (ep.address.clone(), port_or_default()));
    if text.contains("Connection refused") {
        return TransportError::ConnectionRefused {
            host,
            address,
            port,
            detail,
        };
    }
    if text.contains("timed out") {
        return TransportError::Timeout {
            host,
            address,
            port,
            detail,
        };
    }
    if text.contains("Could not resolve hostname") {
        return TransportError::Resolve {
            host,
            address: ep.address.clone(),
            detail,
        };
    }
    TransportError::Connect {
        host,
        address: ep.address.clone(),
        detail,
    }
}

fn between(text: &str, start: &str, end: &str) -> Option<String> {
    let rest = &text[text.find(start)? + start.len()..];
    let value = &rest[..rest.find(end)?];
    (!value.is_empty() && !value.contains('\n')).then(|| value.to_string())
}

/// `Offending ED25519 key in /root/.ssh/known_hosts:3` → `/root/.ssh/known_hosts`.
fn offending_file(text: &str) -> Option<String> {
    let line = text.lines().find(|l| l.starts_with("Offending "))?;
    let loc = &line[line.find(" key in ")? + " key in ".len()..];
    let (file, lineno) = loc.rsplit_once(':')?;
    lineno.trim().parse::<u32>().ok()?;
    Some(file.to_string())
}

/// `connect to host 10.0.0.1 port 22: Connection refused` → (`10.0.0.1`, `22`).
fn connect_target(text: &str) -> Option<(String, String)> {
    for line in text.lines() {
        let Some(rest) = line
            .find("connect to host ")
            .map(|i| &line[i + "connect to host ".len()..])
            .or_else(|| line.strip_prefix("Connection to "))
        else {
            continue;
        };
        let (addr, rest) = rest.split_once(" port ")?;
        let port: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if !port.is_empty() {
            return Some((addr.to_string(), port));
        }
    }
    None
}

/// known_hosts names non-default ports as `[addr]:port`.
fn keyscan_target(ep: &Endpoint, port: &str) -> String {
    if port == "22" {
        ep.address.clone()
    } else {
        format!("[{}]:{port}", ep.address)
    }
}

fn keyscan_command(target: &str) -> String {
    if let Some((addr, port)) = target.strip_prefix('[').and_then(|t| t.split_once("]:")) {
        format!("ssh-keyscan -p {port} {}", crate::shell::quote(addr))
    } else {
        format!("ssh-keyscan {}", crate::shell::quote(target))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep() -> Endpoint {
        let mut ep = Endpoint::ssh("web1", "10.0.0.5");
        ep.port = Some(2222);
        ep.user = Some("deploy".into());
        ep
    }

    fn classify(text: &str) -> TransportError {
        classify_connect_error(
            &ep(),
            openssh::Error::Connect(std::io::Error::other(text.to_string())),
            "",
        )
    }

    #[test]
    fn unknown_host_key() {
        let e = classify(
            "No ED25519 host key is known for [10.0.0.5]:2222 and you have requested \
             strict checking.\r\nHost key verification failed.",
        );
        let TransportError::UnknownHostKey {
            target, keyscan, ..
        } = &e
        else {
            panic!("{e:?}")
        };
        assert_eq!(target, "[10.0.0.5]:2222");
        assert_eq!(keyscan, "ssh-keyscan -p 2222 10.0.0.5");
        assert!(e.to_string().starts_with("host web1:"));
    }

    #[test]
    fn changed_host_key() {
        let e = classify(
            "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\r\n\
             @    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\r\n\
             Offending ED25519 key in /home/op/.ssh/known hosts:7\r\n\
             Host key for [10.0.0.5]:2222 has changed and you have requested strict checking.\r\n\
             Host key verification failed.",
        );
        let TransportError::HostKeyChanged {
            target, keygen_r, ..
        } = &e
        else {
            panic!("{e:?}")
        };
        assert_eq!(target, "[10.0.0.5]:2222");
        assert_eq!(
            keygen_r,
            "ssh-keygen -R '[10.0.0.5]:2222' -f '/home/op/.ssh/known hosts'"
        );
    }

    #[test]
    fn refused_timeout_auth_resolve() {
        assert!(matches!(
            classify("connect to host 10.0.0.5 port 2222: Connection refused"),
            TransportError::ConnectionRefused { ref port, .. } if port == "2222"
        ));
        assert!(matches!(
            classify("Connection timed out during banner exchange\r\nConnection to 10.0.0.5 port 2222 timed out"),
            TransportError::Timeout { ref address, .. } if address == "10.0.0.5"
        ));
        assert!(matches!(
            classify("deploy@10.0.0.5: Permission denied (publickey)."),
            TransportError::AuthFailed { ref user_at, .. } if user_at == "deploy@10.0.0.5"
        ));
        assert!(matches!(
            classify("Could not resolve hostname nope: Name or service not known"),
            TransportError::Resolve { .. }
        ));
        assert!(matches!(
            classify("kex_exchange_identification: Connection closed by remote host"),
            TransportError::Connect { .. }
        ));
    }

    #[test]
    fn config_quoting() {
        assert_eq!(ssh_config_quote(r#"/a b/"c"\d"#), r#""/a b/\"c\"\\d""#);
        assert_eq!(crate::shell::quote("[h]:22"), "'[h]:22'");
        assert_eq!(crate::shell::quote("10.0.0.5"), "10.0.0.5");
    }
}
