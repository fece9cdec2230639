//! `app-sync` (SOP 004 §2.1) over real sshd: production (h1) is copied to the test
//! node (h2) with a real `scp` from h1 to h2, as the SOP does, using a key the
//! test gives the login user. Both nodes run the ApusicAS simulator.

use crate::support::{
    cli::Run,
    fleet::{chown_to_test_user, host_entry, Ssh, SshFleet, TEST_USER},
    lab::{opsrun, scratch, tree_digest},
    sim::{events, install_sim, seed_node, sim_vars},
};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;

struct Sync {
    _fleet: SshFleet,
    dir: tempfile::TempDir,
    inventory: PathBuf,
    events: PathBuf,
    prod: PathBuf,
    test: PathBuf,
}

const TEST_PROPS: &str = "ecology.url=jdbc:dm://10.154.1.190:5236/ECOLOGY_TEST\n";

fn setup() -> Sync {
    let fleet = SshFleet::start(2);
    let (sim, events) = install_sim(&fleet);
    let prod = seed_node(&fleet, 0);
    let test = seed_node(&fleet, 1);
    // The test node has its own database settings, and an older release.
    fs::write(
        test.join("ecology/WEB-INF/prop/weaver.properties"),
        TEST_PROPS,
    )
    .unwrap();
    fs::write(
        test.join("ecology/WEB-INF/version.properties"),
        "release=20220101\n",
    )
    .unwrap();
    fs::write(
        prod.join("ecology/WEB-INF/version.properties"),
        "release=20230301\n",
    )
    .unwrap();

    // A key with which h1's login user may scp to h2 (the fleet shares one authorized_keys).
    let keys = fleet.root().join("sync-keys");
    fs::create_dir_all(&keys).unwrap();
    let key = keys.join("id_sync");
    let ok = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "app-sync", "-f"])
        .arg(&key)
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let authorized = fleet.root().join("authorized_keys");
    let mut keys_text = fs::read_to_string(&authorized).unwrap();
    keys_text.push_str(&fs::read_to_string(key.with_extension("pub")).unwrap());
    fs::write(&authorized, keys_text).unwrap();
    fs::write(
        keys.join("known_hosts"),
        format!("{}\n", fleet.known_hosts_line(1)),
    )
    .unwrap();
    chown_to_test_user(&keys);
    fs::set_permissions(&keys, fs::Permissions::from_mode(0o700)).unwrap();

    let scp_options = format!(
        "-O -P {} -i {} -o IdentitiesOnly=yes -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes",
        fleet.port(1),
        key.display(),
        keys.join("known_hosts").display()
    );
    let mut from_vars = sim_vars(&fleet, 0, &sim, &events);
    from_vars.push((
        "sync_dest",
        format!("{TEST_USER}@{}:{}/", fleet.address(1), test.display()),
    ));
    from_vars.push(("sync_scp_options", scp_options));
    let inv = format!(
        "name: sync-test\nconfirm: none\ngroups:\n  sync-from:\n    hosts:\n{}  sync-to:\n    hosts:\n{}",
        host_entry(&fleet, 0, "h1", Ssh::PerHost, &from_vars),
        host_entry(&fleet, 1, "h2", Ssh::PerHost, &sim_vars(&fleet, 1, &sim, &events)),
    );
    let dir = scratch();
    let inventory = dir.path().join("inventory.yaml");
    fs::write(&inventory, inv).unwrap();
    Sync {
        _fleet: fleet,
        dir,
        inventory,
        events,
        prod,
        test,
    }
}

impl Sync {
    fn run(&self, extra: &[&str]) -> Run {
        let mut args = vec!["app-sync", "-i", self.inventory.to_str().unwrap()];
        args.extend_from_slice(extra);
        opsrun(self.dir.path(), &args, &[])
    }

    fn changes(&self, host: &str) -> Vec<String> {
        events(&self.events)
            .into_iter()
            .filter(|(h, c, _)| h == host && c != "list-domains")
            .map(|(_, c, res)| format!("{c} {res}"))
            .collect()
    }

    fn status(&self, weaver: &std::path::Path) -> String {
        fs::read_to_string(weaver.join("ApusicAS/state/status"))
            .unwrap()
            .trim()
            .to_string()
    }
}

fn read(p: PathBuf) -> String {
    fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn production_is_copied_to_test_keeping_test_settings() {
    let s = setup();
    let prod_before = tree_digest(&s.prod.join("ecology"));
    let r = s.run(&["--yes"]);
    assert_eq!(r.code, 0, "{r:?}");

    // Test now runs production's release with its own database and session settings.
    assert_eq!(
        read(s.test.join("ecology/WEB-INF/version.properties")),
        "release=20230301\n"
    );
    assert_eq!(
        read(s.test.join("ecology/WEB-INF/prop/weaver.properties")),
        TEST_PROPS
    );
    // The previous test tree is kept under a stamped name.
    let aside: Vec<_> = fs::read_dir(&s.test)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("ecology_bak"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(
        read(s.test.join(&aside[0]).join("WEB-INF/version.properties")),
        "release=20220101\n"
    );
    // Production's tree is untouched, and production is running again (the SOP forgot this).
    assert_eq!(tree_digest(&s.prod.join("ecology")), prod_before);
    assert_eq!(s.status(&s.prod), "running");
    assert_eq!(s.status(&s.test), "running");
    assert_eq!(s.changes("h1"), ["stop-domain ok", "start-domain ok"]);
    assert_eq!(s.changes("h2"), ["stop-domain ok", "start-domain ok"]);
    // Production was back up before the test node was stopped.
    let ev = events(&s.events);
    let at = |h: &str, c: &str| ev.iter().position(|e| e.0 == h && e.1 == c).unwrap();
    assert!(at("h1", "start-domain") < at("h2", "stop-domain"), "{ev:?}");
    assert!(r.log_md().contains("Business-impact downtime"), "{r:?}");
}

#[test]
fn a_failed_test_start_puts_the_old_test_tree_back() {
    let s = setup();
    let test_before = tree_digest(&s.test.join("ecology"));
    fs::write(s.test.join("ApusicAS/state/fault"), "http500-once\n").unwrap();
    let r = s.run(&["--yes"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr
            .contains("step `Health check the test application` failed on h2"),
        "{r:?}"
    );
    assert!(
        r.stderr.contains("rolled back 4 steps: undone on h1: "),
        "{r:?}"
    );
    assert!(!r.stderr.contains("ROLLBACK INCOMPLETE"), "{r:?}");
    assert_eq!(tree_digest(&s.test.join("ecology")), test_before);
    assert_eq!(s.status(&s.test), "running");
    assert_eq!(s.status(&s.prod), "running");
    assert_eq!(
        s.changes("h2"),
        [
            "stop-domain ok",
            "start-domain ok (application failed to deploy)",
            "stop-domain ok",
            "start-domain ok",
        ]
    );
}

#[test]
fn dry_run_shows_both_sides() {
    let s = setup();
    let r = s.run(&["--dry-run"]);
    assert_eq!(r.code, 0, "{r:?}");
    let p = s.prod.display().to_string();
    for needle in [
        "gate: Stop PRODUCTION e-cology for a consistent copy?".to_string(),
        format!("[opsrun-test@h1]# tar czf {p}/bakecology-"),
        "--exclude=ecology/log --exclude=ecology/doctempfile".to_string(),
        format!("-C {p} ecology"),
        "scp -q -o BatchMode=yes -O -P".to_string(),
        "[opsrun-test@h2]# mkdir ".to_string(),
        "weaver_new_session.properties".to_string(),
        "(service `ecology-test` stopped)".to_string(),
    ] {
        assert!(
            r.stdout.contains(&needle),
            "lacks {needle:?}:\n{}",
            r.stdout
        );
    }
    assert!(events(&s.events).is_empty());
}
