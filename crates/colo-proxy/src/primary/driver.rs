//! The primary's driver: `compare`'s driver (engine, releases, checkpoint events,
//! degraded mode) plus the client → primary VM path and the mirror to the link.

use colo_core::{Frame, Instant, Side};
use serde_json::{Map, Value, json};

use crate::compare;
use crate::link::proto::Message;
use crate::link::{self, LinkEvent, RoleEvent as Event};
use crate::qmp::QmpAction;
use crate::shell::Clock;
use crate::shell::control::Command;
use crate::shell::driver::Role;
use crate::shell::outq::{FrameOut, OutQueue};

/// Counters of the client → secondary mirror.
#[derive(Debug, Clone, Copy, Default)]
pub struct MirrorStats {
    /// Client frames (and bytes) received on the client port.
    pub client_frames: u64,
    /// Bytes of those.
    pub client_bytes: u64,
    /// Client frames queued for the link.
    pub mirrored: u64,
    /// Client frames not mirrored because the link was down or after failover (the
    /// secondary catches up at the next checkpoint).
    pub skipped: u64,
    /// Client frames the link queue had no room for: the secondary missed input, so
    /// a checkpoint is requested.
    pub overflow: u64,
    /// Checkpoint requests made because of overflow.
    pub overflow_checkpoints: u64,
    /// Link messages a primary does not expect (client frames, checkpoint-done).
    pub unexpected: u64,
    /// Link peers refused or dropped for protocol errors.
    pub protocol_errors: u64,
}

/// Everything the primary's driver owns.
#[derive(Debug)]
pub struct Driver {
    /// The compare side; its output is the client port.
    pub compare: compare::driver::Driver,
    /// Frames on their way to the primary VM.
    pub pvm: FrameOut,
    /// Encoded link messages on their way to the secondary.
    pub link: OutQueue,
    /// The link is up (hello exchanged).
    pub link_up: bool,
    /// Mirror counters.
    pub mirror: MirrorStats,
}

impl Driver {
    /// A frame from the client port (`now`: read once per batch).
    fn client_frame(&mut self, now: Instant, frame: Frame) {
        self.mirror.client_frames += 1;
        self.mirror.client_bytes += frame.data.len() as u64;
        self.compare.engine.observe_client_frame(now, &frame);
        self.pvm.push(&frame);
        if !self.link_up || self.compare.failed_over {
            self.mirror.skipped += 1;
            return;
        }
        if link::push_message(&self.link, &Message::ClientFrame(frame)) {
            self.mirror.mirrored += 1;
            return;
        }
        self.mirror.overflow += 1;
        if self.mirror.overflow.is_power_of_two() {
            tracing::warn!(
                dropped = self.mirror.overflow,
                "link buffer full: the secondary misses client input"
            );
        }
        self.request_overflow_checkpoint();
    }

    /// The secondary missed client input: only a checkpoint makes it a copy again.
    /// Asked once until the next checkpoint completes.
    fn request_overflow_checkpoint(&mut self) {
        if self.mirror.overflow_checkpoints > self.compare.engine.stats().checkpoints_done {
            return;
        }
        self.mirror.overflow_checkpoints = self.compare.engine.stats().checkpoints_done + 1;
        tracing::warn!("checkpoint requested: mirrored client frames were dropped");
        let mut f = Map::new();
        f.insert("id".into(), Value::Null);
        f.insert("reason".into(), json!("mirror-overflow"));
        f.insert("flow".into(), Value::Null);
        f.insert("epoch".into(), json!(self.compare.engine.epoch()));
        f.insert(
            "detail".into(),
            json!(format!(
                "the link buffer was full: {} client frames not mirrored to the secondary",
                self.mirror.overflow
            )),
        );
        self.compare.event(f, "checkpoint-requested");
    }

    fn link_event(&mut self, ev: LinkEvent) {
        match ev {
            LinkEvent::Messages(msgs) => {
                let now = self.compare.clock.now();
                for msg in msgs {
                    match msg {
                        Message::SecondaryFrame(frame) => {
                            self.compare
                                .engine
                                .handle_frame(now, Side::Secondary, frame);
                        }
                        other => {
                            self.mirror.unexpected += 1;
                            tracing::debug!(
                                message = other.name(),
                                "unexpected link message ignored"
                            );
                        }
                    }
                }
            }
            LinkEvent::ProtocolError(why) => {
                self.mirror.protocol_errors += 1;
                self.compare.event(link::error_fields(why), "link-error");
            }
        }
    }
}

impl Driver {
    /// Carry out what the QMP checkpoint driver asked for (as `compare` does; the
    /// flush point first takes every frame the readers already delivered, through
    /// this role's own event handling). Returns whether it did anything.
    fn qmp_actions(&mut self, inputs: &mut tokio::sync::mpsc::Receiver<Event>) -> bool {
        let mut any = false;
        while let Some(action) = self.compare.poll_qmp_action() {
            any = true;
            if matches!(action, QmpAction::CheckpointDone { .. }) {
                while let Ok(ev) = inputs.try_recv() {
                    self.on_event(ev);
                }
            }
            let done = matches!(action, QmpAction::CheckpointDone { .. });
            self.compare.qmp_action(action);
            if done {
                // The secondary proxy learns of it as from `checkpoint-done`.
                let epoch = self.compare.engine.epoch();
                link::push_message(&self.link, &Message::CheckpointDone(epoch));
            }
        }
        any
    }
}

impl Role for Driver {
    type Event = Event;

    fn clock(&self) -> Clock {
        self.compare.clock
    }

    fn deadline(&self) -> Option<Instant> {
        // The engine's and the QMP checkpoint driver's.
        Role::deadline(&self.compare)
    }

    fn on_timeout(&mut self, now: Instant) {
        self.compare.on_timeout(now);
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Client(frames) => {
                let now = self.compare.clock.now();
                for frame in frames {
                    self.client_frame(now, frame);
                }
            }
            Event::Vm(frames) => self
                .compare
                .handle_event(compare::Event::Frames(Side::Primary, frames)),
            Event::Link(ev) => self.link_event(ev),
            Event::Peer(p) => {
                if p.role == link::ROLE {
                    self.link_up = p.up;
                }
                self.compare.handle_event(compare::Event::Peer(p));
            }
            Event::Qmp(vm, input) => self.compare.handle_event(compare::Event::Qmp(vm, input)),
        }
    }

    fn on_command(&mut self, command: Command) -> Result<Map<String, Value>, String> {
        let mut reply = self.compare.command(command)?;
        match command {
            Command::CheckpointDone => {
                // Queued even while the link is down: it goes out when it is back.
                let epoch = self.compare.engine.epoch();
                let sent = link::push_message(&self.link, &Message::CheckpointDone(epoch));
                reply.insert("forwarded".into(), json!(sent));
            }
            Command::Stats => {
                if let Some(Value::Object(stats)) = reply.get_mut("stats") {
                    let m = &self.mirror;
                    stats.insert(
                        "client_in".into(),
                        json!({"frames": m.client_frames, "bytes": m.client_bytes}),
                    );
                    stats.insert(
                        "mirror".into(),
                        json!({"mirrored": m.mirrored, "skipped": m.skipped,
                               "overflow": m.overflow, "overflow_checkpoints": m.overflow_checkpoints}),
                    );
                    stats.insert(
                        "link".into(),
                        json!({"up": self.link_up, "queue": self.link.stats().to_json(),
                               "unexpected": m.unexpected, "protocol_errors": m.protocol_errors}),
                    );
                    stats.insert("pvm".into(), self.pvm.stats_json());
                }
            }
            Command::Failover
            | Command::SetFlowPolicy { .. }
            | Command::GetFlowPolicy
            | Command::Metrics => {}
        }
        Ok(reply)
    }

    fn after_wake(&mut self, inputs: &mut tokio::sync::mpsc::Receiver<Event>) {
        self.compare.drain();
        while self.qmp_actions(inputs) {
            self.compare.drain();
        }
    }

    fn output_queues(&self) -> Vec<(&'static str, OutQueue)> {
        let mut q = self.compare.output_queues();
        q.push((self.pvm.role, self.pvm.queue.clone()));
        q.push((link::ROLE, self.link.clone()));
        q
    }

    fn on_stop(&mut self) {
        self.compare.on_stop();
    }
}
