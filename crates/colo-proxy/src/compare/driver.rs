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

use colo_core::engine::{DropReason, Engine, Mode, Output};
use colo_core::{Instant, Side};
use serde_json::{Map, Value, json};
use tokio::sync::{broadcast, mpsc};

use super::Event;
use crate::qmp::{FailoverCause, QmpAction, QmpLink, Vm};
use crate::shell::control::{Command, event_line};
use crate::shell::driver::{Peers, Role};
use crate::shell::engine_view;
use crate::shell::metrics::Exposition;
use crate::shell::outq::{FrameOut, OutQueue};
use crate::shell::{Clock, PeerChange};

/// Everything the driver talks to.
#[derive(Debug)]
pub struct Driver {
    /// The engine.
    pub engine: Engine,
    /// Released frames on their way to the outdev (or the client port).
    pub out: FrameOut,
    /// The endpoint role whose peer is the secondary (`secondary_in`, `link`): its
    /// loss means degraded mode.
    pub secondary_role: &'static str,
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
    pub peers: Peers,
    /// The QMP checkpoint driver, when `--qmp-primary`/`--qmp-secondary` are given.
    pub qmp: Option<QmpLink>,
}

impl Role for Driver {
    type Event = Event;

    fn clock(&self) -> Clock {
        self.clock
    }

    fn deadline(&self) -> Option<Instant> {
        let qmp = self.qmp.as_ref().and_then(|q| q.machine.poll_timeout());
        match (self.engine.poll_timeout(), qmp) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn on_timeout(&mut self, now: Instant) {
        self.engine.handle_timeout(now);
        if let Some(q) = &mut self.qmp {
            q.machine.handle_timeout(now);
        }
    }

    fn on_event(&mut self, event: Event) {
        self.handle_event(event);
    }

    fn on_command(&mut self, command: Command) -> Result<Map<String, Value>, String> {
        self.command(command)
    }

    fn after_wake(&mut self, inputs: &mut mpsc::Receiver<Event>) {
        self.drain();
        while self.qmp_actions(inputs) {
            self.drain();
        }
    }

    fn output_queues(&self) -> Vec<(&'static str, OutQueue)> {
        vec![(self.out.role, self.out.queue.clone())]
    }

    /// Like QEMU's colo-compare finalize: release what is still held.
    fn on_stop(&mut self) {
        self.engine.set_pass_through(true);
    }
}

impl Driver {
    fn now(&self) -> Instant {
        self.clock.now()
    }

    /// Push an event to control clients.
    pub(crate) fn event(&self, fields: Map<String, Value>, name: &str) {
        // No receivers is fine: nobody is listening on the control socket.
        let _ = self.events.send(event_line(name, fields));
    }

    /// Carry out one event from the I/O tasks.
    pub(crate) fn handle_event(&mut self, ev: Event) {
        match ev {
            Event::Frames(side, frames) => {
                // One clock read per batch: the frames arrived in one read.
                let now = self.now();
                self.engine.handle_frames(now, side, frames);
            }
            Event::Peer(PeerChange { role, up }) => {
                let name = self.peers.set(role, up);
                let mut f = Map::new();
                f.insert("role".into(), json!(role));
                self.event(f, name);
                if role == self.secondary_role {
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
        while let Some(action) = self.poll_qmp_action() {
            any = true;
            if matches!(action, QmpAction::CheckpointDone { .. }) {
                // QMP and the data sockets are separate channels: take every frame
                // the readers already delivered (sent before the VMs stopped)
                // before the flush.
                while let Ok(ev) = inputs.try_recv() {
                    self.handle_event(ev);
                }
            }
            self.qmp_action(action);
        }
        any
    }

    /// The QMP checkpoint driver's next action, if any.
    pub(crate) fn poll_qmp_action(&mut self) -> Option<QmpAction> {
        self.qmp.as_mut().and_then(|q| q.machine.poll_action())
    }

    /// Carry out one QMP action. For `CheckpointDone`, the caller has already taken
    /// the frames the readers delivered (the flush point).
    pub(crate) fn qmp_action(&mut self, action: QmpAction) {
        match action {
            QmpAction::Send { vm, command } => {
                if let Some(q) = &mut self.qmp {
                    q.send(vm, command);
                }
            }
            QmpAction::CheckpointDone { pass, requested } => {
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
                tracing::info!(
                    role = self.secondary_role,
                    "secondary is back: comparing again after the next checkpoint"
                );
                self.event(Map::new(), "secondary-back");
            }
        } else if self.engine.mode() != Mode::PassThrough {
            let held = self.engine.stats().held_frames;
            self.engine.set_pass_through(true);
            tracing::warn!(
                role = self.secondary_role,
                released_held = held,
                "secondary lost: degraded mode, releasing primary output unchecked"
            );
            let mut f = Map::new();
            f.insert(
                "reason".into(),
                json!(format!("{} disconnected", self.secondary_role)),
            );
            f.insert("released_held".into(), json!(held));
            self.event(f, "degraded");
        }
    }

    pub(crate) fn checkpoint_done(&mut self, from: &'static str) {
        let now = self.now();
        self.engine.handle_checkpoint_done(now);
        tracing::info!(from, epoch = self.engine.epoch(), "checkpoint done");
    }

    /// Carry out a control command.
    pub(crate) fn command(&mut self, cmd: Command) -> Result<Map<String, Value>, String> {
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
                m.insert(
                    "mode".into(),
                    json!(engine_view::mode_name(self.engine.mode())),
                );
                m.insert("released_held".into(), json!(held));
            }
            Command::Stats => {
                m.insert("stats".into(), self.stats_json());
            }
            Command::SetFlowPolicy { matcher, policy } => {
                return engine_view::set_flow_policy(&mut self.engine, matcher, policy);
            }
            Command::GetFlowPolicy => return Ok(engine_view::get_flow_policy(&self.engine)),
            Command::Metrics => return Ok(crate::shell::metrics::reply(self.metrics())),
        }
        Ok(m)
    }

    /// The counters of `stats`, in Prometheus text format.
    pub(crate) fn metrics(&self) -> Exposition {
        let mut e = Exposition::new();
        engine_view::metrics(&mut e, &self.engine);
        e.out_queues(&[(self.out.role, self.out.queue.stats())]);
        e.counter1(
            "colo_notify_unknown_total",
            "Notify-device messages not understood.",
            self.notify_unknown,
        );
        e.peers(self.peers.as_slice());
        e
    }

    /// The `stats` reply's object.
    pub(crate) fn stats_json(&self) -> Value {
        let s = self.engine.stats();
        let per_reason = |a: &[u64; 7]| {
            colo_core::engine::CheckpointReason::ALL
                .iter()
                .map(|r| (r.as_str().to_owned(), json!(a[r.index()])))
                .collect::<Map<String, Value>>()
        };
        let drops = |side: Side| {
            DropReason::ALL
                .iter()
                .map(|r| (r.as_str().to_owned(), json!(s.dropped(side, *r))))
                .collect::<Map<String, Value>>()
        };
        let side = |a: &[u64; 2]| json!({"primary": a[Side::Primary.index()], "secondary": a[Side::Secondary.index()]});
        json!({
            "epoch": self.engine.epoch(),
            "mode": engine_view::mode_name(self.engine.mode()),
            "failover": self.failed_over,
            "checkpoint_pending": self.engine.checkpoint_pending(),
            "frames_in": side(&s.frames_in),
            "bytes_in": side(&s.bytes_in),
            "released": {"frames": s.released_frames, "bytes": s.released_bytes,
                         "by_flush": s.released_by_flush, "unchecked": s.released_unchecked,
                         "by_policy": s.released_by_policy},
            "dropped": {"primary": drops(Side::Primary), "secondary": drops(Side::Secondary)},
            "flow_policies": engine_view::rules_json(&self.engine),
            "held": {"frames": s.held_frames, "bytes": s.held_bytes},
            "divergences": per_reason(&s.divergences),
            "checkpoints": {"requested": per_reason(&s.checkpoints_requested),
                            "coalesced": s.checkpoints_coalesced, "done": s.checkpoints_done},
            "connections": {"active": s.connections_active, "created": s.connections_created,
                            "evicted": s.connections_evicted, "expired": s.connections_expired},
            self.out.role: self.out.stats_json(),
            "notify_dev": {"unknown": self.notify_unknown},
            "peers": self.peers.to_json(),
            "qmp": self.qmp.as_ref().map_or(Value::Null, |q| q.stats_json()),
        })
    }

    /// Carry out everything the engine asked for.
    pub(crate) fn drain(&mut self) {
        // Released frames go to the output queue together, under one lock.
        let mut released = Vec::new();
        while let Some(out) = self.engine.poll_output() {
            match out {
                Output::Release(frame) => released.push(frame),
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
        self.out.push_all(released);
    }
}
