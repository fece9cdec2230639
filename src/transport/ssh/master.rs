//! The ssh master process, started and ended by opsrun itself rather than by the
//! `openssh` crate, so that its lifetime is tied to opsrun's:
//!
//! - **foreground** (no `-f`, and `ControlPersist=no` on the command line, which beats
//!   a `ControlPersist` in the user's ssh_config): the master stays opsrun's child, so
//!   opsrun can signal it, reap it and see it exit;
//! - **own session** (`setsid`): neither the master nor the `ssh -W` helpers it starts
//!   for jump hosts are in the terminal's foreground process group, so a Ctrl-C or a
//!   hangup of the terminal reaches only opsrun, which decides what to do;
//! - **parent-death signal** (`PR_SET_PDEATHSIG` = SIGTERM): when opsrun dies, even by
//!   SIGKILL, the kernel sends the master SIGTERM; ssh then ends its jump helper too.
//!
//! The kernel sends the parent-death signal when the *thread* that forked the child
//! ends, so every master is forked by one thread that lives as long as the process
//! (`spawner`), never by a tokio worker or blocking-pool thread, which come and go.

use std::ffi::OsString;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

use openssh::Session;

/// How often the control socket and the child are looked at while ssh connects.
const POLL: Duration = Duration::from_millis(10);
/// How long a master may take to exit after it was asked to (over the mux, or by
/// SIGTERM) before it is killed outright.
const EXIT_GRACE: Duration = Duration::from_secs(3);

/// A running master: the `ssh -M -N` child and its private control directory.
#[derive(Debug)]
pub(super) struct Master {
    /// `None` once reaped.
    child: Option<Child>,
    dir: PathBuf,
}

/// Why a master did not come up.
#[derive(Debug)]
pub(super) enum StartError {
    /// ssh exited before the connection was ready; its `-E` log says why.
    Exited { log: String },
    /// ssh went to the background by itself (`ForkAfterAuthentication yes` in the
    /// user's ssh_config): another pid serves the socket. That master was asked to
    /// exit.
    Forked,
    /// Neither ready nor exited within the safety bound; ssh was stopped.
    NoAnswer { log: String, waited: Duration },
    /// The control directory or the process could not be created.
    Local {
        what: &'static str,
        source: io::Error,
    },
}

impl Master {
    /// Starts `ssh -E LOG -S SOCKET -M -N -o ControlPersist=no OPTIONS` in a fresh
    /// directory under `base`, and waits until its control socket answers a mux alive
    /// check, or ssh exits, or `bound` passes.
    pub(super) async fn start(
        base: &Path,
        options: Vec<OsString>,
        bound: Duration,
    ) -> Result<(Master, Session), StartError> {
        let dir = connection_dir(base).map_err(|source| StartError::Local {
            what: "creating the connection's control directory",
            source,
        })?;
        let socket = dir.join("master");
        let log = dir.join("log");
        // From here on, Drop ends the child and removes the directory on every path,
        // also when this future is dropped half-way.
        let mut master = Master { child: None, dir };

        let mut cmd = std::process::Command::new("ssh");
        for k in crate::transport::secret_env_vars() {
            cmd.env_remove(k);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .arg("-E")
            .arg(&log)
            .arg("-S")
            .arg(&socket)
            .arg("-M")
            .arg("-N")
            // On the command line, so it wins over the user's ssh_config: a persisting
            // master forks away from opsrun and outlives it.
            .args(["-o", "ControlPersist=no"])
            .args(options);
        let child = spawn(cmd).await.map_err(|source| StartError::Local {
            what: "starting ssh",
            source,
        })?;
        let pid = child.id();
        master.child = Some(child);
        let session = Session::resume_mux(socket.clone().into(), Some(log.clone().into()));

        let start = Instant::now();
        loop {
            let exited = master.try_wait().map_err(|source| StartError::Local {
                what: "waiting for ssh",
                source,
            })?;
            // Which process serves the socket: ours, or one that ssh forked into the
            // background (`ForkAfterAuthentication`, after it made the socket), out of
            // our reach. Looked at after try_wait, so an exit is not mistaken for that.
            let server = if socket.exists() {
                serving_pid(&socket).await
            } else {
                None
            };
            match (exited, server) {
                (_, Some(other)) if other != pid => {
                    let _ = session.close().await;
                    return Err(StartError::Forked);
                }
                (Some(_), _) => {
                    return Err(StartError::Exited {
                        log: std::fs::read_to_string(&log).unwrap_or_default(),
                    })
                }
                (None, Some(_)) => return Ok((master, session)),
                (None, None) => {}
            }
            if start.elapsed() > bound {
                master.end();
                return Err(StartError::NoAnswer {
                    log: std::fs::read_to_string(&log).unwrap_or_default(),
                    waited: start.elapsed(),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// After the master was asked to exit over the mux: waits for it (then ends it if it
    /// lingers), reaps it and removes the control directory.
    pub(super) async fn finish(mut self) {
        let deadline = Instant::now() + EXIT_GRACE;
        while self.child.is_some() && Instant::now() < deadline {
            match self.try_wait() {
                Ok(None) => tokio::time::sleep(POLL).await,
                Ok(Some(_)) | Err(_) => break,
            }
        }
        // Drop does the rest: signals a master still there, reaps, removes the dir.
    }

    fn try_wait(&mut self) -> io::Result<Option<std::process::ExitStatus>> {
        let Some(child) = &mut self.child else {
            return Ok(None);
        };
        let status = child.try_wait()?;
        if status.is_some() {
            self.child = None;
        }
        Ok(status)
    }

    /// SIGTERM to the master's process group (the master and its jump helper: ssh does
    /// not give the helper a group of its own), SIGKILL if it does not go within
    /// [`EXIT_GRACE`], then reaps it. Blocks at most that long; ssh exits at once on
    /// SIGTERM.
    fn end(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // The group id is the master's pid (setsid), valid until the master is reaped,
        // which only happens below.
        let group = -(child.id() as libc::pid_t);
        // SAFETY: kill(2) on the process group of our own unreaped child.
        unsafe { libc::kill(group, libc::SIGTERM) };
        let deadline = Instant::now() + EXIT_GRACE;
        while Instant::now() < deadline {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
        // SAFETY: as above.
        unsafe { libc::kill(group, libc::SIGKILL) };
        let _ = child.wait();
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        self.end();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The pid of the master answering a mux alive check on `socket`, if one answers.
async fn serving_pid(socket: &Path) -> Option<u32> {
    let mut conn = openssh_mux_client::Connection::connect(socket).await.ok()?;
    conn.send_alive_check().await.ok().map(|pid| pid.get())
}

/// A new 0700 directory `.ssh-connection-PID-N` in `base` (itself private to the
/// user), holding the control socket and ssh's log.
fn connection_dir(base: &Path) -> io::Result<PathBuf> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    loop {
        let dir = base.join(format!(
            ".ssh-connection-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            // Left by an earlier process that had the same pid and was killed.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            r => return r.map(|()| dir),
        }
    }
}

struct Request {
    cmd: std::process::Command,
    reply: tokio::sync::oneshot::Sender<io::Result<Child>>,
}

/// Has the spawner thread fork `cmd` into a new session with a parent-death signal.
async fn spawn(mut cmd: std::process::Command) -> io::Result<Child> {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: only async-signal-safe calls (setsid, prctl, getppid, signal) between
    // fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            // An inherited "ignore" would make the parent-death signal a no-op.
            libc::signal(libc::SIGTERM, libc::SIG_DFL);
            #[cfg(target_os = "linux")]
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGTERM as libc::c_ulong,
                0,
                0,
                0,
            ) < 0
            {
                return Err(io::Error::last_os_error());
            }
            // opsrun died between fork and prctl: no signal will ever come, so do not
            // become an orphaned master (prctl(2) advises this check).
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    let (reply, answer) = tokio::sync::oneshot::channel();
    let gone = || io::Error::other("the thread that starts ssh masters is gone");
    spawner()
        .ok_or_else(gone)?
        .send(Request { cmd, reply })
        .map_err(|_| gone())?;
    answer.await.map_err(|_| gone())?
}

/// The one thread that forks masters; it waits for requests for the rest of the
/// process's life (the channel's sender is never dropped), so the parent-death signal
/// fires only when opsrun itself ends.
fn spawner() -> Option<&'static mpsc::Sender<Request>> {
    static SPAWNER: OnceLock<Option<mpsc::Sender<Request>>> = OnceLock::new();
    SPAWNER
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Request>();
            std::thread::Builder::new()
                .name("ssh-masters".into())
                .spawn(move || {
                    for Request { mut cmd, reply } in rx {
                        if let Err(Ok(mut child)) = reply.send(cmd.spawn()) {
                            // The connect was abandoned while we forked.
                            let _ = child.kill();
                            let _ = child.wait();
                        }
                    }
                })
                .ok()
                .map(|_| tx)
        })
        .as_ref()
}
