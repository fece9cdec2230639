//! Before a run of a change touches a host: no command of an earlier run of
//! that change (killed, or cut off from its host) may still be running there,
//! or the undo or the resumed step would race it: a killed opsrun leaves its
//! remote commands running to their end. What is found is killed, and said on
//! the terminal and in the journal (`Leftover`); what cannot be killed from
//! this login is said too, and keeps the host's lock (`lock.rs`).

use super::engine::{Engine, ExecError};
use super::supervise::{registry, KILL_GRACE};
use crate::record::events::{self, Event};
use crate::record::runs::Recorded;
use crate::shell::envelope::{self, Seen};
use crate::transport::{Command, Connection};

/// Makes sure no command of `recorded` (or of a run that carried it on) is
/// still running on `hosts` before their undos start: kills what is. Returns
/// what could not be killed (then nothing may be undone: the undo would race it).
pub(super) async fn settle_hosts(
    engine: &Engine<'_>,
    recorded: &Recorded,
    hosts: &[String],
) -> Result<Vec<String>, ExecError> {
    let mut left = Vec::new();
    let log_dir = crate::record::view::log_dir_of(engine.rec.dir());
    let mut runs = crate::record::view::registry_keys_of(log_dir, &recorded.id);
    // This run carries the change on too: its own commands are not leftovers.
    runs.retain(|(_, key)| *key != engine.registry_key);
    for host in hosts {
        // `undo_hosts` names the control machine for people.
        let (name, conn) = match engine.conns.get(host) {
            Some(c) => (host.as_str(), c),
            None => (crate::plan::HostRef::CONTROL_NAME, &engine.local),
        };
        for (run, key) in &runs {
            for line in kill_leftovers(engine, conn, name, run, key).await? {
                engine.ui.warn(&format!("{name}: {line}"));
                if line.contains(UNKILLABLE) {
                    left.push(format!("{name}: {line}"));
                }
            }
        }
    }
    Ok(left)
}

/// How a line of [`kill_leftovers`] says a command could not be killed.
const UNKILLABLE: &str = "could not be killed";

/// What run `of` (registry key `key`) left running on `host`, killed now and
/// recorded: one line per command, for the caller to say.
pub(super) async fn kill_leftovers(
    engine: &Engine<'_>,
    conn: &Connection,
    host: &str,
    of: &str,
    key: &str,
) -> Result<Vec<String>, ExecError> {
    let dir = registry(key, host);
    let line = envelope::kill_command(&dir, KILL_GRACE);
    let seen = match conn.exec(&Command::new(line), &mut |_, _| {}).await {
        Ok(o) => envelope::parse_seen(&String::from_utf8_lossy(&o.stdout)),
        Err(e) => {
            engine.ui.warn(&format!(
                "{host}: cannot check for commands of run {of} still running there: {e}"
            ));
            Vec::new()
        }
    };
    let _ = conn
        .exec(&Command::new(envelope::clear_command(&dir)), &mut |_, _| {})
        .await;
    let mut said = Vec::new();
    for s in &seen {
        let (session, killed) = match s {
            Seen::Unkillable { session, .. } => (*session, false),
            Seen::Killed { session, .. } | Seen::Running { session, .. } => (*session, true),
        };
        let line = if killed {
            format!("killed a command of run {of} still running there (session {session})")
        } else {
            format!(
                "a command of run {of} is still running there (session {session}) and {UNKILLABLE} from this login, nor through sudo as its owner"
            )
        };
        engine.rec.emit(&Event::Leftover {
            time: events::now(),
            host: host.to_string(),
            of_run: of.to_string(),
            session,
            killed,
        })?;
        said.push(line);
    }
    Ok(said)
}
