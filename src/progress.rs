//! Progress for people at a terminal: one spinner line naming the date, the running stage and
//! how long it has run. Drawn only when stderr is a terminal and the logs are not JSON
//! (`SEGMENTER_LOG_FORMAT=json`), so it never lands in log files; `SEGMENTER_PROGRESS=0`
//! turns it off. Log lines are written above it ([`LogWriter`]).

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

static BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Whether progress is drawn.
pub fn enabled() -> bool {
    std::io::stderr().is_terminal()
        && !std::env::var("SEGMENTER_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"))
        && !std::env::var("SEGMENTER_PROGRESS").is_ok_and(|v| v == "0")
}

/// Shows that `stage` of the run for `date` is running (from now).
pub fn stage(date: &str, stage: &str) {
    if !enabled() {
        return;
    }
    let Ok(mut bar) = BAR.lock() else { return };
    let new = bar.is_none();
    let bar = bar.get_or_insert_with(|| {
        let b = ProgressBar::new_spinner();
        if let Ok(style) = ProgressStyle::with_template("{spinner} {prefix} {msg} ({elapsed})") {
            b.set_style(style);
        }
        b
    });
    bar.set_prefix(date.to_string());
    bar.set_message(stage.to_string());
    bar.reset_elapsed();
    if new {
        bar.enable_steady_tick(Duration::from_millis(120));
    }
}

/// Removes the progress line (the run ended).
pub fn finish() {
    if let Ok(mut bar) = BAR.lock() {
        if let Some(b) = bar.take() {
            b.finish_and_clear();
        }
    }
}

/// stderr for the log lines, written above the progress line while one is shown.
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let bar = BAR.lock().ok().and_then(|b| b.clone());
        match bar {
            Some(b) => b.suspend(|| std::io::stderr().write(buf)),
            None => std::io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
