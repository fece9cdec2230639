//! A pseudo-terminal for the interactive gates and the live view.
//!
//! Takes the `Command` that [`super::cli::Test::command`] built (or, for the README
//! tour, a shell whose PATH holds the binary), so pty runs get the same
//! environment policy as every other run.

use std::fs;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::cli::Run;

/// What the terminal sends for Ctrl-C (VINTR): as an answer, it is sent alone.
pub const CTRL_C: &str = "\x03";

/// As an answer: the terminal hangs up (as when the SSH session to the jump box
/// drops): the kernel sends SIGHUP to the run, and the terminal is gone for it.
pub const HANG_UP: &str = "\x00hang up";

/// Runs `cmd` on a new pseudo-terminal (stdin, stdout and stderr), answering each
/// `(prompt, answer)` in turn once `prompt` has appeared; an answer is a line,
/// except [`CTRL_C`], which the terminal turns into SIGINT for the run. Returns the exit code and
/// everything written to the terminal.
pub fn run_on_pty(cmd: Command, script: &[(&str, &str)]) -> (i32, String) {
    run_on_pty_sized(cmd, 120, script)
}

/// [`run_on_pty`] on a terminal `cols` columns wide.
pub fn run_on_pty_sized(cmd: Command, cols: u16, script: &[(&str, &str)]) -> (i32, String) {
    run(cmd, cols, script, false)
}

/// [`run_on_pty`], answering a prompt only once the terminal waits at it: it ends
/// the screen and nothing has come for a moment. A preview that lists gates
/// (`gate: ... [y/N]`) then does not get the answers, which gates would
/// discard as typed ahead.
pub fn run_on_pty_at_prompts(cmd: Command, script: &[(&str, &str)]) -> (i32, String) {
    run(cmd, 120, script, true)
}

fn run(mut cmd: Command, cols: u16, script: &[(&str, &str)], waiting: bool) -> (i32, String) {
    let size = libc::winsize {
        ws_row: 40,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let (master, slave) = open_pty(&size);
    let hang_up = slave.try_clone().unwrap();
    cmd.stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave));
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            // A session of its own with the pty as controlling terminal, like a login.
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let pid = child.id();
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(child.wait());
    });
    // The Command holds the slave's copies: close them, or the master never sees EOF.
    drop(cmd);

    let mut reader = fs::File::from(master);
    let mut writer = reader.try_clone().unwrap();
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        // EIO once every slave fd is closed: the run is over.
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });

    let deadline = Instant::now() + Duration::from_secs(90);
    let mut seen = String::new();
    let mut from = 0;
    let mut next = 0;
    let mut exited = None;
    let mut quiet_since = Instant::now();
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(chunk) => {
                seen.push_str(&String::from_utf8_lossy(&chunk));
                quiet_since = Instant::now();
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                if exited.is_some() {
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if let Some((prompt, answer)) = script.get(next) {
            let at_prompt = !waiting
                || (quiet_since.elapsed() > Duration::from_millis(300)
                    && seen[from..].trim_end().ends_with(prompt.trim_end()));
            let found = if waiting {
                at_prompt.then(|| seen[from..].trim_end().len() - prompt.trim_end().len())
            } else {
                seen[from..].find(prompt)
            };
            if let Some(at) = found {
                from += at + prompt.len();
                next += 1;
                if *answer == HANG_UP {
                    use std::os::fd::AsRawFd;
                    // SAFETY: vhangup of the terminal this test opened; we are root.
                    let r = unsafe { libc::ioctl(hang_up.as_raw_fd(), libc::TIOCVHANGUP) };
                    assert_eq!(r, 0, "TIOCVHANGUP: {}", std::io::Error::last_os_error());
                    continue;
                }
                // A newline after ^C would reach the prompt that the ^C opens, as an answer.
                let bytes = if answer.starts_with(CTRL_C) {
                    answer.to_string()
                } else {
                    format!("{answer}\n")
                };
                writer.write_all(bytes.as_bytes()).unwrap();
            }
        }
        if exited.is_none() {
            exited = done_rx.try_recv().ok().map(|r| r.unwrap());
        }
        // After exit, keep reading until the pty drains (ssh masters may hold it
        // briefly): what arrives now is the run's last output (its log path), kept.
        if let Some(status) = exited {
            match rx.recv_timeout(Duration::from_millis(300)) {
                Ok(chunk) => seen.push_str(&String::from_utf8_lossy(&chunk)),
                Err(_) => {
                    assert_eq!(next, script.len(), "prompts left unanswered:\n{seen}");
                    return (status.code().expect("killed by a signal"), seen);
                }
            }
        }
        if Instant::now() > deadline {
            // SAFETY: kill(2) on the pid of our own child, which the waiter thread reaps.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            panic!("opsrun on a pty did not finish; terminal so far:\n{seen}");
        }
    }
    let status = exited.unwrap();
    assert_eq!(next, script.len(), "prompts left unanswered:\n{seen}");
    (status.code().expect("killed by a signal"), seen)
}

/// What a run on a pty printed last: the log's path (terminal lines end with CRLF).
pub fn pty_run(code: i32, screen: &str, cwd: &std::path::Path) -> Run {
    Run::from_screen(code, screen, cwd)
}

/// A new pty pair, both ends close-on-exec from the start: the other tests of this
/// process spawn children at any moment, and one that inherited the slave would
/// hold the terminal open after our run ended (`openpty` has no such flag).
fn open_pty(size: &libc::winsize) -> (OwnedFd, OwnedFd) {
    let os_err = std::io::Error::last_os_error;
    // SAFETY: posix_openpt returns a fresh descriptor or -1.
    let m = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    assert!(m >= 0, "posix_openpt: {}", os_err());
    // SAFETY: `m` is a valid descriptor that nothing else owns.
    let master = unsafe { OwnedFd::from_raw_fd(m) };
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: grantpt/unlockpt on the master; ptsname_r writes at most `name.len()` bytes.
    unsafe {
        assert_eq!(libc::grantpt(m), 0, "grantpt: {}", os_err());
        assert_eq!(libc::unlockpt(m), 0, "unlockpt: {}", os_err());
        assert_eq!(
            libc::ptsname_r(m, name.as_mut_ptr(), name.len()),
            0,
            "ptsname_r"
        );
    }
    // SAFETY: `name` is the NUL-terminated path ptsname_r wrote.
    let s = unsafe {
        libc::open(
            name.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    assert!(s >= 0, "open the pty slave: {}", os_err());
    // SAFETY: `s` is a valid descriptor that nothing else owns.
    let slave = unsafe { OwnedFd::from_raw_fd(s) };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer.
    let rc = unsafe { libc::ioctl(s, libc::TIOCSWINSZ, size as *const libc::winsize) };
    assert_eq!(rc, 0, "TIOCSWINSZ: {}", os_err());
    (master, slave)
}
