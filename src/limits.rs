//! Time limits (`[limits]`): a watchdog thread beside the run that knows which stage is running
//! and since when. Past a limit it logs a warning and records it for the manifest
//! (`on_exceeded = "warn"`), or stops the process at once with exit 6 (`"fail"`): a thread
//! outside the run's own tasks can stop a stage that is stalled on the network or busy in a
//! long computation alike. The manifest is written last, so a stopped run publishes nothing;
//! its lock is released first, and a killed attempt's files are ignored and later cleaned
//! (see [`crate::publish`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::{LimitParams, OnExceeded};

/// The stages in the order a run goes through them (the manifest's `timings`).
pub const STAGES: [&str; 6] = [
    "inputs",
    "features",
    "models",
    "clustering",
    "segments",
    "write",
];

/// The stage after `name` in [`STAGES`] (None after the last).
pub fn next_stage(name: &str) -> Option<&'static str> {
    STAGES.iter().skip_while(|&&s| s != name).nth(1).copied()
}

/// Exit code of a run stopped by a limit set to `fail` (CONTRACT).
pub const EXIT_TIME_LIMIT: i32 = 6;

/// A limit that passed, for the manifest.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Exceeded {
    /// The stage, or `run`.
    pub stage: &'static str,
    /// Its limit.
    pub limit_seconds: f64,
    /// How long it had run when the limit was found passed (the stage's full time once it
    /// finished).
    pub seconds: f64,
}

struct State {
    run_started: Instant,
    stage: Option<&'static str>,
    stage_started: Instant,
    exceeded: Vec<Exceeded>,
}

/// Watches the run's stages against `[limits]`; stops watching when dropped.
pub struct Watchdog {
    limits: Vec<(&'static str, f64)>,
    on_exceeded: OnExceeded,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    /// Starts watching; the first stage starts now. `before_exit` runs before the process exits
    /// on a `fail` limit (it releases the run lock).
    pub fn start(limits: &LimitParams, before_exit: impl FnOnce() + Send + 'static) -> Watchdog {
        let now = Instant::now();
        let state = Arc::new(Mutex::new(State {
            run_started: now,
            stage: Some(STAGES[0]),
            stage_started: now,
            exceeded: Vec::new(),
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let set = limits.set();
        let thread = (!set.is_empty()).then(|| {
            let (state, stop, set) = (Arc::clone(&state), Arc::clone(&stop), set.clone());
            let on_exceeded = limits.on_exceeded;
            std::thread::spawn(move || watch(&state, &stop, &set, on_exceeded, before_exit))
        });
        Watchdog {
            limits: set,
            on_exceeded: limits.on_exceeded,
            state,
            stop,
            thread,
        }
    }

    /// Stage `name` finished after `seconds`; the next stage starts now. A finished stage that
    /// went past its limit between two looks of the watchdog is recorded here.
    pub fn done(&self, name: &'static str, seconds: f64) {
        let Ok(mut s) = self.state.lock() else { return };
        let next = next_stage(name);
        s.stage = next;
        s.stage_started = Instant::now();
        if self.on_exceeded == OnExceeded::Warn {
            let mut check = vec![(name, seconds)];
            if next.is_none() {
                check.push(("run", s.run_started.elapsed().as_secs_f64()));
            }
            for (name, seconds) in check {
                let Some(&(_, limit)) = self.limits.iter().find(|(k, _)| *k == name) else {
                    continue;
                };
                if seconds > limit {
                    record(&mut s.exceeded, name, limit, seconds);
                }
            }
        }
    }

    /// The limits that passed so far (warn mode).
    pub fn exceeded(&self) -> Vec<Exceeded> {
        self.state
            .lock()
            .map(|s| s.exceeded.clone())
            .unwrap_or_default()
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().ok();
        }
    }
}

/// Records that `stage` passed its `limit` after `seconds`: logged the first time, and its
/// time updated when the finished stage reports its full time.
fn record(exceeded: &mut Vec<Exceeded>, stage: &'static str, limit: f64, seconds: f64) {
    match exceeded.iter_mut().find(|e| e.stage == stage) {
        Some(e) => e.seconds = seconds,
        None => {
            warn(stage, limit, seconds);
            exceeded.push(Exceeded {
                stage,
                limit_seconds: limit,
                seconds,
            });
        }
    }
}

fn warn(stage: &str, limit: f64, seconds: f64) {
    tracing::warn!(
        stage,
        limit_seconds = limit,
        seconds,
        "time limit exceeded (limits.on_exceeded = \"warn\": the run goes on)"
    );
}

/// The watchdog's loop: looks ten times a second until stopped.
fn watch(
    state: &Mutex<State>,
    stop: &AtomicBool,
    limits: &[(&'static str, f64)],
    on_exceeded: OnExceeded,
    before_exit: impl FnOnce(),
) {
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
        let Ok(mut s) = state.lock() else { return };
        let run = s.run_started.elapsed().as_secs_f64();
        let stage = s.stage_started.elapsed().as_secs_f64();
        let current = s.stage;
        let passed = limits.iter().find_map(|&(name, limit)| {
            let seconds = if name == "run" {
                run
            } else if Some(name) == current {
                stage
            } else {
                return None;
            };
            (seconds > limit && !s.exceeded.iter().any(|e| e.stage == name))
                .then_some((name, limit, seconds))
        });
        let Some((name, limit, seconds)) = passed else {
            continue;
        };
        if on_exceeded == OnExceeded::Warn {
            record(&mut s.exceeded, name, limit, seconds);
            continue;
        }
        let what = if name == "run" {
            "the run".to_string()
        } else {
            format!("stage `{name}`")
        };
        let message = format!(
            "time limit exceeded: {what} has run {seconds:.1} s, its limit is {limit} s \
             (limits.{name}, on_exceeded = \"fail\"); stopped, nothing published"
        );
        tracing::error!(stage = name, limit_seconds = limit, seconds, "{message}");
        drop(s);
        before_exit();
        eprintln!("error: {message}");
        std::process::exit(EXIT_TIME_LIMIT);
    }
}
