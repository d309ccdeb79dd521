//! The driver loop: the single task that owns the sans-IO [`Engine`].
//!
//! It waits on whichever comes first: a control command, the engine's next deadline
//! ([`Engine::poll_timeout`]), an event from the I/O tasks (a decoded frame, a peer
//! change, a notify message) or the shutdown signal. After each it drains
//! [`Engine::poll_output`]: releases are encoded in the input's framing and queued for
//! the outdev writer (never awaited, see [`crate::shell::outq`]), checkpoint requests are
//! logged, pushed to control clients and sent as `DO_CHECKPOINT` on the notify device.
//!
//! The clock is tokio's monotonic clock, as microseconds since the driver started.

use std::future::Future;

use bytes::BytesMut;
use colo_core::codec::encode_frame;
use colo_core::engine::{Engine, Mode, Output};
use colo_core::{Instant, Side};
use serde_json::{Map, Value, json};
use tokio::sync::{broadcast, mpsc};

use super::Event;
use crate::qmp::{FailoverCause, QmpAction, QmpLink, Vm};
use crate::shell::control::{Command, Request, event_line};
use crate::shell::outq::OutQueue;
use crate::shell::{Clock, PeerChange};

/// Everything the driver talks to.
#[derive(Debug)]
pub struct Driver {
    /// The engine.
    pub engine: Engine,
    /// Write the vnet_hdr_len field on the outdev.
    pub vnet_hdr: bool,
    /// Released frames on their way to the outdev.
    pub outq: OutQueue,
    /// Events for control clients (JSON lines).
    pub events: broadcast::Sender<String>,
    /// `DO_CHECKPOINT` requests for the notify task, when `--notify-dev` is set.
    pub notify: Option<mpsc::Sender<()>>,
    /// The clock (`Instant::ZERO` when the driver started).
    pub clock: Clock,
    /// Notify messages we did not understand.
    pub notify_unknown: u64,
    /// A `failover` command was received: pass-through for good.
    pub failed_over: bool,
    /// Checkpoint completions, by source (control socket, notify device).
    pub checkpoint_done_by: [u64; 2],
    /// Which endpoint roles have a peer now.
    pub peers: Vec<(&'static str, bool)>,
    /// The QMP checkpoint driver, when `--qmp-primary`/`--qmp-secondary` are given.
    pub qmp: Option<QmpLink>,
}

impl Driver {
    fn now(&self) -> Instant {
        self.clock.now()
    }

    fn to_tokio(&self, at: Instant) -> tokio::time::Instant {
        self.clock.to_tokio(at)
    }

    fn event(&self, fields: Map<String, Value>, name: &str) {
        // No receivers is fine: nobody is listening on the control socket.
        let _ = self.events.send(event_line(name, fields));
    }

    /// Run until `shutdown` completes or every input task is gone.
    pub async fn run(
        mut self,
        mut inputs: mpsc::Receiver<Event>,
        mut control: mpsc::Receiver<Request>,
        shutdown: impl Future<Output = &'static str>,
    ) {
        tokio::pin!(shutdown);
        loop {
            let qmp_deadline = self.qmp.as_ref().and_then(|q| q.machine.poll_timeout());
            let deadline = match (self.engine.poll_timeout(), qmp_deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
            .map(|t| self.to_tokio(t));
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
                    let now = self.now();
                    self.engine.handle_timeout(now);
                    if let Some(q) = &mut self.qmp {
                        q.machine.handle_timeout(now);
                    }
                }
                ev = inputs.recv() => {
                    let Some(ev) = ev else { break };
                    self.handle_event(ev);
                    // Take what else is ready before draining outputs.
                    for _ in 0..64 {
                        match inputs.try_recv() {
                            Ok(ev) => self.handle_event(ev),
                            Err(_) => break,
                        }
                    }
                }
            }
            self.drain();
            while self.qmp_actions(&mut inputs) {
                self.drain();
            }
        }
        self.shutdown().await;
    }

    /// Like QEMU's colo-compare finalize: release what is still held, then give the
    /// outdev a moment to take the queue.
    async fn shutdown(&mut self) {
        self.engine.set_pass_through(true);
        self.drain();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(1);
        while !self.outq.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let out = self.outq.stats();
        tracing::info!(
            written = out.written_frames,
            unsent = out.queued_frames,
            dropped = out.dropped_frames,
            "stopped"
        );
    }

    fn handle_event(&mut self, ev: Event) {
        match ev {
            Event::Frame(side, frame) => {
                let now = self.now();
                self.engine.handle_frame(now, side, frame);
            }
            Event::Peer(PeerChange { role, up }) => {
                match self.peers.iter_mut().find(|(r, _)| *r == role) {
                    Some(p) => p.1 = up,
                    None => self.peers.push((role, up)),
                }
                let name = if up {
                    "peer-connected"
                } else {
                    "peer-disconnected"
                };
                let mut f = Map::new();
                f.insert("role".into(), json!(role));
                self.event(f, name);
                if role == "secondary_in" {
                    self.secondary_peer(up);
                }
            }
            Event::NotifyCheckpointDone => {
                self.checkpoint_done_by[1] += 1;
                self.checkpoint_done("notify-dev");
            }
            Event::NotifyUnknown => self.notify_unknown += 1,
            Event::Qmp(vm, input) => {
                let now = self.now();
                if let Some(q) = &mut self.qmp {
                    q.machine.handle_input(now, vm, input);
                }
            }
        }
    }

    /// Carry out what the QMP checkpoint driver asked for. Returns whether it did
    /// anything (the engine may then have output to drain).
    fn qmp_actions(&mut self, inputs: &mut mpsc::Receiver<Event>) -> bool {
        let mut any = false;
        loop {
            let Some(action) = self.qmp.as_mut().and_then(|q| q.machine.poll_action()) else {
                return any;
            };
            any = true;
            match action {
                QmpAction::Send { vm, command } => {
                    if let Some(q) = &mut self.qmp {
                        q.send(vm, command);
                    }
                }
                QmpAction::CheckpointDone { pass, requested } => {
                    // QMP and the data sockets are separate channels: take every frame
                    // the readers already delivered (sent before the VMs stopped)
                    // before the flush.
                    while let Ok(ev) = inputs.try_recv() {
                        self.handle_event(ev);
                    }
                    self.checkpoint_done("qmp");
                    let mut f = Map::new();
                    f.insert("epoch".into(), json!(self.engine.epoch()));
                    f.insert("pass".into(), json!(pass));
                    f.insert("requested".into(), json!(requested));
                    self.event(f, "checkpoint-done");
                }
                QmpAction::Failover { survivor, cause } => {
                    self.enter_failover(survivor, cause);
                }
            }
        }
    }

    /// Stop comparing for good: the survivor carries on alone.
    fn enter_failover(&mut self, survivor: Vm, cause: FailoverCause) {
        if self.failed_over {
            return;
        }
        self.failed_over = true;
        let held = self.engine.stats().held_frames;
        self.engine.set_pass_through(true);
        tracing::warn!(
            survivor = survivor.as_str(),
            cause = cause.as_str(),
            released_held = held,
            "failover: no more comparing, output passes through"
        );
        let mut f = Map::new();
        f.insert("survivor".into(), json!(survivor.as_str()));
        f.insert("cause".into(), json!(cause.as_str()));
        f.insert("released_held".into(), json!(held));
        self.event(f, "failover");
        if let Some(q) = &self.qmp {
            q.run_failover_hook(survivor, cause);
        }
    }

    /// Degraded mode: without a secondary there is nothing to compare against, so
    /// primary output goes out unchecked until the secondary is back and a checkpoint
    /// has made it a copy of the primary again.
    fn secondary_peer(&mut self, up: bool) {
        if self.failed_over {
            return;
        }
        if up {
            if self.engine.mode() == Mode::PassThrough {
                self.engine.set_pass_through(false);
                tracing::info!("secondary_in is back: comparing again after the next checkpoint");
                self.event(Map::new(), "secondary-back");
            }
        } else if self.engine.mode() != Mode::PassThrough {
            let held = self.engine.stats().held_frames;
            self.engine.set_pass_through(true);
            tracing::warn!(
                released_held = held,
                "secondary_in lost: degraded mode, releasing primary output unchecked"
            );
            let mut f = Map::new();
            f.insert("reason".into(), json!("secondary_in disconnected"));
            f.insert("released_held".into(), json!(held));
            self.event(f, "degraded");
        }
    }

    fn checkpoint_done(&mut self, from: &'static str) {
        let now = self.now();
        self.engine.handle_checkpoint_done(now);
        tracing::info!(from, epoch = self.engine.epoch(), "checkpoint done");
    }

    fn command(&mut self, cmd: Command) -> Result<Map<String, Value>, String> {
        let mut m = Map::new();
        match cmd {
            Command::CheckpointDone => {
                self.checkpoint_done_by[0] += 1;
                self.checkpoint_done("control");
                m.insert("epoch".into(), json!(self.engine.epoch()));
            }
            Command::Failover if self.qmp.is_some() => {
                let now = self.now();
                let held = self.engine.stats().held_frames;
                let survivor = self.qmp.as_mut().map(|q| q.machine.failover(now));
                m.insert("survivor".into(), json!(survivor.map(Vm::as_str)));
                m.insert("released_held".into(), json!(held));
                m.insert("mode".into(), json!("pass-through"));
            }
            Command::Failover => {
                self.failed_over = true;
                let held = self.engine.stats().held_frames;
                self.engine.set_pass_through(true);
                tracing::warn!(
                    released_held = held,
                    "failover: no more comparing, primary output passes through"
                );
                m.insert("mode".into(), json!(mode_name(self.engine.mode())));
                m.insert("released_held".into(), json!(held));
            }
            Command::Stats => {
                m.insert("stats".into(), self.stats_json());
            }
        }
        Ok(m)
    }

    fn stats_json(&self) -> Value {
        let s = self.engine.stats();
        let out = self.outq.stats();
        let per_reason = |a: &[u64; 7]| {
            colo_core::engine::CheckpointReason::ALL
                .iter()
                .map(|r| (r.as_str().to_owned(), json!(a[r.index()])))
                .collect::<Map<String, Value>>()
        };
        let side = |a: &[u64; 2]| json!({"primary": a[Side::Primary.index()], "secondary": a[Side::Secondary.index()]});
        json!({
            "epoch": self.engine.epoch(),
            "mode": mode_name(self.engine.mode()),
            "failover": self.failed_over,
            "checkpoint_pending": self.engine.checkpoint_pending(),
            "frames_in": side(&s.frames_in),
            "bytes_in": side(&s.bytes_in),
            "released": {"frames": s.released_frames, "bytes": s.released_bytes,
                         "by_flush": s.released_by_flush, "unchecked": s.released_unchecked},
            "held": {"frames": s.held_frames, "bytes": s.held_bytes},
            "divergences": per_reason(&s.divergences),
            "checkpoints": {"requested": per_reason(&s.checkpoints_requested),
                            "coalesced": s.checkpoints_coalesced, "done": s.checkpoints_done},
            "connections": {"active": s.connections_active, "created": s.connections_created,
                            "evicted": s.connections_evicted, "expired": s.connections_expired},
            "outdev": {"queued_frames": out.queued_frames, "queued_bytes": out.queued_bytes,
                       "written_frames": out.written_frames, "written_bytes": out.written_bytes,
                       "dropped_frames": out.dropped_frames, "dropped_bytes": out.dropped_bytes},
            "notify_dev": {"unknown": self.notify_unknown},
            "peers": self.peers.iter().map(|(r, up)| (r.to_string(), json!(up))).collect::<Map<String, Value>>(),
            "qmp": self.qmp.as_ref().map_or(Value::Null, |q| q.stats_json()),
        })
    }

    /// Carry out everything the engine asked for.
    fn drain(&mut self) {
        while let Some(out) = self.engine.poll_output() {
            match out {
                Output::Release(frame) => {
                    let mut wire = BytesMut::new();
                    encode_frame(&frame, self.vnet_hdr, &mut wire);
                    if !self.outq.push(wire.freeze()) {
                        let dropped = self.outq.stats().dropped_frames;
                        if dropped.is_power_of_two() {
                            tracing::warn!(dropped, "outdev buffer full: dropping released frames");
                        }
                    }
                }
                Output::Divergence(d) => {
                    tracing::debug!(divergence = %d, "divergence");
                }
                Output::RequestCheckpoint(req) => {
                    let cause = &req.cause;
                    tracing::info!(id = req.id, reason = %cause.reason(), cause = %cause, "checkpoint requested");
                    let mut f = Map::new();
                    f.insert("id".into(), json!(req.id));
                    f.insert("reason".into(), json!(cause.reason().as_str()));
                    f.insert(
                        "flow".into(),
                        cause
                            .flow
                            .as_ref()
                            .map_or(Value::Null, |k| json!(k.to_string())),
                    );
                    f.insert("epoch".into(), json!(cause.epoch));
                    f.insert("detail".into(), json!(cause.to_string()));
                    self.event(f, "checkpoint-requested");
                    if let Some(tx) = &self.notify {
                        // Full means DO_CHECKPOINTs are already waiting: one more adds nothing.
                        let _ = tx.try_send(());
                    }
                    let now = self.now();
                    if let Some(q) = &mut self.qmp {
                        q.machine.request_checkpoint(now);
                    }
                }
                Output::LimitReached {
                    limit,
                    flow,
                    action,
                } => {
                    tracing::warn!(%limit, flow = ?flow.map(|k| k.to_string()), action, "limit reached");
                    let mut f = Map::new();
                    f.insert("limit".into(), json!(limit.as_str()));
                    f.insert(
                        "flow".into(),
                        flow.map_or(Value::Null, |k| json!(k.to_string())),
                    );
                    f.insert("action".into(), json!(action));
                    self.event(f, "limit-reached");
                }
            }
        }
    }
}

/// The engine mode's name in the control protocol.
fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Compare => "compare",
        Mode::PassThrough => "pass-through",
        Mode::AwaitingCheckpoint => "awaiting-checkpoint",
    }
}
