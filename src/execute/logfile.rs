//! The run's `log.md`: rendered from the journal by the report stage and
//! signed by the sign stage, at the end of a run and by `opsrun log`.

use super::*;

pub const LOG_FILE: &str = "log.md";

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error(transparent)]
    Journal(#[from] crate::record::rundir::RecordError),
    #[error("cannot write or sign the log `{}`: {source}", path.display())]
    Sign {
        path: PathBuf,
        source: crate::sign::SignError,
    },
}

/// (Re)renders `log.md` from the journal in `dir` and signs it into
/// `log.md.sig` (or marks it UNSIGNED). Returns the log's path and how it was signed.
pub fn write_log(
    dir: &Path,
    signing: &crate::sign::Signing,
) -> Result<(PathBuf, Option<crate::sign::SignInfo>), LogError> {
    let replay = crate::record::journal::read(&dir.join(crate::record::journal::FILE))
        .map_err(crate::record::rundir::RecordError::from)?;
    let log = dir.join(LOG_FILE);
    let signed = signing
        .write_document(&log, |signer| {
            crate::report::log::render(&replay.events, dir, signer)
        })
        .map_err(|source| LogError::Sign {
            path: log.clone(),
            source,
        })?;
    Ok((log, signed))
}
