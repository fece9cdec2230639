//! Truthful hosts (issue 12, point 3): the login user, HostName, port and jump
//! hosts that the dry-run, the journal and the log name are those ssh uses, as
//! `ssh -G` resolves them from the inventory's `config_file`, against real sshd.

use crate::support::{
    fleet::{yaml_str, SshFleet, TEST_USER},
    lab::Lab,
};

const WHOAMI: &str = "name: whoami\nhosts: app\nsteps:\n  - name: who\n    run: id -un\n";

/// A lab whose ssh_config names the hosts by alias only: `app1` is fleet host 0,
/// `app2` (with `jump`) is fleet host 1 reached through `bastion` (host 0), both
/// with `User` set there; the inventory sets no user, address or port.
fn lab(fleet: &SshFleet, hosts: &[&str]) -> Lab {
    let lab = Lab::new();
    let alias = |name: &str, i: usize| {
        format!(
            "Host {name}\n  HostName {}\n  Port {}\n  User {TEST_USER}\n",
            fleet.address(i),
            fleet.port(i)
        )
    };
    let mut config = alias("app1", 0) + &alias("bastion", 0);
    if fleet.len() > 1 {
        config += &alias("app2", 1).replace("Host app2\n", "Host app2\n  ProxyJump bastion\n");
    }
    // Keys, known_hosts and strict checking for every host, after the aliases
    // (ssh keeps the first value it reads).
    config += &format!("Match all\n  Include {}\n", fleet.ssh_config().display());
    let config = lab.write("ssh_config", &config);
    let mut inv = format!(
        "name: lab\nssh:\n  config_file: {}\n  known_hosts_file: {}\ngroups:\n  app:\n    hosts:\n",
        yaml_str(config.to_string_lossy()),
        yaml_str(fleet.known_hosts().to_string_lossy()),
    );
    for h in hosts {
        inv += &format!("      {h}: {{}}\n");
    }
    lab.write("inventories/lab.yaml", &inv);
    lab.write("runbooks/whoami.yaml", WHOAMI);
    lab
}

#[test]
fn the_ssh_config_user_is_the_login_in_dry_run_journal_and_log() {
    let fleet = SshFleet::start(1);
    let lab = lab(&fleet, &["app1"]);
    let port = fleet.port(0);

    let dry = lab.test(&["whoami", "--env", "lab", "--dry-run"]).run();
    assert!(
        dry.stdout.contains(&format!("[{TEST_USER}@app1]# id -un")),
        "{}",
        dry.stdout
    );
    assert!(!dry.stdout.contains("[root@app1]"), "{}", dry.stdout);
    assert!(
        dry.stdout
            .contains(&format!("hosts      app1 ({}:{port})", fleet.address(0))),
        "{}",
        dry.stdout
    );

    let inventory = lab.test(&["inventory", "--env", "lab"]).run();
    assert!(
        inventory.stdout.contains(&format!(
            "app1  (ssh {TEST_USER}@{}:{port})",
            fleet.address(0)
        )),
        "{}",
        inventory.stdout
    );

    let run = lab.run(&["whoami", "--env", "lab", "--yes"], &[], None);
    run.expect_code(0);
    // The host's own answer, and its sshd's, agree with what opsrun said.
    assert_eq!(run.saved_stdout("who", "app1").trim(), TEST_USER);
    assert!(
        fleet
            .sshd_log(0)
            .contains(&format!("Accepted publickey for {TEST_USER}")),
        "{}",
        fleet.sshd_log(0)
    );
    let started = &run.events("run_started")[0];
    let host = &started["hosts"][0];
    assert_eq!(host["login"], format!("{TEST_USER}@app1"), "{host}");
    assert_eq!(host["ssh"]["user"], TEST_USER, "{host}");
    assert_eq!(host["ssh"]["hostname"], fleet.address(0), "{host}");
    assert_eq!(host["ssh"]["port"], port, "{host}");
    assert_eq!(
        run.target("who", "app1")["login"],
        format!("{TEST_USER}@app1")
    );
    let log = run.log_md();
    assert!(
        log.contains(&format!(
            "| app1 | app1 | {TEST_USER}@app1 | {} | {port} | — | ssh |",
            fleet.address(0)
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!("[{TEST_USER}@app1]# id -un")),
        "{log}"
    );
}

#[test]
fn a_proxyjump_of_the_ssh_config_is_shown_in_the_hosts_table() {
    let fleet = SshFleet::start(2);
    let lab = lab(&fleet, &["app2"]);
    let dry = lab.test(&["whoami", "--env", "lab", "--dry-run"]).run();
    assert!(
        dry.stdout.contains(&format!(
            "hosts      app2 ({}:{} via bastion)",
            fleet.address(1),
            fleet.port(1)
        )),
        "{}",
        dry.stdout
    );
    let inventory = lab.test(&["inventory", "--env", "lab"]).run();
    assert!(
        inventory.stdout.contains(&format!(
            "app2  (ssh {TEST_USER}@{}:{} via bastion)",
            fleet.address(1),
            fleet.port(1)
        )),
        "{}",
        inventory.stdout
    );
    let run = lab.run(&["whoami", "--env", "lab", "--yes"], &[], None);
    run.expect_code(0);
    assert_eq!(run.saved_stdout("who", "app2").trim(), TEST_USER);
    assert_eq!(
        run.events("run_started")[0]["hosts"][0]["ssh"]["jump"][0],
        "bastion"
    );
    let log = run.log_md();
    assert!(
        log.contains(&format!(
            "| app2 | app2 | {TEST_USER}@app2 | {} | {} | bastion | ssh |",
            fleet.address(1),
            fleet.port(1)
        )),
        "{log}"
    );
}

#[test]
fn an_ssh_config_ssh_cannot_read_is_an_error_naming_the_host() {
    let lab = Lab::new();
    lab.write(
        "inventories/lab.yaml",
        "name: lab\nssh:\n  config_file: ./no-such-ssh_config\ngroups:\n  app:\n    hosts:\n      app1: {}\n",
    );
    lab.write("runbooks/whoami.yaml", WHOAMI);
    let out = lab
        .test(&["whoami", "--env", "lab", "--dry-run"])
        .expect_status(2)
        .run();
    assert!(
        out.stderr
            .contains("error: host app1: cannot tell how ssh reaches it: `ssh -G` failed:"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("no-such-ssh_config"), "{}", out.stderr);
}
