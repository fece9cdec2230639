//! `opsrun check`: the traps of the source SOPs (docs/procedures.md) caught before a run.

use crate::diagnostic::{Diagnostic, Level, Span};
use crate::load::runbook::{Action, Runbook, ServiceState, Step, Text};
use regex::Regex;
use std::sync::OnceLock;

/// The stable name of every lint: shown after each warning, accepted by a
/// step's `lint: { allow: [...] }`, listed in the README.
pub const NAMES: &[&str] = &[
    "interactive",
    "tail-f",
    "bare-su",
    "ps-grep",
    "tar-exclude-order",
    "date-drift",
    "password-argv",
    "non-ascii",
    "unquoted-param",
    "secret-argv",
    "service-not-restarted",
    "service-without-rollback",
    "unescaped-expect",
];

/// A warning about a runbook, located like an error.
pub fn lint(rb: &Runbook) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    // A step that accepts a lint by name (`lint: { allow: [...] }`) gets no warning of it.
    let mut warn = |step: &Step, lint: &str, span: Span, message: String, help: &str| {
        if step.lint_allow.iter().any(|a| a == lint) {
            return;
        }
        out.push(Diagnostic {
            level: Level::Warning,
            source: rb.source.clone(),
            span,
            message: format!("{message} [{lint}]"),
            help: Some(format!(
                "{help}; if it is intended, add `lint: {{ allow: [{lint}] }}` to the step"
            )),
        })
    };
    let secrets: Vec<&str> = rb
        .params
        .iter()
        .filter(|p| p.secret)
        .map(|p| p.name.as_str())
        .collect();
    // Typed and enumerated params are validated before a run, so they cannot inject anything.
    let plain_params: Vec<&str> = rb
        .params
        .iter()
        .filter(|p| {
            !p.secret && p.kind == crate::load::runbook::ParamType::String && p.choices.is_empty()
        })
        .map(|p| p.name.as_str())
        .collect();

    for (list, steps) in [("steps", &rb.steps), ("rollback", &rb.rollback)] {
        for step in steps.iter() {
            for (what, text) in commands(step) {
                for f in command_findings(&text.src) {
                    warn(
                        step,
                        f.lint,
                        text.locate(&rb.source, f.offset, 1),
                        format!("step `{}` {what}: {}", step.name, f.message),
                        f.help,
                    );
                }
                for (offset, name) in interpolations(&text.src) {
                    if plain_params.contains(&name.as_str())
                        && !is_quoted_interpolation(&text.src, offset)
                    {
                        warn(
                            step,
                            "unquoted-param",
                            text.locate(&rb.source, offset, 1),
                            format!("step `{}` {what}: param `{name}` is interpolated without `| quote`", step.name),
                            "a value with a space, `;` or `$(...)` would change the command: write {{ NAME | quote }}",
                        );
                    }
                }
            }
            // A secret in a command ends up in a remote shell's argv (visible in `ps`);
            // `stdin:` and `env:` (sent on stdin) keep it out.
            for (what, text) in commands(step) {
                for (offset, name) in interpolations(&text.src) {
                    if secrets.contains(&name.as_str()) {
                        warn(
                            step,
                            "secret-argv",
                            text.locate(&rb.source, offset, 1),
                            format!("step `{}` {what}: secret param `{name}` is put on the command line", step.name),
                            "pass it with `stdin:` or `env:` (opsrun sends secret env values on stdin), so it never appears in a process list",
                        );
                    }
                }
            }
        }
        // `expect` is a regular expression: an interpolated value is regex syntax unless escaped.
        for step in steps.iter() {
            let patterns = [
                ("expect.stdout", &step.expect.stdout),
                ("expect.stdout_not", &step.expect.stdout_not),
            ];
            for (what, text) in patterns {
                let Some(text) = text else { continue };
                for (offset, name) in interpolations(&text.src) {
                    if !interpolation_uses(&text.src, offset, "regex_escape") {
                        warn(
                            step,
                            "unescaped-expect",
                            text.locate(&rb.source, offset, 1),
                            format!("step `{}` {what}: `{name}` is interpolated into a regular expression without `| regex_escape`", step.name),
                            "a value with `|`, `.` or `(` in it would change what matches: write {{ NAME | regex_escape }}",
                        );
                    }
                }
            }
        }
        service_pairs(rb, list, steps, &mut warn);
    }
    for step in &rb.steps {
        if let Some(svc) = &step.service {
            if svc.state == ServiceState::Stopped && step.rollback.is_empty() {
                warn(
                    step,
                    "service-without-rollback",
                    step.span,
                    format!(
                        "step `{}` stops service `{}` but has no `rollback`: after a failure the service stays down",
                        step.name, svc.name
                    ),
                    "add `rollback:` with the command that starts it again",
                );
            }
        }
    }
    out
}

/// Every stop of a service needs a later start in the same list (004 §2.1 never restarts prod).
fn service_pairs(
    rb: &Runbook,
    list: &str,
    steps: &[Step],
    warn: &mut impl FnMut(&Step, &str, Span, String, &str),
) {
    let _ = rb;
    for (i, step) in steps.iter().enumerate() {
        let Some(svc) = &step.service else { continue };
        if svc.state != ServiceState::Stopped {
            continue;
        }
        let restarted = steps[i + 1..].iter().any(|s| {
            s.service
                .as_ref()
                .is_some_and(|x| x.name == svc.name && x.state == ServiceState::Started)
        });
        if !restarted {
            let path = if list == "steps" {
                "the forward path"
            } else {
                "the rollback guide"
            };
            warn(
                step,
                "service-not-restarted",
                step.span,
                format!(
                    "step `{}` stops service `{}` and no later step in {path} starts it",
                    step.name, svc.name
                ),
                "add a step with `service: {name: ..., state: started}`",
            );
        }
    }
}

fn commands(step: &Step) -> Vec<(&'static str, &Text)> {
    let mut v = Vec::new();
    match &step.action {
        Action::Run(t) => v.push(("run", t)),
        Action::Script(t) => v.push(("script", t)),
        _ => {}
    }
    if let Some(c) = &step.check {
        v.push(("check", c));
    }
    for r in &step.rollback {
        v.push(("rollback", r));
    }
    v
}

struct Finding {
    lint: &'static str,
    offset: usize,
    message: String,
    help: &'static str,
}

fn re(cell: &'static OnceLock<Regex>, pattern: &str) -> &'static Regex {
    cell.get_or_init(|| Regex::new(pattern).expect("lint regex"))
}

/// Traps in one command text, with byte offsets.
fn command_findings(src: &str) -> Vec<Finding> {
    static INTERACTIVE: OnceLock<Regex> = OnceLock::new();
    static TAIL_F: OnceLock<Regex> = OnceLock::new();
    static BARE_SU: OnceLock<Regex> = OnceLock::new();
    static PS_GREP: OnceLock<Regex> = OnceLock::new();
    static DATE: OnceLock<Regex> = OnceLock::new();
    static ARGV_PASSWORD: OnceLock<Regex> = OnceLock::new();
    let mut out = Vec::new();
    let quoted = quoted_bytes(src);
    let mut offset = 0;
    for line in src.split_inclusive('\n') {
        let code = strip_comment(line);
        let interactive = re(
            &INTERACTIVE,
            r"(?:^|[;&|(]\s*|\s)(vim?|nano|emacs|gdisk|fdisk|cfdisk|more|less|top|htop|passwd|visudo|crontab\s+-e)(?:\s|$)",
        );
        if let Some(m) = interactive.captures(code).and_then(|c| c.get(1)) {
            let cmd = m.as_str();
            let fdisk_list = cmd == "fdisk" && code.contains("fdisk -l");
            let top_batch = cmd == "top" && code.contains("-b");
            if !fdisk_list && !top_batch {
                out.push(Finding {
                lint: "interactive",
                    offset: offset + m.start(),
                    message: format!("`{cmd}` is interactive and would hang a non-interactive run"),
                    help: "use a non-interactive equivalent (sgdisk or parted -s for gdisk, sed -i for vim, cat or tail -n for more)",
                });
            }
        }
        if let Some(m) = re(&TAIL_F, r"\btail\s+(?:-\w*\s+)*-[fF]\b").find(code) {
            out.push(Finding {
                lint: "tail-f",
                offset: offset + m.start(),
                message: "`tail -f` never ends".into(),
                help: "use `tail -n 200 FILE`, or a `check` with `retries` to wait for a log line",
            });
        }
        if let Some(m) = re(
            &BARE_SU,
            r"(?:^|[;&|]\s*)\s*(su(?:\s+-)?(?:\s+[A-Za-z_][\w-]*)?)\s*$",
        )
        .captures(code)
        .and_then(|c| c.get(1))
        {
            out.push(Finding {
                lint: "bare-su",
                offset: offset + m.start(),
                message: format!(
                    "`{}` without `-c` opens an interactive shell",
                    m.as_str().trim()
                ),
                help: "use the step's `as:` field (with `cwd:`) instead of su",
            });
        }
        if let Some(m) = re(&PS_GREP, r"\bps\b[^|\n]*\|\s*grep\s+").find(code) {
            let tail = &code[m.end()..];
            let excluded = code.contains("grep -v grep")
                || tail.trim_start().starts_with('[')
                || tail.contains("'[");
            if !excluded {
                out.push(Finding {
                    lint: "ps-grep",
                    offset: offset + m.start(),
                    message: "`ps ... | grep X` always succeeds: grep matches its own process"
                        .into(),
                    help: "use `pgrep -f PATTERN` (exit 1 when nothing matches)",
                });
            }
        }
        if let Some(f) = tar_exclude_after_path(code) {
            out.push(Finding {
                lint: "tar-exclude-order",
                offset: offset + f,
                message: "tar `--exclude` after the path is ignored by GNU tar >= 1.29 (it archives everything and exits 2)".into(),
                help: "put every --exclude before the paths: tar czf OUT.tar.gz --exclude=DIR/log DIR",
            });
        }
        if let Some(m) = re(&DATE, r"\$\(\s*date\b|`date\b").find(code) {
            out.push(Finding {
                lint: "date-drift",
                offset: offset + m.start(),
                message: "`$(date ...)` in a command drifts: a rollback after midnight looks for the wrong file".into(),
                help: "use {{ run.stamp }} or {{ run.date }} (frozen at the start of the run), or a captured file name",
            });
        }
        if let Some(m) = re(
            &ARGV_PASSWORD,
            r"(?i)(?:^|\s)(userid=\w+/\S+|-p[^\s-]\S*|--password[= ]\S+|password=\S+)",
        )
        .captures(code)
        .and_then(|c| c.get(1))
        {
            if !m.as_str().starts_with("-p ") && looks_like_password_flag(code, m.as_str()) {
                out.push(Finding {
                    lint: "password-argv",
                    offset: offset + m.start(),
                    message:
                        "a password on the command line is visible in `ps` and ends up in logs"
                            .into(),
                    help: "declare a `secret: true` param and pass it with `stdin:`",
                });
            }
        }
        for (i, c) in code.char_indices() {
            // Inside quotes it is text (`echo "已预热："`): full-width punctuation is meant there.
            if is_lookalike_punctuation(c) && !quoted.contains(&(offset + i)) {
                out.push(Finding {
                lint: "non-ascii",
                    offset: offset + i,
                    message: format!(
                        "non-ASCII character U+{:04X} `{c}` in a command (copied from a document?)",
                        c as u32
                    ),
                    help: "retype it as plain ASCII: `–` is not `-`, a full-width space is not a space",
                });
                break;
            }
        }
        offset += line.len();
    }
    out
}

/// `-p` is a password flag for mysql-like clients, but a harmless flag for mkdir, cp, ...
fn looks_like_password_flag(code: &str, m: &str) -> bool {
    // The pattern is case-insensitive for `password=`; `-P` (df -Pk, cp -P) is as harmless as `-p`.
    if !(m.starts_with("-p") || m.starts_with("-P")) {
        return true;
    }
    ["mysql", "mysqldump", "mysqladmin"]
        .iter()
        .any(|c| code.contains(c))
}

fn is_lookalike_punctuation(c: char) -> bool {
    matches!(c,
        '\u{00A0}' | '\u{2010}'..='\u{2015}' | '\u{2018}'..='\u{201F}' | '\u{2026}' | '\u{3000}'..='\u{3003}'
        | '\u{FF01}'..='\u{FF0F}' | '\u{FF1A}'..='\u{FF20}' | '\u{FF3B}'..='\u{FF40}' | '\u{FF5B}'..='\u{FF5E}'
        | '\u{FEFF}' | '\u{200B}')
}

/// Byte offsets of the characters inside shell quotes (`'...'`, `"..."`),
/// followed across lines, since a quoted string may span several.
fn quoted_bytes(src: &str) -> std::collections::HashSet<usize> {
    let mut inside = std::collections::HashSet::new();
    let mut quote: Option<char> = None;
    let mut escaped = false;
    let mut comment = false;
    let mut prev = '\n';
    for (i, c) in src.char_indices() {
        let before = std::mem::replace(&mut prev, c);
        if comment {
            comment = c != '\n';
            continue;
        }
        if escaped {
            escaped = false;
            if quote.is_some() {
                inside.insert(i);
            }
            continue;
        }
        match (quote, c) {
            (Some('\''), '\'') | (Some('"'), '"') => quote = None,
            (Some('"'), '\\') => {
                escaped = true;
                inside.insert(i);
            }
            (Some(_), _) => {
                inside.insert(i);
            }
            (None, '\'' | '"') => quote = Some(c),
            (None, '\\') => escaped = true,
            // A `'` in a comment (`# don't`) opens nothing.
            (None, '#') if before.is_whitespace() => comment = true,
            (None, _) => {}
        }
    }
    inside
}

fn strip_comment(line: &str) -> &str {
    match line.find(" #") {
        Some(i) => &line[..i],
        None if line.trim_start().starts_with('#') => "",
        None => line,
    }
}

/// Offset of an `--exclude` that follows a path operand in a `tar` command.
fn tar_exclude_after_path(code: &str) -> Option<usize> {
    let start = code.find("tar ")?;
    if start > 0
        && !code[..start]
            .ends_with(|c: char| c.is_whitespace() || matches!(c, ';' | '&' | '|' | '('))
    {
        return None;
    }
    let mut pos = start + 4;
    let mut words = Vec::new();
    for w in code[pos..].split_whitespace() {
        if matches!(w, "|" | "&&" | "||" | ";") {
            break;
        }
        let at = code[pos..].find(w).map(|i| i + pos)?;
        pos = at + w.len();
        words.push((at, w));
    }
    let first = words.first()?;
    // The first word is the option cluster (czf / -czf); with `f` the next word is the archive.
    let mut i = 1;
    if !first.1.starts_with("--") {
        if first.1.trim_start_matches('-').contains('f') {
            i = 2;
        }
    } else {
        i = 0;
    }
    let mut seen_path = false;
    while i < words.len() {
        let (at, w) = words[i];
        if w.starts_with("--exclude") && seen_path {
            return Some(at);
        }
        if matches!(w, "-f" | "-C" | "--file" | "--directory" | "-T") {
            i += 2;
            continue;
        }
        if !w.starts_with('-') {
            seen_path = true;
        }
        i += 1;
    }
    None
}

/// `{{ name ... }}` expressions: the first identifier of each, with its offset.
fn interpolations(src: &str) -> Vec<(usize, String)> {
    static EXPR: OnceLock<Regex> = OnceLock::new();
    re(&EXPR, r"\{\{-?\s*([A-Za-z_][A-Za-z0-9_]*)")
        .captures_iter(src)
        .filter_map(|c| {
            c.get(1)
                .map(|m| (c.get(0).map_or(0, |x| x.start()), m.as_str().to_string()))
        })
        .collect()
}

fn is_quoted_interpolation(src: &str, offset: usize) -> bool {
    interpolation_uses(src, offset, "quote")
}

/// Whether the `{{ ... }}` at `offset` names `filter`.
fn interpolation_uses(src: &str, offset: usize, filter: &str) -> bool {
    let end = src[offset..].find("}}").map_or(src.len(), |e| offset + e);
    src[offset..end].contains(filter)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs(s: &str) -> Vec<String> {
        command_findings(s).into_iter().map(|f| f.message).collect()
    }

    #[test]
    fn finds_the_sop_traps() {
        assert!(msgs("vim /etc/x")[0].contains("`vim` is interactive"));
        assert!(msgs("gdisk /dev/sdb")[0].contains("`gdisk`"));
        assert!(msgs("sgdisk -n 1 /dev/sdb").is_empty());
        assert!(msgs("fdisk -l")[0..].is_empty());
        assert!(msgs("tail -f catalina.out")[0].contains("tail -f"));
        assert!(msgs("su - dmdba")[0].contains("without `-c`"));
        assert!(msgs("su - dmdba -c 'x'").is_empty());
        assert!(msgs("ps -ef | grep tomcat")[0].contains("grep matches"));
        assert!(msgs("ps -ef | grep tomcat | grep -v grep").is_empty());
        assert!(msgs("tar zcvf x.tar.gz ecology --exclude=ecology/log")[0].contains("--exclude"));
        assert!(msgs("tar czf x.tar.gz --exclude=ecology/log ecology").is_empty());
        assert!(msgs("ps –ef")[0].contains("U+2013"));
        assert!(msgs("ls\u{3000}")[0].contains("U+3000"));
        assert!(msgs("echo 数据库备份完成").is_empty());
        assert!(msgs("tar xzf bakecology-$(date +%Y%m%d).tar.gz")[0].contains("drifts"));
        assert!(msgs("./dexp userid=SYSDBA/SYSDBA file=x.dmp")[0].contains("password"));
        assert!(msgs("mysql -pSecret123 -e 'select 1'")[0].contains("password"));
        assert!(msgs("mkdir -p /data/x").is_empty());
        assert!(msgs("df -Pk /data | awk 'NR == 2'").is_empty());
    }

    #[test]
    fn interpolation_quoting() {
        let src = "unzip -o {{ package }} && ls {{ dir | quote }}";
        let found = interpolations(src);
        assert_eq!(found.len(), 2);
        assert!(!is_quoted_interpolation(src, found[0].0));
        assert!(is_quoted_interpolation(src, found[1].0));
    }
}
