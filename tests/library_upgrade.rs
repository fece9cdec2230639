//! The `upgrade` runbook (SOP 004 §2.2 / §3.3) over real sshd, against simulated
//! e-cology nodes: the ApusicAS simulator (examples/demo/sim/asadmin) with trees
//! seeded from examples/demo/seed, and the demo packages.

mod library_support;
mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use library_support::{
    events, host_entry, install_sim, opsrun, repo, scratch, seed_node, sim_vars, tree_digest, Run,
};
use support::sshd::SshFleet;

struct Estate {
    _fleet: SshFleet,
    dir: tempfile::TempDir,
    inventory: PathBuf,
    events: PathBuf,
    weaver: Vec<PathBuf>,
}

/// Two app nodes over sshd; h1 also backs up its shared data.
fn estate() -> Estate {
    let fleet = SshFleet::start(2);
    let (sim, events) = install_sim(&fleet);
    let weaver: Vec<PathBuf> = (0..2).map(|i| seed_node(&fleet, i)).collect();
    let mut inv = String::from("name: upgrade-test\nconfirm: none\ngroups:\n  app:\n    hosts:\n");
    for i in 0..2 {
        inv.push_str(&format!(
            "      {}:\n        {}        vars:\n{}",
            fleet.name(i),
            host_entry(&fleet, i),
            sim_vars(&fleet, i, &sim, &events)
        ));
    }
    inv.push_str(&format!(
        "          sharedata_home: {}\n",
        fleet.work_dir(1).join("sharedata").display()
    ));
    let dir = scratch();
    let inventory = dir.path().join("inventory.yaml");
    fs::write(&inventory, inv).unwrap();
    Estate {
        _fleet: fleet,
        dir,
        inventory,
        events,
        weaver,
    }
}

impl Estate {
    fn upgrade(&self, extra: &[&str]) -> Run {
        let mut args = vec!["upgrade", "-i", self.inventory.to_str().unwrap(), "--yes"];
        args.extend_from_slice(extra);
        opsrun(self.dir.path(), &args)
    }
}

fn package(rel: &str) -> String {
    repo()
        .join("examples/demo/packages")
        .join(rel)
        .display()
        .to_string()
}

fn backups(weaver: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(weaver)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .collect();
    v.sort();
    v
}

fn tar_list(archive: &Path) -> String {
    let out = Command::new("tar")
        .arg("tzf")
        .arg(archive)
        .output()
        .unwrap();
    assert!(out.status.success(), "tar tzf {}", archive.display());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn upgrade_rolls_out_node_by_node_with_a_verified_backup() {
    let e = estate();
    let before = tree_digest(&e.weaver[0].join("ecology"));
    let r = e.upgrade(&["-e", &format!("package={}", package("release"))]);
    assert_eq!(r.code, 0, "{r:?}");

    for w in &e.weaver {
        let version = fs::read_to_string(w.join("ecology/WEB-INF/version.properties")).unwrap();
        // Both packages, in ascending order: 002 was unpacked last.
        assert_eq!(version, "release=20260301-002\n");
        assert!(w.join("ecology/WEB-INF/lib/workflow-sign.jar.txt").exists());
        assert!(fs::read_to_string(w.join("ecology/login.jsp"))
            .unwrap()
            .contains("v2"));
        let leftovers = backups(w, "opsrun-packages-");
        assert!(
            leftovers.is_empty(),
            "uploaded bundle removed: {leftovers:?}"
        );
        let b = backups(w, "bakecology-");
        assert_eq!(b.len(), 1, "{b:?}");
        let listed = tar_list(&b[0]);
        assert!(listed.contains("ecology/WEB-INF/web.xml"), "{listed}");
        assert!(!listed.contains("ecology/log/"), "excludes apply: {listed}");
        assert!(!listed.contains("ecology/doctempfile/"), "{listed}");
    }
    assert_ne!(tree_digest(&e.weaver[0].join("ecology")), before);
    // Shared data is backed up where `sharedata_home` is set, without `filesystem`.
    assert_eq!(backups(&e.weaver[1], "sharedata-").len(), 1);
    assert!(backups(&e.weaver[0], "sharedata-").is_empty());

    // serial: 1 — h1 is stopped, upgraded and started before h2 is stopped.
    let ev = events(&e.events);
    let pos = |host: &str, cmd: &str| {
        ev.iter()
            .position(|(h, c, res)| h == host && c == cmd && res.starts_with("ok"))
            .unwrap_or_else(|| panic!("no {cmd} on {host}: {ev:?}"))
    };
    assert!(pos("h1", "stop-domain") < pos("h1", "start-domain"));
    assert!(
        pos("h1", "start-domain") < pos("h2", "stop-domain"),
        "{ev:?}"
    );
    assert!(pos("h2", "stop-domain") < pos("h2", "start-domain"));
    assert!(
        r.log
            .contains("package 001  ecology-20260301-001.zip  sha256 a25e9673"),
        "{r:?}"
    );
    assert!(r.log.contains("Business-impact downtime"), "{r:?}");
}

#[test]
fn failed_health_check_restores_the_tree_byte_for_byte() {
    let e = estate();
    let before: Vec<String> = e
        .weaver
        .iter()
        .map(|w| tree_digest(&w.join("ecology")))
        .collect();
    let r = e.upgrade(&["-e", &format!("package={}", package("broken.zip"))]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("step `Health check` failed on h1"),
        "{r:?}"
    );
    assert!(r.stderr.contains("restored"), "{r:?}");
    assert!(!r.stderr.contains("ROLLBACK INCOMPLETE"), "{r:?}");

    // The application tree is exactly what it was, logs (left out of the backup) included.
    assert_eq!(tree_digest(&e.weaver[0].join("ecology")), before[0]);
    assert_eq!(
        fs::read_to_string(e.weaver[0].join("ecology/log/ecology.log")).unwrap(),
        "2023-01-01 08:00:00 INFO demo log line kept out of backups\n"
    );
    // The failed tree is kept for the vendor, the uploaded bundle is gone.
    assert_eq!(backups(&e.weaver[0], "ecology.failed-").len(), 1);
    assert!(backups(&e.weaver[0], "opsrun-packages-").is_empty());

    // h1 is serving again; h2 (the next batch) was never touched.
    let ev = events(&e.events);
    let h1: Vec<String> = ev
        .iter()
        .filter(|(h, c, _)| h == "h1" && c != "list-domains")
        .map(|(_, c, res)| format!("{c} {res}"))
        .collect();
    assert_eq!(
        h1,
        [
            "stop-domain ok",
            "start-domain ok (application failed to deploy)",
            "stop-domain ok",
            "start-domain ok",
        ],
        "{ev:?}"
    );
    assert!(
        ev.iter().all(|(h, c, _)| h != "h2" || c == "list-domains"),
        "{ev:?}"
    );
    assert_eq!(tree_digest(&e.weaver[1].join("ecology")), before[1]);
    assert!(r.log.contains("restored "), "{r:?}");
}

#[test]
fn a_bad_checksum_stops_before_anything_changes() {
    let e = estate();
    let before = tree_digest(&e.weaver[0]);
    let r = e.upgrade(&[
        "-e",
        &format!("package={}", package("release/ecology-20260301-001.zip")),
        "-e",
        &format!("sha256={}", "0".repeat(64)),
    ]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("step `Check the packages` failed"),
        "{r:?}"
    );
    assert!(r.log.contains("expected 0000"), "{r:?}");
    assert!(events(&e.events).is_empty(), "no host was touched");
    assert_eq!(tree_digest(&e.weaver[0]), before);
}

#[test]
fn dry_run_shows_batches_backup_options_and_the_rollback_guide() {
    let e = estate();
    let w1 = e.weaver[0].display().to_string();
    let r = opsrun(
        e.dir.path(),
        &[
            "upgrade",
            "-i",
            e.inventory.to_str().unwrap(),
            "--dry-run",
            "-e",
            "package=/srv/pkgs",
        ],
    );
    assert_eq!(r.code, 0, "{r:?}");
    let out = &r.stdout;
    for needle in [
        "batches    [h1] [h2]",
        "package=/srv/pkgs",
        "upload <captured: bundle> -> h1:",
        "gate: Stop e-cology on this batch of nodes?",
        "(service `ecology` stopped)",
        // Options before the path, the frozen stamp in the name, exit 1 tolerated.
        &format!("[opsrun-test@h1]# tar czf {w1}/bakecology-"),
        "--exclude=ecology/log --exclude=ecology/doctempfile --exclude=ecology/WEB-INF/sqllog --exclude=ecology/cloudstore_BK --exclude=ecology/spa_BK -C ",
        "gzip -t ",
        "unzip -o -q",
        "h1: skipped (when: sharedata_home is defined is false)",
        "Restore the pre-upgrade backup",
        "Check the symlinks in ecology",
    ] {
        assert!(out.contains(needle), "dry-run lacks {needle:?}:\n{out}");
    }
    assert!(!out.contains("$(date"), "{out}");
    assert!(events(&e.events).is_empty(), "a dry-run touches nothing");
}
