//! Live output for people, on stderr: a progress line, and one line per divergence,
//! checkpoint request, checkpoint completion and limit.
//!
//! On a terminal the progress line is redrawn in place; otherwise each update is its
//! own line, so logs and CI output stay readable.

use std::io::{IsTerminal as _, Write as _};

use colo_core::Instant;
use colo_core::engine::{CheckpointRequest, Divergence, EngineStats, Limit};
use colo_core::flow::FlowKey;

use super::format::{bytes, count, group, stamp};
use super::sim::{CheckpointRecord, Observer};

/// Simulated time between two progress updates.
const PROGRESS_EVERY_MICROS: u64 = 250_000;
/// Frames (both sides) between two progress updates.
const PROGRESS_EVERY_FRAMES: u64 = 1000;

/// Prints what happens as the simulation runs.
#[derive(Debug)]
pub struct Reporter {
    quiet: bool,
    tty: bool,
    /// A progress line is on screen without a newline (terminal only).
    line_open: bool,
    last_at: Instant,
    last_frames: u64,
    divergences: u64,
}

impl Reporter {
    /// A reporter; `quiet` silences everything.
    #[must_use]
    pub fn new(quiet: bool) -> Self {
        Self {
            quiet,
            tty: std::io::stderr().is_terminal(),
            line_open: false,
            last_at: Instant::ZERO,
            last_frames: 0,
            divergences: 0,
        }
    }

    fn event(&mut self, now: Instant, text: &str) {
        if self.quiet {
            return;
        }
        let mut err = std::io::stderr().lock();
        if self.line_open {
            let _ = write!(err, "\r\x1b[K");
            self.line_open = false;
        }
        let _ = writeln!(err, "[{}] {text}", stamp(now));
    }

    /// Print the progress line now (it is also printed periodically by `tick`).
    pub fn progress(&mut self, now: Instant, s: &EngineStats) {
        self.last_at = now;
        self.last_frames = s.frames_in[0] + s.frames_in[1];
        if self.quiet {
            return;
        }
        let line = progress_line(now, s);
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[K{line}");
            let _ = err.flush();
            self.line_open = true;
        } else {
            let _ = writeln!(err, "{line}");
        }
    }

    /// End the live output (closes an open progress line).
    pub fn finish(&mut self, now: Instant, s: &EngineStats) {
        self.progress(now, s);
        if self.line_open {
            let _ = writeln!(std::io::stderr());
            self.line_open = false;
        }
    }
}

/// The progress line's text.
#[must_use]
pub fn progress_line(now: Instant, s: &EngineStats) -> String {
    format!(
        "[{}] in {} primary / {} secondary frames | released {} | matched {} + {} dgrams \
         | held {} frames ({}) | divergences {} | checkpoints {}/{}",
        stamp(now),
        group(s.frames_in[0]),
        group(s.frames_in[1]),
        group(s.released_frames),
        bytes(s.bytes_matched),
        group(s.datagrams_matched),
        group(s.held_frames),
        bytes(s.held_bytes),
        group(s.divergences_total()),
        group(s.checkpoints_done),
        group(s.checkpoints_total()),
    )
}

impl Observer for Reporter {
    fn divergence(&mut self, now: Instant, d: &Divergence) {
        self.divergences += 1;
        let n = self.divergences;
        self.event(now, &format!("divergence #{n}: {d}"));
    }

    fn checkpoint_requested(&mut self, now: Instant, r: &CheckpointRequest) {
        self.event(
            now,
            &format!("checkpoint #{} requested ({})", r.id, r.cause.reason()),
        );
    }

    fn checkpoint_done(&mut self, now: Instant, c: &CheckpointRecord) {
        let took = now.saturating_since(c.requested_at);
        let mut text = format!(
            "checkpoint #{} done after {took}: released {} held by the engine; the secondary \
             is now a copy of the primary",
            c.id,
            count(c.released, "primary frame"),
        );
        if c.secondary_lost > 0 {
            text.push_str(&format!(
                " (lost {} it still had in flight)",
                count(c.secondary_lost, "frame")
            ));
        }
        self.event(now, &text);
    }

    fn limit(&mut self, now: Instant, limit: Limit, flow: Option<FlowKey>, action: &str) {
        let on = flow.map(|f| format!(" on {f}")).unwrap_or_default();
        self.event(now, &format!("limit {limit} reached{on}: {action}"));
    }

    fn tick(&mut self, now: Instant, s: &EngineStats) {
        let frames = s.frames_in[0] + s.frames_in[1];
        if now.saturating_since(self.last_at).as_micros() >= PROGRESS_EVERY_MICROS
            || frames - self.last_frames >= PROGRESS_EVERY_FRAMES
        {
            self.progress(now, s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_line_shows_the_counters() {
        let s = EngineStats {
            frames_in: [1234, 2345],
            released_frames: 1200,
            bytes_matched: 3 << 20,
            ..EngineStats::default()
        };
        let line = progress_line(Instant::from_millis(250), &s);
        assert!(
            line.starts_with("[   0.250000s] in 1,234 primary / 2,345 secondary"),
            "{line}"
        );
        assert!(line.contains("released 1,200"));
        assert!(line.contains("matched 3.0 MiB"));
        assert!(line.contains("checkpoints 0/0"));
    }
}
