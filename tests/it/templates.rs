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
