//! Progress for long work: an indicatif bar with bytes and bytes/s when
//! stderr is a terminal, a log line every 10 s when it is not, nothing with
//! `--no-progress`. Chosen once at start-up.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const OFF: u8 = 0;
const BAR: u8 = 1;
const LINES: u8 = 2;

static MODE: AtomicU8 = AtomicU8::new(LINES);

pub fn init(no_progress: bool, quiet: bool) {
    let mode = if no_progress || quiet {
        OFF
    } else if std::io::stderr().is_terminal() {
        BAR
    } else {
        LINES
    };
    MODE.store(mode, Ordering::Relaxed);
}

/// Progress of one task measured in bytes.
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    label: String,
    lines: Option<Mutex<(Instant, u64)>>,
    total: std::sync::atomic::AtomicU64,
}

const LINE_EVERY: Duration = Duration::from_secs(10);

impl Progress {
    pub fn bytes(label: impl Into<String>) -> Progress {
        let label = label.into();
        let mode = MODE.load(Ordering::Relaxed);
        let bar = (mode == BAR).then(|| {
            let b = indicatif::ProgressBar::new_spinner();
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{spinner} {prefix} {msg} {bytes} ({binary_bytes_per_sec}) {elapsed}",
            ) {
                b.set_style(style);
            }
            b.set_prefix(label.clone());
            b.enable_steady_tick(Duration::from_millis(120));
            b
        });
        Progress {
            bar,
            lines: (mode == LINES).then(|| Mutex::new((Instant::now(), 0))),
            label,
            total: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub fn set_message(&self, msg: &str) {
        if let Some(b) = &self.bar {
            b.set_message(msg.to_string());
        }
    }

    pub fn inc(&self, n: u64) {
        let total = self.total.fetch_add(n, Ordering::Relaxed) + n;
        if let Some(b) = &self.bar {
            b.inc(n);
        }
        if let Some(l) = &self.lines {
            let mut g = l.lock().unwrap_or_else(|p| p.into_inner());
            if g.0.elapsed() >= LINE_EVERY {
                let rate = (total - g.1) as f64 / g.0.elapsed().as_secs_f64();
                tracing::info!(
                    "{}: {} so far ({}/s)",
                    self.label,
                    crate::units::human_bytes(total),
                    crate::units::human_bytes(rate as u64)
                );
                *g = (Instant::now(), total);
            }
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

/// A wait the operator should see while it lasts (a lock held by another
/// session): the spinner's line on a terminal, otherwise a warning every
/// `WAIT_LINE_EVERY` — also with `--no-progress`, since a silent wait
/// looks like a hang.
pub struct Waiting {
    bar: Option<indicatif::ProgressBar>,
    last_line: Mutex<Option<Instant>>,
}

const WAIT_LINE_EVERY: Duration = Duration::from_secs(5);

impl Waiting {
    pub fn new() -> Waiting {
        let bar = (MODE.load(Ordering::Relaxed) == BAR).then(|| {
            let b = indicatif::ProgressBar::new_spinner();
            if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {msg} {elapsed}")
            {
                b.set_style(style);
            }
            b.enable_steady_tick(Duration::from_millis(120));
            b
        });
        Waiting {
            bar,
            last_line: Mutex::new(None),
        }
    }

    /// Shows what is being waited for now.
    pub fn say(&self, msg: &str) {
        if let Some(b) = &self.bar {
            b.set_message(msg.to_string());
            return;
        }
        let mut last = self.last_line.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| t.elapsed() >= WAIT_LINE_EVERY) {
            tracing::warn!("{msg}");
            *last = Some(Instant::now());
        }
    }
}

impl Default for Waiting {
    fn default() -> Self {
        Waiting::new()
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
