//! `opsrun check`: lint names, `lint: { allow: [...] }`, and what is not a trap.
use crate::support::cli::Test;

fn runbook(steps: &str) -> String {
    format!("name: x\nhosts: app\nsteps:\n{steps}")
}

const INVENTORY: &str =
    "name: test\ngroups:\n  app:\n    hosts:\n      oa1: { address: 10.0.0.1 }\n";

fn check(steps: &str) -> Test {
    Test::new()
        .write("inventories/test.yaml", INVENTORY)
        .write("runbooks/x.yaml", runbook(steps))
        .args(["check", "x"])
}

#[test]
fn full_width_punctuation_inside_a_quoted_message_is_intended() {
    check("  - name: a\n    run: echo \"已预热：{{ host.name }}，完成。\" && echo '（备份）'\n")
        .expect_stdout("ok       runbook x\n1 file checked, no problems\n")
        .expect_stderr("")
        .run();
}

#[test]
fn a_copied_dash_outside_quotes_is_still_a_warning_naming_its_lint() {
    check("  - name: a\n    run: ps –ef | grep -v grep | grep tomcat && echo \"完成：\"\n")
        .expect_status(2)
        .expect_stdout("warning  runbook x: 1 lint warning\n")
        .expect_stderr(
            "warning: step `a` run: non-ASCII character U+2013 `–` in a command (copied from a document?) [non-ascii]
  --> runbooks/x.yaml:5:13
  |
5 |     run: ps –ef | grep -v grep | grep tomcat && echo \"完成：\"
  |             ^
  = help: retype it as plain ASCII: `–` is not `-`, a full-width space is not a space; if it is intended, add `lint: { allow: [non-ascii] }` to the step

1 problem in 1 file
",
        )
        .run();
}

#[test]
fn a_quote_in_a_later_line_of_a_script_does_not_hide_a_copied_character() {
    check("  - name: a\n    script: |\n      echo 'ok'\n      ls\u{3000}/data\n")
        .expect_status(2)
        .stderr_contains("U+3000")
        .stderr_contains("--> runbooks/x.yaml:7:9")
        .run();
}

#[test]
fn a_step_can_accept_a_lint_by_name() {
    check(
        "  - name: a\n    run: ps -ef | grep java\n    lint: { allow: [ps-grep] }\n  - name: b\n    run: ps -ef | grep java\n",
    )
    .expect_status(2)
    .expect_stdout("warning  runbook x: 1 lint warning\n")
    .stderr_contains("warning: step `b` run: `ps ... | grep X` always succeeds: grep matches its own process [ps-grep]\n  --> runbooks/x.yaml:8:10\n")
    .run();
}

#[test]
fn allowing_one_lint_does_not_allow_another() {
    check("  - name: a\n    run: vim /etc/hosts\n    lint: { allow: [non-ascii] }\n")
        .expect_status(2)
        .stderr_contains("[interactive]")
        .run();
}

#[test]
fn service_lints_are_accepted_on_the_stopping_step() {
    check(
        "  - name: stop\n    run: systemctl stop app\n    service: { name: app, state: stopped }\n    lint: { allow: [service-not-restarted, service-without-rollback] }\n",
    )
    .expect_stdout("ok       runbook x\n1 file checked, no problems\n")
    .run();
}

#[test]
fn every_lint_has_a_stable_documented_name() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    for name in opsrun::lint::NAMES {
        assert!(
            readme.contains(&format!("| `{name}` |")),
            "lint `{name}` is not in the README's table"
        );
    }
}

#[test]
fn check_reports_every_template_syntax_error_too() {
    check("  - name: a\n    run: test ${#TOKEN} -gt 0\n    check: echo {{ x\n")
        .expect_status(2)
        .expect_stdout("error    runbook x\n")
        .expect_stderr(
            "error: template syntax error: unexpected end of comment
  --> runbooks/x.yaml:5:16
  |
5 |     run: test ${#TOKEN} -gt 0
  |                ^^
  = help: `{#` opens a template comment: for the shell's `${#VAR}` write `${{ '{#' }}VAR}`, or wrap the text in `{% raw %}...{% endraw %}`

error: template syntax error: unexpected end of input, expected end of variable block
  --> runbooks/x.yaml:6:12
  |
6 |     check: echo {{ x
  |            ^^^^^^^^^

2 problems in 1 file
",
        )
        .run();
}

#[test]
fn expect_interpolating_a_value_without_regex_escape_is_a_warning() {
    check(
        "  - name: a\n    run: cat VERSION\n    capture: want\n  - name: b\n    run: cat INSTALLED\n    expect: { stdout: \"installed {{ want }}\", stdout_not: \"x {{ want | regex_escape }}\" }\n",
    )
    .expect_status(2)
    .expect_stdout("warning  runbook x: 1 lint warning\n")
    .expect_stderr(
        "warning: step `b` expect.stdout: `want` is interpolated into a regular expression without `| regex_escape` [unescaped-expect]
  --> runbooks/x.yaml:9:34
  |
9 |     expect: { stdout: \"installed {{ want }}\", stdout_not: \"x {{ want | regex_escape }}\" }
  |                                  ^
  = help: a value with `|`, `.` or `(` in it would change what matches: write {{ NAME | regex_escape }}; if it is intended, add `lint: { allow: [unescaped-expect] }` to the step

1 problem in 1 file
",
    )
    .run();
}
