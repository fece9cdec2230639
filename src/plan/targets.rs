//! Targeting: which hosts each step runs on (`hosts:`, `--limit`), how each is
//! reached, and the refusal of a run that would touch no host at all.

use super::*;

/// A run that would touch no host at all is refused: it would "succeed" and sign
/// a log of nothing. One step whose glob matches nothing (an optional `lb*`
/// group) is fine, and so is a runbook of `local: true` steps only.
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
    if remote
        .iter()
        .any(|(i, _)| targets.get(&(false, *i)).is_some_and(|h| !h.is_empty()))
    {
        return Ok(());
    }
    let Some(&(_, first)) = remote.first() else {
        return Ok(());
    };
    let mut patterns: Vec<&str> = Vec::new();
    for (_, p) in &remote {
        if !patterns.contains(&p.src.as_str()) {
            patterns.push(&p.src);
        }
    }
    let quoted = patterns
        .iter()
        .map(|p| format!("`{p}`"))
        .collect::<Vec<_>>()
        .join(", ");
    // Patterns were resolved above, so they are valid: only the limit can be at fault
    // when they match hosts on their own.
    let unlimited = remote
        .iter()
        .any(|(_, p)| pattern::resolve(&p.src, inventory).is_ok_and(|h| !h.is_empty()));
    if let (Some(limit), true) = (&opts.limit, unlimited) {
        return Err(Error::Usage(format!(
            "--limit `{limit}` matches none of the hosts runbook `{}` runs on ({quoted} in inventory `{}`): there is nothing to run",
            rb.name, inventory.name
        )));
    }
    Err(Error::from(Diagnostic {
        level: crate::diagnostic::Level::Error,
        source: rb.source.clone(),
        span: first.span,
        message: format!(
            "{quoted} {} no host in inventory `{}`: there is nothing to run",
            if patterns.len() == 1 { "matches" } else { "match" },
            inventory.name
        ),
        help: Some(
            "a step's `on:` glob may match nothing (an optional group), but a run needs at least one host"
                .into(),
        ),
    }))
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
        Endpoint {
            host: h.name.clone(),
            kind: h.connection,
            address: h.address.clone(),
            user: h.ssh.user.clone(),
            port: h.ssh.port,
            jump: h.ssh.jump.clone(),
            identity_file: h.ssh.identity_file.clone(),
            known_hosts_file: h.ssh.known_hosts_file.clone(),
            config_file: h.ssh.config_file.clone(),
            connect_timeout: h.ssh.connect_timeout,
        }
    }

    pub(super) fn login(&self, host: Option<&Host>) -> String {
        match host {
            Some(h) if h.connection == ConnectionKind::Ssh => format!(
                "{}@{}",
                h.ssh.user.as_deref().unwrap_or(&self.opts.local_user),
                h.name
            ),
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
