//! Room kept on the log disk for the record: a file of a few MiB in the run
//! directory, deleted when an output cannot be written (disk full), so the
//! journal's remaining events, `run_finished` and `log.md` still fit.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Enough for the journal's last events and the log (whose excerpts are at most
/// 4000 bytes an output) of a run of a few hundred host-steps.
pub const RESERVE_BYTES: u64 = 1024 * 1024;

/// Refuse to start when the log dir has less free space than this: the
/// reserve plus room for the journal, the copies of the inputs and some output.
pub const NEEDED_FREE_BYTES: u64 = RESERVE_BYTES + 512 * 1024;

/// Whether `log_dir` (created if missing) has room to record a run; the message
/// names the directory, the free and the needed space.
pub fn check_room(log_dir: &Path) -> Result<(), String> {
    let free = std::fs::create_dir_all(log_dir).and_then(|()| free_bytes(log_dir));
    match free {
        Ok(free) if free < NEEDED_FREE_BYTES => Err(format!(
            "not enough free space in the log directory `{}` to record the run: {} KiB free, {} KiB needed (the journal's reserve and the first outputs); free some space or pass another --log-dir",
            std::fs::canonicalize(log_dir)
                .unwrap_or_else(|_| log_dir.to_path_buf())
                .display(),
            free / 1024,
            NEEDED_FREE_BYTES / 1024
        )),
        // A file system that cannot say (or a dir we cannot create) is reported
        // by the run directory's creation, with its own message.
        _ => Ok(()),
    }
}

#[derive(Debug, Default)]
pub struct Reserve {
    path: Mutex<Option<PathBuf>>,
    /// Set once an output could not be written: from then on no output of the
    /// run takes any of the freed room (it belongs to the journal and the log).
    spent: std::sync::atomic::AtomicBool,
}

impl Reserve {
    /// No room kept: a rollback on the disk its run filled goes on without one.
    pub fn none() -> Reserve {
        Reserve {
            path: Mutex::new(None),
            spent: std::sync::atomic::AtomicBool::new(false),
        }
    }

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
