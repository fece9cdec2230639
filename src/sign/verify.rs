//! `opsrun verify`: the signature over a document, its signer against an
//! allowed_signers file, and every output file it cites against its sha256.

use super::*;

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

    let dir = doc.parent().unwrap_or_else(|| Path::new("."));
    for (file, want) in &stated.outputs {
        if !contained(file) {
            v.check(
                &format!("output {file}"),
                false,
                "the path leaves the run directory: not checked",
            );
            continue;
        }
        match std::fs::read(dir.join(file)) {
            Ok(b) => {
                let got = crate::digest::sha256_hex(&b);
                if got == *want {
                    v.check(&format!("output {file}"), true, "sha256 matches");
                } else {
                    v.check(
                        &format!("output {file}"),
                        false,
                        format!("sha256 is {got}, the log says {want}"),
                    );
                }
            }
            Err(e) => v.check(
                &format!("output {file}"),
                false,
                format!("cannot read: {e}"),
            ),
        }
    }
    Ok(v)
}
