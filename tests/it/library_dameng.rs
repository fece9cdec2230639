//! `dameng-stop` and `dameng-start` (PROCEDURES.md P2, SOP 004 §5.1) over real sshd.
//!
//! Real: OpenSSH servers (one per node, each in its own PID namespace so `pgrep` on
//! a node sees only that node's processes), `sudo` to the `dmdba` account, file
//! ownership, the processes the runbooks look for with `pgrep`.
//! Simulated (tests/fixtures/dameng): DmServiceDMSERVER, DmWatcherServiceDMSERVER,
//! disql and the dmserver process itself. They keep state in files and append every
//! call to one event log shared by the nodes, which is what the order assertions read.

use crate::support::{
    cli::Run,
    fleet::{host_entry, ssh_section, FleetOptions, Ssh, SshFleet},
    lab::opsrun,
    sim::{
        dmserver_procs, ensure_dm_user, install_dameng, last_run, new_event_log, read_events,
        run_text, seq_of, show, start_dameng, DmNode, DB_PASS,
    },
};
use std::fs;
use std::path::{Path, PathBuf};

struct Pair {
    fleet: SshFleet,
    dir: tempfile::TempDir,
    events: PathBuf,
    homes: Vec<PathBuf>,
}

/// Two DM nodes h1, h2 with the given roles, servers and watchers running. The
/// inventory calls h1 the primary (`dm_role_hint`), whatever the roles really are.
fn pair(roles: [&str; 2]) -> Pair {
    ensure_dm_user();
    let fleet = SshFleet::start_with(
        2,
        FleetOptions {
            pid_namespace: true,
            ..FleetOptions::default()
        },
    );
    let events = new_event_log(fleet.root());
    let homes: Vec<PathBuf> = (0..2).map(|i| fleet.work_dir(i).join("dmdbms")).collect();
    for i in 0..2 {
        install_dameng(&DmNode {
            host: fleet.name(i),
            dm_home: &homes[i],
            events: &events,
            role: roles[i],
            license: "2025-12-31",
        });
        start_dameng(&fleet, i, &homes[i]);
    }
    // Only what the runbooks do goes into the log the tests read.
    fs::write(&events, "").unwrap();

    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("inventories")).unwrap();
    let inv = format!(
        "name: simdb\nconfirm: none\n{ssh}groups:\n  db:\n    vars: {{ dm_instance: DMSERVER }}\n    hosts:\n{h1}{h2}",
        ssh = ssh_section(&fleet, true),
        h1 = host_entry(
            &fleet,
            0,
            fleet.name(0),
            Ssh::FromInventory,
            &[
                ("dm_home", homes[0].display().to_string()),
                ("dm_role_hint", "primary".to_string())
            ]
        ),
        h2 = host_entry(
            &fleet,
            1,
            fleet.name(1),
            Ssh::FromInventory,
            &[
                ("dm_home", homes[1].display().to_string()),
                ("dm_role_hint", "standby".to_string())
            ]
        ),
    );
    fs::write(dir.path().join("inventories/simdb.yaml"), inv).unwrap();
    Pair {
        fleet,
        dir,
        events,
        homes,
    }
}

fn run(p: &Pair, runbook: &str, extra: &[&str]) -> Run {
    let mut args = vec![runbook, "--env", "simdb", "--yes"];
    args.extend_from_slice(extra);
    opsrun(p.dir.path(), &args, &[("OPSRUN_SECRET_DB_PASS", DB_PASS)])
}

fn sim_file(home: &Path, name: &str) -> String {
    fs::read_to_string(home.join("sim").join(name))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Nothing in any test may hit the password-on-argv trap, and the password must not
/// reach the run record.
fn assert_no_leaks(p: &Pair) {
    let events = fs::read_to_string(&p.events).unwrap();
    assert!(!events.contains("REFUSED"), "{events}");
    assert!(!events.contains(DB_PASS), "{events}");
    for entry in walk(&p.dir.path().join("runs")) {
        let body = fs::read(&entry).unwrap();
        assert!(
            !String::from_utf8_lossy(&body).contains(DB_PASS),
            "the password leaked into {}",
            entry.display()
        );
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Stop order: both watchers, then `primary`, then `standby`; start: `primary` (server,
/// watcher) before `standby` (server, watcher).
fn assert_stop_order(p: &Pair, primary: &str, standby: &str) {
    let ev = read_events(&p.events);
    let w1 = seq_of(&ev, "h1", "DmWatcherServiceDMSERVER", "stop");
    let w2 = seq_of(&ev, "h2", "DmWatcherServiceDMSERVER", "stop");
    let sp = seq_of(&ev, primary, "DmServiceDMSERVER", "stop");
    let ss = seq_of(&ev, standby, "DmServiceDMSERVER", "stop");
    assert!(w1 < sp && w2 < sp, "watchers first:\n{}", show(&ev));
    assert!(
        sp < ss,
        "primary ({primary}) before standby:\n{}",
        show(&ev)
    );
    assert!(
        !ev.iter().any(|e| e.args.contains("restarted")),
        "no instance may be restarted by a watcher:\n{}",
        show(&ev)
    );
}

fn assert_start_order(p: &Pair, primary: &str, standby: &str) {
    let ev = read_events(&p.events);
    let sp = seq_of(&ev, primary, "DmServiceDMSERVER", "start");
    let wp = seq_of(&ev, primary, "DmWatcherServiceDMSERVER", "start");
    let ss = seq_of(&ev, standby, "DmServiceDMSERVER", "start");
    let ws = seq_of(&ev, standby, "DmWatcherServiceDMSERVER", "start");
    assert!(
        sp < wp && wp < ss && ss < ws,
        "primary ({primary}) server, its watcher, then standby server, its watcher:\n{}",
        show(&ev)
    );
}

#[test]
fn stop_then_start_in_watcher_order() {
    let p = pair(["PRIMARY", "STANDBY"]);
    let out = run(&p, "dameng-stop", &[]);
    assert_eq!(out.code, 0, "{}", run_text(&out));
    assert_stop_order(&p, "h1", "h2");
    for i in 0..2 {
        assert_eq!(
            dmserver_procs(&p.fleet, i),
            "",
            "dmserver left on h{}",
            i + 1
        );
    }
    // The role each node had is left on the node for dameng-start.
    assert!(sim_file(&p.homes[0], "../opsrun-last-role.DMSERVER").starts_with("PRIMARY "));
    assert!(sim_file(&p.homes[1], "../opsrun-last-role.DMSERVER").starts_with("STANDBY "));
    // The bin dir was found from the running process, and disql got the logon on stdin.
    let journal = fs::read_to_string(last_run(p.dir.path()).join("journal.jsonl")).unwrap();
    assert!(
        journal.contains(&p.homes[0].join("bin").display().to_string()),
        "captured bin dir"
    );
    assert!(journal.contains("./disql /nolog"), "{journal}");

    fs::write(&p.events, "").unwrap();
    let out = run(&p, "dameng-start", &[]);
    assert_eq!(out.code, 0, "{}", run_text(&out));
    assert_start_order(&p, "h1", "h2");
    for (i, home) in p.homes.iter().enumerate() {
        assert!(
            dmserver_procs(&p.fleet, i).contains("dm.ini -noconsole"),
            "dmserver runs on h{}",
            i + 1
        );
        assert_eq!(sim_file(home, "status"), "OPEN");
        assert_eq!(sim_file(home, "watcher"), "running");
    }
    let log = fs::read_to_string(last_run(p.dir.path()).join("log.md")).unwrap();
    assert!(log.contains("dmserver"), "downtime/service section:\n{log}");
    assert_no_leaks(&p);
}

#[test]
fn roles_come_from_the_hosts_not_the_inventory() {
    // After a failover the inventory's "primary" h1 is the standby.
    let p = pair(["STANDBY", "PRIMARY"]);
    let out = run(&p, "dameng-stop", &[]);
    assert_eq!(out.code, 0, "{}", run_text(&out));
    assert_stop_order(&p, "h2", "h1");

    fs::write(&p.events, "").unwrap();
    let out = run(&p, "dameng-start", &[]);
    assert_eq!(out.code, 0, "{}", run_text(&out));
    assert_start_order(&p, "h2", "h1");
    let journal = fs::read_to_string(last_run(p.dir.path()).join("journal.jsonl")).unwrap();
    assert!(journal.contains("PRIMARY"), "{journal}");
    assert_no_leaks(&p);
}

#[test]
fn failed_stop_rolls_back_and_failed_start_rolls_back() {
    let p = pair(["PRIMARY", "STANDBY"]);
    // The standby's server refuses to stop: the primary is already down by then.
    fs::write(p.homes[1].join("sim/fail/DmServiceDMSERVER.stop"), "").unwrap();
    let out = run(&p, "dameng-stop", &[]);
    assert_eq!(out.code, 1, "{}", run_text(&out));
    let ev = read_events(&p.events);
    let failed = seq_of(&ev, "h2", "DmServiceDMSERVER", "stop");
    let restart_primary = seq_of(&ev, "h1", "DmServiceDMSERVER", "start");
    let w1 = seq_of(&ev, "h1", "DmWatcherServiceDMSERVER", "start");
    let w2 = seq_of(&ev, "h2", "DmWatcherServiceDMSERVER", "start");
    assert!(
        failed < restart_primary && restart_primary < w1 && restart_primary < w2,
        "rollback in reverse: primary server back, then the watchers:\n{}",
        show(&ev)
    );
    for (i, home) in p.homes.iter().enumerate() {
        assert!(!dmserver_procs(&p.fleet, i).is_empty());
        assert_eq!(sim_file(home, "watcher"), "running");
    }
    let log = fs::read_to_string(last_run(p.dir.path()).join("log.md")).unwrap();
    assert!(log.to_lowercase().contains("rollback"), "{log}");

    // Now stop cleanly, then make the standby's server fail to start.
    fs::remove_file(p.homes[1].join("sim/fail/DmServiceDMSERVER.stop")).unwrap();
    let out = run(&p, "dameng-stop", &[]);
    assert_eq!(out.code, 0, "{}", run_text(&out));
    fs::write(p.homes[1].join("sim/fail/DmServiceDMSERVER.start"), "").unwrap();
    fs::write(&p.events, "").unwrap();
    let out = run(&p, "dameng-start", &[]);
    assert_eq!(out.code, 1, "{}", run_text(&out));
    let ev = read_events(&p.events);
    let failed = seq_of(&ev, "h2", "DmServiceDMSERVER", "start");
    let undo_watcher = seq_of(&ev, "h1", "DmWatcherServiceDMSERVER", "stop");
    let undo_server = seq_of(&ev, "h1", "DmServiceDMSERVER", "stop");
    assert!(
        failed < undo_watcher && undo_watcher < undo_server,
        "rollback stops the primary's watcher, then its server:\n{}",
        show(&ev)
    );
    assert_eq!(dmserver_procs(&p.fleet, 0), "");
    assert_no_leaks(&p);
}

#[test]
fn dry_runs_show_order_roles_at_run_time_and_no_password() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("inventories")).unwrap();
    fs::write(
        dir.path().join("inventories/simdb.yaml"),
        "name: simdb\nconfirm: none\nssh: { user: root }\ngroups:\n  db:\n    vars: { dm_home: /data/dmdba/dmdbms, dm_instance: DMSERVER }\n    hosts:\n      dm1: { address: 192.0.2.10 }\n      dm2: { address: 192.0.2.11 }\n",
    )
    .unwrap();
    let env = [("OPSRUN_SECRET_DB_PASS", DB_PASS)];
    let out = opsrun(
        dir.path(),
        &["dameng-stop", "--env", "simdb", "--dry-run"],
        &env,
    );
    assert_eq!(out.code, 0, "{}", run_text(&out));
    let s = out.stdout.clone();
    let order = [
        "Find the running dmserver",
        "Detect each node's current role",
        "Stop the watchers on all nodes",
        "Stop the primary database",
        "Stop the standby database",
    ];
    let pos: Vec<usize> = order.iter().map(|n| s.find(n).expect(n)).collect();
    assert!(pos.windows(2).all(|w| w[0] < w[1]), "{s}");
    assert!(
        s.contains("runs only if `role != 'STANDBY'` (decided at run time"),
        "{s}"
    );
    assert!(s.contains("su - dmdba -c"), "{s}");
    assert!(s.contains("./disql /nolog"), "{s}");
    assert!(s.contains("conn SYSDBA/\"******\"@localhost:5236"), "{s}");
    assert!(!s.contains(DB_PASS), "{s}");
    assert!(
        !Path::new(&dir.path().join("runs")).exists(),
        "a dry-run records no run"
    );

    let out = opsrun(
        dir.path(),
        &["dameng-start", "--env", "simdb", "--dry-run"],
        &env,
    );
    assert_eq!(out.code, 0, "{}", run_text(&out));
    let s = out.stdout.clone();
    let order = [
        "Read the role each node had at shutdown",
        "Start the primary database",
        "Start the primary's watcher",
        "Start the standby database",
        "Start the standby's watcher",
        "Verify each node is open in its role",
    ];
    let pos: Vec<usize> = order.iter().map(|n| s.find(n).expect(n)).collect();
    assert!(pos.windows(2).all(|w| w[0] < w[1]), "{s}");
    assert!(
        s.contains("/data/dmdba/dmdbms/opsrun-last-role.DMSERVER"),
        "{s}"
    );
    assert!(!s.contains(DB_PASS), "{s}");
}
