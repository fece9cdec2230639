//! What ssh will actually do for an endpoint: the login user, HostName, port and
//! jump hosts, asked from `ssh -G` with the options the connection is made with,
//! so `~/.ssh/config` (or the inventory's `config_file`), `Match` blocks and
//! defaults count exactly as they will when connecting.

use std::ffi::OsString;

use crate::transport::{Endpoint, TransportError};

/// How ssh reaches one host, as `ssh -G` resolved it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Resolved {
    pub user: String,
    pub hostname: String,
    pub port: u16,
    /// The ProxyJump chain, first hop first; empty when direct.
    pub jump: Vec<String>,
    /// The `ConnectTimeout` the user's ssh configuration sets, if any.
    pub connect_timeout: Option<std::time::Duration>,
}

impl Resolved {
    /// `HostName:port`, and ` via HOP,HOP` with jump hosts: where ssh really goes,
    /// as the dry-run, the plan and `opsrun inventory` show it.
    pub fn destination(&self) -> String {
        let mut d = format!("{}:{}", self.hostname, self.port);
        if !self.jump.is_empty() {
            d.push_str(&format!(" via {}", self.jump.join(",")));
        }
        d
    }
}

/// At most this many `ssh -G` at once: each is a short process, but a fleet of
/// hundreds should not fork hundreds at the same moment.
const PARALLEL: usize = 16;

/// The arguments of an `ssh -G` for `ep`: the master's own options, `-F`, the
/// jump hosts as `-J` (the master passes them through a generated config, which
/// `ssh -G` would show as a ProxyCommand), and the destination.
pub(super) fn query_args(ep: &Endpoint) -> Vec<OsString> {
    // `-N` as the master has it: a config's `ForkAfterAuthentication` makes ssh
    // refuse to print anything for a destination with no command otherwise (the
    // master's own refusal of it is connect's to report).
    let mut args: Vec<OsString> = vec!["-G".into(), "-N".into()];
    args.extend(super::login_options(ep));
    if let Some(config) = &ep.config_file {
        args.extend(["-F".into(), config.into()]);
    }
    if !ep.jump.is_empty() {
        args.extend(["-J".into(), ep.jump.join(",").into()]);
    }
    args.extend(["--".into(), ep.address.clone().into()]);
    args
}

/// The value of `key` in `ssh -G` output (lowercase keys, one `key value` a line).
pub(super) fn value<'a>(out: &'a str, key: &str) -> Option<&'a str> {
    out.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then_some(v)
    })
}

/// Resolves every endpoint, in parallel; results in the order given.
pub fn resolve_all(eps: &[Endpoint]) -> Vec<Result<Resolved, TransportError>> {
    let mut out = Vec::with_capacity(eps.len());
    for chunk in eps.chunks(PARALLEL) {
        std::thread::scope(|s| {
            let handles: Vec<_> = chunk.iter().map(|ep| s.spawn(|| resolve(ep))).collect();
            for h in handles {
                out.push(h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
            }
        });
    }
    out
}

/// One endpoint: an error naming the host when ssh cannot make sense of its
/// configuration (the connection would fail the same way).
pub fn resolve(ep: &Endpoint) -> Result<Resolved, TransportError> {
    let fail = |detail: String| TransportError::SshConfig {
        host: ep.host.clone(),
        detail,
    };
    if ep.address.is_empty() || ep.address.starts_with('-') {
        return Err(fail(format!(
            "invalid address `{}` (empty, or starts with '-' and would be read as an ssh option)",
            ep.address
        )));
    }
    let mut ssh = std::process::Command::new("ssh");
    // ssh -G runs ProxyCommand and Match exec lines only in part, but a child of
    // opsrun gets no secret it was not given (as the master does not).
    for k in crate::transport::secret_env_vars() {
        ssh.env_remove(k);
    }
    let out = ssh
        .args(query_args(ep))
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| fail(format!("cannot run ssh: {e}")))?;
    if !out.status.success() {
        let said = crate::sanitize::escape_controls(out.stderr.trim_ascii());
        return Err(fail(format!("`ssh -G` failed: {said}")));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |key: &str| {
        value(&text, key)
            .map(str::to_string)
            .ok_or_else(|| fail(format!("`ssh -G` printed no `{key}`")))
    };
    let port = field("port")?;
    Ok(Resolved {
        user: field("user")?,
        hostname: field("hostname")?,
        port: port
            .parse()
            .map_err(|_| fail(format!("`ssh -G` printed port `{port}`")))?,
        jump: match value(&text, "proxyjump") {
            None | Some("none") => Vec::new(),
            Some(j) => j.split(',').map(str::to_string).collect(),
        },
        // `none` when unset; a number of seconds otherwise.
        connect_timeout: value(&text, "connecttimeout")
            .and_then(|v| v.parse::<u64>().ok())
            .map(std::time::Duration::from_secs),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_keys_it_needs() {
        let out = "user ncops\nhostname 10.0.0.5\nport 2222\nproxyjump a@b:2,c\n";
        assert_eq!(value(out, "user"), Some("ncops"));
        assert_eq!(value(out, "port"), Some("2222"));
        assert_eq!(value(out, "proxyjump"), Some("a@b:2,c"));
        assert_eq!(value(out, "hostkeyalias"), None);
    }

    #[test]
    fn reads_the_configured_connect_timeout() {
        assert_eq!(
            value("connecttimeout none\n", "connecttimeout"),
            Some("none")
        );
        assert_eq!(value("connecttimeout 7\n", "connecttimeout"), Some("7"));
    }
}
