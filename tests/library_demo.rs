//! The README's main commands: `opsrun upgrade --env demo` on a fresh copy of the
//! repository, and its documented failing variant. No sshd: the demo hosts are
//! `connection: local`. Also: every shipped runbook passes `opsrun check`.

mod library_support;
mod support;

use std::path::Path;

use library_support::{copy_tree, opsrun, repo, scratch, tree_digest};

/// A fresh "clone": the demo inventory and examples/, without any sandbox state.
fn fresh_clone() -> tempfile::TempDir {
    let dir = scratch();
    copy_tree(
        &repo().join("examples/demo/sim"),
        &dir.path().join("examples/demo/sim"),
    );
    copy_tree(
        &repo().join("examples/demo/seed"),
        &dir.path().join("examples/demo/seed"),
    );
    copy_tree(
        &repo().join("examples/demo/packages"),
        &dir.path().join("examples/demo/packages"),
    );
    std::fs::create_dir_all(dir.path().join("inventories")).unwrap();
    std::fs::copy(
        repo().join("inventories/demo.yaml"),
        dir.path().join("inventories/demo.yaml"),
    )
    .unwrap();
    dir
}

fn ecology(dir: &Path, host: &str) -> std::path::PathBuf {
    dir.join("examples/demo/hosts")
        .join(host)
        .join("WEAVER/ecology")
}

#[test]
fn the_demo_upgrade_runs_and_its_failing_variant_rolls_back() {
    let dir = fresh_clone();
    let ok = opsrun(dir.path(), &["upgrade", "--env", "demo", "--yes"]);
    assert_eq!(ok.code, 0, "{ok:?}");
    for host in ["oa1", "oa2"] {
        let v =
            std::fs::read_to_string(ecology(dir.path(), host).join("WEB-INF/version.properties"))
                .unwrap();
        assert_eq!(v, "release=20260301-002\n", "{host}");
    }
    // lb1's nginx.conf was seeded, each node drained in turn and put back.
    let conf = dir
        .path()
        .join("examples/demo/hosts/lb1/nginx/conf/nginx.conf");
    let seed =
        std::fs::read_to_string(repo().join("examples/demo/seed/nginx/conf/nginx.conf")).unwrap();
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), seed);
    let events =
        std::fs::read_to_string(dir.path().join("examples/demo/hosts/events.log")).unwrap();
    let reloads: Vec<&str> = events
        .lines()
        .filter(|l| l.contains(" lb1 nginx-reload "))
        .map(|l| l.split_once(" ecologycluster: ").unwrap().1)
        .collect();
    assert_eq!(
        reloads,
        [
            "127.0.0.12:6888",
            "127.0.0.11:6888 127.0.0.12:6888",
            "127.0.0.11:6888",
            "127.0.0.11:6888 127.0.0.12:6888"
        ],
        "{events}"
    );

    let before = tree_digest(&ecology(dir.path(), "oa1"));
    // Backups are named by `run.stamp` (to the second) and never overwritten: a
    // second run within the same second would rightly refuse to start.
    let second = chrono::Local::now().timestamp();
    while chrono::Local::now().timestamp() == second {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let bad = opsrun(
        dir.path(),
        &[
            "upgrade",
            "--env",
            "demo",
            "--yes",
            "-e",
            "package=examples/demo/packages/broken.zip",
        ],
    );
    assert_eq!(bad.code, 1, "{bad:?}");
    assert!(
        bad.stderr.contains("step `Health check` failed on oa1"),
        "{bad:?}"
    );
    assert!(bad.stderr.contains("restored"), "{bad:?}");
    assert_eq!(tree_digest(&ecology(dir.path(), "oa1")), before);
    assert_eq!(
        std::fs::read_to_string(&conf).unwrap(),
        seed,
        "oa1 back in the upstream"
    );
}

#[test]
fn every_shipped_runbook_passes_check_without_warnings() {
    let dir = scratch();
    let r = opsrun(dir.path(), &["check"]);
    assert_eq!(r.code, 0, "{r:?}");
    for name in [
        "tomcat-start",
        "tomcat-stop",
        "tomcat-restart",
        "tomcat-status",
        "apusic-start",
        "apusic-stop",
        "upgrade",
        "app-sync",
    ] {
        assert!(
            r.stdout.contains(&format!("ok       runbook {name}\n")),
            "{name} not checked clean: {r:?}"
        );
    }
}
