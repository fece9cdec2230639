//! Room kept on the log disk for the record: a file of a few MiB in the run
//! directory, deleted when an output cannot be written (disk full), so the
//! journal's remaining events, `run_finished` and `log.md` still fit.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Enough for the journal's last events and the log of a large run.
pub const RESERVE_BYTES: u64 = 4 * 1024 * 1024;

/// Refuse to start when the log dir has less free space than this: the
/// reserve plus room for the journal and the first outputs.
pub const NEEDED_FREE_BYTES: u64 = RESERVE_BYTES + 2 * 1024 * 1024;

#[derive(Debug, Default)]
pub struct Reserve {
    path: Mutex<Option<PathBuf>>,
    /// Set once an output could not be written: from then on no output of the
    /// run takes any of the freed room (it belongs to the journal and the log).
    spent: std::sync::atomic::AtomicBool,
}

impl Reserve {
    /// Writes the reserve file (real blocks, not a sparse file: only written
    /// bytes are taken from the free space).
    pub fn create(dir: &Path) -> std::io::Result<Reserve> {
        let path = dir.join(".reserve");
        let block = vec![0u8; 64 * 1024];
        let mut f = std::fs::File::create(&path)?;
        let mut left = RESERVE_BYTES;
        use std::io::Write;
        while left > 0 {
            let n = left.min(block.len() as u64) as usize;
            if let Err(e) = f.write_all(&block[..n]) {
                let _ = std::fs::remove_file(&path);
                return Err(e);
            }
            left -= n as u64;
        }
        f.sync_all()?;
        Ok(Reserve {
            path: Mutex::new(Some(path)),
            spent: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// No reserve (dry runs, tests).
    pub fn none() -> Reserve {
        Reserve::default()
    }

    /// Gives the room back; idempotent.
    pub fn release(&self) {
        self.spent.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut p = self.path.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(path) = p.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Reserve {
    /// Whether an output already hit a full disk in this run.
    pub fn is_spent(&self) -> bool {
        self.spent.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Deletes the file at the end of the run without counting as a full disk.
    pub fn remove(&self) {
        let mut p = self.path.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(path) = p.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Drop for Reserve {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Free bytes for an unprivileged writer on the file system holding `dir`.
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a valid out pointer.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}
