//! `license-swap` (PROCEDURES.md P8, SOP 004 §5.7) over real sshd.
//!
//! Real: sshd (one per host, own PID namespace), uploads, file renames and checksums,
//! `sudo` to `dmdba`, the `chown dmdba:dinstall` of dm.key.
//! Simulated: ApusicAS `asadmin` (tests/fixtures/apusic; it records which license
//! file the application would load on start) and the Dameng tools
//! (tests/fixtures/dameng; `disql` loads the EXPIRED_DATE written in the fake dm.key
//! when `sp_load_lic_info` is called, and refuses a dm.key it could not read as
//! dmdba:dinstall). Both append to one shared event log.

use crate::support::{
    cli::Run,
    fleet::{chown_r, host_entry, ssh_section, FleetOptions, Ssh, SshFleet, TEST_USER},
    lab::opsrun,
    sim::{
        ensure_dm_user, install_dameng, last_run, new_event_log, read_events, run_text, seq_of,
        show, start_dameng, DmNode, DB_PASS, DM_GROUP, DM_USER, FIXTURES,
    },
};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

const ID: &str = "305581B9F987A2EE301A8777B23A3ACB";

struct Estate {
    stage: PathBuf,
    _fleet: SshFleet,
    dir: tempfile::TempDir,
    events: PathBuf,
    weaver: PathBuf,
    dm_home: PathBuf,
    new_license: PathBuf,
}

/// h1: the application server with the current license; h2: a running DM node whose
/// loaded license expires 2025-12-31.
fn estate() -> Estate {
    ensure_dm_user();
    let fleet = SshFleet::start_with(
        2,
        FleetOptions {
            pid_namespace: true,
            ..FleetOptions::default()
        },
    );
    let events = new_event_log(fleet.root());

    let weaver = fleet.work_dir(0).join("WEAVER");
    let as_bin = weaver.join("ApusicAS/bin");
    fs::create_dir_all(&as_bin).unwrap();
    fs::create_dir_all(weaver.join("ApusicAS/sim/fail")).unwrap();
    fs::create_dir_all(weaver.join("ecology/license")).unwrap();
    fs::copy(
        Path::new(FIXTURES).join("apusic/asadmin"),
        as_bin.join("asadmin"),
    )
    .unwrap();
    fs::write(weaver.join("ApusicAS/sim/host"), "h1\n").unwrap();
    fs::write(
        weaver.join("ApusicAS/sim/events"),
        format!("{}\n", events.display()),
    )
    .unwrap();
    fs::write(weaver.join("ApusicAS/sim/domain"), "running\n").unwrap();
    fs::write(
        weaver.join(format!("ecology/license/{ID}.license")),
        "LICENSE OLD users=50000 end=2023-05-26\n",
    )
    .unwrap();
    chown_r(&weaver, TEST_USER);

    let dm_home = fleet.work_dir(1).join("dmdbms");
    install_dameng(&DmNode {
        host: "h2",
        dm_home: &dm_home,
        events: &events,
        role: "PRIMARY",
        license: "2025-12-31",
    });
    fs::write(
        dm_home.join("bin/dm.key"),
        "EXPIRED_DATE=2025-12-31\nSERIAL=OLD\n",
    )
    .unwrap();
    chown_r(&dm_home, &format!("{DM_USER}:{DM_GROUP}"));
    start_dameng(&fleet, 1, &dm_home);
    fs::write(&events, "").unwrap();

    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("inventories")).unwrap();
    // Every simulated host is this machine: a private staging dir keeps tests
    // running at the same second from sharing /tmp/opsrun-dm.key-STAMP-h2.
    let stage = fleet.root().join("stage");
    fs::create_dir_all(&stage).unwrap();
    fs::set_permissions(&stage, std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
    let inv = format!(
        "name: lic\nconfirm: none\n{ssh}vars: {{ weaver_home: {w}, dm_stage_dir: {st} }}\ngroups:\n  app:\n    hosts:\n{h1}  db:\n    hosts:\n{h2}",
        ssh = ssh_section(&fleet, true),
        w = weaver.display(),
        st = stage.display(),
        h1 = host_entry(&fleet, 0, fleet.name(0), Ssh::FromInventory, &[]),
        h2 = host_entry(&fleet, 1, fleet.name(1), Ssh::FromInventory, &[]),
    );
    fs::write(dir.path().join("inventories/lic.yaml"), inv).unwrap();
    let new_license = dir.path().join(format!("{ID}.license"));
    fs::write(&new_license, "LICENSE NEW users=100000 end=2026-05-26\n").unwrap();
    Estate {
        _fleet: fleet,
        stage,
        dir,
        events,
        weaver,
        dm_home,
        new_license,
    }
}

fn new_key(e: &Estate, expiry: &str) -> PathBuf {
    let p = e.dir.path().join("dm.key");
    fs::write(&p, format!("EXPIRED_DATE={expiry}\nSERIAL=NEW\n")).unwrap();
    p
}

fn swap(e: &Estate, params: &[String]) -> Run {
    let mut args: Vec<&str> = vec!["license-swap", "--env", "lic", "--yes"];
    for p in params {
        args.extend(["-e", p.as_str()]);
    }
    opsrun(e.dir.path(), &args, &[("OPSRUN_SECRET_DB_PASS", DB_PASS)])
}

fn license_dir(e: &Estate) -> PathBuf {
    e.weaver.join("ecology/license")
}

fn read(p: &Path) -> String {
    fs::read_to_string(p).unwrap_or_else(|err| panic!("{}: {err}", p.display()))
}

/// Files in `dir` whose names start with `prefix`.
fn named(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix))
        })
        .collect();
    v.sort();
    v
}

fn loaded(e: &Estate) -> String {
    read(&e.dm_home.join("sim/license")).trim().to_string()
}

fn assert_no_leaks(e: &Estate) {
    let ev = read(&e.events);
    assert!(!ev.contains("REFUSED") && !ev.contains(DB_PASS), "{ev}");
    let journal = read(&last_run(e.dir.path()).join("journal.jsonl"));
    assert!(!journal.contains(DB_PASS));
}

#[test]
fn swaps_the_application_license_and_the_dm_key() {
    let e = estate();
    let key = new_key(&e, "2026-06-30");
    let out = swap(
        &e,
        &[
            format!("license={}", e.new_license.display()),
            format!("dm_key={}", key.display()),
            "dm_expiry=2026-06-30".into(),
        ],
    );
    assert_eq!(out.code, 0, "{}", run_text(&out));

    // Application: the old file kept under a stamped name, the new one in place, and the
    // restarted server loaded the new one.
    let dir = license_dir(&e);
    assert!(read(&dir.join(format!("{ID}.license"))).starts_with("LICENSE NEW"));
    let backups = named(&dir, &format!("{ID}.license_bak"));
    assert_eq!(backups.len(), 1, "{backups:?}");
    assert!(read(&backups[0]).starts_with("LICENSE OLD"));
    let stamp = &backups[0].file_name().unwrap().to_str().unwrap()[ID.len() + 12..];
    assert!(
        stamp.len() == 15 && stamp.as_bytes()[8] == b'-',
        "run stamp {stamp}"
    );
    assert_eq!(
        named(&dir, &format!("{ID}.license.new")),
        Vec::<PathBuf>::new()
    );
    let ev = read_events(&e.events);
    let stop = seq_of(&ev, "h1", "asadmin", "stop-domain");
    let start = seq_of(&ev, "h1", "asadmin", "start-domain license=LICENSE NEW");
    assert!(stop < start, "{}", show(&ev));

    // Dameng: old key aside (stamped), new key in place owned by dmdba:dinstall,
    // loaded, and the loaded expiry read back.
    let bin = e.dm_home.join("bin");
    let key_now = bin.join("dm.key");
    assert!(read(&key_now).contains("SERIAL=NEW"));
    let meta = fs::metadata(&key_now).unwrap();
    let uid = String::from_utf8(
        std::process::Command::new("id")
            .args(["-u", DM_USER])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert_eq!(meta.uid().to_string(), uid.trim());
    let old = named(&bin, "dm.key.bak-");
    assert_eq!(old.len(), 1);
    assert!(read(&old[0]).contains("SERIAL=OLD"));
    assert_eq!(loaded(&e), "2026-06-30");
    let read_old = seq_of(&ev, "h2", "disql", "select expired_date");
    let load = seq_of(
        &ev,
        "h2",
        "disql",
        "call sp_load_lic_info(); loaded EXPIRED_DATE=2026-06-30",
    );
    assert!(read_old < load, "{}", show(&ev));
    assert!(
        ev.iter()
            .filter(|x| x.host == "h2" && x.args.starts_with("select expired_date"))
            .count()
            == 2,
        "read before and read back after:\n{}",
        show(&ev)
    );
    let journal = read(&last_run(e.dir.path()).join("journal.jsonl"));
    assert!(journal.contains("\"new_expiry\""), "{journal}");
    assert!(
        !e.stage.join(format!("opsrun-dm.key-{stamp}-h2")).exists(),
        "staged key removed"
    );
    assert_no_leaks(&e);
}

#[test]
fn a_key_that_loads_another_expiry_is_rolled_back_and_reloaded() {
    let e = estate();
    // The vendor said 2026-06-30, the key carries 2026-01-31: the read-back catches it.
    let key = new_key(&e, "2026-01-31");
    let out = swap(
        &e,
        &[
            format!("dm_key={}", key.display()),
            "dm_expiry=2026-06-30".into(),
        ],
    );
    assert_eq!(out.code, 1, "{}", run_text(&out));
    assert!(
        run_text(&out).contains("does not expire on"),
        "{}",
        run_text(&out)
    );
    let ev = read_events(&e.events);
    let bad = seq_of(
        &ev,
        "h2",
        "disql",
        "call sp_load_lic_info(); loaded EXPIRED_DATE=2026-01-31",
    );
    let back = seq_of(
        &ev,
        "h2",
        "disql",
        "call sp_load_lic_info(); loaded EXPIRED_DATE=2025-12-31",
    );
    assert!(bad < back, "{}", show(&ev));
    let bin = e.dm_home.join("bin");
    assert!(read(&bin.join("dm.key")).contains("SERIAL=OLD"));
    assert!(named(&bin, "dm.key.bak-").is_empty());
    assert_eq!(loaded(&e), "2025-12-31");
    // The application side was not part of this run.
    assert!(!ev.iter().any(|x| x.program == "asadmin"));
    assert_no_leaks(&e);
}

#[test]
fn a_failed_application_start_restores_the_previous_license() {
    let e = estate();
    fs::write(e.weaver.join("ApusicAS/sim/fail/start-domain"), "").unwrap();
    let out = swap(&e, &[format!("license={}", e.new_license.display())]);
    assert_eq!(out.code, 1, "{}", run_text(&out));
    let ev = read_events(&e.events);
    let failed = seq_of(&ev, "h1", "asadmin", "start-domain -> FAILED");
    let restarted = seq_of(&ev, "h1", "asadmin", "start-domain license=LICENSE OLD");
    assert!(failed < restarted, "{}", show(&ev));
    let dir = license_dir(&e);
    assert!(read(&dir.join(format!("{ID}.license"))).starts_with("LICENSE OLD"));
    assert!(named(&dir, &format!("{ID}.license_bak")).is_empty());
    assert!(named(&dir, &format!("{ID}.license.new")).is_empty());
    assert!(!ev.iter().any(|x| x.program == "disql"), "no db part");
    let log = read(&last_run(e.dir.path()).join("log.md"));
    assert!(log.contains("ecology"), "{log}");
}

#[test]
fn refuses_a_key_that_expires_sooner_unless_forced() {
    let e = estate();
    let key = new_key(&e, "2025-06-30");
    let params = [
        format!("dm_key={}", key.display()),
        "dm_expiry=2025-06-30".to_string(),
    ];
    let out = swap(&e, &params);
    assert_eq!(out.code, 1, "{}", run_text(&out));
    assert!(
        run_text(&out).contains("expires sooner"),
        "{}",
        run_text(&out)
    );
    let ev = read_events(&e.events);
    assert!(
        !ev.iter().any(|x| x.args.contains("sp_load_lic_info")),
        "{}",
        show(&ev)
    );
    assert!(read(&e.dm_home.join("bin/dm.key")).contains("SERIAL=OLD"));

    let mut forced = params.to_vec();
    forced.push("force=true".into());
    let out = swap(&e, &forced);
    assert_eq!(out.code, 0, "{}", run_text(&out));
    assert_eq!(loaded(&e), "2025-06-30");
    assert_no_leaks(&e);
}

#[test]
fn dry_run_shows_both_parts_in_order_without_the_password() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("inventories")).unwrap();
    fs::write(
        dir.path().join("inventories/prod.yaml"),
        "name: prod\nconfirm: typed\nssh: { user: root }\nvars: { weaver_home: /data/WEAVER }\ngroups:\n  app:\n    hosts:\n      oa1: { address: 192.0.2.1 }\n  db:\n    hosts:\n      dm1: { address: 192.0.2.9 }\n",
    )
    .unwrap();
    let lic = dir.path().join(format!("{ID}.license"));
    fs::write(&lic, "x").unwrap();
    let key = dir.path().join("dm.key");
    fs::write(&key, "x").unwrap();
    let out = opsrun(
        dir.path(),
        &[
            "license-swap",
            "--env",
            "prod",
            "--dry-run",
            "-e",
            &format!("license={}", lic.display()),
            "-e",
            &format!("dm_key={}", key.display()),
            "-e",
            "dm_expiry=2026-06-30",
        ],
        &[("OPSRUN_SECRET_DB_PASS", DB_PASS)],
    );
    assert_eq!(out.code, 0, "{}", run_text(&out));
    let s = out.stdout.clone();
    let backup = format!("mv {ID}.license {ID}.license_bak");
    let ordered = [
        "Upload the new application license",
        "Stop the application server",
        backup.as_str(),
        "Start the application server",
        "Read the current license expiry",
        "Refuse a key that expires sooner",
        "if [ -e dm.key ]; then mv dm.key dm.key.bak-",
        "cp /tmp/opsrun-dm.key-20",
        "chown dmdba:dinstall dm.key",
        "call sp_load_lic_info();",
        "select expired_date from v$license;",
    ];
    let mut at = 0;
    for want in ordered {
        let found = s[at..]
            .find(want)
            .unwrap_or_else(|| panic!("`{want}` missing or out of order in:\n{s}"));
        at += found;
    }
    assert!(s.contains("conn SYSDBA/\"******\"@localhost:5236"), "{s}");
    assert!(!s.contains(DB_PASS));
    // Rollbacks are shown: the previous license comes back.
    assert!(s.contains(&format!("mv -f {ID}.license_bak")), "{s}");
}
