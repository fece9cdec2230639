//! What a gate says in a run: its question (or a manual step's instructions)
//! rendered with the values captured so far, host by host, so the operator
//! approves the value itself and the record says what was approved. The
//! dry-run, which knows no captured value, shows the plan's placeholders.

use crate::execute::engine::Engine;
use crate::plan::{AnswerKind, Gate, PlanStep, Reveal, StepRef};

impl Engine<'_> {
    /// The gate's text for each group of `hosts` that renders it alike, in host
    /// order, each with the hosts it is for; secrets masked. A host where it
    /// cannot be rendered (a capture it never made) gets the plan's text.
    fn gate_texts(
        &self,
        r: StepRef,
        step: &PlanStep,
        gate: &Gate,
        hosts: &[String],
        batch: Option<usize>,
    ) -> Vec<(String, Vec<String>)> {
        let caps = self.captures_as(Reveal::Masked);
        let mut groups: Vec<(String, Vec<String>)> = Vec::new();
        let each: Vec<Option<&String>> = match hosts.is_empty() {
            true => vec![None],
            false => hosts.iter().map(Some).collect(),
        };
        for h in each {
            // A local step's one "host" is the control machine.
            let on = h.filter(|_| !step.local).map(String::as_str);
            let text = match self.planner.gate_text(r, gate.answer, on, &caps, batch) {
                Ok(Some(t)) => self.redactor.redact(&t),
                Ok(None) | Err(_) => gate.text.clone(),
            };
            match groups.iter_mut().find(|g| g.0 == text) {
                Some(g) => g.1.extend(h.cloned()),
                None => groups.push((text, h.cloned().into_iter().collect())),
            }
        }
        groups
    }

    /// The yes/no questions a gate asks in `batch`: one per value it names
    /// (usually one), each with the hosts it is for.
    pub(super) fn gate_questions(
        &self,
        r: StepRef,
        step: &PlanStep,
        gate: &Gate,
        batch: Option<usize>,
    ) -> Vec<String> {
        debug_assert_eq!(gate.answer, AnswerKind::YesNo);
        let hosts = gate.hosts_in(batch);
        self.gate_texts(r, step, gate, hosts, batch)
            .into_iter()
            .map(|(text, on)| match on.is_empty() {
                true => text,
                false => format!("{text} {}", self.planner.gate_hosts(step.local, &on, batch)),
            })
            .collect()
    }

    /// A manual step's instructions on `hosts`: as written when they read the
    /// same everywhere, else each host group's, headed by its hosts.
    pub(super) fn manual_instructions(
        &self,
        r: StepRef,
        step: &PlanStep,
        gate: &Gate,
        hosts: &[String],
        batch: Option<usize>,
    ) -> String {
        let groups = self.gate_texts(r, step, gate, hosts, batch);
        if let [(text, _)] = groups.as_slice() {
            return text.clone();
        }
        groups
            .into_iter()
            .map(|(text, on)| {
                format!(
                    "{}:\n{text}",
                    self.planner.gate_hosts(step.local, &on, batch)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}
