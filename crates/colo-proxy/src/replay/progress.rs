//! Progress lines on stderr for large captures (at most one per second).

use std::io::Write;
use std::time::Instant;

/// Prints `replay: <stage>: <done> of <total> MB (<pct>%), <rate> MB/s` on stderr.
#[derive(Debug)]
pub struct Progress {
    enabled: bool,
    stage: String,
    total: u64,
    base: u64,
    started: Instant,
    last: Instant,
    ticks: u32,
}

impl Progress {
    /// A progress reporter; silent unless `enabled`.
    #[must_use]
    pub fn new(enabled: bool) -> Self {
        let now = Instant::now();
        Self {
            enabled,
            stage: String::new(),
            total: 0,
            base: 0,
            started: now,
            last: now,
            ticks: 0,
        }
    }

    /// Start a stage covering `total` bytes.
    pub fn stage(&mut self, name: &str, total: u64) {
        self.stage = name.to_string();
        self.total = total;
        self.base = 0;
        self.started = Instant::now();
        self.last = self.started;
    }

    /// Bytes completed before the current source (when a stage reads several files).
    pub fn set_base(&mut self, base: u64) {
        self.base = base;
    }

    /// Note progress: `done` bytes of the current source.
    pub fn tick(&mut self, done: u64) {
        if !self.enabled {
            return;
        }
        self.ticks += 1;
        if !self.ticks.is_multiple_of(4096) {
            return;
        }
        let now = Instant::now();
        if now.duration_since(self.last).as_millis() < 1000 {
            return;
        }
        self.last = now;
        let done = self.base + done;
        let secs = now.duration_since(self.started).as_secs_f64().max(1e-9);
        let pct = if self.total > 0 {
            done as f64 * 100.0 / self.total as f64
        } else {
            0.0
        };
        let _ = writeln!(
            std::io::stderr(),
            "replay: {}: {:.0} of {:.0} MB ({pct:.0}%), {:.0} MB/s",
            self.stage,
            done as f64 / 1e6,
            self.total as f64 / 1e6,
            done as f64 / 1e6 / secs
        );
    }
}
