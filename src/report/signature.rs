//! The "How to verify" block of a document: what it states about its signer.
//!
//! The writer ([`verify_section`]) and the verifier's reader ([`stated`]) share
//! these labels and formats; signing itself is the `sign` stage's job.

use super::markdown::{cell, code, fenced, inline_code};
use crate::clock::Time;
use crate::record::binding;
pub use crate::record::binding::Binding;
use std::fmt::Write as _;

/// The SSHSIG namespace of every opsrun signature.
pub const NAMESPACE: &str = "opsrun-log";

/// How the signing time is written in a signed document (and read back by verify).
pub const TIME_FORMAT: &str = "%Y-%m-%d %H:%M:%S %:z";

/// Who signed, with which key and when: written into the document before signing.
#[derive(Debug, Clone, PartialEq)]
pub struct SignerInfo {
    pub identity: String,
    /// `SHA256:...`, as `ssh-keygen -l` prints it.
    pub fingerprint: String,
    /// `ssh-ed25519`, `rsa-sha2-512`'s key type `ssh-rsa`, ...
    pub algorithm: String,
    /// The public key in OpenSSH form, without comment.
    pub public_key: String,
    pub time: Time,
}

impl SignerInfo {
    /// The line to put in an `allowed_signers` file for this signer.
    pub fn allowed_signers_line(&self) -> String {
        format!(
            "{} namespaces=\"{NAMESPACE}\" {}",
            principal(&self.identity),
            self.public_key
        )
    }
}

/// An identity as an allowed_signers principal: quoted when it holds spaces.
pub fn principal(identity: &str) -> String {
    if identity.is_empty()
        || identity
            .chars()
            .any(|c| c.is_whitespace() || c == '"' || c == '#')
    {
        format!("\"{}\"", identity.replace('"', ""))
    } else {
        identity.to_string()
    }
}

/// What a signed document says about itself, read back from its "How to verify" section.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stated {
    pub identity: Option<String>,
    pub fingerprint: Option<String>,
    pub signed_at: Option<String>,
    pub public_key: Option<String>,
    /// `(file, sha256)` of every output file the document cites.
    pub outputs: Vec<(String, String)>,
    pub unsigned: bool,
    /// The run the document is the log of, and its journal (absent in a plan
    /// and in logs written before logs were bound to their run).
    pub binding: Option<Binding>,
    /// The log says it was rendered by `opsrun log` after its run (the rest of that line).
    pub rendered: Option<String>,
}

/// `journal.jsonl`, N events, chain hash `HEX`
fn journal_line(events: u64, head: &str) -> String {
    format!(
        "{}, {events}{}{}",
        code(crate::record::journal::FILE),
        binding::labels::CHAIN_HASH,
        code(head)
    )
}

/// What a log rendered by `opsrun log` after its run says of itself.
pub fn rendered_later(r: &binding::Rendered) -> String {
    format!(
        "from the journal by `opsrun log` at {} by {}, not at the end of the run",
        cell(&r.at),
        code(&r.by)
    )
}

/// `` `runbook.yaml` sha256 `HEX` ``
fn parse_file(rest: &str) -> Option<(String, String)> {
    let file = inline_code(rest)?;
    let at = rest.find(" sha256 `")?;
    Some((file, inline_code(&rest[at + " sha256 ".len()..])?))
}

/// The labels the report writes and `stated` reads: keep them in one place.
pub mod labels {
    pub const SIGNER: &str = "- Signer: ";
    pub const KEY: &str = "- Key: ";
    pub const SIGNED_AT: &str = "- Signed at: ";
    pub const PUBLIC_KEY: &str = "- Public key: ";
    pub const UNSIGNED: &str = "**UNSIGNED**";
    pub use crate::record::binding::labels::*;
}

/// Reads the signer lines and output references of a document, ignoring
/// everything inside fenced blocks (that is where host output goes, and it may
/// imitate any line).
pub fn stated(text: &str) -> Stated {
    let mut s = Stated::default();
    for line in binding::outside_fences(text) {
        // At the start of a line (or of the banner's quote) only, like the citations:
        // elsewhere the words are in a code span quoting a host.
        let said = line.strip_prefix("> ").unwrap_or(line);
        if said.starts_with(labels::UNSIGNED) && s.identity.is_none() {
            s.unsigned = true;
        }
        if let Some(rest) = line.strip_prefix(labels::SIGNER) {
            s.identity = inline_code(rest);
        } else if let Some(rest) = line.strip_prefix(labels::KEY) {
            s.fingerprint = inline_code(rest);
        } else if let Some(rest) = line.strip_prefix(labels::SIGNED_AT) {
            s.signed_at = Some(rest.trim().to_string());
        } else if let Some(rest) = line.strip_prefix(labels::PUBLIC_KEY) {
            s.public_key = inline_code(rest);
        } else if let Some(rest) = line.strip_prefix(labels::RUN) {
            s.binding.get_or_insert_with(Binding::default).run =
                inline_code(rest).unwrap_or_default();
        } else if let Some(rest) = line.strip_prefix(labels::JOURNAL) {
            s.binding.get_or_insert_with(Binding::default).journal = binding::parse_journal(rest);
        } else if let Some(rest) = line.strip_prefix(labels::OPERATOR) {
            s.binding.get_or_insert_with(Binding::default).operator =
                inline_code(rest).unwrap_or_default();
        } else if let Some(rest) = line.strip_prefix(labels::RENDERED) {
            s.rendered = Some(rest.trim().to_string());
        } else if let Some(f) = line.strip_prefix(labels::FILE).and_then(parse_file) {
            s.binding.get_or_insert_with(Binding::default).files.push(f);
        } else if let Some(r) = output_reference(line) {
            if !s.outputs.contains(&r) {
                s.outputs.push(r);
            }
        }
    }
    s
}

/// `stdout (N bytes; full output `outputs/X` sha256 `HEX`):`, at the start of
/// its line only: elsewhere (a `Reason:`, a table cell) the words are in a code
/// span quoting a host, which could print a citation of its own choosing.
fn output_reference(line: &str) -> Option<(String, String)> {
    if !(line.starts_with("stdout (") || line.starts_with("stderr (")) {
        return None;
    }
    let at = line.find("full output `")?;
    let rest = &line[at + "full output ".len()..];
    let file = inline_code(rest)?;
    let at = rest.find(" sha256 `")?;
    let hex = inline_code(&rest[at + " sha256 ".len()..])?;
    Some((file, hex))
}

/// The banner at the top of a document written with `--no-sign`.
pub const UNSIGNED_BANNER: &str =
    "**UNSIGNED**: this document carries no signature (written with `--no-sign`); nothing proves who wrote it or that it is unchanged.";

/// "How to verify": the signer (covered by the signature), the exact stock
/// OpenSSH commands, `opsrun verify`, and a `sha256sum -c` list of the outputs.
pub fn verify_section(
    o: &mut String,
    file: &str,
    signer: Option<&SignerInfo>,
    outputs: &[&crate::record::events::Saved],
    binding: Option<&Binding>,
) {
    let q = crate::shell::quote;
    let sig = format!("{file}.sig");
    let _ = writeln!(o, "\n## How to verify\n");
    if let Some(b) = binding {
        let _ = writeln!(
            o,
            "This log is bound to its run: `opsrun verify` checks these against the run directory it sits in.\n"
        );
        let _ = writeln!(o, "{}{}", labels::RUN, code(&b.run));
        let journal = match &b.journal {
            Some((n, head)) => journal_line(*n, head),
            None => format!(
                "{}, {}",
                code(crate::record::journal::FILE),
                labels::NO_CHAIN
            ),
        };
        let _ = writeln!(o, "{}{journal}", labels::JOURNAL);
        let _ = writeln!(o, "{}{}", labels::OPERATOR, code(&b.operator));
        for (f, sha) in &b.files {
            let _ = writeln!(o, "{}{} sha256 {}", labels::FILE, code(f), code(sha));
        }
        if let Some(r) = &b.rendered {
            let _ = writeln!(o, "{}{}", labels::RENDERED, rendered_later(r));
        }
        let _ = writeln!(o);
    }
    match signer {
        None => {
            let _ = writeln!(
                o,
                "{}: this document was written with `--no-sign`. Re-render and sign it with `opsrun log RUN` to get a signature.\n",
                labels::UNSIGNED
            );
        }
        Some(s) => {
            let _ = writeln!(
                o,
                "This document is signed with an SSH signature (SSHSIG, namespace `{NAMESPACE}`) in {}, next to it. The signature covers every byte of this file, these lines included.\n",
                code(&sig)
            );
            let _ = writeln!(o, "{}{}", labels::SIGNER, code(&s.identity));
            let _ = writeln!(
                o,
                "{}{} ({})",
                labels::KEY,
                code(&s.fingerprint),
                cell(&s.algorithm)
            );
            let _ = writeln!(
                o,
                "{}{}",
                labels::SIGNED_AT,
                s.time.format(crate::report::signature::TIME_FORMAT)
            );
            let _ = writeln!(o, "{}{}\n", labels::PUBLIC_KEY, code(&s.public_key));
            let _ = writeln!(
                o,
                "With stock OpenSSH: put the signer's public key in an `allowed_signers` file and check the signature. Take the key from a source you trust (the operator's key on record): the line below is only what this document claims, and anyone able to edit it could also re-sign it with their own key.\n"
            );
            let cmds = format!(
                "echo {} >> allowed_signers\nssh-keygen -Y verify -f allowed_signers -I {} -n {NAMESPACE} -s {} < {}",
                q(&s.allowed_signers_line()),
                q(&s.identity),
                q(&sig),
                q(file)
            );
            let _ = write!(o, "{}", fenced("sh", &cmds));
            let _ = writeln!(
                o,
                "\nOr with opsrun, which also checks every output file listed below:\n"
            );
            let _ = write!(
                o,
                "{}",
                fenced(
                    "sh",
                    &format!(
                        "opsrun verify {} --allowed-signers allowed_signers",
                        q(file)
                    )
                )
            );
        }
    }
    if !outputs.is_empty() {
        let covered = if signer.is_some() {
            " (the signature covers these digests)"
        } else {
            ""
        };
        let _ = writeln!(o, "\nThe full outputs, from the run directory{covered}:\n");
        let list: String = outputs
            .iter()
            .map(|s| format!("{}  {}\n", s.sha256, s.file))
            .collect();
        let _ = write!(
            o,
            "{}",
            fenced("sh", &format!("sha256sum -c <<'EOF'\n{list}EOF"))
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::markdown::{code, code_cell};

    /// A host that prints a citation of its own is quoted in code spans: the
    /// verifier reads only the citations the writer put at the start of a line.
    #[test]
    fn a_citation_a_host_printed_is_not_read_as_one() {
        let fake = "full output `../../etc/passwd` sha256 `00`";
        let doc = format!(
            "Reason: {}\n\n| step failed | h | 1. s | {} |\n\nstdout (3 bytes; full output `outputs/a` sha256 `ab`):\n",
            code(fake),
            code_cell(fake)
        );
        assert_eq!(
            stated(&doc).outputs,
            [("outputs/a".to_string(), "ab".to_string())]
        );
        // Nor is its claim that the document is unsigned.
        assert!(!stated(&format!("Reason: {}\n", code("**UNSIGNED**: x"))).unsigned);
        assert!(stated(&format!("> {UNSIGNED_BANNER}\n")).unsigned);
    }
}
