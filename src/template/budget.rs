//! The render budget: what one template may cost before it is an error.
//!
//! A runbook is input, and `opsrun check` and `--dry-run` render every
//! template of it; neither may be made to hang or to eat the machine. A
//! command or a config file a runbook renders is at most a few hundred
//! kilobytes and takes microseconds, so the budget is far above any real
//! template and far below harm:
//!
//! - **instructions** (minijinja's fuel): bounds loops and recursion in
//!   time — `range(100000)` nested in itself runs out after
//!   [`INSTRUCTIONS`] steps instead of running for hours;
//! - **recursion depth**: nested loops, conditions and filters;
//! - **output size** ([`Output`]): the rendered text stops at
//!   [`OUTPUT_BYTES`], whatever produced it;
//! - **one value** ([`replace`]): `replace` is the one builtin that can
//!   multiply a string's size by its own argument, so it checks the size
//!   before it builds the string.
//!
//! These four fail the render with [`Exceeded`], an ordinary render error
//! that the planner places on the template and names the step of, in
//! `check` and the dry-run alike.
//!
//! What they cannot bound is one instruction that is expensive in itself:
//! `'x' * 100000000` is a single instruction that builds 100 MB (minijinja's
//! own cap), and a loop of those stays within the fuel while it runs for
//! minutes. No hook of minijinja runs inside an instruction, so the
//! [`Watch`] guards those from outside: a thread that looks at every render
//! still running after a tick, and when one has run longer than
//! [`SECONDS`] or the process has grown by more than [`GROWTH_BYTES`] since
//! it started, prints the positioned error and ends the process (exit 2). It
//! cannot return an error instead: the render cannot be stopped from another
//! thread, and leaving it running would spend the memory the budget is for.
//! Before a run starts, every template is rendered (the plan is the dry-run),
//! so that only ever stops a run before it did anything. A template that
//! reads a value captured during the run is rendered again then; if that
//! render blows the budget, the run ends as if killed (journal kept,
//! `opsrun rollback` and `--resume` work, README "When a run is stopped").

use crate::diagnostic::{Diagnostic, SourceFile};
use minijinja::value::Value;
use minijinja::{Error, ErrorKind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Template instructions one render may execute (minijinja's fuel; most
/// instructions cost 1). The longest real template, the load balancer's
/// server list over a 500-host batch, needs about 10 000.
pub const INSTRUCTIONS: u64 = 200_000;

/// How deep loops, conditions and filter calls may nest (minijinja's
/// recursion counter; it caps at 500 without its `stacker` feature).
pub const RECURSION: usize = 100;

/// The largest text one template may render to: 4 MiB, eight times a large
/// config file and thirty times what one command line can carry.
pub const OUTPUT_BYTES: usize = 4 << 20;

/// The largest string `replace` may build.
pub const VALUE_BYTES: usize = OUTPUT_BYTES;

/// How long one render may run, and how much the process may grow while it does.
pub const SECONDS: u64 = 2;
pub const GROWTH_BYTES: u64 = 256 << 20;

/// Which part of the budget a template exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exceeded {
    Instructions,
    Recursion,
    Output,
    Value,
}

impl std::fmt::Display for Exceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exceeded::Instructions => write!(
                f,
                "the template exceeded its budget of {INSTRUCTIONS} instructions (a loop or a recursion that long is not a command)"
            ),
            Exceeded::Recursion => write!(
                f,
                "the template exceeded its budget of {RECURSION} levels of nesting"
            ),
            Exceeded::Output => write!(
                f,
                "the template renders to more than its budget of {} MiB",
                OUTPUT_BYTES >> 20
            ),
            Exceeded::Value => write!(
                f,
                "`replace` would build a string larger than the budget of {} MiB",
                VALUE_BYTES >> 20
            ),
        }
    }
}

impl Exceeded {
    /// The budget a failed render ran into, if that is why it failed.
    pub fn of(e: &Error, output: &Output) -> Option<Exceeded> {
        if output.full {
            return Some(Exceeded::Output);
        }
        match e.kind() {
            ErrorKind::OutOfFuel => Some(Exceeded::Instructions),
            ErrorKind::InvalidOperation if e.detail() == Some(RECURSION_DETAIL) => {
                Some(Exceeded::Recursion)
            }
            ErrorKind::InvalidOperation if e.detail() == Some(VALUE_DETAIL) => {
                Some(Exceeded::Value)
            }
            _ => None,
        }
    }
}

/// minijinja's own wording for its recursion limit (vm/context.rs).
const RECURSION_DETAIL: &str = "recursion limit exceeded";
const VALUE_DETAIL: &str = "replace: result over the render budget";

/// The rendered text, refusing to grow past [`OUTPUT_BYTES`].
#[derive(Default)]
pub struct Output {
    pub text: Vec<u8>,
    full: bool,
}

impl std::io::Write for Output {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.text.len() + buf.len() > OUTPUT_BYTES {
            self.full = true;
            return Err(std::io::Error::other(
                "template output over the render budget",
            ));
        }
        self.text.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The `replace` filter, with the size of its result checked before it is built.
pub fn replace(value: Value, from: String, to: String) -> Result<Value, Error> {
    let s = value.to_string();
    let count = if from.is_empty() {
        // `str::replace("", x)` inserts `x` between every character and at both ends.
        s.chars().count() + 1
    } else {
        s.matches(from.as_str()).count()
    };
    let size =
        (s.len() - count.min(s.len()) * from.len()).saturating_add(count.saturating_mul(to.len()));
    if size > VALUE_BYTES {
        return Err(Error::new(ErrorKind::InvalidOperation, VALUE_DETAIL));
    }
    Ok(Value::from(s.replace(from.as_str(), &to)))
}

/// What the watch says when a render blows the budget: where the template is.
#[derive(Clone)]
pub struct Site {
    /// `in step `X``, where the planner knows it.
    pub owner: Option<String>,
    pub source: Option<Arc<SourceFile>>,
    pub span: crate::diagnostic::Span,
    /// The template's text, for a message without a file.
    pub text: String,
}

struct Running {
    site: Arc<Site>,
    started: Instant,
    /// Resident bytes of the process when the watch first saw the render:
    /// reading them costs a file read, too much for each of 100 000 renders
    /// that are over in microseconds.
    rss: Option<u64>,
}

/// The renders in progress, looked at by one thread every [`TICK`].
#[derive(Default)]
pub struct Watch {
    running: Mutex<Vec<Option<Running>>>,
    started: AtomicBool,
}

const TICK: Duration = Duration::from_millis(20);

/// A render in progress; dropping it says the render is over.
pub struct Ticket {
    slot: usize,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut running = watch().lock();
        running[self.slot] = None;
    }
}

fn watch() -> &'static Watch {
    static WATCH: OnceLock<Watch> = OnceLock::new();
    let w = WATCH.get_or_init(Watch::default);
    if !w.started.swap(true, Ordering::Relaxed) {
        // If the thread cannot start, renders go unwatched: fuel and the output cap still hold.
        let _ = std::thread::Builder::new()
            .name("render-watch".into())
            .spawn(|| watch().patrol());
    }
    w
}

impl Watch {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Option<Running>>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn patrol(&self) {
        loop {
            std::thread::sleep(TICK);
            // Nearly every render is over long before a tick: only those that
            // are not cost a look at the process size.
            let over = {
                let mut running = self.lock();
                if running.iter().all(Option::is_none) {
                    continue;
                }
                let now = resident_bytes();
                running.iter_mut().flatten().find_map(|r| {
                    let rss = *r.rss.get_or_insert(now);
                    if r.started.elapsed() > Duration::from_secs(SECONDS) {
                        Some((r.site.clone(), format!("ran for more than {SECONDS} s")))
                    } else if now.saturating_sub(rss) > GROWTH_BYTES {
                        Some((
                            r.site.clone(),
                            format!("needed more than {} MiB of memory", GROWTH_BYTES >> 20),
                        ))
                    } else {
                        None
                    }
                })
            };
            if let Some((site, what)) = over {
                stop(&site, &what);
            }
        }
    }
}

/// Registers a render with the watch for as long as the ticket lives.
pub fn watched(site: &Arc<Site>) -> Ticket {
    let w = watch();
    let running = Running {
        site: site.clone(),
        started: Instant::now(),
        rss: None,
    };
    let mut all = w.lock();
    let slot = match all.iter().position(Option::is_none) {
        Some(i) => {
            all[i] = Some(running);
            i
        }
        None => {
            all.push(Some(running));
            all.len() - 1
        }
    };
    Ticket { slot }
}

/// The end of a render that cannot be stopped any other way.
fn stop(site: &Site, what: &str) -> ! {
    let message = format!(
        "{}this template {what}, over the render budget; opsrun stopped",
        site.owner
            .as_ref()
            .map(|o| format!("{o}: "))
            .unwrap_or_default()
    );
    let help = Some(
        "a template builds a command or a file: a loop, `*` or filter that builds this much is a mistake or an attack".to_string(),
    );
    match &site.source {
        Some(source) => eprintln!(
            "{}",
            Diagnostic::error(source.clone(), site.span, message, help)
        ),
        None => {
            let first = site.text.lines().next().unwrap_or_default();
            let first: String = first.chars().take(80).collect();
            eprintln!(
                "error: {message}\n  template: {}",
                crate::sanitize::escape_controls(first.as_bytes())
            )
        }
    }
    // Not `exit`: its atexit handlers and destructors would run beside the render
    // still going on another thread.
    // SAFETY: _exit ends the process at once; nothing of it is used after.
    unsafe { libc::_exit(2) }
}

/// Resident set size of this process, from `/proc/self/statm` (0 where there is none).
fn resident_bytes() -> u64 {
    // SAFETY: sysconf only reads a constant of the system.
    let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * page)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn output_stops_at_the_budget() {
        let mut out = Output::default();
        assert!(out.write_all(&vec![b'x'; OUTPUT_BYTES]).is_ok());
        assert!(out.write_all(b"y").is_err());
        assert_eq!(out.text.len(), OUTPUT_BYTES);
        assert!(out.full);
    }

    #[test]
    fn replace_checks_the_size_before_building() {
        let ten = "x".repeat(10);
        assert_eq!(
            replace(Value::from("a-b"), "-".into(), "--".into())
                .unwrap()
                .to_string(),
            "a--b"
        );
        assert_eq!(
            replace(Value::from("ab"), "".into(), "-".into())
                .unwrap()
                .to_string(),
            "-a-b-"
        );
        let big = "x".repeat(1 << 20);
        let e = replace(Value::from(big), "x".into(), ten).unwrap_err();
        assert_eq!(e.detail(), Some(VALUE_DETAIL));
    }
}
