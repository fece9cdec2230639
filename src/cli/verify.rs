//! `opsrun verify FILE`: check a signed log or plan and print each check.

use super::*;

/// `log` is a file, or a run id (or run directory) as `opsrun log` and
/// `opsrun rollback` take: then its `log.md`.
pub(super) fn verify(args: &VerifyArgs, log_dir: &Path) -> Result<i32> {
    let log = if args.log.is_file() {
        args.log.clone()
    } else {
        crate::record::runs::resolve(log_dir, &args.log.to_string_lossy())?.join(runner::LOG_FILE)
    };
    let opts = crate::sign::VerifyOptions {
        allowed_signers: args.allowed_signers.clone(),
        identity: args.identity.clone(),
    };
    let v = crate::sign::verify(&log, &opts).map_err(Error::from)?;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "document   {}", v.document.display());
    let _ = writeln!(out, "signature  {}", v.sig.display());
    let _ = writeln!(
        out,
        "signer     {} (key {}{})",
        v.identity.as_deref().unwrap_or("(not stated)"),
        v.fingerprint.as_deref().unwrap_or("unknown"),
        v.algorithm
            .as_deref()
            .map(|a| format!(", {a}"))
            .unwrap_or_default()
    );
    let _ = writeln!(
        out,
        "signed at  {}",
        v.signed_at.as_deref().unwrap_or("(not stated)")
    );
    for c in &v.checks {
        let mark = if c.ok {
            console::style("ok    ").green()
        } else {
            console::style("FAILED").red().bold()
        };
        let _ = writeln!(
            out,
            "{mark}  {}: {}",
            c.name,
            crate::sanitize::escape_controls(c.detail.as_bytes())
        );
    }
    if !v.authenticated && args.allowed_signers.is_none() {
        let _ = writeln!(
            out,
            "{} signer NOT AUTHENTICATED: without --allowed-signers the key is simply the one the signature carries, and anyone able to edit the log could re-sign it with their own. Compare the fingerprint with the signer's known key, or pass --allowed-signers FILE.",
            console::style("warning:").yellow().bold()
        );
    }
    let failed = v.checks.iter().filter(|c| !c.ok).count();
    if v.ok() {
        let _ = writeln!(
            out,
            "result     {} ({} passed{})",
            console::style("VERIFIED").green().bold(),
            crate::plural::count(v.checks.len(), "check", "checks"),
            if v.authenticated {
                ", signer authenticated"
            } else {
                ", signer not authenticated"
            }
        );
        Ok(exit::OK)
    } else {
        let _ = writeln!(
            out,
            "result     {} ({failed} of {} failed)",
            console::style("FAILED").red().bold(),
            crate::plural::count(v.checks.len(), "check", "checks")
        );
        Ok(exit::STEP_FAILED)
    }
}
