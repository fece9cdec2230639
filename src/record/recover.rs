//! The run's identity when the journal's first line (`run_started`) is damaged
//! and the rest of the chain is intact: rebuilt from what is intact, so the
//! run can still be listed and rolled back.
//!
//! What survives: the run directory's name (the run id and its stamp), the
//! copies of the runbook and inventory kept beside the journal, and the later
//! events (hosts, logins, who answered the gates). What does not: the params
//! as given, `--limit` (the hosts the events name stand in for it), the ticket.

use crate::digest::sha256_hex;
use crate::record::events::{Event, HostInfo, RunKind, JOURNAL_VERSION};
use std::path::Path;

/// A `RunStarted` rebuilt for the run directory `dir` from its later `events`,
/// and a sentence saying what it was rebuilt from.
pub fn start(dir: &Path, events: &[Event]) -> (Event, String) {
    let id = crate::record::view::dir_name(dir);
    let unknown = || "(unknown: the first event is damaged)".to_string();
    let copy = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
    let source = |name: &str, text: &str| {
        crate::diagnostic::SourceFile::new(dir.join(name), text.to_string())
    };
    // What the copies must hash to: what the run's log states, when there is one
    // (the journal's record of it is the damaged line); else only the copy itself.
    let log = copy(crate::record::binding::LOG_FILE);
    let expected = |name: &str, text: Option<&str>| {
        log.as_deref()
            .and_then(|l| crate::record::binding::stated_file(l, name))
            .or_else(|| text.map(|t| sha256_hex(t.as_bytes())))
            .unwrap_or_else(unknown)
    };
    let runbook_text = copy("runbook.yaml");
    let inventory_text = copy("inventory.yaml");
    let runbook = runbook_text
        .as_deref()
        .and_then(|t| crate::load::runbook_from_source(source("runbook.yaml", t)).ok());
    let inventory = inventory_text
        .as_deref()
        .and_then(|t| crate::load::inventory_from_source(source("inventory.yaml", t)).ok());
    let mut hosts: Vec<HostInfo> = Vec::new();
    let mut operator = None;
    for e in events {
        match e {
            // A `local: true` step's target is the control machine, no inventory host.
            Event::TargetFinished { host, login, .. }
                if host != crate::plan::HostRef::CONTROL_NAME
                    && !hosts.iter().any(|h| h.name == *host) =>
            {
                hosts.push(HostInfo {
                    name: host.clone(),
                    address: "(not recorded)".into(),
                    login: login.clone(),
                    connection: "(not recorded)".into(),
                    ssh: None,
                });
            }
            Event::Gate { by, .. } | Event::Manual { by, .. } if operator.is_none() => {
                operator = Some(by.clone());
            }
            _ => {}
        }
    }
    let time = events.first().map_or_else(crate::clock::now, Event::time);
    let event = Event::RunStarted {
        time,
        version: JOURNAL_VERSION,
        run_id: id.clone(),
        kind: RunKind::Run,
        rollback_of: None,
        resume_of: None,
        runbook: runbook.as_ref().map_or_else(unknown, |r| r.name.clone()),
        runbook_version: runbook.as_ref().and_then(|r| r.version.clone()),
        runbook_path: dir.join("runbook.yaml").to_string_lossy().into_owned(),
        runbook_sha256: expected("runbook.yaml", runbook_text.as_deref()),
        inventory: inventory.as_ref().map_or_else(unknown, |i| i.name.clone()),
        inventory_path: dir.join("inventory.yaml").to_string_lossy().into_owned(),
        inventory_sha256: expected("inventory.yaml", inventory_text.as_deref()),
        operator: operator.unwrap_or_else(unknown),
        control_host: unknown(),
        ticket: None,
        opsrun_version: unknown(),
        // Run ids start with the stamp: `20261202-071315Z-name`.
        stamp: id.get(..15).unwrap_or_default().to_string(),
        params: Vec::new(),
        limit: (!hosts.is_empty()).then(|| {
            hosts
                .iter()
                .map(|h| h.name.as_str())
                .collect::<Vec<_>>()
                .join(",")
        }),
        hosts,
        start_at: None,
        registry_key: None,
    };
    let checked = match log
        .as_deref()
        .and_then(|l| crate::record::binding::stated_file(l, "runbook.yaml"))
    {
        Some(_) => " (to be checked against the sha256 its log states)",
        None => " (no log states their sha256: they cannot be checked)",
    };
    let note = format!(
        "the run's identity is recovered from what is intact: run id `{id}` from the run directory's name, runbook and inventory from the copies beside the journal{checked}, hosts and operator from the later events; its params, ticket and --limit are not recovered (only the hosts the events name are touched)"
    );
    (event, note)
}
