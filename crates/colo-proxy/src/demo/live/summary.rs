//! The live run's final summary: a table for people, or JSON for scripts. The
//! figures are the proxies' own counters (`stats` on their control sockets) and the
//! client's verification.

use std::fmt::{self, Write as _};

use serde_json::{Value, json};

use super::super::format::{bytes, group};
use super::monitor::{total, with_reasons};
use super::traffic::{SMALL_BODY, Verification};

/// What was asked for.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// TCP connections.
    pub connections: u32,
    /// Bulk body size (even connections).
    pub bulk_bytes: u64,
    /// UDP exchanges.
    pub datagrams: u32,
    /// Seed of ISNs and segmentation.
    pub seed: u64,
    /// Every how many replies the secondary diverges.
    pub diverge_every: Option<u32>,
    /// Checkpoint duration.
    pub checkpoint_ms: u64,
}

/// The whole outcome.
#[derive(Debug)]
pub struct Summary {
    /// What was asked for.
    pub scenario: Scenario,
    /// Wall time of the run.
    pub wall_seconds: f64,
    /// The primary's final `stats`.
    pub primary: Value,
    /// The secondary's final `stats`.
    pub secondary: Value,
    /// Every checkpoint taken.
    pub checkpoints: Vec<Value>,
    /// The client's verdict.
    pub verification: Verification,
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

impl Summary {
    /// Whether the client received exactly what the primary VM sent.
    pub fn verified(&self) -> bool {
        self.verification.ok()
    }

    /// The JSON form (stable field names; the proxies' full `stats` included).
    pub fn to_json(&self) -> Value {
        let s = &self.scenario;
        let p = &self.primary;
        json!({
            "mode": "live",
            "verified": self.verified(),
            "scenario": {
                "connections": s.connections, "bulk_bytes": s.bulk_bytes,
                "small_bytes": SMALL_BODY, "datagrams": s.datagrams, "seed": s.seed,
                "nondeterministic": s.diverge_every.is_some(),
                "diverge_every": s.diverge_every, "checkpoint_ms": s.checkpoint_ms,
            },
            "wall_seconds": self.wall_seconds,
            "frames_in": p["frames_in"],
            "bytes_in": p["bytes_in"],
            "released": p["released"],
            "held": p["held"],
            "divergences": {"total": total(&p["divergences"]), "by_reason": p["divergences"]},
            "checkpoints": {
                "requested": total(&p["checkpoints"]["requested"]),
                "by_reason": p["checkpoints"]["requested"],
                "completed": p["checkpoints"]["done"],
                "coalesced": p["checkpoints"]["coalesced"],
                "list": self.checkpoints,
            },
            "rewriter": {
                "connections": self.secondary["connections"],
                "offsets_learned": self.secondary["offsets_learned"],
                "rewritten": self.secondary["rewritten"],
                "held": self.secondary["held"],
            },
            "link": {"primary_up": p["link"]["up"], "secondary_up": self.secondary["link"]["up"]},
            "verification": self.verification,
            "primary": p,
            "secondary": self.secondary,
        })
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.scenario;
        let p = &self.primary;
        let sec = &self.secondary;
        let mode = match s.diverge_every {
            Some(n) => format!("nondeterministic (every {n})"),
            None => "deterministic".into(),
        };
        writeln!(
            f,
            "colo-proxy demo: real primary and secondary proxies over loopback sockets, {mode}"
        )?;
        writeln!(
            f,
            "{} TCP connections ({} x {} and {} x {} bytes), {} datagrams, seed {}, {:.2}s",
            s.connections,
            s.connections.div_ceil(2),
            bytes(s.bulk_bytes),
            s.connections / 2,
            SMALL_BODY,
            s.datagrams,
            s.seed,
            self.wall_seconds
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "  {:<20} {:>14} {:>14}",
            "", "primary VM", "secondary VM"
        )?;
        for (name, key) in [("frames in", "frames_in"), ("bytes in", "bytes_in")] {
            writeln!(
                f,
                "  {name:<20} {:>14} {:>14}",
                group(n(&p[key]["primary"])),
                group(n(&p[key]["secondary"]))
            )?;
        }
        writeln!(f)?;
        let mut rows: Vec<(&str, String)> = Vec::new();
        rows.push((
            "released",
            format!(
                "{} frames, {} bytes ({} at checkpoints); {} held at the end",
                group(n(&p["released"]["frames"])),
                group(n(&p["released"]["bytes"])),
                group(n(&p["released"]["by_flush"])),
                group(n(&p["held"]["frames"]))
            ),
        ));
        rows.push(("divergences", with_reasons(&p["divergences"])));
        rows.push((
            "checkpoints",
            format!(
                "{} requested, {} completed, {} coalesced",
                with_reasons(&p["checkpoints"]["requested"]),
                group(n(&p["checkpoints"]["done"])),
                group(n(&p["checkpoints"]["coalesced"]))
            ),
        ));
        rows.push((
            "connections",
            format!(
                "{} TCP opened and closed by both sides; {} flows tracked by the primary \
                 (TCP and UDP, until they linger out), {} by the secondary",
                self.verification.closed,
                group(n(&p["connections"]["created"])),
                group(n(&sec["connections"]))
            ),
        ));
        rows.push((
            "link",
            format!(
                "{}; {} client frames mirrored to the secondary, {} frames back",
                if p["link"]["up"] == true && sec["link"]["up"] == true {
                    "up"
                } else {
                    "DOWN"
                },
                group(n(&p["mirror"]["mirrored"])),
                group(n(&sec["link"]["queue"]["written_frames"]))
            ),
        ));
        rows.push((
            "rewriter",
            format!(
                "{} connections tracked ({} with learned ISN/timestamp offsets), {} frames \
                 rewritten into the primary's sequence space, {} held",
                group(n(&sec["connections"])),
                group(n(&sec["offsets_learned"])),
                group(n(&sec["rewritten"])),
                group(n(&sec["held"]["frames"]))
            ),
        ));
        let v = &self.verification;
        let mut line = format!(
            "{}: {}/{} connections got {} of {} bytes exactly once and in order; {}/{} datagrams",
            if self.verified() { "OK" } else { "FAILED" },
            v.connections_ok,
            v.connections,
            group(v.bytes_received),
            group(v.bytes_expected),
            v.datagrams_ok,
            v.datagrams
        );
        if v.lost_on_purpose > 0 {
            let _ = write!(line, "; {} frames lost on purpose", v.lost_on_purpose);
        }
        rows.push(("verification", line));
        for (name, value) in rows {
            writeln!(f, "  {name:<20} {value}")?;
        }
        for problem in &v.problems {
            writeln!(f, "  {:<20} - {problem}", "")?;
        }
        Ok(())
    }
}
