//! The command line around the runs: `list`, `completions`, the typed gate with `--yes`.

use crate::support::cli::Test;
use std::process::Stdio;

/// A `connection: local` host no other test process uses: host locks of local
/// hosts are machine-wide, keyed by host name and the directory opsrun runs in
/// (each test has its own).
fn local_host() -> String {
    format!("cli{}", std::process::id())
}

fn typed_inventory() -> String {
    format!(
        "name: prod\nconfirm: typed\ngroups:\n  local:\n    hosts:\n      {}: {{ connection: local }}\n",
        local_host()
    )
}

const ECHO: &str = "name: echo\nhosts: local\nsteps:\n  - name: say hi\n    run: echo hi\n";

#[test]
fn typed_gate_with_yes_but_no_env_says_that_it_needs_env() {
    let out = Test::new()
        .write("inventories/prod.yaml", typed_inventory())
        .write("runbooks/echo.yaml", ECHO)
        .args(["echo", "-i", "inventories/prod.yaml", "--yes", "--no-sign"])
        .expect_status(3)
        .run();
    let last = out.stderr.lines().last().unwrap_or_default();
    assert_eq!(
        last,
        "not confirmed: inventory `prod` asks for its name to be typed (confirm: typed): with --yes, name it explicitly with `--env prod`",
        "{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("stdin is not a terminal"),
        "{}",
        out.stderr
    );
}

#[test]
fn typed_gate_with_yes_and_env_runs() {
    Test::new()
        .write("inventories/prod.yaml", typed_inventory())
        .write("runbooks/echo.yaml", ECHO)
        .args(["echo", "--env", "prod", "--yes", "--no-sign"])
        .expect_status(0)
        .stderr_contains("succeeded")
        .run();
}

/// The `opsrun list` line of runbook `name`, without the padding after the name.
fn list_entry(stdout: &str, name: &str) -> String {
    stdout
        .lines()
        .find_map(|l| {
            let (n, rest) = l.split_once(' ')?;
            (n == name).then(|| rest.trim_start().to_string())
        })
        .unwrap_or_else(|| panic!("no `{name}` in:\n{stdout}"))
}

#[test]
fn list_shows_the_first_sentence_whole() {
    let out = Test::new()
        .write(
            "runbooks/restart.yaml",
            "name: restart\ndescription: |\n  Restart the app on every node, one at a time, keeping the load\n  balancer in step. Follows SOP 004 §5.1; the stop waits 60 s.\nhosts: all\nsteps:\n  - name: a\n    run: echo hi\n",
        )
        .write(
            "runbooks/cn.yaml",
            "name: cn\ndescription: 重启应用服务。然后检查健康状态。\nhosts: all\nsteps:\n  - name: a\n    run: echo hi\n",
        )
        .write(
            "runbooks/long.yaml",
            "name: long\ndescription: One sentence without an end\nhosts: all\nsteps:\n  - name: a\n    run: echo hi\n",
        )
        .arg("list")
        .run();
    assert_eq!(
        list_entry(&out.stdout, "restart"),
        "Restart the app on every node, one at a time, keeping the load balancer in step.  [runbooks/restart.yaml]"
    );
    assert_eq!(
        list_entry(&out.stdout, "cn"),
        "重启应用服务。  [runbooks/cn.yaml]"
    );
    assert_eq!(
        list_entry(&out.stdout, "long"),
        "One sentence without an end  [runbooks/long.yaml]"
    );
    // The report: the built-in app-sync was cut at "keeping the test".
    assert_eq!(
        list_entry(&out.stdout, "app-sync"),
        "Copy the production e-cology tree to the test environment, keeping the test environment's own database and session settings.  [built-in]"
    );
}

#[test]
fn list_escapes_control_characters_of_a_description() {
    let out = Test::new()
        .write(
            "runbooks/esc.yaml",
            "name: esc\ndescription: \"Paint \\e[31mred\\e[0m.\"\nhosts: all\nsteps:\n  - name: a\n    run: echo hi\n",
        )
        .arg("list")
        .run();
    let entry = list_entry(&out.stdout, "esc");
    assert!(!entry.contains('\x1b'), "{entry:?}");
    assert_eq!(entry, "Paint \\x1b[31mred\\x1b[0m.  [runbooks/esc.yaml]");
}

/// The write end of a pipe whose read end is already closed.
fn closed_pipe() -> std::fs::File {
    use std::os::fd::FromRawFd as _;
    let mut fds = [0; 2];
    // SAFETY: pipe() fills two new descriptors; the read one is closed at once and
    // the write one is owned by the File from here on.
    unsafe {
        assert_eq!(libc::pipe(fds.as_mut_ptr()), 0, "pipe()");
        libc::close(fds[0]);
        std::fs::File::from_raw_fd(fds[1])
    }
}

/// `opsrun completions SHELL` into a pipe nobody reads.
fn completions_to_a_closed_pipe_exit_quietly(shell: &str) {
    // The read end is closed before opsrun writes a byte: every write fails with EPIPE,
    // as with `opsrun completions zsh | head -1`.
    let writer = closed_pipe();
    let out = Test::new()
        .args(["completions", shell])
        .command()
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .expect("run opsrun");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{shell}: {stderr}");
    assert_eq!(stderr, "", "{shell}");
}

#[test]
fn zsh_completions_to_a_closed_pipe_exit_quietly() {
    completions_to_a_closed_pipe_exit_quietly("zsh");
}

#[test]
fn bash_completions_to_a_closed_pipe_exit_quietly() {
    completions_to_a_closed_pipe_exit_quietly("bash");
}

#[test]
fn fish_completions_to_a_closed_pipe_exit_quietly() {
    completions_to_a_closed_pipe_exit_quietly("fish");
}

#[test]
fn completions_offer_runbook_names_and_environments() {
    let out = Test::new()
        .write("runbooks/night-restart.yaml", ECHO)
        // Both extensions of one name, and a name that is a command: no duplicate command.
        .write("runbooks/night-restart.yml", ECHO)
        .write("runbooks/check.yaml", ECHO)
        .write("inventories/staging-cn.yaml", typed_inventory())
        .args(["completions", "zsh"])
        .run();
    // Runbooks are run as `opsrun NAME`: offered as commands, with their description.
    assert!(
        out.stdout.contains("'night-restart:Run this runbook'"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("'upgrade:Upgrade e-cology from one or more packages"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("'--env=[Environment\\: reads inventories/ENV.yaml]:ENV:(staging-cn)'"),
        "{}",
        out.stdout
    );
    // `opsrun show NAME`, `opsrun check NAME...`
    assert!(
        out.stdout
            .contains(":runbook -- Runbook name or file:(night-restart app-sync "),
        "{}",
        out.stdout
    );
}

/// Completes `words` (the last one being completed) with the script of `opsrun completions bash`,
/// in a real bash run in `dir`: the words offered.
fn bash_complete(dir: &std::path::Path, script: &str, words: &[&str]) -> Vec<String> {
    let script_path = dir.join("c.bash");
    std::fs::write(&script_path, script).expect("write c.bash");
    let quoted: Vec<String> = words
        .iter()
        .map(|w| format!("'{}'", w.replace('\'', r"'\''")))
        .collect();
    // What bash itself does on <TAB>: set COMP_* and call the function `complete` registered.
    let driver = format!(
        "source ./c.bash\nCOMP_WORDS=({words})\nCOMP_CWORD={cword}\nCOMP_LINE=\"${{COMP_WORDS[*]}}\"\nCOMP_POINT=${{#COMP_LINE}}\nf=$(complete -p opsrun | sed -n 's/.*-F \\([^ ]*\\) .*/\\1/p')\n\"$f\" opsrun \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
        words = quoted.join(" "),
        cword = words.len() - 1,
    );
    let out = std::process::Command::new("bash")
        .arg("--norc")
        .arg("-c")
        .arg(driver)
        .current_dir(dir)
        .output()
        .expect("run bash");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

#[test]
fn bash_completion_of_env_never_runs_an_inventory_file_name() {
    let out = Test::new()
        .write("inventories/staging.yaml", typed_inventory())
        .write("inventories/p$(touch PWNED4).yaml", typed_inventory())
        .write("inventories/q`touch PWNED5`.yaml", typed_inventory())
        .write("inventories/r\";touch PWNED6;\".yaml", typed_inventory())
        .args(["completions", "bash"])
        .run();
    let dir = out.path().to_path_buf();
    let offered = bash_complete(&dir, &out.stdout, &["opsrun", "upgrade", "--env", ""]);
    for pwned in ["PWNED4", "PWNED5", "PWNED6"] {
        assert!(
            !dir.join(pwned).exists(),
            "completing ran a file name: {pwned}"
        );
    }
    // The names a shell can carry as one word are still offered.
    assert_eq!(offered, ["staging"]);
}

#[test]
fn a_step_of_an_optional_group_that_matches_nothing_is_not_counted_as_done() {
    // A local step plus an `on:` glob that matches nothing: the local step runs
    // (as a runbook of local steps only does), and the Result does not call the
    // other step done.
    let out = Test::new()
        .write("inventories/prod.yaml", typed_inventory())
        .write(
            "runbooks/opt.yaml",
            "name: opt\nsteps:\n  - name: check\n    local: true\n    run: echo hi\n  - name: drain\n    on: \"lb*\"\n    run: echo drain\n",
        )
        .args(["opt", "--env", "prod", "--yes", "--no-sign"])
        .expect_status(0)
        .run();
    assert!(
        out.stderr.starts_with(&format!(
            "run {}: opt on prod (this machine only)\n",
            out.id()
        )),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("\nsucceeded: 1 step done, 1 on no host\n"),
        "{}",
        out.stderr
    );
}

#[test]
fn dry_run_output_replaces_an_existing_file_only_with_force() {
    let out = Test::new()
        .write("inventories/prod.yaml", typed_inventory())
        .write("runbooks/echo.yaml", ECHO)
        .write("plan.md", "the plan the change board signed\n")
        .args([
            "echo",
            "--env",
            "prod",
            "--dry-run",
            "--output",
            "plan.md",
            "--no-sign",
        ])
        .expect_status(2)
        .run();
    assert_eq!(out.read("plan.md"), "the plan the change board signed\n");
    let out = Test::in_dir(out.path())
        .args([
            "echo",
            "--env",
            "prod",
            "--dry-run",
            "--output",
            "plan.md",
            "--no-sign",
            "--force",
        ])
        .expect_status(0)
        .run();
    assert!(out
        .read("plan.md")
        .starts_with("# opsrun plan: `echo` on `prod`"));
}

#[test]
fn top_level_help_lists_what_runs_shows() {
    let out = Test::new().arg("--help").run();
    let line = out
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("runs "))
        .unwrap_or_else(|| panic!("{}", out.stdout));
    assert!(
        line.ends_with(
            "List past runs: id, runbook, env, ticket, operator, result, start, duration"
        ),
        "{line}"
    );
}

/// A `y` typed while batch 1's step ran answered the batch 2 gate the moment it
/// appeared: each gate now discards what was typed before it was asked.
#[test]
fn a_gate_ignores_what_was_typed_before_it_was_asked() {
    use crate::support::pty::{pty_run, run_on_pty};
    let (one, two) = (format!("{}a", local_host()), format!("{}b", local_host()));
    let test = Test::new()
        .write(
            "inventories/lab.yaml",
            format!("name: lab\ngroups:\n  app:\n    hosts:\n      {one}: {{ connection: local }}\n      {two}: {{ connection: local }}\n"),
        )
        .write(
            "runbooks/ta.yaml",
            "name: ta\nhosts: app\nserial: 1\nsteps:\n  - name: Work\n    confirm: \"Go on?\"\n    run: \"echo begun && sleep 2\"\n",
        )
        .args(["ta", "--env", "lab", "--no-sign"]);
    let (code, screen) = run_on_pty(
        test.command(),
        &[
            (&format!("(batch 1/2: {one}) [y/N]"), "y"),
            // Typed ahead while batch 1 runs, before the batch 2 gate is asked.
            ("begun", "y"),
            (&format!("(batch 2/2: {two}) [y/N]"), "n"),
        ],
    );
    let run = pty_run(code, &screen, test.path());
    run.expect_code(3);
    assert_eq!(run.status("Work", &one), "ok");
    assert!(
        run.events("step_started").len() == 1,
        "batch 2 ran on a typed-ahead answer:\n{screen}"
    );
}
