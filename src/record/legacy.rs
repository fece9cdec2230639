//! Version 0 of the journal: what opsrun wrote before `RunStarted` carried a
//! `version`. Most of it reads as version 1 through serde aliases (see
//! `record/events.rs`); what needs more is here, so the current vocabulary
//! stays free of it:
//!
//! - params were `[name, value]` pairs, with `"(not set)"` for a param without
//!   a value and `"******"` for a secret's. A v0 value that really was
//!   `******` cannot be told from a secret's; it is read as a secret, as v0 did.
//! - undo steps and rollback-guide steps were both phase `rollback`; they are
//!   read as [`Phase::Undo`], and [`upgrade`] tells the guide's steps apart.

use crate::record::events::{Event, Phase, RunKind};
use crate::record::journal;
use crate::sanitize::MASK;
use serde::{Deserialize, Deserializer};
use std::collections::BTreeSet;
use std::path::Path;

/// `RunStarted.params` of either version.
pub(crate) fn params<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Vec<crate::record::events::ParamRecord>, D::Error> {
    use crate::record::events::ParamRecord;
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Any {
        V1(ParamRecord),
        V0((String, String)),
    }
    Ok(Vec::<Any>::deserialize(d)?
        .into_iter()
        .map(|p| match p {
            Any::V1(p) => p,
            Any::V0((name, value)) => {
                let secret = value == MASK;
                let set = value != "(not set)";
                ParamRecord {
                    name,
                    secret,
                    set,
                    value: (set && !secret).then_some(value),
                }
            }
        })
        .collect())
}

/// Reclassifies the `rollback`-phase steps of a v0 `opsrun rollback` journal at
/// `dir`: a step recorded under the number and name of one of the rolled-back
/// run's forward steps undid that step; any other is a rollback-guide step.
/// That is the rule v0's readers applied. Without the rolled-back run's journal
/// nothing can tell them apart, and nothing needs to: both are rollback steps
/// of a run whose record is gone.
pub(crate) fn upgrade(events: &mut [Event], dir: &Path) {
    let Some(Event::RunStarted {
        version: 0,
        kind: RunKind::Rollback,
        rollback_of: Some(of),
        ..
    }) = events.first()
    else {
        return;
    };
    let original = dir.parent().unwrap_or(dir).join(of).join(journal::FILE);
    let Ok(replay) = journal::read_raw(&original) else {
        return;
    };
    let forward: BTreeSet<(usize, String)> = replay
        .events
        .iter()
        .filter_map(|e| match e {
            Event::StepStarted {
                phase: Phase::Forward,
                number,
                step,
                ..
            } => Some((*number, step.clone())),
            _ => None,
        })
        .collect();
    for e in events.iter_mut() {
        if let Event::StepStarted {
            phase,
            number,
            step,
            ..
        }
        | Event::TargetStarted {
            phase,
            number,
            step,
            ..
        }
        | Event::TargetFinished {
            phase,
            number,
            step,
            ..
        }
        | Event::StepFinished {
            phase,
            number,
            step,
            ..
        } = e
        {
            if *phase == Phase::Undo && !forward.contains(&(*number, step.clone())) {
                *phase = Phase::Guide;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::record::events::{Event, LockAction, ParamRecord, Phase, RunKind, Stop};
    use crate::record::journal;
    use std::path::Path;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/journals-v0");

    fn line(json: &str) -> Event {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn v0_strings_read_as_the_typed_vocabulary() {
        let lock = line(
            r#"{"event":"lock","time":"2026-12-02T07:13:14Z","host":"oa1","path":"/tmp/l","action":"release failed","detail":""}"#,
        );
        assert!(matches!(
            lock,
            Event::Lock {
                action: LockAction::ReleaseFailed,
                ..
            }
        ));
        let stop = line(
            r#"{"event":"interrupt","time":"2026-12-02T07:13:14Z","choice":"NowAndRollback"}"#,
        );
        assert!(matches!(
            stop,
            Event::Interrupt {
                choice: Stop::NowAndRollback,
                signal: None,
                ..
            }
        ));
        let step = line(
            r#"{"event":"step_finished","time":"2026-12-02T07:13:14Z","phase":"rollback","number":3,"step":"s","status":"ok","failed_hosts":[]}"#,
        );
        assert!(matches!(
            step,
            Event::StepFinished {
                phase: Phase::Undo,
                ..
            }
        ));
    }

    #[test]
    fn v0_params_keep_what_they_said_and_no_sentinel() {
        let replay =
            journal::read(&Path::new(FIXTURES).join("20261202-071315Z-upgrade-demo/journal.jsonl"))
                .unwrap();
        let Event::RunStarted {
            version,
            kind,
            params,
            ..
        } = &replay.events[0]
        else {
            panic!("no start event");
        };
        assert_eq!((*version, *kind), (0, RunKind::Run));
        assert_eq!(
            params[0],
            ParamRecord {
                name: "package".into(),
                secret: false,
                set: true,
                value: Some("examples/demo/packages/broken.zip".into()),
            }
        );
        let old: Vec<ParamRecord> = super::params(&mut serde_json::Deserializer::from_str(
            r#"[["token","******"],["note","(not set)"]]"#,
        ))
        .unwrap();
        assert_eq!(
            old.iter().map(ParamRecord::shown).collect::<Vec<_>>(),
            ["******", "(not set)"]
        );
        assert_eq!((old[0].secret, &old[0].value), (true, &None));
        assert_eq!((old[1].set, &old[1].value), (false, &None));
    }

    /// The v0 `opsrun rollback` fixture ran the runbook's rollback guide: its
    /// steps are guide steps, none is an undo of the run it rolled back.
    #[test]
    fn v0_rollback_guide_steps_are_told_from_undo() {
        let replay = journal::read(
            &Path::new(FIXTURES).join("20261202-071318Z-upgrade-demo-rollback/journal.jsonl"),
        )
        .unwrap();
        let phases: std::collections::BTreeSet<Phase> = replay
            .events
            .iter()
            .filter_map(|e| match e {
                Event::TargetFinished { phase, .. } => Some(*phase),
                _ => None,
            })
            .collect();
        assert_eq!(phases.into_iter().collect::<Vec<_>>(), [Phase::Guide]);
        // Its own failed-run rollback is undo: forward steps undone under their own names.
        let replay =
            journal::read(&Path::new(FIXTURES).join("20261202-071315Z-upgrade-demo/journal.jsonl"))
                .unwrap();
        assert!(replay.events.iter().any(|e| matches!(
            e,
            Event::TargetFinished {
                phase: Phase::Undo,
                ..
            }
        )));
        assert!(!replay.events.iter().any(|e| matches!(
            e,
            Event::TargetFinished {
                phase: Phase::Guide,
                ..
            }
        )));
    }
}
