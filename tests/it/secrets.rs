//! Secrets stay out of the record even when a host hands them back: in captured
//! values, through template filters, or by posing as a capture placeholder.

use crate::support::cli::Test;
use std::path::Path;

const SECRET: &str = "Sup3r-s3cret-pw";

const INVENTORY: &str = "groups:\n  app:\n    hosts:\n      a1: { connection: local }\n";

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

#[test]
fn a_secret_echoed_into_a_capture_is_masked_in_the_record() {
    let runbook = "name: leak\nhosts: app\nparams:\n  pw: { secret: true }\nsteps:\n\
        \x20 - name: Read it back\n    run: \"printf 'pw=%s' \\\"$(cat)\\\"\"\n    stdin: \"{{ pw }}\"\n    capture: got\n\
        \x20 - name: Use the capture\n    run: echo captured {{ got | quote }}\n";
    let out = Test::new()
        .write("runbooks/leak.yaml", runbook)
        .write("inventories/lab.yaml", INVENTORY)
        .args(["leak", "--env", "lab", "--yes", "--no-sign", "-v"])
        .env("OPSRUN_SECRET_PW", SECRET)
        .expect_status(0)
        .run();
    let record = everything_under(&out.path().join("runs"));
    for text in [&record, &out.stdout, &out.stderr] {
        assert!(
            !text.contains(SECRET),
            "secret in the record or terminal:\n{text}"
        );
    }
    assert!(record.contains("captured pw=******"), "{record}");
}

#[test]
fn a_value_posing_as_a_placeholder_is_still_quoted() {
    let runbook = "name: inj\nhosts: app\nparams:\n  label: {}\nsteps:\n\
        \x20 - name: Echo\n    run: echo {{ label | quote }}\n";
    let marker = "\u{1}";
    let label = format!("{marker}/dev/null{marker} ; touch pwned ; echo {marker}x{marker}");
    let out = Test::new()
        .write("runbooks/inj.yaml", runbook)
        .write("inventories/lab.yaml", INVENTORY)
        .args(["inj", "--env", "lab", "--yes", "--no-sign", "-e"])
        .arg(format!("label={label}"))
        .expect_status(0)
        .run();
    assert!(
        !out.path().join("pwned").exists(),
        "the value escaped its quotes"
    );
}

#[test]
fn a_secret_in_env_reaches_the_command_on_stdin_never_on_its_command_line() {
    let runbook = "name: envsecret\nhosts: app\nparams:\n  pw: { secret: true }\nsteps:\n\
        \x20 - name: Run with it\n    env: { PW: \"{{ pw }}\", MODE: plain }\n    run: printf '%s' \"$PW\" > run.txt\n    check: test \"$(cat run.txt)\" = \"$PW\"\n\
        \x20 - name: Script with it\n    env: { PW: \"{{ pw }}\" }\n    script: |\n      printf '%s' \"$PW\" > script.txt\n";
    let out = Test::new()
        .write("runbooks/envsecret.yaml", runbook)
        .write("inventories/lab.yaml", INVENTORY)
        .args(["envsecret", "--env", "lab", "--yes", "--no-sign"])
        .env("OPSRUN_SECRET_PW", SECRET)
        .expect_status(0)
        .run();
    assert_eq!(out.read("run.txt"), SECRET);
    assert_eq!(out.read("script.txt"), SECRET);
    let journal = out.read(
        std::fs::read_dir(out.path().join("runs"))
            .unwrap()
            .flatten()
            .next()
            .unwrap()
            .path()
            .join("journal.jsonl"),
    );
    assert!(
        journal.contains("IFS= read -r PW || exit 1; export PW;"),
        "{journal}"
    );
    assert!(journal.contains("export MODE=plain"), "{journal}");
    assert!(!journal.contains(SECRET));
    assert!(!everything_under(&out.path().join("runs")).contains(SECRET));
}

/// Lines are cut for the failure message after masking: a secret that crosses the
/// cut must not leave its first characters behind.
#[test]
fn a_secret_crossing_the_failure_line_cut_is_masked_whole() {
    let runbook = "name: cut1\nhosts: app\nparams:\n  tok: { secret: true }\nsteps:\n\
        \x20 - name: Log in\n    stdin: \"{{ tok }}\"\n    run: \"read -r t || true; printf 'error: login failed %0120d password=%s rest\\\\n' 0 \\\"$t\\\" >&2; exit 1\"\n";
    let out = Test::new()
        .write("runbooks/cut1.yaml", runbook)
        .write("inventories/lab.yaml", INVENTORY)
        .args(["cut1", "--env", "lab", "--yes", "--no-sign"])
        .env("OPSRUN_SECRET_TOK", "hunter22secret")
        .expect_status(1)
        .run();
    let record = everything_under(&out.path().join("runs"));
    for text in [&record, &out.stdout, &out.stderr] {
        assert!(
            !text.contains("hunter"),
            "part of the secret leaked:\n{text}"
        );
    }
    let line = format!("exit 1: error: login failed {:0120} password=******", 0);
    assert!(out.stderr.contains(&line), "{}", out.stderr);
}

/// `-v` streams output line by line, and lets a very long line through in pieces:
/// a piece must never end inside a secret.
#[test]
fn a_secret_split_across_streamed_pieces_is_masked() {
    let runbook = "name: long\nhosts: app\nparams:\n  tok: { secret: true }\nsteps:\n\
        \x20 - name: Long line\n    stdin: \"{{ tok }}\"\n    run: \"read -r t || true; printf '%065530d' 0; printf '%s' \\\"$t\\\" | head -c 9; sleep 1; printf '%s' \\\"$t\\\" | tail -c +10; echo\"\n";
    let out = Test::new()
        .write("runbooks/long.yaml", runbook)
        .write("inventories/lab.yaml", INVENTORY)
        .args(["long", "--env", "lab", "--yes", "--no-sign", "-v"])
        .env("OPSRUN_SECRET_TOK", "hunter22secret")
        .expect_status(0)
        .run();
    assert!(!out.stderr.contains("hunter"), "part of the secret leaked");
    assert!(
        out.stderr.contains("a1 | ******\n"),
        "the masked secret is shown"
    );
}

// ---------------------------------------------------------------------------------
// No secret on any command line (issue 12, point 6)

/// Samples every process's command line on this machine (the fleet's sshd and
/// the shells it starts are processes here) until stopped: the ones that held
/// any of `needles`, and whether `marker` was ever seen (so the sampler did
/// look while the steps ran).
struct Sampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<(Vec<String>, bool)>,
}

impl Sampler {
    fn start(needles: Vec<String>, marker: &'static str) -> Sampler {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut hits, mut marked) = (Vec::new(), false);
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                for (_, line) in crate::support::fleet::cmdlines() {
                    if needles.iter().any(|n| line.contains(n.as_str())) && !hits.contains(&line) {
                        hits.push(line.clone());
                    }
                    marked |= line.contains(marker);
                }
            }
            (hits, marked)
        });
        Sampler { stop, thread }
    }

    fn finish(self) -> (Vec<String>, bool) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// Runs `runbook` on the `lab` env with the secret `pw` while sampling the
/// host's command lines: the run succeeds, the sampler saw `marker` (a command
/// of its steps), and no command line held any of `needles`.
fn run_sampled(
    lab: &crate::support::lab::Lab,
    runbook: &str,
    pw: &str,
    marker: &'static str,
    needles: Vec<String>,
) -> crate::support::cli::Run {
    let sampler = Sampler::start(needles, marker);
    let run = lab.run(
        &[runbook, "--env", "lab", "--yes", "--no-sign"],
        &[("OPSRUN_SECRET_PW", pw)],
        None,
    );
    let (hits, marked) = sampler.finish();
    run.expect_code(0);
    assert!(marked, "the sampler saw the steps run (`{marker}`)");
    assert!(
        hits.is_empty(),
        "a secret, or a piece of one, was on a command line: {hits:#?}"
    );
    run
}

fn sha256_line(text: &str) -> String {
    use sha2::Digest;
    format!("{:x}  -\n", sha2::Sha256::digest(text.as_bytes()))
}

#[test]
fn a_captured_value_holding_a_secret_reaches_the_host_on_stdin_never_on_a_command_line() {
    use crate::support::{
        fleet::{app_group, ssh_inventory, SshFleet},
        lab::Lab,
    };
    const PW: &str = "Cmdline-s3cret-77";
    const MARKER: &str = "sleep 1.25";
    crate::support::sim::ensure_dm_user();
    let fleet = SshFleet::start(1);
    // Writable by the `as:` user (sudo), readable here.
    let shared = fleet.root().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(
        &shared,
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .unwrap();
    let lab = Lab::new();
    lab.write(
        "inventories/lab.yaml",
        &ssh_inventory(&fleet, "none", &app_group(&fleet)),
    );
    lab.write(
        "runbooks/capleak.yaml",
        &r#"name: capleak
hosts: app
params:
  pw: { secret: true }
steps:
  - name: Read it back
    stdin: "{{ pw }}"
    run: printf 'token=%s' "$(cat)"
    capture: got
  - name: Use the capture
    run: |
      sleep 1.25
      printf '%s' {{ got | quote }} | sha256sum > {{ work }}/run.sum
    check: sleep 1.25; printf '%s' {{ got | quote }} | sha256sum > {{ work }}/check.sum
    rollback: printf '%s' {{ got | quote }} > /dev/null
  - name: Use it through env
    env: { GOT: "{{ got }}", PLAIN: "not secret" }
    run: sleep 1.25; printf '%s' "$GOT" | sha256sum > {{ work }}/env.sum; printf '%s' "$PLAIN" > {{ work }}/plain
  - name: Use it as another user
    as: dmdba
    env: { GOT: "{{ got }}" }
    stdin: the step's own stdin
    run: |
      sleep 1.25
      { printf '%s' {{ got | quote }} | sha256sum; printf '%s' "$GOT" | sha256sum; cat; echo; id -un; } > SHARED/as.txt
"#
        .replace("SHARED", &shared.display().to_string()),
    );
    let run = run_sampled(&lab, "capleak", PW, MARKER, vec![PW.to_string()]);
    // The step still got the value, byte for byte: in its text, its check and its env.
    let work = fleet.work_dir(0);
    let want = sha256_line(&format!("token={PW}"));
    for file in ["run.sum", "check.sum", "env.sum"] {
        assert_eq!(
            std::fs::read_to_string(work.join(file)).unwrap(),
            want,
            "{file}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(work.join("plain")).unwrap(),
        "not secret"
    );
    // Through sudo the values still come first on stdin, then the step's own.
    assert_eq!(
        std::fs::read_to_string(shared.join("as.txt")).unwrap(),
        format!("{want}{want}the step's own stdin\ndmdba\n")
    );
    let everything = run.everything();
    assert!(!everything.contains(PW), "the secret is in the record");
    // The record says how it was sent.
    let command = run.events("target_started")[1]["command"].to_string();
    assert!(command.contains(r#"eval \"$OPSRUN_RUN\""#), "{command}");
    let command = run.events("target_started")[2]["command"].to_string();
    assert!(command.contains("export PLAIN="), "{command}");
    assert!(command.contains("read -r GOT"), "{command}");
}

/// Every substring of 4 characters or more of each text.
fn substrings(texts: &[&str]) -> Vec<String> {
    let mut all = Vec::new();
    for text in texts {
        let chars: Vec<char> = text.chars().collect();
        for start in 0..chars.len() {
            for end in start + 4..=chars.len() {
                all.push(chars[start..end].iter().collect());
            }
        }
    }
    all
}

/// Matching by value cannot see `pw[1:]` or `pw | upper`: a text whose template
/// reads a secret (directly, through a chain of runbook vars, or
/// through a capture of a step that read one) goes on stdin whatever it renders to.
#[test]
fn a_transformed_or_sliced_secret_reaches_the_host_on_stdin_never_on_a_command_line() {
    use crate::support::{
        fleet::{app_group, ssh_inventory, SshFleet},
        lab::Lab,
    };
    // No piece of it (or of its upper case) is a word another process may hold.
    const PW: &str = "hqz7xv-jk4hq-8vpz";
    const MARKER: &str = "sleep 1.25";
    let upper = PW.to_uppercase();
    let replaced = PW.replace('h', "H");
    let fleet = SshFleet::start(1);
    let lab = Lab::new();
    lab.write(
        "inventories/lab.yaml",
        &ssh_inventory(&fleet, "none", &app_group(&fleet)),
    );
    lab.write(
        "runbooks/transformed.yaml",
        r#"name: transformed
hosts: app
params:
  pw: { secret: true }
vars:
  loud: "{{ pw | upper }}"
  shout: "{{ loud }}!"
steps:
  - name: Transform it
    run: |
      sleep 1.25
      echo {{ pw[1:] }} {{ pw | upper }} {{ pw | replace('h','H') }} | sha256sum > {{ work }}/run.sum
    check: sleep 1.25; echo {{ pw | upper }} | sha256sum > {{ work }}/check.sum
  - name: Through vars
    env: { SHOUT: "{{ shout }}" }
    run: sleep 1.25; echo {{ shout }} | sha256sum > {{ work }}/var.sum; echo "$SHOUT" | sha256sum > {{ work }}/env.sum
  - name: Print it
    run: echo {{ pw | upper }}
    capture: printed
  - name: Through a capture
    run: sleep 1.25; echo {{ printed | lower }} | sha256sum > {{ work }}/capture.sum
"#,
    );
    let run = run_sampled(
        &lab,
        "transformed",
        PW,
        MARKER,
        substrings(&[PW, &upper, &replaced]),
    );
    // The steps still got the values, byte for byte.
    let work = fleet.work_dir(0);
    let sum = |file: &str| std::fs::read_to_string(work.join(file)).unwrap();
    let sliced: String = PW.chars().skip(1).collect();
    assert_eq!(
        sum("run.sum"),
        sha256_line(&format!("{sliced} {upper} {replaced}\n"))
    );
    assert_eq!(sum("check.sum"), sha256_line(&format!("{upper}\n")));
    assert_eq!(sum("var.sum"), sha256_line(&format!("{upper}!\n")));
    assert_eq!(sum("env.sum"), sha256_line(&format!("{upper}!\n")));
    assert_eq!(sum("capture.sum"), sha256_line(&format!("{PW}\n")));
    // The record shows each command's text with the secret masked before any
    // filter (what a run sends is not the record's to show), and how it was sent.
    let started = run.events("target_started");
    let command = started[0]["command"].to_string();
    assert!(command.contains(r#"eval \"$OPSRUN_RUN\""#), "{command}");
    // Only what a host printed of it (the capture `printed`) cannot be masked:
    // the record's texts hold no form of it.
    let everything = run.everything();
    assert!(
        everything.contains("echo ****** ****** ****** | sha256sum"),
        "each expression reading the secret is masked whole in the record"
    );
    for form in [&sliced, &replaced] {
        assert!(
            !everything.contains(form.as_str()),
            "`{form}` is in the record"
        );
    }
    if let Some(at) = everything.find(PW) {
        let from = everything[..at]
            .char_indices()
            .rev()
            .nth(300)
            .map_or(0, |(i, _)| i);
        let shown: String = everything[from..].chars().take(600).collect();
        panic!("the secret is in the record: {shown}");
    }
}

#[test]
fn a_captured_value_holding_a_secret_in_cwd_fails_the_step_before_anything_is_sent() {
    let runbook = "name: capcwd\nhosts: app\nparams:\n  pw: { secret: true }\nsteps:\n\
        \x20 - name: Read it back\n    stdin: \"{{ pw }}\"\n    run: \"printf '/tmp/%s' \\\"$(cat)\\\"\"\n    capture: dir\n\
        \x20 - name: Go there\n    cwd: \"{{ dir }}\"\n    run: touch ran-in-secret-dir\n";
    let out = Test::new()
        .write("runbooks/capcwd.yaml", runbook)
        .write("inventories/lab.yaml", INVENTORY)
        .args(["capcwd", "--env", "lab", "--yes", "--no-sign"])
        .env("OPSRUN_SECRET_PW", SECRET)
        .expect_status(1)
        .run();
    assert!(
        out.stderr
            .contains("`cwd` reads a value that holds a secret"),
        "{}",
        out.stderr
    );
    let record = everything_under(&out.path().join("runs"));
    assert!(!record.contains(SECRET) && !out.stderr.contains(SECRET));
    assert!(
        !record.contains("target_started\",\"phase\":\"forward\",\"number\":2"),
        "nothing was started for the step: {record}"
    );
}

#[test]
fn check_refuses_a_secret_where_only_a_command_line_can_carry_it() {
    let runbook = "name: places\nhosts: app\nparams:\n  pw: { secret: true }\nvars:\n  via: \"x{{ pw }}\"\nsteps:\n\
        \x20 - name: Upload\n    upload: { src: files/a, dest: \"/tmp/{{ pw }}.conf\" }\n\
        \x20 - name: Cwd\n    cwd: \"/srv/{{ via }}\"\n    run: \"true\"\n\
        \x20 - name: As\n    as: \"{{ pw }}\"\n    run: \"true\"\n";
    let t = Test::new()
        .write("runbooks/places.yaml", runbook)
        .write("files/a", "a")
        .write("inventories/lab.yaml", INVENTORY);
    let out = t.args(["check", "places"]).expect_status(2).run();
    for at in [
        "runbooks/places.yaml:9:44",
        "runbooks/places.yaml:11:19",
        "runbooks/places.yaml:14:13",
    ] {
        assert!(out.stderr.contains(at), "{at}:\n{}", out.stderr);
    }
    for said in [
        "in step `Upload`: `upload.dest` reads secret `pw`",
        "in step `Cwd`: `cwd` reads `via` (built from a secret)",
        "in step `As`: `as` reads secret `pw`",
    ] {
        assert!(out.stderr.contains(said), "{said}:\n{}", out.stderr);
    }
    assert!(!out.stdout.contains("no problems"), "{}", out.stdout);
}

#[test]
fn the_planner_refuses_a_secret_in_upload_dest_too() {
    let runbook = "name: dest\nhosts: app\nparams:\n  pw: { secret: true }\nsteps:\n\
        \x20 - name: Upload\n    upload: { src: files/a, dest: \"/tmp/{{ pw }}.conf\" }\n";
    let out = Test::new()
        .write("runbooks/dest.yaml", runbook)
        .write("files/a", "a")
        .write("inventories/lab.yaml", INVENTORY)
        .args(["dest", "--env", "lab", "--dry-run"])
        .env("OPSRUN_SECRET_PW", SECRET)
        .expect_status(2)
        .run();
    assert!(
        out.stderr.contains("runbooks/dest.yaml:7:"),
        "{}",
        out.stderr
    );
    assert!(!out.stdout.contains(SECRET) && !out.stderr.contains(SECRET));
}

#[test]
fn a_secret_of_the_wrong_type_or_choice_is_not_printed() {
    let runbook = "name: typed\nhosts: app\nparams:\n  pin: { secret: true, type: int }\n  flag: { secret: true, type: bool }\n  pick: { secret: true, choices: [alpha-1, beta-2] }\nsteps:\n\
        \x20 - name: Noop\n    run: \"true\"\n";
    for (var, value) in [
        ("OPSRUN_SECRET_PIN", "8841x9320"),
        ("OPSRUN_SECRET_FLAG", "yes-please"),
        ("OPSRUN_SECRET_PICK", "gamma-3"),
    ] {
        let mut t = Test::new()
            .write("runbooks/typed.yaml", runbook)
            .write("inventories/lab.yaml", INVENTORY)
            .args(["typed", "--env", "lab", "--dry-run"]);
        for (v, ok) in [
            ("OPSRUN_SECRET_PIN", "1234"),
            ("OPSRUN_SECRET_FLAG", "true"),
            ("OPSRUN_SECRET_PICK", "alpha-1"),
        ] {
            t = t.env(v, if v == var { value } else { ok });
        }
        let out = t.expect_status(2).run();
        assert!(!out.stderr.contains(value), "{var}: {}", out.stderr);
        assert!(!out.stdout.contains(value), "{var}: {}", out.stdout);
        assert!(out.stderr.contains("`******`"), "{var}: {}", out.stderr);
    }
}

#[test]
fn a_secret_s_json_escaped_form_is_masked_in_the_journal() {
    let secret = r#"Js"on\sec-ret"#;
    let runbook = r#"name: json
hosts: app
params:
  pw: { secret: true }
steps:
  - name: Print it as JSON
    stdin: "{{ pw }}"
    run: |
      printf '{"pw":"%s"}' "$(sed 's/[\\"]/\\&/g')"
    capture: got
"#;
    let out = Test::new()
        .write("runbooks/json.yaml", runbook)
        .write("inventories/lab.yaml", INVENTORY)
        .args(["json", "--env", "lab", "--yes", "--no-sign"])
        .env("OPSRUN_SECRET_PW", secret)
        .expect_status(0)
        .run();
    // The host printed it JSON-escaped, and the journal escapes that again.
    let escaped = serde_json::to_string(secret).unwrap();
    let escaped = &escaped[1..escaped.len() - 1];
    let twice = serde_json::to_string(escaped).unwrap();
    let twice = &twice[1..twice.len() - 1];
    let record = everything_under(&out.path().join("runs"));
    for form in [secret, escaped, twice] {
        assert!(!record.contains(form), "{form} in the record:\n{record}");
    }
    assert!(out.path().join("runs").exists());
    assert!(record.contains(r#"{\"pw\":\"******\"}"#), "{record}");
}

#[test]
fn show_masks_a_secret_s_default() {
    let runbook = "name: dflt\nparams:\n  pw: { secret: true, default: dflt-s3cret-1 }\n  size: { default: big }\nsteps:\n\
        \x20 - name: Noop\n    run: \"true\"\n";
    let out = Test::new()
        .write("runbooks/dflt.yaml", runbook)
        .args(["show", "dflt"])
        .expect_status(0)
        .run();
    assert!(!out.stdout.contains("dflt-s3cret-1"), "{}", out.stdout);
    assert!(out.stdout.contains("default ******"), "{}", out.stdout);
    assert!(out.stdout.contains("default big"), "{}", out.stdout);
}

#[test]
fn local_commands_do_not_inherit_opsrun_s_secret_variables() {
    let runbook = "name: envleak\nhosts: app\nparams:\n  pw: { secret: true }\nsteps:\n\
        \x20 - name: On the local host\n    run: env > host-env.txt\n\
        \x20 - name: A local step\n    local: true\n    run: env > local-env.txt\n\
        \x20 - name: Given on purpose\n    local: true\n    env: { PW: \"{{ pw }}\" }\n    run: printf '%s' \"$PW\" > given.txt\n";
    let out = Test::new()
        .write("runbooks/envleak.yaml", runbook)
        .write("inventories/lab.yaml", INVENTORY)
        .args(["envleak", "--env", "lab", "--yes", "--no-sign"])
        .env("OPSRUN_SECRET_PW", SECRET)
        .env("OPSRUN_SECRET_OTHER", "another-s3cret")
        .expect_status(0)
        .run();
    for file in ["host-env.txt", "local-env.txt"] {
        let env = out.read(file);
        assert!(env.contains("PATH="), "{file} is the environment: {env}");
        assert!(!env.contains("OPSRUN_SECRET_"), "{file}: {env}");
        assert!(!env.contains(SECRET) && !env.contains("another-s3cret"));
    }
    assert_eq!(
        out.read("given.txt"),
        SECRET,
        "what a step is given, it gets"
    );
}

/// `-v` over ssh: a secret that straddles the 64 KiB cut of a long unterminated
/// line is never shown in two halves.
#[test]
fn a_secret_straddling_the_flush_of_a_long_line_over_ssh_is_masked() {
    use crate::support::{
        fleet::{app_group, ssh_inventory, SshFleet},
        lab::Lab,
    };
    let fleet = SshFleet::start(1);
    let lab = Lab::new();
    lab.write(
        "inventories/lab.yaml",
        &ssh_inventory(&fleet, "none", &app_group(&fleet)),
    );
    lab.write(
        "runbooks/long.yaml",
        "name: long\nhosts: app\nparams:\n  tok: { secret: true }\nsteps:\n\
        \x20 - name: Long line\n    stdin: \"{{ tok }}\"\n    run: \"read -r t || true; printf '%065530d' 0; printf '%s' \\\"$t\\\" | head -c 9; sleep 1; printf '%s' \\\"$t\\\" | tail -c +10; echo\"\n",
    );
    let run = lab.run(
        &["long", "--env", "lab", "--yes", "--no-sign", "-v"],
        &[("OPSRUN_SECRET_TOK", "hunter22secret")],
        None,
    );
    run.expect_code(0);
    assert!(!run.stderr.contains("hunter"), "part of the secret leaked");
    assert!(
        !run.stderr.contains("22secret"),
        "part of the secret leaked"
    );
    assert!(
        run.stderr.contains("web1 | ******\n"),
        "{}",
        &run.stderr[run.stderr.len().saturating_sub(500)..]
    );
    assert!(!run.everything().contains("hunter"));
}

/// Past 4 MiB a stream is kept as head and tail in memory: a secret straddling
/// where the tail starts must not leave its end in the failure quote.
#[test]
fn a_secret_straddling_the_start_of_a_kept_tail_is_masked_in_the_failure() {
    let runbook = r#"name: tail
hosts: app
params:
  tok: { secret: true }
steps:
  - name: Fail loudly
    stdin: "{{ tok }}"
    run: |
      read -r t || true
      head -c 4300000 /dev/zero | tr '\0' z >&2
      printf '\nerror %s' "$t" >&2
      head -c 65525 /dev/zero | tr '\0' y >&2
      echo >&2
      exit 3
"#;
    let out = Test::new()
        .write("runbooks/tail.yaml", runbook)
        .write("inventories/lab.yaml", INVENTORY)
        .args(["tail", "--env", "lab", "--yes", "--no-sign"])
        .env("OPSRUN_SECRET_TOK", "hunter22secret")
        .expect_status(1)
        .run();
    let journal = everything_under(&out.path().join("runs"));
    for text in [&journal, &out.stderr, &out.stdout] {
        assert!(!text.contains("er22secret"), "the secret's end is shown");
        assert!(!text.contains("hunter"), "the secret's start is shown");
    }
    assert!(out.stderr.contains("******yyyy"), "{}", out.stderr);
}
