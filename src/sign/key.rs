//! Signing keys: finding the operator's key, decrypting it, and signing in
//! process (Ed25519, RSA) or through `ssh-keygen` (any other key).

use super::*;

/// Environment variable naming the signing key (same as `--sign-key`).
pub const KEY_ENV: &str = "OPSRUN_SIGN_KEY";

/// Passphrase of an encrypted signing key, for automation and tests.
pub const PASSPHRASE_ENV: &str = "OPSRUN_SIGN_PASSPHRASE";

/// Default keys, in the order they are tried under `~/.ssh/`.
pub const DEFAULT_KEYS: &[&str] = &["id_ed25519", "id_ecdsa", "id_rsa"];

pub(super) enum How {
    /// Decrypted in memory (the crate zeroizes it on drop).
    Key(Box<PrivateKey>),
    /// `ssh-keygen -Y sign -f PATH`: PATH is a private key, or a `.pub` whose key the agent holds.
    Keygen(PathBuf),
}

/// A key ready to sign, loaded (and decrypted) once before the run starts, so
/// the passphrase is asked for before anything changes on a host.
pub struct Signer {
    identity: String,
    public: PublicKey,
    how: How,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("identity", &self.identity)
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

pub(super) fn home() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

/// `~/x` to `$HOME/x`, as the shell would have done.
pub(super) fn expand(path: &Path) -> PathBuf {
    match (path.strip_prefix("~"), home()) {
        (Ok(rest), Some(h)) => h.join(rest),
        _ => path.to_path_buf(),
    }
}

/// The crate signs and verifies these in process; other keys go through ssh-keygen.
pub(super) fn in_process(alg: &Algorithm) -> bool {
    matches!(alg, Algorithm::Ed25519 | Algorithm::Rsa { .. })
}

pub(super) fn fingerprint_of(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

pub(super) fn bare_openssh(key: &PublicKey) -> String {
    PublicKey::new(key.key_data().clone(), "")
        .to_openssh()
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

impl Signer {
    /// Finds and loads the key. Decrypting an encrypted key needs
    /// `OPSRUN_SIGN_PASSPHRASE` or a terminal: a passphrase is never read from a pipe.
    pub fn load(opts: &SignOptions) -> Result<Signer, SignError> {
        let path = match &opts.key {
            Some(p) => expand(p),
            None => {
                let dir = home().map(|h| h.join(".ssh"));
                let candidates: Vec<PathBuf> = match &dir {
                    Some(d) => DEFAULT_KEYS.iter().map(|k| d.join(k)).collect(),
                    None => DEFAULT_KEYS
                        .iter()
                        .map(|k| Path::new("~/.ssh").join(k))
                        .collect(),
                };
                match candidates.iter().find(|p| p.is_file()) {
                    Some(p) => p.clone(),
                    None => {
                        return Err(SignError::NoKey {
                            searched: candidates,
                        })
                    }
                }
            }
        };
        let bad = |reason: String| SignError::BadKey {
            path: path.clone(),
            reason,
        };
        let text = std::fs::read_to_string(&path).map_err(|e| bad(e.to_string()))?;
        let identity = opts.identity.clone();
        if path.extension().is_some_and(|e| e == "pub") {
            let public = PublicKey::from_openssh(text.trim())
                .map_err(|e| bad(format!("not an OpenSSH public key: {e}")))?;
            return Ok(Signer {
                identity,
                public,
                how: How::Keygen(path),
            });
        }
        let key = PrivateKey::from_openssh(&text).map_err(|e| {
            bad(format!(
                "not an OpenSSH private key ({e}); convert it with `ssh-keygen -p -f {}`",
                path.display()
            ))
        })?;
        let public = key.public_key().clone();
        if !in_process(&key.algorithm()) {
            return Ok(Signer {
                identity,
                public,
                how: How::Keygen(path),
            });
        }
        let key = if key.is_encrypted() {
            decrypt(&key, &path)?
        } else {
            key
        };
        Ok(Signer {
            identity,
            public,
            how: How::Key(Box::new(key)),
        })
    }

    pub fn fingerprint(&self) -> String {
        fingerprint_of(&self.public)
    }

    /// The signer as it is written into the document, stamped with `time`.
    pub fn info(&self, time: Time) -> SignerInfo {
        SignerInfo {
            identity: self.identity.clone(),
            fingerprint: self.fingerprint(),
            algorithm: self.public.algorithm().as_str().to_string(),
            public_key: bare_openssh(&self.public),
            time,
        }
    }

    /// An armored SSHSIG over `msg`, as `ssh-keygen -Y sign` writes it.
    pub fn sign(&self, msg: &[u8]) -> Result<String, SignError> {
        match &self.how {
            How::Key(key) => {
                let sig = match key.key_data() {
                    ssh_key::private::KeypairData::Rsa(k) => rsa_sshsig(k, msg),
                    _ => key.sign(NAMESPACE, HashAlg::Sha512, msg),
                };
                sig.and_then(|s| s.to_pem(LineEnding::LF))
                    .map_err(|e| SignError::Sign(e.to_string()))
            }
            How::Keygen(path) => {
                let path = path.display().to_string();
                let out = keygen(&["-Y", "sign", "-f", &path, "-n", NAMESPACE], msg)?;
                String::from_utf8(out).map_err(|_| SignError::Keygen {
                    args: "-Y sign".into(),
                    reason: "the signature is not text".into(),
                })
            }
        }
    }

    /// Signs `path` as it is on disk into `<path>.sig`.
    pub fn sign_existing(&self, path: &Path) -> Result<PathBuf, SignError> {
        let bytes = std::fs::read(path).map_err(|source| SignError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let sig = sig_path(path);
        write(&sig, self.sign(&bytes)?.as_bytes())?;
        Ok(sig)
    }
}

pub(super) fn decrypt(key: &PrivateKey, path: &Path) -> Result<PrivateKey, SignError> {
    let wrong = || SignError::WrongPassphrase {
        path: path.to_path_buf(),
    };
    if let Ok(pass) = std::env::var(PASSPHRASE_ENV) {
        return key.decrypt(pass.as_bytes()).map_err(|_| wrong());
    }
    let term = console::Term::stderr();
    if !std::io::stdin().is_terminal() || !term.is_term() {
        return Err(SignError::NeedPassphrase {
            path: path.to_path_buf(),
        });
    }
    for _ in 0..3 {
        let _ = term.write_str(&format!(
            "Passphrase for the signing key {}: ",
            path.display()
        ));
        let pass = term.read_secure_line().map_err(|e| SignError::BadKey {
            path: path.to_path_buf(),
            reason: format!("cannot read the passphrase: {e}"),
        })?;
        match key.decrypt(pass.as_bytes()) {
            Ok(k) => return Ok(k),
            Err(_) => {
                let _ = term.write_line("wrong passphrase");
            }
        }
    }
    Err(wrong())
}
