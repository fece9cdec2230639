//! What a step asks the operator before it acts: a `confirm:` question or a manual
//! step's instructions, how each must be answered, and, per batch, which hosts the
//! answer is for. The engine only asks these; the dry-run prints the same values.

use super::*;
use serde::ser::{Serialize, SerializeMap, Serializer};

/// One question of a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gate {
    /// The `confirm:` question, or the manual step's instructions (rendered, secrets masked).
    pub text: String,
    pub answer: AnswerKind,
    /// Where the answer applies, per batch the step can run in (`None`: outside any
    /// batch, as the rollback guide runs without `serial`).
    pub asks: Vec<GateAsk>,
}

/// How a gate must be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerKind {
    /// `y`/`yes` (or `--yes`) goes on; anything else stops the run, not confirmed.
    YesNo,
    /// The operator does it by hand, then confirms it done and may leave a note.
    Done,
}

/// The hosts a gate names in one batch, as `Planner::gate_hosts` says them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateAsk {
    pub batch: Option<usize>,
    /// The hosts themselves: a run renders the question for each of them, with
    /// the values captured there.
    pub names: Vec<String>,
    /// `(on oa1, oa2)`, `(batch 1/2: oa1)`, …: appended to the question.
    pub hosts: String,
}

impl Gate {
    /// The hosts the question is asked for in `batch` (none: asked bare).
    pub fn hosts_in(&self, batch: Option<usize>) -> &[String] {
        self.asks
            .iter()
            .find(|a| a.batch == batch)
            .map_or(&[], |a| a.names.as_slice())
    }

    /// The question as asked in `batch`, naming the hosts it is for. A batch the
    /// plan has no entry for (none is asked for) gets the bare question.
    pub fn question(&self, batch: Option<usize>) -> String {
        match self.asks.iter().find(|a| a.batch == batch) {
            Some(a) => format!("{} {}", self.text, a.hosts),
            None => self.text.clone(),
        }
    }
}

/// A step's gates in the order they are asked: the `confirm:` question, then
/// the manual instructions. In the dry-run JSON they keep the keys of earlier
/// builds, `confirm` and `manual`, each with its text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Gates(pub Vec<Gate>);

impl Gates {
    pub fn of(&self, answer: AnswerKind) -> Option<&Gate> {
        self.0.iter().find(|g| g.answer == answer)
    }
}

impl Serialize for Gates {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for g in &self.0 {
            let key = match g.answer {
                AnswerKind::YesNo => "confirm",
                AnswerKind::Done => "manual",
            };
            m.serialize_entry(key, &g.text)?;
        }
        m.end()
    }
}

impl Planner {
    /// The gates of step `r`: its question and instructions, with the hosts each
    /// batch's answer is for.
    pub(super) fn gates(&self, r: StepRef) -> Result<Gates, Error> {
        let (step, _) = self.step(r);
        let mut batches = vec![None];
        batches.extend((1..=self.batches.len()).map(Some));
        let manual = matches!(step.action, Action::Manual(_));
        // Only the hosts that will run the step are named: a plan-time `when:` that
        // leaves a host out leaves it out of the question too (a `when:` that reads
        // a capture is decided at run time: those hosts are named). A batch where no
        // host runs it asks nothing.
        let asks: Vec<GateAsk> = batches
            .into_iter()
            .filter_map(|batch| {
                let hosts: Vec<String> = if step.local {
                    vec![HostRef::Control.to_string()]
                } else if step.when.is_none() || manual {
                    self.batch_hosts(r, batch)
                } else {
                    self.batch_hosts(r, batch)
                        .into_iter()
                        .filter(|h| {
                            // A host whose rendering fails is named: the run reports the error there.
                            !matches!(
                                self.render(r, Some(h), None, Reveal::Masked, batch),
                                Ok(t) if t.skipped.is_some()
                            )
                        })
                        .collect()
                };
                (!hosts.is_empty()).then(|| GateAsk {
                    batch,
                    hosts: self.gate_hosts(step.local, &hosts, batch),
                    names: hosts,
                })
            })
            .collect();
        let mut gates = Vec::new();
        if let Some(text) = self.confirm_prompt(r)? {
            gates.push(Gate {
                text,
                answer: AnswerKind::YesNo,
                asks,
            });
        }
        if let Some(text) = self.manual_text(r)? {
            // Manual instructions are shown whole, not as a question about hosts.
            gates.push(Gate {
                text,
                answer: AnswerKind::Done,
                asks: Vec::new(),
            });
        }
        Ok(Gates(gates))
    }
}
