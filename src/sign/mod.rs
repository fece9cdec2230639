//! SSH signatures (SSHSIG, namespace `opsrun-log`) over logs and plans, and
//! their verification.
//!
//! The format is the one `git` and `ssh-keygen -Y` use, so a log can be checked
//! with stock OpenSSH and no opsrun. Ed25519 and RSA keys are handled in
//! process by the `ssh-key` crate; any other key (ECDSA, FIDO `sk-` keys, or a
//! `.pub` path meaning "the agent holds it") is signed and checked by running
//! `ssh-keygen` itself.
//!
//! SSHSIG carries no time, so the signer's identity, key and the signing time
//! are written into the document before it is signed: the signature covers them.
//!
//! Receives a document the report stage rendered; produces `<doc>.sig`, or a
//! [`Verification`] of a signed one. The signer block's wording is shared
//! with the writer in `report/signature.rs`.

mod allowed_signers;
mod key;
mod keygen;
mod sshsig;
mod verify;

use allowed_signers::allowed_signer;
use key::{fingerprint_of, in_process};
pub use key::{Signer, DEFAULT_KEYS, KEY_ENV, PASSPHRASE_ENV};
use keygen::keygen;
use sshsig::{check_signature, parse_sig, rsa_sshsig, SigError};
pub use verify::{verify, Check, Verification, VerifyOptions};

use crate::clock::Time;
use crate::report::signature::{stated, SignerInfo, NAMESPACE};
use ssh_key::{Algorithm, HashAlg, LineEnding, PrivateKey, PublicKey, SshSig};
use std::io::{IsTerminal, Write};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error(
        "no SSH key to sign the log with (looked for {}).\n  Create one with `ssh-keygen -t ed25519`, or pass --sign-key FILE (or set {KEY_ENV}),\n  or run with --no-sign to write an UNSIGNED log.",
        searched.iter().map(|p| format!("`{}`", p.display())).collect::<Vec<_>>().join(", ")
    )]
    NoKey { searched: Vec<PathBuf> },
    #[error("cannot read the signing key `{}`: {reason}", path.display())]
    BadKey { path: PathBuf, reason: String },
    #[error(
        "the signing key `{}` is encrypted: set {PASSPHRASE_ENV}, run from a terminal to be asked for the passphrase, or load it into ssh-agent and pass --sign-key {}.pub",
        path.display(), path.display()
    )]
    NeedPassphrase { path: PathBuf },
    #[error("wrong passphrase for the signing key `{}`", path.display())]
    WrongPassphrase { path: PathBuf },
    #[error("cannot sign: {0}")]
    Sign(String),
    #[error("`ssh-keygen {args}` failed: {reason}")]
    Keygen { args: String, reason: String },
    #[error("cannot read `{}`: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write `{}`: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

// By hand rather than `#[from]`: as a source the message would be printed twice.
impl From<SignError> for crate::error::Error {
    fn from(e: SignError) -> Self {
        crate::error::Error::Stage {
            message: e.to_string(),
            exit_code: e.exit_code(),
        }
    }
}

impl SignError {
    /// Key problems are the operator's input (exit 2); failures to sign or write are not.
    pub fn exit_code(&self) -> i32 {
        use crate::error::exit;
        match self {
            SignError::NoKey { .. }
            | SignError::BadKey { .. }
            | SignError::NeedPassphrase { .. }
            | SignError::WrongPassphrase { .. } => exit::INVALID_INPUT,
            SignError::Read { .. } => exit::INVALID_INPUT,
            SignError::Sign(_) | SignError::Keygen { .. } | SignError::Write { .. } => {
                exit::STEP_FAILED
            }
        }
    }
}

/// Which key signs, and as whom.
#[derive(Debug, Clone, Default)]
pub struct SignOptions {
    /// `--sign-key` / `OPSRUN_SIGN_KEY`; `None`: the first of `~/.ssh/id_ed25519`, `id_ecdsa`, `id_rsa`.
    pub key: Option<PathBuf>,
    /// The signer identity written into the document: the `-I` of `ssh-keygen -Y verify`.
    pub identity: String,
}

/// What `sign_file` did.
#[derive(Debug, Clone)]
pub struct SignInfo {
    pub signer: SignerInfo,
    /// The detached signature: `<file>.sig`.
    pub sig: PathBuf,
}

/// `log.md` → `log.md.sig`.
pub fn sig_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(".sig");
    PathBuf::from(s)
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), SignError> {
    std::fs::write(path, bytes).map_err(|source| SignError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Whether to sign: `--no-sign` is the only way to get an unsigned document.
#[derive(Debug)]
pub enum Signing {
    Unsigned,
    Signed(Box<Signer>),
}

impl Signing {
    /// Loads the key unless `no_sign`; a missing key is an error, never a silent unsigned log.
    pub fn new(no_sign: bool, opts: &SignOptions) -> Result<Signing, SignError> {
        if no_sign {
            Ok(Signing::Unsigned)
        } else {
            Signer::load(opts).map(|s| Signing::Signed(Box::new(s)))
        }
    }

    /// Renders a document with the signer stamped in, writes it to `path`, and
    /// signs it into `<path>.sig`. Unsigned, a stale `.sig` is removed so it
    /// cannot be mistaken for one that covers the new text.
    pub fn write_document(
        &self,
        path: &Path,
        render: impl FnOnce(Option<&SignerInfo>) -> String,
    ) -> Result<Option<SignInfo>, SignError> {
        let sig = sig_path(path);
        match self {
            Signing::Unsigned => {
                write(path, render(None).as_bytes())?;
                match std::fs::remove_file(&sig) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(SignError::Write {
                            path: sig,
                            source: e,
                        })
                    }
                    _ => {}
                }
                Ok(None)
            }
            Signing::Signed(signer) => {
                let info = signer.info(crate::clock::now());
                let text = render(Some(&info));
                write(path, text.as_bytes())?;
                let armored = signer.sign(text.as_bytes());
                match armored {
                    Ok(a) => write(&sig, a.as_bytes())?,
                    Err(e) => {
                        // A stale signature next to a new text would only confuse a reader.
                        let _ = std::fs::remove_file(&sig);
                        return Err(e);
                    }
                }
                Ok(Some(SignInfo { signer: info, sig }))
            }
        }
    }
}

/// Signs an existing file as-is into `<path>.sig` (the text is not changed, so
/// the signing time is not recorded in it).
pub fn sign_file(path: &Path, opts: &SignOptions) -> Result<SignInfo, SignError> {
    let signer = Signer::load(opts)?;
    let info = signer.info(crate::clock::now());
    let sig = signer.sign_existing(path)?;
    Ok(SignInfo { signer: info, sig })
}

// ---------------------------------------------------------------------------
// Verification

// ---------------------------------------------------------------------------
// allowed_signers, as ssh-keygen(1) "ALLOWED SIGNERS" describes it
