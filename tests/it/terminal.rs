//! Text from a runbook or an inventory (names, questions, manual instructions,
//! commands) reaches the terminal escaped, like host output: a name with a
//! carriage return or an escape sequence must not redraw what the operator reads.

use crate::support::cli::Test;
use crate::support::pty::{pty_run, run_on_pty};

const INVENTORY: &str =
    "name: \"lab\\e[2J\"\ngroups:\n  app:\n    hosts:\n      a1: { connection: local }\n";

const RUNBOOK: &str = r#"name: "nm2\e[2J"
description: "Paints\e[31m red"
hosts: app
steps:
  - name: "Stop service on h1\rRead-only status check"
    confirm: "Really\u202E stop {{ host_word }}?"
    run: "echo stopped"
    rollback: "echo 'start\e[5m again'"
  - name: "Note\e[31m it"
    manual: "Do this\e[2J by hand\r\nthen that\u2066"
  - name: "Fail\0here"
    run: "exit 1"
vars:
  host_word: "h1\rnothing"
"#;

/// Raw control characters (and bidi overrides) anywhere in `text`.
fn raw_controls(text: &str) -> Vec<char> {
    text.chars()
        .filter(|c| {
            (c.is_control() && *c != '\n' && *c != '\t')
                || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
        })
        .collect()
}

fn test() -> Test {
    Test::new()
        .write("runbooks/esc.yaml", RUNBOOK)
        .write("inventories/lab.yaml", INVENTORY)
}

#[test]
fn a_run_shows_runbook_text_escaped() {
    let out = test()
        .args(["esc", "--env", "lab", "--yes", "--no-sign"])
        .expect_status(1)
        .run();
    assert_eq!(raw_controls(&out.stderr), [], "{}", out.stderr);
    for line in [
        "run ",
        ": nm2\\x1b[2J on lab\\x1b[2J (1 host)\n",
        "[1/3] Stop service on h1\\x0dRead-only status check  1 host\n",
        "  | Do this\\x1b[2J by hand\\x0d\n  | then that\\u{2066}\n",
        "  [1] Stop service on h1\\x0dRead-only status check on a1\n",
        "[undo 1] Stop service on h1\\x0dRead-only status check  1 host\n",
        "error: step `Fail\\x00here` failed on a1 (exit 1)\n",
        "failed: step `Fail\\x00here` failed on a1 (exit 1); rolled back 1 step: ",
    ] {
        assert!(out.stderr.contains(line), "no {line:?} in:\n{}", out.stderr);
    }
}

#[test]
fn a_dry_run_and_show_print_runbook_text_escaped() {
    let dry = test()
        .args(["esc", "--env", "lab", "--dry-run"])
        .expect_status(0)
        .run();
    assert_eq!(raw_controls(&dry.stdout), [], "{}", dry.stdout);
    for line in [
        "runbook    nm2\\x1b[2J  ",
        "           Paints\\x1b[31m red\n",
        "[1/3] Stop service on h1\\x0dRead-only status check  on: app\n",
        "    gate: Really\\u{202e} stop h1\\x0dnothing? (on a1) [y/N]\n",
        "      | Do this\\x1b[2J by hand\\x0d\n      | then that\\u{2066}\n",
        "        [root@a1]# echo 'start\\x1b[5m again'\n",
    ] {
        assert!(dry.stdout.contains(line), "no {line:?} in:\n{}", dry.stdout);
    }
    let show = test().args(["show", "esc"]).expect_status(0).run();
    assert_eq!(raw_controls(&show.stdout), [], "{}", show.stdout);
    assert!(
        show.stdout
            .contains("  1   Stop service on h1\\x0dRead-only status check  (run)"),
        "{}",
        show.stdout
    );
}

#[test]
fn a_gate_asks_its_question_escaped() {
    let t = test().args(["esc", "--env", "lab", "--no-sign"]);
    let (code, screen) = run_on_pty(t.command(), &[("[y/N]", "n")]);
    pty_run(code, &screen, t.path()).expect_code(3);
    assert!(
        screen.contains("Really\\u{202e} stop h1\\x0dnothing? (on a1) [y/N]"),
        "{screen:?}"
    );
    assert!(!screen.contains("h1\rnothing"), "{screen:?}");
    assert!(!screen.contains('\u{202E}'), "{screen:?}");
}

/// The live view is cleared before the verdict: no spinner of the step that was
/// stopped is drawn again under the last line.
#[test]
fn no_spinner_is_drawn_after_the_final_line() {
    let runbook = "name: ticker\nhosts: app\nsteps:\n\
        \x20 - name: Tick\n    run: \"for i in $(seq 1 60); do echo tick $i; sleep 0.2; done\"\n";
    let t = Test::new()
        .write("runbooks/ticker.yaml", runbook)
        .write("inventories/lab.yaml", INVENTORY)
        .args(["ticker", "--env", "lab", "--yes", "--no-sign"]);
    let (code, screen) = run_on_pty(
        t.command(),
        &[
            ("tick 3", crate::support::pty::CTRL_C),
            ("Choice [w/s/r]", "s"),
        ],
    );
    pty_run(code, &screen, t.path()).expect_code(130);
    let end = screen
        .rfind("interrupted:")
        .unwrap_or_else(|| panic!("no verdict:\n{screen}"));
    let after = &screen[end..];
    assert!(
        !after.contains("tick "),
        "a spinner after the verdict:\n{after:?}"
    );
}
