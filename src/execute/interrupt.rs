//! Ctrl-C, in one place: the SIGINT count that prompts watch, the signal task
//! that wakes the step loop, the question the operator is asked, and the
//! choice the engine reads back between steps.
//!
//! A first Ctrl-C on a terminal asks [`Stop`]; a second one, or one without a
//! terminal, means [`Stop::Now`]. The choice is recorded as an `Interrupt` event.

use crate::execute::engine::{Engine, ExecError, Finish};
use crate::record::events::{self, Event};
use std::io::{BufRead, IsTerminal};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// What the operator asked for with Ctrl-C.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Let the running step finish, then stop.
    AfterStep,
    /// Stop now, leaving the running step unfinished.
    Now,
    /// Stop now and undo the completed steps.
    NowAndRollback,
}

/// Ctrl-C state shared between the signal handler and the engine.
#[derive(Debug, Default)]
pub struct Interrupt {
    choice: Mutex<Option<Stop>>,
}

impl Interrupt {
    pub fn set(&self, stop: Stop) {
        *self.choice.lock().unwrap_or_else(|p| p.into_inner()) = Some(stop);
    }

    pub fn get(&self) -> Option<Stop> {
        *self.choice.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// SIGINTs received, counted by a plain signal handler: a prompt blocks the
/// thread that would otherwise run tokio's signal driver, so it cannot rely on
/// the async handler to notice a Ctrl-C typed at the prompt.
static SIGINTS: AtomicUsize = AtomicUsize::new(0);

/// Starts counting SIGINTs (idempotent); call before any prompt can be shown.
pub fn count_sigints() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: the action only does an atomic add, which is async-signal-safe;
        // the registry chains it with tokio's own SIGINT handler.
        let _ = unsafe {
            signal_hook_registry::register(libc::SIGINT, || {
                SIGINTS.fetch_add(1, Ordering::SeqCst);
            })
        };
    });
}

/// The SIGINT count now, to compare against while waiting for an answer.
pub fn sigint_mark() -> usize {
    count_sigints();
    SIGINTS.load(Ordering::SeqCst)
}

/// Reads a line from the terminal; `None` if Ctrl-C is pressed meanwhile.
///
/// The line is read on its own thread so that Ctrl-C at a prompt is noticed at
/// once (a blocked read_line would not return until Enter).
/// `mark` is `sigint_mark()` taken before the prompt was printed, so a Ctrl-C
/// typed the moment the prompt appears is not missed.
pub fn read_line_or_ctrl_c(mark: usize) -> Option<std::io::Result<String>> {
    let sigints = mark;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let r = std::io::stdin().lock().read_line(&mut line).map(|_| line);
        let _ = tx.send(r);
    });
    tokio::task::block_in_place(|| loop {
        if SIGINTS.load(Ordering::SeqCst) != sigints {
            return None;
        }
        match rx.recv_timeout(std::time::Duration::from_millis(50)) {
            Ok(r) => return Some(r),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Some(Err(std::io::Error::other("the reader stopped")))
            }
        }
    })
}

/// Throws away what was typed on the terminal before a prompt was asked.
///
/// A `y` typed while batch 1's step ran would otherwise answer the batch 2 gate
/// (or the rollback gate) the moment it appeared, unseen. Called before the
/// prompt is printed: an answer typed once it shows is kept.
pub fn discard_typeahead() {
    // SAFETY: tcflush on fd 0 only drops queued input; on a pipe it fails with
    // ENOTTY and changes nothing (gates never read a pipe anyway).
    unsafe {
        libc::tcflush(libc::STDIN_FILENO, libc::TCIFLUSH);
    }
}

/// The Ctrl-C handler's state lives in a global so the signal task can reach the
/// engine's `Interrupt` without borrowing across the spawn.
static INTERRUPT_TX: Mutex<Option<tokio::sync::mpsc::UnboundedSender<()>>> = Mutex::new(None);

pub(crate) async fn watch_signals() {
    loop {
        if tokio::signal::ctrl_c().await.is_err() {
            return;
        }
        let tx = INTERRUPT_TX
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(tx) = tx {
            let _ = tx.send(());
        }
    }
}

/// Asks what to do after a Ctrl-C (on a terminal); a pipe gets "stop now".
fn ask_stop(interactive: bool) -> Stop {
    if !interactive {
        return Stop::Now;
    }
    let mark = sigint_mark();
    discard_typeahead();
    eprintln!();
    eprintln!("Interrupted. What now?");
    eprintln!("  [w] wait for the running step to finish, then stop");
    eprintln!("  [s] stop now (the running step is left unfinished)");
    eprintln!("  [r] stop now and roll back the completed steps");
    eprint!("Choice [w/s/r] (Ctrl-C again: stop now): ");
    let Some(Ok(line)) = read_line_or_ctrl_c(mark) else {
        return Stop::Now;
    };
    match line.trim().to_lowercase().as_str() {
        "w" | "wait" => Stop::AfterStep,
        "r" | "rollback" => Stop::NowAndRollback,
        _ => Stop::Now,
    }
}

/// Runs `fut` while listening for Ctrl-C; returns `None` if told to stop now.
pub(crate) async fn interruptible<
    F: std::future::Future<Output = Result<Option<Finish>, ExecError>>,
>(
    engine: &Engine<'_>,
    fut: F,
) -> Option<Result<Option<Finish>, ExecError>> {
    // The channel is installed per call: the signal task reaches whichever step list is running.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    *INTERRUPT_TX.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
    tokio::pin!(fut);
    let interactive = engine.gates.interactive && std::io::stderr().is_terminal();
    let mut presses = 0;
    let result = loop {
        tokio::select! {
            r = &mut fut => break Some(r),
            Some(()) = rx.recv() => {
                presses += 1;
                if presses > 1 || !interactive {
                    engine.interrupt.set(Stop::Now);
                } else {
                    let choice = engine.ui.suspend(|| ask_stop(true));
                    // A second Ctrl-C while the question was open counts as "stop now".
                    let choice = if rx.try_recv().is_ok() { Stop::Now } else { choice };
                    engine.interrupt.set(choice);
                }
                let choice = engine.interrupt.get().unwrap_or(Stop::Now);
                let _ = engine.rec.emit(&Event::Interrupt { time: events::now(), choice: format!("{choice:?}") });
                if choice != Stop::AfterStep {
                    break None;
                }
            }
        }
    };
    *INTERRUPT_TX.lock().unwrap_or_else(|p| p.into_inner()) = None;
    result
}
