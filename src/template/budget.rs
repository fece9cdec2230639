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
//! own cap), compiling folds constant expressions (eight of those joined by
//! `~` are built before any render), and a loop of expensive instructions
//! stays within the fuel while it runs for minutes. No hook of minijinja runs
//! inside an instruction, so two guards work from outside it:
//!
//! - **memory**: the global allocator counts, per thread, the bytes allocated
//!   and not freed; while a thread renders or compiles a template, an
//!   allocation that would take it more than [`GROWTH_BYTES`] past where the
//!   render began prints the positioned error and ends the process (exit 2)
//!   before the memory is taken;
//! - **time**: a thread looks at every render still running each [`TICK`]
//!   and ends the process the same way when one has run longer than
//!   [`SECONDS`].
//!
//! Neither can return an error instead: the render cannot be unwound from
//! inside the allocator or from another thread. Before a run starts, every
//! template is rendered (the plan is the dry-run), so that only ever stops a
//! run before it did anything. A template that reads a value captured during
//! the run is rendered again then; if that render blows the budget, the run
//! ends as if killed (journal kept, `opsrun rollback` and `--resume` work,
//! README "When a run is stopped").

use crate::diagnostic::{Diagnostic, SourceFile};
use minijinja::value::Value;
use minijinja::{Error, ErrorKind};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
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
    /// A compiled template holding more than [`OUTPUT_BYTES`] (a folded constant).
    Compiled(usize),
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
            Exceeded::Compiled(bytes) => write!(
                f,
                "the template holds {} MiB once compiled (a constant expression is built when compiling), over its budget of {} MiB",
                bytes >> 20,
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
pub struct Site {
    /// `in step `X``, where the planner knows it.
    pub owner: Option<String>,
    pub source: Option<Arc<SourceFile>>,
    pub span: crate::diagnostic::Span,
    /// The template's text, for a message without a file.
    pub text: String,
    /// The whole message for a render that needs too much memory, written
    /// before any render: it is printed from inside the allocator, where
    /// nothing may be allocated.
    over_memory: Box<[u8]>,
}

impl Site {
    pub fn new(
        owner: Option<String>,
        source: Option<Arc<SourceFile>>,
        span: crate::diagnostic::Span,
        text: String,
    ) -> Site {
        let mut site = Site {
            owner,
            source,
            span,
            text,
            over_memory: Box::default(),
        };
        let what = format!("needed more than {} MiB of memory", GROWTH_BYTES >> 20);
        site.over_memory = format!("{}\n", site.message(&what)).into_bytes().into();
        site
    }

    fn message(&self, what: &str) -> String {
        let message = format!(
            "{}this template {what}, over the render budget; opsrun stopped",
            self.owner
                .as_ref()
                .map(|o| format!("{o}: "))
                .unwrap_or_default()
        );
        let help = "a template builds a command or a file: a loop, `*` or filter that builds this much is a mistake or an attack";
        match &self.source {
            Some(source) => {
                Diagnostic::error(source.clone(), self.span, message, Some(help.into())).to_string()
            }
            None => {
                let first = self.text.lines().next().unwrap_or_default();
                let first: String = first.chars().take(80).collect();
                format!(
                    "error: {message}\n  template: {}\n  = help: {help}",
                    crate::sanitize::escape_controls(first.as_bytes())
                )
            }
        }
    }
}

/// The render in progress on one thread, if any: when it began, and where its
/// template is. One lane per thread, so that starting a render takes no lock
/// another planning thread holds (planning renders 100 000 templates on every
/// core): only the watch, once a tick, locks each lane.
#[derive(Default)]
struct Lane {
    now: Mutex<Option<(Instant, SitePtr)>>,
}

/// A site the watch may read while its render is registered: the ticket that
/// registered it borrows the site and clears the lane before the borrow ends.
#[derive(Clone, Copy)]
struct SitePtr(*const Site);

// SAFETY: only dereferenced under the lane's lock while the render that owns
// the borrow is registered (see `Ticket::drop`).
unsafe impl Send for SitePtr {}

impl Lane {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(Instant, SitePtr)>> {
        self.now.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Every thread's lane, looked at by one thread every [`TICK`].
#[derive(Default)]
pub struct Watch {
    lanes: Mutex<Vec<std::sync::Weak<Lane>>>,
    started: AtomicBool,
}

const TICK: Duration = Duration::from_millis(20);

thread_local! {
    static LANE: Arc<Lane> = {
        let lane = Arc::new(Lane::default());
        watch().lock().push(Arc::downgrade(&lane));
        lane
    };
}

/// A render in progress; dropping it says the render is over.
pub struct Ticket<'a> {
    _site: std::marker::PhantomData<&'a Site>,
    /// Whether this render registered its lane (an enclosing render on the
    /// same thread already did: its clock keeps running).
    outermost: bool,
    /// What the meter watched before this render began (an enclosing render).
    metered: (*const Site, isize),
    /// This thread's count of live bytes when the render began.
    start: isize,
}

impl Ticket<'_> {
    /// Bytes this thread allocated and has not freed since the render began:
    /// after a compile, what the compiled template holds (folded constants).
    pub fn kept(&self) -> usize {
        usize::try_from(NET.with(Cell::get).saturating_sub(self.start)).unwrap_or(0)
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        METERED.with(|m| m.set(self.metered));
        if self.outermost {
            LANE.with(|l| *l.lock() = None);
        }
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
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<std::sync::Weak<Lane>>> {
        self.lanes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn patrol(&self) {
        loop {
            std::thread::sleep(TICK);
            let lanes: Vec<Arc<Lane>> = {
                let mut all = self.lock();
                // Lanes of threads that ended (a finished plan's workers) go.
                all.retain(|l| l.strong_count() > 0);
                all.iter().filter_map(std::sync::Weak::upgrade).collect()
            };
            for lane in lanes {
                let now = lane.lock();
                if let Some((started, site)) = *now {
                    if started.elapsed() > Duration::from_secs(SECONDS) {
                        // SAFETY: registered, so the render's borrow of the site holds.
                        let site = unsafe { &*site.0 };
                        eprintln!(
                            "{}",
                            site.message(&format!("ran for more than {SECONDS} s"))
                        );
                        // Not `exit`: its atexit handlers and destructors would run beside the
                        // render still going on another thread.
                        // SAFETY: _exit ends the process at once; nothing of it is used after.
                        unsafe { libc::_exit(2) }
                    }
                }
            }
        }
    }
}

/// Registers a render with the watch (time) and the meter (memory) for as
/// long as the ticket lives. Renders nest (a failed render renders again to
/// name its undefined variables): each has its own memory budget from where it
/// began, and the outermost one's clock runs for all.
pub fn watched(site: &Site) -> Ticket<'_> {
    watch();
    let outermost = LANE.with(|l| {
        let mut now = l.lock();
        if now.is_none() {
            *now = Some((Instant::now(), SitePtr(site)));
            true
        } else {
            false
        }
    });
    let start = NET.with(Cell::get);
    let metered = METERED.with(|m| {
        let before = m.get();
        m.set((
            std::ptr::from_ref(site),
            start.saturating_add(GROWTH_BYTES as isize),
        ));
        before
    });
    Ticket {
        _site: std::marker::PhantomData,
        outermost,
        metered,
        start,
    }
}

// The memory meter. A render runs on one thread, and what it builds is
// allocated there: each thread counts the bytes it has allocated and not freed
// (`NET`), and while it renders (`METERED`: the template, and the count at
// which it is over budget) every allocation is checked against the limit. The
// check is in the allocator because one instruction (`'x' * 100000000`, a
// `replace`, a fold while compiling) can allocate hundreds of MB before any
// other code runs; outside renders an allocation costs two thread-local reads.
thread_local! {
    static NET: Cell<isize> = const { Cell::new(0) };
    static METERED: Cell<(*const Site, isize)> = const { Cell::new((std::ptr::null(), 0)) };
}

struct Metering;

#[global_allocator]
static ALLOCATOR: Metering = Metering;

fn note(delta: isize) {
    // `try_with`: a thread being torn down still allocates; it is not rendering.
    let _ = NET.try_with(|net| {
        let now = net.get().wrapping_add(delta);
        net.set(now);
        if delta > 0 {
            let _ = METERED.try_with(|m| {
                let (site, limit) = m.get();
                if !site.is_null() && now > limit {
                    // SAFETY: the ticket that set `site` holds it alive until it resets it.
                    over_memory(unsafe { &*site });
                }
            });
        }
    });
}

/// Says which template needed too much memory and ends the process, from
/// inside the allocator: only a write of the prepared message and `_exit`.
fn over_memory(site: &Site) -> ! {
    let msg = &site.over_memory;
    // SAFETY: writes bytes the site owns to stderr; _exit ends the process at once.
    unsafe {
        libc::write(2, msg.as_ptr().cast(), msg.len());
        libc::_exit(2)
    }
}

// SAFETY: every call is passed on to the system allocator unchanged; `note`
// only reads and writes thread-locals that need no allocation.
unsafe impl GlobalAlloc for Metering {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size() as isize);
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size() as isize);
        System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note(-(layout.size() as isize));
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size as isize - layout.size() as isize);
        System.realloc(ptr, layout, new_size)
    }
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
