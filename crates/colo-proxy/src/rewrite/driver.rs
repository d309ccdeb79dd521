//! The rewrite driver: the single task that owns the sans-IO [`Rewriter`].
//!
//! It waits on whichever comes first: a control command, the rewriter's next
//! deadline ([`Rewriter::poll_timeout`]), a frame or peer change from the I/O tasks,
//! or the shutdown signal. Every frame goes through [`Rewriter::rewrite_frame`];
//! forwarded frames are encoded in the input's framing and queued for their output.
//! After every call into the rewriter, frames it held (waiting for the secondary's
//! ISN) and has now released are drained from [`Rewriter::poll_to_secondary`] and
//! queued towards the secondary, ahead of the newer frame.

use colo_core::Frame;
use colo_core::rewrite::{Direction, Rewriter, Verdict};
use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

use super::Event;
use crate::shell::control::{Command, event_line};
use crate::shell::driver::{Peers, Role};
use crate::shell::metrics::Exposition;
use crate::shell::outq::OutQueue;
use crate::shell::{Clock, PeerChange};

/// Everything the driver talks to.
#[derive(Debug)]
pub struct Driver {
    /// The rewriter.
    pub rewriter: Rewriter,
    /// Write the vnet_hdr_len field on the outputs.
    pub vnet_hdr: bool,
    /// Frames on their way to `--to-secondary-out`.
    pub to_secondary: OutQueue,
    /// Frames on their way to `--from-secondary-out`.
    pub from_secondary: OutQueue,
    /// Events for control clients (JSON lines).
    pub events: broadcast::Sender<String>,
    /// The clock.
    pub clock: Clock,
    /// Which endpoint roles have a peer now.
    pub peers: Peers,
}

impl Role for Driver {
    type Event = Event;

    fn clock(&self) -> Clock {
        self.clock
    }

    fn deadline(&self) -> Option<colo_core::Instant> {
        self.rewriter.poll_timeout()
    }

    fn on_timeout(&mut self, now: colo_core::Instant) {
        self.rewriter.handle_timeout(now);
    }

    fn on_event(&mut self, event: Event) {
        self.handle_event(event);
    }

    fn on_command(&mut self, command: Command) -> Result<Map<String, Value>, String> {
        self.command(command)
    }

    fn after_wake(&mut self, _inputs: &mut tokio::sync::mpsc::Receiver<Event>) {
        self.drain_released();
    }

    fn output_queues(&self) -> Vec<(&'static str, OutQueue)> {
        vec![
            ("to_secondary_out", self.to_secondary.clone()),
            ("from_secondary_out", self.from_secondary.clone()),
        ]
    }
}

impl Driver {
    fn event(&self, fields: Map<String, Value>, name: &str) {
        // No receivers is fine: nobody is listening on the control socket.
        let _ = self.events.send(event_line(name, fields));
    }

    fn handle_frame(&mut self, now: colo_core::Instant, dir: Direction, mut frame: Frame) {
        let verdict = self.rewriter.rewrite_frame(now, dir, &mut frame);
        // Released held frames are older than this one: they go first.
        self.drain_released();
        match verdict {
            Verdict::Rewritten | Verdict::Unchanged(_) => {
                let q = match dir {
                    Direction::ToSecondary => &self.to_secondary,
                    Direction::FromSecondary => &self.from_secondary,
                };
                push(q, &frame, self.vnet_hdr, dir);
            }
            Verdict::Held => {
                tracing::trace!(?dir, "held until the secondary's ISN is known")
            }
            Verdict::Drop(why) => tracing::debug!(?dir, ?why, "frame dropped"),
        }
    }

    fn handle_event(&mut self, ev: Event) {
        match ev {
            Event::Frames(dir, frames) => {
                // One clock read per batch: the frames arrived in one read.
                let now = self.clock.now();
                for frame in frames {
                    self.handle_frame(now, dir, frame);
                }
            }
            Event::Peer(PeerChange { role, up }) => {
                let name = self.peers.set(role, up);
                let mut f = Map::new();
                f.insert("role".into(), json!(role));
                self.event(f, name);
            }
        }
    }

    /// Queue the frames the rewriter released towards the secondary.
    fn drain_released(&mut self) {
        while let Some(frame) = self.rewriter.poll_to_secondary() {
            push(
                &self.to_secondary,
                &frame,
                self.vnet_hdr,
                Direction::ToSecondary,
            );
        }
    }

    fn command(&mut self, cmd: Command) -> Result<Map<String, Value>, String> {
        let mut m = Map::new();
        match cmd {
            Command::CheckpointDone => {
                self.rewriter.checkpoint_done();
                self.drain_released();
                let n = self.rewriter.stats().checkpoints;
                tracing::info!(checkpoints = n, "checkpoint done: offsets reset");
                m.insert("epoch".into(), json!(n));
            }
            Command::Failover => {
                self.rewriter.failover();
                self.drain_released();
                tracing::warn!(
                    tracked = self.rewriter.len(),
                    "failover: tracked connections stay rewritten, new ones pass untouched"
                );
                m.insert("failover".into(), json!(true));
                m.insert("tracked".into(), json!(self.rewriter.len()));
            }
            Command::Stats => {
                m.insert("stats".into(), self.stats_json());
            }
            Command::SetFlowPolicy { .. } | Command::GetFlowPolicy => {
                return Err(
                    "the rewrite role has no flow policy (every connection must be \
                            rewritten); set flow policies on the compare side"
                        .to_owned(),
                );
            }
            Command::Metrics => return Ok(crate::shell::metrics::reply(self.metrics())),
        }
        Ok(m)
    }

    /// The counters of `stats`, in Prometheus text format.
    fn metrics(&self) -> Exposition {
        let mut e = Exposition::new();
        rewriter_metrics(&mut e, &self.rewriter);
        e.out_queues(&[
            ("to_secondary_out", self.to_secondary.stats()),
            ("from_secondary_out", self.from_secondary.stats()),
        ]);
        e.peers(self.peers.as_slice());
        e
    }

    fn stats_json(&self) -> Value {
        let s = self.rewriter.stats();
        let q = |q: &OutQueue| q.stats().to_json();
        json!({
            "epoch": s.checkpoints,
            "failover": self.rewriter.is_failover(),
            "connections": self.rewriter.len(),
            "frames_in": {"to_secondary": s.frames_to_secondary, "from_secondary": s.frames_from_secondary},
            "rewritten": s.rewritten,
            "partial_checksum": s.partial_checksum,
            "passed": {
                "not_tcp": s.pass_not_tcp, "nothing_to_rewrite": s.pass_nothing_to_rewrite,
                "handshake": s.pass_handshake, "offset_unknown": s.pass_offset_unknown,
                "untracked": s.pass_untracked, "no_connection": s.pass_no_connection,
                "table_full": s.pass_table_full, "conflicting_syn": s.pass_conflicting_syn,
                "direction_mismatch": s.pass_direction_mismatch,
            },
            "held": {"frames": s.held, "released": s.released, "expired": s.held_expired,
                     "dropped_full": s.dropped_hold_full},
            "opens": {"passive": s.passive_opens, "active": s.active_opens,
                      "midstream": s.midstream_assumed, "offsets_learned": s.offsets_learned,
                      "syn_replaced": s.syn_replaced},
            "options": {"ts_one_side": s.ts_one_side, "malformed": s.options_malformed,
                        "syn_with_data": s.syn_with_data},
            "closed": {"closed": s.closed, "expired_linger": s.expired_linger,
                       "expired_idle": s.expired_idle, "evicted": s.evicted},
            "outputs": {"to_secondary_out": q(&self.to_secondary),
                        "from_secondary_out": q(&self.from_secondary)},
            "peers": self.peers.to_json(),
        })
    }
}

/// The rewriter's counters in Prometheus text format (the `rewrite` and `secondary`
/// roles).
pub(crate) fn rewriter_metrics(e: &mut Exposition, rewriter: &Rewriter) {
    let s = rewriter.stats();
    e.counter_by(
        "colo_rewrite_frames_in_total",
        "Frames received, by direction.",
        "direction",
        &[
            ("to_secondary", s.frames_to_secondary),
            ("from_secondary", s.frames_from_secondary),
        ],
    );
    e.counter1(
        "colo_rewrite_rewritten_total",
        "Frames whose sequence or acknowledgement numbers were translated.",
        s.rewritten,
    );
    e.counter_by(
        "colo_rewrite_passed_total",
        "Frames passed unchanged, by reason.",
        "reason",
        &[
            ("not_tcp", s.pass_not_tcp),
            ("nothing_to_rewrite", s.pass_nothing_to_rewrite),
            ("handshake", s.pass_handshake),
            ("offset_unknown", s.pass_offset_unknown),
            ("untracked", s.pass_untracked),
            ("no_connection", s.pass_no_connection),
            ("table_full", s.pass_table_full),
            ("conflicting_syn", s.pass_conflicting_syn),
            ("direction_mismatch", s.pass_direction_mismatch),
        ],
    );
    e.gauge1(
        "colo_rewrite_held_frames",
        "Frames held now until the secondary's ISN is known.",
        s.held,
    );
    e.counter_by(
        "colo_rewrite_held_total",
        "Held frames by outcome: released, expired, dropped (hold queue full).",
        "outcome",
        &[
            ("released", s.released),
            ("expired", s.held_expired),
            ("dropped", s.dropped_hold_full),
        ],
    );
    e.gauge1(
        "colo_connections",
        "Connections tracked now.",
        rewriter.len() as u64,
    );
    e.counter1(
        "colo_checkpoints_done_total",
        "Checkpoints completed.",
        s.checkpoints,
    );
    e.gauge1(
        "colo_failover",
        "Whether a failover command was received (1) or not (0).",
        u64::from(rewriter.is_failover()),
    );
}

/// Queue `frame` in its input's framing.
fn push(q: &OutQueue, frame: &Frame, vnet_hdr: bool, dir: Direction) {
    if !q.push_frame(frame, vnet_hdr) {
        let dropped = q.stats().dropped_frames;
        if dropped.is_power_of_two() {
            tracing::warn!(?dir, dropped, "output buffer full: dropping frames");
        }
    }
}
