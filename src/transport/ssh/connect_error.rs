//! What ssh printed when a master failed to start, turned into a typed error with
//! the command that fixes it (ssh-keyscan, ssh-keygen -R) where there is one.

use crate::transport::{Endpoint, TransportError};

/// Turns what ssh printed when the master failed to start into an actionable error.
/// `log` is the master's whole log (`ssh -E`), `hop_log` what the jump hosts printed,
/// which explains most failures through them.
pub(super) fn classify_connect_error(ep: &Endpoint, log: &str, hop_log: &str) -> TransportError {
    let host = ep.host.clone();
    let detail = master_log_message(log);
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

/// The master's log as the message shown to the operator, trimmed the way the
/// `openssh` crate trimmed it when it launched masters (so messages stay the same):
/// no leading `ssh: `, no "Warning: Permanently added" line first.
pub(super) fn master_log_message(log: &str) -> String {
    let mut text = log.trim();
    text = text.strip_prefix("ssh: ").unwrap_or(text);
    if text.starts_with("Warning: Permanently added ") {
        text = text.split_once('\n').map(|x| x.1.trim()).unwrap_or("");
    }
    text.to_string()
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
        classify_connect_error(&ep(), text, "")
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
}
