//! Journals written before the journal format had a version (v0: kinds, lock
//! actions and Ctrl-C choices as strings, `"(not set)"`/`"******"` param values,
//! one `rollback` phase for undo and guide steps) stay readable. The fixtures in
//! `tests/fixtures/journals-v0/` are three runs recorded by that binary: a
//! succeeded `upgrade` on the demo inventory, a failed one that rolled itself
//! back, and an `opsrun rollback` of the first. `rollback-dry-run.txt` is what
//! that binary previewed for `opsrun rollback` of the first.

use crate::support::cli::Test;
use std::fs;
use std::path::{Path, PathBuf};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/journals-v0");
const SUCCEEDED: &str = "20261202-071314Z-upgrade-demo";
const FAILED: &str = "20261202-071315Z-upgrade-demo";
const ROLLBACK: &str = "20261202-071318Z-upgrade-demo-rollback";

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A test whose log directory is a private copy of the three v0 runs.
fn with_runs() -> (Test, PathBuf) {
    let test = Test::new();
    let runs = test.path().join("runs");
    for id in [SUCCEEDED, FAILED, ROLLBACK] {
        copy_dir(&Path::new(FIXTURES).join(id), &runs.join(id));
    }
    let test = test.env("OPSRUN_LOG_DIR", &runs).env("TZ", "UTC");
    (test, runs)
}

fn stored_log(id: &str) -> String {
    fs::read_to_string(Path::new(FIXTURES).join(id).join("log.md")).unwrap()
}

#[test]
fn runs_lists_v0_journals_with_their_results() {
    let (test, _runs) = with_runs();
    test.arg("runs").expect_stdout(
        "\
id                                      runbook             env   ticket    operator     result                  start                       duration
20261202-071314Z-upgrade-demo           upgrade             demo  CHG-2041  ops-fixture  succeeded, rolled back  2026-12-02 07:13:14 +00:00  840ms
20261202-071315Z-upgrade-demo           upgrade             demo  -         ops-fixture  failed, rolled back     2026-12-02 07:13:15 +00:00  2.6s
20261202-071318Z-upgrade-demo-rollback  upgrade (rollback)  demo  CHG-2041  ops-fixture  succeeded               2026-12-02 07:13:18 +00:00  659ms
",
    )
    .run();
}

/// The failed run and the rollback run re-render byte for byte. The succeeded
/// run's stored log was written before it was rolled back; its re-render gains
/// the "Rolled back by" row that says so, and nothing else.
#[test]
fn log_rerenders_v0_journals_byte_identical() {
    for id in [FAILED, ROLLBACK, SUCCEEDED] {
        let (test, runs) = with_runs();
        let _run = test.args(["log", id, "--no-sign"]).run();
        let rendered = crate::support::lab::without_rendered_later(
            &fs::read_to_string(runs.join(id).join("log.md")).unwrap(),
        );
        let mut want = stored_log(id);
        // Since these logs were written, rollback rows are labelled as what they
        // are (issue 9): `undo N` for an undone step, `RN` for a guide step.
        match id {
            FAILED => want = label_rollback_rows(&want, "undo "),
            ROLLBACK => want = label_rollback_rows(&want, "R"),
            _ => {}
        }
        // And text that may quote a host (issue 12) is in code spans.
        want = quote_host_text(&want);
        // And what the operator (or a file) says in the header is in code spans too.
        want = quote_header_text(&want);
        want = with_binding(&want, id, &runs.join(id));
        if id == SUCCEEDED {
            let row = "| Dry run | no |\n";
            let at = want.find(row).unwrap() + row.len();
            want.insert_str(
                at,
                &format!("| Rolled back by | `{ROLLBACK}` (succeeded) |\n"),
            );
        }
        assert!(
            rendered == want,
            "{id}: log.md differs:\n{}",
            crate::support::cli::diff(&want, &rendered)
        );
    }
}

/// `log` with the block that binds a log to its run (issue 12), as a log of a
/// v0 journal states it: no chain, the kept copies' digests.
fn with_binding(log: &str, id: &str, dir: &std::path::Path) -> String {
    let sha = |f: &str| {
        use sha2::Digest;
        let b = fs::read(dir.join(f)).unwrap();
        sha2::Sha256::digest(&b)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let block = format!(
        "This log is bound to its run: `opsrun verify` checks these against the run directory it sits in.\n\n- Run: `{id}`\n- Journal: `journal.jsonl`, no chain (written by an older opsrun)\n- Operator: `ops-fixture`\n- File: `runbook.yaml` sha256 `{}`\n- File: `inventory.yaml` sha256 `{}`\n\n",
        sha("runbook.yaml"),
        sha("inventory.yaml")
    );
    let head = "## How to verify\n\n";
    let at = log.find(head).unwrap() + head.len();
    let mut out = log.to_string();
    out.insert_str(at, &block);
    out
}

/// `log` (from the Rollback heading on) with each row and detail heading of the
/// Rollback section labelled `PREFIX` + its number, as today's binary writes them.
fn label_rollback_rows(log: &str, prefix: &str) -> String {
    let Some(at) = log.find("\n## Rollback\n") else {
        return log.to_string();
    };
    let (before, after) = log.split_at(at);
    let mut out = before.to_string();
    for line in after.split_inclusive('\n') {
        let numbered = |rest: &str, end: &str| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            (!digits.is_empty() && rest[digits.len()..].starts_with(end)).then_some(digits)
        };
        if let Some(n) = line.strip_prefix("| ").and_then(|r| numbered(r, " |")) {
            out.push_str(&format!("| {prefix}{n}{}", &line[2 + n.len()..]));
        } else if let Some(n) = line.strip_prefix("### ").and_then(|r| numbered(r, ". ")) {
            out.push_str(&format!("### {prefix}{n}{}", &line[4 + n.len()..]));
        } else {
            out.push_str(line);
        }
    }
    out
}

/// `log` with the title's names and the header rows that say what the operator
/// (or a runbook or inventory file) gave in code spans, as today's binary writes
/// them (these fixtures hold no `|`, backtick or backslash in them).
fn quote_header_text(log: &str) -> String {
    let span = |t: &str| format!("`{t}`");
    let mut out = String::new();
    let mut in_header = true;
    for (n, line) in log.lines().enumerate() {
        if line.starts_with("## ") {
            in_header = false;
        }
        let row = |k: &str| line.strip_prefix(&format!("| {k} | "))?.strip_suffix(" |");
        let title = line.strip_prefix("# opsrun ").filter(|_| n == 0);
        let quoted = if let Some(t) = title {
            let (title, names) = t.split_once(": ").unwrap();
            let (rb, inv) = names.split_once(" on ").unwrap();
            format!("# opsrun {title}: {} on {}", span(rb), span(inv))
        } else if !in_header {
            line.to_string()
        } else if let Some(v) = row("Runbook") {
            let v = match v.split_once(" (version ") {
                Some((n, ver)) => format!(
                    "{} (version {})",
                    span(n),
                    span(ver.strip_suffix(')').unwrap())
                ),
                None => span(v),
            };
            format!("| Runbook | {v} |")
        } else if let Some(v) = row("Inventory") {
            let (n, path) = v.split_once(" (").unwrap();
            format!("| Inventory | {} ({path} |", span(n))
        } else if let Some((k, v)) = ["Environment", "Operator", "Control host", "Ticket"]
            .iter()
            .find_map(|k| Some((k, row(k)?)))
            .filter(|(k, v)| !(**k == "Ticket" && *v == "none"))
        {
            format!("| {k} | {} |", span(v))
        } else {
            line.to_string()
        };
        out.push_str(&quoted);
        out.push('\n');
    }
    out
}

/// `log` with the texts that may quote what a host printed in code spans, as
/// today's binary writes them: the Result row's message, each `Reason:`, the
/// exceptions' messages and the gates' questions (they may carry a captured value).
fn quote_host_text(log: &str) -> String {
    // A table cell's text as the old writer escaped it, back to the text.
    let unescape = |c: &str| {
        c.replace("\\|", "|")
            .replace("\\`", "`")
            .replace("\\\\", "\\")
    };
    let span = |t: &str| {
        let ticks = (1..).find(|n| !t.contains(&"`".repeat(*n))).unwrap();
        let fence = "`".repeat(ticks);
        let pad = if t.starts_with('`') || t.ends_with('`') {
            " "
        } else {
            ""
        };
        format!("{fence}{pad}{t}{pad}{fence}")
    };
    let in_cell = |t: &str| span(t).replace('|', "\\|");
    // The cells of a table row, split at the pipes the old writer did not escape.
    let cells = |row: &str| -> Vec<String> {
        let inner = &row[2..row.len() - 2];
        let mut out = vec![String::new()];
        let mut chars = inner.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    out.last_mut().unwrap().push(c);
                    out.last_mut().unwrap().extend(chars.next());
                }
                '|' => out.push(String::new()),
                c => out.last_mut().unwrap().push(c),
            }
        }
        out.iter().map(|c| c.trim().to_string()).collect()
    };
    let mut section = "";
    let mut out = String::new();
    for line in log.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            section = h;
        }
        let row = line.starts_with("| ") && line.ends_with(" |") && !line.starts_with("|---");
        let quoted = if let Some(m) = line.strip_prefix("| Result | **FAILED: ") {
            let m = m.strip_suffix("** |").unwrap();
            format!("| Result | **FAILED**: {} |", in_cell(&unescape(m)))
        } else if let Some(r) = line.strip_prefix("Reason: ") {
            format!("Reason: {}", span(&unescape(r)))
        } else if row && section == "Exceptions" && !line.starts_with("| type ") {
            let mut c = cells(line);
            c[3] = in_cell(&unescape(&c[3]));
            format!("| {} |", c.join(" | "))
        } else if row && section == "Gates and manual steps" && !line.starts_with("| time ") {
            let mut c = cells(line);
            c[2] = match c[2].strip_prefix("manual: ") {
                Some(m) => format!("manual: {}", in_cell(&unescape(m))),
                None => in_cell(&unescape(&c[2])),
            };
            format!("| {} |", c.join(" | "))
        } else {
            line.to_string()
        };
        out.push_str(&quoted);
        out.push('\n');
    }
    out
}

#[test]
fn rollback_dry_run_previews_from_a_v0_journal() {
    let (test, _runs) = with_runs();
    let want = fs::read_to_string(Path::new(FIXTURES).join("rollback-dry-run.txt")).unwrap();
    test.args(["rollback", SUCCEEDED, "--dry-run"])
        .expect_stdout(want)
        .run();
}

/// A resume of the failed v0 run takes back its params (none of them secret)
/// and starts at the step that failed.
#[test]
fn resume_dry_run_reads_a_v0_journal() {
    let (test, _runs) = with_runs();
    let root = env!("CARGO_MANIFEST_DIR");
    test.current_dir(root)
        .args([
            "run",
            "runbooks/upgrade.yaml",
            "-i",
            "inventories/demo.yaml",
            "--resume",
            FAILED,
            "--dry-run",
        ])
        .stdout_contains("params     package=examples/demo/packages/broken.zip  (-e)\n           sha256=  (-e)\n           sql_done=false  (-e)\n")
        .stdout_contains("[1/12] Check the packages  on: localhost (local)  (skipped: before --start-at)")
        .run();
}

/// `opsrun log RUN` run inside the log directory finds the run by a relative
/// path; its later rollbacks are in that same (current) directory.
#[test]
fn log_inside_the_log_dir_names_later_rollbacks() {
    let (test, runs) = with_runs();
    let _run = test
        .current_dir("runs")
        .args(["log", SUCCEEDED, "--no-sign"])
        .run();
    let rendered = fs::read_to_string(runs.join(SUCCEEDED).join("log.md")).unwrap();
    assert!(
        rendered.contains(&format!("| Rolled back by | `{ROLLBACK}` (succeeded) |\n")),
        "{rendered}"
    );
}

/// So does `opsrun rollback RUN` there: the run was rolled back already.
#[test]
fn rollback_inside_the_log_dir_sees_earlier_rollbacks() {
    let (test, _runs) = with_runs();
    test.current_dir("runs")
        .args(["rollback", SUCCEEDED, "--dry-run"])
        .stdout_contains(format!(
            "Run `{SUCCEEDED}` was already rolled back (by run {ROLLBACK})."
        ))
        .run();
}
