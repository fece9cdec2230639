//! The run record read back by `opsrun runs`, `opsrun log` and `opsrun rollback`:
//! run ids, the listing, output file names, the log's order, and a journal
//! damaged by a crash. The journals are real ones, from runs on `connection: local`
//! hosts; the damage is done by hand to a copy of one: a last line cut off in the
//! middle (the crash came during a write), or an unreadable line in the middle.

use crate::support::{cli::Run, lab::Lab};
use chrono::Timelike;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const THREE: &str = r#"name: three
hosts: app
steps:
  - name: One
    run: echo one >> {{ root }}/events
    rollback: echo undo-one >> {{ root }}/events
  - name: Two
    run: echo two >> {{ root }}/events
    rollback: echo undo-two >> {{ root }}/events
  - name: Three
    run: echo three >> {{ root }}/events
"#;

/// A lab with two local hosts whose names are unique to this process and `test`:
/// host locks of local hosts live in /tmp under the host's name, shared with other
/// tests of this process and with other processes.
fn local_lab(test: &str) -> (Lab, Vec<String>) {
    let lab = Lab::new();
    let pid = std::process::id();
    let hosts: Vec<String> = ["a", "b"]
        .iter()
        .map(|s| format!("jt{pid}-{test}-{s}"))
        .collect();
    let mut inv = String::from("name: local\ngroups:\n  app:\n    hosts:\n");
    for h in &hosts {
        let root = lab.path().join("hosts").join(h);
        fs::create_dir_all(&root).unwrap();
        inv.push_str(&format!(
            "      {h}: {{ connection: local, vars: {{ root: {} }} }}\n",
            serde_json::to_string(&root.to_string_lossy()).unwrap()
        ));
    }
    lab.write("inventories/local.yaml", &inv);
    lab.write("runbooks/three.yaml", THREE);
    (lab, hosts)
}

fn host_events(lab: &Lab, host: &str) -> Vec<String> {
    fs::read_to_string(lab.path().join("hosts").join(host).join("events"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Copies the run directory `from` to `runs/<id>`, with `journal` as its journal.
fn damaged_copy(lab: &Lab, from: &Path, id: &str, journal: &[u8]) -> PathBuf {
    let to = lab.path().join("runs").join(id);
    let st = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(&to)
        .status()
        .unwrap();
    assert!(st.success());
    fs::remove_file(to.join("log.md")).unwrap();
    fs::write(to.join("journal.jsonl"), journal).unwrap();
    to
}

fn steps_rows(log: &str) -> Vec<(String, String, String)> {
    let start = log.find("\n## Steps\n").expect("a Steps section");
    log[start..]
        .lines()
        .skip_while(|l| !l.starts_with("| # |"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let c: Vec<&str> = l.split('|').map(str::trim).collect();
            (c[2].to_string(), c[3].to_string(), c[4].to_string())
        })
        .collect()
}

#[test]
fn a_journal_cut_mid_line_is_read_up_to_the_last_whole_event_with_a_warning() {
    let (lab, hosts) = local_lab("cut");
    let run = lab.run(&["three", "--env", "local", "--yes"], &[], None);
    run.expect_code(0);
    let original = run.id();

    // The crash came while the first result of step Two was being written.
    let text = fs::read_to_string(run.dir().join("journal.jsonl")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let cut_line = lines
        .iter()
        .position(|l| l.contains(r#""event":"target_finished""#) && l.contains(r#""step":"Two""#))
        .unwrap();
    let kept: usize = lines[..cut_line].iter().map(|l| l.len() + 1).sum();
    let cut_at = kept + lines[cut_line].len() / 2;
    let id = format!("{original}-cut");
    damaged_copy(&lab, run.dir(), &id, &text.as_bytes()[..cut_at]);
    let warning = format!(
        "warning: runs/{id}/journal.jsonl:{}: the last line is incomplete (the run was cut off while writing it); read up to the last whole event",
        cut_line + 1
    );

    // `opsrun log`: warns, renders everything before the cut, marks the rest.
    let log = lab.run(&["log", &id], &[], None);
    log.expect_code(0);
    assert!(log.stderr.contains(&warning), "{}", log.stderr);
    let md = log.log_md();
    assert!(md.contains("**INCOMPLETE**"), "{md}");
    assert!(
        md.contains("| Result | **INCOMPLETE (interrupted)** |"),
        "{md}"
    );
    let mut rows = steps_rows(&md);
    rows.sort();
    let mut want: Vec<(String, String, String)> = Vec::new();
    for h in &hosts {
        want.push(("One".into(), h.clone(), "ok".into()));
        // Local hosts are quick: one may have finished Two before the other started it.
        let started_two = lines[..cut_line].iter().any(|l| {
            l.contains(r#""event":"target_started""#)
                && l.contains(r#""step":"Two""#)
                && l.contains(&format!(r#""host":"{h}""#))
        });
        if started_two {
            want.push(("Two".into(), h.clone(), "**INTERRUPTED**".into()));
        }
    }
    assert!(want.len() > hosts.len(), "the cut is inside step Two");
    want.sort();
    assert_eq!(rows, want, "{md}");

    // `opsrun runs`: the copy never recorded its end.
    let table = lab.runs_table();
    let results: Vec<(&str, &str)> = table
        .iter()
        .map(|r| (r["id"].as_str(), r["result"].as_str()))
        .collect();
    assert_eq!(
        results,
        [
            (original.as_str(), "succeeded"),
            (id.as_str(), "interrupted")
        ]
    );

    // `opsrun rollback`: warns too, and undoes the step recorded as completed, and
    // Two where it had started (its finish is cut off: it may be applied).
    let undo = lab.run(&["rollback", &id, "--yes"], &[], None);
    undo.expect_code(0);
    assert!(undo.stderr.contains(&warning), "{}", undo.stderr);
    let started_two = |h: &str| {
        lines[..cut_line].iter().any(|l| {
            l.contains(r#""event":"target_started""#)
                && l.contains(r#""step":"Two""#)
                && l.contains(&format!(r#""host":"{h}""#))
        })
    };
    for h in &hosts {
        let mut want = vec!["one", "two", "three"];
        // The cut is in Two's first finish: no host had finished it.
        if started_two(h) {
            want.push("undo-two");
        }
        want.push("undo-one");
        assert_eq!(host_events(&lab, h), want, "{h}");
    }
    let undone: Vec<String> = undo
        .events("step_started")
        .iter()
        .map(|e| e["step"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(undone, ["Two", "One"]);
}

#[test]
fn an_unreadable_line_inside_the_journal_is_skipped_with_a_warning() {
    let (lab, _) = local_lab("garbled");
    let run: Run = lab.run(&["three", "--env", "local", "--yes"], &[], None);
    run.expect_code(0);
    let original = run.id();
    let text = fs::read_to_string(run.dir().join("journal.jsonl")).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.insert(3, r#"{"event":"target_fini"#);
    let id = format!("{original}-garbled");
    damaged_copy(&lab, run.dir(), &id, (lines.join("\n") + "\n").as_bytes());

    let log = lab.run(&["log", &id], &[], None);
    log.expect_code(0);
    assert!(
        log.stderr.contains(&format!(
            "warning: runs/{id}/journal.jsonl:4: unreadable event skipped"
        )),
        "{}",
        log.stderr
    );
    let md = log.log_md();
    assert!(md.contains("| Result | **SUCCEEDED** |"), "{md}");
    assert_eq!(steps_rows(&md).len(), 6, "{md}");
    assert_eq!(lab.runs_table()[1]["result"], "succeeded");
}

/// `book` with `HOST_A` replaced by the lab's first host.
fn on_a(book: &str, hosts: &[String]) -> String {
    book.replace("HOST_A", &hosts[0])
}

#[test]
fn a_failed_step_quotes_the_first_error_line_and_points_at_its_full_output() {
    let (lab, hosts) = local_lab("first-error");
    let a = &hosts[0];
    // What `tar xzf` prints for a missing archive: the cause comes first.
    let book = r#"name: unpack
hosts: HOST_A
steps:
  - name: Unpack
    run: |
      echo extracting
      printf '%s\n' 'tar (child): /data/bak.tar.gz: Cannot open: No such file or directory' 'tar (child): Error is not recoverable: exiting now' 'tar: Child returned status 2' 'tar: Error is not recoverable: exiting now' >&2
      exit 2
"#;
    lab.write("runbooks/unpack.yaml", &on_a(book, &hosts));
    let run = lab.run(&["unpack", "--env", "local", "--yes"], &[], None);
    run.expect_code(1);
    let id = run.id();
    let line = format!(
        "error: step `Unpack` failed on {a} (exit 2: tar (child): /data/bak.tar.gz: Cannot open: No such file or directory … tar: Error is not recoverable: exiting now)\n  {a}: full stderr in runs/{id}/outputs/01-unpack-{a}.stderr (and in the log, runs/{id}/log.md)\n"
    );
    assert!(run.stderr.contains(&line), "{}", run.stderr);
    assert_eq!(
        run.target("Unpack", a)["reason"],
        "exit 2: tar (child): /data/bak.tar.gz: Cannot open: No such file or directory \
         … tar: Error is not recoverable: exiting now"
    );
    assert!(run
        .dir()
        .join(format!("outputs/01-unpack-{a}.stderr"))
        .is_file());

    // Nothing error-like: the last line is the best guess, as before.
    lab.write(
        "runbooks/quiet.yaml",
        &on_a(
            "name: quiet\nhosts: HOST_A\nsteps:\n  - name: Quiet\n    run: printf 'one\\ntwo\\n' >&2; exit 3\n",
            &hosts,
        ),
    );
    let quiet = lab.run(&["quiet", "--env", "local", "--yes"], &[], None);
    quiet.expect_code(1);
    assert!(
        quiet.stderr.contains(&format!(
            "error: step `Quiet` failed on {a} (exit 3: two)\n"
        )),
        "{}",
        quiet.stderr
    );
}

#[test]
fn output_files_of_a_chinese_step_name_keep_the_name() {
    let (lab, hosts) = local_lab("cjk-names");
    let a = &hosts[0];
    let book = "name: cjk\nhosts: HOST_A\nsteps:\n  - name: 重启应用\n    run: echo restarted\n  - name: 检查：状态\n    run: echo checked\n  - name: \"！！\"\n    run: echo marks\n";
    lab.write("runbooks/cjk.yaml", &on_a(book, &hosts));
    let run = lab.run(&["cjk", "--env", "local", "--yes"], &[], None);
    run.expect_code(0);
    let files = [
        ("重启应用", format!("outputs/01-重启应用-{a}.stdout")),
        ("检查：状态", format!("outputs/02-检查-状态-{a}.stdout")),
        // No letter or digit at all: the step number keeps it apart.
        ("！！", format!("outputs/03-step-{a}.stdout")),
    ];
    for (step, file) in &files {
        assert_eq!(
            run.target(step, a)["stdout"]["file"],
            file.as_str(),
            "{step}"
        );
        assert!(run.dir().join(file).is_file(), "{file}");
    }
    // The log cites them, and `opsrun verify` finds them by those names.
    let md = run.log_md();
    assert!(md.contains(&files[0].1), "{md}");
    let v = lab.test(&["verify", run.log.to_str().unwrap()]).output();
    let out = v.stdout.clone();
    assert_eq!(v.code, 0, "{out}");
    assert!(!out.contains("FAILED"), "{out}");
}

#[test]
fn runs_lists_ticket_and_what_became_of_each_run_in_aligned_columns() {
    let (lab, hosts) = local_lab("listing");
    let books = [
        (
            "undo-ok",
            "name: undo-ok\nhosts: HOST_A\nsteps:\n  - name: One\n    run: \"true\"\n    rollback: \"true\"\n  - name: Two\n    run: exit 1\n",
        ),
        (
            "undo-bad",
            "name: undo-bad\nhosts: HOST_A\nsteps:\n  - name: One\n    run: \"true\"\n    rollback: exit 3\n  - name: Two\n    run: exit 1\n",
        ),
        (
            "no-undo",
            "name: no-undo\nhosts: HOST_A\nsteps:\n  - name: One\n    run: exit 1\n",
        ),
    ];
    for (name, book) in books {
        lab.write(&format!("runbooks/{name}.yaml"), &on_a(book, &hosts));
    }
    let a = &hosts[0];
    let cjk = [("OPSRUN_OPERATOR", "张三")];
    let ok = lab.run(
        &["three", "--env", "local", "--yes", "--ticket", "变更-2041"],
        &cjk,
        None,
    );
    ok.expect_code(0);
    let undo_ok = lab.run(&["undo-ok", "--env", "local", "--yes"], &[], None);
    undo_ok.expect_code(1);
    assert_eq!(
        undo_ok.outcome().1,
        format!("step `Two` failed on {a} (exit 1); rolled back 1 step: undone on {a}: `One`")
    );
    lab.run(&["undo-bad", "--env", "local", "--yes"], &[], None)
        .expect_code(1);
    lab.run(&["no-undo", "--env", "local", "--yes"], &[], None)
        .expect_code(1);
    // The next morning: the successful run is rolled back from its record.
    let later = lab.run(&["rollback", &ok.id(), "--yes"], &[], None);
    later.expect_code(0);
    assert_eq!(
        later.outcome().1,
        format!(
            "rolled back 2 steps of run {}: undone on {a}, {}: `Two`, `One`",
            ok.id(),
            hosts[1]
        )
    );

    let table = lab.runs_table();
    let rows: Vec<[&str; 5]> = table
        .iter()
        .map(|r| {
            [
                r["id"].as_str(),
                r["runbook"].as_str(),
                r["ticket"].as_str(),
                r["operator"].as_str(),
                r["result"].as_str(),
            ]
        })
        .collect();
    let (ok_id, later_id) = (ok.id(), later.id());
    assert_eq!(
        rows,
        [
            [
                ok_id.as_str(),
                "three",
                "变更-2041",
                "张三",
                "succeeded, rolled back"
            ],
            [
                undo_ok.id().as_str(),
                "undo-ok",
                "-",
                "tester",
                "failed, rolled back"
            ],
            [
                &table[2]["id"],
                "undo-bad",
                "-",
                "tester",
                "failed, ROLLBACK INCOMPLETE"
            ],
            [&table[3]["id"], "no-undo", "-", "tester", "failed"],
            [
                later_id.as_str(),
                "three (rollback)",
                "变更-2041",
                "tester",
                "succeeded"
            ],
        ]
    );

    // The original's log, re-rendered (by its operator, who signs it), says it
    // was rolled back and by which run.
    let log = lab.run(&["log", &ok_id], &[("OPSRUN_OPERATOR", "张三")], None);
    log.expect_code(0);
    let md = log.log_md();
    assert!(md.contains("| Result | **SUCCEEDED** |"), "{md}");
    assert!(
        md.contains(&format!("| Rolled back by | `{later_id}` (succeeded) |")),
        "{md}"
    );
}

/// The UTC time in a run id (`20261122-173005Z-...`).
fn id_time(id: &str) -> chrono::NaiveDateTime {
    chrono::NaiveDateTime::parse_from_str(&id[..15], "%Y%m%d-%H%M%S")
        .unwrap_or_else(|e| panic!("{id}: {e}"))
}

#[test]
fn run_ids_use_one_clock_and_runs_sort_by_start_whatever_the_time_zone() {
    let (lab, _) = local_lab("clock");
    let east = lab.run(
        &["three", "--env", "local", "--yes"],
        &[("TZ", "Asia/Shanghai")],
        None,
    );
    east.expect_code(0);
    let west = lab.run(
        &["three", "--env", "local", "--yes"],
        &[("TZ", "UTC")],
        None,
    );
    west.expect_code(0);
    let start = |r: &Run| {
        chrono::DateTime::parse_from_rfc3339(r.events("run_started")[0]["time"].as_str().unwrap())
            .unwrap()
    };
    for r in [&east, &west] {
        let id = r.id();
        // Two runs in one second: the second one's id gets `-2`.
        assert!(id[15..].starts_with("Z-three-local"), "{id}");
        assert_eq!(
            id_time(&id),
            start(r).naive_utc().with_nanosecond(0).unwrap(),
            "{id}"
        );
    }
    // `run.stamp` stays the control machine's local time: it names files on the hosts.
    assert_eq!(
        east.events("run_started")[0]["stamp"],
        start(&east).format("%Y%m%d-%H%M%S").to_string()
    );
    assert_eq!(start(&east).offset().local_minus_utc(), 8 * 3600);

    // A run recorded by an older opsrun, named in its local time (8 hours ahead).
    let old_id = format!("{}-three-local", start(&east).format("%Y%m%d-%H%M%S"));
    let st = Command::new("cp")
        .arg("-a")
        .arg(east.dir())
        .arg(lab.path().join("runs").join(&old_id))
        .status()
        .unwrap();
    assert!(st.success());

    let table = lab.runs_table_with(&[("TZ", "Asia/Shanghai")]);
    let ids: Vec<&str> = table.iter().map(|r| r["id"].as_str()).collect();
    assert_eq!(
        ids,
        [east.id().as_str(), old_id.as_str(), west.id().as_str()]
    );
    // Start times in the viewer's local time, with its offset.
    let shanghai = chrono::FixedOffset::east_opt(8 * 3600).unwrap();
    assert_eq!(
        table[2]["start"],
        start(&west)
            .with_timezone(&shanghai)
            .format("%Y-%m-%d %H:%M:%S %:z")
            .to_string()
    );
    assert!(table[2]["start"].ends_with(" +08:00"), "{:?}", table[2]);
}

#[test]
fn hosts_of_a_step_are_logged_in_inventory_order_and_counts_agree_with_their_nouns() {
    let (lab, hosts) = local_lab("order");
    // The first host is the slow one: it finishes each step last.
    let book = r#"name: order
hosts: app
steps:
  - name: Slow first
    run: case {{ host.name | quote }} in *-a) sleep 1;; esac; echo done
  - name: Once
    on: HOST_A
    run: "true"
    rollback: "true"
"#;
    lab.write("runbooks/order.yaml", &on_a(book, &hosts));
    let run = lab.run(&["order", "--env", "local", "--yes"], &[], None);
    run.expect_code(0);
    let finished: Vec<String> = run
        .events("target_finished")
        .iter()
        .filter(|e| e["step"] == "Slow first")
        .map(|e| e["host"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        finished,
        [hosts[1].clone(), hosts[0].clone()],
        "completion order"
    );
    let rows = steps_rows(&run.log_md());
    let want: Vec<(String, String, String)> = [
        ("Slow first", &hosts[0]),
        ("Slow first", &hosts[1]),
        ("Once", &hosts[0]),
    ]
    .iter()
    .map(|(s, h)| (s.to_string(), h.to_string(), "ok".to_string()))
    .collect();
    assert_eq!(rows, want);
    let md = run.log_md();
    let detail = |h: &str| md.find(&format!("#### {h}: ")).unwrap();
    assert!(detail(&hosts[0]) < detail(&hosts[1]), "{md}");

    assert!(
        run.stderr
            .contains(&format!("run {}: order on local (2 hosts)\n", run.id())),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("succeeded: 2 steps done\n"),
        "{}",
        run.stderr
    );

    lab.write(
        "runbooks/single.yaml",
        &on_a(
            "name: single\nhosts: HOST_A\nsteps:\n  - name: Only\n    run: \"true\"\n    rollback: \"true\"\n",
            &hosts,
        ),
    );
    let one = lab.run(&["single", "--env", "local", "--yes"], &[], None);
    one.expect_code(0);
    assert!(
        one.stderr
            .contains(&format!("run {}: single on local (1 host)\n", one.id())),
        "{}",
        one.stderr
    );
    assert!(
        one.stderr.contains("succeeded: 1 step done\n"),
        "{}",
        one.stderr
    );
    let undo = lab.run(&["rollback", &one.id(), "--yes"], &[], None);
    undo.expect_code(0);
    assert_eq!(
        undo.outcome().1,
        format!(
            "rolled back 1 step of run {}: undone on {}: `Only`",
            one.id(),
            hosts[0]
        )
    );
}

/// A timeout was once told by the word "grace" in the failure's message, and every
/// transport message names its host: a command that could not start on a host
/// called `grace…` was recorded as timed out. It failed, and is recorded so.
#[test]
fn a_failure_on_a_host_named_grace_is_a_failure_not_a_timeout() {
    let lab = Lab::new();
    let host = format!("grace-{}", std::process::id());
    lab.write(
        "inventories/local.yaml",
        &format!(
            "name: local\ngroups:\n  app:\n    hosts:\n      {host}: {{ connection: local }}\n"
        ),
    );
    // A NUL byte cannot be put on a command line: the command does not start.
    lab.write(
        "runbooks/nul.yaml",
        "name: nul\nhosts: app\nsteps:\n  - name: One\n    run: \"echo a\\0b\"\n",
    );
    let run = lab.run(&["nul", "--env", "local", "--yes"], &[], None);
    run.expect_code(1);
    let reason =
        format!("host {host}: could not start the command: nul byte found in provided data");
    assert!(
        run.stderr.contains(&format!("✗ {host}")) && run.stderr.contains(&reason),
        "{}",
        run.stderr
    );
    let journal = fs::read_to_string(run.dir().join("journal.jsonl")).unwrap();
    let finished = journal
        .lines()
        .find(|l| l.contains(r#""event":"target_finished""#))
        .unwrap();
    assert!(finished.contains(r#""status":"failed""#), "{finished}");
    let log = fs::read_to_string(run.dir().join("log.md")).unwrap();
    assert!(log.contains(&format!("#### {host}: FAILED")), "{log}");
}

/// Output file names are unique (hosts differing only in case or punctuation get
/// their own), stable (the same run names them the same way) and say the batch in
/// one way for every step of a rolling run: `-b2`, never a bare `.2`.
#[test]
fn output_files_are_unique_per_host_and_name_their_batch() {
    use crate::support::cli::Test;
    use sha2::{Digest, Sha256};
    let inventory = "groups:\n  app:\n    hosts:\n      AB1: { connection: local }\n      ab1: { connection: local }\n  lb:\n    hosts:\n      lb1: { connection: local }\n";
    let runbook = "name: names\nhosts: app\nserial: 1\nsteps:\n\
        \x20 - name: Check the packages\n    local: true\n    run: echo checked\n\
        \x20 - name: Drain\n    on: lb\n    run: echo drained\n\
        \x20 - name: Drain one\n    on: lb\n    run: echo {{ batch[0].name }}\n\
        \x20 - name: Upgrade\n    run: echo {{ host.name }}\n";
    let run = Test::new()
        .write("runbooks/names.yaml", runbook)
        .write("inventories/lab.yaml", inventory)
        .args(["names", "--env", "lab", "--yes", "--no-sign"])
        .expect_status(0)
        .run();
    let digest: String = Sha256::digest(b"AB1")[..3]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut files: Vec<String> = std::fs::read_dir(run.dir().join("outputs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let mut expected = vec![
        "01-check-the-packages-localhost-b1.stdout".to_string(),
        "01-check-the-packages-localhost-b2.stdout".into(),
        "02-drain-lb1-b1.stdout".into(),
        "02-drain-lb1-b2.stdout".into(),
        "03-drain-one-lb1-b1.stdout".into(),
        "03-drain-one-lb1-b2.stdout".into(),
        format!("04-upgrade-ab1-{digest}-b1.stdout"),
        "04-upgrade-ab1-b2.stdout".into(),
    ];
    expected.sort();
    assert_eq!(files, expected);
    assert_eq!(
        run.read(
            run.dir()
                .join(format!("outputs/04-upgrade-ab1-{digest}-b1.stdout"))
        ),
        "AB1\n"
    );
    assert_eq!(
        run.read(run.dir().join("outputs/04-upgrade-ab1-b2.stdout")),
        "ab1\n"
    );
}

/// Step Two fails on every host: the run fails, its automatic rollback undoes One.
const FAILS: &str = r#"name: fails
hosts: app
steps:
  - name: One
    run: echo one >> {{ root }}/events
  - name: Two
    run: echo two >> {{ root }}/events; exit 3
"#;

/// The 1-based number of the first line of `text` that contains every one of `parts`.
fn line_of(text: &str, parts: &[&str]) -> usize {
    text.lines()
        .position(|l| parts.iter().all(|p| l.contains(p)))
        .expect("a matching line")
        + 1
}

fn remove_line(text: &str, n: usize) -> String {
    let mut lines: Vec<&str> = text.lines().collect();
    lines.remove(n - 1);
    lines.join("\n") + "\n"
}

#[test]
fn an_edited_outcome_is_refused_by_opsrun_log_and_the_signed_log_stays_byte_identical() {
    let (lab, _) = local_lab("flip");
    lab.write("runbooks/fails.yaml", FAILS);
    let run = lab.run(&["fails", "--env", "local", "--yes"], &[], None);
    assert_ne!(run.code, 0);
    let dir = run.dir().to_path_buf();
    let log = fs::read(dir.join("log.md")).unwrap();
    let sig = fs::read(dir.join("log.md.sig")).expect("a signed log");
    let text = fs::read_to_string(dir.join("journal.jsonl")).unwrap();
    let last = text.lines().count();
    assert_eq!(line_of(&text, &[r#""event":"run_finished""#]), last);
    // The last line: nothing follows it in the chain, the signed log's chain hash covers it.
    let flipped = text.replace(r#""outcome":"failed""#, r#""outcome":"succeeded""#);
    assert_ne!(flipped, text);
    fs::write(dir.join("journal.jsonl"), &flipped).unwrap();

    let out = lab.test(&["log", &run.id()]).output();
    assert_ne!(out.code, 0, "{out:?}");
    let said = format!(
        "the hash chain is broken at line {last}: event #{last} is not the one log.md was written from"
    );
    assert!(out.stderr.contains(&said), "{}", out.stderr);
    assert_unchanged(&dir, "log.md", &log);
    assert_unchanged(&dir, "log.md.sig", &sig);

    // And the signed log no longer verifies against its run directory.
    let v = lab.test(&["verify", &run.id()]).output();
    assert_eq!(v.code, 1, "{v:?}");
    assert!(
        v.stdout.contains(&format!(
            "FAILED  journal: line {last}: event #{last} is not the one log.md was written from"
        )),
        "{}",
        v.stdout
    );

    // `opsrun runs` warns, and shows nothing the edited journal says as the result.
    let runs = lab.test(&["runs"]).output();
    assert!(
        runs.stderr.contains(&format!(
            "the journal no longer matches its signed log (at line {last}: event #{last} is not the one log.md was written from"
        )),
        "{}",
        runs.stderr
    );
    assert_eq!(
        lab.runs_table()[0]["result"],
        "JOURNAL EDITED after its signed log"
    );
}

#[test]
fn a_dropped_result_line_stops_log_runs_and_rollback_at_the_break() {
    let (lab, hosts) = local_lab("drop");
    let run = lab.run(&["three", "--env", "local", "--yes"], &[], None);
    run.expect_code(0);
    let text = fs::read_to_string(run.dir().join("journal.jsonl")).unwrap();
    let n = line_of(&text, &[r#""event":"target_finished""#, r#""step":"Two""#]);
    let id = format!("{}-drop", run.id());
    damaged_copy(&lab, run.dir(), &id, remove_line(&text, n).as_bytes());
    let said = format!(
        "runs/{id}/journal.jsonl: the hash chain is broken at line {n}: expected event #{n}, found #{}: event #{n} is missing here (a line was removed, or moved further down); only the {} events before it are used",
        n + 1,
        n - 1
    );

    let log = lab.test(&["log", &id]).output();
    assert_ne!(log.code, 0, "{log:?}");
    assert!(
        log.stderr
            .contains(&format!("line {n}: expected event #{n}")),
        "{}",
        log.stderr
    );
    assert!(!lab.path().join("runs").join(&id).join("log.md").exists());

    let runs = lab.test(&["runs"]).output();
    assert!(runs.stderr.contains(&said), "{}", runs.stderr);
    assert_eq!(
        lab.runs_table()[1]["result"],
        "interrupted",
        "the end is after the break"
    );

    // `--resume` starts where the events before the break leave off: at Two.
    let resume = lab
        .test(&[
            "run",
            "three",
            "--env",
            "local",
            "--resume",
            &id,
            "--dry-run",
        ])
        .output();
    assert_eq!(resume.code, 0, "{resume:?}");
    assert!(resume.stderr.contains(&said), "{}", resume.stderr);
    assert!(
        resume
            .stdout
            .contains("[1/3] One  on: app  (skipped: before --start-at)\n"),
        "{}",
        resume.stdout
    );
    assert!(
        resume.stdout.contains("[2/3] Two  on: app\n"),
        "{}",
        resume.stdout
    );

    let undo = lab.run(&["rollback", &id, "--yes"], &[], None);
    undo.expect_code(0);
    assert!(undo.stderr.contains(&said), "{}", undo.stderr);
    for h in &hosts {
        let events = host_events(&lab, h);
        // Each undo at most once; One is undone everywhere.
        for undo in ["undo-one", "undo-two"] {
            assert!(
                events.iter().filter(|e| *e == undo).count() <= 1,
                "{h}: {events:?}"
            );
        }
        assert_eq!(
            events.last().map(String::as_str),
            Some("undo-one"),
            "{h}: {events:?}"
        );
    }
}

#[test]
fn a_duplicated_line_is_found_and_rollback_undoes_each_step_once() {
    let (lab, hosts) = local_lab("dup");
    let run = lab.run(&["three", "--env", "local", "--yes"], &[], None);
    run.expect_code(0);
    let text = fs::read_to_string(run.dir().join("journal.jsonl")).unwrap();
    let n = line_of(&text, &[r#""event":"target_finished""#, r#""step":"One""#]);
    let mut lines: Vec<&str> = text.lines().collect();
    lines.insert(n, lines[n - 1]);
    let id = format!("{}-dup", run.id());
    damaged_copy(&lab, run.dir(), &id, (lines.join("\n") + "\n").as_bytes());

    let log = lab.test(&["log", &id]).output();
    assert_ne!(log.code, 0, "{log:?}");
    assert!(
        log.stderr.contains(&format!(
            "line {}: event #{n} again (a copy of line {n})",
            n + 1
        )),
        "{}",
        log.stderr
    );
    let undo = lab.run(&["rollback", &id, "--yes"], &[], None);
    undo.expect_code(0);
    assert!(undo.stderr.contains("event #"), "{}", undo.stderr);
    for h in &hosts {
        let events = host_events(&lab, h);
        assert!(
            events.iter().filter(|e| *e == "undo-one").count() <= 1,
            "{h}: {events:?}"
        );
    }
}

#[test]
fn a_damaged_first_line_still_rolls_back_from_the_intact_events_and_says_so() {
    let (lab, hosts) = local_lab("first");
    let run = lab.run(&["three", "--env", "local", "--yes"], &[], None);
    run.expect_code(0);
    let text = fs::read_to_string(run.dir().join("journal.jsonl")).unwrap();
    let first = text.lines().next().unwrap();
    let damaged = text.replacen(first, &first[..first.len() / 3], 1);
    let id = format!("{}-first", run.id());
    damaged_copy(&lab, run.dir(), &id, damaged.as_bytes());

    // Not signed over.
    let log = lab.test(&["log", &id]).output();
    assert_ne!(log.code, 0, "{log:?}");
    assert!(
        log.stderr
            .contains("the run's first event is damaged (at line 1: event #1 is unreadable"),
        "{}",
        log.stderr
    );

    let table = lab.runs_table();
    assert_eq!(table[1]["id"], id);
    assert_eq!(
        (table[1]["runbook"].as_str(), table[1]["env"].as_str()),
        ("three", "local")
    );

    let undo = lab.run(&["rollback", &id, "--yes"], &[], None);
    undo.expect_code(0);
    assert!(
        undo.stderr.contains(&format!("the run's identity is recovered from what is intact: run id `{id}` from the run directory's name")),
        "{}",
        undo.stderr
    );
    for h in &hosts {
        assert_eq!(
            host_events(&lab, h),
            ["one", "two", "three", "undo-two", "undo-one"],
            "{h}"
        );
    }
}

/// The run directory's file `name` still holds `was`, byte for byte.
#[track_caller]
fn assert_unchanged(dir: &Path, name: &str, was: &[u8]) {
    assert_eq!(fs::read(dir.join(name)).unwrap(), was, "{name} changed");
}

/// sha256 of a journal line's bytes (without its newline): what the next line's `prev` is.
fn link(line: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(line.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `text` with `extra` events appended, chained on as opsrun chains (what the
/// hostile tester's rechain script does): the lines already there are untouched.
fn append_chained(text: &str, extra: &[serde_json::Value]) -> String {
    let mut out = text.to_string();
    let mut prev = link(text.lines().last().unwrap());
    let mut seq = text.lines().count() as u64;
    for e in extra {
        seq += 1;
        let mut e = e.clone();
        e["seq"] = seq.into();
        e["prev"] = prev.clone().into();
        let line = serde_json::to_string(&e).unwrap();
        prev = link(&line);
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// The journal's events, as JSON.
fn events_of(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn events_appended_past_the_logs_chain_head_are_a_break_for_log_verify_runs_and_rollback() {
    let (lab, hosts) = local_lab("append");
    lab.write("runbooks/fails.yaml", FAILS);
    let run = lab.run(&["fails", "--env", "local", "--yes"], &[], None);
    assert_ne!(run.code, 0);
    let dir = run.dir().to_path_buf();
    let text = fs::read_to_string(dir.join("journal.jsonl")).unwrap();
    let n = text.lines().count();
    // A rechained `run_finished` that says succeeded, after the real one.
    let mut finished = events_of(&text).pop().unwrap();
    finished["outcome"] = "succeeded".into();
    finished["message"] = "all steps completed".into();
    fs::write(
        dir.join("journal.jsonl"),
        append_chained(&text, &[finished]),
    )
    .unwrap();
    let log = fs::read(dir.join("log.md")).unwrap();
    let said = format!(
        "the hash chain is broken at line {}: event #{} follows the last event log.md was written from (#{n}",
        n + 1,
        n + 1
    );
    let out = lab.test(&["log", &run.id()]).output();
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains(&said), "{}", out.stderr);
    assert_unchanged(&dir, "log.md", &log);
    let v = lab.test(&["verify", &run.id()]).output();
    assert_eq!(v.code, 1, "{v:?}");
    assert!(
        v.stdout.contains(&format!(
            "FAILED  journal: line {}: event #{} follows the last event log.md was written from",
            n + 1,
            n + 1
        )),
        "{}",
        v.stdout
    );
    let runs = lab.test(&["runs"]).output();
    assert!(runs.stderr.contains(&said), "{}", runs.stderr);
    assert_eq!(lab.runs_table()[0]["result"], "failed");

    // A log edited to state the forged head is no anchor: its signature no longer covers it.
    let head = link(
        fs::read_to_string(dir.join("journal.jsonl"))
            .unwrap()
            .lines()
            .last()
            .unwrap(),
    );
    let text_log = String::from_utf8(log.clone()).unwrap();
    let stated = text_log
        .lines()
        .find(|l| l.starts_with("- Journal: "))
        .unwrap()
        .to_string();
    let forged = text_log.replace(
        &stated,
        &format!(
            "- Journal: `journal.jsonl`, {} events, chain hash `{head}`",
            n + 1
        ),
    );
    fs::write(dir.join("log.md"), &forged).unwrap();
    let out = lab.test(&["log", &run.id()]).output();
    assert_ne!(out.code, 0, "{out:?}");
    assert!(
        out.stderr
            .contains("log.md's signature does not verify against the public key it states"),
        "{}",
        out.stderr
    );
    assert_eq!(fs::read_to_string(dir.join("log.md")).unwrap(), forged);
    fs::remove_file(dir.join("log.md.sig")).unwrap();
    let out = lab.test(&["log", &run.id()]).output();
    assert_ne!(out.code, 0, "{out:?}");
    assert!(
        out.stderr.contains("log.md.sig is missing"),
        "{}",
        out.stderr
    );
    assert!(!dir.join("log.md.sig").exists());
    let _ = hosts;
}

#[test]
fn undo_events_appended_past_the_logs_chain_head_do_not_make_rollback_skip_an_undo() {
    let (lab, hosts) = local_lab("appundo");
    let run = lab.run(&["three", "--env", "local", "--yes"], &[], None);
    run.expect_code(0);
    let text = fs::read_to_string(run.dir().join("journal.jsonl")).unwrap();
    // "One was undone already": its step's events again, as the undo phase.
    let undone: Vec<serde_json::Value> = events_of(&text)
        .into_iter()
        .filter(|e| {
            e["step"] == "One"
                && ["step_started", "target_finished", "step_finished"]
                    .contains(&e["event"].as_str().unwrap_or_default())
        })
        .map(|mut e| {
            e["phase"] = "undo".into();
            e
        })
        .collect();
    assert!(undone.len() >= 3, "{undone:?}");
    fs::write(
        run.dir().join("journal.jsonl"),
        append_chained(&text, &undone),
    )
    .unwrap();
    // With the log's stated head moved along (its signature then fails), rollback says so.
    let log = fs::read_to_string(run.dir().join("log.md")).unwrap();
    let stated = log
        .lines()
        .find(|l| l.starts_with("- Journal: "))
        .unwrap()
        .to_string();
    let forged = log.replace(&stated, &format!("{stated} "));
    fs::write(run.dir().join("log.md"), &forged).unwrap();
    let dry = lab.test(&["rollback", &run.id(), "--dry-run"]).output();
    assert!(
        dry.stderr
            .contains("log.md's signature does not verify against the public key it states"),
        "{}",
        dry.stderr
    );
    fs::write(run.dir().join("log.md"), &log).unwrap();

    let undo = lab.run(&["rollback", &run.id(), "--yes"], &[], None);
    undo.expect_code(0);
    assert!(
        undo.stderr
            .contains("follows the last event log.md was written from"),
        "{}",
        undo.stderr
    );
    assert!(
        !undo.stderr.contains("signature does not verify"),
        "{}",
        undo.stderr
    );
    for h in &hosts {
        assert_eq!(
            host_events(&lab, h),
            ["one", "two", "three", "undo-two", "undo-one"],
            "{h}"
        );
    }
}

/// Every line of `text` without its chain fields, and its `run_started` saying `version`.
fn unchained(text: &str, version: u64) -> String {
    events_of(text)
        .into_iter()
        .map(|mut e| {
            let o = e.as_object_mut().unwrap();
            o.remove("seq");
            o.remove("prev");
            if o["event"] == "run_started" {
                o.insert("version".into(), version.into());
            }
            serde_json::to_string(&e).unwrap() + "\n"
        })
        .collect()
}

#[test]
fn a_journal_of_the_chained_version_stripped_of_its_chain_is_broken_not_legacy() {
    let (lab, _) = local_lab("strip");
    let run = lab.run(&["three", "--env", "local", "--yes"], &[], None);
    run.expect_code(0);
    let text = fs::read_to_string(run.dir().join("journal.jsonl")).unwrap();
    let written = &events_of(&text)[0]["version"];
    assert!(
        written.as_u64().unwrap() >= 2,
        "chained journals are version 2: {written}"
    );
    let id = format!("{}-strip", run.id());
    let dir = damaged_copy(&lab, run.dir(), &id, unchained(&text, 2).as_bytes());
    let out = lab.test(&["log", &id]).output();
    assert_ne!(out.code, 0, "{out:?}");
    assert!(
        out.stderr.contains(
            "the hash chain is broken at line 1: the journal says version 2, whose every line carries a sequence number and previous-line hash, but its lines have none"
        ),
        "{}",
        out.stderr
    );
    assert!(!dir.join("log.md").exists());
    let undo = lab.test(&["rollback", &id, "--yes"]).output();
    assert_ne!(undo.code, 0, "{undo:?}");

    // The version written before the chain (1) still reads as a journal without one.
    let id = format!("{}-v1", run.id());
    let dir = damaged_copy(&lab, run.dir(), &id, unchained(&text, 1).as_bytes());
    let out = lab.test(&["log", &id, "--no-sign"]).output();
    assert_eq!(out.code, 0, "{out:?}");
    assert!(fs::read_to_string(dir.join("log.md"))
        .unwrap()
        .contains("no chain (written by an older opsrun)"));
}

#[test]
fn rollback_refuses_a_run_directory_copy_edited_after_the_run_before_anything_runs() {
    let (lab, hosts) = local_lab("copy");
    let run = lab.run(&["three", "--env", "local", "--yes"], &[], None);
    run.expect_code(0);
    let pwned = lab.path().join("PWNED");
    let edit = |dir: &Path| {
        let book = dir.join("runbook.yaml");
        let text = fs::read_to_string(&book).unwrap();
        let evil = text.replace(
            "rollback: echo undo-one",
            &format!("rollback: touch {} ; echo undo-one", pwned.display()),
        );
        assert_ne!(evil, text);
        fs::write(&book, evil).unwrap();
    };
    let text = fs::read_to_string(run.dir().join("journal.jsonl")).unwrap();
    // The same copy edited in a run whose first line is damaged: checked against its log.
    let first = text.lines().next().unwrap();
    let id = format!("{}-first", run.id());
    let damaged = damaged_copy(
        &lab,
        run.dir(),
        &id,
        text.replacen(first, &first[..first.len() / 3], 1)
            .as_bytes(),
    );
    fs::copy(run.dir().join("log.md"), damaged.join("log.md")).unwrap();
    for (dir, id) in [(run.dir().to_path_buf(), run.id()), (damaged, id)] {
        edit(&dir);
        let undo = lab.test(&["rollback", &id, "--yes"]).output();
        assert_eq!(undo.code, 2, "{undo:?}");
        assert!(
            undo.stderr.contains(&format!(
                "runbook.yaml` is not the file run {id} ran: its sha256 is"
            )),
            "{}",
            undo.stderr
        );
        assert!(!pwned.exists(), "the edited copy ran");
        for h in &hosts {
            assert_eq!(host_events(&lab, h), ["one", "two", "three"], "{h}");
        }
    }
}

/// A run with a `local: true` step (its target is the control machine, named
/// `localhost`, no inventory host): recovered from a damaged first line, its
/// hosts are the inventory's only, and it still rolls back.
#[test]
fn a_damaged_first_line_of_a_run_with_a_local_step_still_rolls_back() {
    let (lab, hosts) = local_lab("firstlocal");
    lab.write(
        "runbooks/withlocal.yaml",
        "name: withlocal\nhosts: app\nsteps:\n\
         \x20 - name: prepare\n    local: true\n    run: \"true\"\n\
         \x20 - name: one\n    run: echo one >> {{ root | quote }}/events\n    rollback: echo undo-one >> {{ root | quote }}/events\n",
    );
    let run = lab.run(&["withlocal", "--env", "local", "--yes"], &[], None);
    run.expect_code(0);
    let text = fs::read_to_string(run.dir().join("journal.jsonl")).unwrap();
    let first = text.lines().next().unwrap();
    let damaged = text.replacen(first, &first[..first.len() / 3], 1);
    let id = format!("{}-firstlocal", run.id());
    damaged_copy(&lab, run.dir(), &id, damaged.as_bytes());
    let undo = lab.run(&["rollback", &id, "--yes"], &[], None);
    undo.expect_code(0);
    assert!(
        !undo.stderr.contains("unknown group or host"),
        "{}",
        undo.stderr
    );
    for h in &hosts {
        assert_eq!(host_events(&lab, h), ["one", "undo-one"], "{h}");
    }
}

/// Another run's log copied into a run directory is no anchor for its journal:
/// the run stays what its intact journal says, and readers say which log it is.
#[test]
fn a_log_of_another_run_beside_an_intact_journal_does_not_cut_it() {
    let (lab, _) = local_lab("otherlog");
    let a = lab.run(&["three", "--env", "local", "--yes"], &[], None);
    a.expect_code(0);
    // A second run, shorter (it fails at its first step), so its log states fewer events.
    lab.write(
        "runbooks/short.yaml",
        "name: short\nhosts: app\nsteps:\n  - name: fail\n    run: exit 1\n",
    );
    let b = lab.run(&["short", "--env", "local", "--yes"], &[], None);
    b.expect_code(1);
    for f in ["log.md", "log.md.sig"] {
        fs::copy(b.dir().join(f), a.dir().join(f)).unwrap();
    }
    let table = lab.runs_table();
    let row = table
        .iter()
        .find(|r| r["id"] == a.id())
        .expect("run a listed");
    assert_eq!(row["result"], "succeeded", "{table:?}");
    let out = lab.test(&["runs"]).output();
    assert!(
        out.stderr.contains(&format!(
            "is the log of run `{}`, not of run `{}` whose journal is beside it",
            b.id(),
            a.id()
        )),
        "{}",
        out.stderr
    );
}

/// Every line re-chained from the first, as a forger with the chain's (unkeyed)
/// recipe would: the chain is whole, only the signed log's head disagrees.
fn rechained(events: &[serde_json::Value]) -> String {
    let mut out = String::new();
    let mut prev = "0".repeat(64);
    for (i, e) in events.iter().enumerate() {
        let mut e = e.clone();
        e["seq"] = (i as u64 + 1).into();
        e["prev"] = prev.clone().into();
        let line = serde_json::to_string(&e).unwrap();
        prev = link(&line);
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// A captured value edited in the journal and the whole chain recomputed: the
/// journal no longer matches its signed log, so `opsrun rollback` builds no
/// command from it (the edited capture would have run in an undo), `--resume`
/// neither, and `opsrun runs` does not show what the edited journal says.
#[test]
fn a_rechained_journal_that_its_signed_log_disowns_builds_no_command() {
    let (lab, hosts) = local_lab("rechain");
    lab.write(
        "runbooks/cap.yaml",
        "name: cap\nhosts: app\nsteps:\n\
         \x20 - name: read\n    run: echo hello\n    capture: val\n\
         \x20 - name: use\n    run: echo use-{{ val }} >> {{ root | quote }}/events\n    rollback: echo undo-{{ val }} >> {{ root | quote }}/events\n\
         \x20 - name: fail\n    run: exit 1\n    on_failure: continue\n",
    );
    let run = lab.run(&["cap", "--env", "local", "--yes"], &[], None);
    let text = fs::read_to_string(run.dir().join("journal.jsonl")).unwrap();
    let forged: Vec<serde_json::Value> = events_of(&text)
        .into_iter()
        .map(|mut e| {
            if e["capture"][0] == "val" {
                e["capture"][1] = "hello;touch PWNED;echo".into();
            }
            e
        })
        .collect();
    let forged = rechained(&forged);
    assert!(
        forged.contains("touch PWNED"),
        "the capture is in the journal"
    );
    fs::write(run.dir().join("journal.jsonl"), &forged).unwrap();

    let undo = lab.test(&["rollback", &run.id(), "--yes"]).output();
    assert_eq!(undo.code, 2, "{}", undo.stderr);
    assert!(
        undo.stderr.contains(&format!(
            "the journal of run {} no longer matches its signed log",
            run.id()
        )),
        "{}",
        undo.stderr
    );
    let resume = lab
        .test(&["cap", "--env", "local", "--yes", "--resume", &run.id()])
        .output();
    assert_eq!(resume.code, 2, "{}", resume.stderr);
    assert!(!lab.path().join("PWNED").exists());
    for h in &hosts {
        assert!(
            !host_events(&lab, h).iter().any(|l| l.contains("undo")),
            "{h}"
        );
    }
    let row = lab
        .runs_table()
        .into_iter()
        .find(|r| r["id"] == run.id())
        .unwrap();
    assert_eq!(row["result"], "JOURNAL EDITED after its signed log");
}
