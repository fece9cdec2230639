//! What is safe to show: secrets masked, control characters made visible.

/// What a secret value is shown as, everywhere it would appear.
pub const MASK: &str = "******";

/// How the transport's cut marker (`transport::cut_marker`, between the head
/// and the tail it kept of a long stream) begins and ends: a secret may
/// straddle either cut, and the `Redactor` masks its pieces.
pub const CUT_OPENS: &str = "\n[... opsrun kept only";
pub const CUT_CLOSES: &str = " ...]\n";

/// Replaces every secret value with `******`, in each form it can be written
/// in: as it is, shell-quoted (a command line), JSON-escaped (a journal line:
/// a `"` or `\` in a secret is written `\"`, `\\`), and both.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    needles: Vec<String>,
}

impl Redactor {
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a str>) -> Redactor {
        let mut needles: Vec<String> = Vec::new();
        for s in secrets {
            // Very short secrets would mask half the output; they are still kept off argv by lint.
            if s.chars().count() < 3 {
                continue;
            }
            let quoted = crate::shell::quote(s);
            needles.push(json_escaped(s));
            needles.push(json_escaped(&quoted));
            needles.push(quoted);
            needles.push(s.to_string());
        }
        // Longest first, so a quoted form is masked whole before its inner value.
        needles.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        needles.dedup();
        Redactor { needles }
    }

    /// Whether `s` holds a secret, in any of its forms.
    pub fn finds(&self, s: &str) -> bool {
        self.needles.iter().any(|n| s.contains(n.as_str()))
    }

    pub fn redact(&self, s: &str) -> String {
        let mut out = s.to_string();
        for n in &self.needles {
            if out.contains(n.as_str()) {
                out = out.replace(n.as_str(), MASK);
            }
        }
        if out.contains(CUT_OPENS) {
            // Pieces of a secret are masked on whole bytes; a lossy piece is never shown.
            return String::from_utf8_lossy(&self.mask_cut_pieces(out.into_bytes())).into_owned();
        }
        out
    }

    pub fn redact_bytes(&self, b: &[u8]) -> Vec<u8> {
        if self.needles.is_empty() {
            return b.to_vec();
        }
        let mut out = b.to_vec();
        for n in &self.needles {
            out = replace_bytes(&out, n.as_bytes(), MASK.as_bytes());
        }
        self.mask_cut_pieces(out)
    }

    /// Where the transport kept only a stream's head and tail
    /// (`transport::cut_marker`), a secret may straddle either cut: the head's
    /// last bytes that begin a secret and the tail's first bytes that end one
    /// are masked, so neither half is shown.
    fn mask_cut_pieces(&self, b: Vec<u8>) -> Vec<u8> {
        let (opens, closes) = (CUT_OPENS.as_bytes(), CUT_CLOSES.as_bytes());
        let find = |hay: &[u8], from: usize, needle: &[u8]| {
            (from..=hay.len().saturating_sub(needle.len())).find(|&i| hay[i..].starts_with(needle))
        };
        let Some(open) = find(&b, 0, opens) else {
            return b;
        };
        let Some(close) = find(&b, open, closes).map(|c| c + closes.len()) else {
            return b;
        };
        let (before, after) = (&b[..open], &b[close..]);
        let needles = || self.needles.iter().map(String::as_bytes);
        // The longest piece: a secret's start that ends the head…
        let head = needles()
            .flat_map(|n| (1..n.len()).filter(move |k| before.ends_with(&n[..*k])))
            .max()
            .unwrap_or(0);
        // …and a secret's end that starts the tail.
        let tail = needles()
            .flat_map(|n| (1..n.len()).filter(move |k| after.starts_with(&n[n.len() - k..])))
            .max()
            .unwrap_or(0);
        let mut out = Vec::with_capacity(b.len());
        out.extend_from_slice(&b[..open - head]);
        if head > 0 {
            out.extend_from_slice(MASK.as_bytes());
        }
        out.extend_from_slice(&b[open..close]);
        if tail > 0 {
            out.extend_from_slice(MASK.as_bytes());
        }
        out.extend_from_slice(&b[close + tail..]);
        out
    }

    /// How much of `b` can be masked and shown now when more of it is still to come:
    /// everything but a tail where a secret starts and may not have arrived whole (or
    /// has, but runs past the cut). Masking the two pieces separately would show both
    /// halves of a secret that straddles them.
    pub fn complete_prefix(&self, b: &[u8]) -> usize {
        // A secret starting at `p` that reaches past `cut` (or past the end).
        let spans = |p: usize, cut: usize| {
            self.needles.iter().map(String::as_bytes).any(|n| {
                let rest = &b[p..];
                p + n.len() > cut
                    && match rest.len() >= n.len() {
                        true => rest.starts_with(n),
                        false => n.starts_with(rest),
                    }
            })
        };
        let longest = self.needles.first().map_or(0, String::len);
        let mut cut = b.len();
        while let Some(p) = (cut.saturating_sub(longest)..cut).find(|p| spans(*p, cut)) {
            cut = p;
        }
        cut
    }
}

/// `s` as it appears inside a JSON string.
fn json_escaped(s: &str) -> String {
    let json = serde_json::to_string(s).expect("a string serializes");
    json[1..json.len() - 1].to_string()
}

fn replace_bytes(hay: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    if needle.is_empty() || hay.len() < needle.len() {
        return hay.to_vec();
    }
    let mut out = Vec::with_capacity(hay.len());
    let mut i = 0;
    while i < hay.len() {
        if hay[i..].starts_with(needle) {
            out.extend_from_slice(with);
            i += needle.len();
        } else {
            out.push(hay[i]);
            i += 1;
        }
    }
    out
}

/// Remote output made safe for a terminal or a log: control characters (ANSI
/// escapes, NUL, backspace, CR, C1 controls) are shown as `\x1b`-style escapes;
/// characters that are invisible or change the direction of the text around
/// them are shown as `\u{200b}`-style escapes (at least four hex digits);
/// newlines and tabs stay; invalid UTF-8 is replaced.
///
/// The one place where what a host printed (or a runbook says) is made visible:
/// the terminal, the log and every gate and undo list go through it.
pub fn escape_controls(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' | '\t' => out.push(c),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if hides_or_reorders(c) => out.push_str(&format!("\\u{{{:04x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// A character that shows nothing, or makes the text around it read in another
/// order than it is stored: a log line or an undo command would read differently
/// from what ran (`rm -rf /\u{202e}...`, a zero-width space inside a name).
fn hides_or_reorders(c: char) -> bool {
    matches!(
        c,
        // Zero-width space, non-joiner, joiner; LRM, RLM.
        '\u{200B}'..='\u{200F}'
        // Arabic letter mark (ALM).
        | '\u{061C}'
        // Line and paragraph separators: a line break to some readers, none to others.
        | '\u{2028}' | '\u{2029}'
        // Bidi embeddings and overrides.
        | '\u{202A}'..='\u{202E}'
        // Word joiner and the invisible operators.
        | '\u{2060}'..='\u{2064}'
        // Bidi isolates.
        | '\u{2066}'..='\u{2069}'
        // Byte order mark (zero-width no-break space).
        | '\u{FEFF}'
    )
}

/// Text that must stay one line on a terminal (a step name, a gate's question,
/// a header): [`escape_controls`], with newlines and tabs escaped too, so a
/// runbook's name cannot pose as another line of what the operator reads.
pub fn escape_line(text: &str) -> String {
    escape_controls(text.as_bytes())
        .replace('\n', "\\x0a")
        .replace('\t', "\\x09")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_plain_and_quoted_forms() {
        let r = Redactor::new(["s3cr3t pw"]);
        assert_eq!(
            r.redact("login s3cr3t pw and 's3cr3t pw'"),
            "login ****** and ******"
        );
        assert_eq!(r.redact_bytes(b"x s3cr3t pw y"), b"x ****** y");
    }

    #[test]
    fn masks_the_json_escaped_forms() {
        let secret = r#"pa"ss\w'rd"#;
        let r = Redactor::new([secret]);
        let line = serde_json::json!({ "a": secret, "b": crate::shell::quote(secret) }).to_string();
        assert_eq!(r.redact(&line), r#"{"a":"******","b":"******"}"#);
        assert_eq!(r.redact_bytes(line.as_bytes()), r.redact(&line).as_bytes());
    }

    #[test]
    fn pieces_of_a_secret_at_the_cuts_of_a_kept_stream_are_masked() {
        let r = Redactor::new(["hunter22secret"]);
        let kept = format!(
            "ok hunter22secret hunt{}er22secret done",
            crate::transport::cut_marker(7)
        );
        let shown = String::from_utf8(r.redact_bytes(kept.as_bytes())).unwrap();
        assert_eq!(
            shown,
            format!(
                "ok ****** ******{}****** done",
                crate::transport::cut_marker(7)
            )
        );
        assert_eq!(r.redact(&kept), shown);
        // Nothing that merely resembles a secret's end is touched elsewhere.
        assert_eq!(r.redact("cret hunt"), "cret hunt");
    }

    #[test]
    fn a_piece_to_show_never_ends_inside_a_secret() {
        let r = Redactor::new(["hunter22"]);
        assert_eq!(r.complete_prefix(b"abc hunt"), 4);
        assert_eq!(r.complete_prefix(b"abc hunter22 x"), 14);
        assert_eq!(r.complete_prefix(b"abc hunter2"), 4);
        assert_eq!(r.complete_prefix(b"abc"), 3);
        assert_eq!(Redactor::default().complete_prefix(b"abc hunt"), 8);
    }

    #[test]
    fn escapes_terminal_controls() {
        assert_eq!(
            escape_controls(b"a\x1b[31mred\x00\r\nok\t"),
            "a\\x1b[31mred\\x00\\x0d\nok\t"
        );
        assert_eq!(
            escape_line("a\rb\nc\td\u{202e}"),
            "a\\x0db\\x0ac\\x09d\\u{202e}"
        );
    }

    /// Each class of character that hides or reorders text, one by one, then
    /// what stays as it is.
    #[test]
    fn escapes_every_invisible_and_direction_changing_character() {
        let cases: &[(&str, &[char])] = &[
            (
                "zero-width",
                &['\u{200B}', '\u{200C}', '\u{200D}', '\u{2060}', '\u{FEFF}'],
            ),
            ("marks", &['\u{200E}', '\u{200F}', '\u{061C}']),
            (
                "embeddings and overrides",
                &['\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}', '\u{202E}'],
            ),
            (
                "isolates",
                &['\u{2066}', '\u{2067}', '\u{2068}', '\u{2069}'],
            ),
            ("separators", &['\u{2028}', '\u{2029}']),
            (
                "C0 and C1 controls",
                &[
                    '\u{0}', '\u{7}', '\u{8}', '\u{1b}', '\u{7f}', '\u{85}', '\u{9b}',
                ],
            ),
        ];
        for (class, chars) in cases {
            for c in *chars {
                let shown = escape_controls(format!("a{c}b").as_bytes());
                let want = match *c as u32 {
                    n if n < 0x100 => format!("a\\x{n:02x}b"),
                    n => format!("a\\u{{{n:04x}}}b"),
                };
                assert_eq!(shown, want, "{class}: {c:?}");
                assert!(!escape_line(&format!("{c}")).contains(*c), "{class}: {c:?}");
            }
        }
        // Newlines and tabs stay; visible text of any script stays.
        assert_eq!(
            escape_controls("中文 한국어 é\n\tx".as_bytes()),
            "中文 한국어 é\n\tx"
        );
        assert_eq!(escape_controls(b"\xff"), "\u{fffd}");
    }
}
