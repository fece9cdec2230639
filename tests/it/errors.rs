//! Malformed runbooks, inventories and arguments, each with the exact message it must produce.
//!
//! The expected text is the whole diagnostic: a wrong line, column or caret is
//! as much a bug as a wrong message, because the operator fixing a runbook at
//! 2 a.m. goes where the error points. Every case must exit 2 (invalid input),
//! print nothing on stdout, and never panic.
use crate::support::cli::{diff, Test};

/// The inventory every case can use with `--env test`; cases about inventories bring their own.
const INVENTORY: &str = r#"
name: test
ssh:
  user: root
vars:
  weaver_home: /data/WEAVER
groups:
  app:
    vars: { http_port: 6888 }
    hosts:
      oa1: { address: 10.0.0.1 }
      oa2: { address: 10.0.0.2 }
  db:
    hosts:
      dm1: { address: 10.0.0.3 }
"#;

/// An inventory with a load balancer, for cases about steps on other hosts than the runbook's.
const LB_INVENTORY: &str = r#"
name: lb
groups:
  app:
    hosts:
      oa1: { address: 10.0.0.1 }
  lb:
    hosts:
      lb1: { address: 10.0.0.9 }
"#;

/// A valid runbook, for cases where only the inventory or the arguments are wrong.
const OK_RUNBOOK: &str = r#"
name: ok
hosts: all
steps:
  - name: a
    run: echo hi
"#;

/// A structural problem (a bad param name), a template syntax error and an
/// undefined variable in one file: every one must be reported in one pass, in
/// file order (the structural problem comes last in the file, first found).
const MIXED_PROBLEMS: &str = r#"
name: x
hosts: app
steps:
  - name: a
    run: echo {{ undefined_b }}
  - name: b
    run: echo ${#TOKEN}
params:
  1port: { default: "80" }
"#;

struct Case {
    name: &'static str,
    /// Files written under the test directory, on top of the default inventory and runbook.
    files: &'static [(&'static str, &'static str)],
    args: &'static [&'static str],
    /// The complete stderr. Texts start with a newline so they can be written flush left.
    stderr: &'static str,
}

/// Raw strings open with a newline for readability; it is not part of the text.
fn text(s: &str) -> &str {
    s.strip_prefix('\n').unwrap_or(s)
}

#[rustfmt::skip]
const CASES: &[Case] = &[
    Case {
        name: "yaml_bad_indentation",
        files: &[
            ("runbooks/x.yaml", r#"
name: x
hosts: app
steps:
  - name: a
    run: echo hi
   on: app
"#),
        ],
        args: &["x", "--env", "test", "--dry-run"],
        stderr: r#"
error: invalid YAML: while parsing a block collection, did not find expected '-' indicator
  --> runbooks/x.yaml:6:4
  |
6 |    on: app
  |    ^
  = help: check the indentation: keys of one mapping, and items of one list, must start in the same column
"#,
    },
    Case {
        name: "yaml_unclosed_quote",
        files: &[
            ("runbooks/x.yaml", r#"
name: x
hosts: app
steps:
  - name: "a
    run: echo hi
"#),
        ],
        args: &["x", "--env", "test", "--dry-run"],
        stderr: r#"
error: invalid YAML: invalid indentation in quoted scalar
  --> runbooks/x.yaml:4:11
  |
4 |   - name: "a
  |           ^
  = help: a quoted string runs until its closing quote: is one missing?
"#,
    },
    Case {
        name: "yaml_unclosed_flow_sequence",
        files: &[
            ("runbooks/x.yaml", r#"
name: x
hosts: app
steps: [ {name: a, run: b}
"#),
        ],
        args: &["x", "--env", "test", "--dry-run"],
        stderr: r#"
error: invalid YAML: while parsing a flow sequence, expected ',' or ']'
  --> runbooks/x.yaml:3:27
  |
3 | steps: [ {name: a, run: b}
  |                           ^
  = help: the `[` at line 3, column 8 needs a closing `]`, and items inside it are separated by `,`
"#,
    },
    Case {
        name: "yaml_unclosed_flow_mapping",
        files: &[
            ("runbooks/x.yaml", r#"
name: x
hosts: app
steps:
  - { name: a, run: echo hi
"#),
        ],
        args: &["x", "--env", "test", "--dry-run"],
        stderr: r#"
error: invalid YAML: while parsing a flow mapping, did not find expected ',' or '}'
  --> runbooks/x.yaml:4:28
  |
4 |   - { name: a, run: echo hi
  |                            ^
  = help: the `{` at line 4, column 5 needs a closing `}`, and items inside it are separated by `,`
"#,
    },
    Case {
        name: "yaml_tab_indentation",
        files: &[
            ("runbooks/x.yaml", "name: x\nhosts: app\nsteps:\n\t- name: a\n    run: echo hi\n"),
        ],
        args: &["x", "--env", "test", "--dry-run"],
        stderr: r#"
error: invalid YAML: a tab character where YAML expects spaces
  --> runbooks/x.yaml:4:1
  |
4 |  - name: a
  | ^
  = help: YAML indentation must use spaces: replace the tab with spaces
"#,
    },
    Case {
        name: "yaml_unknown_alias",
        files: &[
            ("runbooks/x.yaml", r#"
name: x
hosts: app
steps:
  - name: a
    run: *cmd
"#),
        ],
        args: &["x", "--env", "test", "--dry-run"],
        stderr: r#"
error: invalid YAML: alias `*cmd` refers to no anchor `&cmd` defined before it
  --> runbooks/x.yaml:5:10
  |
5 |     run: *cmd
  |          ^^^^
"#,
    },
    Case {
        name: "yaml_duplicate_key",
        files: &[
            ("runbooks/x.yaml", r#"
name: x
hosts: app
steps:
  - name: a
    run: echo hi
name: y
"#),
        ],
        args: &["x", "--env", "test", "--dry-run"],
        stderr: r#"
error: duplicate key `name` (first given at line 1)
  --> runbooks/x.yaml:6:1
  |
6 | name: y
  | ^^^^
"#,
    },
    Case {
        name: "yaml_duplicate_key_in_step",
        files: &[
            ("runbooks/x.yaml", r#"
name: x
hosts: app
steps:
  - name: a
    run: echo hi
    run: echo again
"#),
        ],
        args: &["x", "--env", "test", "--dry-run"],
        stderr: r#"
error: duplicate key `run` (first given at line 5)
  --> runbooks/x.yaml:6:5
  |
6 |     run: echo again
  |     ^^^
"#,
    },
    Case {
        name: "yaml_second_document",
        files: &[
            ("runbooks/x.yaml", r#"
name: x
hosts: app
steps:
  - name: a
    run: echo hi
---
name: y
"#),
        ],
        args: &["x", "--env", "test", "--dry-run"],
        stderr: r#"
error: a second YAML document (`---`) in the same file
  --> runbooks/x.yaml:6:1
  |
6 | ---
  | ^^^
  = help: keep one runbook or inventory per file
"#,
    },
    Case {
        name: "empty_runbook",
        files: &[
            ("runbooks/x.yaml", ""),
        ],
        args: &["x", "--env", "test", "--dry-run"],
        stderr: r#"
error: the runbook is empty: expected a mapping with `name` and `steps`
  --> runbooks/x.yaml:1:1
"#,
    },
    Case {
        name: "comment_only_runbook",
        files: &[
            ("runbooks/x.yaml", r#"
# nothing here yet
"#),
        ],
        args: &["x", "--env", "test", "--dry-run"],
        stderr: r#"
error: the runbook is empty: expected a mapping with `name` and `steps`
  --> runbooks/x.yaml:1:1
  |
1 | # nothing here yet
  | ^
"#,
    },
    Case {
        name: "unknown_step_field_rollbak",
        files: &[
            ("runbooks/x.yaml", r#"
name: x
hosts: app
steps:
  - name: a
    run: echo hi
    rollbak: echo undo
"#),
        ],
        args: &["x", "--env", "test", "--dry-run"],
        stderr: r#"
error: unknown field `rollbak` in a step, did you mean `rollback`?
  --> runbooks/x.yaml:6:5
  |
6 |     rollbak: echo undo
  |     ^^^^^^^
  = help: expected one of: name, on, run, script, upload, manual, as, cwd, env, stdin, when, capture, expect, check, retries, delay, timeout, confirm, rollback, on_failure, local, service, lint
"#,
    },
    Case {
        name: "unknown_step_field_tiemout",
        files: &[
            ("runbooks/x.yaml", r#"
name: x
hosts: app
steps:
  - name: a
    run: echo hi
    tiemout: 5m
"#),
        ],
        args: &["x", "--env", "test", "--dry-run"],
        stderr: r#"
error: unknown field `tiemout` in a step, did you mean `timeout`?
  --> runbooks/x.yaml:6:5
  |
6 |     tiemout: 5m
  |     ^^^^^^^
  = help: expected one of: name, on, run, script, upload, manual, as, cwd, env, stdin, when, capture, expect, check, retries, delay, timeout, confirm, rollback, on_failure, local, service, lint
"#,
    },
    Case {
        name: "unknown_top_level_field",
        files: &[
            ("runbooks/x.yaml", r#"
name: x
hosts: app
descripton: Restart things
steps:
  - name: a
    run: echo hi
"#),
        ],
        args: &["x", "--env", "test", "--dry-run"],
        stderr: r#"
error: unknown field `descripton` in the runbook, did you mean `description`?
  --> runbooks/x.yaml:3:1
  |
3 | descripton: Restart things
  | ^^^^^^^^^^
  = help: expected one of: name, description, version, hosts, serial, params, vars, steps, rollback
"#,
    },
    Case {
        name: "steps_not_a_list",
        files: &[
            ("runbooks/x.yaml", r#"
name: x
hosts: app
steps:
  name: a
  run: echo hi
"#),
        ],
        args: &["x", "--env", "test", "--dry-run"],
        stderr: r#"
error: expected a list of steps for `steps`, found a mapping
  --> runbooks/x.yaml:4:3
  |
4 |   name: a
  |   ^
  = help: start each step with `- `, like `  - name: Stop the service`
"#,
    },
    Case {
        name: "steps_empty_list",
        files: &[
            ("runbooks/x.yaml", r#"
name: x
hosts: app
steps: []
"#),
        ],
        args: &["x", "--env", "test", "--dry-run"],
        stderr: r#"
error: the runbook has no steps: expected a list of steps
  --> runbooks/x.yaml:3:8
  |
3 | steps: []
  |        ^^
"#,
    },
    Case {
        name: "retries_is_a_string",
        files: &[
            ("runbooks/x.yaml", r#"
name: x
hosts: app
steps:
  - name: a
    check: test -f /x
    retries: "five"
"#),
        ],
        args: &["x", "--env", "test", "--dry-run"],
        stderr: r#"
error: expected a number of retries, found a string
  --> runbooks/x.yaml:6:14
  |
6 |     retries: "five"
  |              ^^^^^^
"#,
    },
    Case {
        name: "name_is_a_list",
        files: &[
            ("runbooks/x.yaml", r#"
name: [x]
hosts: app
steps:
  - name: a
    run: echo hi
"#),
        ],
        args: &["x", "--env", "test", "--dry-run"],
        stderr: r#"
error: expected a string for the runbook `name`, found a list
  --> runbooks/x.yaml:1:7
  |
1 | name: [x]
  |       ^^^
"#,
    },
    Case {
        name: "missing_runbook_name",
        files: &[
            ("runbooks/x.yaml", r#"
hosts: app
steps:
  - name: a
    run: echo hi
"#),
        ],
        args: &["x", "--env", "test", "--dry-run"],
        stderr: r#"
error: missing field `name` in the runbook
  --> runbooks/x.yaml:1:1
  |
1 | hosts: app
  | ^
"#,
    },
    Case {
        name: "step_without_name",
        files: &[
            ("runbooks/x.yaml", r#"
name: x
hosts: app
steps:
  - run: echo hi
"#),
        ],
        args: &["x", "--env", "test", "--dry-run"],
        stderr: r#"
error: missing field `name` in a step
  --> runbooks/x.yaml:4:5
  |
4 |   - run: echo hi
  |     ^
"#,
    },
    Case {
        name: "step_without_action",
        files: &[
            ("runbooks/x.yaml", r#"
name: x
hosts: app
steps:
  - name: a
    cwd: /tmp
"#),
        ],
        args: &["x", "--env", "test", "--dry-run"],
        stderr: r#"
error: step `a` has no action: expected one of `run`, `script`, `upload`, `manual` (or only a `check`)
  --> runbooks/x.yaml:4:5
  |
4 |   - name: a
  |     ^
"#,
    },
    Case {
        name: "step_with_two_actions",
        files: &[
            ("runbooks/x.yaml", r#"
name: x
hosts: app
steps:
  - name: a
    run: echo hi
    script: echo hi
"#),
        ],
        args: &["x", "--env", "test", "--dry-run"],
        stderr: r#"
error: step `a` has two actions, `run` and `script`: expected exactly one
  --> runbooks/x.yaml:6:5
  |
6 |     script: echo hi
  |     ^^^^^^
  = help: split it into two steps
"#,
    },
    Case {
        name: "duplicate_step_names",
        files: &[
            ("runbooks/x.yaml", r#"
name: x
hosts: app
steps:
  - name: a
    run: echo hi
  - name: b
    run: echo b
  - name: a
    run: echo again
"#),
        ],
        args: &["x", "--env", "test", "--dry-run"],
        stderr: r#"
error: duplicate step name `a` (first used at line 4): step names must be unique
  --> runbooks/x.yaml:8:11
  |
8 |   - name: a
  |           ^
"#,
    },
    Case {
        name: "unknown_host_group_with_suggestion",
        files: &[
            ("runbooks/x.yaml", r#"
name: x
hosts: ap
steps:
  - name: a
    run: echo hi
"#),
        ],
        args: &["x", "--env", "test", "--dry-run"],
        stderr: r#"
error: unknown group or host `ap` in inventory `test`, did you mean `app`?
  --> runbooks/x.yaml:2:8
  |
2 | hosts: ap
  |        ^^
"#,
    },
    Case {
        name: "unknown_host_in_on_pattern",
        files: &[
            ("runbooks/x.yaml", r#"
name: x
hosts: app
steps:
  - name: a
    run: echo hi
  - name: b
    on: app:dm2
    run: echo b
"#),
        ],
        args: &["x", "--env", "test", "--dry-run"],
        stderr: r#"
error: unknown group or host `dm2` in inventory `test`, did you mean `dm1`?
  --> runbooks/x.yaml:7:13
  |
7 |     on: app:dm2
  |             ^^^
"#,
    },
    Case {
        name: "on_pattern_dangling_ampersand",
        files: &[
            ("runbooks/x.yaml", r#"
name: x
hosts: app
steps:
  - name: a
    run: echo hi
  - name: b
    on: "app:&"
    run: echo b
"#),
        ],
        args: &["x", "--env", "test", "--dry-run"],
        stderr: r#"
error: `&` with no name after it in host pattern `app:&`: expected a group or host name, like `&db`
  --> runbooks/x.yaml:7:14
  |
7 |     on: "app:&"
  |              ^
"#,
    },
    Case {
        name: "on_pattern_empty",
        files: &[
            ("runbooks/x.yaml", r#"
name: x
hosts: app
steps:
  - name: a
    run: echo hi
  - name: b
    on: ":"
    run: echo b
"#),
        ],
        args: &["x", "--env", "test", "--dry-run"],
        stderr: r#"
error: empty host pattern `:`: expected group or host names
  --> runbooks/x.yaml:7:9
  |
7 |     on: ":"
  |         ^^^
"#,
    },
    Case {
        name: "no_hosts_anywhere",
        files: &[
            ("runbooks/x.yaml", r#"
name: x
steps:
  - name: a
    run: echo hi
"#),
        ],
        args: &["x", "--env", "test", "--dry-run"],
        stderr: r#"
error: step `a` has no hosts: set `hosts:` at the top of the runbook or `on:` in the step
  --> runbooks/x.yaml:3:5
  |
3 |   - name: a
  |     ^
"#,
    },
    Case {
        name: "missing_required_param",
        files: &[
            ("runbooks/x.yaml", r#"
name: x
hosts: app
params:
  package: { required: true, description: "upgrade zip" }
steps:
  - name: a
    run: unzip {{ package | quote }}
"#),
        ],
        args: &["x", "--env", "test", "--dry-run"],
        stderr: r#"
error: missing required param `package` (upgrade zip): pass it with -e package=VALUE
  --> runbooks/x.yaml:4:3
  |
4 |   package: { required: true, description: "upgrade zip" }
  |   ^^^^^^^
"#,
    },
    Case {
        name: "extra_param_not_declared",
        files: &[
            ("runbooks/x.yaml", r#"
name: x
hosts: app
params:
  package: { default: a.zip }
steps:
  - name: a
    run: unzip {{ package | quote }}
"#),
        ],
        args: &["x", "--env", "test", "--dry-run", "-e", "pakage=b.zip"],
        stderr: r#"
error: -e pakage: runbook `x` has no param `pakage`, did you mean `package`? (params: package)
"#,
    },
    Case {
        name: "extra_param_without_value",
        files: &[
            ("runbooks/x.yaml", r#"
name: x
hosts: app
params:
  package: { default: a.zip }
steps:
  - name: a
    run: unzip {{ package | quote }}
"#),
        ],
        args: &["x", "--env", "test", "--dry-run", "-e", "package"],
        stderr: r#"
error: -e package: expected KEY=VALUE
"#,
    },
    Case {
        name: "param_value_not_in_choices",
        files: &[
            ("runbooks/x.yaml", r#"
name: x
hosts: app
params:
  mode: { default: online, choices: [online, offline] }
steps:
  - name: a
    run: echo {{ mode }}
"#),
        ],
        args: &["x", "--env", "test", "--dry-run", "-e", "mode=ofline"],
        stderr: r#"
error: -e mode: `ofline` is not one of the choices: online, offline, did you mean `offline`?
"#,
    },
    Case {
        name: "int_param_given_text",
        files: &[
            ("runbooks/x.yaml", r#"
name: x
hosts: app
params:
  keep: { default: 3, type: int }
steps:
  - name: a
    run: echo {{ keep }}
"#),
        ],
        args: &["x", "--env", "test", "--dry-run", "-e", "keep=abc"],
        stderr: r#"
error: -e keep: `abc` is not an integer
"#,
    },
    Case {
        name: "secret_param_given_with_e",
        files: &[
            ("runbooks/x.yaml", r#"
name: x
hosts: app
params:
  db_pass: { secret: true }
steps:
  - name: a
    run: dmctl
    stdin: "{{ db_pass }}"
"#),
        ],
        args: &["x", "--env", "test", "--dry-run", "-e", "db_pass=hunter2"],
        stderr: r#"
error: -e db_pass: `db_pass` is a secret param and cannot be given on the command line (it would show in `ps` and the shell history); set OPSRUN_SECRET_DB_PASS or answer the prompt
"#,
    },
    Case {
        name: "default_not_in_choices",
        files: &[
            ("runbooks/x.yaml", r#"
name: x
hosts: app
params:
  mode: { default: onlin, choices: [online, offline] }
steps:
  - name: a
    run: echo hi
"#),
        ],
        args: &["x", "--env", "test", "--dry-run"],
        stderr: r#"
error: default of param `mode`: `onlin` is not one of the choices: online, offline, did you mean `online`?
  --> runbooks/x.yaml:4:20
  |
4 |   mode: { default: onlin, choices: [online, offline] }
  |                    ^^^^^
"#,
    },
    Case {
        name: "param_required_given_as_yes",
        files: &[
            ("runbooks/x.yaml", r#"
name: x
hosts: app
params:
  package: { required: yes }
steps:
  - name: a
    run: echo hi
"#),
        ],
        args: &["x", "--env", "test", "--dry-run"],
        stderr: r#"
error: expected `true` or `false` for `required`, found a string
  --> runbooks/x.yaml:4:24
  |
4 |   package: { required: yes }
  |                        ^^^
  = help: `yes` is a string in YAML 1.2: write `true`
"#,
    },
    Case {
        name: "unknown_param_type",
        files: &[
            ("runbooks/x.yaml", r#"
name: x
hosts: app
params:
  ratio: { type: float }
steps:
  - name: a
    run: echo hi
"#),
        ],
        args: &["x", "--env", "test", "--dry-run"],
        stderr: r#"
error: unknown param type `float`
  --> runbooks/x.yaml:4:18
  |
4 |   ratio: { type: float }
  |                  ^^^^^
  = help: expected one of: string, int, bool
"#,
    },
    Case {
        name: "unknown_lint_name",
        files: &[
            ("runbooks/x.yaml", r#"
name: x
hosts: app
steps:
  - name: a
    run: ps -ef | grep java
    lint: { allow: [ps-grpe] }
"#),
        ],
        args: &["x", "--env", "test", "--dry-run"],
        stderr: r#"
error: unknown lint `ps-grpe`, did you mean `ps-grep`?
  --> runbooks/x.yaml:6:21
  |
6 |     lint: { allow: [ps-grpe] }
  |                     ^^^^^^^
  = help: expected one of: interactive, tail-f, bare-su, ps-grep, tar-exclude-order, date-drift, password-argv, non-ascii, unquoted-param, secret-argv, service-not-restarted, service-without-rollback, unescaped-expect
"#,
    },
    Case {
        name: "template_comment_opened_by_shell_length",
        files: &[
            ("runbooks/x.yaml", r#"
name: x
hosts: app
steps:
  - name: a
    run: test ${#TOKEN} -gt 0
"#),
        ],
        args: &["x", "--env", "test", "--dry-run"],
        stderr: r#"
error: template syntax error: unexpected end of comment
  --> runbooks/x.yaml:5:16
  |
5 |     run: test ${#TOKEN} -gt 0
  |                ^^
  = help: `{#` opens a template comment: for the shell's `${#VAR}` write `${{ '{#' }}VAR}`, or wrap the text in `{% raw %}...{% endraw %}`
"#,
    },
    Case {
        name: "template_comment_opened_in_a_script",
        files: &[
            ("runbooks/x.yaml", r#"
name: x
hosts: app
steps:
  - name: a
    script: |
      TOKEN=$(cat)
      if [ ${#TOKEN} -lt 8 ]; then exit 1; fi
"#),
        ],
        args: &["x", "--env", "test", "--dry-run"],
        stderr: r#"
error: template syntax error: unexpected end of comment
  --> runbooks/x.yaml:7:13
  |
7 |       if [ ${#TOKEN} -lt 8 ]; then exit 1; fi
  |             ^^
  = help: `{#` opens a template comment: for the shell's `${#VAR}` write `${{ '{#' }}VAR}`, or wrap the text in `{% raw %}...{% endraw %}`
"#,
    },
    Case {
        name: "every_template_syntax_error_of_a_file_at_once",
        files: &[
            ("runbooks/x.yaml", r#"
name: x
hosts: app
steps:
  - name: a
    run: echo {{ weaver_home
  - name: b
    run: echo ok
    check: test ${#TOKEN} -gt 0
"#),
        ],
        args: &["x", "--env", "test", "--dry-run"],
        stderr: r#"
error: template syntax error: unexpected end of input, expected end of variable block
  --> runbooks/x.yaml:5:10
  |
5 |     run: echo {{ weaver_home
  |          ^^^^^^^^^^^^^^^^^^^

error: template syntax error: unexpected end of comment
  --> runbooks/x.yaml:8:18
  |
8 |     check: test ${#TOKEN} -gt 0
  |                  ^^
  = help: `{#` opens a template comment: for the shell's `${#VAR}` write `${{ '{#' }}VAR}`, or wrap the text in `{% raw %}...{% endraw %}`
"#,
    },
    Case {
        name: "every_undefined_variable_of_a_file_at_once",
        files: &[
            ("runbooks/x.yaml", r#"
name: x
hosts: app
vars:
  backup: "{{ weaver_hme }}/bak.tgz"
steps:
  - name: a
    run: ls {{ weaver_hom }} {{ http_prot }}
  - name: b
    run: echo {{ nope }}
    check: test -f {{ backup }}
"#),
        ],
        args: &["x", "--env", "test", "--dry-run"],
        stderr: r#"
error: in step `a` on host `oa1`: undefined variable `weaver_hom`, did you mean `weaver_home`?
  --> runbooks/x.yaml:7:16
  |
7 |     run: ls {{ weaver_hom }} {{ http_prot }}
  |                ^^^^^^^^^^

error: in step `a` on host `oa1`: undefined variable `http_prot`, did you mean `http_port`?
  --> runbooks/x.yaml:7:33
  |
7 |     run: ls {{ weaver_hom }} {{ http_prot }}
  |                                 ^^^^^^^^^

error: in step `b` on host `oa1`: undefined variable `nope`
  --> runbooks/x.yaml:9:18
  |
9 |     run: echo {{ nope }}
  |                  ^^^^

error: in step `b` on host `oa1`: variable `backup` reads undefined variable `weaver_hme`, did you mean `weaver_home`?
  --> runbooks/x.yaml:4:15
  |
4 |   backup: "{{ weaver_hme }}/bak.tgz"
  |               ^^^^^^^^^^
"#,
    },
    Case {
        name: "expect_is_a_template",
        files: &[
            ("runbooks/x.yaml", r#"
name: x
hosts: app
steps:
  - name: a
    run: echo pid 1
    expect: { stdout_not: "pid {{ old_pdi }}$" }
"#),
        ],
        args: &["x", "--env", "test", "--dry-run"],
        stderr: r#"
error: in step `a` on host `oa1`: undefined variable `old_pdi`
  --> runbooks/x.yaml:6:35
  |
6 |     expect: { stdout_not: "pid {{ old_pdi }}$" }
  |                                   ^^^^^^^
"#,
    },
    Case {
        name: "expect_invalid_once_rendered",
        files: &[
            ("runbooks/x.yaml", r#"
name: x
hosts: app
steps:
  - name: a
    run: ls /data
    expect: { stdout: "{{ weaver_home }}(" }
"#),
        ],
        args: &["x", "--env", "test", "--dry-run"],
        stderr: r#"
error: in step `a` on host `oa1`: invalid regular expression for `expect.stdout` once rendered (`/data/WEAVER(`): unclosed group
  --> runbooks/x.yaml:6:24
  |
6 |     expect: { stdout: "{{ weaver_home }}(" }
  |                        ^^^^^^^^^^^^^^^^^^
"#,
    },
    Case {
        name: "template_syntax_error",
        files: &[
            ("runbooks/x.yaml", r#"
name: x
hosts: app
steps:
  - name: a
    run: echo {{ weaver_home
"#),
        ],
        args: &["x", "--env", "test", "--dry-run"],
        stderr: r#"
error: template syntax error: unexpected end of input, expected end of variable block
  --> runbooks/x.yaml:5:10
  |
5 |     run: echo {{ weaver_home
  |          ^^^^^^^^^^^^^^^^^^^
"#,
    },
    Case {
        name: "template_syntax_error_in_block",
        files: &[
            ("runbooks/x.yaml", r#"
name: x
hosts: app
steps:
  - name: a
    script: |
      cd /tmp
      echo {{ weaver_home }
      ls
"#),
        ],
        args: &["x", "--env", "test", "--dry-run"],
        stderr: r#"
error: template syntax error: unexpected `}`, expected end of variable block
  --> runbooks/x.yaml:7:7
  |
7 |       echo {{ weaver_home }
  |       ^^^^^^^^^^^^^^^^^^^^^
"#,
    },
    Case {
        name: "when_syntax_error",
        files: &[
            ("runbooks/x.yaml", r#"
name: x
hosts: app
steps:
  - name: a
    run: echo hi
    when: http_port ==
"#),
        ],
        args: &["x", "--env", "test", "--dry-run"],
        stderr: r#"
error: `when` expression syntax error: unexpected end of expression
  --> runbooks/x.yaml:6:11
  |
6 |     when: http_port ==
  |           ^^^^^^^^^^^^
"#,
    },
    Case {
        name: "when_written_as_template",
        files: &[
            ("runbooks/x.yaml", r#"
name: x
hosts: app
steps:
  - name: a
    run: echo hi
    when: "{{ http_port }} == 6888"
"#),
        ],
        args: &["x", "--env", "test", "--dry-run"],
        stderr: r#"
error: `when` expression syntax error: unexpected `}`, expected `:`
  --> runbooks/x.yaml:6:11
  |
6 |     when: "{{ http_port }} == 6888"
  |           ^^^^^^^^^^^^^^^^^^^^^^^^^
  = help: `when` is an expression, not a template: write `http_port == 6888`, without `{{ }}`
"#,
    },
    Case {
        name: "undefined_variable_with_suggestion",
        files: &[
            ("runbooks/x.yaml", r#"
name: x
hosts: app
steps:
  - name: a
    run: ls {{ weaver_hom }}/ecology
"#),
        ],
        args: &["x", "--env", "test", "--dry-run"],
        stderr: r#"
error: in step `a` on host `oa1`: undefined variable `weaver_hom`, did you mean `weaver_home`?
  --> runbooks/x.yaml:5:16
  |
5 |     run: ls {{ weaver_hom }}/ecology
  |                ^^^^^^^^^^
"#,
    },
    Case {
        name: "undefined_variable_in_block",
        files: &[
            ("runbooks/x.yaml", r#"
name: x
hosts: app
steps:
  - name: a
    script: |
      cd {{ weaver_home }}
      tar czf {{ backup_file | quote }} ecology
"#),
        ],
        args: &["x", "--env", "test", "--dry-run"],
        stderr: r#"
error: in step `a` on host `oa1`: undefined variable `backup_file`
  --> runbooks/x.yaml:7:18
  |
7 |       tar czf {{ backup_file | quote }} ecology
  |                  ^^^^^^^^^^^
"#,
    },
    Case {
        name: "undefined_variable_in_var",
        files: &[
            ("runbooks/x.yaml", r#"
name: x
hosts: app
vars:
  backup: "{{ weaver_hme }}/bak.tgz"
steps:
  - name: a
    run: ls {{ backup }}
"#),
        ],
        args: &["x", "--env", "test", "--dry-run"],
        stderr: r#"
error: in step `a` on host `oa1`: variable `backup` reads undefined variable `weaver_hme`, did you mean `weaver_home`?
  --> runbooks/x.yaml:4:15
  |
4 |   backup: "{{ weaver_hme }}/bak.tgz"
  |               ^^^^^^^^^^
"#,
    },
    Case {
        name: "attribute_typo",
        files: &[
            ("runbooks/x.yaml", r#"
name: x
hosts: app
steps:
  - name: a
    run: echo {{ host.nmae }}
"#),
        ],
        args: &["x", "--env", "test", "--dry-run"],
        stderr: r#"
error: in step `a` on host `oa1`: `host` has no attribute `nmae`, did you mean `name`?
  --> runbooks/x.yaml:5:18
  |
5 |     run: echo {{ host.nmae }}
  |                  ^^^^^^^^^
"#,
    },
    Case {
        // Only `undefined_one` was reported; an optional attribute read with `default` is fine.
        name: "attribute_typo_next_to_an_undefined_variable",
        files: &[
            ("runbooks/x.yaml", r#"
name: x
hosts: app
steps:
  - name: a
    run: echo {{ host.nmae }} {{ undefined_one }} {{ host.opt | default('') }}
"#),
        ],
        args: &["x", "--env", "test", "--dry-run"],
        stderr: r#"
error: in step `a` on host `oa1`: `host` has no attribute `nmae`, did you mean `name`?
  --> runbooks/x.yaml:5:18
  |
5 |     run: echo {{ host.nmae }} {{ undefined_one }} {{ host.opt | default('') }}
  |                  ^^^^^^^^^

error: in step `a` on host `oa1`: undefined variable `undefined_one`
  --> runbooks/x.yaml:5:34
  |
5 |     run: echo {{ host.nmae }} {{ undefined_one }} {{ host.opt | default('') }}
  |                                  ^^^^^^^^^^^^^
"#,
    },
    Case {
        // The `{#` syntax error hid the undefined variables of the other templates.
        name: "template_syntax_error_with_undefined_variables_elsewhere",
        files: &[
            ("runbooks/x.yaml", r#"
name: x
hosts: app
steps:
  - name: a
    run: echo ${#TOKEN}
  - name: b
    run: echo {{ undefined_b }} {{ host.nmae }}
"#),
        ],
        args: &["x", "--env", "test", "--dry-run"],
        stderr: r#"
error: template syntax error: unexpected end of comment
  --> runbooks/x.yaml:5:16
  |
5 |     run: echo ${#TOKEN}
  |                ^^
  = help: `{#` opens a template comment: for the shell's `${#VAR}` write `${{ '{#' }}VAR}`, or wrap the text in `{% raw %}...{% endraw %}`

error: in step `b` on host `oa1`: undefined variable `undefined_b`
  --> runbooks/x.yaml:7:18
  |
7 |     run: echo {{ undefined_b }} {{ host.nmae }}
  |                  ^^^^^^^^^^^

error: in step `b` on host `oa1`: `host` has no attribute `nmae`, did you mean `name`?
  --> runbooks/x.yaml:7:36
  |
7 |     run: echo {{ undefined_b }} {{ host.nmae }}
  |                                    ^^^^^^^^^
"#,
    },
    Case {
        name: "bad_duration",
        files: &[
            ("runbooks/x.yaml", r#"
name: x
hosts: app
steps:
  - name: a
    run: echo hi
    timeout: 5 min
"#),
        ],
        args: &["x", "--env", "test", "--dry-run"],
        stderr: r#"
error: invalid duration `5 min`: expected a number with a unit (ms, s, m, h, d), like 30s, 5m or 1h30m
  --> runbooks/x.yaml:6:14
  |
6 |     timeout: 5 min
  |              ^^^^^
"#,
    },
    Case {
        name: "bad_serial_zero",
        files: &[
            ("runbooks/x.yaml", r#"
name: x
hosts: app
serial: 0
steps:
  - name: a
    run: echo hi
"#),
        ],
        args: &["x", "--env", "test", "--dry-run"],
        stderr: r#"
error: invalid `serial` value `0`: expected a number of hosts per batch (1 or more) or a percentage from 1% to 100% (like "30%")
  --> runbooks/x.yaml:3:9
  |
3 | serial: 0
  |         ^
"#,
    },
    Case {
        name: "bad_serial_percent",
        files: &[
            ("runbooks/x.yaml", r#"
name: x
hosts: app
serial: "150%"
steps:
  - name: a
    run: echo hi
"#),
        ],
        args: &["x", "--env", "test", "--dry-run"],
        stderr: r#"
error: invalid `serial` value `150%`: expected a number of hosts per batch (1 or more) or a percentage from 1% to 100% (like "30%")
  --> runbooks/x.yaml:3:9
  |
3 | serial: "150%"
  |         ^^^^^^
"#,
    },
    Case {
        name: "bad_on_failure",
        files: &[
            ("runbooks/x.yaml", r#"
name: x
hosts: app
steps:
  - name: a
    run: echo hi
    on_failure: contine
"#),
        ],
        args: &["x", "--env", "test", "--dry-run"],
        stderr: r#"
error: invalid `on_failure` value `contine`, did you mean `continue`?
  --> runbooks/x.yaml:6:17
  |
6 |     on_failure: contine
  |                 ^^^^^^^
  = help: expected one of: rollback, abort, continue
"#,
    },
    Case {
        name: "bad_regex_in_capture",
        files: &[
            ("runbooks/x.yaml", r#"
name: x
hosts: app
steps:
  - name: a
    run: echo hi
    capture: { name: version, regex: "ver(" }
"#),
        ],
        args: &["x", "--env", "test", "--dry-run"],
        stderr: r#"
error: invalid regular expression for `capture.regex`: unclosed group
  --> runbooks/x.yaml:6:38
  |
6 |     capture: { name: version, regex: "ver(" }
  |                                      ^^^^^^^
"#,
    },
    Case {
        name: "bad_regex_in_expect",
        files: &[
            ("runbooks/x.yaml", r#"
name: x
hosts: app
steps:
  - name: a
    run: echo hi
    expect: { stdout: "[a-" }
"#),
        ],
        args: &["x", "--env", "test", "--dry-run"],
        stderr: r#"
error: invalid regular expression for `expect.stdout`: unclosed character class
  --> runbooks/x.yaml:6:23
  |
6 |     expect: { stdout: "[a-" }
  |                       ^^^^^^
"#,
    },
    Case {
        name: "exit_code_out_of_range",
        files: &[
            ("runbooks/x.yaml", r#"
name: x
hosts: app
steps:
  - name: a
    run: echo hi
    expect: { exit: [0, 256] }
"#),
        ],
        args: &["x", "--env", "test", "--dry-run"],
        stderr: r#"
error: exit code 256 is out of range 0-255
  --> runbooks/x.yaml:6:25
  |
6 |     expect: { exit: [0, 256] }
  |                         ^^^
"#,
    },
    Case {
        name: "invalid_file_mode",
        files: &[
            ("runbooks/x.yaml", r#"
name: x
hosts: app
steps:
  - name: a
    upload: { src: a.zip, dest: /tmp/, mode: "0964" }
"#),
        ],
        args: &["x", "--env", "test", "--dry-run"],
        stderr: r#"
error: invalid file mode `0964`: expected octal digits like "0644"
  --> runbooks/x.yaml:5:46
  |
5 |     upload: { src: a.zip, dest: /tmp/, mode: "0964" }
  |                                              ^^^^^^^
"#,
    },
    Case {
        name: "upload_without_dest",
        files: &[
            ("runbooks/x.yaml", r#"
name: x
hosts: app
steps:
  - name: a
    upload: { src: a.zip }
"#),
        ],
        args: &["x", "--env", "test", "--dry-run"],
        stderr: r#"
error: missing field `dest` in `upload`
  --> runbooks/x.yaml:5:13
  |
5 |     upload: { src: a.zip }
  |             ^
"#,
    },
    Case {
        name: "script_with_stdin",
        files: &[
            ("runbooks/x.yaml", r#"
name: x
hosts: app
steps:
  - name: a
    script: cat
    stdin: data
"#),
        ],
        args: &["x", "--env", "test", "--dry-run"],
        stderr: r#"
error: step `a`: `stdin` cannot be used with `script`: the script itself is sent on stdin
  --> runbooks/x.yaml:6:5
  |
6 |     stdin: data
  |     ^^^^^
"#,
    },
    Case {
        name: "retries_without_check",
        files: &[
            ("runbooks/x.yaml", r#"
name: x
hosts: app
steps:
  - name: a
    run: echo hi
    retries: 3
"#),
        ],
        args: &["x", "--env", "test", "--dry-run"],
        stderr: r#"
error: step `a`: `retries` only applies to a `check`: add one, or remove `retries`
  --> runbooks/x.yaml:6:5
  |
6 |     retries: 3
  |     ^^^^^^^
"#,
    },
    Case {
        name: "confirm_is_a_number",
        files: &[
            ("runbooks/x.yaml", r#"
name: x
hosts: app
steps:
  - name: a
    run: echo hi
    confirm: 3
"#),
        ],
        args: &["x", "--env", "test", "--dry-run"],
        stderr: r#"
error: expected `true` or a question for `confirm`, found an integer
  --> runbooks/x.yaml:6:14
  |
6 |     confirm: 3
  |              ^
"#,
    },
    Case {
        name: "invalid_capture_name",
        files: &[
            ("runbooks/x.yaml", r#"
name: x
hosts: app
steps:
  - name: a
    run: echo hi
    capture: my-var
"#),
        ],
        args: &["x", "--env", "test", "--dry-run"],
        stderr: r#"
error: invalid capture name `my-var`: expected ASCII letters, digits and `_`, not starting with a digit
  --> runbooks/x.yaml:6:14
  |
6 |     capture: my-var
  |              ^^^^^^
"#,
    },
    Case {
        name: "bad_service_state",
        files: &[
            ("runbooks/x.yaml", r#"
name: x
hosts: app
steps:
  - name: a
    run: echo hi
    service: { name: tomcat, state: stoped }
"#),
        ],
        args: &["x", "--env", "test", "--dry-run"],
        stderr: r#"
error: invalid service state `stoped`, did you mean `stopped`?
  --> runbooks/x.yaml:6:37
  |
6 |     service: { name: tomcat, state: stoped }
  |                                     ^^^^^^
  = help: expected `stopped` or `started`
"#,
    },
    Case {
        name: "local_step_with_as",
        files: &[
            ("runbooks/x.yaml", r#"
name: x
hosts: app
steps:
  - name: a
    run: echo hi
    local: true
    as: root
"#),
        ],
        args: &["x", "--env", "test", "--dry-run"],
        stderr: r#"
error: step `a`: `as` cannot be used with `local: true` (opsrun does not switch users on the control machine)
  --> runbooks/x.yaml:7:5
  |
7 |     as: root
  |     ^^
"#,
    },
    Case {
        name: "manual_step_with_rollback",
        files: &[
            ("runbooks/x.yaml", r#"
name: x
hosts: app
steps:
  - name: a
    manual: Take the snapshot in the console.
    rollback: echo undo
"#),
        ],
        args: &["x", "--env", "test", "--dry-run"],
        stderr: r#"
error: step `a`: `rollback` cannot be used with `manual`: opsrun never undoes a step done by hand; write the way back in the `manual` text, or in a step of its own
  --> runbooks/x.yaml:6:5
  |
6 |     rollback: echo undo
  |     ^^^^^^^^
"#,
    },
    Case {
        name: "param_also_a_var",
        files: &[
            ("runbooks/x.yaml", r#"
name: x
hosts: app
params:
  home: { default: /x }
vars:
  home: /y
steps:
  - name: a
    run: echo hi
"#),
        ],
        args: &["x", "--env", "test", "--dry-run"],
        stderr: r#"
error: `home` is both a param and a var: rename one
  --> runbooks/x.yaml:6:3
  |
6 |   home: /y
  |   ^^^^
  = help: the param `home` is declared at line 4
"#,
    },
    Case {
        name: "start_at_unknown_step",
        files: &[
            ("runbooks/x.yaml", r#"
name: x
hosts: app
steps:
  - name: a
    run: echo hi
  - name: Start app
    run: echo b
"#),
        ],
        args: &["x", "--env", "test", "--dry-run", "--start-at", "start app"],
        stderr: r#"
error: --start-at: runbook `x` has no step `start app`, did you mean `Start app`?
"#,
    },
    Case {
        name: "limit_unknown_host",
        files: &[
            ("runbooks/x.yaml", r#"
name: x
hosts: app
steps:
  - name: a
    run: echo hi
"#),
        ],
        args: &["x", "--env", "test", "--dry-run", "--limit", "oa3"],
        stderr: r#"
error: --limit: unknown group or host `oa3` in inventory `test`, did you mean `oa1`?
"#,
    },
    Case {
        name: "inventory_port_out_of_range",
        files: &[
            ("inventories/bad.yaml", r#"
groups:
  app:
    hosts:
      oa1: { address: 10.0.0.1, port: 70000 }
"#),
        ],
        args: &["ok", "--env", "bad", "--dry-run"],
        stderr: r#"
error: invalid port 70000: expected a number from 1 to 65535
  --> inventories/bad.yaml:4:39
  |
4 |       oa1: { address: 10.0.0.1, port: 70000 }
  |                                       ^^^^^
"#,
    },
    Case {
        name: "inventory_port_quoted",
        files: &[
            ("inventories/bad.yaml", r#"
groups:
  app:
    hosts:
      oa1: { address: 10.0.0.1, port: "22" }
"#),
        ],
        args: &["ok", "--env", "bad", "--dry-run"],
        stderr: r#"
error: expected a port number from 1 to 65535, found a string
  --> inventories/bad.yaml:4:39
  |
4 |       oa1: { address: 10.0.0.1, port: "22" }
  |                                       ^^^^^
  = help: write it without quotes: `port: 22`
"#,
    },
    Case {
        name: "inventory_invalid_become",
        files: &[
            ("inventories/bad.yaml", r#"
ssh:
  become: sudu
groups:
  app:
    hosts:
      oa1: {}
"#),
        ],
        args: &["ok", "--env", "bad", "--dry-run"],
        stderr: r#"
error: invalid `become` `sudu`, did you mean `sudo`?
  --> inventories/bad.yaml:2:11
  |
2 |   become: sudu
  |           ^^^^
  = help: expected `su` or `sudo`
"#,
    },
    Case {
        name: "inventory_invalid_connection",
        files: &[
            ("inventories/bad.yaml", r#"
groups:
  app:
    hosts:
      oa1: { connection: locl }
"#),
        ],
        args: &["ok", "--env", "bad", "--dry-run"],
        stderr: r#"
error: invalid `connection` `locl`, did you mean `local`?
  --> inventories/bad.yaml:4:26
  |
4 |       oa1: { connection: locl }
  |                          ^^^^
  = help: expected `ssh` or `local`
"#,
    },
    Case {
        name: "inventory_host_defined_twice_differently",
        files: &[
            ("inventories/bad.yaml", r#"
groups:
  app:
    hosts:
      oa1: { address: 10.0.0.1 }
  db:
    hosts:
      oa1: { address: 10.0.0.2 }
"#),
        ],
        args: &["ok", "--env", "bad", "--dry-run"],
        stderr: r#"
error: host `oa1` is defined differently in groups `app` and `db`
  --> inventories/bad.yaml:7:7
  |
7 |       oa1: { address: 10.0.0.2 }
  |       ^^^
  = help: define it once (line 4) and list it as `oa1: {}` or `oa1:` in other groups
"#,
    },
    Case {
        name: "inventory_group_and_host_same_name",
        files: &[
            ("inventories/bad.yaml", r#"
groups:
  app:
    hosts:
      db: { address: 10.0.0.1 }
  db:
    hosts:
      dm1: {}
"#),
        ],
        args: &["ok", "--env", "bad", "--dry-run"],
        stderr: r#"
error: `db` is both a group and a host name: host patterns would be ambiguous
  --> inventories/bad.yaml:5:3
  |
5 |   db:
  |   ^^
  = help: rename the group or the host `db` listed in group `app`
"#,
    },
    Case {
        name: "inventory_bad_confirm",
        files: &[
            ("inventories/bad.yaml", r#"
confirm: typd
groups:
  app:
    hosts:
      oa1: {}
"#),
        ],
        args: &["ok", "--env", "bad", "--dry-run"],
        stderr: r#"
error: invalid `confirm` value `typd`, did you mean `typed`?
  --> inventories/bad.yaml:1:10
  |
1 | confirm: typd
  |          ^^^^
  = help: expected one of: none, yes, typed
"#,
    },
    Case {
        name: "inventory_unknown_field",
        files: &[
            ("inventories/bad.yaml", r#"
groups:
  app:
    host:
      oa1: {}
"#),
        ],
        args: &["ok", "--env", "bad", "--dry-run"],
        stderr: r#"
error: unknown field `host` in group `app`, did you mean `hosts`?
  --> inventories/bad.yaml:3:5
  |
3 |     host:
  |     ^^^^
  = help: expected one of: vars, hosts
"#,
    },
    Case {
        name: "inventory_host_field_typo",
        files: &[
            ("inventories/bad.yaml", r#"
groups:
  app:
    hosts:
      oa1: { adress: 10.0.0.1 }
"#),
        ],
        args: &["ok", "--env", "bad", "--dry-run"],
        stderr: r#"
error: unknown field `adress` in host `oa1`, did you mean `address`?
  --> inventories/bad.yaml:4:14
  |
4 |       oa1: { adress: 10.0.0.1 }
  |              ^^^^^^
  = help: expected one of: address, port, user, connection, vars, ssh
"#,
    },
    Case {
        name: "inventory_bad_connect_timeout",
        files: &[
            ("inventories/bad.yaml", r#"
ssh:
  connect_timeout: ten seconds
groups:
  app:
    hosts:
      oa1: {}
"#),
        ],
        args: &["ok", "--env", "bad", "--dry-run"],
        stderr: r#"
error: invalid duration `ten seconds`: expected a number with a unit (ms, s, m, h, d), like 30s, 5m or 1h30m
  --> inventories/bad.yaml:2:20
  |
2 |   connect_timeout: ten seconds
  |                    ^^^^^^^^^^^
"#,
    },
    Case {
        name: "inventory_host_name_with_space",
        files: &[
            ("inventories/bad.yaml", r#"
groups:
  app:
    hosts:
      "oa 1": {}
"#),
        ],
        args: &["ok", "--env", "bad", "--dry-run"],
        stderr: r#"
error: invalid host name `oa 1`: expected letters, digits, `-`, `_` or `.`
  --> inventories/bad.yaml:4:7
  |
4 |       "oa 1": {}
  |       ^^^^^^
"#,
    },
    Case {
        name: "inventory_missing_groups",
        files: &[
            ("inventories/bad.yaml", r#"
name: bad
vars:
  a: 1
"#),
        ],
        args: &["inventory", "--env", "bad"],
        stderr: r#"
error: missing field `groups` in the inventory
  --> inventories/bad.yaml:1:1
  |
1 | name: bad
  | ^
"#,
    },
    Case {
        name: "unknown_inventory_env",
        files: &[],
        args: &["ok", "--env", "tset", "--dry-run"],
        stderr: r#"
error: no inventory for environment `tset`: `inventories/tset.yaml` does not exist; did you mean `test`?
"#,
    },
    Case {
        name: "unknown_runbook_name",
        files: &[
            ("runbooks/restart-app.yaml", r#"
name: ok
hosts: all
steps:
  - name: a
    run: echo hi
"#),
        ],
        args: &["restart-ap", "--env", "test", "--dry-run"],
        stderr: r#"
error: no runbook `restart-ap`, did you mean `restart-app`?
  looked in: runbooks/, the built-in library (`opsrun list` shows all)
"#,
    },
    Case {
        name: "run_file_not_found",
        files: &[],
        args: &["run", "runbooks/nope.yaml", "--env", "test", "--dry-run"],
        stderr: r#"
error: cannot read `runbooks/nope.yaml`: No such file or directory (os error 2)
"#,
    },
    Case {
        name: "no_env_given",
        files: &[
            ("runbooks/x.yaml", r#"
name: x
hosts: app
steps:
  - name: a
    run: echo hi
"#),
        ],
        args: &["x", "--dry-run"],
        stderr: r#"
error: no inventory: give `--env ENV` (reads inventories/ENV.yaml) or `-i FILE`
"#,
    },
    Case {
        name: "format_json_without_dry_run",
        files: &[],
        args: &["ok", "--env", "test", "--format", "json", "--yes"],
        stderr: r#"
error: --format only applies to --dry-run: add --dry-run
"#,
    },
    Case {
        name: "output_without_dry_run",
        files: &[],
        args: &["ok", "--env", "test", "--output", "plan.md", "--yes"],
        stderr: r#"
error: --output only applies to --dry-run: add --dry-run
"#,
    },
    Case {
        // `--format json` was silently ignored: the file got the Markdown plan.
        name: "format_json_with_output",
        files: &[],
        args: &["ok", "--env", "test", "--dry-run", "--format", "json", "--output", "plan.json"],
        stderr: r#"
error: --format json cannot go with --output, which writes the signed Markdown plan: to keep the JSON, redirect it (`--format json > plan.json`)
"#,
    },
    Case {
        name: "output_overwrites_an_existing_file",
        files: &[("plan.md", "the plan the change board signed\n")],
        args: &["ok", "--env", "test", "--dry-run", "--output", "plan.md"],
        stderr: r#"
error: --output plan.md: the file exists: add --force to replace it
"#,
    },
    Case {
        // A past run's log, replaced by a plan: not even with --force.
        name: "output_into_the_log_directory",
        files: &[("runs/20261122-173005Z-ok-test/log.md", "# opsrun log\n")],
        args: &["ok", "--env", "test", "--dry-run", "--force", "--output", "runs/20261122-173005Z-ok-test/log.md"],
        stderr: r#"
error: --output runs/20261122-173005Z-ok-test/log.md is inside the log directory `runs`, which holds the records of runs: write the plan elsewhere
"#,
    },
    Case {
        name: "limit_matches_none_of_the_runbook_hosts",
        files: &[
            ("runbooks/x.yaml", r#"
name: x
hosts: app
steps:
  - name: a
    run: echo hi
"#),
        ],
        args: &["x", "--env", "test", "--dry-run", "--limit", "dm1"],
        stderr: r#"
error: --limit `dm1` matches none of the hosts runbook `x` runs on (`app` in inventory `test`): there is nothing to run
"#,
    },
    Case {
        name: "limit_matches_no_host_in_a_real_run",
        files: &[
            ("runbooks/x.yaml", r#"
name: x
hosts: app
steps:
  - name: a
    run: echo hi
  - name: b
    on: "lb*"
    run: echo lb
"#),
        ],
        args: &["x", "--env", "test", "--yes", "--no-sign", "--limit", "db"],
        stderr: r#"
error: --limit `db` matches none of the hosts runbook `x` runs on (`app`, `lb*` in inventory `test`): there is nothing to run
"#,
    },
    Case {
        name: "runbook_hosts_match_no_host",
        files: &[
            ("runbooks/x.yaml", r#"
name: x
hosts: "web*"
steps:
  - name: a
    run: echo hi
"#),
        ],
        args: &["x", "--env", "test", "--dry-run"],
        stderr: r#"
error: `web*` matches no host in inventory `test`: there is nothing to run
  --> runbooks/x.yaml:2:8
  |
2 | hosts: "web*"
  |        ^^^^^^
  = help: a step's `on:` glob may match nothing (an optional group), but a run needs at least one host
"#,
    },
    Case {
        // The serial upgrade with `--limit lb1`: only the load balancer steps were left,
        // which edited nginx with no node drained, no batch gate, and "succeeded".
        name: "limit_leaves_only_the_steps_on_other_hosts",
        files: &[
            ("inventories/lb.yaml", LB_INVENTORY),
            ("runbooks/x.yaml", r#"
name: x
hosts: app
serial: 1
steps:
  - name: check
    local: true
    run: "true"
  - name: drain
    on: "lb*"
    run: echo drain
  - name: stop
    run: echo stop
"#),
        ],
        args: &["x", "--env", "lb", "--yes", "--no-sign", "--limit", "lb1"],
        stderr: r#"
error: --limit `lb1` matches none of the hosts runbook `x` runs on (`app` in inventory `lb`): only its steps on `lb*` would run
"#,
    },
    Case {
        name: "runbook_hosts_match_no_host_but_other_steps_do",
        files: &[
            ("inventories/lb.yaml", LB_INVENTORY),
            ("runbooks/x.yaml", r#"
name: x
hosts: "web*"
steps:
  - name: drain
    on: "lb*"
    run: echo drain
  - name: stop
    run: echo stop
"#),
        ],
        args: &["x", "--env", "lb", "--dry-run"],
        stderr: r#"
error: `web*` matches no host in inventory `lb`: only its steps on `lb*` would run
  --> runbooks/x.yaml:2:8
  |
2 | hosts: "web*"
  |        ^^^^^^
  = help: a step's `on:` glob may match nothing (an optional group), but the runbook's `hosts:` must match a host
"#,
    },
    Case {
        // A local-only runbook ran with "(0 hosts)" under a limit that matched nothing.
        name: "limit_matches_no_host_of_the_inventory",
        files: &[
            ("runbooks/x.yaml", r#"
name: x
steps:
  - name: a
    local: true
    run: echo hi
"#),
        ],
        args: &["x", "--env", "test", "--yes", "--no-sign", "--limit", "q*"],
        stderr: r#"
error: --limit `q*` matches no host in inventory `test`
"#,
    },
    Case {
        // Each was reported alone, one per pass: `备注`, then `1abc`, then `名字`, then the steps.
        name: "every_structural_error_of_a_file_at_once",
        files: &[
            ("runbooks/x.yaml", r#"
name: x
hosts: app
params:
  备注: { default: "" }
  1abc: {}
  名字: {}
steps:
  - name: a
    run: echo hi
    retries: 3
  - name: b
  - name: c
    manual: Do it by hand.
    rollback: echo undo
"#),
        ],
        args: &["x", "--env", "test", "--dry-run"],
        stderr: r#"
error: invalid param name `备注`: expected ASCII letters, digits and `_`, not starting with a digit
  --> runbooks/x.yaml:4:3
  |
4 |   备注: { default: "" }
  |   ^^^^

error: invalid param name `1abc`: expected ASCII letters, digits and `_`, not starting with a digit
  --> runbooks/x.yaml:5:3
  |
5 |   1abc: {}
  |   ^^^^

error: invalid param name `名字`: expected ASCII letters, digits and `_`, not starting with a digit
  --> runbooks/x.yaml:6:3
  |
6 |   名字: {}
  |   ^^^^

error: step `a`: `retries` only applies to a `check`: add one, or remove `retries`
  --> runbooks/x.yaml:10:5
   |
10 |     retries: 3
   |     ^^^^^^^

error: step `b` has no action: expected one of `run`, `script`, `upload`, `manual` (or only a `check`)
  --> runbooks/x.yaml:11:5
   |
11 |   - name: b
   |     ^

error: step `c`: `rollback` cannot be used with `manual`: opsrun never undoes a step done by hand; write the way back in the `manual` text, or in a step of its own
  --> runbooks/x.yaml:14:5
   |
14 |     rollback: echo undo
   |     ^^^^^^^^
"#,
    },
    Case {
        name: "param_name_not_ascii",
        files: &[
            ("runbooks/x.yaml", r#"
name: x
hosts: app
params:
  备注: { default: "" }
steps:
  - name: a
    run: echo hi
"#),
        ],
        args: &["x", "--env", "test", "--dry-run"],
        stderr: r#"
error: invalid param name `备注`: expected ASCII letters, digits and `_`, not starting with a digit
  --> runbooks/x.yaml:4:3
  |
4 |   备注: { default: "" }
  |   ^^^^
"#,
    },
    Case {
        // The bad param name hid both template problems: decoding stopped the run first.
        name: "structural_and_template_errors_at_once",
        files: &[("runbooks/x.yaml", MIXED_PROBLEMS)],
        args: &["x", "--env", "test", "--dry-run"],
        stderr: r#"
error: in step `a` on host `oa1`: undefined variable `undefined_b`
  --> runbooks/x.yaml:5:18
  |
5 |     run: echo {{ undefined_b }}
  |                  ^^^^^^^^^^^

error: template syntax error: unexpected end of comment
  --> runbooks/x.yaml:7:16
  |
7 |     run: echo ${#TOKEN}
  |                ^^
  = help: `{#` opens a template comment: for the shell's `${#VAR}` write `${{ '{#' }}VAR}`, or wrap the text in `{% raw %}...{% endraw %}`

error: invalid param name `1port`: expected ASCII letters, digits and `_`, not starting with a digit
  --> runbooks/x.yaml:9:3
  |
9 |   1port: { default: "80" }
  |   ^^^^^
"#,
    },
];

/// Checks the case `name` of the table: exit 2, nothing on stdout, exactly its stderr.
fn check(name: &str) {
    let case = CASES
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no case `{name}` in CASES"));
    // No signing key: clap names an argument set from the environment in its usage
    // line, and the table pins what an operator without a key configured sees.
    let mut test = Test::new()
        .no_sign_key()
        .write("inventories/test.yaml", text(INVENTORY))
        .write("runbooks/ok.yaml", text(OK_RUNBOOK));
    for (path, contents) in case.files {
        test = test.write(path, text(contents));
    }
    let out = test.args(case.args.iter().copied()).output();
    let want = text(case.stderr);
    let mut problems = Vec::new();
    if out.code != 2 {
        problems.push(format!("exit status {}, expected 2", out.code));
    }
    if !out.stdout.is_empty() {
        problems.push(format!("unexpected stdout:\n{}", out.stdout));
    }
    if out.stderr != want {
        problems.push(format!("stderr differs:\n{}", diff(want, &out.stderr)));
    }
    assert!(
        problems.is_empty(),
        "case `{name}`:\n{}",
        problems.join("\n")
    );
}

/// One `#[test]` per case of the table, named after it, so a failure names the
/// case and `cargo test --test it errors::case::NAME` runs one.
macro_rules! cases {
    ($($name:ident)*) => {
        mod case {
            $(
                #[test]
                fn $name() {
                    super::check(stringify!($name));
                }
            )*
        }

        /// The cases that have a `#[test]` above.
        const TESTED: &[&str] = &[$(stringify!($name)),*];
    };
}

cases! {
    structural_and_template_errors_at_once
    yaml_bad_indentation
    yaml_unclosed_quote
    yaml_unclosed_flow_sequence
    yaml_unclosed_flow_mapping
    yaml_tab_indentation
    yaml_unknown_alias
    yaml_duplicate_key
    yaml_duplicate_key_in_step
    yaml_second_document
    empty_runbook
    comment_only_runbook
    unknown_step_field_rollbak
    unknown_step_field_tiemout
    unknown_top_level_field
    steps_not_a_list
    steps_empty_list
    retries_is_a_string
    name_is_a_list
    missing_runbook_name
    step_without_name
    step_without_action
    step_with_two_actions
    duplicate_step_names
    unknown_host_group_with_suggestion
    unknown_host_in_on_pattern
    on_pattern_dangling_ampersand
    on_pattern_empty
    no_hosts_anywhere
    missing_required_param
    extra_param_not_declared
    extra_param_without_value
    param_value_not_in_choices
    int_param_given_text
    secret_param_given_with_e
    default_not_in_choices
    param_required_given_as_yes
    unknown_param_type
    unknown_lint_name
    template_comment_opened_by_shell_length
    template_comment_opened_in_a_script
    every_template_syntax_error_of_a_file_at_once
    every_undefined_variable_of_a_file_at_once
    expect_is_a_template
    expect_invalid_once_rendered
    template_syntax_error
    template_syntax_error_in_block
    when_syntax_error
    when_written_as_template
    undefined_variable_with_suggestion
    undefined_variable_in_block
    undefined_variable_in_var
    attribute_typo
    attribute_typo_next_to_an_undefined_variable
    template_syntax_error_with_undefined_variables_elsewhere
    bad_duration
    bad_serial_zero
    bad_serial_percent
    bad_on_failure
    bad_regex_in_capture
    bad_regex_in_expect
    exit_code_out_of_range
    invalid_file_mode
    upload_without_dest
    script_with_stdin
    retries_without_check
    confirm_is_a_number
    invalid_capture_name
    bad_service_state
    local_step_with_as
    manual_step_with_rollback
    param_also_a_var
    start_at_unknown_step
    limit_unknown_host
    inventory_port_out_of_range
    inventory_port_quoted
    inventory_invalid_become
    inventory_invalid_connection
    inventory_host_defined_twice_differently
    inventory_group_and_host_same_name
    inventory_bad_confirm
    inventory_unknown_field
    inventory_host_field_typo
    inventory_bad_connect_timeout
    inventory_host_name_with_space
    inventory_missing_groups
    unknown_inventory_env
    unknown_runbook_name
    run_file_not_found
    no_env_given
    format_json_without_dry_run
    output_without_dry_run
    format_json_with_output
    output_overwrites_an_existing_file
    output_into_the_log_directory
    limit_matches_none_of_the_runbook_hosts
    limit_matches_no_host_in_a_real_run
    runbook_hosts_match_no_host
    limit_leaves_only_the_steps_on_other_hosts
    runbook_hosts_match_no_host_but_other_steps_do
    limit_matches_no_host_of_the_inventory
    param_name_not_ascii
    every_structural_error_of_a_file_at_once
}

#[test]
fn every_case_has_its_own_test() {
    let mut table: Vec<&str> = CASES.iter().map(|c| c.name).collect();
    let mut tested = TESTED.to_vec();
    table.sort_unstable();
    tested.sort_unstable();
    assert_eq!(table, tested, "add each new case of CASES to `cases!`");
}

#[test]
fn case_names_are_unique() {
    let mut names: Vec<&str> = CASES.iter().map(|c| c.name).collect();
    names.sort_unstable();
    let before = names.len();
    names.dedup();
    assert_eq!(before, names.len(), "two cases share a name");
    assert!(CASES.len() >= 40, "the suite should keep at least 40 cases");
}

/// `check` reports the structural and the template syntax problems of a file
/// together (undefined variables need an inventory: `check` has none).
#[test]
fn check_reports_structural_and_template_errors_at_once() {
    let out = Test::new()
        .write("runbooks/x.yaml", text(MIXED_PROBLEMS))
        .args(["check", "x"])
        .output();
    let want = text(
        r#"
error: template syntax error: unexpected end of comment
  --> runbooks/x.yaml:7:16
  |
7 |     run: echo ${#TOKEN}
  |                ^^
  = help: `{#` opens a template comment: for the shell's `${#VAR}` write `${{ '{#' }}VAR}`, or wrap the text in `{% raw %}...{% endraw %}`

error: invalid param name `1port`: expected ASCII letters, digits and `_`, not starting with a digit
  --> runbooks/x.yaml:9:3
  |
9 |   1port: { default: "80" }
  |   ^^^^^

2 problems in 1 file
"#,
    );
    assert_eq!(out.code, 2);
    assert_eq!(out.stdout, "error    runbook x\n");
    assert!(out.stderr == want, "{}", diff(want, &out.stderr));
}
