//! A full log disk and large outputs (issue 11, points 7 and 8): the journal
//! stays complete when an output cannot be saved, the run stops and offers the
//! rollback as after any failure, a log dir without room is refused up front,
//! and outputs reach `outputs/` whole however large they are. The small disks
//! are real tmpfs mounts (these tests run as root); peak memory is measured by
//! `scripts/bench-memory.sh` (BENCHMARKS.md), not here.

use crate::support::fleet::{ssh_inventory, SshFleet};
use crate::support::lab::Lab;
use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs of `size` mounted on `dir`, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        fs::create_dir_all(dir).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs on {}", dir.display());
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a file still open in a failing test must not leave the mount behind.
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Two undoable steps around one that prints more than the log disk holds.
fn runbook(root: &str, fill_bytes: u64) -> String {
    format!(
        "name: fill\nhosts: app\nsteps:\n\
         \x20 - name: One\n    run: echo one >> {root}/events\n    rollback: echo undo-one >> {root}/events\n\
         \x20 - name: Fill\n    run: echo fill >> {root}/events; head -c {fill_bytes} /dev/zero | tr '\\\\0' x; echo; echo done >&2\n    rollback: echo undo-fill >> {root}/events\n\
         \x20 - name: Three\n    run: echo three >> {root}/events\n"
    )
}

/// Every started target finished, and the journal's last event is `run_finished`.
fn assert_complete(journal: &[Value]) {
    let last = journal.last().unwrap();
    assert_eq!(last["event"], "run_finished", "{last}");
    let key = |e: &Value| {
        (
            e["phase"].to_string(),
            e["number"].to_string(),
            e["host"].to_string(),
        )
    };
    let started: Vec<_> = journal
        .iter()
        .filter(|e| e["event"] == "target_started")
        .map(key)
        .collect();
    let finished: Vec<_> = journal
        .iter()
        .filter(|e| e["event"] == "target_finished")
        .map(key)
        .collect();
    for s in &started {
        assert!(finished.contains(s), "{s:?} started and never finished");
    }
}

fn journal(dir: &Path) -> Vec<Value> {
    fs::read_to_string(dir.join("journal.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// What the Fill step's record must say: the command's real exit code, and that
/// its stdout was cut; what the log shows of it.
fn assert_fill_recorded(dir: &Path, journal: &[Value]) {
    let fill = journal
        .iter()
        .find(|e| e["event"] == "target_finished" && e["step"] == "Fill")
        .expect("Fill finished");
    assert_eq!(fill["exit_code"], 0, "{fill}");
    assert_eq!(fill["status"], "ok", "{fill}");
    let cut = fill["stdout"]["cut"].as_str().expect("stdout cut");
    assert!(cut.contains("No space left on device"), "{cut}");
    let file = fill["stdout"]["file"].as_str().unwrap();
    let log = fs::read_to_string(dir.join("log.md")).unwrap();
    assert!(!log.is_empty());
    assert!(
        log.contains(file),
        "the log names the cut output {file}:\n{log}"
    );
    assert!(log.contains("log disk is full"), "{log}");
}

#[test]
fn a_full_log_disk_stops_the_run_rolls_back_and_keeps_the_journal_whole() {
    let lab = Lab::new();
    let host = format!("df{}", std::process::id());
    let root = lab.path().join("host");
    fs::create_dir_all(&root).unwrap();
    lab.write(
        "inventories/local.yaml",
        &format!(
            "name: local\ngroups:\n  app:\n    hosts:\n      {host}: {{ connection: local }}\n"
        ),
    );
    lab.write(
        "runbooks/fill.yaml",
        &runbook(&root.display().to_string(), 3_000_000),
    );
    let _disk = Tmpfs::mount(&lab.path().join("runs"), "2m");

    let run = lab.run(&["fill", "--env", "local", "--yes"], &[], None);
    run.expect_code(1);
    assert!(
        run.stderr.contains("the log disk is full"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("Still applied: `One` on"),
        "{}",
        run.stderr
    );
    let events = fs::read_to_string(root.join("events")).unwrap();
    assert_eq!(
        events.lines().collect::<Vec<_>>(),
        ["one", "fill", "undo-fill", "undo-one"],
        "Three never ran; the rollback undid Fill and One"
    );
    let journal = journal(run.dir());
    assert_complete(&journal);
    assert_fill_recorded(run.dir(), &journal);
    assert!(
        !run.dir().join(".reserve").exists(),
        "the reserve is gone at the end"
    );
}

#[test]
fn a_full_log_disk_over_ssh_stops_the_run_and_rolls_back() {
    let fleet = SshFleet::start(1);
    let lab = Lab::new();
    let work = fleet.work_dir(0).display().to_string();
    let groups = format!(
        "  app:\n    hosts:\n      {}: {{ address: {}, port: {} }}\n",
        fleet.name(0),
        fleet.address(0),
        fleet.port(0)
    );
    lab.write(
        "inventories/lab.yaml",
        &ssh_inventory(&fleet, "none", &groups),
    );
    lab.write("runbooks/fill.yaml", &runbook(&work, 3_000_000));
    let _disk = Tmpfs::mount(&lab.path().join("runs"), "2m");

    let run = lab.run(&["fill", "--env", "lab", "--yes"], &[], None);
    run.expect_code(1);
    assert!(
        run.stderr.contains("the log disk is full"),
        "{}",
        run.stderr
    );
    let events = fs::read_to_string(Path::new(&work).join("events")).unwrap();
    assert_eq!(
        events.lines().collect::<Vec<_>>(),
        ["one", "fill", "undo-fill", "undo-one"]
    );
    let journal = journal(run.dir());
    assert_complete(&journal);
    assert_fill_recorded(run.dir(), &journal);
}

#[test]
fn a_log_dir_without_room_is_refused_before_anything_runs() {
    let lab = Lab::new();
    let host = format!("dr{}", std::process::id());
    let root = lab.path().join("host");
    fs::create_dir_all(&root).unwrap();
    lab.write(
        "inventories/local.yaml",
        &format!(
            "name: local\ngroups:\n  app:\n    hosts:\n      {host}: {{ connection: local }}\n"
        ),
    );
    lab.write(
        "runbooks/fill.yaml",
        &runbook(&root.display().to_string(), 10),
    );
    let runs = lab.path().join("runs");
    let _disk = Tmpfs::mount(&runs, "1m");

    let run = lab.test(&["fill", "--env", "local", "--yes"]).output();
    run.expect_code(2);
    assert!(
        run.stderr
            .contains("not enough free space in the log directory")
            && run.stderr.contains(&runs.display().to_string())
            && run.stderr.contains("KiB free")
            && run.stderr.contains("KiB needed"),
        "{}",
        run.stderr
    );
    assert!(!root.join("events").exists(), "nothing ran");
    assert_eq!(fs::read_dir(&runs).unwrap().count(), 0, "no run directory");
}

#[test]
fn a_50_mb_output_is_saved_whole_and_its_digest_is_the_files() {
    use sha2::{Digest, Sha256};
    let lab = Lab::new();
    let host = format!("big{}", std::process::id());
    lab.write(
        "inventories/local.yaml",
        &format!(
            "name: local\ngroups:\n  app:\n    hosts:\n      {host}: {{ connection: local }}\n"
        ),
    );
    // Lines of varying length: chunk boundaries fall anywhere in them.
    lab.write(
        "runbooks/big.yaml",
        "name: big\nhosts: app\nsteps:\n  - name: Print\n    run: seq 1 7000000 | sed 's/$/ abcdefgh/'\n    capture: { name: first, regex: '^(\\d+)' }\n",
    );
    let run = lab.run(&["big", "--env", "local", "--yes"], &[], None);
    run.expect_code(0);
    let journal = journal(run.dir());
    let fin = journal
        .iter()
        .find(|e| e["event"] == "target_finished")
        .unwrap();
    let saved = &fin["stdout"];
    let bytes = fs::read(run.dir().join(saved["file"].as_str().unwrap())).unwrap();
    let expected: u64 = (1..=7_000_000u64)
        .map(|n| n.to_string().len() as u64 + 10)
        .sum();
    assert!(expected > 50_000_000);
    assert_eq!(bytes.len() as u64, expected);
    assert_eq!(saved["bytes"], expected);
    let digest: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(saved["sha256"], digest);
    assert!(bytes.starts_with(b"1 abcdefgh\n2 abcdefgh\n"));
    assert!(bytes.ends_with(b"\n7000000 abcdefgh\n"));
    assert!(saved.get("cut").is_none(), "{saved}");
    assert_eq!(fin["capture"][1], "1", "{fin}");
}

/// The disk a run filled must not keep its rollback from running: a rollback is
/// warned about the room, not refused.
#[test]
fn a_rollback_runs_on_a_log_dir_without_room() {
    let lab = Lab::new();
    let host = format!("rr{}", std::process::id());
    let root = lab.path().join("host");
    fs::create_dir_all(&root).unwrap();
    lab.write(
        "inventories/local.yaml",
        &format!(
            "name: local\ngroups:\n  app:\n    hosts:\n      {host}: {{ connection: local }}\n"
        ),
    );
    lab.write(
        "runbooks/fill.yaml",
        &runbook(&root.display().to_string(), 10),
    );
    let runs = lab.path().join("runs");
    fs::create_dir_all(&runs).unwrap();
    let run = lab.test(&["fill", "--env", "local", "--yes"]).output();
    run.expect_code(0);
    let id = run.id();
    // Move the record onto a disk with too little room left for a new run.
    let saved = lab.path().join("saved");
    fs::rename(&runs, &saved).unwrap();
    fs::create_dir_all(&runs).unwrap();
    let _disk = Tmpfs::mount(&runs, "2m");
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(saved.join(&id))
        .arg(&runs)
        .status()
        .unwrap();
    assert!(status.success());
    let fill = runs.join("filler");
    let _ = std::process::Command::new("dd")
        .args([
            "if=/dev/zero",
            &format!("of={}", fill.display()),
            "bs=64k",
            "count=22",
        ])
        .stderr(std::process::Stdio::null())
        .status();
    let back = lab.test(&["rollback", &id, "--yes"]).output();
    assert_eq!(back.code, 0, "{}\n{}", back.stdout, back.stderr);
    assert!(
        back.stderr.contains("the rollback runs anyway"),
        "{}",
        back.stderr
    );
    let events = fs::read_to_string(root.join("events")).unwrap();
    assert!(events.contains("undo-one"), "{events}");
}
