//! How the master is started: its private control directory, the ssh_config files
//! for jump hosts, and the known_hosts list handed to ssh.

use std::ffi::OsString;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::transport::{Endpoint, TransportError};

/// A private 0700 directory for control sockets. `$XDG_RUNTIME_DIR` (a per-user tmpfs)
/// is preferred, else the temp dir: never the home directory, where what a killed
/// run leaves would pile up across logins. Each master gets a 0700 subdirectory
/// `.ssh-connection-PID-N` (master.rs); jump-host configs are `jump-PID-N.*` files.
pub(super) fn control_dir(host: &str) -> Result<PathBuf, TransportError> {
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
    // Once per process, before this process creates any entry of its own.
    static SWEPT: std::sync::Once = std::sync::Once::new();
    SWEPT.call_once(|| remove_stale_entries(&dir));
    Ok(dir)
}

/// Removes what earlier opsrun processes that were killed left in the control
/// directory: their masters ended with them, but not their connection directories
/// (ssh's log) and jump configs. An entry belongs to the process whose pid its name
/// carries; it is removed only if that process no longer exists (or has this
/// process's pid: before its first connection, that can only be a dead namesake),
/// no control socket is in it, and it is older than [`STALE_AFTER`]: an opsrun in
/// another pid namespace sharing this directory looks dead but is never that quiet
/// while it connects, and keeps its socket while connected.
fn remove_stale_entries(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let me = std::process::id();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let Some(rest) = name
            .strip_prefix(".ssh-connection-")
            .or_else(|| name.strip_prefix("jump-"))
        else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let path = entry.path();
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > STALE_AFTER));
        let dead = pid == me || pid_is_gone(pid);
        if !old || !dead || path.join("master").exists() {
            continue;
        }
        let _ = if entry.file_type().is_ok_and(|t| t.is_dir()) {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
    }
}

/// Longer than any connect takes (see `start_bound`): jump configs exist only while
/// connecting, a connection directory changes when its socket appears.
const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(15 * 60);

fn pid_is_gone(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks whether the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

/// The ssh_config files used when the endpoint has jump hosts.
///
/// Plain `ssh -J` is not used: ssh starts each hop as
/// `ssh -l USER -p PORT -F CONFIG -W HOST:PORT HOP` without our `-o` settings, so a
/// hop's host key would be checked per the user's config (maybe accept-new, or a
/// prompt on the terminal), and the hops' stderr would go to the master's, which is
/// /dev/null, losing "host key unknown" for a bastion. Instead:
/// - `hop.ssh_config` forces strict checking, batch mode and no connection sharing,
///   then includes the configuration ssh would have read anyway (ssh keeps the
///   first value it finds);
/// - `master.ssh_config` adds a `ProxyCommand` that runs the last hop with
///   `-F hop.ssh_config` (earlier hops via its own `-J`, which passes `-F` on) and
///   appends every hop's stderr to `hop.log`, read back if the connection fails.
pub(super) struct JumpConfig {
    pub(super) master: PathBuf,
    hop: PathBuf,
    log: PathBuf,
}

impl JumpConfig {
    pub(super) fn write(
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

        // ControlMaster/ControlPath: a hop must neither become a master (with the
        // user's ControlPersist it would fork away, keep the bastion connection open
        // and outlive opsrun) nor ride on one of the user's; it is a plain child of
        // our master and ends with it.
        let mut hop = String::from(
            "# Written by opsrun for one connection; removed once connected.\n\
             StrictHostKeyChecking yes\n\
             BatchMode yes\n\
             ControlMaster no\n\
             ControlPath none\n",
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

    pub(super) fn hop_log(&self) -> String {
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
/// asked from `ssh -G` (the connection's options, so `~/.ssh/config` settings are kept) and the
/// extra file is appended; if `ssh -G` fails, OpenSSH's defaults are used.
pub(super) async fn known_hosts_option(ep: &Endpoint, extra: &Path) -> OsString {
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
    for k in crate::transport::secret_env_vars() {
        g.env_remove(k);
    }
    g.args(super::resolve::query_args(ep));
    g.stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = g.output().await.ok()?;
    if !out.status.success() {
        return None;
    }
    super::resolve::value(&String::from_utf8_lossy(&out.stdout), "userknownhostsfile")
        .map(|v| v.split_whitespace().map(str::to_string).collect())
        .filter(|v: &Vec<String>| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_quoting() {
        assert_eq!(ssh_config_quote(r#"/a b/"c"\d"#), r#""/a b/\"c\"\\d""#);
        assert_eq!(crate::shell::quote("[h]:22"), "'[h]:22'");
        assert_eq!(crate::shell::quote("10.0.0.5"), "10.0.0.5");
    }
}
