//! POSIX shell quoting and the wrapping that turns a step into the exact line sent to a host.
//!
//! Everything a host receives is built here, so the dry-run shows byte for byte
//! what a run sends: `cd`, `env`, `as:` (su/sudo) and `timeout` wrapping included.

pub mod envelope;

use std::time::Duration;

/// Quotes `s` as one literal POSIX shell word. Safe words are left bare for readability.
pub fn quote(s: &str) -> String {
    let safe = !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'_' | b'@' | b'%' | b'+' | b'=' | b':' | b',' | b'.' | b'/' | b'-'
                )
        });
    if safe {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// How `as:` switches user on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Become {
    #[default]
    Su,
    Sudo,
}

/// The wrapping of one command: user switch, directory, environment, time limit.
#[derive(Debug, Default)]
pub struct Wrap<'a> {
    pub as_user: Option<&'a str>,
    pub become_with: Become,
    pub cwd: Option<&'a str>,
    pub env: &'a [(String, String)],
    /// Variables whose values arrive as the first lines of stdin, in this
    /// order: secrets must not appear in a command line (`ps` shows it).
    pub stdin_env: &'a [StdinVar],
    pub timeout: Option<Duration>,
}

/// One value a command reads from the first lines of its stdin, before the
/// rest of stdin is the command's own: an `env:` value that holds a secret,
/// or a command text that does (the command line then only `eval`s it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StdinVar {
    pub name: String,
    /// Exported to the command (an `env:` value), or only read by the wrapping
    /// (a command text it runs).
    pub export: bool,
    /// The line that ends a value of several lines; `None`: the value is one line.
    end: Option<String>,
}

impl StdinVar {
    /// `name`, to be sent `value`: framed by an end line when it has several
    /// lines (an end line that no line of the value is).
    pub fn new(name: &str, value: &str, export: bool) -> StdinVar {
        let end = value.contains('\n').then(|| {
            (0..)
                .map(|n| format!("OPSRUN_END_{n}"))
                .find(|e| !value.split('\n').any(|l| l == e))
                .expect("some end line is free")
        });
        StdinVar {
            name: name.to_string(),
            export,
            end,
        }
    }

    /// What is sent on stdin for `value`: what [`StdinVar::reader`] reads back exactly.
    pub fn lines(&self, value: &str) -> String {
        match &self.end {
            None => format!("{value}\n"),
            Some(end) => format!("{value}\n{end}\n"),
        }
    }

    /// The shell text that reads the value (builtins only: `read` takes no more
    /// of stdin than its line, so what follows stays the command's).
    fn reader(&self) -> String {
        let k = &self.name;
        let read = match &self.end {
            None => format!("IFS= read -r {k} || exit 1; "),
            // Every line read gets its newline back; the last one, added by
            // `lines`, is taken off again.
            Some(end) => format!(
                "{k}=; while :; do IFS= read -r opsrun_l || exit 1; [ \"$opsrun_l\" = {end} ] && break; {k}=\"${k}$opsrun_l\n\"; done; {k}=${{{k}%?}}; "
            ),
        };
        match self.export {
            true => format!("{read}export {k}; "),
            false => read,
        }
    }
}

/// The exact command line for a host.
///
/// A multi-line command runs under `set -e`: a runbook line that fails must not
/// be followed by the next one (a failed `mv` followed by `tar x` over the live
/// tree is how SOP rollbacks go wrong).
pub fn wrap(cmd: &str, w: &Wrap) -> String {
    let cmd = cmd.trim_end();
    let mut inner = String::new();
    if let Some(cwd) = w.cwd {
        // `|| exit` rather than `&&`: it also guards every later line of a multi-line command.
        inner.push_str(&format!("cd {} || exit; ", quote(cwd)));
    }
    for v in w.stdin_env {
        inner.push_str(&v.reader());
    }
    for (k, v) in w.env {
        inner.push_str(&format!("export {k}={}; ", quote(v)));
    }
    if cmd.contains('\n') {
        inner.push_str("set -e\n");
    }
    inner.push_str(cmd);
    let mut line = match w.as_user {
        Some(user) => match w.become_with {
            Become::Su => format!("su - {} -c {}", quote(user), quote(&inner)),
            Become::Sudo => format!("sudo -n -H -u {} -- sh -c {}", quote(user), quote(&inner)),
        },
        None => inner,
    };
    if let Some(t) = w.timeout {
        // coreutils `timeout` signals its whole process group, so children of the
        // command die with it on the host; -k follows up with KILL if TERM is ignored.
        let secs = t.as_secs().max(1) + u64::from(t.subsec_nanos() > 0);
        line = format!("timeout -k 10 {secs} sh -c {}", quote(&line));
    }
    line
}

/// The host-side half of an upload: the file arrives on stdin, is checked and moved into place.
///
/// It is written under a temporary name and, when the local file's sha256 is
/// known, compared on the host before it replaces anything: a broken or
/// altered transfer never lands under the real name. The last line prints the
/// installed file's sha256 for the record, unless `print_sum` is false: the sum
/// of a file rendered with a secret is not for the record (see `UploadTarget`).
pub fn upload_command(
    dest: &str,
    mode: Option<&str>,
    owner: Option<&str>,
    tag: &str,
    sha256: Option<&str>,
    print_sum: bool,
) -> String {
    let part = quote(&format!("{dest}.opsrun-{tag}.part"));
    let mut s = format!("umask 077 && cat > {part}");
    if let Some(sum) = sha256 {
        s.push_str(&format!(
            " && {{ printf '%s  %s\\n' {sum} {part} | sha256sum -c --status - || {{ rm -f {part}; echo 'sha256 mismatch after the copy: not installed' >&2; false; }}; }}"
        ));
    }
    if let Some(m) = mode {
        s.push_str(&format!(" && chmod {m} {part}"));
    }
    if let Some(o) = owner {
        s.push_str(&format!(" && chown {} {part}", quote(o)));
    }
    s.push_str(&format!(" && mv -f {part} {}", quote(dest)));
    if print_sum {
        s.push_str(&format!(" && sha256sum {}", quote(dest)));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// Runs `printf %s WORD` through a real sh: the word must come back unchanged.
    fn roundtrip(s: &str) -> String {
        let out = Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("printf %s {}", quote(s)))
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    }

    /// `sh -c line` with `input` on its stdin: what a host's shell gets.
    fn sh_with_stdin(line: &str, input: &[u8]) -> std::process::Output {
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg(line)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // The shell may exit without reading all of it; that is not the test's failure.
        let _ = std::io::Write::write_all(child.stdin.as_mut().unwrap(), input);
        child.wait_with_output().unwrap()
    }

    #[test]
    fn hostile_values_are_one_literal_word() {
        for v in [
            "$(rm -rf /)",
            "`reboot`",
            "a; rm -rf /",
            "it's",
            "\"double\"",
            "line1\nline2",
            "select expired_date from v$license;",
            "数据库 备份",
            "",
            " leading space",
            "*",
            "~root",
            "a'b'c''",
            "\\",
            "--exclude=x",
            "ＡＢＣ　全角",
        ] {
            assert_eq!(roundtrip(v), v, "value {v:?} quoted as {}", quote(v));
            // One word: `set -- WORD; echo $#` must say 1.
            let out = Command::new("/bin/sh")
                .arg("-c")
                .arg(format!("set -- {}; printf %s $#", quote(v)))
                .output()
                .unwrap();
            assert_eq!(String::from_utf8_lossy(&out.stdout), "1", "{v:?}");
        }
    }

    #[test]
    fn an_upload_is_checked_before_it_replaces_anything() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("pkg.zip");
        std::fs::write(&dest, "old release").unwrap();
        let run = |sum: &str| {
            sh_with_stdin(
                &upload_command(
                    dest.to_str().unwrap(),
                    Some("0644"),
                    None,
                    "t",
                    Some(sum),
                    true,
                ),
                b"new release",
            )
        };
        let wrong = run(&"0".repeat(64));
        assert!(!wrong.status.success());
        assert_eq!(std::fs::read_to_string(&dest).unwrap(), "old release");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "the part file is removed"
        );
        let right = crate::digest::sha256_hex(b"new release");
        let ok = run(&right);
        assert!(
            ok.status.success(),
            "{}",
            String::from_utf8_lossy(&ok.stderr)
        );
        assert_eq!(std::fs::read_to_string(&dest).unwrap(), "new release");
        assert!(String::from_utf8_lossy(&ok.stdout).starts_with(&right));
    }

    #[test]
    fn safe_words_stay_bare() {
        assert_eq!(quote("/data/WEAVER/ecology"), "/data/WEAVER/ecology");
        assert_eq!(quote("v$license"), "'v$license'");
    }

    #[test]
    fn wraps_in_the_documented_order() {
        let env = vec![("LANG".to_string(), "C".to_string())];
        let w = Wrap {
            as_user: Some("dmdba"),
            become_with: Become::Su,
            cwd: Some("/data/dm bin"),
            env: &env,
            stdin_env: &[],
            timeout: Some(Duration::from_secs(30)),
        };
        assert_eq!(
            wrap("./DmServiceDMSERVER stop", &w),
            r#"timeout -k 10 30 sh -c 'su - dmdba -c '\''cd '\''\'\'''\''/data/dm bin'\''\'\'''\'' || exit; export LANG=C; ./DmServiceDMSERVER stop'\'''"#
        );
        assert_eq!(wrap("true\n", &Wrap::default()), "true");
        assert_eq!(wrap("a\nb", &Wrap::default()), "set -e\na\nb");
    }

    #[test]
    fn secret_env_values_come_from_stdin_not_the_command_line() {
        let names = vec![StdinVar::new("PW", "s3cret pw", true)];
        let w = Wrap {
            stdin_env: &names,
            ..Wrap::default()
        };
        let line = wrap("printf '%s|' \"$PW\"; cat", &w);
        assert!(!line.contains("s3cret"));
        let out = sh_with_stdin(&line, b"s3cret pw\nthe rest\n");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "s3cret pw|the rest\n");
    }

    #[test]
    fn a_value_of_several_lines_comes_back_exactly_and_leaves_the_rest_of_stdin() {
        for value in [
            "a\nb",
            "a\n",
            "\n",
            "x\nOPSRUN_END_0\ny",
            "it's \"$(reboot)\" `x`\n\\",
        ] {
            let vars = vec![
                StdinVar::new("V", value, true),
                StdinVar::new("C", "printf '%s|' \"$V\"\ncat", false),
            ];
            let line = wrap(
                "eval \"$C\"",
                &Wrap {
                    stdin_env: &vars,
                    as_user: None,
                    ..Wrap::default()
                },
            );
            assert!(
                !line.contains("printf"),
                "the command text is not on the line"
            );
            let input = format!(
                "{}{}the rest\n",
                vars[0].lines(value),
                vars[1].lines("printf '%s|' \"$V\"\ncat")
            );
            let out = sh_with_stdin(&line, input.as_bytes());
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                format!("{value}|the rest\n"),
                "{value:?}"
            );
        }
    }

    #[test]
    fn wrapped_commands_really_run() {
        let env = vec![("GREETING".to_string(), "hi there".to_string())];
        let dir = std::env::temp_dir();
        let w = Wrap {
            cwd: dir.to_str(),
            env: &env,
            timeout: Some(Duration::from_secs(5)),
            ..Wrap::default()
        };
        let out = Command::new("/bin/sh")
            .arg("-c")
            .arg(wrap("printf '%s|' \"$GREETING\" \"$(pwd)\"", &w))
            .output()
            .unwrap();
        let expect = format!("hi there|{}|", dir.canonicalize().unwrap().display());
        assert_eq!(String::from_utf8_lossy(&out.stdout), expect);
    }
}
