//! `apusic-stop` and `apusic-start` (SOP 004 §5.1) over real sshd, against the
//! ApusicAS simulator (examples/demo/sim/asadmin) on two nodes.

use crate::support::{
    cli::Run,
    fleet::SshFleet,
    lab::{opsrun, scratch},
    sim::{app_inventory, events, install_sim, seed_node},
};
use std::fs;
use std::path::PathBuf;

struct Nodes {
    _fleet: SshFleet,
    dir: tempfile::TempDir,
    inventory: PathBuf,
    events: PathBuf,
    weaver: Vec<PathBuf>,
}

fn nodes() -> Nodes {
    let fleet = SshFleet::start(2);
    let (sim, events) = install_sim(&fleet);
    let weaver: Vec<PathBuf> = (0..2).map(|i| seed_node(&fleet, i)).collect();
    let inv = app_inventory("apusic-test", &fleet, &sim, &events);
    let dir = scratch();
    let inventory = dir.path().join("inventory.yaml");
    fs::write(&inventory, inv).unwrap();
    Nodes {
        _fleet: fleet,
        dir,
        inventory,
        events,
        weaver,
    }
}

impl Nodes {
    fn run(&self, runbook: &str, extra: &[&str]) -> Run {
        let mut args = vec![runbook, "-i", self.inventory.to_str().unwrap()];
        args.extend_from_slice(extra);
        opsrun(self.dir.path(), &args, &[])
    }

    fn state(&self, i: usize) -> String {
        fs::read_to_string(self.weaver[i].join("ApusicAS/state/status"))
            .unwrap()
            .trim()
            .to_string()
    }

    /// (host, command, result) of the simulator calls that change something.
    fn changes(&self) -> Vec<(String, String, String)> {
        events(&self.events)
            .into_iter()
            .filter(|(_, c, _)| c != "list-domains")
            .collect()
    }
}

#[test]
fn stop_then_start_both_nodes() {
    let n = nodes();
    let stop = n.run("apusic-stop", &["--yes"]);
    assert_eq!(stop.code, 0, "{stop:?}");
    assert_eq!(
        (n.state(0), n.state(1)),
        ("stopped".into(), "stopped".into())
    );
    assert!(
        stop.log_md()
            .contains("Command stop-domain executed successfully."),
        "{stop:?}"
    );

    let start = n.run("apusic-start", &["--yes"]);
    assert_eq!(start.code, 0, "{start:?}");
    assert_eq!(
        (n.state(0), n.state(1)),
        ("running".into(), "running".into())
    );
    assert!(
        start.log_md().contains("healthy after 1 tries"),
        "{start:?}"
    );

    // Starting a running domain is skipped, not an error (asadmin itself would fail).
    let before = n.changes().len();
    let again = n.run("apusic-start", &["--yes"]);
    assert_eq!(again.code, 0, "{again:?}");
    assert_eq!(
        n.changes().len(),
        before,
        "no start-domain on a running domain"
    );
    assert!(again.log_md().contains("skipped"), "{again:?}");
}

#[test]
fn an_unhealthy_start_is_stopped_again() {
    let n = nodes();
    assert_eq!(n.run("apusic-stop", &["--yes"]).code, 0);
    fs::write(n.weaver[0].join("ApusicAS/state/fault"), "http500\n").unwrap();
    let r = n.run("apusic-start", &["--yes"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("step `Health check` failed on h1"),
        "{r:?}"
    );
    assert!(r.stderr.contains("rolled back 1 step: undone on "), "{r:?}");
    // The rollback undoes the start wherever it completed: a half-working node takes no traffic.
    assert_eq!(n.state(0), "stopped");
    let h1: Vec<String> = n
        .changes()
        .into_iter()
        .filter(|(h, _, _)| h == "h1")
        .map(|(_, c, res)| format!("{c} {res}"))
        .collect();
    assert_eq!(
        h1,
        [
            "stop-domain ok",
            "start-domain ok (application failed to deploy)",
            "stop-domain ok"
        ]
    );
}

#[test]
fn dry_runs_show_the_asadmin_commands() {
    let n = nodes();
    let stop = n.run("apusic-stop", &["--dry-run"]);
    assert_eq!(stop.code, 0, "{stop:?}");
    let w1 = n.weaver[0].display().to_string();
    for needle in [
        format!("--home {w1} --events"),
        "stop-domain domain1".to_string(),
        "gate: Stop e-cology?".to_string(),
        "grep -q '^domain1 not running'".to_string(),
        "http-get /login.jsp".to_string(),
    ] {
        assert!(
            stop.stdout.contains(&needle),
            "lacks {needle:?}:\n{}",
            stop.stdout
        );
    }
    let start = n.run("apusic-start", &["--dry-run"]);
    assert_eq!(start.code, 0, "{start:?}");
    for needle in [
        "(captures `domain_state`)",
        "runs only if `domain_state != 'running'`",
        "start-domain domain1",
        "rollback:",
        "http-get /login.jsp",
    ] {
        assert!(
            start.stdout.contains(needle),
            "lacks {needle:?}:\n{}",
            start.stdout
        );
    }
    assert!(events(&n.events).is_empty(), "a dry-run touches nothing");
}
