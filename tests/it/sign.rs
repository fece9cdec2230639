//! Signing logs and plans (SSHSIG, namespace `opsrun-log`) and verifying them
//! with `opsrun verify` and with stock `ssh-keygen -Y verify`.

use crate::support::{
    cli::{Run, OPERATOR},
    lab::{expect_code, files, fingerprint, keygen_verify, text, Sandbox},
};
use std::path::Path;

const SIMPLE: &str = r#"name: simple
description: two steps on two local hosts
hosts: local
steps:
  - name: Say hello
    run: echo hello
  - name: Say bye
    run: echo bye; echo warn >&2
"#;

fn run_signed(sb: &Sandbox, key: &Path, env: &[(&str, &str)]) -> std::path::PathBuf {
    let key = key.display().to_string();
    let out = sb.opsrun(
        &["simple", "--env", "demo", "--yes", "--sign-key", &key],
        env,
    );
    expect_code(&out, 0, "signed run");
    let dir = sb.runs().pop().expect("a run");
    assert!(dir.join("log.md.sig").is_file(), "no log.md.sig");
    // The last stdout line is the log's path.
    let last = text(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    assert!(last.ends_with("log.md"), "last line: {last}");
    dir
}

fn verify(sb: &Sandbox, log: &Path, extra: &[&str]) -> Run {
    let log = log.display().to_string();
    let mut args = vec!["verify", log.as_str()];
    args.extend(extra);
    sb.opsrun(&args, &[])
}

/// A log signed with a `kind` key verifies with opsrun and with stock ssh-keygen.
fn logs_verify_with_opsrun_and_stock_ssh_keygen(kind: &str) {
    let sb = Sandbox::new();
    sb.runbook("simple", SIMPLE);
    let key = sb.keygen(&format!("id_{kind}"), kind, "", false);
    let pubkey = key.with_extension("pub");
    let dir = run_signed(&sb, &key, &[]);
    let log = dir.join("log.md");
    let fp = fingerprint(&pubkey);

    let body = std::fs::read_to_string(&log).unwrap();
    assert!(
        !body.contains("UNSIGNED"),
        "{kind}: signed log says UNSIGNED"
    );
    assert!(body.contains(&format!("- Signer: `{OPERATOR}`")), "{kind}");
    assert!(body.contains(&fp), "{kind}: the log names the key");
    assert!(
        body.contains(&format!(
            "ssh-keygen -Y verify -f allowed_signers -I {OPERATOR} -n opsrun-log -s log.md.sig < log.md"
        )),
        "{kind}: the stock command is in the log"
    );

    // Trust only in the key: reports the signer but says it is not authenticated.
    let out = verify(&sb, &log, &[]);
    expect_code(&out, 0, &format!("{kind}: opsrun verify"));
    let s = text(&out.stdout);
    assert!(s.contains(&fp), "{kind}: fingerprint printed:\n{s}");
    assert!(s.contains("signed at  20"), "{kind}: signing time:\n{s}");
    assert!(s.contains("NOT AUTHENTICATED"), "{kind}:\n{s}");
    assert!(s.contains("VERIFIED"), "{kind}:\n{s}");

    // With allowed_signers: opsrun and stock ssh-keygen agree.
    let allowed = sb.allowed_signers("allowed_signers", OPERATOR, &pubkey);
    assert!(
        keygen_verify(&allowed, OPERATOR, &log),
        "{kind}: ssh-keygen -Y verify rejects the log"
    );
    let a = allowed.display().to_string();
    let out = verify(&sb, &log, &["--allowed-signers", &a]);
    expect_code(&out, 0, &format!("{kind}: verify --allowed-signers"));
    assert!(text(&out.stdout).contains("signer authenticated"));

    // Wrong identity, or a file trusting another key: both tools refuse.
    let out = verify(
        &sb,
        &log,
        &["--allowed-signers", &a, "--identity", "mallory"],
    );
    expect_code(&out, 1, &format!("{kind}: wrong identity"));
    assert!(!keygen_verify(&allowed, "mallory", &log));
    let other = sb.keygen("other", "ed25519", "", false);
    let wrong = sb.allowed_signers("wrong_signers", OPERATOR, &other.with_extension("pub"));
    let w = wrong.display().to_string();
    let out = verify(&sb, &log, &["--allowed-signers", &w]);
    expect_code(&out, 1, &format!("{kind}: untrusted key"));
    assert!(!keygen_verify(&wrong, OPERATOR, &log));
}

#[test]
fn ed25519_logs_verify_with_opsrun_and_stock_ssh_keygen() {
    logs_verify_with_opsrun_and_stock_ssh_keygen("ed25519");
}

#[test]
fn rsa_logs_verify_with_opsrun_and_stock_ssh_keygen() {
    logs_verify_with_opsrun_and_stock_ssh_keygen("rsa");
}

#[test]
fn a_key_limited_to_another_namespace_is_refused() {
    let sb = Sandbox::new();
    sb.runbook("simple", SIMPLE);
    let key = sb.keygen("id_ed25519", "ed25519", "", false);
    let dir = run_signed(&sb, &key, &[]);
    let pubkey = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let git_only = sb.write(
        "git_signers",
        &format!("{OPERATOR} namespaces=\"git\" {}", pubkey.trim()),
    );
    let g = git_only.display().to_string();
    let out = verify(&sb, &dir.join("log.md"), &["--allowed-signers", &g]);
    expect_code(&out, 1, "namespace-limited key");
    assert!(!keygen_verify(&git_only, OPERATOR, &dir.join("log.md")));
}

#[test]
fn default_encrypted_key_uses_the_passphrase_variable_never_a_pipe() {
    let sb = Sandbox::new();
    sb.runbook("simple", SIMPLE);
    let key = sb.keygen("id_ed25519", "ed25519", "correct horse", true);

    // No passphrase and stdin is not a terminal: refused before anything runs.
    let out = sb.opsrun(&["simple", "--env", "demo", "--yes"], &[]);
    expect_code(&out, 2, "encrypted key without passphrase");
    let err = text(&out.stderr);
    assert!(err.contains("OPSRUN_SIGN_PASSPHRASE"), "{err}");
    assert!(sb.runs().is_empty(), "nothing may run without a usable key");

    let out = sb.opsrun(
        &["simple", "--env", "demo", "--yes"],
        &[("OPSRUN_SIGN_PASSPHRASE", "wrong")],
    );
    expect_code(&out, 2, "wrong passphrase");
    assert!(text(&out.stderr).contains("wrong passphrase"));
    assert!(sb.runs().is_empty());

    // The default key (~/.ssh/id_ed25519), decrypted with the variable.
    let out = sb.opsrun(
        &["simple", "--env", "demo", "--yes"],
        &[("OPSRUN_SIGN_PASSPHRASE", "correct horse")],
    );
    expect_code(&out, 0, "encrypted default key");
    let log = sb.run_dir().join("log.md");
    let allowed = sb.allowed_signers("allowed", OPERATOR, &key.with_extension("pub"));
    assert!(keygen_verify(&allowed, OPERATOR, &log));
    let out = verify(&sb, &log, &[]);
    expect_code(&out, 0, "verify");
    assert!(text(&out.stdout).contains(&fingerprint(&key.with_extension("pub"))));
}

#[test]
fn encrypted_rsa_key_signs_in_process() {
    let sb = Sandbox::new();
    sb.runbook("simple", SIMPLE);
    let key = sb.keygen("rsa_enc", "rsa", "s3cret pass", false);
    let dir = run_signed(&sb, &key, &[("OPSRUN_SIGN_PASSPHRASE", "s3cret pass")]);
    let allowed = sb.allowed_signers("allowed", OPERATOR, &key.with_extension("pub"));
    assert!(keygen_verify(&allowed, OPERATOR, &dir.join("log.md")));
}

#[test]
fn no_key_is_an_error_unless_no_sign_is_explicit() {
    let sb = Sandbox::new();
    sb.runbook("simple", SIMPLE);
    let out = sb.opsrun(&["simple", "--env", "demo", "--yes"], &[]);
    expect_code(&out, 2, "no key");
    let err = text(&out.stderr);
    assert!(err.contains("ssh-keygen -t ed25519"), "{err}");
    assert!(err.contains("--no-sign"), "{err}");
    assert_eq!(err.matches("no SSH key").count(), 1, "said once: {err}");
    assert!(sb.runs().is_empty(), "nothing may run without a key");

    let out = sb.opsrun(&["simple", "--env", "demo", "--yes", "--no-sign"], &[]);
    expect_code(&out, 0, "--no-sign");
    let dir = sb.run_dir();
    assert!(!dir.join("log.md.sig").exists());
    let log = std::fs::read_to_string(dir.join("log.md")).unwrap();
    let top: Vec<&str> = log.lines().take(4).collect();
    assert!(
        top.iter().any(|l| l.contains("**UNSIGNED**")),
        "UNSIGNED at the top: {top:?}"
    );
    let out = verify(&sb, &dir.join("log.md"), &[]);
    expect_code(&out, 1, "verify an unsigned log");
    assert!(text(&out.stdout).contains("UNSIGNED"));

    // Usage errors: a missing log is exit 2, not a verification failure.
    let out = verify(&sb, Path::new("nope/log.md"), &[]);
    expect_code(&out, 2, "missing log");
}

#[test]
fn ecdsa_key_is_signed_and_checked_through_ssh_keygen() {
    let sb = Sandbox::new();
    sb.runbook("simple", SIMPLE);
    let key = sb.keygen("id_ecdsa", "ecdsa", "", false);
    let dir = run_signed(&sb, &key, &[]);
    let log = dir.join("log.md");
    let allowed = sb.allowed_signers("allowed", OPERATOR, &key.with_extension("pub"));
    assert!(keygen_verify(&allowed, OPERATOR, &log));
    let a = allowed.display().to_string();
    let out = verify(&sb, &log, &["--allowed-signers", &a]);
    expect_code(&out, 0, "ecdsa verify");
    assert!(text(&out.stdout).contains("checked by ssh-keygen"));
}

#[test]
fn opsrun_log_re_renders_and_re_signs() {
    let sb = Sandbox::new();
    sb.runbook("simple", SIMPLE);
    let first = sb.keygen("first", "ed25519", "", false);
    let second = sb.keygen("second", "ed25519", "", false);
    let dir = run_signed(&sb, &first, &[]);
    let d = dir.display().to_string();
    let s = second.display().to_string();
    let out = sb.opsrun(&["log", &d, "--sign-key", &s], &[]);
    expect_code(&out, 0, "opsrun log");
    let allowed = sb.allowed_signers("allowed", OPERATOR, &second.with_extension("pub"));
    assert!(keygen_verify(&allowed, OPERATOR, &dir.join("log.md")));
    let out = verify(&sb, &dir.join("log.md"), &[]);
    expect_code(&out, 0, "verify re-signed");
    assert!(text(&out.stdout).contains(&fingerprint(&second.with_extension("pub"))));

    // Re-rendered unsigned: the stale signature goes, the log says UNSIGNED.
    let out = sb.opsrun(&["log", &d, "--no-sign"], &[]);
    expect_code(&out, 0, "opsrun log --no-sign");
    assert!(!dir.join("log.md.sig").exists());
    assert!(std::fs::read_to_string(dir.join("log.md"))
        .unwrap()
        .contains("**UNSIGNED**"));
}

#[test]
fn dry_run_plan_is_markdown_signed_the_same_way() {
    let sb = Sandbox::new();
    sb.runbook("simple", SIMPLE);
    let key = sb.keygen("id_ed25519", "ed25519", "", false);
    let k = key.display().to_string();
    let out = sb.opsrun(
        &[
            "simple",
            "--env",
            "demo",
            "--dry-run",
            "--output",
            "plan.md",
            "--sign-key",
            &k,
        ],
        &[],
    );
    expect_code(&out, 0, "dry-run --output");
    assert!(sb.runs().is_empty(), "a dry-run records no run");
    let plan = sb.work().join("plan.md");
    let body = std::fs::read_to_string(&plan).unwrap();
    assert!(
        body.starts_with("# opsrun plan: `simple` on `demo`"),
        "{body}"
    );
    assert!(body.contains("| Dry run | **yes** |"));
    assert!(
        body.contains(&format!("[root@{}]# echo hello", sb.hosts[0])),
        "{body}"
    );
    assert!(body.contains(&format!(
        "ssh-keygen -Y verify -f allowed_signers -I {OPERATOR} -n opsrun-log -s plan.md.sig < plan.md"
    )));
    let allowed = sb.allowed_signers("allowed", OPERATOR, &key.with_extension("pub"));
    assert!(keygen_verify(&allowed, OPERATOR, &plan));
    let out = verify(&sb, &plan, &[]);
    expect_code(&out, 0, "verify plan");

    // --output needs --dry-run.
    let out = sb.opsrun(
        &["simple", "--env", "demo", "--output", "x.md", "--no-sign"],
        &[],
    );
    expect_code(&out, 2, "--output without --dry-run");

    let out = sb.opsrun(
        &[
            "simple",
            "--env",
            "demo",
            "--dry-run",
            "-o",
            "plain.md",
            "--no-sign",
        ],
        &[],
    );
    expect_code(&out, 0, "unsigned plan");
    let body = std::fs::read_to_string(sb.work().join("plain.md")).unwrap();
    assert!(body.lines().take(5).any(|l| l.contains("**UNSIGNED**")));
    assert!(!sb.work().join("plain.md.sig").exists());
}

/// Flips one bit (XOR 0x01) at `pos` of `path`, runs `check`, restores the byte.
fn with_flipped(path: &Path, pos: usize, check: impl FnOnce()) {
    let orig = std::fs::read(path).unwrap();
    let mut b = orig.clone();
    b[pos] ^= 0x01;
    std::fs::write(path, &b).unwrap();
    check();
    std::fs::write(path, &orig).unwrap();
}

fn verifies(log: &Path) -> bool {
    opsrun::sign::verify(log, &opsrun::sign::VerifyOptions::default())
        .expect("verify runs")
        .ok()
}

#[test]
fn flipping_any_byte_of_log_signature_or_output_fails_verification() {
    let sb = Sandbox::new();
    sb.runbook(
        "flip",
        &format!(
            "name: flip\nhosts: {}\nsteps:\n  - name: Out\n    run: \"printf 'line one\\nline two\\n'\"\n",
            sb.hosts[0]
        ),
    );
    let key = sb.keygen("id_ed25519", "ed25519", "", false);
    let k = key.display().to_string();
    let out = sb.opsrun(&["flip", "--env", "demo", "--yes", "--sign-key", &k], &[]);
    expect_code(&out, 0, "run");
    let dir = sb.run_dir();
    let log = dir.join("log.md");
    let sig = dir.join("log.md.sig");
    let output = dir.join(format!("outputs/01-out-{}.stdout", sb.hosts[0]));
    assert!(output.is_file());
    assert!(verifies(&log), "the untouched run verifies");
    let allowed = sb.allowed_signers("allowed", OPERATOR, &key.with_extension("pub"));

    // Every position of every file: the files are small (a few KiB in all) and
    // the check runs in process, so the whole sweep takes seconds.
    for file in [&sig, &output, &log] {
        let len = std::fs::read(file).unwrap().len();
        assert!(len > 0);
        for pos in 0..len {
            with_flipped(file, pos, || {
                assert!(
                    !verifies(&log),
                    "flipping byte {pos} of {} still verifies",
                    file.display()
                );
            });
        }
    }
    // Stock OpenSSH agrees on a sample: first, middle and last byte of the log,
    // and the middle of the signature (ssh-keygen itself tolerates some changes
    // to the armor, such as the final newline, that `opsrun verify` refuses).
    let log_len = std::fs::read(&log).unwrap().len();
    let sig_len = std::fs::read(&sig).unwrap().len();
    for (file, positions) in [
        (&log, vec![0, log_len / 2, log_len - 1]),
        (&sig, vec![sig_len / 2]),
    ] {
        for pos in positions {
            with_flipped(file, pos, || {
                assert!(
                    !keygen_verify(&allowed, OPERATOR, &log),
                    "ssh-keygen accepts byte {pos} of {} flipped",
                    file.display()
                );
            });
        }
    }
    assert!(verifies(&log), "restored files verify again");
    assert!(keygen_verify(&allowed, OPERATOR, &log));
}

#[test]
fn a_secret_used_in_three_steps_appears_nowhere() {
    const SECRET: &str = "Zq9-hunter2-s3cr3t";
    let sb = Sandbox::new();
    sb.runbook(
        "secret",
        r#"name: secret
hosts: local
params:
  pw: { secret: true, description: a password }
steps:
  - name: On stdin
    run: cat
    stdin: "{{ pw }}"
  - name: In a script
    script: |
      echo "the password is {{ pw }}"
  - name: In the environment
    env: { PW: "{{ pw }}" }
    run: 'printf "%s\n" "$PW" >&2'
"#,
    );
    let key = sb.keygen("id_ed25519", "ed25519", "", true);
    let secret_env = [("OPSRUN_SECRET_PW", SECRET)];
    let out = sb.opsrun(
        &["secret", "--env", "demo", "--yes", "--verbose"],
        &secret_env,
    );
    expect_code(&out, 0, "secret run");
    let dir = sb.run_dir();
    let plan = sb.opsrun(
        &[
            "secret",
            "--env",
            "demo",
            "--dry-run",
            "--output",
            "plan.md",
        ],
        &secret_env,
    );
    expect_code(&plan, 0, "plan");
    let text_plan = sb.opsrun(&["secret", "--env", "demo", "--dry-run"], &secret_env);
    expect_code(&text_plan, 0, "text plan");

    let mut seen = 0;
    let mut masked = 0;
    let mut haystacks: Vec<(String, Vec<u8>)> = files(&dir)
        .into_iter()
        .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
        .collect();
    haystacks.push((
        "plan.md".into(),
        std::fs::read(sb.work().join("plan.md")).unwrap(),
    ));
    for (name, o) in [("run", &out), ("plan", &plan), ("text plan", &text_plan)] {
        haystacks.push((format!("{name} stdout"), o.stdout.clone().into_bytes()));
        haystacks.push((format!("{name} stderr"), o.stderr.clone().into_bytes()));
    }
    for (name, bytes) in &haystacks {
        seen += 1;
        assert!(
            !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
            "the secret appears in {name}"
        );
        if bytes.windows(6).any(|w| w == b"******") {
            masked += 1;
        }
    }
    assert!(seen >= 8, "checked {seen} places");
    // The masking path really ran: outputs, journal and log carry the mask.
    assert!(masked >= 4, "only {masked} places show the mask");
    let log = std::fs::read_to_string(dir.join("log.md")).unwrap();
    assert!(log.contains("the password is ******"), "{log}");
    let _ = key;
}

#[test]
fn a_pub_path_signs_with_the_key_held_by_ssh_agent() {
    let sb = Sandbox::new();
    sb.runbook("simple", SIMPLE);
    let key = sb.keygen("agent_key", "ed25519", "", false);
    let sock = sb.root().join("agent.sock");
    let mut agent = std::process::Command::new("ssh-agent")
        .arg("-D")
        .arg("-a")
        .arg(&sock)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("ssh-agent");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !sock.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let added = std::process::Command::new("ssh-add")
        .arg("-q")
        .arg(&key)
        .env("SSH_AUTH_SOCK", &sock)
        .status()
        .expect("ssh-add");
    assert!(added.success());
    // The private key file is gone: only the agent can sign.
    std::fs::remove_file(&key).unwrap();
    let pubkey = key.with_extension("pub");
    let p = pubkey.display().to_string();
    let s = sock.display().to_string();
    let out = sb.opsrun(
        &["simple", "--env", "demo", "--yes", "--sign-key", &p],
        &[("SSH_AUTH_SOCK", &s)],
    );
    let _ = agent.kill();
    let _ = agent.wait();
    expect_code(&out, 0, "agent-signed run");
    let log = sb.run_dir().join("log.md");
    let allowed = sb.allowed_signers("allowed", OPERATOR, &pubkey);
    assert!(keygen_verify(&allowed, OPERATOR, &log));
    let out = verify(&sb, &log, &[]);
    expect_code(&out, 0, "verify");
    assert!(text(&out.stdout).contains(&fingerprint(&pubkey)));
}

/// A signed run of SIMPLE in a new sandbox, signed by `OPERATOR` with a fresh key.
fn signed_sandbox() -> (Sandbox, std::path::PathBuf, std::path::PathBuf) {
    let sb = Sandbox::new();
    sb.runbook("simple", SIMPLE);
    let key = sb.keygen("colleague", "ed25519", "", false);
    let dir = run_signed(&sb, &key, &[]);
    (sb, key, dir)
}

/// The public key as the log writes it: type and base64, no comment.
fn public_key(pubkey: &Path) -> String {
    let text = std::fs::read_to_string(pubkey).unwrap();
    text.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn a_log_copied_into_another_run_directory_fails_verify() {
    let (sb, key, first) = signed_sandbox();
    let second = run_signed(&sb, &key, &[]);
    assert_ne!(first, second);
    for f in ["log.md", "log.md.sig"] {
        std::fs::copy(first.join(f), second.join(f)).unwrap();
    }
    let name = |d: &Path| d.file_name().unwrap().to_string_lossy().into_owned();
    let out = verify(&sb, &second.join("log.md"), &[]);
    expect_code(&out, 1, "a log in another run's directory");
    let s = text(&out.stdout);
    assert!(
        s.contains(&format!(
            "FAILED  run: the log is of run `{}` but the journal beside it is of run `{}`",
            name(&first),
            name(&second)
        )),
        "{s}"
    );
    // Where it belongs, it verifies; so does its whole run directory archived
    // under another name (the journal says which run it holds).
    expect_code(
        &verify(&sb, &first.join("log.md"), &[]),
        0,
        "in its own run directory",
    );
    let archive = sb.root().join("archive").join("CHG-2041");
    std::fs::create_dir_all(archive.parent().unwrap()).unwrap();
    let st = std::process::Command::new("cp")
        .arg("-r")
        .arg(&first)
        .arg(&archive)
        .status()
        .unwrap();
    assert!(st.success());
    expect_code(
        &verify(&sb, &archive.join("log.md"), &[]),
        0,
        "its run directory archived under the ticket's name",
    );
    // Re-rendered there, the log is still bound to its run, not to the folder.
    let k = key.display().to_string();
    let a = archive.display().to_string();
    expect_code(
        &sb.opsrun(&["log", &a, "--sign-key", &k], &[]),
        0,
        "opsrun log",
    );
    let md = std::fs::read_to_string(archive.join("log.md")).unwrap();
    assert!(md.contains(&format!("- Run: `{}`", name(&first))), "{md}");
    expect_code(
        &verify(&sb, &archive.join("log.md"), &[]),
        0,
        "re-rendered in the archive",
    );
}

#[test]
fn a_teammate_who_re_signs_a_colleagues_log_fails_verify() {
    let (sb, colleague, dir) = signed_sandbox();
    let mate = sb.keygen("mate", "ed25519", "", false);
    let mate_pub = mate.with_extension("pub");
    let allowed = sb.root().join("allowed_signers");
    let line = |id: &str, key: &Path| {
        format!(
            "{id} namespaces=\"opsrun-log\" {}\n",
            public_key(&key.with_extension("pub"))
        )
    };
    std::fs::write(&allowed, line(OPERATOR, &colleague) + &line("mate", &mate)).unwrap();
    let a = allowed.display().to_string();
    let log = dir.join("log.md");
    let original = std::fs::read_to_string(&log).unwrap();
    let original_sig = std::fs::read(dir.join("log.md.sig")).unwrap();
    let colleague_pub = colleague.with_extension("pub");

    // The teammate edits the log and re-signs it with their own key, trusted in
    // allowed_signers: as Signer only, then Operator row and bound operator too.
    let as_mate = original
        .replace(&format!("- Signer: `{OPERATOR}`"), "- Signer: `mate`")
        .replace(&fingerprint(&colleague_pub), &fingerprint(&mate_pub))
        .replace(&public_key(&colleague_pub), &public_key(&mate_pub));
    let everywhere = as_mate
        .replace(
            &format!("| Operator | `{OPERATOR}` |"),
            "| Operator | `mate` |",
        )
        .replace(&format!("- Operator: `{OPERATOR}`"), "- Operator: `mate`");
    for (edited, says) in [
        (
            &as_mate,
            format!(
                "FAILED  operator: the log names operator `{OPERATOR}` but is signed as `mate`"
            ),
        ),
        (
            &everywhere,
            format!(
                "FAILED  operator: the log names operator `mate`, the run's journal `{OPERATOR}`"
            ),
        ),
    ] {
        assert_ne!(edited, &original);
        std::fs::write(&log, edited).unwrap();
        std::fs::remove_file(dir.join("log.md.sig")).unwrap();
        let st = std::process::Command::new("ssh-keygen")
            .args(["-q", "-Y", "sign", "-n", "opsrun-log", "-f"])
            .arg(&mate)
            .arg(&log)
            .status()
            .unwrap();
        assert!(st.success());
        // The signature itself is good: stock ssh-keygen accepts it for mate.
        assert!(keygen_verify(&allowed, "mate", &log));
        let out = verify(&sb, &log, &["--allowed-signers", &a]);
        expect_code(&out, 1, "re-signed by a teammate");
        let s = text(&out.stdout);
        assert!(s.contains(&says), "{s}");
    }

    // Through opsrun: `opsrun log` as the teammate is refused, and the
    // colleague's signed log stays as it was.
    let m = mate.display().to_string();
    let d = dir.display().to_string();
    std::fs::write(&log, &original).unwrap();
    std::fs::write(dir.join("log.md.sig"), &original_sig).unwrap();
    let out = sb.opsrun(
        &["log", &d, "--sign-key", &m],
        &[("OPSRUN_OPERATOR", "mate")],
    );
    expect_code(&out, 2, "opsrun log as mate");
    assert!(
        text(&out.stderr).contains(&format!(
            "was run by `{OPERATOR}`, and a log is signed by the operator who ran it: signing it as `mate`"
        )),
        "{}",
        out.stderr
    );
    assert_eq!(std::fs::read_to_string(&log).unwrap(), original);
    assert_eq!(std::fs::read(dir.join("log.md.sig")).unwrap(), original_sig);
    let out = verify(&sb, &log, &["--allowed-signers", &a]);
    expect_code(&out, 0, "the colleague's log, untouched");
}

#[test]
fn a_log_mailed_alone_verifies_and_says_what_it_could_not_check() {
    let (sb, _, dir) = signed_sandbox();
    let mail = sb.root().join("mail");
    std::fs::create_dir(&mail).unwrap();
    for f in ["log.md", "log.md.sig"] {
        std::fs::copy(dir.join(f), mail.join(f)).unwrap();
    }
    let out = verify(&sb, &mail.join("log.md"), &[]);
    expect_code(&out, 0, "a log on its own");
    let s = text(&out.stdout);
    assert!(
        s.contains(
            "ok      run: not checked: no journal beside the log (a log on its own); the run `"
        ),
        "{s}"
    );
    assert!(
        s.contains("could not be checked against the run directory"),
        "{s}"
    );
    assert!(s.contains("VERIFIED"), "{s}");
    // In its run directory, everything it states is checked.
    let out = verify(&sb, &dir.join("log.md"), &[]);
    let s = text(&out.stdout);
    for check in [
        "ok      run: the log is of run",
        "ok      journal: ",
        "ok      file runbook.yaml: sha256 matches",
        "ok      file inventory.yaml: sha256 matches",
        "ok      operator: signed by the operator the log names",
    ] {
        assert!(s.contains(check), "{check}:\n{s}");
    }
}

#[test]
fn verify_takes_a_run_id_as_log_and_rollback_do() {
    let (sb, _, dir) = signed_sandbox();
    let id = dir.file_name().unwrap().to_string_lossy().into_owned();
    let out = sb.opsrun(&["verify", &id], &[]);
    expect_code(&out, 0, "verify RUN_ID");
    let s = text(&out.stdout);
    assert!(s.contains(&format!("document   runs/{id}/log.md")), "{s}");
    assert!(s.contains("VERIFIED"), "{s}");
    let out = sb.opsrun(&["verify", "no-such-run"], &[]);
    assert_eq!(out.code, 2, "{out:?}");
}

/// Signs `log` again with `key` as stock ssh-keygen does (what a teammate with
/// an editor and their own key can do).
fn keygen_resign(key: &Path, log: &Path) {
    let _ = std::fs::remove_file(log.with_extension("md.sig"));
    let st = std::process::Command::new("ssh-keygen")
        .args(["-q", "-Y", "sign", "-n", "opsrun-log", "-f"])
        .arg(key)
        .arg(log)
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn a_log_stripped_of_its_binding_beside_a_chained_journal_fails_verify() {
    let (sb, colleague, dir) = signed_sandbox();
    let mate = sb.keygen("mate", "ed25519", "", false);
    let log = dir.join("log.md");
    let original = std::fs::read_to_string(&log).unwrap();
    // The "bound" paragraph and its `- Run/Journal/Operator/File` lines removed.
    let unbound: String = original
        .lines()
        .filter(|l| {
            !(l.starts_with("This log is bound to its run")
                || ["- Run: ", "- Journal: ", "- Operator: ", "- File: "]
                    .iter()
                    .any(|p| l.starts_with(p)))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(unbound.len() < original.len());
    std::fs::write(&log, &unbound).unwrap();
    keygen_resign(&colleague, &log);
    let out = verify(&sb, &log, &[]);
    expect_code(&out, 1, "an unbound log beside a chained journal");
    let s = text(&out.stdout);
    assert!(
        s.contains("FAILED  run: the log states no binding to its run (no `- Run:` / `- Journal:` lines), but a hash-chained journal sits beside it"),
        "{s}"
    );

    // And re-signed by a teammate under their own name: the Operator row still names the colleague.
    let mate_pub = mate.with_extension("pub");
    let colleague_pub = colleague.with_extension("pub");
    let as_mate = unbound
        .replace(&format!("- Signer: `{OPERATOR}`"), "- Signer: `mate`")
        .replace(&fingerprint(&colleague_pub), &fingerprint(&mate_pub))
        .replace(&public_key(&colleague_pub), &public_key(&mate_pub));
    std::fs::write(&log, &as_mate).unwrap();
    keygen_resign(&mate, &log);
    let out = verify(&sb, &log, &[]);
    expect_code(&out, 1, "an unbound log re-signed by a teammate");
    let s = text(&out.stdout);
    assert!(
        s.contains(&format!(
            "FAILED  operator: the document's Operator row says `{OPERATOR}` but it is signed as `mate`"
        )),
        "{s}"
    );
}

#[test]
fn moving_the_journal_away_does_not_turn_a_failed_verify_into_a_log_on_its_own() {
    let sb = Sandbox::new();
    sb.runbook("simple", SIMPLE);
    let key = sb.keygen("colleague", "ed25519", "", false);
    let dir = run_signed(&sb, &key, &[]);
    let log = dir.join("log.md");
    let output = files(&dir.join("outputs"))
        .into_iter()
        .next()
        .expect("an output file");
    std::fs::write(&output, "tampered\n").unwrap();
    let name = output.strip_prefix(&dir).unwrap().display().to_string();
    expect_code(&verify(&sb, &log, &[]), 1, "a tampered output");
    std::fs::rename(dir.join("journal.jsonl"), sb.root().join("journal.jsonl")).unwrap();
    let out = verify(&sb, &log, &[]);
    expect_code(&out, 1, "the journal moved away");
    let s = text(&out.stdout);
    assert!(
        s.contains("FAILED  journal: the journal is missing: the log sits in its run directory"),
        "{s}"
    );
    assert!(
        s.contains(&format!("FAILED  output {name}: sha256 is ")),
        "{s}"
    );
}

#[test]
fn a_log_rendered_by_opsrun_log_says_so_and_the_run_prints_its_chain_hash() {
    let sb = Sandbox::new();
    sb.runbook("simple", SIMPLE);
    let key = sb.keygen("colleague", "ed25519", "", false);
    let k = key.display().to_string();
    let out = sb.opsrun(&["simple", "--env", "demo", "--yes", "--sign-key", &k], &[]);
    expect_code(&out, 0, "signed run");
    let dir = sb.runs().pop().expect("a run");
    let log = std::fs::read_to_string(dir.join("log.md")).unwrap();
    assert!(!log.contains("Rendered later"), "{log}");
    let stated = log
        .lines()
        .find_map(|l| l.strip_prefix("- Journal: `journal.jsonl`, "))
        .expect("a stated chain");
    let (n, head) = stated.split_once(" events, chain hash ").unwrap();
    let said = format!(
        "journal chain hash {} ({n} events): put it on the ticket with the log",
        head.trim_matches('`')
    );
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(all.contains(&said), "{said}\n{all}");

    let d = dir.display().to_string();
    let out = sb.opsrun(&["log", &d, "--sign-key", &k], &[]);
    expect_code(&out, 0, "opsrun log");
    let again = std::fs::read_to_string(dir.join("log.md")).unwrap();
    let banner = "> **Rendered later**: from the journal by `opsrun log` at ";
    assert!(again.contains(banner), "{again}");
    assert!(
        again.contains(&format!("by `{OPERATOR}`, not at the end of the run")),
        "{again}"
    );
    assert!(again.contains("- Rendered: from the journal by `opsrun log` at "));
    expect_code(&verify(&sb, &dir.join("log.md"), &[]), 0, "still verifies");
}
