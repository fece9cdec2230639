//! Rollback, resume, interruption and host locks, end to end against real OpenSSH
//! servers on loopback (tests/it/support/fleet.rs): the acceptance of issue 4.
//!
//! The hosts run a simulated service (`svc`, written into each host's work dir) that
//! keeps its state in a file and appends every call to one event log shared by all
//! hosts, so a test asserts the order of what happened across hosts, not only exit
//! codes. Every test checks what an operator would see: the exit code, the last
//! stdout line (the log's path), the journal, `log.md`, and the hosts themselves.

use crate::support::{
    cli::Run,
    fleet::pids_with,
    pty::{pty_run, run_on_pty, CTRL_C},
    site::{groups, journal_events, kill_leftovers, wait_for_target_started, Site},
};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Six steps over the app; Migrate fails on the host named by `fail_on`. The config
/// backup's name is random (mktemp): only the capture knows it.
const SIX: &str = r#"name: six
description: Reconfigure the app, with a backup and a rollback for every change
hosts: app
params:
  fail_on: { default: nobody, description: "host on which Migrate fails" }
vars:
  svc: "{{ work }}/svc"
  conf: "{{ work }}/app.conf"
steps:
  - name: Stop app
    run: "{{ svc }} stop"
    rollback: "{{ svc }} start"
    service: { name: app, state: stopped }
  - name: Back up config
    run: |
      b=$(mktemp {{ work }}/app.conf.bak-XXXXXX)
      cp {{ conf }} "$b" && {{ svc }} event backup && echo "$b"
    capture: backup
    rollback: rm {{ backup | quote }} && {{ svc }} event remove-backup
  - name: Write config
    run: echo "release 2" > {{ conf }} && {{ svc }} event write-config
    rollback: cp {{ backup | quote }} {{ conf }} && {{ svc }} event restore-config
  - name: Migrate
    run: "{{ svc }} event migrate && test {{ host.name }} != {{ fail_on }}"
    rollback: "{{ svc }} event undo-migrate"
  - name: Start app
    run: "{{ svc }} start"
    rollback: "{{ svc }} stop"
    service: { name: app, state: started }
  - name: Verify
    check: "{{ svc }} status && grep -qx 'release 2' {{ conf }}"
"#;

/// The rows of one table section of `log.md` (`## Steps` or `## Rollback`):
/// (step number, step, host, status); a Rollback row's `undo 2` or `R1` is its number.
fn log_rows(log: &str, section: &str) -> Vec<(usize, String, String, String)> {
    let start = log
        .find(&format!("\n## {section}\n"))
        .unwrap_or_else(|| panic!("no `## {section}` in the log:\n{log}"));
    log[start..]
        .lines()
        .skip_while(|l| !l.starts_with("| # |"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            (
                cells[1]
                    .trim_start_matches(|c: char| !c.is_ascii_digit())
                    .parse()
                    .unwrap(),
                cells[2].to_string(),
                cells[3].to_string(),
                cells[4].to_string(),
            )
        })
        .collect()
}

/// (phase, step, host, status) of every `target_finished`, in journal order.
fn targets(run: &Run) -> Vec<(String, String, String, String)> {
    run.events("target_finished")
        .iter()
        .map(|e| {
            (
                e["phase"].as_str().unwrap().to_string(),
                e["step"].as_str().unwrap().to_string(),
                e["host"].as_str().unwrap().to_string(),
                e["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn rollback_steps(run: &Run) -> Vec<(String, Vec<String>)> {
    run.events("step_started")
        .iter()
        .filter(|e| e["phase"] == "undo")
        .map(|e| {
            let mut hosts: Vec<String> = e["hosts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| h.as_str().unwrap().to_string())
                .collect();
            hosts.sort();
            (e["step"].as_str().unwrap().to_string(), hosts)
        })
        .collect()
}

// ---------------------------------------------------------------------------------
// Automatic rollback after a failure

#[test]
fn failure_at_step_four_on_one_host_rolls_back_in_reverse_where_each_step_completed() {
    let site = Site::start(2);
    let lab = site.lab(&[("six", SIX)]);
    let run = lab.run(
        &["six", "--env", "lab", "--yes", "-e", "fail_on=web2"],
        &[],
        None,
    );
    run.expect_code(1);

    // The simulated services saw the forward steps, then the undo newest first:
    // Migrate only on web1 (it failed on web2), the rest on both.
    assert_eq!(
        site.event_groups(),
        groups(&[
            ("stop", &["web1", "web2"]),
            ("backup", &["web1", "web2"]),
            ("write-config", &["web1", "web2"]),
            ("migrate", &["web1", "web2"]),
            ("undo-migrate", &["web1"]),
            ("restore-config", &["web1", "web2"]),
            ("remove-backup", &["web1", "web2"]),
            ("start", &["web1", "web2"]),
        ])
    );
    for i in 0..2 {
        assert_eq!(
            site.read(i, "app.conf"),
            format!("web{} release 1\n", i + 1)
        );
        assert!(site.file(i, "app.running").exists(), "app restarted");
        assert_eq!(
            site.files_starting(i, "app.conf.bak-"),
            Vec::<String>::new()
        );
    }

    // The journal: Start app and Verify never ran; the undo in reverse order.
    assert_eq!(run.status("Migrate", "web1"), "ok");
    assert_eq!(run.status("Migrate", "web2"), "failed");
    assert!(targets(&run)
        .iter()
        .all(|(_, s, _, _)| s != "Start app" && s != "Verify"));
    assert_eq!(
        rollback_steps(&run),
        vec![
            ("Migrate".to_string(), vec!["web1".to_string()]),
            (
                "Write config".to_string(),
                vec!["web1".to_string(), "web2".to_string()]
            ),
            (
                "Back up config".to_string(),
                vec!["web1".to_string(), "web2".to_string()]
            ),
            (
                "Stop app".to_string(),
                vec!["web1".to_string(), "web2".to_string()]
            ),
        ]
    );
    // The restore used each host's own captured backup name.
    for h in ["web1", "web2"] {
        let backup = run.target("Back up config", h)["capture"][1]
            .as_str()
            .unwrap()
            .to_string();
        assert!(backup.contains("app.conf.bak-"), "{backup}");
        let undo = run
            .events("target_finished")
            .into_iter()
            .find(|e| e["phase"] == "undo" && e["step"] == "Write config" && e["host"] == h)
            .unwrap();
        assert!(
            undo["command"].as_str().unwrap().contains(&backup),
            "{undo}"
        );
    }
    let (outcome, message) = run.outcome();
    assert_eq!(outcome, "failed");
    assert!(
        message.contains("step `Migrate` failed on web2"),
        "{message}"
    );
    assert!(
        message.contains("rolled back 4 steps: undone on "),
        "{message}"
    );

    // The log shows it: the failure in the step table, the undo newest first.
    let log = run.log_md();
    assert!(log_rows(&log, "Steps").contains(&(
        4,
        "Migrate".to_string(),
        "web2".to_string(),
        "FAILED".to_string()
    )));
    let undo = log_rows(&log, "Rollback");
    let numbers: Vec<usize> = undo.iter().map(|r| r.0).collect();
    assert_eq!(numbers, [4, 3, 3, 2, 2, 1, 1], "{log}");
    assert_eq!(undo[0].2, "web1");
    assert!(undo.iter().all(|r| r.3 == "ok"), "{undo:?}");
    assert!(log.contains("rolled back 4 steps: undone on "));
}

// ---------------------------------------------------------------------------------
// `opsrun rollback` of an earlier run, `opsrun runs`, `opsrun log`

#[test]
fn rollback_later_restores_the_captured_backup_and_runs_and_log_read_the_record() {
    let site = Site::start(2);
    let lab = site.lab(&[("six", SIX)]);
    let run = lab.run(&["six", "--env", "lab", "--yes"], &[], None);
    run.expect_code(0);
    let original = run.id();
    let mut backups = Vec::new();
    for i in 0..2 {
        assert_eq!(site.read(i, "app.conf"), "release 2\n");
        let names = site.files_starting(i, "app.conf.bak-");
        assert_eq!(names.len(), 1, "{names:?}");
        let captured = run.target("Back up config", &format!("web{}", i + 1))["capture"][1]
            .as_str()
            .unwrap()
            .to_string();
        assert!(captured.ends_with(&names[0]), "{captured} vs {names:?}");
        backups.push(captured);
    }
    site.clear_events();

    // `opsrun log` re-renders a finished run's log byte for byte, from its id or its
    // log path; only the signature section (signed again, at a new time) may differ,
    // and the banner saying it was rendered later (issue 12).
    let unsigned_part = |bytes: Vec<u8>| {
        let text = String::from_utf8(bytes).unwrap();
        let text = match text.contains("Rendered later") {
            true => crate::support::lab::without_rendered_later(&text),
            false => text,
        };
        text[..text.find("\n## How to verify").expect("a verify section")].to_string()
    };
    let before = unsigned_part(fs::read(&run.log).unwrap());
    let rel_log = run
        .log
        .strip_prefix(lab.path())
        .unwrap()
        .display()
        .to_string();
    for spec in [original.as_str(), rel_log.as_str()] {
        fs::write(&run.log, "scribbled over").unwrap();
        let again = lab.run(&["log", spec], &[], None);
        again.expect_code(0);
        assert_eq!(again.log, run.log);
        assert!(
            again
                .stderr
                .lines()
                .all(|l| l.starts_with("signed by tester")),
            "{}",
            again.stderr
        );
        assert!(
            unsigned_part(fs::read(&run.log).unwrap()) == before,
            "re-rendered log differs"
        );
        assert!(run.log.with_extension("md.sig").exists());
    }

    // Without --yes and without a terminal the rollback's gate refuses at once.
    let refused = lab.run(&["rollback", &original], &[], None);
    refused.expect_code(3);
    assert_eq!(refused.outcome().0, "not_confirmed");
    assert!(refused.events("target_started").is_empty());
    assert_eq!(site.read(0, "app.conf"), "release 2\n");
    // Before its gate: what will be undone, where, with the exact commands.
    let preview = [
        "rollback: these completed steps will be undone, in this order:\n  [5] Start app on "
            .to_string(),
        "\n  [3] Write config on ".to_string(),
        format!("\n      [opsrun-test@web1]# cp {} ", backups[0]),
        format!("\n      [opsrun-test@web2]# cp {} ", backups[1]),
    ];
    for needle in &preview {
        assert!(
            refused.stderr.contains(needle.as_str()),
            "{needle:?}:\n{}",
            refused.stderr
        );
    }
    let question =
        format!("Roll back run `{original}` (six on `lab`): undo 5 steps on web1, web2? [y/N]");
    assert!(refused.stderr.contains(&question), "{}", refused.stderr);

    // --dry-run prints the same and connects to nothing: no run is recorded, no host touched.
    let runs = fs::read_dir(lab.path().join("runs")).unwrap().count();
    let dry = lab.test(&["rollback", &original, "--dry-run"]).output();
    let (code, stdout) = (Some(dry.code), dry.stdout.clone());
    assert_eq!(code, Some(0), "{dry:?}");
    for needle in &preview {
        assert!(stdout.contains(needle.as_str()), "{needle:?}:\n{stdout}");
    }
    assert!(stdout.ends_with(&format!("gate: {question}\n")), "{stdout}");
    assert_eq!(fs::read_dir(lab.path().join("runs")).unwrap().count(), runs);
    assert_eq!(site.event_groups(), groups(&[]));

    let undo = lab.run(&["rollback", &original, "--yes"], &[], None);
    undo.expect_code(0);
    assert_eq!(
        site.event_groups(),
        groups(&[
            ("stop", &["web1", "web2"]),
            ("undo-migrate", &["web1", "web2"]),
            ("restore-config", &["web1", "web2"]),
            ("remove-backup", &["web1", "web2"]),
            ("start", &["web1", "web2"]),
        ])
    );
    for (i, backup) in backups.iter().enumerate() {
        assert_eq!(
            fs::read(site.file(i, "app.conf")).unwrap(),
            format!("web{} release 1\n", i + 1).into_bytes(),
            "host {i}: the backup's contents are back"
        );
        assert!(site.file(i, "app.running").exists());
        assert!(!Path::new(backup).exists());
        let restore = undo
            .events("target_finished")
            .into_iter()
            .find(|e| e["step"] == "Write config" && e["host"] == format!("web{}", i + 1))
            .unwrap();
        assert_eq!(restore["phase"], "undo");
        assert!(
            restore["command"]
                .as_str()
                .unwrap()
                .contains(backup.as_str()),
            "{restore}"
        );
    }
    let started = &undo.events("run_started")[0];
    assert_eq!(started["kind"], "rollback");
    assert_eq!(started["rollback_of"], original.as_str());
    assert_eq!(
        undo.outcome(),
        (
            "succeeded".to_string(),
            format!("rolled back 5 steps of run {original}: undone on web1, web2: `Start app`, `Migrate`, `Write config`, `Back up config`, `Stop app`")
        )
    );
    let log = undo.log_md();
    assert!(
        log.starts_with("# opsrun rollback: `six` on `lab`"),
        "{log}"
    );
    assert!(
        log.contains(&format!("| Rolls back run | `{original}` |")),
        "{log}"
    );
    let numbers: Vec<usize> = log_rows(&log, "Rollback").iter().map(|r| r.0).collect();
    assert_eq!(numbers, [5, 5, 4, 4, 3, 3, 2, 2, 1, 1]);
    let rendered = fs::read_to_string(&undo.log).unwrap();
    lab.run(&["log", &undo.id()], &[], None).expect_code(0);
    let again =
        crate::support::lab::without_rendered_later(&fs::read_to_string(&undo.log).unwrap());
    // On a difference, the lines that differ (seen once under heavy load).
    let differ: Vec<(&str, &str)> = rendered
        .lines()
        .zip(again.lines())
        .filter(|(a, b)| a != b)
        .collect();
    assert!(
        again == rendered,
        "re-rendered log differs: {differ:?}\n(lines {} vs {})",
        rendered.lines().count(),
        again.lines().count()
    );

    // A second rollback of the same run finds nothing left to undo: the first one
    // removed the backups, so undoing again could only fail (or do harm).
    site.clear_events();
    let twice = lab.run(&["rollback", &original, "--yes"], &[], None);
    twice.expect_code(0);
    let (_, message) = twice.outcome();
    assert!(
        message.contains("no completed step left to undo"),
        "{message}"
    );
    assert!(twice.events("target_started").is_empty());
    assert_eq!(site.event_groups(), groups(&[]));

    // `opsrun runs`: every run, oldest first, in aligned columns.
    let table = lab.runs_table();
    let summary: Vec<(String, String)> = table
        .iter()
        .map(|r| (r["runbook"].clone(), r["result"].clone()))
        .collect();
    assert_eq!(
        summary,
        [
            ("six", "succeeded, rolled back"),
            ("six (rollback)", "not confirmed"),
            ("six (rollback)", "succeeded"),
            ("six (rollback)", "succeeded"),
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    assert_eq!(table[0]["id"], original);
    assert_eq!(table[2]["id"], undo.id());
    for row in &table {
        assert_eq!(row["env"], "lab");
        assert_eq!(row["operator"], "tester");
        assert!(
            chrono::DateTime::parse_from_str(&row["start"], "%Y-%m-%d %H:%M:%S %:z").is_ok(),
            "{row:?}"
        );
        assert!(
            row["duration"] != "-" && !row["duration"].is_empty(),
            "{row:?}"
        );
    }
    let started = &run.events("run_started")[0];
    let start = chrono::DateTime::parse_from_rfc3339(started["time"].as_str().unwrap()).unwrap();
    assert_eq!(
        table[0]["start"],
        start
            .with_timezone(&chrono::Local)
            .format("%Y-%m-%d %H:%M:%S %:z")
            .to_string()
    );
}

// ---------------------------------------------------------------------------------
// SIGKILL in the middle of a step

#[test]
fn sigkill_mid_step_leaves_a_record_to_list_render_and_roll_back_and_a_stale_lock() {
    let site = Site::start(2);
    // An unusual sleep length marks this run's remote command in /proc.
    let sleep = format!("sleep {}", 8_000_000 + std::process::id() % 1_000_000);
    let slow = format!(
        "name: slow\nhosts: app\nsteps:\n\
         \x20 - name: Prepare\n    run: \"{{{{ work }}}}/svc stop\"\n    rollback: \"{{{{ work }}}}/svc start\"\n\
         \x20 - name: Long\n    run: {sleep}\n    rollback: \"{{{{ work }}}}/svc event undo-long\"\n\
         \x20 - name: After\n    run: \"{{{{ work }}}}/svc event after\"\n"
    );
    let lab = site.lab(&[("slow", &slow)]);
    let mut child = lab
        .command(&["slow", "--env", "lab", "--yes"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let dir = wait_for_target_started(&lab, &mut child, "Long", 2);
    let deadline = Instant::now() + Duration::from_secs(10);
    // Both hosts' `sleep` itself, not only the shell about to start it.
    let sleeping = || {
        pids_with(&sleep)
            .into_iter()
            .filter(|p| {
                fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| c.starts_with(b"sleep\0"))
            })
            .count()
    };
    while sleeping() < 2 {
        assert!(Instant::now() < deadline, "the long step never ran");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    kill_leftovers(&site.fleet, &sleep);
    let id = dir.file_name().unwrap().to_string_lossy().into_owned();

    // The journal parses, line by line, and ends without a run_finished.
    let events = journal_events(&dir);
    assert!(events.iter().all(|e| e["event"] != "run_finished"));
    let ok_prepare = events
        .iter()
        .filter(|e| {
            e["event"] == "target_finished" && e["step"] == "Prepare" && e["status"] == "ok"
        })
        .count();
    assert_eq!(ok_prepare, 2);
    assert!(!dir.join("log.md").exists());

    // `opsrun runs` says interrupted.
    let table = lab.runs_table();
    assert_eq!(table.len(), 1);
    assert_eq!(table[0]["id"], id);
    assert_eq!(table[0]["result"], "interrupted");

    // `opsrun log` renders what there is.
    let log = lab.run(&["log", &id], &[], None);
    log.expect_code(0);
    assert_eq!(log.dir(), dir);
    assert!(!log.stderr.contains("warning"), "{}", log.stderr);
    let md = log.log_md();
    assert!(md.contains("**INCOMPLETE**"), "{md}");
    let rows = log_rows(&md, "Steps");
    for h in ["web1", "web2"] {
        assert!(
            rows.contains(&(1, "Prepare".into(), h.into(), "ok".into())),
            "{rows:?}"
        );
        assert!(
            rows.contains(&(2, "Long".into(), h.into(), "**INTERRUPTED**".into())),
            "{rows:?}"
        );
    }

    // The hosts' locks still name the dead run...
    let locks: Vec<PathBuf> = (0..2)
        .map(|i| PathBuf::from(format!("/tmp/opsrun-lock-{}", site.fleet.port(i))))
        .collect();
    for l in &locks {
        let owner: Value =
            serde_json::from_str(&fs::read_to_string(l.join("owner")).unwrap()).unwrap();
        assert_eq!(owner["run_id"], id.as_str());
        assert_eq!(owner["pid"], pid);
    }
    // ...so a new run is refused, and told the lock is stale and how to break it.
    let again = lab.run(&["slow", "--env", "lab", "--yes"], &[], None);
    again.expect_code(1);
    assert!(
        again.stderr.contains(&format!("by run {id} by tester")),
        "{}",
        again.stderr
    );
    assert!(again.stderr.contains("stale"), "{}", again.stderr);
    assert!(again.stderr.contains("--break-lock"), "{}", again.stderr);
    assert!(again.events("target_started").is_empty());
    assert_eq!(site.event_groups(), groups(&[("stop", &["web1", "web2"])]));

    // `opsrun rollback` of that very run takes the stale lock over, no --break-lock:
    // the journal proves the lock is this change's, the dead pid that its owner is gone.
    let undo = lab.run(&["rollback", &id, "--yes"], &[], None);
    undo.expect_code(0);
    let taken: Vec<Value> = undo
        .events("lock")
        .into_iter()
        .filter(|e| e["action"] == "taken_over")
        .collect();
    assert_eq!(taken.len(), 2, "{:?}", undo.events("lock"));
    assert!(taken[0]["detail"].as_str().unwrap().contains(&id));
    // Prepare completed and Long was in flight when the run was killed: Long may
    // be partly applied, so its rollback runs too, first (the latest step).
    assert_eq!(
        site.event_groups(),
        groups(&[
            ("stop", &["web1", "web2"]),
            ("undo-long", &["web1", "web2"]),
            ("start", &["web1", "web2"])
        ])
    );
    for i in 0..2 {
        assert!(site.file(i, "app.running").exists());
    }
    for l in &locks {
        assert!(!l.exists(), "{} left behind", l.display());
    }
    let (_, message) = undo.outcome();
    assert!(
        message.contains(&format!(
            "rolled back 2 steps of run {id}: undone on web1, web2: `Long` (in flight when the run stopped), `Prepare`"
        )),
        "{message}"
    );
}

// ---------------------------------------------------------------------------------
// Host locks between concurrent runs

#[test]
fn a_second_run_on_a_locked_host_is_refused_naming_the_holder() {
    let site = Site::start(2);
    let hold = "name: hold\nhosts: app\nsteps:\n\
                \x20 - name: Hold\n    run: while [ ! -e {{ work }}/release ]; do sleep 0.05; done\n    timeout: 60s\n";
    let touch =
        "name: touch\nhosts: app\nsteps:\n  - name: Touch\n    run: touch {{ work }}/touched\n";
    let lab = site.lab(&[("hold", hold), ("touch", touch)]);
    // The first run holds web2 only.
    let mut first = lab
        .command(&["hold", "--env", "lab", "--yes", "--limit", "web2"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let first_dir = wait_for_target_started(&lab, &mut first, "Hold", 1);
    let first_id = first_dir
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let lock = |i: usize| PathBuf::from(format!("/tmp/opsrun-lock-{}", site.fleet.port(i)));

    let second = lab.run(&["touch", "--env", "lab", "--yes"], &[], None);
    second.expect_code(1);
    let holder = format!("by run {first_id} by tester from ");
    assert!(
        second
            .stderr
            .contains(&format!("web2 is locked ({})", lock(1).display()))
            && second.stderr.contains(&holder)
            && second.stderr.contains(&format!("(pid {}", first.id())),
        "{}",
        second.stderr
    );
    assert!(
        second.stderr.contains("wait for it to finish"),
        "{}",
        second.stderr
    );
    assert!(!second.stderr.contains("stale"), "{}", second.stderr);
    let held: Vec<Value> = second
        .events("lock")
        .into_iter()
        .filter(|e| e["action"] == "held")
        .collect();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0]["host"], "web2");
    assert!(held[0]["detail"].as_str().unwrap().contains(&first_id));
    let (_, message) = second.outcome();
    assert!(message.contains("nothing was changed"), "{message}");
    assert!(second.events("target_started").is_empty());
    // All or none: the lock it took on web1 is given back.
    assert!(!lock(0).exists());
    assert!(!site.file(0, "touched").exists() && !site.file(1, "touched").exists());

    // --break-lock does not break a live run's lock.
    let forced = lab.run(
        &["touch", "--env", "lab", "--yes", "--break-lock"],
        &[],
        None,
    );
    forced.expect_code(1);
    assert!(
        forced.stderr.contains("its owner is still running"),
        "{}",
        forced.stderr
    );
    let owner = fs::read_to_string(lock(1).join("owner")).unwrap();
    assert!(owner.contains(&first_id), "{owner}");

    site.put(1, "release", "", 0o644);
    let first = Run::from_output(first.wait_with_output().unwrap(), lab.path()).expect_log();
    first.expect_code(0);
    let actions: Vec<String> = first
        .events("lock")
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(actions, ["taken", "released"]);
    assert!(!lock(1).exists());
    lab.run(&["touch", "--env", "lab", "--yes"], &[], None)
        .expect_code(0);
}

// ---------------------------------------------------------------------------------
// A rollback step that fails

#[test]
fn a_failed_rollback_step_is_reported_loudly_and_the_other_hosts_still_run() {
    let site = Site::start(2);
    let book = r#"name: brittle
hosts: app
steps:
  - name: One
    run: "{{ work }}/svc event one"
    rollback: "{{ work }}/svc event undo-one"
  - name: Two
    run: "{{ work }}/svc event two"
    rollback: "{{ work }}/svc event undo-two && test {{ host.name }} != web1"
  - name: Three
    run: "{{ work }}/svc event three"
    rollback: "{{ work }}/svc event undo-three"
  - name: Four
    run: "false"
"#;
    let lab = site.lab(&[("brittle", book)]);
    let run = lab.run(&["brittle", "--env", "lab", "--yes"], &[], None);
    run.expect_code(1);
    assert_eq!(
        site.event_groups(),
        groups(&[
            ("one", &["web1", "web2"]),
            ("two", &["web1", "web2"]),
            ("three", &["web1", "web2"]),
            ("undo-three", &["web1", "web2"]),
            ("undo-two", &["web1", "web2"]),
            // Not on web1: its undo of Two failed, and undoing One under it could
            // destroy what that undo needs.
            ("undo-one", &["web2"]),
        ])
    );
    let undone: Vec<(String, String, String)> = targets(&run)
        .into_iter()
        .filter(|t| t.0 == "undo")
        .map(|t| (t.1, t.2, t.3))
        .collect();
    assert!(undone.contains(&("Two".into(), "web1".into(), "failed".into())));
    assert_eq!(
        undone.iter().filter(|t| t.2 == "ok").count(),
        4,
        "{undone:?}"
    );

    let (outcome, message) = run.outcome();
    assert_eq!(outcome, "failed");
    assert!(
        message.contains("ROLLBACK INCOMPLETE: not restored: `Two` on web1"),
        "{message}"
    );
    let not_restored = message.split("not restored:").nth(1).unwrap();
    let id = run
        .dir()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert_eq!(
        not_restored.trim(),
        format!(
            "`Two` on web1; still applied: on web1: `Two`, `One`; undone on web1: `Three`; \
             on web2: `Three`, `Two`, `One`; `opsrun rollback {id}` retries from the failed undo"
        ),
        "{message}"
    );
    // Loudly: when it happens, and again in the last words of the run.
    assert!(
        run.stderr.contains("error: ROLLBACK FAILED: `Two` on web1"),
        "{}",
        run.stderr
    );
    // The run's verdict, its last line on stderr.
    let last_error = run
        .stderr
        .lines()
        .rfind(|l| l.starts_with("failed:"))
        .unwrap();
    assert_eq!(
        last_error,
        format!(
            "failed: step `Four` failed on web1 (exit 1), web2 (exit 1); ROLLBACK INCOMPLETE: \
             not restored: `Two` on web1; still applied: on web1: `Two`, `One`; undone on web1: \
             `Three`; on web2: `Three`, `Two`, `One`; `opsrun rollback {id}` retries from the \
             failed undo"
        ),
        "{}",
        run.stderr
    );
    let log = run.log_md();
    // In a code span: the message may quote a host.
    assert!(
        log.contains("ROLLBACK INCOMPLETE: not restored: `Two` on web1"),
        "{log}"
    );
    assert!(
        log_rows(&log, "Rollback").contains(&(2, "Two".into(), "web1".into(), "FAILED".into())),
        "{log}"
    );
    assert!(log.contains("| rollback failed | web1 | 2. Two |"), "{log}");
}

// ---------------------------------------------------------------------------------
// Ctrl-C on a terminal

/// Three quick steps with rollbacks, then a long one; a fifth never runs.
fn interruptible(sleep: &str) -> String {
    format!(
        "name: breakable\nhosts: app\nsteps:\n\
         \x20 - name: One\n    run: \"{{{{ work }}}}/svc event one\"\n    rollback: \"{{{{ work }}}}/svc event undo-one\"\n\
         \x20 - name: Two\n    run: \"{{{{ work }}}}/svc event two\"\n    rollback: \"{{{{ work }}}}/svc event undo-two\"\n\
         \x20 - name: Slow\n    run: \"{sleep} && {{{{ work }}}}/svc event slow\"\n    rollback: \"{{{{ work }}}}/svc event undo-slow\"\n\
         \x20 - name: Never\n    run: \"{{{{ work }}}}/svc event never\"\n"
    )
}

#[test]
fn ctrl_c_then_r_stops_and_rolls_back_the_completed_steps_and_the_one_in_flight() {
    let site = Site::start(2);
    let sleep = format!("sleep {}", 9_000_000 + std::process::id() % 1_000_000);
    let lab = site.lab(&[("breakable", &interruptible(&sleep))]);
    let started = Instant::now();
    let (code, screen) = run_on_pty(
        lab.command(&["breakable", "--env", "lab"]),
        // Choosing "r" is the answer to the rollback gate: no second question.
        &[("[3/4] Slow", CTRL_C), ("Choice [w/s/r]", "r")],
    );
    kill_leftovers(&site.fleet, &sleep);
    let run = pty_run(code, &screen, lab.path());
    run.expect_code(130);
    assert!(started.elapsed() < Duration::from_secs(60));
    assert!(screen.contains("[r] stop now and roll back"), "{screen}");
    let interrupts = run.events("interrupt");
    assert_eq!(interrupts.len(), 1);
    assert_eq!(interrupts[0]["choice"], "now_and_rollback");
    assert_eq!(
        site.event_groups(),
        groups(&[
            ("one", &["web1", "web2"]),
            ("two", &["web1", "web2"]),
            // Slow was stopped part way: it may be partly applied, so it is undone first.
            ("undo-slow", &["web1", "web2"]),
            ("undo-two", &["web1", "web2"]),
            ("undo-one", &["web1", "web2"]),
        ])
    );
    let (outcome, message) = run.outcome();
    assert_eq!(outcome, "interrupted");
    assert!(
        message.contains(
            "rolled back 3 steps: undone on web1, web2: `Slow` (in flight when the run stopped), `Two`, `One`"
        ),
        "{message}"
    );
    let numbers: Vec<usize> = log_rows(&run.log_md(), "Rollback")
        .iter()
        .map(|r| r.0)
        .collect();
    assert_eq!(numbers, [3, 3, 2, 2, 1, 1]);
    assert!(run.log_md().contains("INTERRUPTED"));
}

#[test]
fn ctrl_c_then_w_waits_for_the_running_step_then_stops() {
    let site = Site::start(2);
    let lab = site.lab(&[("breakable", &interruptible("sleep 2"))]);
    let (code, screen) = run_on_pty(
        lab.command(&["breakable", "--env", "lab", "--yes"]),
        &[("[3/4] Slow", CTRL_C), ("Choice [w/s/r]", "w")],
    );
    let run = pty_run(code, &screen, lab.path());
    run.expect_code(130);
    // Slow finished on both hosts; Never did not start; nothing was undone.
    assert_eq!(
        site.event_groups(),
        groups(&[
            ("one", &["web1", "web2"]),
            ("two", &["web1", "web2"]),
            ("slow", &["web1", "web2"]),
        ])
    );
    let interrupt = &run.events("interrupt")[0];
    assert_eq!(interrupt["choice"], "after_step");
    for h in ["web1", "web2"] {
        assert_eq!(run.status("Slow", h), "ok");
        // The Ctrl-C came while the step ran.
        let t = run.target("Slow", h);
        let (pressed, ended) = (
            chrono::DateTime::parse_from_rfc3339(interrupt["time"].as_str().unwrap()).unwrap(),
            chrono::DateTime::parse_from_rfc3339(t["time"].as_str().unwrap()).unwrap(),
        );
        assert!(pressed < ended, "{interrupt} / {t}");
    }
    assert!(run
        .events("step_started")
        .iter()
        .all(|e| e["step"] != "Never"));
    assert!(run
        .events("step_started")
        .iter()
        .all(|e| e["phase"] == "forward"));
    let (outcome, message) = run.outcome();
    assert_eq!(outcome, "interrupted");
    assert!(message.contains("after the running step"), "{message}");
}

// ---------------------------------------------------------------------------------
// --resume

#[test]
fn resume_continues_at_the_first_unfinished_step_with_the_original_stamp_and_captures() {
    let site = Site::start(2);
    let book = r#"name: staged
hosts: app
steps:
  - name: Back up config
    run: |
      cp {{ work }}/app.conf {{ work }}/backup-{{ run.stamp }}.conf
      echo backup-{{ run.stamp }}.conf
    capture: backup
  - name: Needs ready
    run: "test -e {{ work }}/ready && {{ work }}/svc event ready"
  - name: Finish
    run: "cp {{ work }}/{{ backup }} {{ work }}/final-{{ run.stamp }}.conf && {{ work }}/svc event finish"
"#;
    let lab = site.lab(&[("staged", book)]);
    site.put(0, "ready", "", 0o644);
    let first = lab.run(&["staged", "--env", "lab", "--yes"], &[], None);
    first.expect_code(1);
    assert_eq!(first.status("Needs ready", "web1"), "ok");
    assert_eq!(first.status("Needs ready", "web2"), "failed");
    let stamp = first.events("run_started")[0]["stamp"]
        .as_str()
        .unwrap()
        .to_string();
    let original = first.id();

    // Let the clock move past the original stamp, so a fresh one would differ.
    let now_stamp = || chrono::Local::now().format("%Y%m%d-%H%M%S").to_string();
    while now_stamp() == stamp {
        std::thread::sleep(Duration::from_millis(50));
    }
    site.put(1, "ready", "", 0o644);
    site.clear_events();
    let resumed = lab.run(
        &["staged", "--env", "lab", "--yes", "--resume", &original],
        &[],
        None,
    );
    resumed.expect_code(0);
    let started = &resumed.events("run_started")[0];
    assert_eq!(started["kind"], "resume");
    assert_eq!(started["resume_of"], original.as_str());
    assert_eq!(started["stamp"], stamp.as_str());
    assert_eq!(started["start_at"], "Needs ready");
    // The backup step did not run again; the rest ran on every host.
    assert!(targets(&resumed).iter().all(|t| t.1 != "Back up config"));
    assert_eq!(
        site.event_groups(),
        groups(&[("ready", &["web1", "web2"]), ("finish", &["web1", "web2"])])
    );
    for i in 0..2 {
        assert_eq!(
            site.files_starting(i, "backup-"),
            [format!("backup-{stamp}.conf")]
        );
        // Finish found the backup through the original run's capture and stamp.
        assert_eq!(
            site.read(i, &format!("final-{stamp}.conf")),
            format!("web{} release 1\n", i + 1)
        );
        assert_eq!(site.files_starting(i, "final-").len(), 1);
    }
    assert!(resumed
        .log_md()
        .contains("| Started at step | Needs ready |"));
}

#[test]
fn sigint_without_a_terminal_stops_at_once_without_rolling_back() {
    let site = Site::start(2);
    let sleep = format!("sleep {}", 6_000_000 + std::process::id() % 1_000_000);
    let lab = site.lab(&[("breakable", &interruptible(&sleep))]);
    let mut child = lab
        .command(&["breakable", "--env", "lab", "--yes"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_target_started(&lab, &mut child, "Slow", 2);
    // SAFETY: kill(2) on our own child's pid; it is not reaped before wait below.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    kill_leftovers(&site.fleet, &sleep);
    let run = Run::from_output(out, lab.path()).expect_log();
    run.expect_code(130);
    assert_eq!(run.events("interrupt")[0]["choice"], "now");
    assert!(!run.stderr.contains("Choice [w/s/r]"), "{}", run.stderr);
    assert_eq!(
        site.event_groups(),
        groups(&[("one", &["web1", "web2"]), ("two", &["web1", "web2"])])
    );
    assert!(run
        .events("step_started")
        .iter()
        .all(|e| e["phase"] == "forward"));
    let (outcome, message) = run.outcome();
    assert_eq!(outcome, "interrupted");
    assert!(
        message.contains("the running step was killed on its hosts"),
        "{message}"
    );
    // Killed there, not abandoned: the remote sleep is gone.
    assert!(pids_with(&sleep)
        .iter()
        .all(|p| !fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| c.starts_with(b"sleep\0"))));
    let rows = log_rows(&run.log_md(), "Steps");
    for h in ["web1", "web2"] {
        assert!(
            rows.contains(&(3, "Slow".into(), h.into(), "INTERRUPTED".into())),
            "{rows:?}"
        );
    }
}

#[test]
fn ctrl_c_at_a_gate_stops_at_once_and_releases_the_hosts() {
    let site = Site::start(2);
    let gated = interruptible("true").replace(
        "  - name: Two\n",
        "  - name: Two\n    confirm: \"Go on with two?\"\n",
    );
    let lab = site.lab(&[("breakable", &gated)]);
    let started = Instant::now();
    // The prompt blocks the thread that drives tokio's signals: Ctrl-C must still
    // end the run at once, not after the operator presses Enter.
    let (code, screen) = run_on_pty(
        lab.command(&["breakable", "--env", "lab"]),
        &[("Go on with two? (on web1, web2) [y/N]", CTRL_C)],
    );
    let run = pty_run(code, &screen, lab.path());
    run.expect_code(130);
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(site.event_groups(), groups(&[("one", &["web1", "web2"])]));
    let gate = &run.events("gate")[0];
    assert_eq!(gate["confirmed"], false);
    assert!(
        gate["answer"].as_str().unwrap().contains("interrupted"),
        "{gate}"
    );
    let (outcome, _) = run.outcome();
    assert_eq!(outcome, "interrupted");
    // The locks were given back: a new run on the same hosts is not refused.
    lab.run(&["breakable", "--env", "lab", "--yes"], &[], None)
        .expect_code(0);
}
