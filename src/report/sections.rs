//! The log's closing sections, each a fold over the events: service downtime
//! per host, and the exceptions (failures, timeouts, interrupts) in order.

use super::log::fmt_time;
use super::markdown::cell;
use crate::clock::Time;
use crate::load::runbook::ServiceState;
use crate::record::events::{Event, Phase, Status};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Business-impact downtime per service and host: from a stop to the next start.
pub(super) fn downtime(o: &mut String, events: &[Event]) {
    let mut service_of: BTreeMap<(Phase, usize), crate::load::runbook::Service> = BTreeMap::new();
    for e in events {
        if let Event::StepStarted {
            phase,
            number,
            service: Some(s),
            ..
        } = e
        {
            service_of.insert((*phase, *number), s.clone());
        }
    }
    if service_of.is_empty() {
        return;
    }
    let mut open: BTreeMap<(String, String), Time> = BTreeMap::new();
    let mut rows = Vec::new();
    for e in events {
        if let Event::TargetFinished {
            phase,
            number,
            host,
            status: Status::Ok,
            time,
            ..
        } = e
        {
            let Some(svc) = service_of.get(&(*phase, *number)) else {
                continue;
            };
            let key = (svc.name.clone(), host.clone());
            match svc.state {
                ServiceState::Stopped => {
                    open.entry(key).or_insert(*time);
                }
                ServiceState::Started => {
                    if let Some(stopped) = open.remove(&key) {
                        rows.push((key.0, key.1, stopped, Some(*time)));
                    }
                }
            }
        }
    }
    for ((svc, host), stopped) in open {
        rows.push((svc, host, stopped, None));
    }
    let _ = writeln!(o, "\n## Business-impact downtime\n\n| service | host | stopped | started | downtime |\n|---|---|---|---|---|");
    for (svc, host, stopped, started) in rows {
        let (s, d) = match started {
            Some(t) => (
                fmt_time(&t),
                crate::duration::format((t - stopped).to_std().unwrap_or_default()),
            ),
            None => ("**still down**".into(), "open".into()),
        };
        let _ = writeln!(
            o,
            "| {} | {} | {} | {s} | {d} |",
            cell(&svc),
            cell(&host),
            fmt_time(&stopped)
        );
    }
}

/// The exception table SOP 003 asks for: every failure in one place.
pub(super) fn exceptions(o: &mut String, events: &[Event]) {
    let rows: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            Event::TargetFinished {
                phase,
                number,
                step,
                host,
                status: s @ (Status::Failed | Status::TimedOut),
                reason,
                ..
            } => Some(format!(
                "| {} | {} | {number}. {} | {} |",
                match (phase, s) {
                    (Phase::Undo | Phase::Guide, _) => "rollback failed",
                    (_, Status::TimedOut) => "timeout",
                    _ => "step failed",
                },
                cell(host),
                cell(step),
                cell(reason.as_deref().unwrap_or(""))
            )),
            Event::ConnectFailed { host, error, .. } => Some(format!(
                "| connection | {} | - | {} |",
                cell(host),
                cell(error)
            )),
            _ => None,
        })
        .collect();
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        o,
        "\n## Exceptions\n\n| type | host | step | message |\n|---|---|---|---|"
    );
    for r in rows {
        let _ = writeln!(o, "{r}");
    }
}
