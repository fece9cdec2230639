//! The README's main commands: `opsrun upgrade --env demo` on a fresh copy of the
//! repository, and its documented failing variant. No sshd: the demo hosts are
//! `connection: local`. Also: every shipped runbook passes `opsrun check`.

use crate::support::{
    cli::{Run, Test},
    lab::{copy_tree, opsrun, repo, scratch, tree_digest},
    pty::run_on_pty_at_prompts,
};
use std::path::Path;

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
    let ok = opsrun(dir.path(), &["upgrade", "--env", "demo", "--yes"], &[]);
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
    next_second();
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
        &[],
    );
    assert_eq!(bad.code, 1, "{bad:?}");
    assert!(
        bad.stderr.contains("step `Health check` failed on oa1"),
        "{bad:?}"
    );
    assert!(
        bad.stderr.contains("rolled back 5 steps: undone on oa1: "),
        "{bad:?}"
    );
    assert_eq!(tree_digest(&ecology(dir.path(), "oa1")), before);
    assert_eq!(
        std::fs::read_to_string(&conf).unwrap(),
        seed,
        "oa1 back in the upstream"
    );
}

/// Backups are named by `run.stamp` (to the second) and never overwritten: a
/// second run within the same second would rightly refuse to start.
fn next_second() {
    let second = chrono::Local::now().timestamp();
    while chrono::Local::now().timestamp() == second {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The `Check the packages` results of a run, from its journal: (captured bundle, stdout).
fn package_checks(dir: &Path, run: &Run) -> Vec<(String, String)> {
    let log = run.stdout.lines().last().expect("the log's path");
    let run_dir = dir.join(log).parent().unwrap().to_path_buf();
    std::fs::read_to_string(run_dir.join("journal.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["event"] == "target_finished" && e["step"] == "Check the packages")
        .map(|e| {
            let stdout = std::fs::read_to_string(
                run_dir.join(e["stdout"]["file"].as_str().expect("saved stdout")),
            )
            .unwrap();
            (e["capture"][1].as_str().unwrap_or("").to_string(), stdout)
        })
        .collect()
}

/// A run's temporary files on the control machine (the checked copy of the packages
/// and their bundle, GBs on a real upgrade) are gone when it ends, whether it
/// succeeded, failed before building anything, or failed and rolled back; and the
/// second batch uploads the bundle built for the first.
#[test]
fn the_upgrade_leaves_no_temporary_files_and_builds_its_bundle_once() {
    let dir = fresh_clone();
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let env = [("TMPDIR", tmp.to_str().unwrap())];
    let none: Vec<String> = Vec::new();

    let ok = opsrun(dir.path(), &["upgrade", "--env", "demo", "--yes"], &env);
    assert_eq!(ok.code, 0, "{ok:?}");
    assert_eq!(entries(&tmp), none, "{ok:?}");
    let checks = package_checks(dir.path(), &ok);
    assert_eq!(checks.len(), 2, "one per batch: {checks:?}");
    let (bundle, first) = &checks[0];
    assert!(
        bundle.starts_with(&format!("{}/opsrun-", tmp.display())),
        "built in the run's temporary directory: {checks:?}"
    );
    assert!(
        first.contains("package 001  ecology-20260301-001.zip"),
        "{checks:?}"
    );
    assert_eq!(
        &checks[1].0, bundle,
        "the second batch uploads the same bundle"
    );
    assert!(
        checks[1]
            .1
            .starts_with("reusing the bundle checked for the first batch\n"),
        "{checks:?}"
    );

    next_second();
    let missing = opsrun(
        dir.path(),
        &[
            "upgrade",
            "--env",
            "demo",
            "--yes",
            "-e",
            "package=examples/demo/packages/missing.zip",
        ],
        &env,
    );
    assert_eq!(missing.code, 1, "{missing:?}");
    assert!(
        missing
            .stderr
            .contains("no package found at examples/demo/packages/missing.zip"),
        "{missing:?}"
    );
    assert_eq!(entries(&tmp), none, "{missing:?}");

    next_second();
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
        &env,
    );
    assert_eq!(bad.code, 1, "{bad:?}");
    assert!(bad.stderr.contains("rolled back"), "{bad:?}");
    assert_eq!(entries(&tmp), none, "{bad:?}");
}

/// The README's tour, pasted command by command as written: every command works from
/// the repository root, with the operator's own SSH key (in `~/.ssh`) and the gates
/// answered on a terminal; only the broken package's run fails, as the tour says.
#[test]
fn every_command_of_the_readme_tour_works_as_written() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let tour = readme
        .split("\n## A 5-minute tour\n")
        .nth(1)
        .and_then(|t| t.split("\n## ").next())
        .expect("the tour in README.md");
    let mut commands = Vec::new();
    let mut in_sh = false;
    for line in tour.lines() {
        match line {
            "```sh" => in_sh = true,
            "```" => in_sh = false,
            // Interactive, "only if you have no SSH key yet": the key is made below.
            l if in_sh && !l.starts_with("ssh-keygen -t ") => commands.push(l),
            _ => {}
        }
    }
    assert!(commands.len() > 10, "{commands:?}");
    let mut script = String::new();
    for (i, c) in commands.iter().enumerate() {
        script.push_str(&format!("{c}\necho \"@@ $? {i}\"\n"));
        // At a person's pace: a backup is named by the second its run started in,
        // and a second run within that second rightly refuses to overwrite it.
        if c.contains("opsrun upgrade") && !c.contains("--dry-run") {
            script.push_str("sleep 1\n");
        }
    }

    let dir = fresh_clone();
    let home = dir.path().join("home");
    std::fs::create_dir_all(home.join(".ssh")).unwrap();
    let keygen = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(home.join(".ssh/id_ed25519"))
        .stdin(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(keygen.success());
    // A reader of the README: `opsrun` on PATH, the key in ~/.ssh, and the
    // operator their login name, so the suite's operator and key are left out.
    let tour = Test::in_dir(dir.path())
        .home_dir(&home)
        .no_sign_key()
        .shell(&script)
        .env_remove("OPSRUN_OPERATOR")
        .env_remove("USER")
        .env_remove("LOGNAME");
    // Two batch gates of the run; the rollback's start gate; then per node (the
    // guide is rolling) its restore gate and its manual step, whose note is left empty.
    // Answered where the terminal waits: the rollback previews list gates too, and an
    // answer sent at one of those would be typed ahead, which gates discard.
    let mut answers = vec![("[y/N]", "y"); 5];
    answers.push(("Note or ticket id for the log (Enter for none):", ""));
    answers.extend([
        ("[y/N]", "y"),
        ("[y/N]", "y"),
        ("Note or ticket id for the log (Enter for none):", ""),
    ]);
    let (code, screen) = run_on_pty_at_prompts(tour.command(), &answers);
    assert_eq!(code, 0, "{screen}");
    for (i, c) in commands.iter().enumerate() {
        let expected = if c.contains("broken.zip") { 1 } else { 0 };
        assert!(
            screen.contains(&format!("@@ {expected} {i}\r\n")),
            "`{c}` did not exit {expected}:\n{screen}"
        );
    }
    assert!(
        screen.contains("failed: step `Health check` failed on oa1"),
        "{screen}"
    );
    assert!(screen.contains("succeeded: rolled back run "), "{screen}");
    assert!(
        screen.contains("Good \"opsrun-log\" signature for "),
        "{screen}"
    );
}

#[test]
fn every_shipped_runbook_passes_check_without_warnings() {
    let dir = scratch();
    let r = opsrun(dir.path(), &["check"], &[]);
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

/// The run id of a run, from the log path it printed last.
fn run_id(r: &Run) -> String {
    let last = r.stdout.lines().last().unwrap_or_default();
    Path::new(last)
        .parent()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| panic!("no log path printed: {r:?}"))
}

fn reloads_since(dir: &Path, skip: usize) -> Vec<String> {
    let events =
        std::fs::read_to_string(dir.join("examples/demo/hosts/events.log")).unwrap_or_default();
    events
        .lines()
        .skip(skip)
        .filter(|l| l.contains(" lb1 nginx-reload "))
        .map(|l| l.split_once(" ecologycluster: ").unwrap().1.to_string())
        .collect()
}

fn event_count(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("examples/demo/hosts/events.log"))
        .unwrap_or_default()
        .lines()
        .count()
}

#[test]
fn the_failing_demo_says_what_it_restored_and_its_gates_name_their_batch() {
    let dir = fresh_clone();
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
        &[],
    );
    assert_eq!(bad.code, 1, "{bad:?}");
    let last = bad.stderr.lines().rev().find(|l| !l.is_empty()).unwrap();
    assert_eq!(
        last,
        "failed: step `Health check` failed on oa1 (exit 1: curl: (22) The requested URL returned error: 500 … \
         no healthy answer after 3 tries); \
         rolled back 5 steps: undone on oa1: `Start the application`, `Back up ecology`, \
         `Stop the application`, `Upload the packages`; on lb1: `Drain the node from the load \
         balancer` of batch 1",
        "{bad:?}"
    );
    // The per-batch gate names its batch and node, in the log too.
    assert!(
        bad.log_md().contains(
            "| Record the application server state (batch 1) | `Upgrade this batch of nodes? After the checks and the upload, each is drained from the load balancer (if any) and stopped: its users are cut off until the health check passes. (batch 1/2: oa1)` | yes (--yes) |"
        ),
        "{bad:?}"
    );

    // Its rollback guide would restore only the node the run reached, and says
    // the run was rolled back already.
    let id = run_id(&bad);
    let dry = opsrun(dir.path(), &["rollback", &id, "--dry-run"], &[]);
    assert_eq!(dry.code, 0, "{dry:?}");
    assert!(
        dry.stdout
            .contains("batch 1/2: oa1 (with lb1 in every batch)\n  [R1/9] Check the pre-upgrade backup on oa1\n"),
        "{dry:?}"
    );
    assert!(!dry.stdout.contains("on oa2"), "{dry:?}");
    assert!(
        dry.stdout.contains(&format!(
            "batch 2/2: oa2 (with lb1 in every batch): not reached by run {id}, left as it is\n"
        )),
        "{dry:?}"
    );
    assert!(
        dry.stdout.ends_with(&format!("gate: Run `{id}` was already rolled back (by its own automatic rollback). Run its rollback guide again, on oa1, lb1? [y/N]\n")),
        "{dry:?}"
    );
}

#[test]
fn the_demo_rollback_guide_is_previewed_gated_with_its_commands_and_rolling() {
    let dir = fresh_clone();
    let ok = opsrun(dir.path(), &["upgrade", "--env", "demo", "--yes"], &[]);
    assert_eq!(ok.code, 0, "{ok:?}");
    let id = run_id(&ok);
    let runs_before = std::fs::read_dir(dir.path().join("runs")).unwrap().count();
    let events_before = event_count(dir.path());

    // --dry-run: the guide, batch by batch, with each command; nothing runs or is recorded.
    let dry = opsrun(dir.path(), &["rollback", &id, "--dry-run"], &[]);
    assert_eq!(dry.code, 0, "{dry:?}");
    let out = &dry.stdout;
    for needle in [
        "DRY RUN: nothing is executed and no connection is opened.\n",
        &format!("rollback: the rollback guide of `upgrade` for run {id}, batch by batch as the run went:\n"),
        "batch 1/2: oa1 (with lb1 in every batch)\n  [R1/9] Check the pre-upgrade backup on oa1\n",
        "  [R2/9] Drain the node from the load balancer on lb1\n      [root@lb1]# sh -e\n",
        "        | servers=127.0.0.11:6888\n",
        "  [R3/9] Stop the application on oa1\n      [root@oa1]# examples/demo/sim/asadmin --host oa1 --home examples/demo/hosts/oa1/WEAVER --events examples/demo/hosts/events.log stop-domain domain1\n",
        "  [R4/9] Restore the pre-upgrade backup on oa1\n      gate: Replace the live ecology tree with the pre-upgrade backup? The replaced tree is kept as ecology.failed-STAMP. (batch 1/2: oa1) [y/N]\n",
        "  [R8/9] Put the node back in the load balancer on lb1\n",
        "batch 2/2: oa2 (with lb1 in every batch)\n  [R1/9] Check the pre-upgrade backup on oa2\n",
        "        | servers=127.0.0.12:6888\n",
        &format!("gate: Roll back run `{id}` (upgrade on `demo`) with its rollback guide, on oa1, oa2, lb1? [y/N]\n"),
    ] {
        assert!(out.contains(needle), "preview lacks {needle:?}:\n{out}");
    }
    assert_eq!(
        std::fs::read_dir(dir.path().join("runs")).unwrap().count(),
        runs_before,
        "a dry-run records no run"
    );
    assert_eq!(
        event_count(dir.path()),
        events_before,
        "a dry-run touches no host"
    );

    // Without --yes (stdin not a terminal): the same preview, then the gate refuses.
    let no = opsrun(dir.path(), &["rollback", &id], &[]);
    assert_eq!(no.code, 3, "{no:?}");
    assert!(
        no.stderr.contains(
            "  [R3/9] Stop the application on oa1\n      [root@oa1]# examples/demo/sim/asadmin"
        ),
        "{no:?}"
    );
    assert!(
        no.stderr.contains(&format!("gate \"Roll back run `{id}` (upgrade on `demo`) with its rollback guide, on oa1, oa2, lb1? [y/N]\" needs an answer")),
        "{no:?}"
    );
    assert_eq!(event_count(dir.path()), events_before);

    // The guide runs node by node, each drained first and put back once healthy.
    let skip = event_count(dir.path());
    let rb = opsrun(dir.path(), &["rollback", &id, "--yes"], &[]);
    assert_eq!(rb.code, 0, "{rb:?}");
    assert_eq!(
        reloads_since(dir.path(), skip),
        [
            "127.0.0.12:6888",
            "127.0.0.11:6888 127.0.0.12:6888",
            "127.0.0.11:6888",
            "127.0.0.11:6888 127.0.0.12:6888"
        ],
        "{rb:?}"
    );
    let events =
        std::fs::read_to_string(dir.path().join("examples/demo/hosts/events.log")).unwrap();
    let tail: Vec<&str> = events
        .lines()
        .skip(skip)
        .filter(|l| {
            l.contains(" stop-domain") || l.contains(" start-domain") || l.contains("nginx-reload")
        })
        .map(|l| l.split_whitespace().nth(1).unwrap_or_default())
        .collect();
    assert_eq!(
        tail,
        ["lb1", "oa1", "oa1", "lb1", "lb1", "oa2", "oa2", "lb1"],
        "{events}"
    );
    for host in ["oa1", "oa2"] {
        let v =
            std::fs::read_to_string(ecology(dir.path(), host).join("WEB-INF/version.properties"))
                .unwrap();
        assert_ne!(v, "release=20260301-002\n", "{host} restored");
    }
    let last = rb.stderr.lines().rev().find(|l| !l.is_empty()).unwrap();
    assert_eq!(
        last,
        format!("succeeded: rolled back run {id} with the rollback guide (9 steps, batch by batch: [oa1] [oa2], lb1 in every batch)"),
        "{rb:?}"
    );

    // A second guide run says the run was rolled back already, and asks.
    let again = opsrun(dir.path(), &["rollback", &id], &[]);
    assert_eq!(again.code, 3, "{again:?}");
    let by = run_id(&rb);
    assert!(
        again.stderr.contains(&format!("gate \"Run `{id}` was already rolled back (by run {by}). Run its rollback guide again, on oa1, oa2, lb1? [y/N]\" needs an answer")),
        "{again:?}"
    );
}

#[test]
fn a_rollback_guide_leaves_alone_the_nodes_a_run_never_reached() {
    let dir = fresh_clone();
    // Fails on the control machine, before any node is touched.
    let bad = opsrun(
        dir.path(),
        &[
            "upgrade",
            "--env",
            "demo",
            "--yes",
            "-e",
            "package=examples/demo/packages/none.zip",
        ],
        &[],
    );
    assert_eq!(bad.code, 1, "{bad:?}");
    let id = run_id(&bad);
    let dry = opsrun(dir.path(), &["rollback", &id, "--dry-run"], &[]);
    assert_eq!(dry.code, 0, "{dry:?}");
    for b in ["batch 1/2: oa1", "batch 2/2: oa2"] {
        assert!(
            dry.stdout.contains(&format!(
                "{b} (with lb1 in every batch): not reached by run {id}, left as it is\n"
            )),
            "{dry:?}"
        );
    }
    assert!(!dry.stdout.contains("[R1/9]"), "{dry:?}");
    let events = event_count(dir.path());
    let rb = opsrun(dir.path(), &["rollback", &id, "--yes"], &[]);
    assert_eq!(rb.code, 0, "{rb:?}");
    assert_eq!(event_count(dir.path()), events, "no node touched");
    let last = rb.stderr.lines().rev().find(|l| !l.is_empty()).unwrap();
    assert_eq!(
        last,
        format!("succeeded: run {id} reached no node: its rollback guide has nothing to restore")
    );
}

#[test]
fn a_rollback_guide_checks_the_backup_before_draining_or_stopping_the_node() {
    let dir = fresh_clone();
    let ok = opsrun(dir.path(), &["upgrade", "--env", "demo", "--yes"], &[]);
    assert_eq!(ok.code, 0, "{ok:?}");
    let id = run_id(&ok);
    let weaver = dir.path().join("examples/demo/hosts/oa1/WEAVER");
    for e in std::fs::read_dir(&weaver).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with("bakecology-") {
            std::fs::remove_file(e.path()).unwrap();
        }
    }
    let skip = event_count(dir.path());
    let rb = opsrun(dir.path(), &["rollback", &id, "--yes"], &[]);
    assert_eq!(rb.code, 1, "{rb:?}");
    // oa1 is neither drained nor stopped: nothing happened on any host.
    assert_eq!(event_count(dir.path()), skip, "{rb:?}");
    assert!(reloads_since(dir.path(), skip).is_empty(), "{rb:?}");
    let last = rb.stderr.lines().rev().find(|l| !l.is_empty()).unwrap();
    assert!(
        last.starts_with("failed: rollback guide stopped: step `Check the pre-upgrade backup` failed on oa1 (exit 1: no backup "),
        "{rb:?}"
    );
    assert!(
        last.ends_with(&format!(
            ": this node is left as it is (running, in the load balancer)); run {id} is NOT fully restored"
        )),
        "{rb:?}"
    );
}

#[test]
fn a_rollback_guide_that_stops_mid_batch_says_what_state_the_node_is_left_in() {
    let dir = fresh_clone();
    let ok = opsrun(dir.path(), &["upgrade", "--env", "demo", "--yes"], &[]);
    assert_eq!(ok.code, 0, "{ok:?}");
    let id = run_id(&ok);
    // The backup verifies and is restored, but oa1 then fails its health check: it is
    // left drained, and the verdict says so, step by step.
    std::fs::write(
        dir.path()
            .join("examples/demo/hosts/oa1/WEAVER/ApusicAS/state/fault"),
        "http500",
    )
    .unwrap();
    let rb = opsrun(dir.path(), &["rollback", &id, "--yes"], &[]);
    assert_eq!(rb.code, 1, "{rb:?}");
    let last = rb.stderr.lines().rev().find(|l| !l.is_empty()).unwrap();
    assert!(
        last.ends_with(&format!(
            "run {id} is NOT fully restored; batch 1/2 (oa1) is left as the guide's completed steps made it: \
             [R1] `Check the pre-upgrade backup` (oa1), [R2] `Drain the node from the load balancer` (lb1), \
             [R3] `Stop the application` (oa1), [R4] `Restore the pre-upgrade backup` (oa1), \
             [R5] `Check the symlinks in ecology` (oa1), [R6] `Start the application` (oa1)"
        )),
        "{rb:?}"
    );
}
