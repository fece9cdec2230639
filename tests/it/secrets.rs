//! Secrets stay out of the record even when a host hands them back: in captured
//! values, through template filters, or by posing as a capture placeholder.

use crate::support::cli::Test;
use std::path::Path;

const SECRET: &str = "Sup3r-s3cret-pw";

const INVENTORY: &str = "groups:\n  app:\n    hosts:\n      a1: { connection: local }\n";

fn everything_under(dir: &Path) -> String {
    let mut all = String::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let p = entry.path();
        if p.is_dir() {
            all.push_str(&everything_under(&p));
        } else {
            all.push_str(&String::from_utf8_lossy(&std::fs::read(&p).unwrap()));
        }
    }
    all
}

#[test]
fn a_secret_echoed_into_a_capture_is_masked_in_the_record() {
    let runbook = "name: leak\nhosts: app\nparams:\n  pw: { secret: true }\nsteps:\n\
        \x20 - name: Read it back\n    run: \"printf 'pw=%s' \\\"$(cat)\\\"\"\n    stdin: \"{{ pw }}\"\n    capture: got\n\
        \x20 - name: Use the capture\n    run: echo captured {{ got | quote }}\n";
    let out = Test::new()
        .write("runbooks/leak.yaml", runbook)
        .write("inventories/lab.yaml", INVENTORY)
        .args(["leak", "--env", "lab", "--yes", "--no-sign", "-v"])
        .env("OPSRUN_SECRET_PW", SECRET)
        .expect_status(0)
        .run();
    let record = everything_under(&out.path().join("runs"));
    for text in [&record, &out.stdout, &out.stderr] {
        assert!(
            !text.contains(SECRET),
            "secret in the record or terminal:\n{text}"
        );
    }
    assert!(record.contains("captured pw=******"), "{record}");
}

#[test]
fn a_value_posing_as_a_placeholder_is_still_quoted() {
    let runbook = "name: inj\nhosts: app\nparams:\n  label: {}\nsteps:\n\
        \x20 - name: Echo\n    run: echo {{ label | quote }}\n";
    let marker = "\u{1}";
    let label = format!("{marker}/dev/null{marker} ; touch pwned ; echo {marker}x{marker}");
    let out = Test::new()
        .write("runbooks/inj.yaml", runbook)
        .write("inventories/lab.yaml", INVENTORY)
        .args(["inj", "--env", "lab", "--yes", "--no-sign", "-e"])
        .arg(format!("label={label}"))
        .expect_status(0)
        .run();
    assert!(
        !out.path().join("pwned").exists(),
        "the value escaped its quotes"
    );
}

#[test]
fn a_secret_in_env_reaches_the_command_on_stdin_never_on_its_command_line() {
    let runbook = "name: envsecret\nhosts: app\nparams:\n  pw: { secret: true }\nsteps:\n\
        \x20 - name: Run with it\n    env: { PW: \"{{ pw }}\", MODE: plain }\n    run: printf '%s' \"$PW\" > run.txt\n    check: test \"$(cat run.txt)\" = \"$PW\"\n\
        \x20 - name: Script with it\n    env: { PW: \"{{ pw }}\" }\n    script: |\n      printf '%s' \"$PW\" > script.txt\n";
    let out = Test::new()
        .write("runbooks/envsecret.yaml", runbook)
        .write("inventories/lab.yaml", INVENTORY)
        .args(["envsecret", "--env", "lab", "--yes", "--no-sign"])
        .env("OPSRUN_SECRET_PW", SECRET)
        .expect_status(0)
        .run();
    assert_eq!(out.read("run.txt"), SECRET);
    assert_eq!(out.read("script.txt"), SECRET);
    let journal = out.read(
        std::fs::read_dir(out.path().join("runs"))
            .unwrap()
            .flatten()
            .next()
            .unwrap()
            .path()
            .join("journal.jsonl"),
    );
    assert!(
        journal.contains("IFS= read -r PW || exit 1; export PW;"),
        "{journal}"
    );
    assert!(journal.contains("export MODE=plain"), "{journal}");
    assert!(!journal.contains(SECRET));
    assert!(!everything_under(&out.path().join("runs")).contains(SECRET));
}

/// Lines are cut for the failure message after masking: a secret that crosses the
/// cut must not leave its first characters behind.
#[test]
fn a_secret_crossing_the_failure_line_cut_is_masked_whole() {
    let runbook = "name: cut1\nhosts: app\nparams:\n  tok: { secret: true }\nsteps:\n\
        \x20 - name: Log in\n    stdin: \"{{ tok }}\"\n    run: \"read -r t || true; printf 'error: login failed %0120d password=%s rest\\\\n' 0 \\\"$t\\\" >&2; exit 1\"\n";
    let out = Test::new()
        .write("runbooks/cut1.yaml", runbook)
        .write("inventories/lab.yaml", INVENTORY)
        .args(["cut1", "--env", "lab", "--yes", "--no-sign"])
        .env("OPSRUN_SECRET_TOK", "hunter22secret")
        .expect_status(1)
        .run();
    let record = everything_under(&out.path().join("runs"));
    for text in [&record, &out.stdout, &out.stderr] {
        assert!(
            !text.contains("hunter"),
            "part of the secret leaked:\n{text}"
        );
    }
    let line = format!("exit 1: error: login failed {:0120} password=******", 0);
    assert!(out.stderr.contains(&line), "{}", out.stderr);
}

/// `-v` streams output line by line, and lets a very long line through in pieces:
/// a piece must never end inside a secret.
#[test]
fn a_secret_split_across_streamed_pieces_is_masked() {
    let runbook = "name: long\nhosts: app\nparams:\n  tok: { secret: true }\nsteps:\n\
        \x20 - name: Long line\n    stdin: \"{{ tok }}\"\n    run: \"read -r t || true; printf '%065530d' 0; printf '%s' \\\"$t\\\" | head -c 9; sleep 1; printf '%s' \\\"$t\\\" | tail -c +10; echo\"\n";
    let out = Test::new()
        .write("runbooks/long.yaml", runbook)
        .write("inventories/lab.yaml", INVENTORY)
        .args(["long", "--env", "lab", "--yes", "--no-sign", "-v"])
        .env("OPSRUN_SECRET_TOK", "hunter22secret")
        .expect_status(0)
        .run();
    assert!(!out.stderr.contains("hunter"), "part of the secret leaked");
    assert!(
        out.stderr.contains("a1 | ******\n"),
        "the masked secret is shown"
    );
}
