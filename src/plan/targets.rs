//! Targeting: which hosts each step runs on (`hosts:`, `--limit`), how each is
//! reached, and the refusal of a run that would touch no host at all.

use super::*;

/// A run that would do nothing, or only the edges of its work, is refused: it
/// would "succeed" and sign a log of nothing (README "Hosts and `--limit`").
///
/// - The runbook's own `hosts:`, when steps run on it, must keep a host (after
///   `--limit`): without them only the steps on other hosts would run (a load
///   balancer edited with no node drained, no batch gate asked).
/// - Otherwise the run needs one host or one `local: true` step (the control
///   machine); a step's `on:` glob may match nothing (an optional `lb*` group).
pub(super) fn no_host_at_all(
    rb: &Runbook,
    inventory: &Inventory,
    opts: &Options,
    targets: &HashMap<(bool, usize), Vec<String>>,
) -> Result<(), Error> {
    let remote: Vec<(usize, &crate::load::runbook::Text)> = rb
        .steps
        .iter()
        .enumerate()
        .filter(|(_, s)| !s.local)
        .filter_map(|(i, s)| Some((i, s.on.as_ref().or(rb.hosts.as_ref())?)))
        .collect();
    let has_hosts = |i: &usize| targets.get(&(false, *i)).is_some_and(|h| !h.is_empty());
    let (main, others): (Vec<_>, Vec<_>) = remote
        .iter()
        .copied()
        .partition(|(i, _)| rb.steps[*i].on.is_none());
    // The patterns of the steps on other hosts that would still run.
    let mut running: Vec<&str> = Vec::new();
    for (i, p) in &others {
        if has_hosts(i) && !running.contains(&p.src.as_str()) {
            running.push(&p.src);
        }
    }
    let (at_fault, tail): (Vec<_>, String) = match main.first() {
        // The steps on the runbook's hosts share one pattern, so one target list.
        Some((i, _)) if !has_hosts(i) => {
            if running.is_empty() {
                (remote.clone(), "there is nothing to run".to_string())
            } else {
                let tail = format!("only its steps on {} would run", quote_all(&running));
                (main.clone(), tail)
            }
        }
        Some(_) => return Ok(()),
        None if rb.steps.iter().any(|s| s.local) => return Ok(()),
        None if !running.is_empty() => return Ok(()),
        None if others.is_empty() => return Ok(()),
        None => (others.clone(), "there is nothing to run".to_string()),
    };
    let mut patterns: Vec<&str> = Vec::new();
    for (_, p) in &at_fault {
        if !patterns.contains(&p.src.as_str()) {
            patterns.push(&p.src);
        }
    }
    let first = at_fault[0].1;
    // Patterns were resolved above, so they are valid: only the limit can be at fault
    // when they match hosts on their own.
    let unlimited = at_fault
        .iter()
        .any(|(_, p)| pattern::resolve(&p.src, inventory).is_ok_and(|h| !h.is_empty()));
    if let (Some(limit), true) = (&opts.limit, unlimited) {
        return Err(Error::Usage(format!(
            "--limit `{limit}` matches none of the hosts runbook `{}` runs on ({} in inventory `{}`): {tail}",
            rb.name,
            quote_all(&patterns),
            inventory.name
        )));
    }
    Err(Error::from(Diagnostic {
        level: crate::diagnostic::Level::Error,
        source: rb.source.clone(),
        span: first.span,
        message: format!(
            "{} {} no host in inventory `{}`: {tail}",
            quote_all(&patterns),
            if patterns.len() == 1 {
                "matches"
            } else {
                "match"
            },
            inventory.name
        ),
        help: Some(if at_fault.len() < remote.len() {
            "a step's `on:` glob may match nothing (an optional group), but the runbook's `hosts:` must match a host"
                .into()
        } else {
            "a step's `on:` glob may match nothing (an optional group), but a run needs at least one host"
                .into()
        }),
    }))
}

/// `a`, `b`: patterns as a message names them.
fn quote_all(patterns: &[&str]) -> String {
    patterns
        .iter()
        .map(|p| format!("`{p}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Planner {
    /// The hosts a step runs on, after `--limit`, in inventory order.
    pub fn step_hosts(&self, r: StepRef) -> &[String] {
        let key = match r {
            StepRef::Forward(i) => (false, i),
            StepRef::Guide(i) => (true, i),
        };
        self.targets.get(&key).map(Vec::as_slice).unwrap_or(&[])
    }

    /// How many forward steps the runbook has.
    pub fn step_count(&self) -> usize {
        self.runbook.steps.len()
    }

    /// Whether step `r` runs on the control machine (`local: true`).
    pub fn is_local(&self, r: StepRef) -> bool {
        self.step(r).0.local
    }

    /// Every host the run touches, in inventory order.
    pub fn run_hosts(&self) -> Vec<&Host> {
        let used: HashSet<&String> = self.targets.values().flatten().collect();
        self.inventory
            .hosts
            .iter()
            .filter(|h| used.contains(&h.name))
            .collect()
    }

    pub fn endpoint(&self, h: &Host) -> Endpoint {
        h.endpoint()
    }

    /// `user@host` as the dry-run, the journal and the log show it: the user ssh
    /// resolved (`logins.rs`), else the inventory's, else the local one.
    pub(super) fn login(&self, host: Option<&Host>) -> String {
        match host {
            Some(h) if h.connection == ConnectionKind::Ssh => {
                let user = match self.logins.get(&h.name) {
                    Some(r) => &r.user,
                    None => h.ssh.user.as_ref().unwrap_or(&self.opts.local_user),
                };
                format!("{user}@{}", h.name)
            }
            Some(h) => format!("{}@{}", self.opts.local_user, h.name),
            None => format!("{}@localhost", self.opts.local_user),
        }
    }

    /// `--limit` as given.
    pub fn limit_pattern(&self) -> Option<&str> {
        self.opts.limit.as_deref()
    }

    pub fn is_limited(&self) -> bool {
        self.limit.is_some()
    }
}
