//! Template bombs: every template has a render budget, and a runbook that blows
//! it fails `check` and the dry-run alike, at once, with the step, the place
//! and the budget named. (Time and memory per case are measured by the fuzz
//! pass in tests/fuzz.rs, which spawns the binary once per case.)
use crate::support::cli::Test;

const INVENTORY: &str = "groups:\n  app:\n    hosts:\n      a1: { connection: local }\n";

fn runbook(template: &str) -> String {
    // The step's `run:` is line 5, its value starts at column 10.
    format!(
        "name: bomb\nhosts: app\nsteps:\n  - name: bomb\n    run: {}\n",
        serde_json::to_string(template).unwrap()
    )
}

/// (template, what the error says of the budget)
fn bombs() -> Vec<(String, &'static str)> {
    let nested = |n: usize| "{% for a in [1] %}".repeat(n) + "x" + &"{% endfor %}".repeat(n);
    let folded = ["('x' * 100000000)"; 8].join(" ~ ");
    vec![
        (
            "{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}".into(),
            "the template exceeded its budget of 200000 instructions",
        ),
        (
            "{% for i in [1] %}{% for c in 'x' * (300000 + i - i) %}{% endfor %}{% endfor %}".into(),
            "the template exceeded its budget of 200000 instructions",
        ),
        (
            "{% for i in [1] %}{{ 'x' * (5000000 + i - i) }}{% endfor %}".into(),
            "the template renders to more than its budget of 4 MiB",
        ),
        // Folded when compiled: the constant would be kept for the whole run.
        (
            "{{ 'x' * 100000000 }}".into(),
            "the template holds 95 MiB once compiled",
        ),
        (
            format!("{{{{ 'xxxxxxxxxx'{} }}}}", "|replace('x', 'xxxxxxxxxx')".repeat(8)),
            "`replace` would build a string larger than the budget of 4 MiB",
        ),
        (nested(120), "the template exceeded its budget of 100 levels of nesting"),
        // Folded when the template is compiled, before any render: the watch stops it.
        (
            format!("{{{{ {folded} }}}}"),
            "this template needed more than 256 MiB of memory, over the render budget",
        ),
        // Three 100 MB strings alive at once, built by filters within one render.
        (
            "{% for i in [1] %}{% set a = 'x' * (100000000 + i - i) %}{{ a | upper | lower | length }}{% endfor %}".into(),
            "this template needed more than 256 MiB of memory, over the render budget",
        ),
        // One allocation of 900 MB: refused before it is made.
        (
            "{{ '%-900000000s' | format('a') | length }}".into(),
            "this template needed more than 256 MiB of memory, over the render budget",
        ),
        // Each instruction is expensive, and none is constant: only the clock stops it.
        (
            "{% for i in range(100000) %}{% if ('x' * (30000000 + i - i)) == '' %}{% endif %}{% endfor %}".into(),
            "this template ran for more than 2 s, over the render budget",
        ),
    ]
}

#[test]
fn every_template_bomb_fails_check_and_the_dry_run_with_its_step_place_and_budget() {
    for (template, budget) in bombs() {
        let out = Test::new()
            .write("runbooks/bomb.yaml", runbook(&template))
            .write("inventories/lab.yaml", INVENTORY)
            .args(["check", "bomb"])
            .expect_status(2)
            .stderr_contains(format!("in step `bomb`: {budget}"))
            .stderr_contains("--> runbooks/bomb.yaml:5:10")
            .run();
        let dry = Test::in_dir(out.path())
            .args(["bomb", "--env", "lab", "--dry-run"])
            .expect_status(2)
            .stderr_contains(budget)
            .stderr_contains("in step `bomb`")
            .stderr_contains("--> runbooks/bomb.yaml:5:10")
            .run();
        assert!(!dry.stdout.contains("[root@a1]#"), "{}", dry.stdout);
    }
}

#[test]
fn a_var_that_blows_the_budget_is_named_in_check() {
    let rb = "name: bomb\nhosts: app\nvars:\n  big: \"{{ 'x' * 100000000 }}\"\nsteps:\n  - name: use\n    run: echo {{ big | length }}\n";
    Test::new()
        .write("runbooks/bomb.yaml", rb)
        .args(["check", "bomb"])
        .expect_status(2)
        .stderr_contains("in var `big`: the template holds 95 MiB once compiled")
        .stderr_contains("--> runbooks/bomb.yaml:4:8")
        .run();
}

/// A template only a captured value makes big is rendered during the run: the
/// step fails with the budget named, and the run keeps its record.
#[test]
fn a_capture_that_blows_the_budget_fails_its_step_and_the_run_keeps_its_record() {
    let rb = "name: bomb\nhosts: app\nsteps:\n\
        \x20 - name: size\n    run: head -c 300000 /dev/zero | tr '\\0' x\n    capture: n\n\
        \x20 - name: use\n    run: \"echo {% for c in n %}{{ c }}{% endfor %} | wc -c\"\n";
    let run = Test::new()
        .write("runbooks/bomb.yaml", rb)
        .write("inventories/lab.yaml", INVENTORY)
        .args(["bomb", "--env", "lab", "--yes", "--no-sign"])
        .expect_status(1)
        .stderr_contains("the template exceeded its budget of 200000 instructions")
        .run();
    assert_eq!(run.outcome().0, "failed", "{}", run.stderr);
}

/// The budget is far above real templates: a 10 000-item loop renders.
#[test]
fn a_long_but_real_template_is_within_the_budget() {
    let out = Test::new()
        .write(
            "runbooks/bomb.yaml",
            runbook("echo {% for i in range(10000) %}{{ i }},{% endfor %} | wc -c"),
        )
        .write("inventories/lab.yaml", INVENTORY)
        .args(["bomb", "--env", "lab", "--yes", "--no-sign", "-v"])
        .expect_status(0)
        .run();
    // 0..9999 with a comma each, and the newline.
    let log = out.read(&out.log);
    assert!(log.contains("48891"), "{log}");
}

/// A template that reads no variable renders the same whatever the inventory:
/// `check` reports any error of it, not only a budget's.
#[test]
fn check_reports_every_error_of_a_template_that_reads_no_variable() {
    Test::new()
        .write(
            "runbooks/bomb.yaml",
            runbook("{{ range(100000000) | length }}"),
        )
        .args(["check", "bomb"])
        .expect_status(2)
        .stderr_contains("in step `bomb`: range has too many elements")
        .stderr_contains("--> runbooks/bomb.yaml:5:10")
        .run();
}

#[test]
fn check_probes_an_upload_template_with_a_plain_path() {
    let rb = "name: bomb\nhosts: app\nsteps:\n  - name: conf\n    upload: { src: files/big.conf, dest: /tmp/big.conf, template: true }\n";
    Test::new()
        .write("runbooks/bomb.yaml", rb)
        .write("files/big.conf", "a = 1\nb = {{ 'x' * 100000000 }}\n")
        .args(["check", "bomb"])
        .expect_status(2)
        .stderr_contains(
            "in upload template `files/big.conf`: the template holds 95 MiB once compiled",
        )
        .stderr_contains("--> files/big.conf:1:1")
        .run();
}

/// Each template within every per-render budget, but holding a 100 MB folded
/// constant once compiled: a runbook of many would keep them all (100 MB per
/// step). Each is refused where it is written.
#[test]
fn a_template_that_holds_a_huge_constant_once_compiled_is_refused() {
    let mut rb = String::from("name: bomb\nhosts: app\nsteps:\n");
    for i in 0..3 {
        rb.push_str(&format!(
            "  - name: s{i}\n    run: \"echo {{{{ ('x' * 100000000) | length }}}}\"\n"
        ));
    }
    let out = Test::new()
        .write("runbooks/bomb.yaml", rb)
        .args(["check", "bomb"])
        .expect_status(2)
        .run();
    for i in 0..3 {
        assert!(
            out.stderr.contains(&format!(
                "in step `s{i}`: the template holds 95 MiB once compiled"
            )),
            "{}",
            out.stderr
        );
    }
}
