//! One output stream of one host's step, written to `outputs/` as it arrives
//! (never held whole in memory), redacted, and hashed on the way.
//!
//! The redactor masks whole secrets: a secret the command writes in two pieces
//! arrives in two chunks, so only complete lines are masked and written (as in the
//! live view); a very long line without a newline is written in pieces at a point
//! no secret crosses (`Redactor::complete_prefix`), so the pending part stays small.
//!
//! When the disk is full the file is cut where the write failed, the run
//! directory's reserve is released (so the journal and `log.md` still fit), and
//! the saved record says it was cut: a full disk is a failure of the run, not of
//! the record.

use crate::record::events::Saved;
use crate::record::reserve::Reserve;
use crate::sanitize::Redactor;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Longest line kept back waiting for its newline before it is written in pieces.
const MAX_PENDING: usize = 64 * 1024;

pub struct OutputWriter {
    dir: PathBuf,
    /// `outputs/<stem>.<ext>` without the `.2` a clash adds.
    stem: String,
    ext: &'static str,
    redactor: Redactor,
    reserve: Arc<Reserve>,
    /// Created on the first byte: an empty stream has no file (as before).
    file: Option<(String, std::fs::File)>,
    pending: Vec<u8>,
    hasher: Sha256,
    written: u64,
    /// Bytes the command wrote to this stream, saved or not.
    seen: u64,
    /// Why the file stopped growing.
    cut: Option<String>,
}

impl OutputWriter {
    pub fn new(
        dir: &Path,
        stem: &str,
        ext: &'static str,
        redactor: Redactor,
        reserve: Arc<Reserve>,
    ) -> OutputWriter {
        OutputWriter {
            dir: dir.to_path_buf(),
            stem: stem.to_string(),
            ext,
            redactor,
            reserve,
            file: None,
            pending: Vec::new(),
            hasher: Sha256::new(),
            written: 0,
            seen: 0,
            cut: None,
        }
    }

    /// Takes one chunk as the transport delivers it.
    pub fn push(&mut self, chunk: &[u8]) {
        self.seen += chunk.len() as u64;
        if self.cut.is_some() {
            return;
        }
        self.pending.extend_from_slice(chunk);
        let upto = if self.pending.len() > MAX_PENDING {
            Some(self.redactor.complete_prefix(&self.pending)).filter(|n| *n > 0)
        } else {
            self.pending
                .iter()
                .rposition(|b| *b == b'\n')
                .map(|i| i + 1)
        };
        if let Some(end) = upto {
            let lines: Vec<u8> = self.pending.drain(..end).collect();
            self.write(&self.redactor.redact_bytes(&lines));
        }
    }

    /// Whether the output could not be saved whole.
    pub fn is_cut(&self) -> bool {
        self.cut.is_some()
    }

    fn write(&mut self, bytes: &[u8]) {
        if bytes.is_empty() || self.cut.is_some() {
            return;
        }
        if self.reserve.is_spent() {
            // Another output filled the disk: the room freed is the record's.
            self.cut = Some("output not saved past this point: the log disk is full".into());
            return;
        }
        if self.file.is_none() {
            match self.open() {
                Ok(f) => self.file = Some(f),
                Err(e) => {
                    self.fail(&e);
                    return;
                }
            }
        }
        let Some((_, f)) = &mut self.file else { return };
        // Hash exactly what reached the file: after a partial write the digest
        // still describes the file as it is.
        let mut rest = bytes;
        while !rest.is_empty() {
            match f.write(rest) {
                Ok(0) => {
                    self.fail(&std::io::Error::from(std::io::ErrorKind::WriteZero));
                    return;
                }
                Ok(n) => {
                    self.hasher.update(&rest[..n]);
                    self.written += n as u64;
                    rest = &rest[n..];
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.fail(&e);
                    return;
                }
            }
        }
    }

    fn open(&self) -> std::io::Result<(String, std::fs::File)> {
        // Stems are unique per step, host and batch; what runs twice under one
        // stem must not overwrite what was saved first: it gets `.2` (as `save`).
        let mut n = 1;
        loop {
            let rel = match n {
                1 => format!("outputs/{}.{}", self.stem, self.ext),
                _ => format!("outputs/{}.{n}.{}", self.stem, self.ext),
            };
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(self.dir.join(&rel))
            {
                Ok(f) => return Ok((rel, f)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => n += 1,
                Err(e) => return Err(e),
            }
        }
    }

    fn fail(&mut self, e: &std::io::Error) {
        // Free the room kept for the journal and the log: they must still fit.
        self.reserve.release();
        self.cut = Some(format!("output not saved past this point: {e}"));
    }

    /// Writes what is still pending and says where the output is.
    pub fn finish(mut self) -> Option<Saved> {
        let rest = std::mem::take(&mut self.pending);
        self.write(&self.redactor.redact_bytes(&rest));
        if let Some((_, f)) = &mut self.file {
            if let Err(e) = f.flush() {
                self.fail(&e);
            }
        }
        let cut = self.cut.take().map(|why| {
            format!(
                "{why} ({} of the {} bytes written are in the file)",
                self.written, self.seen
            )
        });
        match self.file.take() {
            Some((file, _)) => Some(Saved {
                file,
                sha256: self
                    .hasher
                    .finalize()
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect(),
                bytes: self.written,
                cut,
            }),
            // Nothing reached the disk: still say that there was output.
            None if cut.is_some() => Some(Saved {
                file: format!("outputs/{}.{}", self.stem, self.ext),
                sha256: format!("{:x}", Sha256::digest(b"")),
                bytes: 0,
                cut,
            }),
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer(dir: &Path, secret: &str) -> OutputWriter {
        std::fs::create_dir_all(dir.join("outputs")).unwrap();
        let redactor = Redactor::new([secret]);
        OutputWriter::new(
            dir,
            "01-x-h",
            "stdout",
            redactor,
            Arc::new(Reserve::default()),
        )
    }

    #[test]
    fn a_secret_split_across_chunks_is_masked_in_the_file_and_the_digest_is_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path(), "hunter22");
        for chunk in ["pass: hun", "ter", "22\nnext hu", "nter22 and no newline"] {
            w.push(chunk.as_bytes());
        }
        let saved = w.finish().unwrap();
        let text = std::fs::read(dir.path().join(&saved.file)).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&text),
            "pass: ******\nnext ****** and no newline"
        );
        assert_eq!(saved.bytes, text.len() as u64);
        assert_eq!(saved.sha256, crate::digest::sha256_hex(&text));
        assert_eq!(saved.cut, None);
    }

    #[test]
    fn a_long_line_is_written_in_pieces_without_leaking_a_secret() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path(), "hunter22");
        let mut sent = 0;
        while sent < 3 * MAX_PENDING {
            w.push(b"x".repeat(1000).as_slice());
            w.push(b"hunt");
            w.push(b"er22");
            sent += 1008;
        }
        assert!(
            w.pending.len() <= MAX_PENDING + 1008,
            "kept back: {}",
            w.pending.len()
        );
        let saved = w.finish().unwrap();
        let text = std::fs::read_to_string(dir.path().join(&saved.file)).unwrap();
        assert!(!text.contains("hunt") && !text.contains("er22"));
        assert_eq!(text.matches("******").count(), sent / 1008);
    }

    #[test]
    fn an_empty_stream_has_no_file() {
        let dir = tempfile::tempdir().unwrap();
        assert!(writer(dir.path(), "s").finish().is_none());
    }
}
