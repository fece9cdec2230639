//! Which fields are templates, run for real on `connection: local` hosts.
use crate::support::cli::Test;

const INVENTORY: &str = "groups:\n  app:\n    hosts:\n      a1: { connection: local }\n";

#[test]
fn expect_patterns_are_templates_rendered_with_the_captures_of_the_run() {
    let runbook = "name: pid\nhosts: app\nsteps:\n\
        \x20 - name: Old pid\n    run: echo 41\n    capture: old_pid\n\
        \x20 - name: New pid\n    run: echo pid 42\n    expect: { stdout: \"^pid [0-9]+\", stdout_not: \"(?m)pid {{ old_pid }}$\" }\n\
        \x20 - name: Same pid\n    run: echo pid 41\n    expect: { stdout_not: \"(?m)pid {{ old_pid }}$\" }\n";
    let out = Test::new()
        .write("runbooks/pid.yaml", runbook)
        .write("inventories/lab.yaml", INVENTORY)
        .args(["pid", "--env", "lab", "--yes", "--no-sign"])
        .expect_status(1)
        .stderr_contains("step `Same pid` failed on a1 (stdout matches /(?m)pid 41$/)")
        .run();
    assert!(
        !out.stderr.contains("step `New pid` failed"),
        "{}",
        out.stderr
    );
    let dry = Test::new()
        .write("runbooks/pid.yaml", runbook)
        .write("inventories/lab.yaml", INVENTORY)
        .args(["pid", "--env", "lab", "--dry-run"])
        .expect_status(0)
        .run();
    assert!(
        dry.stdout
            .contains("      expect stdout not matching: /(?m)pid <captured: old_pid>$/\n"),
        "{}",
        dry.stdout
    );
}

/// A captured `v1.2|` made `stdout: "installed {{ want }}"` an alternation that
/// matched anything; `| regex_escape` matches the value as text.
#[test]
fn regex_escape_matches_a_captured_value_as_text_in_expect() {
    let runbook = "name: ver\nhosts: app\nsteps:\n\
        \x20 - name: Wanted\n    run: echo 'v1.2|'\n    capture: want\n\
        \x20 - name: Installed\n    run: echo installed v0.9\n    expect: { stdout: \"installed {{ want | regex_escape }}\" }\n";
    let out = Test::new()
        .write("runbooks/ver.yaml", runbook)
        .write("inventories/lab.yaml", INVENTORY)
        .args(["ver", "--env", "lab", "--yes", "--no-sign"])
        .expect_status(1)
        .stderr_contains(
            r"step `Installed` failed on a1 (stdout does not match /installed v1\.2\|/)",
        )
        .run();
    let dry = Test::in_dir(out.path())
        .args(["ver", "--env", "lab", "--dry-run"])
        .expect_status(0)
        .run();
    assert!(
        dry.stdout.contains(
            "      expect stdout matching: /installed <captured: want | regex_escape>/\n"
        ),
        "{}",
        dry.stdout
    );
}

/// A capture of two lines made the README's `(?m)^pid {{ old }}$` match neither
/// line, so `stdout_not` passed while the pid still ran: such a value is refused.
#[test]
fn regex_escape_refuses_a_value_of_more_than_one_line() {
    let runbook = "name: pid\nhosts: app\nsteps:\n\
        \x20 - name: Old pid\n    run: printf '41\\n42\\n'\n    capture: old\n\
        \x20 - name: Same pid\n    run: echo pid 41\n    expect: { stdout_not: \"(?m)^pid {{ old | regex_escape }}$\" }\n";
    let out = Test::new()
        .write("runbooks/pid.yaml", runbook)
        .write("inventories/lab.yaml", INVENTORY)
        .args(["pid", "--env", "lab", "--yes", "--no-sign"])
        .expect_status(1)
        .stderr_contains("`regex_escape` was given a value of more than one line")
        .run();
    assert!(!out.stderr.contains("succeeded"), "{}", out.stderr);
}
