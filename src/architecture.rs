//! The shape of the crate, checked: stages only use stages before them in the
//! pipeline (and leaves), leaves use no stage, and nothing forms a cycle.
//!
//! It reads every `src/**/*.rs` file's `crate::…` paths (in `use` lines and in
//! code; comments and `#[cfg(test)] mod tests` blocks are skipped, since tests
//! may reach anything), maps each to its top-level module, and checks the edge.
//! It also checks that comments cite only documents the repository has.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Stages, from the edge inwards: each may use only the ones after it.
const STAGES: &[&str] = &["cli", "execute", "sign", "report", "record", "plan", "load"];

/// Libraries any stage may use; they use no stage (other leaves are fine, without cycles).
const LEAVES: &[&str] = &[
    "clock",
    "diagnostic",
    "digest",
    "duration",
    "error",
    "plural",
    "sanitize",
    "shell",
    "template",
    "transport",
    "yaml",
];

/// Files that are not modules of the crate graph: the roots and this check.
const ROOTS: &[&str] = &["lib.rs", "main.rs", "architecture.rs"];

/// One `crate::` reference: which file, which line, which module it names.
#[derive(Debug, Clone)]
struct Edge {
    file: String,
    line: usize,
    from: String,
    to: String,
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a file under `src/` belongs to: `plan/mod.rs` → `plan`.
fn module_of(rel: &Path) -> String {
    let first = rel.components().next().unwrap().as_os_str();
    let first = first.to_string_lossy();
    first.strip_suffix(".rs").unwrap_or(&first).to_string()
}

/// The modules named after `crate::` on one line, including `use crate::{a, b::c}`.
fn targets(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("crate::") {
        let after = &rest[at + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            let inner = group.split('}').next().unwrap_or("");
            for part in inner.split(',') {
                let name: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.push(name);
                }
            }
        } else {
            let name: String = after
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.push(name);
            }
        }
        rest = after;
    }
    out
}

/// Every line of code under `src/` (comments and test modules left out): file,
/// line number, top-level module and text.
fn code_lines(src: &Path) -> Vec<(String, usize, String, String)> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut out = Vec::new();
    for path in files {
        let rel = path.strip_prefix(src).unwrap();
        if rel.components().count() == 1 && ROOTS.contains(&rel.to_str().unwrap()) {
            continue;
        }
        let from = module_of(rel);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let t = line.trim_start();
            if t == "#[cfg(test)]"
                && lines
                    .get(i + 1)
                    .is_some_and(|n| n.trim_start().starts_with("mod tests"))
            {
                break;
            }
            if t.starts_with("//") {
                continue;
            }
            out.push((
                format!("src/{}", rel.display()),
                i + 1,
                from.clone(),
                line.to_string(),
            ));
        }
    }
    out
}

fn edges(src: &Path) -> Vec<Edge> {
    let mut out = Vec::new();
    for (file, line, from, text) in code_lines(src) {
        for to in targets(&text) {
            if to != from {
                out.push(Edge {
                    file: file.clone(),
                    line,
                    from: from.clone(),
                    to,
                });
            }
        }
    }
    out
}

/// Modules a stage must not use although the stage order allows it, and why.
const FORBIDDEN: &[(&str, &str, &str)] = &[(
    "execute",
    "runbook",
    "the engine runs the plan (src/plan/model.rs), never the runbook it was made from",
)];

/// Lines of `module` that name `forbidden` as a path (`load::runbook::Step`,
/// `load::{runbook, ...}`, `runbook::Action`).
fn forbidden_uses(
    lines: &[(String, usize, String, String)],
    module: &str,
    forbidden: &str,
) -> Vec<String> {
    let named = |text: &str| {
        let code: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        code.contains(&format!("{forbidden}::"))
            || code.contains(&format!("::{forbidden};"))
            || code.split("::{").skip(1).any(|group| {
                group
                    .split('}')
                    .next()
                    .unwrap_or("")
                    .split(',')
                    .any(|p| p == forbidden || p.starts_with(&format!("{forbidden}::")))
            })
    };
    lines
        .iter()
        .filter(|(_, _, from, text)| from == module && named(text))
        .map(|(file, line, _, _)| format!("{file}:{line}: `{module}` uses `{forbidden}`"))
        .collect()
}

/// Every broken rule, one line each, naming the file and line of the edge.
fn problems(edges: &[Edge]) -> Vec<String> {
    let rank = |m: &str| STAGES.iter().position(|s| *s == m);
    let leaf = |m: &str| LEAVES.contains(&m);
    let mut out = Vec::new();
    for e in edges {
        for m in [&e.from, &e.to] {
            if rank(m).is_none() && !leaf(m) {
                out.push(format!(
                    "{}:{}: module `{m}` is neither a stage nor a leaf: declare it in src/architecture.rs",
                    e.file, e.line
                ));
            }
        }
        match (rank(&e.from), rank(&e.to)) {
            (None, Some(_)) if leaf(&e.from) => out.push(format!(
                "{}:{}: leaf `{}` uses stage `{}`",
                e.file, e.line, e.from, e.to
            )),
            (Some(a), Some(b)) if b < a => out.push(format!(
                "{}:{}: stage `{}` uses `{}`, which comes before it ({})",
                e.file,
                e.line,
                e.from,
                e.to,
                STAGES.join(" → ")
            )),
            _ => {}
        }
    }
    // Cycles (among leaves; the stage order already rules them out among stages).
    let mut graph: BTreeMap<&str, BTreeMap<&str, &Edge>> = BTreeMap::new();
    for e in edges.iter().filter(|e| leaf(&e.from) && leaf(&e.to)) {
        graph.entry(&e.from).or_default().entry(&e.to).or_insert(e);
    }
    let mut reported = BTreeSet::new();
    for start in graph.keys() {
        let mut path = vec![*start];
        if let Some(cycle) = find_cycle(&graph, &mut path, start) {
            let mut key: Vec<&str> = cycle[1..].to_vec();
            key.sort();
            if reported.insert(key) {
                let steps: Vec<String> = cycle
                    .windows(2)
                    .map(|w| {
                        let e = graph[w[0]][w[1]];
                        format!("{} → {} ({}:{})", w[0], w[1], e.file, e.line)
                    })
                    .collect();
                out.push(format!("import cycle: {}", steps.join(", ")));
            }
        }
    }
    out
}

fn find_cycle<'a>(
    graph: &BTreeMap<&'a str, BTreeMap<&'a str, &Edge>>,
    path: &mut Vec<&'a str>,
    start: &'a str,
) -> Option<Vec<&'a str>> {
    let here = *path.last().unwrap();
    for next in graph.get(here).into_iter().flat_map(|m| m.keys()) {
        if *next == start {
            let mut c = path.clone();
            c.push(start);
            return Some(c);
        }
        if !path.contains(next) {
            path.push(next);
            if let Some(c) = find_cycle(graph, path, start) {
                return Some(c);
            }
            path.pop();
        }
    }
    None
}

#[test]
fn stages_use_only_earlier_stages_and_leaves_use_none() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let found = problems(&edges(&src));
    assert!(found.is_empty(), "\n{}\n", found.join("\n"));
}

#[test]
fn the_engine_uses_the_plan_and_never_the_runbook() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lines = code_lines(&src);
    let mut found = Vec::new();
    for (module, forbidden, why) in FORBIDDEN {
        for p in forbidden_uses(&lines, module, forbidden) {
            found.push(format!("{p}: {why}"));
        }
    }
    assert!(found.is_empty(), "\n{}\n", found.join("\n"));
}

#[test]
fn the_forbidden_check_sees_every_way_to_name_a_module() {
    let line = |text: &str| {
        (
            "src/execute/x.rs".to_string(),
            3,
            "execute".to_string(),
            text.to_string(),
        )
    };
    let lines = [
        line("use crate::load::runbook::Step;"),
        line("use crate::load::{inventory, runbook};"),
        line("use crate::load::runbook;"),
        line("let r = planner.runbook.name.clone();"),
        (
            "src/plan/x.rs".into(),
            1,
            "plan".into(),
            "use crate::load::runbook::Step;".into(),
        ),
    ];
    assert_eq!(forbidden_uses(&lines, "execute", "runbook").len(), 3);
}

/// Documents a comment names: `README.md`, `docs/procedures.md`, `DESIGN §4`.
/// Run artefacts (`log.md`, `plan.md`) are lower case and are not checked.
fn cited_documents(comment: &str) -> Vec<String> {
    let mut out = Vec::new();
    for word in comment.split(|c: char| c.is_whitespace() || "()[]`,;:\"'".contains(c)) {
        let word = word.trim_end_matches('.');
        let named_doc = word.ends_with(".md")
            && (word.starts_with("docs/") || word.starts_with(|c: char| c.is_ascii_uppercase()));
        if named_doc || word == "DESIGN" || word == "PROCEDURES" {
            out.push(word.to_string());
        }
    }
    out
}

#[test]
fn comments_cite_only_documents_in_the_repository() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    let mut missing = Vec::new();
    // This file names the forbidden citations itself.
    files.retain(|p| !p.ends_with("architecture.rs"));
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        for (i, line) in text.lines().enumerate() {
            let Some(at) = line.find("//") else { continue };
            for doc in cited_documents(&line[at..]) {
                if !root.join(&doc).is_file() {
                    missing.push(format!(
                        "{}:{}: cites `{doc}`, which is not in the repository",
                        path.strip_prefix(root).unwrap().display(),
                        i + 1
                    ));
                }
            }
        }
    }
    assert!(missing.is_empty(), "\n{}\n", missing.join("\n"));
}

#[test]
fn cited_documents_are_found_in_comments() {
    assert_eq!(
        cited_documents("//! see DESIGN §4 and (PROCEDURES.md), docs/procedures.md; not log.md"),
        ["DESIGN", "PROCEDURES.md", "docs/procedures.md"]
    );
}

#[test]
fn the_check_sees_grouped_imports_and_paths_in_code() {
    assert_eq!(
        targets("use crate::{lint, preview::text}; let x = crate::plan::MASK;"),
        ["lint", "preview", "plan"]
    );
}

#[test]
fn the_check_reports_a_backward_edge_and_a_cycle() {
    let e = |from: &str, to: &str| Edge {
        file: format!("src/{from}.rs"),
        line: 1,
        from: from.into(),
        to: to.into(),
    };
    let found = problems(&[e("plan", "execute"), e("shell", "yaml"), e("yaml", "shell")]);
    assert!(
        found[0].contains("stage `plan` uses `execute`"),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|p| p.starts_with("import cycle: shell → yaml")),
        "{found:?}"
    );
}

/// The longest a source file may be, its `#[cfg(test)] mod tests` block not counted:
/// past this a file holds more than one concept and should be split by concept.
const MAX_FILE_LINES: usize = 600;

/// Files allowed past `MAX_FILE_LINES`, relative to `src/`.
const LONG_FILES: &[&str] = &[
    // Leaves that are one concept each (a YAML subset parser, the template language).
    "yaml.rs",
    "template.rs",
];

/// Lines of a source file before its `#[cfg(test)] mod tests` block.
fn lines_before_tests(text: &str) -> usize {
    let lines: Vec<&str> = text.lines().collect();
    lines
        .windows(2)
        .position(|w| w[0].trim() == "#[cfg(test)]" && w[1].trim_start().starts_with("mod tests"))
        .unwrap_or(lines.len())
}

/// `src/`-relative files over `MAX_FILE_LINES` that are not in `LONG_FILES`. Whole
/// test files (`architecture.rs`, `…/tests.rs`, included as `#[cfg(test)] mod …;`)
/// are left out.
fn long_files(src: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut out = Vec::new();
    for path in files {
        let rel = path
            .strip_prefix(src)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if rel == "architecture.rs" || rel == "tests.rs" || rel.ends_with("/tests.rs") {
            continue;
        }
        let n = lines_before_tests(&std::fs::read_to_string(&path).unwrap());
        if n > MAX_FILE_LINES && !LONG_FILES.contains(&rel.as_str()) {
            out.push(format!(
                "src/{rel}: {n} lines (not counting its tests), over {MAX_FILE_LINES}"
            ));
        }
    }
    out
}

#[test]
fn no_source_file_is_over_the_length_limit() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let found = long_files(&src);
    assert!(found.is_empty(), "\n{}\n", found.join("\n"));
}

#[test]
fn the_length_check_does_not_count_the_tests_block() {
    let code = "fn a() {}\n".repeat(3);
    let tests = "#[cfg(test)]\nmod tests {\n    #[test]\n    fn t() {}\n}\n";
    assert_eq!(lines_before_tests(&code), 3);
    assert_eq!(lines_before_tests(&format!("{code}{tests}")), 3);
    // A `#[cfg(test)]` on something else is code.
    assert_eq!(
        lines_before_tests(&format!("{code}#[cfg(test)]\nfn helper() {{}}\n")),
        5
    );
}
