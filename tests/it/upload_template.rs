//! `upload: { template: true }`: the file is rendered per host (strict undefined,
//! secrets masked everywhere but in the uploaded file), and what is uploaded and
//! sha256-checked is the rendered text.

use crate::support::cli::Test;
use sha2::{Digest, Sha256};
use std::path::Path;

const SECRET: &str = "Sup3r-s3cret-pw";

const INVENTORY: &str = "groups:\n  app:\n    vars: { version: \"2.1\" }\n    hosts:\n      a1: { connection: local }\n      a2: { connection: local, vars: { version: \"2.2\" } }\n";

const STEP: &str = "steps:\n\
    \x20 - name: Upload conf\n    upload: { src: app.conf, dest: \"out-{{ host.name }}.conf\", mode: \"0600\", template: true }\n";

fn sha256(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn everything_under(dir: &Path) -> String {
    let mut all = String::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let p = entry.path();
        if p.is_dir() {
            all.push_str(&everything_under(&p));
        } else {
            all.push_str(&String::from_utf8_lossy(&std::fs::read(&p).unwrap()));
        }
    }
    all
}

fn test(template: &str) -> Test {
    with_params("", template)
}

fn with_params(params: &str, template: &str) -> Test {
    Test::new()
        .write("inventories/lab.yaml", INVENTORY)
        .write(
            "runbooks/conf.yaml",
            format!("name: conf\nhosts: app\n{params}{STEP}"),
        )
        .write("app.conf", template)
}

const SECRET_PARAM: &str = "params:\n  pw: { secret: true }\n";

#[test]
fn each_host_receives_the_file_rendered_with_its_own_values_and_checked() {
    let out = test("version={{ version }}\nhost={{ host.name }}\n")
        .args(["conf", "--env", "lab", "--yes", "--no-sign"])
        .expect_status(0)
        .run();
    let (a1, a2) = ("version=2.1\nhost=a1\n", "version=2.2\nhost=a2\n");
    assert_eq!(out.read("out-a1.conf"), a1);
    assert_eq!(out.read("out-a2.conf"), a2);
    let record = everything_under(&out.path().join("runs"));
    // The host checks the copy against the rendered text's sha256, and the log records it.
    for sum in [sha256(a1), sha256(a2)] {
        assert!(
            record.contains(&format!("printf '%s  %s\\\\n' {sum} ")),
            "{record}"
        );
        assert!(
            record.contains(&format!("Uploaded file sha256: `{sum}`")),
            "{record}"
        );
    }
}

#[test]
fn the_dry_run_says_the_file_is_a_template_and_shows_what_each_host_gets() {
    let out = test("version={{ version }}\n")
        .args(["conf", "--env", "lab", "--dry-run"])
        .expect_status(0)
        .run();
    let sum = sha256("version=2.1\n");
    assert!(
        out.stdout.contains(
            "    upload app.conf (template, rendered for a1) -> a1:out-a1.conf\n      rendered:\n      | version=2.1\n    ["
        ),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains(&sum), "{}", out.stdout);
    assert!(
        out.stdout.contains("      | version=2.2\n"),
        "{}",
        out.stdout
    );
}

#[test]
fn an_undefined_variable_in_the_file_points_into_the_file() {
    test("version={{ version }}\nport={{ http_prot }}\n")
        .args(["conf", "--env", "lab", "--dry-run"])
        .expect_status(2)
        .expect_stdout("")
        .expect_stderr(
            "error: in step `Upload conf` on host `a1`: undefined variable `http_prot`
  --> app.conf:2:9
  |
2 | port={{ http_prot }}
  |         ^^^^^^^^^
",
        )
        .run();
}

#[test]
fn a_syntax_error_in_the_file_points_into_the_file() {
    test("a=1\nb={{ version }\n")
        .args(["conf", "--env", "lab", "--dry-run"])
        .expect_status(2)
        .expect_stderr(
            "error: template syntax error: unexpected `}`, expected end of variable block
  --> app.conf:2:1
  |
2 | b={{ version }
  | ^^^^^^^^^^^^^^
",
        )
        .run();
}

#[test]
fn a_secret_in_the_file_reaches_the_host_and_nothing_else() {
    let out = with_params(SECRET_PARAM, "password={{ pw }}\n")
        .args(["conf", "--env", "lab", "--yes", "--no-sign", "-v"])
        .env("OPSRUN_SECRET_PW", SECRET)
        .expect_status(0)
        .run();
    assert_eq!(out.read("out-a1.conf"), format!("password={SECRET}\n"));
    let record = everything_under(&out.path().join("runs"));
    for text in [&record, &out.stdout, &out.stderr] {
        assert!(!text.contains(SECRET), "secret leaked:\n{text}");
    }
    // The host checks the copy against the real file's sum, but that sum is not
    // published: with the template and a dictionary, it gives the secret away.
    let sum = sha256(&format!("password={SECRET}\n"));
    for text in [&record, &out.stdout, &out.stderr] {
        assert!(
            !text.contains(&sum),
            "sha256 of the secret file published:\n{text}"
        );
    }
    assert!(
        record.contains(
            "Uploaded file sha256: withheld: the file was rendered with a secret, and its sha256 would let anyone holding the template test guesses of the secret offline; the host checked the copy against it\n"
        ),
        "{record}"
    );
    assert_eq!(
        out.target("Upload conf", "a1")["upload_sha256_withheld"],
        "the file was rendered with a secret, and its sha256 would let anyone holding the template test guesses of the secret offline; the host checked the copy against it"
    );
    let dry = with_params(SECRET_PARAM, "password={{ pw }}\n")
        .args(["conf", "--env", "lab", "--dry-run"])
        .env("OPSRUN_SECRET_PW", SECRET)
        .expect_status(0)
        .run();
    assert!(
        dry.stdout.contains("      | password=******\n"),
        "{}",
        dry.stdout
    );
    assert!(
        dry.stdout
            .contains("printf '%s  %s\\n' <sha256 of app.conf, rendered> "),
        "{}",
        dry.stdout
    );
    assert!(!dry.stdout.contains(SECRET));
}

#[test]
fn a_file_that_is_not_text_cannot_be_a_template() {
    test("")
        .write("app.conf", [0xffu8, 0xfe, 0x00])
        .args(["conf", "--env", "lab", "--dry-run"])
        .expect_status(2)
        .stderr_contains(
            "error: in step `Upload conf`: upload template `app.conf` is not UTF-8 text",
        )
        .run();
}
