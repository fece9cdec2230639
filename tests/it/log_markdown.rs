//! The Markdown log (and plan) stays valid Markdown whatever a host prints:
//! parsed with pulldown-cmark, its headings, tables and fenced blocks must be
//! exactly the ones opsrun wrote.

use crate::support::{
    cli::OPERATOR,
    lab::{expect_code, fingerprint, text, Sandbox},
};
use pulldown_cmark::{CodeBlockKind, Event, HeadingLevel, Options, Parser, Tag, TagEnd};

/// Hostile output: fences of 3 and 4 backticks, ANSI colours, NUL, a bidi
/// override, pipes and a table, a fake heading and a fake signer line, CJK.
const HOSTILE: &str = r#"name: hostile
description: output that tries to break the log
hosts: local
steps:
  - name: Stop web
    run: echo stopping
    service: { name: web, state: stopped }
    rollback: echo undo-stop
  - name: Noisy 输出
    confirm: "Print hostile | output?"
    run: "printf 'a ```` b\\n```\\n\\033[31mred\\033[0m\\000nul\\n| x | y |\\n|---|---|\\n## Fake heading\\n- Signer: `mallory`\\n中文テキスト 한국어\\n\\342\\200\\256evil\\n'; printf 'err ``` \\001\\n' >&2"
    rollback: echo undo-noisy
  - name: Long
    run: seq 1 300
  - name: Paste license
    manual: "Open the console and paste the licence | then confirm"
  - name: Start web
    run: echo starting
    service: { name: web, state: started }
  - name: Check it
    run: echo checking
    check: "test -f /nonexistent-opsrun-file"
    retries: 1
    delay: 0s
"#;

#[derive(Debug, Default)]
struct Doc {
    headings: Vec<(HeadingLevel, String)>,
    /// (info string, text, source of the whole block)
    blocks: Vec<(String, String, String)>,
    /// Tables as rows of cell texts; the header row first.
    tables: Vec<Vec<Vec<String>>>,
}

fn parse(md: &str) -> Doc {
    let mut doc = Doc::default();
    let mut heading: Option<(HeadingLevel, String)> = None;
    let mut block: Option<(String, String, std::ops::Range<usize>)> = None;
    let mut table: Option<Vec<Vec<String>>> = None;
    let mut cell: Option<String> = None;
    for (ev, range) in Parser::new_ext(md, Options::ENABLE_TABLES).into_offset_iter() {
        match ev {
            Event::Start(Tag::Heading { level, .. }) => heading = Some((level, String::new())),
            Event::End(TagEnd::Heading(_)) => doc.headings.extend(heading.take()),
            Event::Start(Tag::CodeBlock(kind)) => {
                let info = match kind {
                    CodeBlockKind::Fenced(i) => i.to_string(),
                    CodeBlockKind::Indented => "(indented)".to_string(),
                };
                block = Some((info, String::new(), range));
            }
            Event::End(TagEnd::CodeBlock) => {
                if let Some((info, body, r)) = block.take() {
                    doc.blocks.push((info, body, md[r].to_string()));
                }
            }
            Event::Start(Tag::Table(_)) => table = Some(Vec::new()),
            Event::End(TagEnd::Table) => doc.tables.extend(table.take()),
            Event::Start(Tag::TableHead) | Event::Start(Tag::TableRow) => {
                if let Some(t) = table.as_mut() {
                    t.push(Vec::new());
                }
            }
            Event::Start(Tag::TableCell) => cell = Some(String::new()),
            Event::End(TagEnd::TableCell) => {
                if let (Some(c), Some(t)) = (cell.take(), table.as_mut()) {
                    if let Some(row) = t.last_mut() {
                        row.push(c);
                    }
                }
            }
            Event::Text(s) | Event::Code(s) => {
                if let Some((_, b, _)) = block.as_mut() {
                    b.push_str(&s);
                } else if let Some(c) = cell.as_mut() {
                    c.push_str(&s);
                } else if let Some((_, h)) = heading.as_mut() {
                    h.push_str(&s);
                }
            }
            _ => {}
        }
    }
    doc
}

impl Doc {
    fn h(&self, level: HeadingLevel) -> Vec<&str> {
        self.headings
            .iter()
            .filter(|(l, _)| *l == level)
            .map(|(_, t)| t.as_str())
            .collect()
    }

    fn table_with_header(&self, first: &str) -> Vec<&Vec<Vec<String>>> {
        self.tables
            .iter()
            .filter(|t| t.first().and_then(|r| r.first()).map(String::as_str) == Some(first))
            .collect()
    }
}

/// Every fenced block closes: its source ends with a fence line at least as
/// long as the one that opened it (an unclosed fence would run to the end).
fn assert_fences_close(doc: &Doc) {
    for (info, body, src) in &doc.blocks {
        assert_ne!(info, "(indented)", "an indented code block appeared: {src}");
        let open = src.chars().take_while(|c| *c == '`').count();
        assert!(open >= 3, "not a backtick fence: {src}");
        let last = src
            .trim_end_matches('\n')
            .lines()
            .last()
            .unwrap_or_default();
        let close = last.chars().take_while(|c| *c == '`').count();
        assert!(
            close >= open && last.trim_end().len() == close && src.lines().count() >= 2,
            "fenced block does not close:\n{src}"
        );
        assert!(
            !body.contains("\n## How to verify"),
            "a block swallowed the rest of the log"
        );
    }
}

/// No raw control characters (but newline) and no bidi overrides in the document.
fn assert_no_raw_controls(md: &str) {
    for (i, c) in md.char_indices() {
        let bad = (c.is_control() && c != '\n')
            || ('\u{202A}'..='\u{202E}').contains(&c)
            || ('\u{2066}'..='\u{2069}').contains(&c);
        assert!(!bad, "raw control {c:?} at byte {i}");
    }
}

#[test]
fn hostile_output_keeps_the_log_structure() {
    let sb = Sandbox::new();
    sb.runbook("hostile", HOSTILE);
    let key = sb.keygen("id_ed25519", "ed25519", "", true);
    let out = sb.opsrun(&["hostile", "--env", "demo", "--yes"], &[]);
    // The check fails, so the completed steps are rolled back: exit 1.
    expect_code(&out, 1, "hostile run");
    let dir = sb.run_dir();
    let md = std::fs::read_to_string(dir.join("log.md")).expect("log.md");
    assert_no_raw_controls(&md);
    let doc = parse(&md);
    assert_fences_close(&doc);
    let [h1, h2] = &sb.hosts;

    let titles = doc.h(HeadingLevel::H1);
    assert_eq!(titles, vec!["opsrun execution log: hostile on demo"]);
    let sections = doc.h(HeadingLevel::H2);
    for s in [
        "Hosts",
        "Gates and manual steps",
        "Steps",
        "Rollback",
        "Business-impact downtime",
        "Exceptions",
        "How to verify",
    ] {
        assert!(sections.contains(&s), "missing section {s}: {sections:?}");
    }
    assert!(
        doc.headings
            .iter()
            .all(|(_, t)| !t.contains("Fake heading")),
        "output became a heading: {:?}",
        doc.headings
    );
    assert!(doc.h(HeadingLevel::H3).contains(&"2. Noisy 输出"));
    assert!(doc
        .h(HeadingLevel::H4)
        .iter()
        .any(|h| h.starts_with(&format!("{h1}: ok, exit 0, "))));

    // Header table: one value per row, all the fields the issue lists.
    let header = &doc.tables[0];
    let field = |k: &str| {
        header
            .iter()
            .find(|r| r.first().map(String::as_str) == Some(k))
            .and_then(|r| r.get(1))
            .cloned()
            .unwrap_or_else(|| panic!("header row {k} missing: {header:?}"))
    };
    for k in [
        "Runbook",
        "Runbook sha256",
        "Inventory sha256",
        "Environment",
        "Control host",
        "Ticket",
        "opsrun version",
        "Start",
        "End",
        "Duration",
    ] {
        field(k);
    }
    assert_eq!(field("Operator"), OPERATOR);
    assert_eq!(field("Dry run"), "no");
    assert!(field("Result").starts_with("FAILED"), "{}", field("Result"));
    assert!(header.iter().all(|r| r.len() == 2), "{header:?}");

    // Step x host table: 7 columns in every row; the pipes in the output split nothing.
    let steps = doc.table_with_header("#");
    assert_eq!(steps.len(), 2, "forward and rollback step tables");
    let forward = steps[0];
    assert_eq!(
        forward[0],
        ["#", "step", "host", "status", "start", "duration", "exit"]
    );
    assert!(forward.iter().all(|r| r.len() == 7), "{forward:?}");
    // Stop, Noisy, Long, Start, Check on two hosts each.
    assert_eq!(forward.len() - 1, 10, "{forward:?}");
    assert!(forward
        .iter()
        .any(|r| r[1] == "Noisy 输出" && r[2] == *h2 && r[3] == "ok"));
    assert!(forward
        .iter()
        .any(|r| r[1] == "Check it" && r[3] == "FAILED"));

    // Gates: the question with its pipe is one cell; who answered is recorded.
    let gates = doc.table_with_header("time");
    assert_eq!(gates.len(), 1);
    let gate = gates[0]
        .iter()
        .find(|r| r[2] == format!("Print hostile | output? (on {h1}, {h2})"))
        .expect("gate row");
    assert_eq!(gate.len(), 5);
    assert!(gate[3].starts_with("yes"));
    assert_eq!(gate[4], OPERATOR);
    assert!(gates[0]
        .iter()
        .any(|r| r[2].contains("paste the licence | then confirm") && r[3] == "done"));

    // Downtime per service and host, from the stop to the start.
    let down = doc.table_with_header("service");
    assert_eq!(down.len(), 1);
    assert!(down[0]
        .iter()
        .any(|r| r[0] == "web" && r[1] == *h1 && !r[3].contains("still down")));

    // The hostile output is inside one fenced block, shown, not interpreted.
    let noisy = doc
        .blocks
        .iter()
        .find(|(i, b, _)| i == "text" && b.contains("中文テキスト 한국어"))
        .expect("the CJK output");
    for needle in [
        "a ```` b\n```\n",
        "\\x1b[31mred\\x1b[0m\\x00nul",
        "| x | y |\n|---|---|",
        "## Fake heading",
        "- Signer: `mallory`",
        "\\u{202e}evil",
    ] {
        assert!(noisy.1.contains(needle), "{needle:?} not in {:?}", noisy.1);
    }
    assert_eq!(noisy.0, "text");
    assert!(doc
        .blocks
        .iter()
        .any(|(_, b, _)| b.contains("err ``` \\x01")));
    // The exact command, in `[user@host]#` form.
    assert!(doc.blocks.iter().any(
        |(i, b, _)| i == "console" && b.starts_with(&format!("[root@{h1}]# printf 'a ```` b"))
    ));

    // Long output is cut in the log; the full file is cited with its digest.
    assert!(md.contains("[... 260 lines omitted: see the full output file ...]"));
    let long = format!("outputs/03-long-{h1}.stdout");
    let full = std::fs::read(dir.join(&long)).unwrap();
    assert_eq!(full.iter().filter(|b| **b == b'\n').count(), 300);
    assert!(md.contains(&format!(
        "stdout (1092 bytes, truncated here; full output `{long}` sha256 `"
    )));

    // Check attempts (retries) and the rollback are in the log.
    assert!(md.contains("Check attempt 1: failed (exit 1)"));
    assert!(md.contains("Check attempt 2: failed (exit 1)"));
    assert!(doc
        .blocks
        .iter()
        .any(|(_, b, _)| b.contains("# echo undo-noisy")));

    // The fake signer line in the output does not fool verify.
    let log = dir.join("log.md").display().to_string();
    let v = sb.opsrun(&["verify", &log], &[]);
    expect_code(&v, 0, "verify");
    let s = text(&v.stdout);
    assert!(s.contains(&format!("signer     {OPERATOR} ")), "{s}");
    assert!(s.contains(&fingerprint(&key.with_extension("pub"))));
}

#[test]
fn the_plan_is_valid_markdown_too() {
    let sb = Sandbox::new();
    sb.runbook("hostile", HOSTILE);
    let out = sb.opsrun(
        &[
            "hostile",
            "--env",
            "demo",
            "--dry-run",
            "--output",
            "plan.md",
            "--no-sign",
        ],
        &[],
    );
    expect_code(&out, 0, "plan");
    let md = std::fs::read_to_string(sb.work().join("plan.md")).unwrap();
    assert_no_raw_controls(&md);
    let doc = parse(&md);
    assert_fences_close(&doc);
    assert_eq!(
        doc.h(HeadingLevel::H1),
        vec!["opsrun plan: hostile on demo"]
    );
    let sections = doc.h(HeadingLevel::H2);
    for s in ["Hosts", "Steps", "Rollback guide", "How to verify"] {
        assert!(sections.contains(&s), "missing {s}: {sections:?}");
    }
    let steps = doc.h(HeadingLevel::H3);
    assert_eq!(
        steps,
        vec![
            "1. Stop web",
            "2. Noisy 输出",
            "3. Long",
            "4. Paste license",
            "5. Start web",
            "6. Check it"
        ]
    );
    let header = &doc.tables[0];
    assert!(header.iter().any(|r| r[0] == "Dry run" && r[1] == "yes"));
    assert!(doc.blocks.iter().any(|(i, b, _)| i == "console"
        && b.contains("printf 'a ```` b")
        && b.starts_with(&format!("[root@{}]# ", sb.hosts[0]))));
    // The gate names its hosts, as the run asks it.
    let gate = format!(
        "**Gate**: `Print hostile | output? (on {}, {})` [y/N]",
        sb.hosts[0], sb.hosts[1]
    );
    assert!(md.contains(&gate), "{md}");
}

/// `opsrun rollback --dry-run` shows commands rendered with values a host printed:
/// a captured escape sequence is shown escaped, never sent to the terminal.
#[test]
fn the_rollback_preview_escapes_what_a_host_printed() {
    let sb = Sandbox::new();
    sb.runbook(
        "captured",
        "name: captured\nhosts: local\nsteps:\n  - name: Read version\n    run: \"printf 'v1\\\\033[31m'\"\n    capture: ver\n    rollback: echo back to {{ ver }}\n",
    );
    let out = sb.opsrun(&["captured", "--env", "demo", "--yes", "--no-sign"], &[]);
    expect_code(&out, 0, "run");
    let dir = sb.run_dir();
    let id = dir.file_name().unwrap().to_str().unwrap();
    let dry = sb.opsrun(&["rollback", id, "--dry-run"], &[]);
    expect_code(&dry, 0, "rollback --dry-run");
    let stdout = text(&dry.stdout);
    assert!(!stdout.contains('\u{1b}'), "{stdout:?}");
    assert!(
        stdout.contains(&format!("@{}]# echo back to v1\\x1b[31m\n", sb.hosts[0])),
        "{stdout}"
    );
}

const ROWS: &str = "name: rows\nhosts: app\nsteps:\n\
    \x20 - name: Long remote\n    run: echo forward\n    rollback: echo undone\n\
    \x20 - name: Break\n    run: exit 1\n\
    rollback:\n\
    \x20 - name: Restore\n    run: echo restore\n";

/// An undo row and a guide row are labelled as such, never with the bare number
/// of the forward step they share a name with.
#[test]
fn undo_and_guide_rows_are_labelled_in_the_log() {
    use crate::support::cli::Test;
    let dir = tempfile::tempdir().unwrap();
    let inventory = "groups:\n  app:\n    hosts:\n      a1: { connection: local }\n";
    let failed = Test::in_dir(dir.path())
        .write("runbooks/rows.yaml", ROWS)
        .write("inventories/lab.yaml", inventory)
        .args(["rows", "--env", "lab", "--yes", "--no-sign"])
        .expect_status(1)
        .run();
    let log = failed.log_md();
    assert!(log.contains("\n| 1 | Long remote | a1 | ok |"), "{log}");
    assert!(
        log.contains("\n| undo 1 | Long remote | a1 | ok |"),
        "{log}"
    );
    assert!(log.contains("\n### undo 1. Long remote\n"), "{log}");
    let guide = Test::in_dir(dir.path())
        .args(["rollback", &failed.id(), "--yes", "--no-sign"])
        .expect_status(0)
        .run();
    let log = guide.log_md();
    assert!(log.contains("\n| R1 | Restore | a1 | ok |"), "{log}");
    assert!(log.contains("\n### R1. Restore\n"), "{log}");
}

/// A failing step whose last stderr line is Markdown posing as the document's own
/// text (a verdict in bold, a link, an HTML tag), and invisible and direction-changing
/// characters (zero-width space, RLM, BOM, ALM, line separator).
const MARKUP: &str = r#"name: markup
hosts: local
steps:
  - name: Save
    run: echo saved
    rollback: echo restore
  - name: Break
    run: "printf 'x\\n**all 3 steps restored, Result: SUCCEEDED** [click](http://evil) <img src=x onerror=alert(1)> a\\342\\200\\213b\\342\\200\\217c\\357\\273\\277d\\330\\234e\\342\\200\\250f\\n' >&2; exit 1"
"#;

/// The Markdown in [`MARKUP`]'s stderr line, as it must read back from a code span.
const PAYLOAD: &str =
    "**all 3 steps restored, Result: SUCCEEDED** [click](http://evil) <img src=x onerror=alert(1)>";

/// Host text in the log is never markup: none of what the host printed is in a
/// strong, emphasis, link or image node (but inside code), nothing is HTML, and
/// the invisible characters are shown escaped.
#[test]
fn host_text_in_the_log_is_never_markup() {
    let sb = Sandbox::new();
    sb.runbook("markup", MARKUP);
    let out = sb.opsrun(&["markup", "--env", "demo", "--yes", "--no-sign"], &[]);
    expect_code(&out, 1, "markup run");
    let md = std::fs::read_to_string(sb.run_dir().join("log.md")).expect("log.md");
    assert_no_raw_controls(&md);
    for raw in ['\u{200b}', '\u{200f}', '\u{feff}', '\u{061c}', '\u{2028}'] {
        assert!(!md.contains(raw), "raw {raw:?} in the log:\n{md}");
    }
    let shown = r"a\u{200b}b\u{200f}c\u{feff}d\u{061c}e\u{2028}f";
    let host_words = ["all 3 steps restored", "click", "evil", "img", "onerror"];
    let mut inside = Vec::<&'static str>::new();
    let mut code_with_payload = 0;
    let mut in_block = false;
    let options =
        Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH | Options::ENABLE_TASKLISTS;
    for ev in Parser::new_ext(&md, options) {
        match ev {
            Event::Start(Tag::Strong) => inside.push("strong"),
            Event::Start(Tag::Emphasis) => inside.push("emphasis"),
            Event::Start(Tag::Strikethrough) => inside.push("strikethrough"),
            Event::Start(Tag::Link { dest_url, .. }) => {
                assert!(!dest_url.contains("evil"), "a link to {dest_url}");
                inside.push("link");
            }
            Event::Start(Tag::Image { dest_url, .. }) => panic!("an image {dest_url} in:\n{md}"),
            Event::End(
                TagEnd::Strong | TagEnd::Emphasis | TagEnd::Strikethrough | TagEnd::Link,
            ) => {
                inside.pop();
            }
            Event::Html(h) | Event::InlineHtml(h) => panic!("HTML {h:?} in:\n{md}"),
            Event::Start(Tag::CodeBlock(_)) => in_block = true,
            Event::End(TagEnd::CodeBlock) => in_block = false,
            Event::Text(t) if !in_block => {
                for w in host_words {
                    assert!(
                        !t.contains(w),
                        "host text {w:?} outside code (in {inside:?}): {t:?}\n{md}"
                    );
                }
            }
            Event::Code(c) if c.contains(PAYLOAD) => {
                assert!(c.contains(shown), "{c:?}");
                code_with_payload += 1;
            }
            _ => {}
        }
    }
    // The Result row, the failing host's `Reason:` line and the exceptions table.
    assert!(
        code_with_payload >= 3,
        "{code_with_payload} code spans carry the line:\n{md}"
    );
    // The payload reads back whole from the tables it is in: no pipe split a cell.
    let doc = parse(&md);
    let result = doc.tables[0]
        .iter()
        .find(|r| r[0] == "Result")
        .expect("Result row");
    assert!(result[1].starts_with("FAILED"), "{result:?}");
    assert!(result[1].contains(shown), "{result:?}");
    let exceptions = doc.table_with_header("type");
    assert!(exceptions[0]
        .iter()
        .any(|r| r.len() == 4 && r[0] == "step failed" && r[3].contains(shown)));
}

/// The invisible characters outside the zero-width/bidi set (the tester's
/// `r4.yaml`): soft hyphen, combining grapheme joiner, Hangul filler, variation
/// selector, a tag character, the braille blank, the Mongolian vowel separator.
const INVISIBLE: &str = r#"name: invisible
hosts: local
steps:
  - name: Grab
    run: "printf 'v\\302\\255a\\315\\217l'"
    capture: val
    rollback: "echo '{{ val }}'"
  - name: Break
    run: "printf 'shy\\302\\255 cgj\\315\\217 hf\\343\\205\\244 vs\\357\\270\\217 tag\\363\\240\\201\\201 bb\\342\\240\\200 mvs\\341\\240\\216 end\\n' >&2; exit 1"
"#;

#[test]
fn format_characters_and_fillers_are_escaped_in_the_log() {
    let sb = Sandbox::new();
    sb.runbook("invisible", INVISIBLE);
    let out = sb.opsrun(&["invisible", "--env", "demo", "--yes", "--no-sign"], &[]);
    expect_code(&out, 1, "invisible run");
    let md = std::fs::read_to_string(sb.run_dir().join("log.md")).expect("log.md");
    for raw in [
        '\u{00ad}',
        '\u{034f}',
        '\u{3164}',
        '\u{fe0f}',
        '\u{e0041}',
        '\u{2800}',
        '\u{180e}',
    ] {
        assert!(!md.contains(raw), "raw {raw:?} in the log:\n{md}");
    }
    let shown =
        r"shy\u{00ad} cgj\u{034f} hf\u{3164} vs\u{fe0f} tag\u{e0041} bb\u{2800} mvs\u{180e} end";
    assert!(md.contains(shown), "{md}");
    // The captured value, in the undo command the log records.
    assert!(md.contains(r"v\u{00ad}a\u{034f}l"), "{md}");
}

/// What the operator gives (`--ticket`, `OPSRUN_OPERATOR`) as Markdown posing
/// as the document's own: a sign-off in bold, a link, an HTML tag.
const TICKET: &str = "CHG-1 **SIGNED OFF** [ok](http://e) <script>x</script>";
const WHO: &str = "eve **boss** [me](http://e) <b>";

/// What in `md` is a link, an image or HTML, or the operator's words outside
/// a code span (in bold, or as plain text of the document's own).
fn markup_in(md: &str) -> Option<String> {
    let words = ["SIGNED OFF", "boss", "script", "http://e"];
    Parser::new_ext(md, Options::ENABLE_TABLES).find_map(|ev| match ev {
        Event::Start(t @ (Tag::Link { .. } | Tag::Image { .. })) => Some(format!("{t:?}")),
        Event::Html(h) | Event::InlineHtml(h) => Some(format!("html {h:?}")),
        Event::Text(t) if words.iter().any(|w| t.contains(w)) => Some(format!("text {t:?}")),
        _ => None,
    })
}

#[test]
fn operator_text_in_the_header_is_never_markup() {
    let sb = Sandbox::new();
    sb.runbook(
        "plain",
        "name: plain\nhosts: local\nsteps:\n  - name: Say\n    run: echo hi\n",
    );
    let env = [("OPSRUN_OPERATOR", WHO)];
    let out = sb.opsrun(
        &[
            "plain",
            "--env",
            "demo",
            "--yes",
            "--no-sign",
            "--ticket",
            TICKET,
        ],
        &env,
    );
    expect_code(&out, 0, "plain run");
    let log = std::fs::read_to_string(sb.run_dir().join("log.md")).expect("log.md");
    let plan = sb.opsrun(
        &[
            "plain",
            "--env",
            "demo",
            "--dry-run",
            "--output",
            "plan.md",
            "--no-sign",
            "--ticket",
            TICKET,
        ],
        &env,
    );
    expect_code(&plan, 0, "plan");
    let plan = std::fs::read_to_string(sb.work().join("plan.md")).unwrap();
    for (what, md) in [("log", &log), ("plan", &plan)] {
        assert_eq!(markup_in(md), None, "{what}:\n{md}");
        // The rows read back as given.
        let header = &parse(md).tables[0];
        let row = |k: &str| header.iter().find(|r| r[0] == k).map(|r| r[1].clone());
        assert_eq!(row("Ticket").as_deref(), Some(TICKET), "{what}:\n{md}");
        assert_eq!(row("Operator").as_deref(), Some(WHO), "{what}:\n{md}");
    }
}

/// An operator's name is an identity (it goes into allowed_signers lines) and a
/// ticket is one row of the log: a newline or a control character in either is
/// refused before anything runs.
#[test]
fn an_operator_or_ticket_with_a_newline_or_control_is_refused() {
    let sb = Sandbox::new();
    sb.runbook(
        "plain",
        "name: plain\nhosts: local\nsteps:\n  - name: Say\n    run: echo hi\n",
    );
    for (env, ticket, what) in [
        ("root\n- Run: x", "CHG-1", "OPSRUN_OPERATOR"),
        ("ann\u{1b}[2K", "CHG-1", "OPSRUN_OPERATOR"),
        ("ann", "CHG-1\n| Result | SUCCEEDED |", "--ticket"),
        ("ann", "CHG-1\u{202e}", "--ticket"),
    ] {
        let out = sb.opsrun(
            &[
                "plain",
                "--env",
                "demo",
                "--yes",
                "--no-sign",
                "--ticket",
                ticket,
            ],
            &[("OPSRUN_OPERATOR", env)],
        );
        expect_code(&out, 2, what);
        assert!(out.stderr.contains(what), "{what}: {}", out.stderr);
        assert!(
            !out.stderr.contains('\n') || !out.stderr.contains("- Run: x\n"),
            "{}",
            out.stderr
        );
        assert!(sb.runs().is_empty(), "{what}: a run was started");
    }
}
