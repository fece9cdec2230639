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
        .args(["esc", "-i", "inventories/lab.yaml", "--yes", "--no-sign"])
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
        .args(["esc", "-i", "inventories/lab.yaml", "--dry-run"])
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
    let t = test().args(["esc", "-i", "inventories/lab.yaml", "--no-sign"]);
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
        .args(["ticker", "-i", "inventories/lab.yaml", "--yes", "--no-sign"]);
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

/// A captured value that tries to repaint the terminal (erase the line, move up,
/// conceal what follows) and carries invisible and direction-changing characters.
const CAPTURED_ESC: &str = r"printf 'v1\\033[2K\\033[1A\\033[8m rm -rf /\\342\\200\\213\\342\\200\\217\\357\\273\\277\\342\\200\\250end'";

/// What the undo list shows for it: every escape and invisible character visible.
const CAPTURED_SHOWN: &str =
    "echo back to v1\\x1b[2K\\x1b[1A\\x1b[8m rm -rf /\\u{200b}\\u{200f}\\u{feff}\\u{2028}end";

fn captured_esc(host: &str) -> Test {
    Test::new()
        .write(
            "runbooks/capesc.yaml",
            format!(
                "name: capesc\nhosts: app\nsteps:\n\
                 \x20 - name: Read version\n    run: \"{CAPTURED_ESC}\"\n    capture: ver\n    rollback: \"echo back to {{{{ ver }}}}\"\n\
                 \x20 - name: Break\n    run: \"exit 1\"\n"
            ),
        )
        .write(
            "inventories/lab.yaml",
            format!("name: lab\ngroups:\n  app:\n    hosts:\n      {host}: {{ connection: local }}\n"),
        )
}

/// The screen shows none of the captured value's raw escapes or invisible characters.
fn assert_screen_shows_capture_escaped(screen: &str) {
    assert!(screen.contains(CAPTURED_SHOWN), "{screen:?}");
    for raw in [
        "\x1b[8m", "v1\x1b", "\u{200b}", "\u{200f}", "\u{feff}", "\u{2028}",
    ] {
        assert!(
            !screen.contains(raw),
            "raw {raw:?} on the terminal: {screen:?}"
        );
    }
}

/// The undo list at the automatic rollback gate, and at `opsrun rollback`'s, shows
/// a captured value's escape sequences escaped: the operator reads the real
/// command, and the y/N question stays visible.
#[test]
fn the_rollback_gates_show_a_captured_escape_sequence_escaped() {
    let host = format!("esc{}", std::process::id());
    let t = captured_esc(&host).args(["capesc", "-i", "inventories/lab.yaml", "--no-sign"]);
    let question = format!("Roll back 1 completed step on {host}? [y/N]");
    let (code, screen) = run_on_pty(t.command(), &[(question.as_str(), "n")]);
    let run = pty_run(code, &screen, t.path());
    run.expect_code(1);
    assert_screen_shows_capture_escaped(&screen);
    let at_gate = &screen[..screen.find(&question).unwrap()];
    assert!(at_gate.contains(CAPTURED_SHOWN), "{at_gate:?}");

    let id = run.id();
    let undo = Test::in_dir(t.path()).args(["rollback", &id, "--no-sign"]);
    let (code, screen) = run_on_pty(undo.command(), &[("[y/N]", "n")]);
    assert_ne!(code, 0, "{screen}");
    assert_screen_shows_capture_escaped(&screen);
    let gate = screen.find("[y/N]").unwrap();
    assert!(screen[..gate].contains(CAPTURED_SHOWN), "{screen:?}");
    assert!(
        screen.contains(&format!(
            "Roll back run `{id}` (capesc on `lab`): undo 1 step on {host}? [y/N]"
        )),
        "{screen:?}"
    );
}

/// An error quotes the runbook line it is about (here a template error in a
/// command): `check` and a run (its dry-run) show the line escaped, as
/// everywhere else.
#[test]
fn errors_quote_runbook_text_escaped() {
    let t = || {
        Test::new()
            .write(
                "runbooks/bad.yaml",
                "name: bad\nhosts: app\nsteps:\n  - name: Echo\n    run: \"echo \u{200b}\u{202e}{{ nope( }}\"\n",
            )
            .write("inventories/lab.yaml", INVENTORY)
    };
    for (args, status) in [
        (&["check", "bad"][..], 2),
        (&["bad", "-i", "inventories/lab.yaml", "--dry-run"], 2),
    ] {
        let out = t().args(args.iter().copied()).expect_status(status).run();
        assert_eq!(raw_controls(&out.stderr), [], "{}", out.stderr);
        assert!(!out.stderr.contains('\u{200b}'), "{}", out.stderr);
        assert!(
            out.stderr.contains("echo \\u{200b}\\u{202e}{{ nope( }}"),
            "{}",
            out.stderr
        );
    }
}

/// `-v` streams what a host printed, and the failure and undo lines quote it:
/// escapes and invisible characters shown escaped there too.
#[test]
fn the_verbose_stream_shows_a_captured_escape_sequence_escaped() {
    let host = format!("esv{}", std::process::id());
    let out = captured_esc(&host)
        .args([
            "capesc",
            "-i",
            "inventories/lab.yaml",
            "--yes",
            "--no-sign",
            "-v",
        ])
        .expect_status(1)
        .run();
    assert_screen_shows_capture_escaped(&out.stderr);
    assert!(
        out.stderr.contains(&format!(
            "{host} | v1\\x1b[2K\\x1b[1A\\x1b[8m rm -rf /\\u{{200b}}\\u{{200f}}\\u{{feff}}\\u{{2028}}end"
        )),
        "{}",
        out.stderr
    );
}

/// A gate and a manual step that name a value captured earlier in the run.
fn gated_capture() -> Test {
    Test::new()
        .write(
            "runbooks/capgate.yaml",
            "name: capgate\nhosts: app\nsteps:\n\
             \x20 - name: Read version\n    run: \"printf 'v2\\\\033[8m\\\\342\\\\200\\\\213x'\"\n    capture: ver\n\
             \x20 - name: Deploy\n    confirm: \"Proceed with {{ ver }}?\"\n    run: \"echo deploying\"\n\
             \x20 - name: Look\n    manual: \"Check that {{ ver }} answers\"\n",
        )
        .write(
            "inventories/lab.yaml",
            "name: lab\ngroups:\n  app:\n    hosts:\n      a1: { connection: local }\n",
        )
}

/// What the operator reads for the captured value: its escape and its zero-width space shown.
const GATED_SHOWN: &str = "v2\\x1b[8m\\u{200b}x";

/// In a run, a gate's question and a manual step's instructions carry the
/// captured value itself (escaped), not `<captured: ver>`: the operator sees
/// what they approve, and the log's gate rows record it. The dry-run, which
/// knows no captured value, keeps the placeholder.
#[test]
fn a_gate_and_a_manual_step_show_the_captured_value_they_name() {
    let t = gated_capture().args(["capgate", "-i", "inventories/lab.yaml", "--no-sign"]);
    let (code, screen) = run_on_pty(
        t.command(),
        &[
            ("[y/N]", "y"),
            ("Done? [y/N]", "y"),
            ("(Enter for none):", ""),
        ],
    );
    let run = pty_run(code, &screen, t.path());
    run.expect_code(0);
    assert!(
        screen.contains(&format!("Proceed with {GATED_SHOWN}? (on a1) [y/N]")),
        "{screen:?}"
    );
    assert!(
        screen.contains(&format!("  | Check that {GATED_SHOWN} answers")),
        "{screen:?}"
    );
    assert!(!screen.contains("<captured: ver>"), "{screen:?}");
    assert!(!screen.contains("\x1b[8m"), "{screen:?}");
    assert!(!screen.contains('\u{200b}'), "{screen:?}");
    let log = run.log_md();
    assert!(
        log.contains(&format!("`Proceed with {GATED_SHOWN}? (on a1)`")),
        "{log}"
    );
    assert!(
        log.contains(&format!("`Check that {GATED_SHOWN} answers`")),
        "{log}"
    );
    assert!(!log.contains("<captured: ver>"), "{log}");

    let dry = gated_capture()
        .args(["capgate", "-i", "inventories/lab.yaml", "--dry-run"])
        .expect_status(0)
        .run();
    assert!(
        dry.stdout
            .contains("gate: Proceed with <captured: ver>? (on a1) [y/N]"),
        "{}",
        dry.stdout
    );
}
