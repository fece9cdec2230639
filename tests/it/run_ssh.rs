//! Whole runs of the real `opsrun` binary against real OpenSSH servers on loopback
//! (tests/it/support/fleet.rs): the CLI, gates, engine, journal and Markdown log together.
//! The cross-host order of the Dameng stop (watchers, primary, standby) is tested
//! with the shipped runbook in library_dameng.rs; `as:` here uses the same `dmdba`
//! account and sudo rule (tests/it/support/sim.rs).
//!
//! Every test writes an operator's directory (runbooks/, inventories/) into a temp
//! dir, runs `opsrun` there with NO_COLOR=1 and checks what an operator would: the
//! exit code, the last stdout line (the log's path), the journal, the log, and the
//! hosts themselves.

use crate::support::{
    cli::Run,
    fleet::{app_group, pids_with, ssh_inventory, yaml_str, SshFleet},
    lab::Lab,
    pty::{pty_run, run_on_pty, run_on_pty_sized},
    sim::{ensure_dm_user, DM_USER},
};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------
// cwd, env, stdin and secrets

#[test]
fn cwd_env_and_stdin_reach_the_command_and_a_secret_never_shows() {
    let fleet = SshFleet::start(1);
    let secret = "S3cr3t-T0ken-4f9a";
    let lab = Lab::new();
    lab.write(
        "inventories/lab.yaml",
        &ssh_inventory(&fleet, "none", &app_group(&fleet)),
    );
    lab.write(
        "runbooks/context.yaml",
        r#"name: context
hosts: app
params:
  api_token: { secret: true, required: true }
steps:
  - name: Show the context
    cwd: "{{ work }}"
    env: { GREETING: "hello 'world' $HOME;`id`" }
    stdin: |
      first line
      token={{ api_token }}
    run: |
      printf 'pwd=%s\ngreeting=%s\n' "$(pwd)" "$GREETING"
      sed 's/^/stdin: /'

  - name: Keep the token on the host
    stdin: "{{ api_token }}"
    run: umask 077 && cat > {{ work }}/token

  - name: Echo the token in two writes
    stdin: "{{ api_token }}"
    run: |
      t=$(cat)
      printf '%s' "$t" | head -c 8
      sleep 0.5
      printf '%s\n' "$t" | tail -c +9

  - name: Fail with the token on stderr
    stdin: "{{ api_token }}"
    run: echo "cannot use $(cat)" >&2; exit 4

  - name: Never reached
    run: touch {{ work }}/never
"#,
    );
    let run = lab.run(
        &["context", "--env", "lab", "--yes", "-v"],
        &[("OPSRUN_SECRET_API_TOKEN", secret)],
        None,
    );
    run.expect_code(1);
    let (outcome, message) = run.outcome();
    assert_eq!(outcome, "failed");
    assert!(
        message.contains("Fail with the token on stderr"),
        "{message}"
    );

    let work = fleet.work_dir(0);
    let shown = run.saved_stdout("Show the context", "web1");
    assert_eq!(
        shown,
        format!(
            "pwd={}\ngreeting=hello 'world' $HOME;`id`\nstdin: first line\nstdin: token=******\n",
            work.display()
        )
    );
    // The real value reached the host, byte for byte.
    assert_eq!(fs::read_to_string(work.join("token")).unwrap(), secret);
    assert_eq!(
        run.target("Fail with the token on stderr", "web1")["exit_code"],
        4
    );
    assert!(!work.join("never").exists());

    // Nowhere in the terminal, the journal, the log or the saved outputs; not even
    // in pieces when the command writes it in two chunks.
    let everything = run.everything();
    assert!(!everything.contains(secret), "secret leaked");
    let (head, tail) = secret.split_at(8);
    assert!(
        !run.stderr.contains(head) && !run.stderr.contains(tail),
        "secret leaked in pieces on the terminal:\n{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("web1 | stdin: token=******"),
        "-v shows remote output, masked:\n{}",
        run.stderr
    );
    assert!(run.stderr.contains("cannot use ******"), "{}", run.stderr);
}

#[test]
fn as_switches_to_a_second_user_with_sudo_and_captures_drive_when() {
    ensure_dm_user();
    let uid: u32 = String::from_utf8(
        Command::new("id")
            .args(["-u", DM_USER])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .parse()
    .unwrap();
    let fleet = SshFleet::start(1);
    let shared = fleet.root().join("shared");
    fs::create_dir(&shared).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).unwrap();
    let lab = Lab::new();
    lab.write(
        "inventories/lab.yaml",
        &ssh_inventory(&fleet, "none", &app_group(&fleet)),
    );
    lab.write(
        "runbooks/whoami.yaml",
        &format!(
            r#"name: whoami
hosts: app
steps:
  - name: Who am I
    as: {DM_USER}
    cwd: {shared}
    env: {{ PROBE: "from opsrun" }}
    stdin: piped through sudo
    run: |
      printf 'user=%s home=%s pwd=%s probe=%s\n' "$(id -un)" "$HOME" "$(pwd)" "$PROBE"
      cat > as-probe.txt
    capture: {{ name: who, regex: 'user=(\S+)' }}

  - name: Use the capture
    when: who == '{DM_USER}'
    run: echo "{{{{ who }}}}" > {{{{ work }}}}/who.txt

  - name: Skipped by the capture
    when: who == 'root'
    run: touch {{{{ work }}}}/never
"#,
            shared = yaml_str(shared.to_string_lossy()),
        ),
    );
    let run = lab.run(&["whoami", "--env", "lab", "--yes"], &[], None);
    run.expect_code(0);

    let home = String::from_utf8(
        Command::new("sh")
            .args(["-c", &format!("getent passwd {DM_USER} | cut -d: -f6")])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert_eq!(
        run.saved_stdout("Who am I", "web1"),
        format!(
            "user={DM_USER} home={} pwd={} probe=from opsrun\n",
            home.trim(),
            shared.display()
        )
    );
    let probe = shared.join("as-probe.txt");
    assert_eq!(fs::read_to_string(&probe).unwrap(), "piped through sudo");
    assert_eq!(
        fs::metadata(&probe).unwrap().uid(),
        uid,
        "file owned by the second user"
    );
    let work = fleet.work_dir(0);
    assert_eq!(
        fs::read_to_string(work.join("who.txt")).unwrap().trim(),
        DM_USER
    );
    assert_eq!(run.status("Skipped by the capture", "web1"), "skipped");
    assert!(!work.join("never").exists());
    // The log shows the command as the operator would type it, with the sudo wrapper.
    assert!(run.log_md().contains(&format!("sudo -n -H -u {DM_USER}")));
}

// ---------------------------------------------------------------------------------
// Timeouts

#[test]
fn hung_command_is_killed_at_its_timeout_and_gone_from_the_host() {
    let fleet = SshFleet::start(1);
    let lab = Lab::new();
    lab.write(
        "inventories/lab.yaml",
        &ssh_inventory(&fleet, "none", &app_group(&fleet)),
    );
    // Unusual sleep lengths mark this test's processes in /proc; one runs in the
    // background, to show the whole process group dies, not just the shell.
    let base = 7_000_000 + std::process::id() % 1_000_000;
    let (bg, fg) = (format!("sleep {}1", base), format!("sleep {}2", base));
    lab.write(
        "runbooks/hang.yaml",
        &format!(
            "name: hang\nhosts: app\nsteps:\n\
             \x20 - name: Hang\n    run: {bg} & {fg}; echo finished\n    timeout: 2s\n\
             \x20 - name: After\n    run: touch {{{{ work }}}}/after\n"
        ),
    );
    let started = Instant::now();
    let mut child = lab
        .command(&["hang", "--env", "lab", "--yes"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // It really ran on the host before the deadline...
    let mut seen = false;
    while started.elapsed() < Duration::from_secs(15) && child.try_wait().unwrap().is_none() {
        if !pids_with(&fg).is_empty() && !pids_with(&bg).is_empty() {
            seen = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let took = started.elapsed();
    let run = Run::from_output(out, lab.path()).expect_log();
    assert!(seen, "the hanging command never showed up:\n{}", run.stderr);
    run.expect_code(1);
    // ...and the control side did not wait for the 20 s grace.
    assert!(took < Duration::from_secs(15), "took {took:?}");
    let t = run.target("Hang", "web1");
    assert_eq!(t["status"], "timed_out", "{t}");
    assert!(
        t["reason"].as_str().unwrap().contains("timed out after 2s"),
        "{t}"
    );
    assert!(t["millis"].as_u64().unwrap() >= 2000, "{t}");
    assert!(!fleet.work_dir(0).join("after").exists());
    // ...and after the run nothing of it is left on the host.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left: Vec<u32> = pids_with(&fg).into_iter().chain(pids_with(&bg)).collect();
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "processes survived the timeout: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(run.log_md().contains("timed out after 2s"));
}

// ---------------------------------------------------------------------------------
// Host keys

const TOUCH: &str =
    "name: touch\nhosts: app\nsteps:\n  - name: Touch\n    run: touch {{ work }}/ran\n";

fn assert_nothing_ran(fleet: &SshFleet) {
    for i in 0..fleet.len() {
        assert!(
            !fleet.work_dir(i).join("ran").exists(),
            "a step ran on host {i} although a host was refused"
        );
    }
}

#[test]
fn unknown_host_key_is_refused_before_anything_runs() {
    let fleet = SshFleet::start(2);
    fleet.forget_host_key(1);
    let known_before = fs::read(fleet.known_hosts()).unwrap();
    let lab = Lab::new();
    lab.write(
        "inventories/lab.yaml",
        &ssh_inventory(&fleet, "none", &app_group(&fleet)),
    );
    lab.write("runbooks/touch.yaml", TOUCH);
    let run = lab.run(&["touch", "--env", "lab", "--yes"], &[], None);
    run.expect_code(1);
    let keyscan = format!("ssh-keyscan -p {} {}", fleet.port(1), fleet.address(1));
    assert!(
        run.stderr.contains("web2") && run.stderr.contains(&keyscan),
        "names the host and how to add its key:\n{}",
        run.stderr
    );
    let failed = run.events("connect_failed");
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["host"], "web2");
    let (outcome, message) = run.outcome();
    assert_eq!(outcome, "failed");
    assert!(message.contains("nothing was changed"), "{message}");
    assert!(run.events("target_started").is_empty());
    assert_nothing_ran(&fleet);
    assert_eq!(
        fs::read(fleet.known_hosts()).unwrap(),
        known_before,
        "the unknown key was added to known_hosts"
    );
}

#[test]
fn changed_host_key_is_refused() {
    let mut fleet = SshFleet::start(1);
    fleet.regenerate_host_key(0);
    let known_before = fs::read(fleet.known_hosts()).unwrap();
    let lab = Lab::new();
    lab.write(
        "inventories/lab.yaml",
        &ssh_inventory(&fleet, "none", &app_group(&fleet)),
    );
    lab.write("runbooks/touch.yaml", TOUCH);
    let run = lab.run(&["touch", "--env", "lab", "--yes"], &[], None);
    run.expect_code(1);
    assert!(
        run.stderr.contains("web1") && run.stderr.contains("ssh-keygen -R"),
        "names the host and how to remove the old key:\n{}",
        run.stderr
    );
    assert_eq!(run.events("connect_failed").len(), 1);
    assert_eq!(run.outcome().0, "failed");
    assert_nothing_ran(&fleet);
    assert_eq!(fs::read(fleet.known_hosts()).unwrap(), known_before);
}

// ---------------------------------------------------------------------------------
// Gates

const GATED: &str = r#"name: gated
hosts: app
steps:
  - name: Before the gate
    run: touch {{ work }}/before
  - name: Behind the gate
    confirm: "Touch the second file on {{ env }}?"
    run: touch {{ work }}/behind
"#;

fn gate_lab(fleet: &SshFleet, confirm: &str) -> Lab {
    let lab = Lab::new();
    lab.write(
        "inventories/lab.yaml",
        &ssh_inventory(fleet, confirm, &app_group(fleet)),
    );
    lab.write("runbooks/gated.yaml", GATED);
    lab
}

fn gates(run: &Run) -> Vec<(String, bool)> {
    run.events("gate")
        .iter()
        .map(|g| {
            (
                g["answer"].as_str().unwrap().to_string(),
                g["confirmed"].as_bool().unwrap(),
            )
        })
        .collect()
}

/// A long step's latest line of output, shown next to its spinner on a terminal.
const CHATTY: &str = r#"name: chatty
hosts: app
steps:
  - name: Long step
    run: |
      echo 'first line'
      sleep 1
      printf 'step 2 of 3: \033[31mred\033[0m\t%s\n\n' "$(printf '宽%.0s' $(seq 40))"
      sleep 2
      printf 'almost\rdone\n'
      sleep 1
"#;

#[test]
fn a_running_step_shows_its_last_output_line_escaped_and_cut_to_the_terminal() {
    let fleet = SshFleet::start(1);
    let lab = Lab::new();
    lab.write(
        "inventories/lab.yaml",
        &ssh_inventory(&fleet, "none", &app_group(&fleet)),
    );
    lab.write("runbooks/chatty.yaml", CHATTY);
    let (code, screen) = run_on_pty_sized(lab.command(&["chatty", "--env", "lab"]), 60, &[]);
    pty_run(code, &screen, lab.path()).expect_code(0);
    // What the terminal drew, line by line, without the live view's cursor movements.
    let drawn: Vec<String> = screen
        .split(['\r', '\n'])
        .map(|l| console::strip_ansi_codes(l).into_owned())
        .collect();
    let beside = |text: &str| {
        drawn
            .iter()
            .find(|l| l.contains(" web1 ") && l.contains(text))
            .unwrap_or_else(|| panic!("no spinner line with {text:?}:\n{screen}"))
            .clone()
    };
    assert!(beside("first line").trim_end().ends_with("first line"));
    // Escaped, tab made a space, cut by display width (宽 takes two columns).
    let line = beside("step 2 of 3: \\x1b[31mred\\x1b[0m 宽宽");
    let width = console::measure_text_width(&line);
    assert!((59..=60).contains(&width), "{width} columns: {line:?}");
    assert!(!line.contains(&"宽".repeat(40)), "{line:?}");
    assert!(
        !screen.contains("\x1b[31m"),
        "a host drove the terminal:\n{screen}"
    );
    // The text after a carriage return is what the host's line would show.
    assert!(beside("done").trim_end().ends_with("done"), "{screen}");
    assert!(!drawn.iter().any(|l| l.contains("almost")), "{screen}");

    // Not a terminal: output stays hidden, as before.
    let piped = lab.run(&["chatty", "--env", "lab"], &[], None);
    piped.expect_code(0);
    assert!(!piped.stderr.contains("first line"), "{}", piped.stderr);
}

#[test]
fn gate_yes_flag_answers_every_gate() {
    let fleet = SshFleet::start(1);
    let lab = gate_lab(&fleet, "yes");
    let run = lab.run(&["gated", "--env", "lab", "--yes"], &[], None);
    run.expect_code(0);
    assert_eq!(
        gates(&run),
        vec![("--yes".to_string(), true), ("--yes".to_string(), true)]
    );
    assert!(fleet.work_dir(0).join("before").exists());
    assert!(fleet.work_dir(0).join("behind").exists());
}

#[test]
fn gate_without_a_terminal_refuses_at_once_and_never_reads_the_pipe() {
    let fleet = SshFleet::start(1);
    let lab = gate_lab(&fleet, "yes");
    let started = Instant::now();
    // A "y" waiting on a pipe must not count as an answer.
    let run = lab.run(&["gated", "--env", "lab"], &[], Some("y\ny\n"));
    run.expect_code(3);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(run.stderr.contains("not a terminal"), "{}", run.stderr);
    assert_eq!(run.outcome().0, "not_confirmed");
    let g = gates(&run);
    assert_eq!(g.len(), 1);
    assert!(!g[0].1);
    assert!(
        run.events("connected").is_empty(),
        "connected before the start gate"
    );
    assert!(!fleet.work_dir(0).join("before").exists());
}

#[test]
fn gate_on_a_terminal_takes_yes_and_no() {
    let fleet = SshFleet::start(1);
    let work = fleet.work_dir(0).to_path_buf();

    // Start gate "y", step gate "n": stops at the step, exit 3.
    let lab = gate_lab(&fleet, "yes");
    let (code, screen) = run_on_pty(
        lab.command(&["gated", "--env", "lab"]),
        &[("[y/N]", "y"), ("[y/N]", "n")],
    );
    let run = pty_run(code, &screen, lab.path());
    run.expect_code(3);
    assert!(
        screen.contains("Touch the second file on lab? (on web1) [y/N]"),
        "{screen}"
    );
    assert_eq!(
        gates(&run),
        vec![("y".to_string(), true), ("n".to_string(), false)]
    );
    assert_eq!(run.outcome().0, "not_confirmed");
    assert!(work.join("before").exists());
    assert!(!work.join("behind").exists());
    fs::remove_file(work.join("before")).unwrap();

    // Typed start gate: the environment's name, then "yes" at the step.
    let lab = gate_lab(&fleet, "typed");
    let (code, screen) = run_on_pty(
        lab.command(&["gated", "--env", "lab"]),
        &[("Type the environment name", "lab"), ("[y/N]", "yes")],
    );
    let run = pty_run(code, &screen, lab.path());
    run.expect_code(0);
    assert_eq!(
        gates(&run),
        vec![("lab".to_string(), true), ("yes".to_string(), true)]
    );
    assert!(work.join("before").exists());
    assert!(work.join("behind").exists());

    // A wrong name at the typed gate stops everything.
    fs::remove_file(work.join("before")).unwrap();
    let (code, screen) = run_on_pty(
        lab.command(&["gated", "--env", "lab"]),
        &[("Type the environment name", "prod")],
    );
    pty_run(code, &screen, lab.path()).expect_code(3);
    assert!(!work.join("before").exists());
}

// ---------------------------------------------------------------------------------
// An upgrade with backup and rollback on the local demo inventory

const UPGRADE: &str = r#"name: upgrade
description: Upgrade the demo app with backup and rollback
hosts: app
params:
  package: { required: true, description: "app tarball on this machine" }
  version: { required: true, description: "version the package must install" }
vars:
  backup: "{{ root }}/backup-app-{{ run.stamp }}.tar.gz"
steps:
  - name: Stop application
    run: rm -f {{ root }}/app.running
    rollback: touch {{ root }}/app.running
    service: { name: app, state: stopped }
  - name: Back up app
    run: tar czf {{ backup | quote }} --exclude=app/log -C {{ root | quote }} app
    check: gzip -t {{ backup | quote }}
  - name: Upload package
    upload: { src: "{{ package }}", dest: "{{ root }}/", mode: "0644" }
  - name: Apply package
    confirm: "Unpack {{ package | basename }} over the live tree?"
    run: tar xzf {{ root }}/{{ package | basename | quote }} -C {{ root | quote }}
    rollback: |
      rm -rf {{ root }}/app.failed
      mv {{ root }}/app {{ root }}/app.failed
      tar xzf {{ backup | quote }} -C {{ root | quote }}
  - name: Start application
    run: touch {{ root }}/app.running
    rollback: rm -f {{ root }}/app.running
    service: { name: app, state: started }
  - name: Verify
    check: grep -qx {{ version | quote }} {{ root }}/app/VERSION
"#;

fn demo_lab() -> Lab {
    let lab = Lab::new();
    lab.write(
        "inventories/demo.yaml",
        "name: demo\nconfirm: yes\ngroups:\n  app:\n    hosts:\n\
         \x20     sandbox1: { connection: local, vars: { root: ./demo/sandbox1 } }\n\
         \x20     sandbox2: { connection: local, vars: { root: ./demo/sandbox2 } }\n",
    );
    lab.write("runbooks/upgrade.yaml", UPGRADE);
    for s in ["sandbox1", "sandbox2"] {
        lab.write(&format!("demo/{s}/app/VERSION"), "1.0\n");
        lab.write(&format!("demo/{s}/app/log/app.log"), "old log\n");
        lab.write(&format!("demo/{s}/app.running"), "");
    }
    fs::create_dir_all(lab.path().join("packages")).unwrap();
    for (name, version) in [("app-2.0", "2.0"), ("app-2.1", "2.1-broken")] {
        lab.write(
            &format!("build/{name}/app/VERSION"),
            &format!("{version}\n"),
        );
        let st = Command::new("tar")
            .current_dir(lab.path())
            .args(["czf", &format!("packages/{name}.tar.gz"), "-C"])
            .arg(format!("build/{name}"))
            .arg("app")
            .status()
            .unwrap();
        assert!(st.success());
    }
    lab
}

#[test]
fn upgrade_on_the_local_demo_inventory_succeeds_and_rolls_back() {
    let lab = demo_lab();
    let sandbox = |s: &str, f: &str| lab.path().join("demo").join(s).join(f);

    let run = lab.run(
        &[
            "upgrade",
            "--env",
            "demo",
            "--yes",
            "--ticket",
            "CHG-1",
            "-e",
            "package=packages/app-2.0.tar.gz",
            "-e",
            "version=2.0",
        ],
        &[],
        None,
    );
    run.expect_code(0);
    let package = fs::read(lab.path().join("packages/app-2.0.tar.gz")).unwrap();
    let sha: String = {
        use sha2::Digest;
        sha2::Sha256::digest(&package)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    for s in ["sandbox1", "sandbox2"] {
        assert_eq!(
            fs::read_to_string(sandbox(s, "app/VERSION")).unwrap(),
            "2.0\n"
        );
        assert!(sandbox(s, "app.running").exists());
        assert_eq!(
            run.target("Upload package", s)["upload_sha256"],
            sha.as_str()
        );
        // The backup holds the old release and honours the exclude.
        let backup = fs::read_dir(lab.path().join("demo").join(s))
            .unwrap()
            .flatten()
            .find(|e| e.file_name().to_string_lossy().starts_with("backup-app-"))
            .expect("backup exists")
            .path();
        let list = Command::new("tar")
            .arg("tzf")
            .arg(&backup)
            .output()
            .unwrap();
        let list = String::from_utf8_lossy(&list.stdout).into_owned();
        assert!(list.contains("app/VERSION"), "{list}");
        assert!(!list.contains("app/log/app.log"), "{list}");
    }
    let log = run.log_md();
    assert!(log.contains("CHG-1") && log.contains("upgrade"), "{log}");

    // A package that does not verify: every completed step is undone, newest first.
    let run = lab.run(
        &[
            "upgrade",
            "--env",
            "demo",
            "--yes",
            "-e",
            "package=packages/app-2.1.tar.gz",
            "-e",
            "version=2.1",
        ],
        &[],
        None,
    );
    run.expect_code(1);
    let (outcome, message) = run.outcome();
    assert_eq!(outcome, "failed");
    assert!(
        message.contains("rolled back 3 steps: undone on "),
        "{message}"
    );
    for s in ["sandbox1", "sandbox2"] {
        assert_eq!(
            fs::read_to_string(sandbox(s, "app/VERSION")).unwrap(),
            "2.0\n"
        );
        assert_eq!(
            fs::read_to_string(sandbox(s, "app.failed/VERSION")).unwrap(),
            "2.1-broken\n"
        );
        assert!(
            sandbox(s, "app.running").exists(),
            "restarted by the rollback"
        );
    }
    let undone: Vec<String> = run
        .events("step_started")
        .iter()
        .filter(|e| e["phase"] == "undo")
        .map(|e| e["step"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        undone,
        ["Start application", "Apply package", "Stop application"]
    );
    assert!(run.log_md().to_lowercase().contains("rollback"));
}
