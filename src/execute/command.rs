//! One command on a host, as the engine sends it: inside the envelope that
//! registers it (`supervise`), its output shown live (whole lines, secrets
//! masked) and streamed to the run's output files, bounded by the step's
//! `timeout`, and recorded as stopped when "stop now" killed it.

use super::engine::Engine;
use super::failure::Failure;
use crate::record::output::OutputWriter;
use crate::transport::{Command, Connection, Stdin};
use std::time::Duration;

/// Extra time past a step's `timeout` before the control side gives up on the
/// channel: the remote `timeout` wrapper normally ends the command first.
pub(super) const TIMEOUT_GRACE: Duration = Duration::from_secs(20);

impl Engine<'_> {
    /// Runs `line` on `host` and returns its outcome (output kept bounded).
    pub(super) async fn exec(
        &self,
        conn: &Connection,
        line: &str,
        stdin: Stdin,
        host: &str,
        timeout: Option<Duration>,
    ) -> Result<crate::transport::Outcome, Failure> {
        self.exec_to(conn, line, stdin, host, timeout, None).await
    }

    /// [`Engine::exec`], also streaming stdout and stderr into `files` as they
    /// arrive: the outcome keeps only a bounded part (`transport::KEEP_HEAD`).
    pub(super) async fn exec_to(
        &self,
        conn: &Connection,
        line: &str,
        stdin: Stdin,
        host: &str,
        timeout: Option<Duration>,
        mut files: Option<&mut [OutputWriter; 2]>,
    ) -> Result<crate::transport::Outcome, Failure> {
        if self.stopping() {
            return Err(Failure::Stopped {
                why: format!("{}; not started", self.stop_reason()),
            });
        }
        let (line, tag) = self.supervised(conn, host, line);
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((host.to_string(), tag.clone()));
        let cmd = Command { line, stdin };
        let redactor = &self.redactor;
        let ui = self.ui;
        // The live view (-v) shows whole lines only: a command that writes a secret
        // in two pieces arrives in two chunks, and masking each chunk alone would
        // show both halves. A very long line without a newline is let through in
        // pieces so that output stays live.
        const MAX_PENDING: usize = 64 * 1024;
        let mut pending = (Vec::new(), Vec::new());
        let result = {
            let mut sink = |s: crate::transport::Stream, chunk: &[u8]| {
                if let Some(files) = files.as_deref_mut() {
                    files[s as usize].push(chunk);
                }
                let buf = match s {
                    crate::transport::Stream::Stdout => &mut pending.0,
                    crate::transport::Stream::Stderr => &mut pending.1,
                };
                buf.extend_from_slice(chunk);
                let upto = if buf.len() > MAX_PENDING {
                    Some(redactor.complete_prefix(buf)).filter(|n| *n > 0)
                } else {
                    buf.iter().rposition(|b| *b == b'\n').map(|i| i + 1)
                };
                if let Some(end) = upto {
                    let lines: Vec<u8> = buf.drain(..end).collect();
                    ui.output(host, &redactor.redact_bytes(&lines));
                }
            };
            let fut = conn.exec(&cmd, &mut sink);
            match timeout {
                Some(t) => match tokio::time::timeout(t.saturating_add(TIMEOUT_GRACE), fut).await {
                    Ok(r) => r.map_err(Failure::from),
                    Err(_) => Err(Failure::NoAnswer {
                        waited: t.saturating_add(TIMEOUT_GRACE),
                    }),
                },
                None => fut.await.map_err(Failure::from),
            }
        };
        for rest in [pending.0, pending.1] {
            if !rest.is_empty() {
                ui.output(host, &redactor.redact_bytes(&rest));
            }
        }
        // However it ended (killed by TERM, or the channel closing), a command
        // that "stop now" killed is recorded as stopped, not as failing by itself.
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(host.to_string(), tag.clone()));
        if let Some(why) = self.was_killed(host, &tag).await {
            return Err(Failure::Stopped { why });
        }
        // Arrived while the run was being stopped: the envelope refused it (exit
        // 143), or it started just then. Either way it may have done something.
        if self.stopping() && matches!(&result, Ok(o) if o.exit_code == Some(143)) {
            return Err(Failure::Stopped {
                why: self.stop_reason(),
            });
        }
        result
    }
}
