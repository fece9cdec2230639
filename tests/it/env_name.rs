//! The environment is the inventory's own name (issue 12, point 4): `-i FILE`
//! with another `--env` is refused, never a rename, and the typed gate asks for
//! the inventory's name, which an explicit `--env` must match to answer it.

use crate::support::cli::Test;

/// `inventories/prodlike.yaml` (`confirm: typed`, no `name:`: its name is the
/// file stem) with one local host, named per test (host locks are machine-wide),
/// and a runbook that leaves a mark when it runs.
fn site(test: &str) -> Test {
    let host = format!("env{}{test}", std::process::id());
    Test::new()
        .write(
            "inventories/prodlike.yaml",
            format!("confirm: typed\ngroups:\n  local:\n    hosts:\n      {host}: {{ connection: local }}\n"),
        )
        .write(
            "runbooks/mark.yaml",
            "name: mark\nhosts: local\nsteps:\n  - name: mark\n    run: touch ran\n",
        )
}

#[test]
fn another_env_with_an_inventory_file_is_refused_and_runs_nothing() {
    let out = site("a")
        .args([
            "run",
            "mark",
            "-i",
            "inventories/prodlike.yaml",
            "--env",
            "whatever",
            "--yes",
        ])
        .expect_status(2)
        .run();
    assert!(
        out.stderr.contains(
            "error: --env `whatever` does not name inventory `inventories/prodlike.yaml`, whose name is `prodlike`"
        ),
        "{}",
        out.stderr
    );
    assert!(!out.path().join("ran").exists(), "the step ran");
    assert!(!out.path().join("runs").exists(), "a run was recorded");
}

#[test]
fn the_matching_env_with_yes_answers_the_typed_gate_and_is_recorded() {
    let out = site("b")
        .args([
            "run",
            "mark",
            "-i",
            "inventories/prodlike.yaml",
            "--env",
            "prodlike",
            "--yes",
        ])
        .expect_status(0)
        .run();
    assert!(out.path().join("ran").exists(), "the step did not run");
    assert_eq!(out.events("run_started")[0]["inventory"], "prodlike");
    let gate = &out.events("gate")[0];
    assert_eq!(gate["answer"], "--yes --env prodlike", "{gate}");
    assert!(
        out.log_md().contains("| Environment | `prodlike` |"),
        "{}",
        out.log_md()
    );
}

/// `--env` selects a file; the run is named by the inventory's `name:`, and the
/// typed gate wants that name: the file's stem given as `--env` does not answer it.
/// `inventories/whatever.yaml` named `prodlike`: `--env whatever` would run an
/// inventory that records and typed gates call `prodlike`, and `--env prodlike`
/// could not find it. Such a file is refused, saying how to fix it.
#[test]
fn an_inventory_file_not_named_after_its_inventory_is_refused() {
    let out = site("c")
        .write(
            "inventories/whatever.yaml",
            format!(
                "name: prodlike-east\nconfirm: typed\ngroups:\n  local:\n    hosts:\n      env{}c: {{ connection: local }}\n",
                std::process::id()
            ),
        )
        .args(["run", "mark", "--env", "whatever", "--yes"])
        .expect_status(2)
        .run();
    assert!(
        out.stderr.contains("error: inventory `inventories/whatever.yaml` is named `prodlike-east`: under inventories/ an inventory's file is named after it"),
        "{}",
        out.stderr
    );
    assert!(!out.path().join("ran").exists(), "the step ran");
}
