//! Live output on stderr: a progress line built from the proxies' own `stats` (read
//! through their control sockets, as an operator would), and one line per event.
//!
//! On a terminal the progress line is redrawn in place; otherwise each update is its
//! own line.

use std::cell::Cell;
use std::io::{IsTerminal as _, Write as _};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::{Notify, watch};

use super::super::format::{bytes, group};
use super::wire::Ctl;

/// Time between two progress lines.
const PROGRESS_EVERY: Duration = Duration::from_millis(150);

/// Where live lines go; shared by the traffic and the monitor (one thread).
#[derive(Debug)]
pub struct Log {
    quiet: bool,
    tty: bool,
    started: Instant,
    line_open: Cell<bool>,
}

impl Log {
    /// A log; `quiet` silences everything.
    pub fn new(quiet: bool) -> Self {
        Self {
            quiet,
            tty: std::io::stderr().is_terminal(),
            started: Instant::now(),
            line_open: Cell::new(false),
        }
    }

    /// Whether nothing is printed.
    pub fn quiet(&self) -> bool {
        self.quiet
    }

    /// Seconds since the demo started.
    pub fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    fn close_line(&self, err: &mut impl std::io::Write) {
        if self.line_open.replace(false) {
            let _ = write!(err, "\r\x1b[K");
        }
    }

    /// One event line.
    pub fn event(&self, text: &str) {
        if self.quiet {
            return;
        }
        let mut err = std::io::stderr().lock();
        self.close_line(&mut err);
        let _ = writeln!(err, "[{:>7.3}s] {text}", self.elapsed());
    }

    /// The progress line.
    pub fn progress(&self, text: &str) {
        if self.quiet {
            return;
        }
        let mut err = std::io::stderr().lock();
        let line = format!("[{:>7.3}s] {text}", self.elapsed());
        if self.tty {
            let _ = write!(err, "\r\x1b[K{line}");
            let _ = err.flush();
            self.line_open.set(true);
        } else {
            let _ = writeln!(err, "{line}");
        }
    }

    /// End the live output (closes an open progress line).
    pub fn finish(&self) {
        if self.line_open.replace(false) {
            let _ = writeln!(std::io::stderr());
        }
    }
}

/// Sum of a `{reason: count}` object.
pub fn total(v: &Value) -> u64 {
    v.as_object()
        .map_or(0, |m| m.values().filter_map(Value::as_u64).sum())
}

/// `3 (payload 2, datagram 1)`: the total and the reasons that happened.
pub fn with_reasons(v: &Value) -> String {
    let t = total(v);
    let parts: Vec<String> = v
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, n)| Some((k, n.as_u64()?)))
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    if parts.is_empty() {
        group(t)
    } else {
        format!("{} ({})", group(t), parts.join(", "))
    }
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// The progress line's text, from the primary's and the secondary's `stats`.
pub fn progress_line(p: &Value, s: &Value) -> String {
    let link = match (p["link"]["up"].as_bool(), s["link"]["up"].as_bool()) {
        (Some(true), Some(true)) => "up",
        _ => "DOWN",
    };
    format!(
        "VM frames in {} pri / {} sec | released {} ({}) | held {} | rewritten {} | \
         checkpoints {} done of {} | link {link}",
        group(n(&p["frames_in"]["primary"])),
        group(n(&p["frames_in"]["secondary"])),
        group(n(&p["released"]["frames"])),
        bytes(n(&p["released"]["bytes"])),
        group(n(&p["held"]["frames"])),
        group(n(&s["rewritten"])),
        group(n(&p["checkpoints"]["done"])),
        with_reasons(&p["checkpoints"]["requested"]),
    )
}

/// Print a progress line every [`PROGRESS_EVERY`] and whenever `poke` is notified,
/// until `stop` turns true. Its own control connections, like an operator's.
pub async fn monitor(dir: &Path, log: &Log, poke: &Notify, mut stop: watch::Receiver<bool>) {
    if log.quiet() {
        return;
    }
    let run = async {
        let mut p = Ctl::connect(&dir.join("primary.ctl")).await?;
        let mut s = Ctl::connect(&dir.join("secondary.ctl")).await?;
        let mut events = Vec::new();
        loop {
            tokio::select! {
                () = poke.notified() => {}
                () = tokio::time::sleep(PROGRESS_EVERY) => {}
            }
            let ps = p.stats(&mut events).await?;
            let ss = s.stats(&mut events).await?;
            events.clear();
            log.progress(&progress_line(&ps, &ss));
        }
    };
    tokio::select! {
        _ = stop.wait_for(|s| *s) => {}
        r = run => {
            let r: anyhow::Result<()> = r;
            if let Err(e) = r {
                tracing::debug!(error = %e, "demo progress monitor stopped");
            }
        }
    }
}
