//! Host locks: one run at a time per host.
//!
//! A lock is a directory created atomically with `mkdir` on the host, holding
//! an `owner` file (operator, control host, run id, pid, start). A second run
//! touching the host is refused and told who holds it. A lock whose owner
//! process is gone (on this control machine) is stale and can be broken with
//! `--break-lock`, which the journal records.
//!
//! The lock belongs to the run: a stale lock left by a killed run is taken over
//! by that same change's `opsrun rollback` or `--resume` (the journals prove
//! the lineage, the dead pid proves the owner is gone) without `--break-lock`;
//! what the killed run left running on the host is killed first. A lock is
//! released only when no command of the run is still running on the host, and
//! `--break-lock` refuses a lock whose owner's commands still run there.

use super::engine::{Engine, ExecError};
use super::supervise::registry;
use super::{control_host, Mode, Settings};
use crate::plan::Plan;
use crate::record::events::{self, Event, LockAction};
use crate::shell::envelope::{self, Seen};
use crate::shell::quote;
use crate::transport::Command;
use crate::transport::{ConnectionKind, Endpoint};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub run_id: String,
    /// Where the run's commands register on the host (`supervise::registry_key`);
    /// absent in locks taken before commands were registered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<String>,
    pub operator: String,
    pub control_host: String,
    pub pid: u32,
    pub started: String,
}

/// Where a host's lock lives. Keyed by the SSH port on real hosts (one sshd,
/// one lock, whatever name the inventory gives the host). A `connection: local`
/// sandbox lives on the control machine under the directory opsrun runs from,
/// so its lock is keyed by host name and that directory.
pub fn path(ep: &Endpoint) -> String {
    match ep.kind {
        ConnectionKind::Ssh => format!("/tmp/opsrun-lock-{}", ep.port.unwrap_or(22)),
        ConnectionKind::Local => {
            let name: String = ep
                .host
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            let cwd = std::env::current_dir().unwrap_or_default();
            let digest = crate::digest::sha256_hex(cwd.as_os_str().as_encoded_bytes());
            format!("/tmp/opsrun-lock-local-{name}-{}", &digest[..12])
        }
    }
}

const TAKEN: &str = "OPSRUN-LOCK-TAKEN";
const HELD: &str = "OPSRUN-LOCK-HELD";

pub fn acquire_command(path: &str, owner: &Owner) -> String {
    let json = serde_json::to_string(owner).unwrap_or_default();
    let p = quote(path);
    format!(
        "if mkdir {p} 2>/dev/null; then printf '%s\\n' {j} > {p}/owner && echo {TAKEN}; else echo {HELD}; cat {p}/owner 2>/dev/null; fi",
        j = quote(&json)
    )
}

/// Removes the lock only if this run still holds it.
pub fn release_command(path: &str, run_id: &str) -> String {
    let p = quote(path);
    format!(
        "grep -qF {} {p}/owner 2>/dev/null && rm -rf {p}",
        quote(&format!("\"run_id\":\"{run_id}\""))
    )
}

/// Makes `owner` the holder of a lock that is already there.
pub fn take_over_command(path: &str, owner: &Owner) -> String {
    let json = serde_json::to_string(owner).unwrap_or_default();
    let p = quote(path);
    format!(
        "[ -d {p} ] && printf '%s\\n' {j} > {p}/owner.new && mv -f {p}/owner.new {p}/owner && echo {TAKEN}",
        j = quote(&json)
    )
}

pub fn break_command(path: &str) -> String {
    format!("rm -rf {}", quote(path))
}

/// What the host said to an acquire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired {
    Taken,
    /// Held by someone else; `None` when the owner file is unreadable.
    Held(Option<Owner>),
}

pub fn parse_acquire(stdout: &str) -> Acquired {
    let mut lines = stdout.lines();
    match lines.next().map(str::trim) {
        Some(TAKEN) => Acquired::Taken,
        _ => Acquired::Held(lines.next().and_then(|l| serde_json::from_str(l).ok())),
    }
}

/// Whether the owner is certainly dead: its pid is gone on this very control machine.
pub fn is_stale(owner: &Owner, this_host: &str) -> bool {
    if owner.control_host != this_host {
        return false;
    }
    // A killed process whose parent is gone may linger as a zombie nobody reaps.
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", owner.pid));
    if let Ok(stat) = &stat {
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().next());
        if state == Some("Z") {
            return true;
        }
    }
    // SAFETY: kill with signal 0 only checks for existence and permission.
    let r = unsafe { libc::kill(owner.pid as libc::pid_t, 0) };
    r != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

pub fn describe(owner: &Option<Owner>) -> String {
    match owner {
        Some(o) => format!(
            "run {} by {} from {} (pid {}, started {})",
            o.run_id, o.operator, o.control_host, o.pid, o.started
        ),
        None => "an unknown owner (no readable owner file)".to_string(),
    }
}

pub(super) fn lock_event(
    engine: &Engine<'_>,
    host: &str,
    path: &str,
    action: LockAction,
    detail: String,
) -> Result<(), ExecError> {
    engine.rec.emit(&Event::Lock {
        time: events::now(),
        host: host.into(),
        path: path.into(),
        action,
        detail,
    })?;
    Ok(())
}

/// Takes every host's lock, or none: refuses (naming the holder) if one is held.
pub(super) async fn take_locks(
    engine: &Engine<'_>,
    plan: &Plan,
    s: &Settings,
    run_id: &str,
    held: &mut Vec<(Endpoint, String)>,
) -> Result<Option<String>, ExecError> {
    let me = Owner {
        run_id: run_id.to_string(),
        registry: Some(engine.registry_key.clone()),
        operator: s.operator.clone(),
        control_host: control_host(),
        pid: std::process::id(),
        started: events::now().to_rfc3339(),
    };
    // The runs of this change whose stale lock this run may take over.
    let lineage: Vec<String> = match &s.mode {
        Mode::Run => Vec::new(),
        Mode::Resume(r) | Mode::Rollback(r) => std::iter::once(r.id.clone())
            .chain(crate::record::view::continuations_of(&s.log_dir, &r.id))
            .filter(|id| id != run_id)
            .collect(),
    };
    let mut refused = Vec::new();
    for h in &plan.hosts {
        let Some(conn) = engine.conns.get(&h.name) else {
            continue;
        };
        let path = path(&h.endpoint);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let out = conn
                .exec(&Command::new(acquire_command(&path, &me)), &mut |_, _| {})
                .await;
            let stdout = match out {
                Ok(o) => String::from_utf8_lossy(&o.stdout).to_string(),
                Err(e) => {
                    refused.push(format!("{}: cannot take the lock: {e}", h.name));
                    break;
                }
            };
            match parse_acquire(&stdout) {
                Acquired::Taken => {
                    lock_event(engine, &h.name, &path, LockAction::Taken, String::new())?;
                    held.push((h.endpoint.clone(), path.clone()));
                    break;
                }
                Acquired::Held(owner) => {
                    let who = describe(&owner);
                    let stale = owner.as_ref().is_some_and(|o| is_stale(o, &control_host()));
                    if let Some(o) = owner
                        .as_ref()
                        .filter(|o| stale && lineage.contains(&o.run_id))
                    {
                        let key = o.registry.as_deref().unwrap_or(&o.run_id);
                        let killed =
                            super::settle::kill_leftovers(engine, conn, &h.name, &o.run_id, key)
                                .await?;
                        let killed: String = killed.iter().map(|l| format!("; {l}")).collect();
                        let out = conn
                            .exec(&Command::new(take_over_command(&path, &me)), &mut |_, _| {})
                            .await;
                        if out.is_ok_and(|o| {
                            parse_acquire(&String::from_utf8_lossy(&o.stdout)) == Acquired::Taken
                        }) {
                            let detail =
                                format!("from run {} (pid {} is gone){killed}", o.run_id, o.pid);
                            engine
                                .ui
                                // The lock file's run id and pid are what the host says.
                                .line(&crate::sanitize::escape_line(&format!(
                                    "{}: took over the lock {detail}",
                                    h.name
                                )));
                            lock_event(engine, &h.name, &path, LockAction::TakenOver, detail)?;
                            held.push((h.endpoint.clone(), path.clone()));
                            break;
                        }
                    }
                    // Breaking a lock whose owner's commands still run on the host
                    // would let a second run work beside them.
                    let running = match &owner {
                        Some(o) if s.break_lock && stale => {
                            still_running(conn, &h.name, o.registry.as_deref().unwrap_or(&o.run_id))
                                .await
                        }
                        _ => Vec::new(),
                    };
                    if !running.is_empty() {
                        lock_event(engine, &h.name, &path, LockAction::Held, who.clone())?;
                        refused.push(format!(
                            "{} is locked ({path}) by {who}: that run is gone, but {} still running on the host (session {}): --break-lock would let this run work beside it; wait for it to end, or stop it on the host",
                            h.name,
                            if running.len() == 1 { "a command of it is".to_string() } else { format!("{} commands of it are", running.len()) },
                            running.join(", ")
                        ));
                        break;
                    }
                    // Only a lock known to be dead is broken: its owner's pid is gone on
                    // this machine, or it has no readable owner. A run from another
                    // control machine cannot be checked from here.
                    let elsewhere = owner
                        .as_ref()
                        .is_some_and(|o| o.control_host != control_host());
                    if s.break_lock && attempt == 1 && (stale || owner.is_none()) {
                        let _ = conn
                            .exec(&Command::new(break_command(&path)), &mut |_, _| {})
                            .await;
                        lock_event(
                            engine,
                            &h.name,
                            &path,
                            LockAction::Broken,
                            format!("--break-lock by {}: was held by {who}", s.operator),
                        )?;
                        engine
                            .ui
                            .warn(&format!("{}: broke the lock held by {who}", h.name));
                        continue;
                    }
                    lock_event(engine, &h.name, &path, LockAction::Held, who.clone())?;
                    let remove = format!("ssh {} rm -rf {path}", h.endpoint.address);
                    let advice = if stale {
                        let of = owner.as_ref().map_or("", |o| o.run_id.as_str());
                        format!("that process is gone: the lock is stale. If that run is to be undone or finished, `opsrun rollback {of}` or the same command with `--resume {of}` takes the lock over (and first stops what it left running there); to start anew instead, rerun with --break-lock")
                    } else if elsewhere {
                        format!("it was taken from another control machine, which opsrun cannot check from here; if that run is dead, remove the lock by hand ({remove})")
                    } else if s.break_lock {
                        "its owner is still running: --break-lock only breaks a stale lock"
                            .to_string()
                    } else {
                        "wait for it to finish, or if that run is dead, rerun with --break-lock"
                            .to_string()
                    };
                    refused.push(format!("{} is locked ({path}) by {who}: {advice}", h.name));
                    break;
                }
            }
        }
    }
    Ok((!refused.is_empty()).then(|| refused.join("\n")))
}

/// The sessions of the commands still running on `host` of the run
/// whose registry key is `key`.
async fn still_running(conn: &crate::transport::Connection, host: &str, key: &str) -> Vec<String> {
    let line = envelope::survey_command(&registry(key, host));
    match conn.exec(&Command::new(line), &mut |_, _| {}).await {
        Ok(o) => envelope::parse_seen(&String::from_utf8_lossy(&o.stdout))
            .iter()
            .filter_map(|s| match s {
                Seen::Running { session, .. } => Some(session.to_string()),
                _ => None,
            })
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Whether a command of the run with registry key `key` still runs on `host`;
/// clears its registry if not.
async fn busy(conn: &crate::transport::Connection, host: &str, key: &str) -> bool {
    let line = envelope::clear_command(&registry(key, host));
    conn.exec(&Command::new(line), &mut |_, _| {})
        .await
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "busy")
}

pub(super) async fn release_locks(engine: &Engine<'_>, held: &[(Endpoint, String)], run_id: &str) {
    // The control machine's registry (`local: true` steps) has no lock to keep.
    let key = &engine.registry_key;
    let _ = busy(&engine.local, crate::plan::HostRef::CONTROL_NAME, key).await;
    for (ep, path) in held {
        if let Some(conn) = engine.conns.get(&ep.host) {
            let hung = engine
                .keep_locks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&ep.host);
            if hung || busy(conn, &ep.host, key).await {
                engine.ui.warn(&format!(
                    "{}: a command of this run is still running there: its lock is kept ({path}); `opsrun rollback` or `--resume` of this run takes it over",
                    ep.host
                ));
                let _ = lock_event(
                    engine,
                    &ep.host,
                    path,
                    LockAction::KeptBusy,
                    "a command of the run is still running on the host".into(),
                );
                continue;
            }
            let ok = conn
                .exec(&Command::new(release_command(path, run_id)), &mut |_, _| {})
                .await
                .is_ok_and(|o| o.success());
            let _ = lock_event(
                engine,
                &ep.host,
                path,
                if ok {
                    LockAction::Released
                } else {
                    LockAction::ReleaseFailed
                },
                String::new(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn sh(line: &str) -> String {
        let out = Command::new("/bin/sh")
            .arg("-c")
            .arg(line)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    #[test]
    fn acquire_is_exclusive_and_release_checks_the_owner() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lk").display().to_string();
        let me = Owner {
            run_id: "r1".into(),
            registry: None,
            operator: "op".into(),
            control_host: "c".into(),
            pid: std::process::id(),
            started: "now".into(),
        };
        assert_eq!(
            parse_acquire(&sh(&acquire_command(&p, &me))),
            Acquired::Taken
        );
        let other = Owner {
            run_id: "r2".into(),
            ..me.clone()
        };
        assert_eq!(
            parse_acquire(&sh(&acquire_command(&p, &other))),
            Acquired::Held(Some(me.clone()))
        );
        sh(&release_command(&p, "r2"));
        assert!(
            std::path::Path::new(&p).exists(),
            "another run's release must not remove the lock"
        );
        sh(&release_command(&p, "r1"));
        assert!(!std::path::Path::new(&p).exists());
    }

    #[test]
    fn dead_pid_on_this_host_is_stale() {
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let o = Owner {
            run_id: "r".into(),
            registry: None,
            operator: "o".into(),
            control_host: "me".into(),
            pid,
            started: String::new(),
        };
        assert!(is_stale(&o, "me"));
        assert!(!is_stale(&o, "elsewhere"));
        let alive = Owner {
            pid: std::process::id(),
            ..o
        };
        assert!(!is_stale(&alive, "me"));
    }
}
