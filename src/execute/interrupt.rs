//! Ctrl-C, SIGTERM and SIGHUP, in one place: the signal count that prompts
//! watch, the signal task that presses on the run, the question the operator
//! is asked, and the choice the engine reads back between steps.
//!
//! A first Ctrl-C on a terminal asks [`Stop`]; a second one, or one without a
//! terminal, means [`Stop::Now`]. A first SIGTERM or SIGHUP asks nothing (the
//! terminal may be gone): the running step finishes, no new one starts. Any
//! signal after a choice means [`Stop::Now`]: the running commands are killed
//! on their hosts (`supervise`). Each decision is recorded as an `Interrupt`
//! event, with the signal that made it.

use crate::execute::engine::{Engine, ExecError, Finish};
use crate::record::events::{self, Event, Signal};
use std::io::{BufRead, IsTerminal};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// What the operator asked for with Ctrl-C: the journal's own vocabulary.
pub use crate::record::events::Stop;

/// Ctrl-C state of one run: the presses the step loop listens for, who answers
/// "What now?", and the choice the engine reads back between steps.
///
/// Presses arrive through a [`CtrlC`] handle: the signal task holds one (see
/// [`watch_signals`]); the engine tests hold another and press it from a
/// scripted host, with a scripted answer, instead of sending real signals.
pub struct Interrupt {
    /// Shared with every [`CtrlC`] handle: SIGTERM and SIGHUP decide at once,
    /// wherever the run is (connecting, undoing), not only while a step runs.
    choice: Choice,
    presses: tokio::sync::mpsc::UnboundedSender<Press>,
    /// Taken by [`interruptible`] while a step list runs: presses are heard only then.
    heard: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<Press>>>,
    asker: Asker,
}

/// The choice made and the signal that made it, shared by a run and its handles.
type Choice = Arc<Mutex<Option<(Stop, Option<Signal>)>>>;

/// One signal on the run; `decided` when the signal itself made the choice.
#[derive(Debug, Clone, Copy)]
struct Press {
    signal: Signal,
    decided: Option<Stop>,
}

/// Who answers "What now?" after a first Ctrl-C.
enum Asker {
    /// The operator, when stdin and stderr are a terminal; otherwise "stop now".
    Terminal,
    /// A test's answer, as if typed at a terminal.
    #[cfg(test)]
    Scripted(Box<dyn Fn() -> Stop + Send + Sync>),
}

/// Presses Ctrl-C on a run, as SIGINT does (or delivers SIGTERM or SIGHUP).
#[derive(Debug, Clone)]
pub struct CtrlC {
    presses: tokio::sync::mpsc::UnboundedSender<Press>,
    choice: Choice,
}

impl CtrlC {
    #[cfg(test)]
    pub fn press(&self) {
        let _ = self.signal(Signal::CtrlC);
    }

    /// A signal on the run. SIGTERM and SIGHUP decide here: the first lets the
    /// running step finish, a later one (after any choice) stops now. Ctrl-C is
    /// decided where the run listens, which may ask the operator.
    pub fn signal(&self, signal: Signal) -> Option<Stop> {
        let decided = match signal {
            Signal::CtrlC => None,
            Signal::Term | Signal::Hangup => {
                let mut choice = self.choice.lock().unwrap_or_else(|p| p.into_inner());
                let stop = match *choice {
                    None => Stop::AfterStep,
                    Some(_) => Stop::Now,
                };
                // A "stop and roll back" already chosen stays that: the rollback was asked for.
                if !matches!(*choice, Some((Stop::NowAndRollback, _))) {
                    *choice = Some((stop, Some(signal)));
                }
                Some(choice.map_or(stop, |(c, _)| c))
            }
        };
        // The run has ended when nobody listens any more: nothing left to stop.
        let _ = self.presses.send(Press { signal, decided });
        decided
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
            choice: Arc::default(),
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
        CtrlC {
            presses: self.presses.clone(),
            choice: Arc::clone(&self.choice),
        }
    }

    pub fn set(&self, stop: Stop, signal: Signal) {
        *self.choice.lock().unwrap_or_else(|p| p.into_inner()) = Some((stop, Some(signal)));
    }

    pub fn get(&self) -> Option<Stop> {
        self.choice
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|(c, _)| c)
    }

    /// The signal that made the choice (`None`: no choice, or an old-style one).
    pub fn signal(&self) -> Option<Signal> {
        self.choice
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .and_then(|(_, s)| s)
    }

    /// How the run was stopped, for the message it ends with.
    pub fn stopped_message(&self) -> String {
        let by = match self.signal() {
            Some(Signal::CtrlC) | None => "by the operator (Ctrl-C)".to_string(),
            Some(s) => format!("by {}", s.name()),
        };
        match self.get() {
            Some(Stop::AfterStep) => format!("stopped {by} after the running step"),
            _ => format!("stopped {by}: the running step was killed on its hosts"),
        }
    }

    /// Whether a first Ctrl-C asks "What now?" rather than stopping at once.
    fn asks(&self, gates_interactive: bool) -> bool {
        match self.asker {
            Asker::Terminal => {
                gates_interactive && std::io::stderr().is_terminal() && !terminal_gone()
            }
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

/// SIGINTs, SIGTERMs and SIGHUPs received, counted by a plain signal handler:
/// a prompt blocks the thread that would otherwise run tokio's signal driver,
/// so it cannot rely on the async handler to notice a signal while it waits.
static SIGINTS: AtomicUsize = AtomicUsize::new(0);

/// Set by SIGHUP: the terminal is gone, so nothing is asked any more.
static HUNG_UP: AtomicBool = AtomicBool::new(false);

/// `/dev/null`, opened before any signal can come: the SIGHUP handler puts it
/// in place of the standard streams that were the terminal (a write to a
/// hung-up terminal fails, and Rust's `eprintln!` panics on a failed write).
static DEV_NULL: AtomicI32 = AtomicI32::new(-1);
/// Bit n: standard stream n was a terminal when counting started.
static ON_TERMINAL: AtomicUsize = AtomicUsize::new(0);

/// The last of SIGINT (2), SIGTERM (15), SIGHUP (1) received.
static LAST: AtomicI32 = AtomicI32::new(0);

/// What the last signal was, in words: why a prompt was given up.
pub fn last_signal() -> &'static str {
    match last_signal_kind() {
        Signal::Term => "SIGTERM",
        Signal::Hangup => "SIGHUP: the terminal hung up",
        Signal::CtrlC => "Ctrl-C",
    }
}

/// The last signal received (Ctrl-C if none).
pub fn last_signal_kind() -> Signal {
    match LAST.load(Ordering::SeqCst) {
        libc::SIGTERM => Signal::Term,
        libc::SIGHUP => Signal::Hangup,
        _ => Signal::CtrlC,
    }
}

/// Whether the terminal hung up (SIGHUP): no prompt may be shown any more.
pub fn terminal_gone() -> bool {
    HUNG_UP.load(Ordering::SeqCst)
}

/// Starts counting signals (idempotent); call before any prompt can be shown.
pub fn count_sigints() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let mut ttys = 0;
        for fd in 0..3 {
            // SAFETY: isatty only inspects the descriptor.
            if unsafe { libc::isatty(fd) } == 1 {
                ttys |= 1 << fd;
            }
        }
        ON_TERMINAL.store(ttys, Ordering::SeqCst);
        // SAFETY: a plain open of /dev/null; the descriptor is kept for the process's life.
        let null = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        DEV_NULL.store(null, Ordering::SeqCst);
        // SAFETY: the actions only do atomic operations and dup2, which are
        // async-signal-safe; the registry chains them with tokio's own handlers.
        unsafe {
            for sig in [libc::SIGINT, libc::SIGTERM] {
                let _ = signal_hook_registry::register(sig, move || {
                    LAST.store(sig, Ordering::SeqCst);
                    SIGINTS.fetch_add(1, Ordering::SeqCst);
                });
            }
            let _ = signal_hook_registry::register(libc::SIGHUP, || {
                LAST.store(libc::SIGHUP, Ordering::SeqCst);
                HUNG_UP.store(true, Ordering::SeqCst);
                let null = DEV_NULL.load(Ordering::SeqCst);
                let ttys = ON_TERMINAL.load(Ordering::SeqCst);
                if null >= 0 {
                    for fd in 0..3 {
                        if ttys & (1 << fd) != 0 {
                            libc::dup2(null, fd);
                        }
                    }
                }
                SIGINTS.fetch_add(1, Ordering::SeqCst);
            });
        }
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

/// Turns each SIGINT, SIGTERM and SIGHUP into a press on the run (tokio's
/// handlers replace the default ones, so no signal kills opsrun outright: the
/// run always ends with its record, its log, its locks released).
pub(crate) async fn watch_signals(ctrl_c: CtrlC) {
    use tokio::signal::unix::{signal, SignalKind};
    count_sigints();
    let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        return;
    };
    loop {
        let sig = tokio::select! {
            Some(()) = int.recv() => Signal::CtrlC,
            Some(()) = term.recv() => Signal::Term,
            Some(()) = hup.recv() => Signal::Hangup,
            else => return,
        };
        // Said at once: a step without a `timeout` may run a long while yet, and
        // whoever sent the signal must know it was heard (the run has no prompt
        // for it; after SIGHUP this goes nowhere).
        let said = match ctrl_c.signal(sig) {
            Some(Stop::AfterStep) => format!(
                "{}: no new step or undo starts; the running one finishes on its hosts (send it again to stop now)",
                sig.name()
            ),
            Some(_) => format!("{} again: stopping now", sig.name()),
            None => continue,
        };
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "\n{said}");
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
    eprintln!("  [s] stop now (the running step is killed on its hosts)");
    eprintln!("  [r] stop now and roll back (the killed step and the completed ones)");
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
    // before, it is not answered now either. A SIGTERM or SIGHUP decided
    // already (the step loop will not start another step): it is recorded.
    while let Ok(press) = rx.try_recv() {
        if let Some(choice) = press.decided {
            let _ = engine.rec.emit(&Event::Interrupt {
                time: events::now(),
                choice,
                signal: Some(press.signal),
            });
        }
    }
    tokio::pin!(fut);
    let interactive = engine.interrupt.asks(engine.gates.interactive);
    let result = loop {
        tokio::select! {
            r = &mut fut => break Some(r),
            Some(press) = rx.recv() => {
                let choice = match press.decided {
                    Some(choice) => choice,
                    // Any Ctrl-C after a choice: stop now.
                    None if engine.interrupt.get().is_some() || !interactive || terminal_gone() => {
                        Stop::Now
                    }
                    None => {
                        let choice = engine.ui.suspend(|| engine.interrupt.ask());
                        // A second signal while the question was open counts as "stop now".
                        match rx.try_recv() {
                            Ok(_) => Stop::Now,
                            Err(_) => choice,
                        }
                    }
                };
                if press.decided.is_none() {
                    engine.interrupt.set(choice, press.signal);
                }
                let _ = engine.rec.emit(&Event::Interrupt {
                    time: events::now(),
                    choice,
                    signal: Some(press.signal),
                });
                if choice != Stop::AfterStep {
                    // Killed on the hosts, then the step is let finish, so each
                    // killed command is recorded as stopped (not abandoned).
                    engine.kill_running(&engine.interrupt.stopped_message()).await;
                    let ended = tokio::time::timeout(
                        crate::execute::supervise::RECORD_AFTER_KILL,
                        &mut fut,
                    )
                    .await;
                    if ended.is_err() {
                        // A channel still open: something the command started
                        // holds its output and may still run. Its host keeps its
                        // lock, and its target stays in flight for the rollback.
                        let running = engine.running.lock().unwrap_or_else(|p| p.into_inner());
                        let mut keep = engine.keep_locks.lock().unwrap_or_else(|p| p.into_inner());
                        for (host, _) in running.iter() {
                            engine.ui.warn(&format!(
                                "{host}: the stopped command never ended on its connection: something it started may still run there; the host's lock is kept"
                            ));
                            keep.insert(host.clone());
                        }
                    }
                    // The stopped step is over: what follows (the rollback the
                    // operator chose, the lock release) runs its commands again.
                    engine.resume_commands().await;
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
