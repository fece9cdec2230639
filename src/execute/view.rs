//! The terminal view of a run: a live line per host with a spinner, or plain
//! lines when stderr is not a terminal (CI, `| tee`). Everything goes to stderr;
//! stdout carries only the final log path.

use crate::plural::count;
use crate::record::events::Status;
use crate::sanitize::{escape_controls, escape_line};
use console::style;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

pub struct Ui {
    live: Option<MultiProgress>,
    bars: Mutex<HashMap<String, ProgressBar>>,
    verbose: bool,
}

fn mark(status: Status) -> String {
    match status {
        Status::Ok => style("✓").green().to_string(),
        Status::Failed => style("✗").red().bold().to_string(),
        Status::TimedOut => style("⏱").red().bold().to_string(),
        Status::Interrupted => style("!").red().bold().to_string(),
        Status::Skipped => style("-").dim().to_string(),
    }
}

fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

impl Ui {
    pub fn new(verbose: bool) -> Ui {
        let live = std::io::stderr()
            .is_terminal()
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10)));
        Ui {
            live,
            bars: Mutex::new(HashMap::new()),
            verbose,
        }
    }

    pub fn line(&self, text: &str) {
        match &self.live {
            Some(m) => {
                let _ = m.println(text);
            }
            None => eprintln!("{text}"),
        }
    }

    /// Runs `f` with the live view hidden, so a prompt is not drawn over.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        match &self.live {
            Some(m) => m.suspend(f),
            None => f(),
        }
    }

    /// A step's header; its name is the runbook's text, shown escaped.
    pub fn step(&self, label: &str, name: &str, hosts: usize) {
        let n = count(hosts, "host", "hosts");
        self.line(&format!(
            "{} {}  {}",
            style(label).cyan().bold(),
            style(escape_line(name)).bold(),
            style(n).dim()
        ));
    }

    pub fn host_started(&self, host: &str) {
        let Some(m) = &self.live else { return };
        let bar = m.add(ProgressBar::new_spinner());
        // `wide_msg` is the host's latest output line, cut to what is left of the
        // terminal's width, by display width (a CJK character takes two columns).
        // Unstyled and last, so indicatif does not pad the line to the full width.
        bar.set_style(
            ProgressStyle::with_template("  {spinner} {prefix} {elapsed:.dim}  {wide_msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_prefix(host.to_string());
        bar.enable_steady_tick(Duration::from_millis(100));
        if let Ok(mut bars) = self.bars.lock() {
            bars.insert(host.to_string(), bar);
        }
    }

    pub fn host_finished(&self, host: &str, status: Status, took: Duration, detail: &str) {
        let bar = self.bars.lock().ok().and_then(|mut b| b.remove(host));
        let detail = if detail.is_empty() {
            String::new()
        } else {
            format!("  {}", escape_controls(detail.as_bytes()))
        };
        let text = format!(
            "  {} {host}  {}{detail}",
            mark(status),
            style(secs(took)).dim()
        );
        match (bar, &self.live) {
            (Some(bar), Some(m)) => {
                bar.finish_and_clear();
                m.remove(&bar);
                let _ = m.println(text);
            }
            _ => eprintln!("{text}"),
        }
    }

    /// Removes the spinners still drawn: those of hosts whose command was stopped
    /// (Ctrl-C, "stop now") and never finished. They would otherwise tick on under
    /// the lines that follow, down to the verdict.
    pub fn clear_spinners(&self) {
        let bars: Vec<ProgressBar> = match self.bars.lock() {
            Ok(mut b) => b.drain().map(|(_, bar)| bar).collect(),
            Err(_) => return,
        };
        for bar in bars {
            bar.finish_and_clear();
            if let Some(m) = &self.live {
                m.remove(&bar);
            }
        }
    }

    /// Remote output, shown with `-v`, else its last line next to the host's spinner;
    /// control characters escaped so a host cannot drive the terminal.
    pub fn output(&self, host: &str, chunk: &[u8]) {
        if !self.verbose {
            self.last_line(host, chunk);
            return;
        }
        let text = escape_controls(chunk);
        for line in text.lines() {
            self.line(&format!("    {} {line}", style(format!("{host} |")).dim()));
        }
    }

    /// The last non-blank line of `chunk` beside the host's spinner (live view only).
    /// A carriage return starts the line again, as on the host's own terminal, so a
    /// progress counter shows its latest value.
    fn last_line(&self, host: &str, chunk: &[u8]) {
        if self.live.is_none() {
            return;
        }
        let Some(line) = chunk
            .split(|b| matches!(b, b'\n' | b'\r'))
            .rev()
            .find(|l| !l.trim_ascii().is_empty())
        else {
            return;
        };
        // Bounded: the terminal shows a line's first columns only, however long it is.
        let line = line.trim_ascii();
        let line = &line[..line.len().min(4096)];
        let text = escape_controls(line).replace('\t', " ");
        if let Some(bar) = self.bars.lock().ok().and_then(|b| b.get(host).cloned()) {
            bar.set_message(text);
        }
    }

    /// Warnings and errors quote step names and host output: shown escaped.
    pub fn warn(&self, text: &str) {
        let text = escape_controls(text.as_bytes());
        self.line(&format!("{} {text}", style("warning:").yellow().bold()));
    }

    pub fn error(&self, text: &str) {
        let text = escape_controls(text.as_bytes());
        self.line(&format!("{} {text}", style("error:").red().bold()));
    }
}
