//! SSHSIG: the signature format of `ssh-keygen -Y` and git, built here for RSA
//! keys and parsed and checked for verification.

use super::*;

/// SSHSIG with an RSA key (`rsa-sha2-512`, as ssh-keygen signs). Done here
/// rather than by `PrivateKey::sign`, because ssh-key 0.6 rebuilds the RSA key
/// from the prime `p` twice, which current `rsa` releases reject.
pub(super) fn rsa_sshsig(k: &ssh_key::private::RsaKeypair, msg: &[u8]) -> ssh_key::Result<SshSig> {
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

/// Why a log's signature does not hold, as `opsrun verify` reports it.
#[derive(Debug, thiserror::Error)]
pub(super) enum SigError {
    #[error("no signature: the document says it is UNSIGNED")]
    Unsigned,
    #[error("no signature file `{}`", path.display())]
    Missing { path: PathBuf },
    #[error("cannot read `{}`: {reason}", path.display())]
    Read {
        path: PathBuf,
        reason: std::io::Error,
    },
    #[error("the signature file is not text")]
    NotText,
    #[error("malformed signature: {reason}")]
    Malformed { reason: ssh_key::Error },
    /// Decodes, but is not byte for byte what its content encodes to.
    #[error("malformed signature: the file is not a canonical SSH SIGNATURE block")]
    NotCanonical,
    #[error("wrong namespace `{found}` (expected {NAMESPACE})")]
    WrongNamespace { found: String },
    #[error("BAD signature: the document or the signature was changed")]
    Bad,
    /// `ssh-keygen -Y check-novalidate` refused it (keys checked outside the process).
    #[error("BAD signature: {reason}")]
    BadForKeygen { reason: SignError },
}

/// Parses an armored signature, and insists it is exactly the canonical
/// encoding: a byte changed anywhere in the file (even in padding bits or
/// whitespace a lenient decoder would skip) then fails.
pub(super) fn parse_sig(bytes: &[u8]) -> Result<SshSig, SigError> {
    let text = std::str::from_utf8(bytes).map_err(|_| SigError::NotText)?;
    let malformed = |reason| SigError::Malformed { reason };
    let sig = SshSig::from_pem(text).map_err(malformed)?;
    let canonical = sig.to_pem(LineEnding::LF).map_err(malformed)?;
    if canonical != text {
        return Err(SigError::NotCanonical);
    }
    if sig.namespace() != NAMESPACE {
        return Err(SigError::WrongNamespace {
            found: sig.namespace().to_string(),
        });
    }
    Ok(sig)
}

pub(super) fn check_signature(
    key: &PublicKey,
    sig: &SshSig,
    sig_file: &Path,
    msg: &[u8],
) -> Result<&'static str, SigError> {
    if in_process(&key.algorithm()) {
        return key
            .verify(NAMESPACE, msg, sig)
            .map(|()| "checked by opsrun")
            .map_err(|_| SigError::Bad);
    }
    let s = sig_file.display().to_string();
    keygen(&["-Y", "check-novalidate", "-n", NAMESPACE, "-s", &s], msg)
        .map(|_| "checked by ssh-keygen")
        .map_err(|reason| SigError::BadForKeygen { reason })
}
