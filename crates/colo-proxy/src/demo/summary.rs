//! The final summary: one serialisable record of the run, printed as a table for
//! people or as JSON for scripts.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};

use colo_core::Instant;
use colo_core::engine::CheckpointReason;
use serde::Serialize;

use super::format::{bytes, group};
use super::sim::{CheckpointRecord, Outcome};
use super::verify::Verification;

/// What was simulated.
#[derive(Debug, Clone, Serialize)]
pub struct Scenario {
    /// TCP connections.
    pub connections: usize,
    /// Response body bytes per connection.
    pub bytes_per_connection: u64,
    /// UDP queries.
    pub datagrams: u32,
    /// Seed.
    pub seed: u64,
    /// Whether the secondary's replies differ on some connections and datagrams.
    pub nondeterministic: bool,
    /// Every how many connections and datagrams they differ.
    pub diverge_every: Option<u32>,
    /// Simulated checkpoint duration.
    pub checkpoint_ms: u64,
}

/// A value per VM.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PerSide {
    /// The primary's.
    pub primary: u64,
    /// The secondary's.
    pub secondary: u64,
}

impl From<[u64; 2]> for PerSide {
    fn from([primary, secondary]: [u64; 2]) -> Self {
        Self { primary, secondary }
    }
}

/// Released primary output.
#[derive(Debug, Clone, Serialize)]
pub struct Released {
    /// Frames released.
    pub frames: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Of those, frames released unchecked by a checkpoint.
    pub by_checkpoint: u64,
}

/// Output found equal on both sides.
#[derive(Debug, Clone, Serialize)]
pub struct Matched {
    /// TCP payload bytes.
    pub tcp_bytes: u64,
    /// Datagrams.
    pub datagrams: u64,
}

/// Divergences.
#[derive(Debug, Clone, Serialize)]
pub struct Divergences {
    /// All of them.
    pub total: u64,
    /// Per reason (every reason listed).
    pub by_reason: BTreeMap<&'static str, u64>,
}

/// Checkpoints.
#[derive(Debug, Clone, Serialize)]
pub struct Checkpoints {
    /// Requests the engine made.
    pub requested: u64,
    /// Checkpoints completed.
    pub completed: u64,
    /// Divergences folded into an outstanding or deferred request.
    pub coalesced: u64,
    /// Requests per reason of their first divergence (every reason listed).
    pub by_reason: BTreeMap<&'static str, u64>,
    /// Every completed checkpoint, in order.
    pub list: Vec<CheckpointEntry>,
}

/// One completed checkpoint.
#[derive(Debug, Clone, Serialize)]
pub struct CheckpointEntry {
    /// The engine's request id.
    pub id: u64,
    /// Reason of the divergence that caused it.
    pub reason: &'static str,
    /// Simulated time of the request, in seconds.
    pub requested_at: f64,
    /// Simulated time of completion, in seconds.
    pub done_at: f64,
    /// Held primary frames released when it completed.
    pub released_frames: u64,
    /// Secondary frames in flight lost with the secondary's old state.
    pub secondary_frames_lost: u64,
}

impl From<&CheckpointRecord> for CheckpointEntry {
    fn from(c: &CheckpointRecord) -> Self {
        Self {
            id: c.id,
            reason: c.reason.as_str(),
            requested_at: seconds(c.requested_at),
            done_at: seconds(c.done_at),
            released_frames: c.released,
            secondary_frames_lost: c.secondary_lost,
        }
    }
}

fn seconds(t: Instant) -> f64 {
    t.as_micros() as f64 / 1e6
}

/// Connections.
#[derive(Debug, Clone, Serialize)]
pub struct Connections {
    /// Client TCP connections.
    pub tcp: usize,
    /// Of those, closed both ways.
    pub tcp_closed: usize,
    /// UDP flows.
    pub udp_flows: usize,
    /// Flows the engine tracked.
    pub engine_created: u64,
}

/// What the simulated network did.
#[derive(Debug, Clone, Serialize)]
pub struct Network {
    /// TCP segments delayed past their successors.
    pub reordered: u64,
    /// TCP segments sent twice.
    pub duplicated: u64,
    /// Frames the client sent.
    pub client_frames: u64,
    /// Released frames lost on purpose (`--fault-drop-released`).
    pub released_lost: u64,
}

/// What the secondary's rewriter did.
#[derive(Debug, Clone, Serialize)]
pub struct RewriterSummary {
    /// Connections whose ISN and timestamp offsets were learned.
    pub offsets_learned: u64,
    /// Frames rewritten (both directions).
    pub rewritten: u64,
    /// Client frames held until the secondary's ISN was known.
    pub held: u64,
    /// Frames the rewriter dropped.
    pub dropped: u64,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// What was simulated.
    pub scenario: Scenario,
    /// Simulated time the run took.
    pub simulated_seconds: f64,
    /// Wall-clock time the run took.
    pub wall_seconds: f64,
    /// Frames the engine received.
    pub frames_in: PerSide,
    /// Bytes the engine received.
    pub bytes_in: PerSide,
    /// TCP payload bytes the engine received.
    pub tcp_payload_in: PerSide,
    /// Released output.
    pub released: Released,
    /// Matched output.
    pub matched: Matched,
    /// Divergences.
    pub divergences: Divergences,
    /// Checkpoints.
    pub checkpoints: Checkpoints,
    /// Connections.
    pub connections: Connections,
    /// The simulated network.
    pub network: Network,
    /// The rewriter.
    pub rewriter: RewriterSummary,
    /// The end-to-end check.
    pub verification: Verification,
    /// Shorthand for `verification.verified`.
    pub verified: bool,
}

fn by_reason(counts: &[u64; 7]) -> BTreeMap<&'static str, u64> {
    CheckpointReason::ALL
        .iter()
        .map(|r| (r.as_str(), counts[r.index()]))
        .collect()
}

impl Summary {
    /// Assemble the summary of a run.
    #[must_use]
    pub fn new(
        scenario: Scenario,
        outcome: &Outcome,
        verification: Verification,
        wall_seconds: f64,
    ) -> Self {
        let e = &outcome.engine;
        let r = &outcome.rewrite;
        Self {
            simulated_seconds: seconds(outcome.sim_time),
            wall_seconds,
            frames_in: e.frames_in.into(),
            bytes_in: e.bytes_in.into(),
            tcp_payload_in: e.tcp_payload_in.into(),
            released: Released {
                frames: e.released_frames,
                bytes: e.released_bytes,
                by_checkpoint: e.released_by_flush,
            },
            matched: Matched {
                tcp_bytes: e.bytes_matched,
                datagrams: e.datagrams_matched,
            },
            divergences: Divergences {
                total: e.divergences_total(),
                by_reason: by_reason(&e.divergences),
            },
            checkpoints: Checkpoints {
                requested: e.checkpoints_total(),
                completed: e.checkpoints_done,
                coalesced: e.checkpoints_coalesced,
                by_reason: by_reason(&e.checkpoints_requested),
                list: outcome
                    .checkpoints
                    .iter()
                    .map(CheckpointEntry::from)
                    .collect(),
            },
            connections: Connections {
                tcp: scenario.connections,
                tcp_closed: outcome.connections_closed,
                udp_flows: outcome.udp_flows,
                engine_created: e.connections_created,
            },
            network: Network {
                reordered: outcome.net.reordered,
                duplicated: outcome.net.duplicated,
                client_frames: outcome.net.client_frames,
                released_lost: outcome.net.released_lost,
            },
            rewriter: RewriterSummary {
                offsets_learned: r.offsets_learned,
                rewritten: r.rewritten,
                held: r.held,
                dropped: r.dropped_hold_full + outcome.net.rewriter_dropped,
            },
            verified: verification.verified,
            verification,
            scenario,
        }
    }

    /// The summary as pretty-printed JSON.
    pub fn to_json(&self) -> serde_json::Result<String> {
        serde_json::to_string_pretty(self)
    }
}

/// `total (reason n, reason n)` listing only the reasons that occurred.
fn with_reasons(total: u64, reasons: &BTreeMap<&'static str, u64>) -> String {
    let parts: Vec<String> = CheckpointReason::ALL
        .iter()
        .filter_map(|r| {
            let n = reasons.get(r.as_str()).copied().unwrap_or(0);
            (n > 0).then(|| format!("{} {}", r.as_str(), group(n)))
        })
        .collect();
    if parts.is_empty() {
        group(total)
    } else {
        format!("{} ({})", group(total), parts.join(", "))
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.scenario;
        let mode = match s.diverge_every {
            Some(n) => format!("nondeterministic (every {n})"),
            None => "deterministic".into(),
        };
        writeln!(
            f,
            "colo-proxy demo: {} connections x {}, {} datagrams, seed {}, {mode}",
            s.connections,
            bytes(s.bytes_per_connection),
            s.datagrams,
            s.seed
        )?;
        writeln!(
            f,
            "simulated {:.6}s in {:.2}s of wall time",
            self.simulated_seconds, self.wall_seconds
        )?;
        writeln!(f)?;
        writeln!(f, "  {:<20} {:>14} {:>14}", "", "primary", "secondary")?;
        for (name, v) in [
            ("frames in", self.frames_in),
            ("bytes in", self.bytes_in),
            ("TCP payload bytes", self.tcp_payload_in),
        ] {
            writeln!(
                f,
                "  {name:<20} {:>14} {:>14}",
                group(v.primary),
                group(v.secondary)
            )?;
        }
        writeln!(f)?;
        let mut rows: Vec<(&str, String)> = Vec::new();
        rows.push((
            "released",
            format!(
                "{} frames, {} bytes ({} by checkpoint)",
                group(self.released.frames),
                group(self.released.bytes),
                group(self.released.by_checkpoint)
            ),
        ));
        rows.push((
            "matched",
            format!(
                "{} TCP bytes, {} datagrams",
                group(self.matched.tcp_bytes),
                group(self.matched.datagrams)
            ),
        ));
        rows.push((
            "divergences",
            with_reasons(self.divergences.total, &self.divergences.by_reason),
        ));
        let c = &self.checkpoints;
        rows.push((
            "checkpoints",
            format!(
                "{} requested, {} completed, {} divergences coalesced or deferred",
                with_reasons(c.requested, &c.by_reason),
                group(c.completed),
                group(c.coalesced)
            ),
        ));
        let k = &self.connections;
        rows.push((
            "connections",
            format!(
                "{} TCP ({} closed), {} UDP flows, {} tracked by the engine",
                k.tcp, k.tcp_closed, k.udp_flows, k.engine_created
            ),
        ));
        let mut network = format!(
            "{} segments reordered, {} duplicated, {} client frames",
            group(self.network.reordered),
            group(self.network.duplicated),
            group(self.network.client_frames)
        );
        if self.network.released_lost > 0 {
            let _ = write!(
                network,
                ", {} released frames lost on purpose",
                group(self.network.released_lost)
            );
        }
        rows.push(("network", network));
        let r = &self.rewriter;
        rows.push((
            "rewriter",
            format!(
                "{} connections' offsets learned, {} frames rewritten, {} held, {} dropped",
                group(r.offsets_learned),
                group(r.rewritten),
                group(r.held),
                group(r.dropped)
            ),
        ));
        let v = &self.verification;
        let mut line = String::new();
        let _ = write!(
            line,
            "{}: {}/{} connections got {} of {} bytes exactly once and in order; \
             {}/{} datagrams; {} of {} primary frames released",
            if v.verified { "OK" } else { "FAILED" },
            v.connections_ok,
            v.connections,
            group(v.bytes_received),
            group(v.bytes_expected),
            v.datagrams_ok,
            v.datagrams,
            group(v.released_frames),
            group(v.primary_frames)
        );
        rows.push(("verification", line));
        for (name, value) in rows {
            writeln!(f, "  {name:<20} {value}")?;
        }
        for p in &v.problems {
            writeln!(f, "  {:<20} - {p}", "")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_list_only_what_happened() {
        let mut m = by_reason(&[0; 7]);
        assert_eq!(with_reasons(0, &m), "0");
        m.insert("payload", 2);
        m.insert("datagram", 1);
        assert_eq!(with_reasons(3, &m), "3 (payload 2, datagram 1)");
    }
}
