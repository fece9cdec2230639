//! The rollback of a rolling run (`serial`) is rolling too, and every gate and
//! listing names its hosts in inventory order: runs on `connection: local` hosts
//! that append what they do to one shared file, so the order across hosts shows.

use crate::support::{cli::Run, lab::Lab};
use std::fs;

const ROLL: &str = r#"name: roll
hosts: app
serial: 1
steps:
  - name: Deploy
    run: echo "deploy {{ host.name }}" >> {{ events }}
    rollback: echo "undo-deploy {{ host.name }}" >> {{ events }}
  - name: Restart
    run: test "{{ broken | default('no') }}" = no && echo "restart {{ host.name }}" >> {{ events }}
    rollback: echo "undo-restart {{ host.name }}" >> {{ events }}
"#;

/// A lab with three local hosts named for this process and `test` (host locks of
/// local hosts are machine-wide), `broken` ones failing `Restart`.
fn lab(test: &str, broken: &[usize]) -> (Lab, Vec<String>) {
    let lab = Lab::new();
    let pid = std::process::id();
    let hosts: Vec<String> = (1..=3).map(|i| format!("rr{pid}-{test}-web{i}")).collect();
    let events = lab.path().join("events");
    let mut inv = format!(
        "name: local\nvars: {{ events: {} }}\ngroups:\n  app:\n    hosts:\n",
        serde_json::to_string(&events.to_string_lossy()).unwrap()
    );
    for (i, h) in hosts.iter().enumerate() {
        let vars = if broken.contains(&(i + 1)) {
            ", vars: { broken: yes }"
        } else {
            ""
        };
        inv.push_str(&format!("      {h}: {{ connection: local{vars} }}\n"));
    }
    lab.write("inventories/local.yaml", &inv);
    lab.write("runbooks/roll.yaml", ROLL);
    (lab, hosts)
}

fn events(lab: &Lab, hosts: &[String]) -> Vec<String> {
    let text = fs::read_to_string(lab.path().join("events")).unwrap_or_default();
    short_text(&text, hosts)
        .lines()
        .map(str::to_string)
        .collect()
}

/// What the terminal showed (stderr, or stdout for a dry-run), with the short host names.
fn short(run: &Run, hosts: &[String]) -> String {
    short_text(&format!("{}{}", run.stdout, run.stderr), hosts)
}

#[test]
fn a_failed_rolling_run_is_undone_batch_by_batch_the_failed_batch_first() {
    let (lab, hosts) = lab("auto", &[2]);
    let run = lab.run(&["roll", "--env", "local", "--yes", "--no-sign"], &[], None);
    run.expect_code(1);
    assert_eq!(
        events(&lab, &hosts),
        [
            "deploy web1",
            "restart web1",
            "deploy web2",
            // batch 2 (web2, which failed) first, then batch 1, its steps latest first
            "undo-deploy web2",
            "undo-restart web1",
            "undo-deploy web1",
        ]
    );
    let out = short(&run, &hosts);
    let preview = [
        "rollback: these completed steps will be undone, in this order, batch by batch, the last batch first:",
        "  undo batch 2/3: web2",
        "  [1] Deploy on web2",
    ];
    for l in preview {
        assert!(out.contains(l), "{l}\n{out}");
    }
    let at = |l: &str| out.find(l).unwrap_or_else(|| panic!("{l}\n{out}"));
    assert!(at("  undo batch 1/3: web1\n  [2] Restart on web1") > at("  [1] Deploy on web2"));
    assert!(
        at("undo batch 2/3: web2\n[undo 1 batch 2] Deploy")
            < at("undo batch 1/3: web1\n[undo 2 batch 1] Restart")
    );
    // The gate names the hosts it undoes on (issue 9 point 8).
    let gate = &run.events("gate")[0];
    assert_eq!(
        gate["prompt"]
            .as_str()
            .map(|p| short_text(p, &hosts))
            .as_deref(),
        Some("Roll back 2 completed steps on web1, web2?")
    );
}

const ORDER: &str = r#"name: order
hosts: app
steps:
  - name: 第一步
    # web1 finishes last: the listings must not follow completion order.
    run: if [ "{{ broken | default('no') }}" = yes ]; then sleep 0.5; fi
    rollback: "false"
  - name: 第二步
    run: "false"
"#;

#[test]
fn hosts_are_listed_in_inventory_order_not_in_the_order_they_finished() {
    let (lab, hosts) = lab("order", &[1]);
    lab.write("runbooks/order.yaml", ORDER);
    let hosts = &hosts[..2];
    let run = lab.run(
        &[
            "order",
            "--env",
            "local",
            "--yes",
            "--no-sign",
            "--limit",
            &hosts.join(","),
        ],
        &[],
        None,
    );
    run.expect_code(1);
    let out = short(&run, hosts);
    assert!(out.contains("  [1] 第一步 on web1, web2\n"), "{out}");
    assert!(
        out.contains(
            "ROLLBACK INCOMPLETE: not restored: `第一步` on web1, web2; still applied: on web1, web2: `第一步`;"
        ),
        "{out}"
    );
    let preview = lab.test(&["rollback", &run.id(), "--dry-run"]).output();
    let text = short(&preview, hosts);
    assert!(text.contains("  [1] 第一步 on web1, web2\n"), "{text}");
}

#[test]
fn opsrun_rollback_of_a_rolling_run_undoes_the_last_batch_first() {
    let (lab, hosts) = lab("later", &[]);
    let run = lab.run(&["roll", "--env", "local", "--yes", "--no-sign"], &[], None);
    run.expect_code(0);
    fs::remove_file(lab.path().join("events")).unwrap();
    let back = lab.run(&["rollback", &run.id(), "--yes", "--no-sign"], &[], None);
    back.expect_code(0);
    assert_eq!(
        events(&lab, &hosts),
        [
            "undo-restart web3",
            "undo-deploy web3",
            "undo-restart web2",
            "undo-deploy web2",
            "undo-restart web1",
            "undo-deploy web1",
        ]
    );
    let gate = &back.events("gate")[0];
    assert_eq!(
        gate["prompt"]
            .as_str()
            .map(|p| short_text(p, &hosts))
            .as_deref(),
        Some(
            format!(
                "Roll back run `{}` (roll on `local`): undo 2 steps on web1, web2, web3?",
                run.id()
            )
            .as_str()
        )
    );
}

/// `text` with the hosts' per-test names shortened to web1, web2, ...
fn short_text(text: &str, hosts: &[String]) -> String {
    let mut text = text.to_string();
    for (i, h) in hosts.iter().enumerate() {
        text = text.replace(h.as_str(), &format!("web{}", i + 1));
    }
    text
}

const GATES: &str = r#"name: gates
hosts: app
steps:
  - name: 停止服务
    confirm: "停止服务？"
    run: "true"
  - name: 重启主库
    when: broken | default('no') == 'yes'
    confirm: "重启主库？"
    run: "true"
"#;

#[test]
fn gates_name_the_hosts_that_run_the_step_in_the_dry_run_and_the_run() {
    let (lab, hosts) = lab("gates", &[1]);
    lab.write("runbooks/gates.yaml", GATES);
    let dry = lab.test(&["gates", "--env", "local", "--dry-run"]).output();
    let out = short(&dry, &hosts);
    assert!(
        out.contains("    gate: 停止服务？ (on web1, web2, web3) [y/N]\n"),
        "{out}"
    );
    // Only web1 passes the `when:`: the gate is for it alone.
    assert!(
        out.contains("    gate: 重启主库？ (on web1) [y/N]\n"),
        "{out}"
    );
    let run = lab.run(
        &["gates", "--env", "local", "--yes", "--no-sign"],
        &[],
        None,
    );
    run.expect_code(0);
    let prompts: Vec<String> = run
        .events("gate")
        .iter()
        .map(|g| short_text(g["prompt"].as_str().unwrap(), &hosts))
        .collect();
    assert_eq!(
        prompts,
        ["停止服务？ (on web1, web2, web3)", "重启主库？ (on web1)"]
    );
}

const GUIDED: &str = r#"name: guided
hosts: app
steps:
  - name: Deploy
    run: echo "deploy {{ host.name }}" >> {{ events }}
rollback:
  - name: Restore
    run: echo "restore {{ host.name }}" >> {{ events }}
"#;

#[test]
fn a_guide_run_again_with_yes_warns_on_the_terminal() {
    let (lab, hosts) = lab("again", &[]);
    lab.write("runbooks/guided.yaml", GUIDED);
    let run = lab.run(
        &["guided", "--env", "local", "--yes", "--no-sign"],
        &[],
        None,
    );
    run.expect_code(0);
    let first = lab.run(&["rollback", &run.id(), "--yes", "--no-sign"], &[], None);
    first.expect_code(0);
    assert!(!first.stderr.contains("already rolled back"), "{first:?}");
    let again = lab.run(&["rollback", &run.id(), "--yes", "--no-sign"], &[], None);
    again.expect_code(0);
    let line = format!(
        "warning: run {} was already rolled back (by run {}); --yes runs its rollback guide again\n",
        run.id(),
        first.id()
    );
    assert!(short(&again, &hosts).contains(&line), "{again:?}");
}

const STAGED: &str = r#"name: staged
hosts: app
steps:
  - name: Stage
    local: true
    capture: { name: staged, regex: "(?m)^staged: (.+)$" }
    script: |
      mkdir "$TMPDIR/work"
      echo payload > "$TMPDIR/work/file"
      echo "staged: $TMPDIR/work/file"
  - name: Use
    run: cat {{ staged | quote }} && test -e {{ events }}.go
"#;

#[test]
fn a_resume_runs_again_the_local_steps_whose_captures_were_in_the_removed_temporary_directory() {
    let (lab, hosts) = lab("resume", &[]);
    lab.write("runbooks/staged.yaml", STAGED);
    let hosts = &hosts[..1];
    let args = [
        "staged",
        "--env",
        "local",
        "--yes",
        "--no-sign",
        "--limit",
        &hosts[0],
    ];
    let run = lab.run(&args, &[], None);
    run.expect_code(1);
    fs::write(lab.path().join("events.go"), "").unwrap();
    let id = run.id();
    let resumed = lab.run(&[&args[..], &["--resume", &id]].concat(), &[], None);
    resumed.expect_code(0);
    assert!(
        resumed.stderr.contains(
            "re-running step 1 `Stage`: its capture `staged` was in the temporary directory of an earlier run, removed when that run ended\n"
        ),
        "{resumed:?}"
    );
    assert_eq!(resumed.saved_stdout("Use", &hosts[0]), "payload\n");
}

const SECRET: &str = r#"name: deploy
hosts: app
params:
  token: { secret: true, required: true, description: "API token" }
steps:
  - name: Register
    run: echo "register {{ host.name }}" >> {{ events }}
    rollback: echo "unregister {{ host.name }}" >> {{ events }}
  - name: Call the API
    run: test -n "$T"
    env: { T: "{{ token }}" }
"#;

#[test]
fn opsrun_rollback_asks_for_no_secret_its_steps_do_not_read() {
    let (lab, hosts) = lab("secret", &[]);
    lab.write("runbooks/deploy.yaml", SECRET);
    let run = lab.run(
        &["deploy", "--env", "local", "--yes", "--no-sign"],
        &[("OPSRUN_SECRET_TOKEN", "s3cr3t-value")],
        None,
    );
    run.expect_code(0);
    // No OPSRUN_SECRET_TOKEN and no terminal: the undo of `Register` does not read it.
    let back = lab.run(&["rollback", &run.id(), "--yes", "--no-sign"], &[], None);
    back.expect_code(0);
    assert!(!back.stderr.contains("token"), "{back:?}");
    // One round, the hosts in parallel: their lines come in any order.
    let mut undone = events(&lab, &hosts)[3..].to_vec();
    undone.sort();
    assert_eq!(
        undone,
        ["unregister web1", "unregister web2", "unregister web3"]
    );
}

#[test]
fn a_secret_that_is_part_of_the_run_names_is_refused_before_anything_runs() {
    let (lab, _) = lab("named", &[]);
    lab.write("runbooks/deploy.yaml", SECRET);
    let run = lab
        .test(&["deploy", "--env", "local", "--yes", "--no-sign"])
        .env("OPSRUN_SECRET_TOKEN", "loc")
        .output();
    assert_eq!(run.code, 2, "{run:?}");
    assert_eq!(
        run.stderr,
        "error: secret param `token`: its value occurs in the environment name (part of every run id); opsrun masks secrets by value, so it would mask that name wherever it is shown and tell the value to anyone who knows the name: use a secret that is not part of those names\n"
    );
    assert!(!lab.path().join("events").exists());
}

#[test]
fn opsrun_rollback_asks_for_a_secret_its_steps_read_after_the_preview_saying_why() {
    let (lab, _) = lab("needs", &[]);
    lab.write(
        "runbooks/deploy.yaml",
        &SECRET.replace(
            "    rollback: echo \"unregister {{ host.name }}\" >> {{ events }}",
            "    rollback: T={{ token | quote }} true",
        ),
    );
    let run = lab.run(
        &["deploy", "--env", "local", "--yes", "--no-sign"],
        &[("OPSRUN_SECRET_TOKEN", "s3cr3t-value")],
        None,
    );
    run.expect_code(0);
    let back = lab
        .test(&["rollback", &run.id(), "--yes", "--no-sign"])
        .output();
    assert_eq!(back.code, 2, "{back:?}");
    assert!(
        back.stderr
            .starts_with("rollback: these completed steps will be undone"),
        "{back:?}"
    );
    assert!(
        back.stderr.ends_with(
            "the steps above read secret param `token`: asked now (or set OPSRUN_SECRET_TOKEN)\n\
             error: secret param `token` is not set: export OPSRUN_SECRET_TOKEN=... or run from a terminal to be asked for it\n"
        ),
        "{back:?}"
    );
}
