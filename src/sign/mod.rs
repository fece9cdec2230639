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

use crate::clock::Time;
use crate::report::signature::{stated, SignerInfo, NAMESPACE};
use ssh_key::{Algorithm, HashAlg, LineEnding, PrivateKey, PublicKey, SshSig};
use std::io::{IsTerminal, Write};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};

/// Environment variable naming the signing key (same as `--sign-key`).
pub const KEY_ENV: &str = "OPSRUN_SIGN_KEY";
/// Passphrase of an encrypted signing key, for automation and tests.
pub const PASSPHRASE_ENV: &str = "OPSRUN_SIGN_PASSPHRASE";
/// Default keys, in the order they are tried under `~/.ssh/`.
pub const DEFAULT_KEYS: &[&str] = &["id_ed25519", "id_ecdsa", "id_rsa"];
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

enum How {
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

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

/// `~/x` to `$HOME/x`, as the shell would have done.
fn expand(path: &Path) -> PathBuf {
    match (path.strip_prefix("~"), home()) {
        (Ok(rest), Some(h)) => h.join(rest),
        _ => path.to_path_buf(),
    }
}

/// The crate signs and verifies these in process; other keys go through ssh-keygen.
fn in_process(alg: &Algorithm) -> bool {
    matches!(alg, Algorithm::Ed25519 | Algorithm::Rsa { .. })
}

fn fingerprint_of(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

fn bare_openssh(key: &PublicKey) -> String {
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

/// SSHSIG with an RSA key (`rsa-sha2-512`, as ssh-keygen signs). Done here
/// rather than by `PrivateKey::sign`, because ssh-key 0.6 rebuilds the RSA key
/// from the prime `p` twice, which current `rsa` releases reject.
fn rsa_sshsig(k: &ssh_key::private::RsaKeypair, msg: &[u8]) -> ssh_key::Result<SshSig> {
    use rsa::signature::{SignatureEncoding, Signer as _};
    let int = |m: &ssh_key::Mpint| {
        m.as_positive_bytes()
            .map(rsa::BigUint::from_bytes_be)
            .ok_or(ssh_key::Error::Crypto)
    };
    let key = rsa::RsaPrivateKey::from_components(
        int(&k.public.n)?,
        int(&k.public.e)?,
        int(&k.private.d)?,
        vec![int(&k.private.p)?, int(&k.private.q)?],
    )
    .map_err(|_| ssh_key::Error::Crypto)?;
    let data = SshSig::signed_data(NAMESPACE, HashAlg::Sha512, msg)?;
    let signer = rsa::pkcs1v15::SigningKey::<sha2::Sha512>::new(key);
    let raw = signer
        .try_sign(&data)
        .map_err(|_| ssh_key::Error::Crypto)?
        .to_vec();
    let signature = ssh_key::Signature::new(
        Algorithm::Rsa {
            hash: Some(HashAlg::Sha512),
        },
        raw,
    )?;
    SshSig::new(
        ssh_key::public::KeyData::Rsa(k.public.clone()),
        NAMESPACE,
        HashAlg::Sha512,
        signature,
    )
}

fn decrypt(key: &PrivateKey, path: &Path) -> Result<PrivateKey, SignError> {
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

/// Runs ssh-keygen with `input` on stdin; its stderr (prompts, errors) stays on the terminal.
fn keygen(args: &[&str], input: &[u8]) -> Result<Vec<u8>, SignError> {
    let fail = |reason: String| SignError::Keygen {
        args: args.join(" "),
        reason,
    };
    let mut child = Command::new("ssh-keygen")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot start it ({e}); is OpenSSH installed?")))?;
    let mut stdin = child.stdin.take().ok_or_else(|| fail("no stdin".into()))?;
    // Written from a thread: a large input could otherwise fill the pipe while
    // ssh-keygen waits for us to read its output.
    let data = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    let _ = writer.join();
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(fail(if msg.is_empty() {
            out.status.to_string()
        } else {
            msg
        }));
    }
    Ok(out.stdout)
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

    fn check(&mut self, name: &str, ok: bool, detail: impl Into<String>) {
        self.checks.push(Check {
            name: name.into(),
            ok,
            detail: detail.into(),
        });
    }
}

/// A path named in a document must stay inside the document's directory.
fn contained(rel: &str) -> bool {
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
            "no signature: the document says it is UNSIGNED".to_string()
        } else {
            format!("no signature file `{}`", sig_file.display())
        }),
        Err(e) => Err(format!("cannot read `{}`: {e}", sig_file.display())),
    };
    match sig {
        Err(e) => v.check("signature", false, e),
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
                Err(e) => v.check("signature", false, e),
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
                    Err(e) => v.check("signer", false, e),
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

/// Parses an armored signature, and insists it is exactly the canonical
/// encoding: a byte changed anywhere in the file (even in padding bits or
/// whitespace a lenient decoder would skip) then fails.
fn parse_sig(bytes: &[u8]) -> Result<SshSig, String> {
    let text =
        std::str::from_utf8(bytes).map_err(|_| "the signature file is not text".to_string())?;
    let sig = SshSig::from_pem(text).map_err(|e| format!("malformed signature: {e}"))?;
    let canonical = sig
        .to_pem(LineEnding::LF)
        .map_err(|e| format!("malformed signature: {e}"))?;
    if canonical != text {
        return Err("malformed signature: the file is not a canonical SSH SIGNATURE block".into());
    }
    if sig.namespace() != NAMESPACE {
        return Err(format!(
            "wrong namespace `{}` (expected {NAMESPACE})",
            sig.namespace()
        ));
    }
    Ok(sig)
}

fn check_signature(
    key: &PublicKey,
    sig: &SshSig,
    sig_file: &Path,
    msg: &[u8],
) -> Result<&'static str, String> {
    if in_process(&key.algorithm()) {
        return key
            .verify(NAMESPACE, msg, sig)
            .map(|()| "checked by opsrun")
            .map_err(|_| "BAD signature: the document or the signature was changed".to_string());
    }
    let s = sig_file.display().to_string();
    keygen(&["-Y", "check-novalidate", "-n", NAMESPACE, "-s", &s], msg)
        .map(|_| "checked by ssh-keygen")
        .map_err(|e| format!("BAD signature: {e}"))
}

// ---------------------------------------------------------------------------
// allowed_signers, as ssh-keygen(1) "ALLOWED SIGNERS" describes it

/// Splits at whitespace outside double quotes.
fn tokens(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn unquote(s: &str) -> &str {
    s.strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(s)
}

/// OpenSSH's `*`/`?` wildcard match.
fn glob(pat: &[u8], s: &[u8]) -> bool {
    match (pat.first(), s.first()) {
        (None, None) => true,
        (Some(b'*'), _) => glob(&pat[1..], s) || (!s.is_empty() && glob(pat, &s[1..])),
        (Some(b'?'), Some(_)) => glob(&pat[1..], &s[1..]),
        (Some(p), Some(c)) if p == c => glob(&pat[1..], &s[1..]),
        _ => false,
    }
}

/// A comma-separated pattern list with `!` negation (OpenSSH `match_pattern_list`).
fn pattern_list(list: &str, s: &str) -> bool {
    let mut matched = false;
    for p in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some(neg) = p.strip_prefix('!') {
            if glob(neg.as_bytes(), s.as_bytes()) {
                return false;
            }
        } else if glob(p.as_bytes(), s.as_bytes()) {
            matched = true;
        }
    }
    matched
}

/// Splits options at commas outside quotes.
fn options(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in s.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// `YYYYMMDD[HHMM[SS]][Z]`: UTC with `Z`, else local time.
fn signer_time(s: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    use chrono::{NaiveDate, NaiveDateTime, TimeZone};
    let (digits, utc) = match s.strip_suffix(['Z', 'z']) {
        Some(d) => (d, true),
        None => (s, false),
    };
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n = |r: std::ops::Range<usize>| digits.get(r).and_then(|x| x.parse::<u32>().ok());
    let date = NaiveDate::from_ymd_opt(n(0..4)? as i32, n(4..6)?, n(6..8)?)?;
    let naive: NaiveDateTime = match digits.len() {
        8 => date.and_hms_opt(0, 0, 0)?,
        12 => date.and_hms_opt(n(8..10)?, n(10..12)?, 0)?,
        14 => date.and_hms_opt(n(8..10)?, n(10..12)?, n(12..14)?)?,
        _ => return None,
    };
    if utc {
        Some(chrono::Utc.from_utc_datetime(&naive))
    } else {
        chrono::Local
            .from_local_datetime(&naive)
            .earliest()
            .map(|t| t.with_timezone(&chrono::Utc))
    }
}

/// Finds a line allowing `key` for `identity` in our namespace, now. Returns its line number.
fn allowed_signer(file: &str, identity: &str, key: &PublicKey) -> Result<usize, String> {
    let now = chrono::Utc::now();
    let mut reasons = Vec::new();
    for (i, raw) in file.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let toks = tokens(line);
        let Some(principals) = toks.first() else {
            continue;
        };
        let rest = |from: usize| toks.get(from..).map(|t| t.join(" ")).unwrap_or_default();
        let (opts, k) = match PublicKey::from_openssh(&rest(1)) {
            Ok(k) => (String::new(), k),
            Err(_) => match PublicKey::from_openssh(&rest(2)) {
                Ok(k) => (toks[1].clone(), k),
                Err(_) => {
                    reasons.push(format!("line {}: cannot parse the key", i + 1));
                    continue;
                }
            },
        };
        if k.key_data() != key.key_data() {
            continue;
        }
        if !pattern_list(unquote(principals), identity) {
            reasons.push(format!(
                "line {}: the key is listed for `{}`, not `{identity}`",
                i + 1,
                unquote(principals)
            ));
            continue;
        }
        let mut ok = true;
        for o in options(&opts).iter().filter(|o| !o.is_empty()) {
            let (name, value) = o.split_once('=').unwrap_or((o.as_str(), ""));
            let value = unquote(value);
            match name.to_ascii_lowercase().as_str() {
                "namespaces" if !pattern_list(value, NAMESPACE) => {
                    reasons.push(format!(
                        "line {}: the key is limited to namespaces {value}",
                        i + 1
                    ));
                    ok = false;
                }
                "namespaces" => {}
                "valid-after" | "valid-before" => {
                    let Some(t) = signer_time(value) else {
                        reasons.push(format!("line {}: bad time `{value}`", i + 1));
                        ok = false;
                        continue;
                    };
                    let expired = if name.eq_ignore_ascii_case("valid-after") {
                        now < t
                    } else {
                        now > t
                    };
                    if expired {
                        reasons.push(format!("line {}: the key is not valid now ({o})", i + 1));
                        ok = false;
                    }
                }
                // CA-signed certificates are not what opsrun writes; such a line allows nothing here.
                _ => {
                    reasons.push(format!("line {}: unsupported option `{name}`", i + 1));
                    ok = false;
                }
            }
        }
        if ok {
            return Ok(i + 1);
        }
    }
    let fp = fingerprint_of(key);
    Err(if reasons.is_empty() {
        format!("the signing key {fp} is not in the allowed_signers file")
    } else {
        format!(
            "the signing key {fp} is not allowed: {}",
            reasons.join("; ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_follow_openssh() {
        assert!(pattern_list("alice,bob", "bob"));
        assert!(pattern_list("*@example.org", "a@example.org"));
        assert!(!pattern_list("*,!mallory", "mallory"));
        assert!(pattern_list("opsrun-*", NAMESPACE));
        assert!(!pattern_list("git", NAMESPACE));
    }

    #[test]
    fn reads_stated_lines_outside_fences() {
        let text = "\
- Signer: `alice`
- Key: `SHA256:abc` (ED25519)
- Signed at: 2026-01-02 03:04:05 +00:00

stdout (3 bytes; full output `outputs/1-a.stdout` sha256 `00ff`):

````text
stdout (3 bytes; full output `outputs/evil` sha256 `11`):
```
- Signer: `mallory`
````
";
        let s = stated(text);
        assert_eq!(s.identity.as_deref(), Some("alice"));
        assert_eq!(s.fingerprint.as_deref(), Some("SHA256:abc"));
        assert_eq!(s.signed_at.as_deref(), Some("2026-01-02 03:04:05 +00:00"));
        assert_eq!(
            s.outputs,
            vec![("outputs/1-a.stdout".to_string(), "00ff".to_string())]
        );
    }

    #[test]
    fn output_paths_stay_inside() {
        assert!(contained("outputs/a.stdout"));
        assert!(!contained("../x"));
        assert!(!contained("/etc/passwd"));
        assert!(!contained("outputs/../../x"));
    }

    #[test]
    fn allowed_signers_options_are_honoured() {
        const KEY: &str =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFL3MmrAMJu1xDhGwgbQTndO2tBrk89q6zMWic3rOvA4";
        let key = PublicKey::from_openssh(KEY).unwrap();
        let ok = |file: &str, id: &str| allowed_signer(file, id, &key);
        assert_eq!(ok(&format!("# comment\n\nalice {KEY} c"), "alice"), Ok(3));
        assert!(ok(&format!("bob,carol {KEY}"), "alice").is_err());
        assert!(ok(&format!("*@ops.example {KEY}"), "alice@ops.example").is_ok());
        assert!(ok(&format!("alice namespaces=\"git,opsrun-*\" {KEY}"), "alice").is_ok());
        assert!(ok(&format!("alice namespaces=\"git\" {KEY}"), "alice").is_err());
        assert!(ok(&format!("alice valid-before=\"20000101\" {KEY}"), "alice").is_err());
        assert!(ok(&format!("alice valid-after=\"20000101Z\" {KEY}"), "alice").is_ok());
        assert!(ok(&format!("alice cert-authority {KEY}"), "alice").is_err());
        assert!(ok(&format!("\"alice smith\" {KEY}"), "alice smith").is_ok());
    }

    #[test]
    fn signer_times() {
        assert!(signer_time("20260102Z").is_some());
        assert!(signer_time("202601020304Z").is_some());
        assert!(signer_time("20260102030405").is_some());
        assert!(signer_time("2026").is_none());
    }
}
