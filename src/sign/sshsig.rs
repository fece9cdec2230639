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

/// Parses an armored signature, and insists it is exactly the canonical
/// encoding: a byte changed anywhere in the file (even in padding bits or
/// whitespace a lenient decoder would skip) then fails.
pub(super) fn parse_sig(bytes: &[u8]) -> Result<SshSig, String> {
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

pub(super) fn check_signature(
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
