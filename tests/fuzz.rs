//! Random and mutated YAML fed to the loader, planner and linter in-process: none may panic.
//!
//! Every malformed file must come back as an `Err` with a diagnostic, never as
//! a panic, since a panic in front of an operator mid-change loses the error
//! position and looks like opsrun itself is broken. Inputs start from the
//! repo's real runbooks and inventories plus hand-written seeds, then go
//! through byte-, line- and YAML-aware mutations.
//!
//! Deterministic: case `i` is generated from `SEED ^ i` only. To reproduce or
//! explore further: `OPSRUN_FUZZ_SEED=N OPSRUN_FUZZ_CASES=M cargo test --test fuzz`.
//! A panicking input is written under `target/tmp/fuzz-failures/`.

use opsrun::diagnostic::SourceFile;
use opsrun::plan::{Captures, Options, Planner, Reveal, StepRef};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

const DEFAULT_SEED: u64 = 0x0b5e_55ed_5eed_2024;
/// Per mutation test; with the structured test, 10 500 cases in all.
const DEFAULT_CASES: u64 = 4_000;
const DEFAULT_STRUCTURED_CASES: u64 = 2_500;

/// splitmix64: tiny, fast and good enough to drive mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const RUNBOOK_SEEDS: &[&str] = &[
    r#"name: upgrade
description: Upgrade with backup and rollback
version: "2"
hosts: app
serial: "50%"
params:
  package: { required: true, description: "upgrade zip" }
  db_pass: { secret: true }
  keep: { default: 3, type: int }
  mode: { default: online, choices: [online, offline] }
  dry: { default: false, type: bool }
vars:
  backup: "{{ weaver_home }}/bak-{{ run.stamp }}.tar.gz"
  other: "{{ backup | basename }}"
steps:
  - name: Stop application
    run: "{{ weaver_home }}/bin/stop"
    rollback: "{{ weaver_home }}/bin/start"
    service: { name: ecology, state: stopped }
    on_failure: abort
  - name: Back up
    cwd: "{{ weaver_home }}"
    run: tar czf {{ backup | quote }} ecology
    check: gzip -t {{ backup | quote }}
    retries: 2
    delay: 1s
    timeout: 5m
  - name: Upload package
    upload: { src: "{{ package }}", dest: "{{ weaver_home }}/", mode: "0644", owner: root }
  - name: Apply
    confirm: "Unpack {{ package | basename }}?"
    as: weaver
    env: { LANG: C, HOME: "{{ weaver_home }}" }
    run: unzip -o {{ package | basename | quote }}
    rollback:
      - mv ecology ecology.failed
      - tar xzf {{ backup | quote }}
  - name: Version
    run: cat VERSION
    capture: { name: version, regex: "v([0-9.]+)" }
    expect: { exit: [0, 1], stdout: "v", stdout_not: "ERROR" }
  - name: Report
    local: true
    when: version != ''
    run: echo {{ version | quote }} {{ mode }} {{ keep }}
  - name: Password
    on: db:&app
    script: |
      dmctl <<EOF
      {{ host.name }} {{ env }} {{ run.operator }}
      EOF
  - name: License
    manual: Paste the license for {{ env }}
  - name: Verify
    check: curl -fsS http://127.0.0.1:{{ http_port }}/login.jsp
    retries: 30
    service: { name: ecology, state: started }
rollback:
  - name: Restore
    run: tar xzf {{ backup | quote }}
    on: app:!oa2
"#,
    "name: tiny\nhosts: all\nsteps:\n  - name: a\n    run: echo hi\n",
    "name: flow\nhosts: 'app:db'\nsteps: [{name: a, run: x}, {name: b, check: y, retries: 1}, {name: c, on: '*', run: \"{% if host.name == 'oa1' %}a{% else %}b{% endif %}\"}]\n",
    "name: anchors\nhosts: app\nvars: {v: &v \"{{ weaver_home }}\"}\nsteps:\n  - &s {name: a, run: *v}\n  - <<: *s\n    name: b\n",
    "name: blocks\nhosts: db\nsteps:\n  - name: folded\n    run: >\n      echo one\n      echo {{ dm_home }}\n  - name: literal\n    script: |-\n      set -e\n      {% for h in hosts %}echo {{ h }}\n      {% endfor %}\n",
];

const INVENTORY_SEEDS: &[&str] = &[
    "name: fuzz\nconfirm: typed\nssh:\n  user: root\n  port: 22\n  jump: [bastion, b2]\n  become: sudo\n  identity_file: ~/.ssh/id\n  known_hosts_file: ./kh\n  config_file: ./cfg\n  connect_timeout: 10s\nvars:\n  weaver_home: /data/WEAVER\n  dm_home: /dm\n  tomcat_home: /t\n  tomcat_base: /b\n  tomcat_http_port: 8080\ngroups:\n  tomcat:\n    hosts: { portal1: { address: 10.0.0.9 } }\n  app:\n    vars: { http_port: 6888 }\n    hosts:\n      oa1: { address: 10.0.0.1, port: 2222, user: admin }\n      oa2: { address: 10.0.0.2, ssh: { become: su } }\n  db:\n    hosts:\n      dm1: { address: 10.0.0.3, vars: { role: primary } }\n      oa1:\n  local:\n    hosts:\n      sandbox: { connection: local }\n",
    "groups:\n  app:\n    hosts: {oa1: {}, oa2: {}, oa3: {}}\n  db:\n    hosts: {dm1: {}, dm2: {}}\nvars: {weaver_home: /w, http_port: 80, dm_home: /d}\n",
    "vars: {b: &b x}\ngroups:\n  app:\n    hosts:\n      oa1: &h { address: a, vars: { weaver_home: /x, http_port: 1 } }\n      oa2: { <<: *h, address: b }\n",
];

/// Characters with meaning in YAML, templates or host patterns.
const SIGNIFICANT: &[&str] = &[
    ":",
    "-",
    "[",
    "]",
    "{",
    "}",
    "&",
    "*",
    "!",
    "|",
    ">",
    "'",
    "\"",
    "#",
    "%",
    "@",
    "\t",
    "\n",
    ",",
    "?",
    "`",
    "\\",
    " ",
    "  ",
    "---",
    "...",
    "<<",
    "{{",
    "}}",
    "{%",
    "%}",
    "!!str ",
    "!!int ",
    "!!binary ",
    "&a ",
    "*a",
    "? ",
    ": ",
    "- ",
    "\r\n",
    "\r",
];

const UNICODE: &[char] = &[
    '\u{0}',
    '\u{1}',
    '\u{7}',
    '\u{8}',
    '\u{b}',
    '\u{c}',
    '\u{1b}',
    '\u{7f}',
    '\u{85}',
    '\u{a0}',
    '\u{200b}',
    '\u{200e}',
    '\u{202e}',
    '\u{2028}',
    '\u{2029}',
    '\u{feff}',
    '\u{fffd}',
    '\u{301}',
    '中',
    '文',
    '日',
    '本',
    '語',
    '한',
    'ｱ',
    '：',
    '－',
    '＂',
    '“',
    '”',
    '‘',
    '’',
    '—',
    'é',
    'ß',
    'ı',
    'İ',
    'Ω',
    '😀',
    '👍',
    '\u{1f3fd}',
    '\u{10ffff}',
    '\u{e000}',
];

/// Replacement scalars aimed at the decoders' edge cases.
const VALUES: &[&str] = &[
    "0",
    "-1",
    "65536",
    "99999999999999999999999",
    "-9223372036854775808",
    "9223372036854775807",
    "1e400",
    "-.inf",
    ".nan",
    "0x",
    "0xFFFFFFFFFFFFFFFFF",
    "0o777777777777777777777",
    "~",
    "null",
    "true",
    "no",
    "\"\"",
    "''",
    "[]",
    "{}",
    "[[]]",
    "0%",
    "100%",
    "101%",
    "-5%",
    "5 min",
    "99999999999999999999d",
    "1h1h1h",
    "0644",
    "\"0999\"",
    "'{{'",
    "\"{{ }}\"",
    "\"{{ host.x.y }}\"",
    "\"{{ a | quote }}\"",
    "\"{% if %}\"",
    "\"{{ run.stamp | basename | dirname }}\"",
    "\"!&\"",
    "\"app:&\"",
    "\"app:!\"",
    "\"*:*\"",
    "\",,,\"",
    "\"(\"",
    "\"[a-\"",
    "\"\\\\\"",
    "|\n  x",
    ">-\n  y",
    "&x 1",
    "*x",
    "!!int x",
    "!!bool maybe",
    "!!float nope",
    "\"\\u0000\"",
];

/// Field names of runbooks and inventories: swapping them in reaches decoders a typo cannot.
fn keys() -> Vec<&'static str> {
    const OTHERS: &[&str] = &[
        "required",
        "secret",
        "default",
        "type",
        "choices",
        "src",
        "dest",
        "mode",
        "owner",
        "exit",
        "stdout",
        "stdout_not",
        "regex",
        "state",
        "groups",
        "ssh",
        "address",
        "connection",
        "<<",
    ];
    let mut k: Vec<&str> = opsrun::runbook::RUNBOOK_FIELDS.to_vec();
    k.extend(opsrun::runbook::STEP_FIELDS);
    k.extend(opsrun::inventory::SSH_FIELDS);
    k.extend(OTHERS);
    k
}

fn random_text(rng: &mut Rng, len: usize) -> String {
    (0..len)
        .map(|_| match rng.below(4) {
            0 => rng.pick(SIGNIFICANT).to_string(),
            1 => rng.pick(UNICODE).to_string(),
            2 => rng.pick(&keys()).to_string(),
            _ => char::from(b' ' + rng.below(95) as u8).to_string(),
        })
        .collect()
}

fn nested(rng: &mut Rng) -> String {
    let depth = 1 + rng.below(120);
    match rng.below(4) {
        0 => format!("{}x{}", "[".repeat(depth), "]".repeat(depth)),
        1 => format!("{}x{}", "{a: ".repeat(depth), "}".repeat(depth)),
        2 => (0..depth)
            .map(|d| format!("{}- \n", "  ".repeat(d)))
            .collect(),
        _ => (0..depth)
            .map(|d| format!("{}k{d}:\n", " ".repeat(d)))
            .collect(),
    }
}

/// Anchors that multiply: small text, large tree.
fn laughs(rng: &mut Rng) -> String {
    // Each level multiplies by ten; past five the node limit refuses it. Big trees are slow
    // in debug builds, so most cases stay small and a few probe the limit.
    let levels = if rng.chance(5) { 6 } else { 1 + rng.below(3) };
    let mut s = String::from("l0: &l0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..=levels {
        let p = i - 1;
        s.push_str(&format!(
            "l{i}: &l{i} [*l{p}, *l{p}, *l{p}, *l{p}, *l{p}, *l{p}, *l{p}, *l{p}, *l{p}, *l{p}]\n"
        ));
    }
    s
}

fn mutate(rng: &mut Rng, text: &str, donors: &[&str]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    // One mutation usually leaves a file the decoders can read; piling them up rarely does.
    let rounds = if rng.chance(15) { 2 + rng.below(4) } else { 1 };
    for _ in 0..rounds {
        let len = chars.len();
        let at = rng.below(len + 1);
        let span = 1 + rng.below(8);
        match rng.below(14) {
            0 if len > 0 => {
                let end = (at + span).min(len);
                chars.drain(at.min(len)..end);
            }
            1 => {
                let s = rng.pick(SIGNIFICANT).to_string();
                chars.splice(at..at, s.chars());
            }
            2 => {
                let c = *rng.pick(UNICODE);
                chars.insert(at, c);
            }
            3 if len > 0 => {
                let start = at.min(len - 1);
                let end = (start + span).min(len);
                let dup: Vec<char> = chars[start..end].to_vec();
                chars.splice(end..end, dup);
            }
            4 if len > 1 => {
                let other = rng.below(len);
                chars.swap(at.min(len - 1), other);
            }
            5 => chars.truncate(at),
            6 => {
                let n = 1 + rng.below(12);
                let r = random_text(rng, n);
                chars.splice(at..at, r.chars());
            }
            7..=9 => {
                // Line-level: these keep the YAML mostly valid, so the decoders see it.
                let s: String = chars.iter().collect();
                let mut lines: Vec<String> = s.lines().map(str::to_string).collect();
                if lines.is_empty() {
                    lines.push(String::new());
                }
                let n = lines.len();
                let i = rng.below(n);
                match rng.below(7) {
                    0 => {
                        lines.remove(i);
                    }
                    1 => {
                        let l = lines[i].clone();
                        lines.insert(i, l);
                    }
                    2 => {
                        let j = rng.below(n);
                        lines.swap(i, j);
                    }
                    3 => {
                        let pad = " ".repeat(1 + rng.below(4));
                        lines[i] = format!("{pad}{}", lines[i]);
                    }
                    4 => lines[i] = lines[i].trim_start().to_string(),
                    5 => {
                        let donor: Vec<&str> = rng.pick(donors).lines().collect();
                        if !donor.is_empty() {
                            let l = donor[rng.below(donor.len())].to_string();
                            lines.insert(i, l);
                        }
                    }
                    _ => {
                        // Replace a value, or a key, keeping the line's shape.
                        if let Some(colon) = lines[i].find(": ") {
                            if rng.chance(50) {
                                lines[i] = format!("{}: {}", &lines[i][..colon], rng.pick(VALUES));
                            } else {
                                let indent = lines[i].len() - lines[i].trim_start().len();
                                let dash = if lines[i].trim_start().starts_with("- ") {
                                    "- "
                                } else {
                                    ""
                                };
                                lines[i] = format!(
                                    "{}{dash}{}{}",
                                    &lines[i][..indent],
                                    rng.pick(&keys()),
                                    &lines[i][colon..]
                                );
                            }
                        }
                    }
                }
                let mut joined = lines.join("\n");
                if rng.chance(80) {
                    joined.push('\n');
                }
                chars = joined.chars().collect();
            }
            10 => {
                let n = nested(rng);
                chars.splice(at..at, n.chars());
            }
            11 => {
                let l = laughs(rng);
                chars.splice(at..at, l.chars());
            }
            12 => {
                let v = rng.pick(VALUES).to_string();
                chars.splice(at..at, v.chars());
            }
            _ => {
                // Crossover with another seed.
                let donor: Vec<char> = rng.pick(donors).chars().collect();
                let from = rng.below(donor.len() + 1);
                let to = (from + rng.below(80)).min(donor.len());
                chars.splice(at..at, donor[from..to].iter().copied());
            }
        }
    }
    chars.into_iter().collect()
}

fn files_in(dir: &str) -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    paths.sort();
    paths
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .collect()
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .strip_prefix("0x")
            .map_or_else(|| v.trim().parse(), |h| u64::from_str_radix(h, 16))
            .unwrap_or_else(|_| panic!("{name}={v}: expected a number")),
        Err(_) => default,
    }
}

fn options(rng: &mut Rng, rb: Option<&opsrun::runbook::Runbook>) -> Options {
    let mut opts = Options {
        operator: "fuzz".into(),
        local_user: "fuzz".into(),
        now: chrono::NaiveDate::from_ymd_opt(2024, 5, 6)
            .and_then(|d| d.and_hms_opt(7, 8, 9))
            .expect("valid date")
            .and_utc()
            .fixed_offset(),
        ..Options::default()
    };
    if let Some(rb) = rb {
        for p in &rb.params {
            let value = if rng.chance(90) {
                p.default.clone().unwrap_or_else(|| "x".into())
            } else {
                rng.pick(VALUES).to_string()
            };
            if p.secret {
                if rng.chance(70) {
                    opts.secrets.insert(p.name.clone(), value);
                }
            } else if rng.chance(70) {
                opts.params.push((p.name.clone(), value));
            }
        }
        if rng.chance(3) {
            opts.params.push(("undeclared".into(), "1".into()));
        }
        if rng.chance(15) && !rb.steps.is_empty() {
            opts.start_at = Some(rb.steps[rng.below(rb.steps.len())].name.clone());
        }
    }
    if rng.chance(10) {
        opts.limit = Some(
            rng.pick(&[
                "oa1", "app:!oa2", "db:&app", "*", "nope", "&", "!", ":", "oa*",
            ])
            .to_string(),
        );
    }
    opts
}

/// How far one case got: a fuzzer whose inputs all die in the parser tests only the parser.
#[derive(Default, Debug)]
struct Reached {
    runbook_decoded: u64,
    inventory_decoded: u64,
    planned: u64,
}

/// Loads, plans and lints one pair of texts; everything returned as errors must also render.
fn exercise(rng: &mut Rng, runbook: &str, inventory: &str, reached: &mut Reached) {
    let rb = opsrun::load::runbook_from_source(SourceFile::new("fuzz/runbook.yaml", runbook));
    let inv =
        opsrun::load::inventory_from_source(SourceFile::new("fuzz/inventory.yaml", inventory));
    let rb = match rb {
        Ok(rb) => Some(rb),
        Err(e) => {
            // Rendering the diagnostic slices the source line: it must not panic either.
            let _ = e.to_string();
            None
        }
    };
    let inv = match inv {
        Ok(inv) => Some(inv),
        Err(e) => {
            let _ = e.to_string();
            None
        }
    };
    reached.runbook_decoded += u64::from(rb.is_some());
    reached.inventory_decoded += u64::from(inv.is_some());
    if let Some(rb) = &rb {
        for d in opsrun::lint::lint(rb) {
            let _ = d.to_string();
        }
    }
    let opts = options(rng, rb.as_ref());
    if let (Some(rb), Some(inv)) = (rb, inv) {
        let capture_value = rng.pick(VALUES).to_string();
        match Planner::new(rb, inv, opts).and_then(|p| {
            let plan = p.plan()?;
            let _ = opsrun::preview::text(&plan);
            let _ = opsrun::preview::json(&plan);
            // The run path: real secrets and captured values instead of placeholders.
            let mut captures = Captures::default();
            for step in &p.runbook.steps {
                if let Some(c) = &step.capture {
                    captures
                        .global
                        .insert(c.name.clone(), capture_value.clone());
                }
            }
            for i in 0..p.runbook.steps.len().min(4) {
                let host = p.step_hosts(StepRef::Forward(i)).first().cloned();
                if let Err(e) = p.render(
                    StepRef::Forward(i),
                    host.as_deref(),
                    Some(&captures),
                    Reveal::Real,
                    Some(1),
                ) {
                    let _ = e.to_string();
                }
            }
            Ok(plan)
        }) {
            Ok(_) => reached.planned += 1,
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
}

fn save_failure(seed: u64, i: u64, runbook: &str, inventory: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures");
    let _ = std::fs::create_dir_all(&dir);
    let base = dir.join(format!("seed-{seed:#x}-case-{i}"));
    let _ = std::fs::write(base.with_extension("runbook.yaml"), runbook);
    let _ = std::fs::write(base.with_extension("inventory.yaml"), inventory);
    base
}

/// `mutate_runbook`: which side gets most of the mutations.
fn fuzz(stream: u64, mutate_runbook: bool) {
    let seed = env_u64("OPSRUN_FUZZ_SEED", DEFAULT_SEED);
    let cases = env_u64("OPSRUN_FUZZ_CASES", DEFAULT_CASES);
    let mut runbooks: Vec<String> = files_in("runbooks");
    runbooks.extend(RUNBOOK_SEEDS.iter().map(|s| s.to_string()));
    let mut inventories: Vec<String> = files_in("inventories");
    inventories.extend(INVENTORY_SEEDS.iter().map(|s| s.to_string()));
    let donors: Vec<&str> = runbooks
        .iter()
        .chain(&inventories)
        .map(String::as_str)
        .collect();

    let mut reached = Reached::default();
    for i in 0..cases {
        let case_seed = seed ^ (stream << 48) ^ i;
        let mut rng = Rng(case_seed);
        let mut runbook = rng.pick(&runbooks).clone();
        let mut inventory = rng.pick(&inventories).clone();
        // A few cases are pure noise; the rest stay close enough to YAML to reach the decoders.
        if rng.chance(3) {
            let n = rng.below(200);
            runbook = random_text(&mut rng, n);
        } else if mutate_runbook || rng.chance(30) {
            runbook = mutate(&mut rng, &runbook, &donors);
        }
        if !mutate_runbook || rng.chance(20) {
            inventory = mutate(&mut rng, &inventory, &donors);
        }
        let result = panic::catch_unwind(AssertUnwindSafe(|| {
            exercise(&mut rng, &runbook, &inventory, &mut reached);
        }));
        if result.is_err() {
            let base = save_failure(seed, i, &runbook, &inventory);
            panic!(
                "opsrun panicked on fuzz case {i} (OPSRUN_FUZZ_SEED={seed:#x}, stream {stream}); \
                 inputs written to {}.{{runbook,inventory}}.yaml\n--- runbook ---\n{runbook:?}\n--- inventory ---\n{inventory:?}",
                base.display()
            );
        }
    }
    eprintln!("fuzz stream {stream}: {cases} cases, {reached:?}");
    // Too few valid decodes would mean the mutations got too destructive to reach the planner.
    assert!(
        reached.planned * 20 >= cases,
        "only {} of {cases} cases reached a plan: {reached:?}",
        reached.planned
    );
}

#[test]
fn mutated_runbooks_never_panic() {
    fuzz(1, true);
}

#[test]
fn mutated_inventories_never_panic() {
    fuzz(2, false);
}

/// Pieces for field values: templates, shell, patterns and text that breaks naive slicing.
#[rustfmt::skip]
const FRAGMENTS: &[&str] = &[
    "{{ weaver_home }}", "{{ host.name }}", "{{ p | quote }}", "{{ s }}", "{{ s | quote }}",
    "{{ run.stamp }}", "{{ groups.app }}", "{{ hosts }}", "{{ v }}", "{{ v | basename }}",
    "{% for h in hosts %}{{ h }}{% endfor %}", "{{ 'a' ~ 2 }}", "{{ p | dirname }}",
    "{{ host['name'] }}", "{{ range(3) }}", "{{ c0 }}", "{{ c1 | quote }}", "rm -rf /",
    "tar czf a --exclude=x b", "ps | grep x", "kill -9", "mysql -pSecret", "sudo -u", "$(id)",
    "`id`", "; ", " && ", "|", "'", "\"", "\\", "app", "db", "app:!oa2", "db:&app", "&", "!", ":",
    ",", "*", "oa*", "all", "5s", "1h30m", "9999999999999999999999s", "0", "-", "ms", "é", "中文",
    "\u{1}captured:v\u{1}", "\u{1}", "\u{0}", "\u{202e}", "\u{feff}", "\n", "\r", "\t", "   ", "",
];

/// Fragments that make planning fail: rare, or no case would get past the first template.
#[rustfmt::skip]
const BROKEN: &[&str] = &[
    "{{ host.nmae }}", "{{ undefined }}", "{{", "}}", "{%", "%}", "{{ 1/0 }}", "{{ x | quote }}",
    "{{ c9 }}", "{{ s.x.y }}", "{% if %}",
];

fn value(rng: &mut Rng) -> String {
    (0..rng.below(4))
        .map(|_| {
            if rng.chance(2) {
                *rng.pick(BROKEN)
            } else {
                *rng.pick(FRAGMENTS)
            }
        })
        .collect()
}

/// A runbook whose structure is valid but whose every value is random, written as JSON
/// strings (valid YAML double-quoted scalars), so nearly every case reaches the planner.
fn structured_runbook(rng: &mut Rng) -> String {
    let q = |s: String| serde_json::to_string(&s).expect("a string serialises");
    let hosts = if rng.chance(90) {
        rng.pick(&[
            "all", "app", "db", "app:db", "app:!oa2", "db:&app", "oa*", "local",
        ])
        .to_string()
    } else {
        value(rng)
    };
    let mut out = format!("name: {}\nhosts: {}\n", q(value(rng)), q(hosts));
    if rng.chance(30) {
        let serial = *rng.pick(&["1", "2", "\"50%\"", "\"1%\"", "\"100%\"", "1000"]);
        out.push_str(&format!("serial: {serial}\n"));
    }
    let default = q(value(rng));
    out.push_str(&format!(
        "params:\n  p: {{ default: {default}, choices: [{}, {default}] }}\n  s: {{ secret: true }}\nvars:\n  v: {}\nsteps:\n",
        q(value(rng)),
        q(value(rng))
    ));
    for i in 0..1 + rng.below(4) {
        out.push_str(&format!("  - name: {}\n", q(format!("s{i}{}", value(rng)))));
        let action = *rng.pick(&["run", "script", "manual", "check", "upload"]);
        if action == "upload" {
            out.push_str(&format!(
                "    upload: {{ src: {}, dest: {}, owner: {} }}\n",
                q(value(rng)),
                q(value(rng)),
                q(value(rng))
            ));
        } else {
            out.push_str(&format!("    {action}: {}\n", q(value(rng))));
        }
        let fields: &[&str] = match action {
            "manual" => &["on", "when", "confirm", "rollback"],
            "upload" => &[
                "on", "when", "confirm", "rollback", "as", "cwd", "env", "timeout",
            ],
            "script" => &[
                "on", "when", "confirm", "rollback", "as", "cwd", "env", "timeout", "capture",
            ],
            _ => &[
                "on", "when", "confirm", "rollback", "as", "cwd", "env", "stdin", "timeout",
                "delay", "capture", "expect",
            ],
        };
        for field in fields {
            if !rng.chance(35) {
                continue;
            }
            let v = q(value(rng));
            let line = match *field {
                "env" => format!("    env: {{ E: {v} }}\n"),
                // Regexes and durations are checked at decode time; random ones rarely pass.
                "capture" => format!(
                    "    capture: {{ name: c{i}, regex: {} }}\n",
                    q(regex::escape(&value(rng)))
                ),
                "expect" => format!(
                    "    expect: {{ stdout: {} }}\n",
                    q(regex::escape(&value(rng)))
                ),
                "timeout" | "delay" => format!(
                    "    {field}: {}\n",
                    rng.pick(&["1s", "5m", "1h30m", "250ms", "0", "2d"])
                ),
                "local" => "    local: true\n".to_string(),
                "on" if rng.chance(90) => format!(
                    "    on: {}\n",
                    rng.pick(&["app", "db", "oa1", "app:!oa1", "*", "sandbox"])
                ),
                "when" if rng.chance(80) => format!(
                    "    when: {}\n",
                    q(rng
                        .pick(&[
                            "true",
                            "p == 'x'",
                            "host.name in groups.app",
                            "c0 != ''",
                            "v",
                            "not s"
                        ])
                        .to_string())
                ),
                f => format!("    {f}: {v}\n"),
            };
            out.push_str(&line);
        }
        if rng.chance(10) && !matches!(action, "manual") {
            out.push_str("    local: true\n");
        }
    }
    out
}

#[test]
fn random_values_in_valid_structure_never_panic() {
    let seed = env_u64("OPSRUN_FUZZ_SEED", DEFAULT_SEED);
    let cases = env_u64("OPSRUN_FUZZ_CASES", DEFAULT_STRUCTURED_CASES);
    let inventories: Vec<String> = INVENTORY_SEEDS.iter().map(|s| s.to_string()).collect();
    let mut reached = Reached::default();
    for i in 0..cases {
        let mut rng = Rng(seed ^ (3 << 48) ^ i);
        let runbook = structured_runbook(&mut rng);
        let inventory = rng.pick(&inventories).clone();
        let result = panic::catch_unwind(AssertUnwindSafe(|| {
            exercise(&mut rng, &runbook, &inventory, &mut reached);
        }));
        if result.is_err() {
            let base = save_failure(seed, i, &runbook, &inventory);
            panic!(
                "opsrun panicked on structured case {i} (OPSRUN_FUZZ_SEED={seed:#x}); \
                 inputs written to {}.{{runbook,inventory}}.yaml\n--- runbook ---\n{runbook}",
                base.display()
            );
        }
    }
    eprintln!("structured: {cases} cases, {reached:?}");
    assert!(
        reached.runbook_decoded * 2 >= cases,
        "structured runbooks should mostly decode: {reached:?}"
    );
}

#[test]
fn the_unmutated_seeds_load_and_plan() {
    // Guards the fuzzer itself: seeds that do not load would only exercise error paths.
    let mut rng = Rng(DEFAULT_SEED);
    let inv_text = INVENTORY_SEEDS[0];
    for (i, text) in RUNBOOK_SEEDS.iter().enumerate() {
        let rb = opsrun::load::runbook_from_source(SourceFile::new("seed.yaml", *text))
            .unwrap_or_else(|e| panic!("runbook seed {i} does not load:\n{e}"));
        let inv = opsrun::load::inventory_from_source(SourceFile::new("inv.yaml", inv_text))
            .unwrap_or_else(|e| panic!("inventory seed does not load:\n{e}"));
        let mut opts = options(&mut rng, None);
        opts.limit = None;
        if rb.params.iter().any(|p| p.name == "package") {
            opts.params = vec![("package".into(), "/tmp/app.zip".into())];
        }
        Planner::new(rb, inv, opts)
            .and_then(|p| p.plan())
            .unwrap_or_else(|e| panic!("runbook seed {i} does not plan:\n{e}"));
    }
    for (i, text) in INVENTORY_SEEDS.iter().enumerate() {
        opsrun::load::inventory_from_source(SourceFile::new("inv.yaml", *text))
            .unwrap_or_else(|e| panic!("inventory seed {i} does not load:\n{e}"));
    }
}

/// A random template bomb: loops, string repetition, `replace` chains and
/// concatenations, nested at random, some constant (folded when compiled),
/// some not (`i - i` keeps a value from being folded).
fn bomb(rng: &mut Rng, depth: usize) -> String {
    let sizes = ["1000", "1000000", "30000000", "100000000"];
    let piece = |rng: &mut Rng| -> String {
        let n = *rng.pick(&sizes);
        match rng.below(4) {
            0 => format!("('x' * {n})"),
            1 => format!("('x' * ({n} + i - i))"),
            2 => format!("(range({})|join(','))", rng.pick(&["10", "1000", "100000"])),
            _ => format!(
                "('xxxxxxxxxx'{})",
                "|replace('x', 'xxxxxxxxxx')".repeat(1 + rng.below(9))
            ),
        }
    };
    let expr = |rng: &mut Rng| -> String {
        let k = 1 + rng.below(6);
        (0..k).map(|_| piece(rng)).collect::<Vec<_>>().join(" ~ ")
    };
    let body = if depth == 0 || rng.chance(30) {
        if rng.chance(50) {
            format!("{{{{ {} }}}}", expr(rng))
        } else {
            format!("{{% if ({}) == '' %}}{{% endif %}}", expr(rng))
        }
    } else {
        bomb(rng, depth - 1)
    };
    let n = rng.pick(&["3", "1000", "100000"]);
    format!("{{% for i in range({n}) %}}{body}{{% endfor %}}")
}

/// `status`, wall time and peak resident memory of the binary run in `dir`.
fn measured(dir: &Path, args: &[&str]) -> (i32, std::time::Duration, u64, String) {
    use std::os::unix::process::ExitStatusExt;
    let started = std::time::Instant::now();
    // Reaped by `wait4` below, which `Child::wait` is not: only it returns the rusage.
    #[allow(clippy::zombie_processes)]
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_opsrun"))
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn opsrun");
    let pid = child.id() as libc::pid_t;
    let mut stderr = child.stderr.expect("stderr pipe");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut err).expect("read stderr");
    let mut status = 0;
    // SAFETY: plain wait4 on our own child, into locals.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid, "wait4");
    let code = std::process::ExitStatus::from_raw(status)
        .code()
        .unwrap_or(-1);
    // ru_maxrss is in KiB on Linux.
    let peak = u64::try_from(usage.ru_maxrss).unwrap_or(0) * 1024;
    (code, started.elapsed(), peak, err)
}

/// No template can make `check` or the dry-run run long or grow big: each
/// random bomb ends, within a few seconds and a few hundred MB, either
/// rendered within the budget or with a positioned error.
#[test]
fn template_bombs_stay_within_time_and_memory() {
    let seed = env_u64("OPSRUN_FUZZ_SEED", DEFAULT_SEED);
    let cases = env_u64("OPSRUN_FUZZ_BOMBS", 10);
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("runbooks")).unwrap();
    std::fs::create_dir_all(dir.path().join("inventories")).unwrap();
    std::fs::write(
        dir.path().join("inventories/lab.yaml"),
        "groups:\n  app:\n    hosts:\n      a1: { connection: local }\n",
    )
    .unwrap();
    // Time for the 2 s watch, a loaded CI machine and the process itself.
    let time_bound = std::time::Duration::from_secs(10);
    let memory_bound: u64 = 400 << 20;
    for i in 0..cases {
        let mut rng = Rng(seed ^ (3 << 48) ^ i);
        let depth = rng.below(3);
        let template = bomb(&mut rng, depth);
        std::fs::write(
            dir.path().join("runbooks/bomb.yaml"),
            format!(
                "name: bomb\nhosts: app\nsteps:\n  - name: bomb\n    run: {}\n",
                serde_json::to_string(&template).unwrap()
            ),
        )
        .unwrap();
        for args in [
            &["check", "bomb"][..],
            &["bomb", "--env", "lab", "--dry-run"][..],
        ] {
            let (code, took, peak, err) = measured(dir.path(), args);
            let case = format!("case {i} (OPSRUN_FUZZ_SEED={seed:#x}) {args:?}: {template}");
            assert!(
                code == 0 || (code == 2 && err.contains("--> runbooks/bomb.yaml:5:10")),
                "{case}: exit {code}\n{err}"
            );
            assert!(took < time_bound, "{case}: took {took:?}");
            assert!(peak < memory_bound, "{case}: peak {} MiB", peak >> 20);
        }
    }
}
