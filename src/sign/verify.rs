//! `opsrun verify`: the signature over a document, its signer against an
//! allowed_signers file, and every output file it cites against its sha256.

use super::*;
use crate::report::signature::{labels, Binding, Stated};

/// What `opsrun verify` checks against.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Keys trusted per identity, in `ssh-keygen -Y verify -f` format.
    pub allowed_signers: Option<PathBuf>,
    /// `-I`: default, the signer written in the document.
    pub identity: Option<String>,
}

/// One line of the verification report.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// The outcome of verifying a log or a plan.
#[derive(Debug, Clone, Default)]
pub struct Verification {
    pub document: PathBuf,
    pub sig: PathBuf,
    /// Fingerprint and algorithm of the key in the signature.
    pub fingerprint: Option<String>,
    pub algorithm: Option<String>,
    /// The signer and time the document states (covered by the signature).
    pub identity: Option<String>,
    pub signed_at: Option<String>,
    /// The signer was found in an allowed_signers file, not only taken from the signature.
    pub authenticated: bool,
    pub checks: Vec<Check>,
}

impl Verification {
    pub fn ok(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(|c| c.ok)
    }

    pub(super) fn check(&mut self, name: &str, ok: bool, detail: impl Into<String>) {
        self.checks.push(Check {
            name: name.into(),
            ok,
            detail: detail.into(),
        });
    }
}

/// A path named in a document must stay inside the document's directory.
pub(super) fn contained(rel: &str) -> bool {
    let p = Path::new(rel);
    !rel.is_empty()
        && p.components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

/// Verifies `<doc>.sig` over `doc`, the signer against an allowed_signers file
/// when given, and every output file the document cites against its sha256.
/// `Err` only when the inputs cannot be read at all (a usage error).
pub fn verify(doc: &Path, opts: &VerifyOptions) -> Result<Verification, SignError> {
    let text = std::fs::read(doc).map_err(|source| SignError::Read {
        path: doc.to_path_buf(),
        source,
    })?;
    let allowed = match &opts.allowed_signers {
        Some(p) => Some(
            std::fs::read_to_string(p).map_err(|source| SignError::Read {
                path: p.clone(),
                source,
            })?,
        ),
        None => None,
    };
    let sig_file = sig_path(doc);
    let stated = stated(&String::from_utf8_lossy(&text));
    let mut v = Verification {
        document: doc.to_path_buf(),
        sig: sig_file.clone(),
        identity: opts.identity.clone().or(stated.identity.clone()),
        signed_at: stated.signed_at.clone(),
        ..Verification::default()
    };

    let sig = match std::fs::read(&sig_file) {
        Ok(b) => parse_sig(&b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(if stated.unsigned {
            SigError::Unsigned
        } else {
            SigError::Missing {
                path: sig_file.clone(),
            }
        }),
        Err(reason) => Err(SigError::Read {
            path: sig_file.clone(),
            reason,
        }),
    };
    match sig {
        Err(e) => v.check("signature", false, e.to_string()),
        Ok(sig) => {
            let key = PublicKey::new(sig.public_key().clone(), "");
            v.fingerprint = Some(fingerprint_of(&key));
            v.algorithm = Some(key.algorithm().as_str().to_string());
            match check_signature(&key, &sig, &sig_file, &text) {
                Ok(how) => v.check(
                    "signature",
                    true,
                    format!(
                        "good {} signature, namespace {NAMESPACE} ({how})",
                        key.algorithm()
                    ),
                ),
                Err(e) => v.check("signature", false, e.to_string()),
            }
            let fp = fingerprint_of(&key);
            match (&stated.fingerprint, &stated.public_key) {
                (Some(f), _) if *f != fp => v.check(
                    "stated key",
                    false,
                    format!("the document names key {f} but the signature is by {fp}"),
                ),
                (_, Some(k))
                    if PublicKey::from_openssh(k)
                        .map(|k| k.key_data().clone())
                        .ok()
                        != Some(key.key_data().clone()) =>
                {
                    v.check(
                        "stated key",
                        false,
                        "the public key written in the document is not the one that signed it",
                    )
                }
                (None, None) => v.check(
                    "stated key",
                    false,
                    "the document does not say who signed it (no \"How to verify\" signer lines)",
                ),
                _ => v.check(
                    "stated key",
                    true,
                    format!("the document names the signing key {fp}"),
                ),
            }
            match (&allowed, &v.identity) {
                (Some(_), None) => v.check(
                    "signer",
                    false,
                    "no identity to check: pass --identity (the principal in allowed_signers)",
                ),
                (Some(file), Some(id)) => match allowed_signer(file, id, &key) {
                    Ok(line) => {
                        v.authenticated = true;
                        v.check(
                            "signer",
                            true,
                            format!("key allowed for `{id}` in namespace {NAMESPACE} (allowed_signers line {line})"),
                        );
                    }
                    Err(e) => v.check("signer", false, e.to_string()),
                },
                (None, _) => {}
            }
        }
    }

    operator_check(&mut v, &text, &stated, opts);
    let dir = doc.parent().unwrap_or_else(|| Path::new("."));
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let journal = dir.join(crate::record::journal::FILE);
    let beside = journal.is_file();
    let here = crate::record::view::dir_name(
        &std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf()),
    );
    // A log where its run left it, but without the journal: moving the journal
    // away must not turn a failed check into "a log on its own".
    let in_run_dir = ["runbook.yaml", "inventory.yaml", "outputs"]
        .iter()
        .find(|f| dir.join(f).exists())
        .map(|f| format!("`{f}` is beside it"))
        .or_else(|| {
            stated
                .binding
                .as_ref()
                .filter(|b| !b.run.is_empty() && b.run == here)
                .map(|b| format!("the directory is named for its run `{}`", b.run))
        });
    let alone = !beside && in_run_dir.is_none();
    match (&stated.binding, beside, &in_run_dir) {
        (Some(b), true, _) => binding_checks(&mut v, dir, &journal, b),
        (None, true, _) => unbound_beside_journal(&mut v, &journal),
        (_, false, Some(why)) => v.check(
            "journal",
            false,
            format!(
                "the journal is missing: the log sits in its run directory ({why}) but `{}` is not there",
                crate::record::journal::FILE
            ),
        ),
        (Some(b), false, None) => v.check(
            "run",
            true,
            format!(
                "not checked: no journal beside the log (a log on its own); the run `{}`, its journal's chain hash and the cited files not beside it could not be checked against the run directory",
                b.run
            ),
        ),
        (None, false, None) if !stated.outputs.is_empty() => v.check(
            "run",
            true,
            "not checked: no journal beside the log (a log on its own); the cited output files not beside it could not be checked",
        ),
        (None, false, None) => {}
    }
    let files = stated
        .binding
        .iter()
        .flat_map(|b| b.files.iter())
        .chain(stated.outputs.iter());
    for (file, want) in files {
        let name = if stated.outputs.iter().any(|(f, _)| f == file) {
            format!("output {file}")
        } else {
            format!("file {file}")
        };
        if !contained(file) {
            v.check(
                &name,
                false,
                "the path leaves the run directory: not checked",
            );
            continue;
        }
        match std::fs::read(dir.join(file)) {
            Ok(b) => {
                let got = crate::digest::sha256_hex(&b);
                if got == *want {
                    v.check(&name, true, "sha256 matches");
                } else {
                    v.check(
                        &name,
                        false,
                        format!("sha256 is {got}, the log says {want}"),
                    );
                }
            }
            // Mailed alone: what is not beside it is what it could not check (said above).
            Err(e) if alone && e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => v.check(&name, false, format!("cannot read: {e}")),
        }
    }
    Ok(v)
}

/// The signer must be the operator the log names: a teammate trusted in
/// allowed_signers who re-signs a colleague's log under their own name fails,
/// whether or not the log still carries its binding lines.
fn operator_check(v: &mut Verification, text: &[u8], stated: &Stated, opts: &VerifyOptions) {
    let text = String::from_utf8_lossy(text);
    // The Operator row as the document writes it; host output (in fences) may imitate it.
    const ROW: &str = "| Operator | ";
    let rows: Vec<&str> = crate::record::binding::outside_fences(&text)
        .filter(|l| l.starts_with(ROW))
        .collect();
    // The row's cell is table text in older logs, a code span in newer ones.
    let names = |who: &str| {
        [
            crate::report::markdown::cell(who),
            crate::report::markdown::code_cell(who),
        ]
        .iter()
        .any(|c| rows.contains(&format!("{ROW}{c} |").as_str()))
    };
    if let Some(b) = &stated.binding {
        if !names(&b.operator) {
            v.check(
                "operator",
                false,
                format!(
                    "the log's Operator row does not name `{}`, the operator the log is bound to",
                    b.operator
                ),
            );
            return;
        }
    }
    let Some(s) = opts.identity.as_ref().or(stated.identity.as_ref()) else {
        return;
    };
    match (&stated.binding, rows.first()) {
        (Some(b), _) if *s != b.operator => v.check(
            "operator",
            false,
            format!("the log names operator `{}` but is signed as `{s}`: a log is signed by the operator who ran it", b.operator),
        ),
        (None, Some(row)) if !names(s) => v.check(
            "operator",
            false,
            format!(
                "the document's Operator row says `{}` but it is signed as `{s}`: a log is signed by the operator who ran it",
                // The cell as written: plain, or a code span.
                row.trim_start_matches(ROW)
                    .trim_end_matches(" |")
                    .trim_matches('`')
                    .trim()
            ),
        ),
        (None, None) => {}
        _ => v.check(
            "operator",
            true,
            format!("signed by the operator the log names (`{s}`)"),
        ),
    }
}

/// A log without binding lines beside a hash-chained journal: logs of chained
/// journals are always bound, so the binding was removed (with it, the checks
/// against the run directory).
fn unbound_beside_journal(v: &mut Verification, journal: &Path) {
    match crate::record::journal::read(journal) {
        Ok(r) if r.chain != crate::record::chain::Chain::Unchained => v.check(
            "run",
            false,
            "the log states no binding to its run (no `- Run:` / `- Journal:` lines), but a hash-chained journal sits beside it: every log of a chained journal states one, so it was removed",
        ),
        Ok(_) => {}
        Err(e) => v.check("journal", false, e.to_string()),
    }
}

/// The run the log states against the run directory it sits in.
fn binding_checks(v: &mut Verification, dir: &Path, journal: &Path, b: &Binding) {
    let replay = match crate::record::journal::read(journal) {
        Ok(r) => r,
        Err(e) => return v.check("journal", false, e.to_string()),
    };
    // Which run the directory holds is what its journal says (a run directory
    // archived under the ticket's name is still that run); the directory's
    // name only where the journal's first event is damaged.
    let here = replay
        .events
        .iter()
        .find_map(|e| match e {
            crate::record::events::Event::RunStarted { run_id, .. } => Some(run_id.clone()),
            _ => None,
        })
        .unwrap_or_else(|| {
            crate::record::view::dir_name(
                &std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf()),
            )
        });
    if here == b.run {
        v.check(
            "run",
            true,
            format!(
                "the log is of run `{}`, the run whose journal is beside it",
                b.run
            ),
        );
    } else {
        v.check(
            "run",
            false,
            format!("the log is of run `{}` but the journal beside it is of run `{here}` (copied from another run?)", b.run),
        );
    }
    let recorded = replay.events.iter().find_map(|e| match e {
        crate::record::events::Event::RunStarted { operator, .. } => Some(operator.clone()),
        _ => None,
    });
    match recorded {
        Some(op) if op != b.operator => v.check(
            "operator",
            false,
            format!(
                "the log names operator `{}`, the run's journal `{op}`",
                b.operator
            ),
        ),
        _ => {}
    }
    let broken = replay
        .broken()
        .map(|br| format!("the journal's hash chain is broken at {br}"))
        .or_else(|| {
            replay
                .start_damaged
                .as_ref()
                .map(|br| format!("the journal's first event is damaged (at {br})"))
        });
    match (&b.journal, broken) {
        (_, Some(problem)) => v.check("journal", false, problem),
        (None, None) => v.check(
            "journal",
            true,
            format!("not checked: the log states {}", labels::NO_CHAIN),
        ),
        (Some((n, head)), None) => match crate::record::binding::differs(&replay, *n, head) {
            None => v.check(
                "journal",
                true,
                format!("{n} events, chain hash matches the log"),
            ),
            Some(p) => v.check(
                "journal",
                false,
                crate::record::chain::Break {
                    line: crate::record::binding::break_at(&replay, *n, &p).0,
                    problem: p,
                }
                .to_string(),
            ),
        },
    }
}
