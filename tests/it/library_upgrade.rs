//! The `upgrade` runbook (SOP 004 §2.2 / §3.3) over real sshd, against simulated
//! e-cology nodes: the ApusicAS simulator (examples/demo/sim/asadmin) with trees
//! seeded from examples/demo/seed, and the demo packages; in front of them, a
//! load balancer (h3) with the nginx simulator (examples/demo/sim/nginx), from
//! which each node is drained while it is upgraded (SOP 004 §5.3).

use crate::support::{
    cli::Run,
    fleet::{chown_to_test_user, host_entry, Ssh, SshFleet},
    lab::{opsrun, repo, scratch, tree_digest},
    sim::{app_inventory, events, install_nginx_sim, install_sim, seed_node},
};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

struct Estate {
    _fleet: SshFleet,
    dir: tempfile::TempDir,
    inventory: PathBuf,
    events: PathBuf,
    weaver: Vec<PathBuf>,
    /// The load balancer's nginx.conf, when the estate has one.
    lb_conf: Option<PathBuf>,
    /// `ADDRESS:6888` of h1 and h2, as in the upstream.
    backend: Vec<String>,
}

/// The load balancer's conf as in SOP 004 §5.3: `H1`/`H2` stand for the nodes'
/// addresses; one more server was taken out by an administrator before the change.
const NGINX_CONF: &str = "\
worker_processes  2;
events {
    worker_connections  1024;
}
http {
    #####ecology start#####
    upstream ecologycluster{
        sticky name=ecologycluster; ##
        server H1:6888;
        server H2:6888 max_fails=3;
        #server 10.154.54.58:6888;
    }
    server {
        listen 80;
        location / { proxy_pass http://ecologycluster; }
    }
}
";

/// Two app nodes over sshd behind a load balancer (h3); h1 also backs up its shared data.
fn estate() -> Estate {
    estate_with(Some(NGINX_CONF))
}

/// `lb`: the load balancer's nginx.conf (with `H1`/`H2` placeholders), or no `lb` group.
fn estate_with(lb: Option<&str>) -> Estate {
    let fleet = SshFleet::start(if lb.is_some() { 3 } else { 2 });
    let (sim, events) = install_sim(&fleet);
    let weaver: Vec<PathBuf> = (0..2).map(|i| seed_node(&fleet, i)).collect();
    let backend: Vec<String> = (0..2)
        .map(|i| format!("{}:6888", fleet.address(i)))
        .collect();
    let mut inv = app_inventory("upgrade-test", &fleet, &sim, &events);
    inv.push_str(&format!(
        "          sharedata_home: {}\n",
        fleet.work_dir(1).join("sharedata").display()
    ));
    let lb_conf = lb.map(|text| {
        let nginx = install_nginx_sim(&fleet);
        let conf = fleet.work_dir(2).join("nginx/conf/nginx.conf");
        fs::create_dir_all(conf.parent().unwrap()).unwrap();
        fs::write(
            &conf,
            text.replace("H1", fleet.address(0))
                .replace("H2", fleet.address(1)),
        )
        .unwrap();
        chown_to_test_user(fleet.work_dir(2));
        inv.push_str(&format!(
            "  lb:\n    hosts:\n{}",
            host_entry(
                &fleet,
                2,
                fleet.name(2),
                Ssh::PerHost,
                &[
                    ("nginx_conf", conf.display().to_string()),
                    (
                        "nginx_cmd",
                        format!(
                            "{} --host {} --events {}",
                            nginx.display(),
                            fleet.name(2),
                            events.display()
                        )
                    ),
                    ("lb_drain_wait", "4".to_string()),
                ]
            )
        ));
        conf
    });
    let dir = scratch();
    let inventory = dir.path().join("inventory.yaml");
    fs::write(&inventory, inv).unwrap();
    Estate {
        _fleet: fleet,
        dir,
        inventory,
        events,
        weaver,
        lb_conf,
        backend,
    }
}

/// What the load balancer and the nodes did, in order: `reload SERVERS` (the
/// servers in service after each nginx reload) and `HOST stop-domain|start-domain`.
fn traffic(e: &Estate) -> Vec<String> {
    events(&e.events)
        .into_iter()
        .filter_map(|(h, c, res)| match c.as_str() {
            "nginx-reload" => Some(format!(
                "reload {}",
                res.strip_prefix("ok ecologycluster: ")
                    .unwrap_or_else(|| panic!("reload failed: {res}"))
            )),
            "stop-domain" | "start-domain" if res.starts_with("ok") => Some(format!("{h} {c}")),
            _ => None,
        })
        .collect()
}

impl Estate {
    fn upgrade(&self, extra: &[&str]) -> Run {
        let mut args = vec!["upgrade", "-i", self.inventory.to_str().unwrap(), "--yes"];
        args.extend_from_slice(extra);
        opsrun(self.dir.path(), &args, &[])
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
    let conf_before = fs::read_to_string(e.lb_conf.as_ref().unwrap()).unwrap();
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
        r.log_md()
            .contains("package 001  ecology-20260301-001.zip  sha256 a25e9673"),
        "{r:?}"
    );
    assert!(r.log_md().contains("Business-impact downtime"), "{r:?}");

    // Each node leaves the load balancer before it stops and comes back once healthy;
    // the other node serves throughout.
    let (n1, n2) = (&e.backend[0], &e.backend[1]);
    assert_eq!(
        traffic(&e),
        [
            format!("reload {n2}"),
            "h1 stop-domain".into(),
            "h1 start-domain".into(),
            format!("reload {n1} {n2}"),
            format!("reload {n1}"),
            "h2 stop-domain".into(),
            "h2 start-domain".into(),
            format!("reload {n1} {n2}"),
        ],
        "{r:?}"
    );
    // The conf ends as it began, the administrator's own `#server` line untouched,
    // and a backup per batch is left next to it.
    let conf = e.lb_conf.as_ref().unwrap();
    assert_eq!(fs::read_to_string(conf).unwrap(), conf_before);
    let lb_backups = backups(conf.parent().unwrap(), "nginx.conf.opsrun-");
    assert_eq!(lb_backups.len(), 2, "{lb_backups:?}");
    assert!(lb_backups[0].to_string_lossy().ends_with("-h1"));
    assert!(lb_backups[1].to_string_lossy().ends_with("-h2"));
    assert!(
        r.log_md()
            .contains("| 5 | Drain the node from the load balancer | h3 (batch 1) | ok |"),
        "{r:?}"
    );
    assert!(r.log_md().contains("| h3 (batch 2) | ok |"), "{r:?}");
    assert!(
        r.log_md().contains(&format!("drained:  server {n1};")),
        "{r:?}"
    );
    assert!(
        r.log_md()
            .contains(&format!("put back: server {n2} max_fails=3;")),
        "{r:?}"
    );
}

#[test]
fn failed_health_check_restores_the_tree_byte_for_byte() {
    let e = estate();
    let conf_before = fs::read_to_string(e.lb_conf.as_ref().unwrap()).unwrap();
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
    assert!(r.stderr.contains(": undone on h1: "), "{r:?}");
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
    assert!(r.log_md().contains("undone on "), "{r:?}");

    // h1 went back into the load balancer with the restored conf; h2 was never drained.
    let (n1, n2) = (&e.backend[0], &e.backend[1]);
    assert_eq!(
        traffic(&e),
        [
            format!("reload {n2}"),
            "h1 stop-domain".into(),
            "h1 start-domain".into(),
            "h1 stop-domain".into(),
            "h1 start-domain".into(),
            format!("reload {n1} {n2}"),
        ],
        "{r:?}"
    );
    assert_eq!(
        fs::read_to_string(e.lb_conf.as_ref().unwrap()).unwrap(),
        conf_before
    );
    assert!(
        r.log_md()
            .contains("| 5 | Drain the node from the load balancer | h3 (batch 1) | ok |"),
        "undone: {r:?}"
    );
}

#[test]
fn the_last_node_serving_is_never_drained() {
    // An administrator already took h2 out: draining h1 would empty the upstream.
    let e = estate_with(Some(&NGINX_CONF.replace("server H2", "#server H2")));
    let conf_before = fs::read_to_string(e.lb_conf.as_ref().unwrap()).unwrap();
    let r = e.upgrade(&["-e", &format!("package={}", package("release"))]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr
            .contains("step `Drain the node from the load balancer` failed on h3"),
        "{r:?}"
    );
    assert!(r.log_md().contains("with no server: refused"), "{r:?}");
    assert_eq!(
        fs::read_to_string(e.lb_conf.as_ref().unwrap()).unwrap(),
        conf_before
    );
    assert!(traffic(&e).is_empty(), "nothing stopped, nothing reloaded");
}

#[test]
fn without_a_load_balancer_the_drain_steps_have_no_hosts() {
    let e = estate_with(None);
    let r = e.upgrade(&["-e", &format!("package={}", package("release"))]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        traffic(&e),
        [
            "h1 stop-domain",
            "h1 start-domain",
            "h2 stop-domain",
            "h2 start-domain"
        ]
    );
    assert!(
        r.stderr
            .contains("Drain the node from the load balancer: no hosts (`lb*` matches none)"),
        "{r:?}"
    );
    assert!(
        r.log_md()
            .contains("| 12 | Put the node back in the load balancer | (no hosts) | skipped |"),
        "{r:?}"
    );
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
    assert!(r.log_md().contains("expected 0000"), "{r:?}");
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
        &[],
    );
    assert_eq!(r.code, 0, "{r:?}");
    let out = &r.stdout;
    for needle in [
        "batches    [h1] [h2]",
        "package=/srv/pkgs",
        "upload <captured: bundle> -> h1:",
        "gate: Upgrade this batch of nodes?",
        "(service `ecology` stopped)",
        // Options before the path, the frozen stamp in the name, exit 1 tolerated.
        &format!("[opsrun-test@h1]# tar czf {w1}/bakecology-"),
        "--exclude=ecology/log --exclude=ecology/doctempfile --exclude=ecology/WEB-INF/sqllog --exclude=ecology/cloudstore_BK --exclude=ecology/spa_BK -C ",
        "gzip -t ",
        "unzip -o -q",
        "h1: skipped (when: sharedata_home is defined is false)",
        "Restore the pre-upgrade backup",
        "Check the symlinks in ecology",
        "rollback guide (run later with `opsrun rollback RUN`, batch by batch like the run):",
        "batches    [h1] [h2] (the step list runs batch by batch; h3 in every batch)",
    ] {
        assert!(out.contains(needle), "dry-run lacks {needle:?}:\n{out}");
    }
    // The drain is shown once per batch, each with its own node and backup name.
    for (step, n) in [
        ("[5/12] Drain the node from the load balancer", 2),
        ("[12/12] Put the node back in the load balancer", 2),
    ] {
        let at = out
            .find(step)
            .unwrap_or_else(|| panic!("no {step}:\n{out}"));
        let next = out[at + 1..].find("\n[").map_or(out.len(), |i| at + 1 + i);
        let section = &out[at..next];
        assert_eq!(
            section.matches("[opsrun-test@h3]# sh -e").count(),
            n,
            "{section}"
        );
        for (b, host) in [(1, 0), (2, 1)] {
            let head = format!("    batch {b} (h{}):", host + 1);
            let from = section
                .find(&head)
                .unwrap_or_else(|| panic!("no {head:?}:\n{section}"));
            let body = &section[from..];
            assert!(
                body.contains(&format!("| servers={}\n", e.backend[host])),
                "{b}: {body}"
            );
        }
        if step.contains("Drain") {
            assert!(section.contains("nginx.conf.opsrun-"), "{section}");
            assert!(section.contains("-h2\n"), "{section}");
        }
    }
    assert!(!out.contains("$(date"), "{out}");
    assert!(events(&e.events).is_empty(), "a dry-run touches nothing");
}

#[test]
fn a_failure_in_the_second_batch_undoes_both_drains_latest_first() {
    let e = estate();
    let conf_before = fs::read_to_string(e.lb_conf.as_ref().unwrap()).unwrap();
    // h2's next start deploys but answers HTTP 500: its health check fails.
    fs::write(e.weaver[1].join("ApusicAS/state/fault"), "http500-once").unwrap();
    let r = e.upgrade(&["-e", &format!("package={}", package("release"))]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("step `Health check` failed on h2"),
        "{r:?}"
    );
    assert!(!r.stderr.contains("ROLLBACK INCOMPLETE"), "{r:?}");
    // The rollout is undone everywhere. h1 cannot leave the pool again while h2 is
    // out, so it stays in; then the batch-2 drain is undone before the batch-1 one.
    assert!(
        r.stderr
            .contains("[undo 5 batch 2] Drain the node from the load balancer"),
        "{r:?}"
    );
    let (b2, b1) = (
        r.stderr.find("[undo 5 batch 2]").unwrap(),
        r.stderr.find("[undo 5 batch 1]").unwrap(),
    );
    assert!(b2 < b1, "{r:?}");
    assert!(
        r.log_md()
            .contains("left in the load balancer: it is the last node serving"),
        "{r:?}"
    );
    let (n1, n2) = (&e.backend[0], &e.backend[1]);
    let t = traffic(&e);
    assert_eq!(
        t[..5],
        [
            format!("reload {n2}"),
            "h1 stop-domain".into(),
            "h1 start-domain".into(),
            format!("reload {n1} {n2}"),
            format!("reload {n1}"),
        ],
        "{t:?}"
    );
    assert!(
        t.iter().all(|x| x != "reload "),
        "never an empty upstream: {t:?}"
    );
    assert_eq!(t.last().unwrap(), &format!("reload {n1} {n2}"), "{t:?}");
    assert_eq!(
        fs::read_to_string(e.lb_conf.as_ref().unwrap()).unwrap(),
        conf_before
    );
}
