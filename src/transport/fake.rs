//! A scripted host, for the engine's tests only (the product has no fake mode:
//! nothing in an inventory can select it).
//!
//! A [`Fleet`] hands out [`Connection::Fake`]s that share one log: every command
//! any of its hosts receives is recorded in arrival order, with its stdin, so a
//! test can assert the exact order of commands across hosts. Each command is
//! answered by the first rule that matches it (by substring, optionally on one
//! host, or by a closure); a command no rule matches succeeds with no output.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Command, Connection, Outcome, Stdin, Stream, TransportError};

/// One command as a fake host received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub host: String,
    pub line: String,
    /// What the command was given on stdin (a file's contents, for an upload).
    pub stdin: Option<Vec<u8>>,
}

/// How a fake host answers one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub exit_code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Waited after the command is recorded and before it answers: a command
    /// that is still running when the engine gives up on it has been received.
    pub delay: Duration,
}

impl Reply {
    pub fn ok() -> Reply {
        Reply::exit(0)
    }

    pub fn exit(code: i32) -> Reply {
        Reply {
            exit_code: Some(code),
            stdout: Vec::new(),
            stderr: Vec::new(),
            delay: Duration::ZERO,
        }
    }

    pub fn stdout(mut self, text: &str) -> Reply {
        self.stdout = text.as_bytes().to_vec();
        self
    }

    pub fn stderr(mut self, text: &str) -> Reply {
        self.stderr = text.as_bytes().to_vec();
        self
    }

    pub fn after(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }
}

type Rule = Arc<dyn Fn(&Received) -> Option<Reply> + Send + Sync>;

#[derive(Default)]
struct State {
    log: Vec<Received>,
    rules: Vec<Rule>,
    /// How many times each host was told to kill what runs there.
    kills: std::collections::HashMap<String, u64>,
}

/// Scripted hosts sharing one command log. Cheap to clone: clones share it.
#[derive(Clone, Default)]
pub struct Fleet {
    state: Arc<Mutex<State>>,
    /// Wakes the commands that are waiting out their delay when a kill comes.
    killed: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("received", &self.received())
            .finish_non_exhaustive()
    }
}

impl Fleet {
    pub fn new() -> Fleet {
        Fleet::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A test that panicked while holding it has failed already; the log is still readable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Any host answers a command containing `text` with `reply`.
    pub fn on(&self, text: &str, reply: Reply) -> &Fleet {
        let text = text.to_string();
        self.answer(move |r| r.line.contains(&text).then(|| reply.clone()))
    }

    /// `host` answers a command containing `text` with `reply`.
    pub fn on_host(&self, host: &str, text: &str, reply: Reply) -> &Fleet {
        let (host, text) = (host.to_string(), text.to_string());
        self.answer(move |r| (r.host == host && r.line.contains(&text)).then(|| reply.clone()))
    }

    /// A rule as a closure: `None` passes the command on to the next rule. It is
    /// called without the fleet's lock held, so it may do anything (press Ctrl-C).
    pub fn answer(
        &self,
        rule: impl Fn(&Received) -> Option<Reply> + Send + Sync + 'static,
    ) -> &Fleet {
        self.lock().rules.push(Arc::new(rule));
        self
    }

    /// A connection to the scripted host `host`.
    pub fn connection(&self, host: &str) -> Connection {
        Connection::Fake(FakeConnection {
            host: host.to_string(),
            fleet: self.clone(),
        })
    }

    fn kills(&self, host: &str) -> u64 {
        self.lock().kills.get(host).copied().unwrap_or(0)
    }

    /// Returns once `host` was told to kill what runs there (after `seen` kills).
    async fn kill_after(&self, host: &str, seen: u64) {
        loop {
            let woken = self.killed.notified();
            if self.kills(host) > seen {
                return;
            }
            woken.await;
        }
    }

    /// Every command received so far, by every host, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.lock().log.clone()
    }
}

#[derive(Debug, Clone)]
pub struct FakeConnection {
    host: String,
    fleet: Fleet,
}

impl FakeConnection {
    pub fn host(&self) -> &str {
        &self.host
    }

    /// "Stop now" on this host: every command still waiting out its delay ends
    /// at once, killed by a signal (no exit code), as on a real host.
    pub fn kill_all(&self) {
        *self
            .fleet
            .lock()
            .kills
            .entry(self.host.clone())
            .or_default() += 1;
        self.fleet.killed.notify_waiters();
    }

    pub async fn exec(
        &self,
        cmd: &Command,
        sink: &mut (dyn FnMut(Stream, &[u8]) + Send),
    ) -> Result<Outcome, TransportError> {
        let start = Instant::now();
        let stdin = match &cmd.stdin {
            Stdin::None => None,
            Stdin::Bytes(b) => Some(b.clone()),
            Stdin::File(path) => {
                Some(
                    std::fs::read(path).map_err(|source| TransportError::StdinFile {
                        host: self.host.clone(),
                        path: path.clone(),
                        source,
                    })?,
                )
            }
        };
        let received = Received {
            host: self.host.clone(),
            line: cmd.line.clone(),
            stdin,
        };
        let rules = {
            let mut state = self.fleet.lock();
            state.log.push(received.clone());
            state.rules.clone()
        };
        let reply = rules
            .iter()
            .find_map(|rule| rule(&received))
            .unwrap_or_else(Reply::ok);
        if !reply.delay.is_zero() {
            let seen = self.fleet.kills(&self.host);
            tokio::select! {
                _ = tokio::time::sleep(reply.delay) => {}
                _ = self.fleet.kill_after(&self.host, seen) => {
                    return Ok(Outcome {
                        exit_code: None,
                        stdout: Vec::new(),
                        stderr: Vec::new(),
                        duration: start.elapsed(),
                    });
                }
            }
        }
        for (stream, bytes) in [
            (Stream::Stdout, &reply.stdout),
            (Stream::Stderr, &reply.stderr),
        ] {
            if !bytes.is_empty() {
                sink(stream, bytes);
            }
        }
        Ok(Outcome {
            exit_code: reply.exit_code,
            stdout: reply.stdout,
            stderr: reply.stderr,
            duration: start.elapsed(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hosts_share_one_log_and_the_first_matching_rule_answers() {
        let fleet = Fleet::new();
        fleet
            .on_host("b", "status", Reply::exit(3).stderr("down\n"))
            .on("status", Reply::ok().stdout("up\n"));
        let (a, b) = (fleet.connection("a"), fleet.connection("b"));
        let mut seen = Vec::new();
        let out = b
            .exec(
                &Command::with_stdin("status", Stdin::Bytes(b"pw\n".to_vec())),
                &mut |s, chunk| seen.push((s, chunk.to_vec())),
            )
            .await
            .unwrap();
        assert_eq!((out.exit_code, out.stderr), (Some(3), b"down\n".to_vec()));
        assert_eq!(seen, [(Stream::Stderr, b"down\n".to_vec())]);
        let out = a
            .exec(&Command::new("status"), &mut |_, _| {})
            .await
            .unwrap();
        assert_eq!((out.exit_code, out.stdout), (Some(0), b"up\n".to_vec()));
        let out = a.exec(&Command::new("true"), &mut |_, _| {}).await.unwrap();
        assert!(out.success() && out.stdout.is_empty());
        let received = fleet.received();
        let log: Vec<(&str, &str, Option<&[u8]>)> = received
            .iter()
            .map(|r| (r.host.as_str(), r.line.as_str(), r.stdin.as_deref()))
            .collect();
        assert_eq!(
            log,
            [
                ("b", "status", Some(&b"pw\n"[..])),
                ("a", "status", None),
                ("a", "true", None)
            ]
        );
    }
}
