//! Ctrl-C, in one place: the SIGINT count that prompts watch, the signal task
//! that presses Ctrl-C on the run, the question the operator is asked, and the
//! choice the engine reads back between steps.
//!
//! A first Ctrl-C on a terminal asks [`Stop`]; a second one, or one without a
//! terminal, means [`Stop::Now`]. The choice is recorded as an `Interrupt` event.

use crate::execute::engine::{Engine, ExecError, Finish};
use crate::record::events::{self, Event};
use std::io::{BufRead, IsTerminal};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// What the operator asked for with Ctrl-C: the journal's own vocabulary.
pub use crate::record::events::Stop;

/// Ctrl-C state of one run: the presses the step loop listens for, who answers
/// "What now?", and the choice the engine reads back between steps.
///
/// Presses arrive through a [`CtrlC`] handle: the signal task holds one (see
/// [`watch_signals`]); the engine tests hold another and press it from a
/// scripted host, with a scripted answer, instead of sending real signals.
pub struct Interrupt {
    choice: Mutex<Option<Stop>>,
    presses: tokio::sync::mpsc::UnboundedSender<()>,
    /// Taken by [`interruptible`] while a step list runs: presses are heard only then.
    heard: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<()>>>,
    asker: Asker,
}

/// Who answers "What now?" after a first Ctrl-C.
enum Asker {
    /// The operator, when stdin and stderr are a terminal; otherwise "stop now".
    Terminal,
    /// A test's answer, as if typed at a terminal.
    #[cfg(test)]
    Scripted(Box<dyn Fn() -> Stop + Send + Sync>),
}

/// Presses Ctrl-C on a run, as SIGINT does.
#[derive(Debug, Clone)]
pub struct CtrlC(tokio::sync::mpsc::UnboundedSender<()>);

impl CtrlC {
    pub fn press(&self) {
        // The run has ended when nobody listens any more: nothing left to stop.
        let _ = self.0.send(());
    }
}

impl Default for Interrupt {
    fn default() -> Interrupt {
        Interrupt::with(Asker::Terminal)
    }
}

impl Interrupt {
    fn with(asker: Asker) -> Interrupt {
        let (presses, heard) = tokio::sync::mpsc::unbounded_channel();
        Interrupt {
            choice: Mutex::new(None),
            presses,
            heard: Mutex::new(Some(heard)),
            asker,
        }
    }

    /// A run whose "What now?" is answered by `answer` (engine tests).
    #[cfg(test)]
    pub(crate) fn scripted(answer: impl Fn() -> Stop + Send + Sync + 'static) -> Interrupt {
        Interrupt::with(Asker::Scripted(Box::new(answer)))
    }

    /// A handle that presses Ctrl-C on this run.
    pub fn ctrl_c(&self) -> CtrlC {
        CtrlC(self.presses.clone())
    }

    pub fn set(&self, stop: Stop) {
        *self.choice.lock().unwrap_or_else(|p| p.into_inner()) = Some(stop);
    }

    pub fn get(&self) -> Option<Stop> {
        *self.choice.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a first Ctrl-C asks "What now?" rather than stopping at once.
    fn asks(&self, gates_interactive: bool) -> bool {
        match self.asker {
            Asker::Terminal => gates_interactive && std::io::stderr().is_terminal(),
            #[cfg(test)]
            Asker::Scripted(_) => true,
        }
    }

    fn ask(&self) -> Stop {
        match &self.asker {
            Asker::Terminal => ask_stop(true),
            #[cfg(test)]
            Asker::Scripted(answer) => answer(),
        }
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

/// Turns each SIGINT into a press on the run (tokio's handler replaces the
/// default one, so Ctrl-C never kills opsrun outright).
pub(crate) async fn watch_signals(ctrl_c: CtrlC) {
    while tokio::signal::ctrl_c().await.is_ok() {
        ctrl_c.press();
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
    let Some(mut rx) = engine
        .interrupt
        .heard
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
    else {
        // Already listened to by an enclosing call.
        return Some(fut.await);
    };
    // A Ctrl-C while no step list ran (between batches) was not heard then: as
    // before, it is not answered now either.
    while rx.try_recv().is_ok() {}
    tokio::pin!(fut);
    let interactive = engine.interrupt.asks(engine.gates.interactive);
    let mut presses = 0;
    let result = loop {
        tokio::select! {
            r = &mut fut => break Some(r),
            Some(()) = rx.recv() => {
                presses += 1;
                if presses > 1 || !interactive {
                    engine.interrupt.set(Stop::Now);
                } else {
                    let choice = engine.ui.suspend(|| engine.interrupt.ask());
                    // A second Ctrl-C while the question was open counts as "stop now".
                    let choice = if rx.try_recv().is_ok() { Stop::Now } else { choice };
                    engine.interrupt.set(choice);
                }
                let choice = engine.interrupt.get().unwrap_or(Stop::Now);
                let _ = engine.rec.emit(&Event::Interrupt { time: events::now(), choice });
                if choice != Stop::AfterStep {
                    break None;
                }
            }
        }
    };
    *engine
        .interrupt
        .heard
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = Some(rx);
    result
}
