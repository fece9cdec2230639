//! The run's commands on each host, as the envelope (`shell::envelope`)
//! registers them: where a host's registry is, how a command is wrapped, and
//! "stop now", which kills what is running there through the connection.
//!
//! The registry is keyed by run id and inventory host name, in the host's
//! `/tmp`: a later `opsrun rollback` or `--resume` of the run (another process,
//! perhaps after this one was killed) finds there what is still running.

use super::engine::Engine;
use crate::shell::envelope::{self, Interpreter, Seen};
use crate::transport::{Command, Connection};
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Seconds between TERM and KILL when a command is stopped.
pub(super) const KILL_GRACE: u32 = 3;

/// How long "stop now" waits for a stopped step to record its hosts, once its
/// commands were killed: the channels close at once unless a host stopped answering.
pub(super) const RECORD_AFTER_KILL: Duration = Duration::from_secs(15);

/// The directory of the commands of the run with registry key `key` on `host`.
pub fn registry(key: &str, host: &str) -> String {
    format!(
        "/tmp/opsrun-run-{}-{}",
        crate::record::rundir::slug(key),
        crate::record::rundir::host_slug(host)
    )
}

/// A run's registry key: its id and a random part. Run ids are unique within
/// one log directory only; two control machines (or two log directories) can
/// start runs with the same id in the same second, and a kill by one must never
/// reach the other's commands. The lock's owner file records the key, so a
/// later rollback or resume of the run finds its commands.
pub fn registry_key(run_id: &str) -> String {
    let mut bytes = [0u8; 6];
    let random = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes));
    if random.is_err() {
        // Still distinct per process and moment on this machine.
        let seed = std::process::id() as u64 ^ crate::clock::now().timestamp_micros() as u64;
        bytes.copy_from_slice(&seed.to_le_bytes()[..6]);
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{run_id}-{hex}")
}

/// Where "stop now" is: not asked, killing, or done with what it killed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Kill {
    #[default]
    None,
    Killing,
    /// The (host, tag) pairs that were running and were killed (or could not
    /// be), and why the run was stopped.
    Done {
        killed: HashSet<(String, String)>,
        why: String,
    },
}

impl Engine<'_> {
    /// `line` as sent to `host`: inside the envelope, with a tag of its own.
    pub(super) fn supervised(&self, conn: &Connection, host: &str, line: &str) -> (String, String) {
        let tag = format!("c{}", self.tags.fetch_add(1, Ordering::SeqCst) + 1);
        let shell = match conn {
            Connection::Ssh(_) => Interpreter::Login,
            Connection::Local(_) => Interpreter::Sh,
            // A scripted host answers the line itself: its rules match the step's text.
            #[cfg(test)]
            Connection::Fake(_) => return (line.to_string(), tag),
        };
        let wrapped = envelope::supervised(line, &registry(&self.registry_key, host), &tag, shell);
        (wrapped, tag)
    }

    /// After the stopped step: the hosts start the run's commands again (its rollback).
    pub(super) async fn resume_commands(&self) {
        let mut conns: Vec<(&str, &Connection)> =
            self.conns.iter().map(|(h, c)| (h.as_str(), c)).collect();
        conns.push((crate::plan::HostRef::CONTROL_NAME, &self.local));
        let resumes = conns.into_iter().map(|(host, conn)| async move {
            let line = envelope::resume_command(&registry(&self.registry_key, host));
            let _ = conn.exec(&Command::new(line), &mut |_, _| {}).await;
        });
        futures::future::join_all(resumes).await;
        self.kill.send_replace(Kill::None);
    }

    /// Whether "stop now" was asked: no new command starts.
    pub(super) fn stopping(&self) -> bool {
        *self.kill.borrow() != Kill::None
    }

    /// Whether the command `tag` on `host` was killed by "stop now". Waits for the
    /// kill to be done, so a command that ended because of it is not taken for a
    /// command that failed by itself.
    pub(super) async fn was_killed(&self, host: &str, tag: &str) -> Option<String> {
        let mut rx = self.kill.subscribe();
        if *rx.borrow() == Kill::None {
            return None;
        }
        let state = rx.wait_for(|k| matches!(k, Kill::Done { .. })).await.ok()?;
        match &*state {
            Kill::Done { killed, why } => killed
                .contains(&(host.to_string(), tag.to_string()))
                .then(|| why.clone()),
            _ => None,
        }
    }

    /// Why the run is being stopped, once "stop now" was asked.
    pub(super) fn stop_reason(&self) -> String {
        match &*self.kill.borrow() {
            Kill::Done { why, .. } => why.clone(),
            _ => "the run was stopped".to_string(),
        }
    }

    /// "Stop now": no new command starts, and every command of this run still
    /// running on a host is killed there (TERM, then KILL). Says what was killed.
    pub(super) async fn kill_running(&self, why: &str) {
        if self.stopping() {
            return;
        }
        self.kill.send_replace(Kill::Killing);
        let mut conns: Vec<(&str, &Connection)> =
            self.conns.iter().map(|(h, c)| (h.as_str(), c)).collect();
        conns.push((crate::plan::HostRef::CONTROL_NAME, &self.local));
        let kills = conns.into_iter().map(|(host, conn)| async move {
            // A scripted host has no envelope: what the engine sent it is what runs.
            #[cfg(test)]
            if let Connection::Fake(f) = conn {
                f.kill_all();
                let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
                let seen: Vec<Seen> = running
                    .iter()
                    .filter(|(h, _)| h == host)
                    .map(|(_, tag)| Seen::Killed { tag: tag.clone(), session: 0 })
                    .collect();
                return (host, seen);
            }
            let line = envelope::kill_command(&registry(&self.registry_key, host), KILL_GRACE);
            let seen = match conn.exec(&Command::new(line), &mut |_, _| {}).await {
                Ok(o) => envelope::parse_seen(&String::from_utf8_lossy(&o.stdout)),
                Err(e) => {
                    self.ui.warn(&format!(
                        "{host}: could not stop the running command ({e}); it may still be running there"
                    ));
                    Vec::new()
                }
            };
            (host, seen)
        });
        let mut killed = HashSet::new();
        for (host, seen) in futures::future::join_all(kills).await {
            for s in seen {
                if let Seen::Unkillable { session, .. } = &s {
                    // Not "killed": its target stays unfinished (in flight), and
                    // the host's lock is kept while it runs.
                    self.ui.warn(&format!(
                        "{host}: the running command (session {session}) could not be killed from this login (nor through sudo as its owner); it is still running there"
                    ));
                    continue;
                }
                killed.insert((host.to_string(), s.tag().to_string()));
            }
        }
        if !killed.is_empty() {
            self.ui.line(&format!(
                "{why}: killed {} on the hosts",
                crate::plural::count(killed.len(), "running command", "running commands")
            ));
        }
        self.kill.send_replace(Kill::Done {
            killed,
            why: why.to_string(),
        });
    }
}
