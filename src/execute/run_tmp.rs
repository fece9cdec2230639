//! The run's private temporary directory on the control machine.

use super::view::Ui;
use std::path::{Path, PathBuf};

/// The run's private temporary directory on the control machine, given to `local`
/// steps as `TMPDIR`: what they stage there (an upgrade's copy of its packages, GBs)
/// is removed when the run ends, however it ends, short of SIGKILL.
pub(super) struct RunTmp(Option<PathBuf>);

impl RunTmp {
    /// `opsrun-RUN.XXXXXX` in the system temp dir (`$TMPDIR` or /tmp), made by
    /// mkdtemp: mode 0700, and a name no other user can have prepared.
    pub(super) fn create(run_id: &str) -> std::io::Result<RunTmp> {
        use std::os::unix::ffi::{OsStrExt, OsStringExt};
        let template = PathBuf::from(format!("{}{run_id}.XXXXXX", Self::prefix()));
        let mut bytes =
            std::ffi::CString::new(template.as_os_str().as_bytes())?.into_bytes_with_nul();
        // SAFETY: a NUL-terminated buffer that mkdtemp rewrites in place, within its length.
        if unsafe { libc::mkdtemp(bytes.as_mut_ptr().cast()) }.is_null() {
            return Err(std::io::Error::last_os_error());
        }
        bytes.pop();
        Ok(RunTmp(Some(PathBuf::from(std::ffi::OsString::from_vec(
            bytes,
        )))))
    }

    /// How every run's directory name starts (`/tmp/opsrun-`).
    pub(super) fn prefix() -> String {
        std::env::temp_dir()
            .join("opsrun-")
            .to_string_lossy()
            .into_owned()
    }

    pub(super) fn path(&self) -> &Path {
        self.0.as_deref().unwrap_or(Path::new(""))
    }

    /// Removes it, saying so if that fails: the operator must know what is left behind.
    pub(super) fn remove(mut self, ui: &Ui) {
        if let Some(dir) = self.0.take() {
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                ui.warn(&format!(
                    "could not remove the run's temporary directory {}: {e}",
                    dir.display()
                ));
            }
        }
    }
}

impl Drop for RunTmp {
    /// A run that ends on an error (the record cannot be written) cleans up too.
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
