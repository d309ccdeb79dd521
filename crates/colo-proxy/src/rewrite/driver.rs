//! The rewrite driver: the single task that owns the sans-IO [`Rewriter`].
//!
//! It waits on whichever comes first: a control command, the rewriter's next
//! deadline ([`Rewriter::poll_timeout`]), a frame or peer change from the I/O tasks,
//! or the shutdown signal. Every frame goes through [`Rewriter::rewrite_frame`];
//! forwarded frames are encoded in the input's framing and queued for their output.
//! After every call into the rewriter, frames it held (waiting for the secondary's
//! ISN) and has now released are drained from [`Rewriter::poll_to_secondary`] and
//! queued towards the secondary, ahead of the newer frame.

use std::future::Future;

use colo_core::Frame;
use colo_core::rewrite::{Direction, Rewriter, Verdict};
use serde_json::{Map, Value, json};
use tokio::sync::{broadcast, mpsc};

use super::Event;
use crate::shell::control::{Command, Request, event_line};
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
    pub peers: Vec<(&'static str, bool)>,
}

impl Driver {
    fn event(&self, fields: Map<String, Value>, name: &str) {
        // No receivers is fine: nobody is listening on the control socket.
        let _ = self.events.send(event_line(name, fields));
    }

    /// Run until `shutdown` completes or every I/O task is gone.
    pub async fn run(
        mut self,
        mut inputs: mpsc::Receiver<Event>,
        mut control: mpsc::Receiver<Request>,
        shutdown: impl Future<Output = &'static str>,
    ) {
        tokio::pin!(shutdown);
        loop {
            let deadline = self.rewriter.poll_timeout().map(|t| self.clock.to_tokio(t));
            let sleep = tokio::time::sleep_until(deadline.unwrap_or_else(|| {
                tokio::time::Instant::now() + std::time::Duration::from_secs(3600)
            }));
            tokio::select! {
                biased;
                why = &mut shutdown => {
                    tracing::info!(signal = why, "shutting down");
                    break;
                }
                Some(req) = control.recv() => {
                    let result = self.command(req.command);
                    let _ = req.reply.send(result);
                }
                () = sleep, if deadline.is_some() => {
                    let now = self.clock.now();
                    self.rewriter.handle_timeout(now);
                    self.drain_released();
                }
                ev = inputs.recv() => {
                    let Some(ev) = ev else { break };
                    self.handle_event(ev);
                    for _ in 0..64 {
                        match inputs.try_recv() {
                            Ok(ev) => self.handle_event(ev),
                            Err(_) => break,
                        }
                    }
                }
            }
        }
        // Give the outputs a moment to take what is queued.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(1);
        while !(self.to_secondary.is_empty() && self.from_secondary.is_empty())
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        tracing::info!(
            to_secondary_written = self.to_secondary.stats().written_frames,
            from_secondary_written = self.from_secondary.stats().written_frames,
            "stopped"
        );
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
                match self.peers.iter_mut().find(|(r, _)| *r == role) {
                    Some(p) => p.1 = up,
                    None => self.peers.push((role, up)),
                }
                let mut f = Map::new();
                f.insert("role".into(), json!(role));
                self.event(
                    f,
                    if up {
                        "peer-connected"
                    } else {
                        "peer-disconnected"
                    },
                );
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
        let s = self.rewriter.stats();
        let mut e = Exposition::new();
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
            self.rewriter.len() as u64,
        );
        e.counter1(
            "colo_checkpoints_done_total",
            "Checkpoints completed.",
            s.checkpoints,
        );
        e.gauge1(
            "colo_failover",
            "Whether a failover command was received (1) or not (0).",
            u64::from(self.rewriter.is_failover()),
        );
        e.out_queues(&[
            ("to_secondary_out", self.to_secondary.stats()),
            ("from_secondary_out", self.from_secondary.stats()),
        ]);
        e.peers(&self.peers);
        e
    }

    fn stats_json(&self) -> Value {
        let s = self.rewriter.stats();
        let q = |q: &OutQueue| {
            let o = q.stats();
            json!({"queued_frames": o.queued_frames, "queued_bytes": o.queued_bytes,
                   "written_frames": o.written_frames, "written_bytes": o.written_bytes,
                   "dropped_frames": o.dropped_frames, "dropped_bytes": o.dropped_bytes})
        };
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
            "peers": self.peers.iter().map(|(r, up)| (r.to_string(), json!(up))).collect::<Map<String, Value>>(),
        })
    }
}

/// Encode `frame` in its input's framing and queue it.
fn push(q: &OutQueue, frame: &Frame, vnet_hdr: bool, dir: Direction) {
    if !q.push_frame(frame, vnet_hdr) {
        let dropped = q.stats().dropped_frames;
        if dropped.is_power_of_two() {
            tracing::warn!(?dir, dropped, "output buffer full: dropping frames");
        }
    }
}
