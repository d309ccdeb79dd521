//! The secondary's driver: the single task that owns the [`Rewriter`], routes frames
//! between the link, the secondary VM and (after failover) the client, and carries
//! out checkpoint-done and failover.

use std::net::IpAddr;

use colo_core::announce::{VmAddresses, tcp_dup_ack};
use colo_core::rewrite::{Direction, Rewriter, Verdict};
use colo_core::{Frame, Instant};
use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

use crate::link::proto::Message;
use crate::link::{self, LinkEvent, RoleEvent as Event};
use crate::shell::control::{Command, event_line};
use crate::shell::driver::{Peers, Role};
use crate::shell::outq::{FrameOut, OutQueue};
use crate::shell::{Clock, PeerChange};

/// Where a checkpoint-done came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DoneSource {
    /// Forwarded by the primary over the link.
    Link,
    /// This proxy's control socket.
    Control,
}

/// Counters of the secondary.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counters {
    /// Client frames received over the link (frames, bytes).
    pub link_client: [u64; 2],
    /// Frames from the secondary VM (frames, bytes).
    pub svm_in: [u64; 2],
    /// Frames from the client port after failover (frames, bytes).
    pub client_in: [u64; 2],
    /// Client-port frames before failover, ignored (the primary serves the client).
    pub client_ignored: u64,
    /// Link client frames after failover, ignored (the client port is the source now).
    pub link_ignored: u64,
    /// VM output not sent: link down (before failover).
    pub svm_link_down: u64,
    /// VM output the link queue had no room for.
    pub link_overflow: u64,
    /// Frames the rewriter dropped (hold budget used up).
    pub rewriter_dropped: u64,
    /// Checkpoints applied to the rewriter, by source: link, control.
    pub checkpoints: [u64; 2],
    /// Checkpoint-dones recognised as the other source's twin and not applied again.
    pub checkpoints_paired: u64,
    /// The last epoch the primary forwarded.
    pub last_link_epoch: u64,
    /// Link messages a secondary does not expect.
    pub unexpected: u64,
    /// Link peers refused or dropped for protocol errors.
    pub protocol_errors: u64,
}

/// Everything the secondary's driver owns.
#[derive(Debug)]
pub struct Driver {
    /// The rewriter.
    pub rewriter: Rewriter,
    /// Frames on their way to the secondary VM.
    pub svm: FrameOut,
    /// Frames on their way to the client (after failover).
    pub client: Option<FrameOut>,
    /// Encoded link messages on their way to the primary.
    pub link: OutQueue,
    /// The link is up.
    pub link_up: bool,
    /// Events for control clients.
    pub events: broadcast::Sender<String>,
    /// The clock.
    pub clock: Clock,
    /// Which endpoint roles have a peer now.
    pub peers: Peers,
    /// A failover took effect.
    pub failed_over: bool,
    /// The VM's addresses, for the failover announcements.
    pub addresses: VmAddresses,
    /// A control and a link checkpoint-done this close together are one checkpoint.
    pub pair_window: std::time::Duration,
    /// The last checkpoint-done applied: where from, when.
    pub last_done: Option<(DoneSource, tokio::time::Instant)>,
    /// Counters.
    pub counters: Counters,
}

impl Driver {
    fn event(&self, fields: Map<String, Value>, name: &str) {
        let _ = self.events.send(event_line(name, fields));
    }

    /// Client traffic on its way into the secondary VM (`now`: read once per batch).
    fn client_into_svm(&mut self, now: Instant, mut frame: Frame) {
        let verdict = self
            .rewriter
            .rewrite_frame(now, Direction::ToSecondary, &mut frame);
        // Released held frames are older than this one: they go first.
        self.drain_released();
        self.forward(verdict, &frame, Direction::ToSecondary);
    }

    fn forward(&mut self, verdict: Verdict, frame: &Frame, dir: Direction) {
        match verdict {
            Verdict::Rewritten | Verdict::Unchanged(_) => match dir {
                Direction::ToSecondary => {
                    self.svm.push(frame);
                }
                Direction::FromSecondary => self.route_svm_output(frame),
            },
            Verdict::Held => tracing::trace!(?dir, "held until the secondary's ISN is known"),
            Verdict::Drop(why) => {
                self.counters.rewriter_dropped += 1;
                tracing::debug!(?dir, ?why, "frame dropped");
            }
        }
    }

    /// The secondary VM's rewritten output: to the primary, or after failover to the client.
    fn route_svm_output(&mut self, frame: &Frame) {
        if self.failed_over {
            if let Some(client) = &self.client {
                client.push(frame);
            }
            return;
        }
        if !self.link_up {
            // The primary compares in degraded mode meanwhile; a checkpoint resyncs us.
            self.counters.svm_link_down += 1;
            return;
        }
        if !link::push_message(&self.link, &Message::SecondaryFrame(frame.clone())) {
            self.counters.link_overflow += 1;
            if self.counters.link_overflow.is_power_of_two() {
                tracing::warn!(
                    dropped = self.counters.link_overflow,
                    "link buffer full: secondary output dropped (the primary will see a divergence)"
                );
            }
        }
    }

    fn drain_released(&mut self) {
        while let Some(frame) = self.rewriter.poll_to_secondary() {
            self.svm.push(&frame);
        }
    }

    fn svm_frame(&mut self, now: Instant, mut frame: Frame) {
        self.counters.svm_in[0] += 1;
        self.counters.svm_in[1] += frame.data.len() as u64;
        self.addresses.learn(frame.ethernet_bytes());
        let verdict = self
            .rewriter
            .rewrite_frame(now, Direction::FromSecondary, &mut frame);
        self.drain_released();
        self.forward(verdict, &frame, Direction::FromSecondary);
    }

    fn link_event(&mut self, ev: LinkEvent) {
        match ev {
            LinkEvent::Messages(msgs) => {
                let now = self.clock.now();
                for msg in msgs {
                    self.link_message(now, msg);
                }
            }
            LinkEvent::ProtocolError(why) => {
                self.counters.protocol_errors += 1;
                self.event(link::error_fields(why), "link-error");
            }
        }
    }

    fn link_message(&mut self, now: Instant, msg: Message) {
        match msg {
            Message::ClientFrame(frame) => {
                self.counters.link_client[0] += 1;
                self.counters.link_client[1] += frame.data.len() as u64;
                if self.failed_over {
                    self.counters.link_ignored += 1;
                } else {
                    self.client_into_svm(now, frame);
                }
            }
            Message::CheckpointDone(epoch) => {
                self.counters.last_link_epoch = epoch;
                self.checkpoint_done(DoneSource::Link);
            }
            other => {
                self.counters.unexpected += 1;
                tracing::debug!(message = other.name(), "unexpected link message ignored");
            }
        }
    }

    /// Reset the rewriter's offsets, unless this is the twin of a checkpoint-done
    /// from the other source just applied. Returns whether it was applied.
    fn checkpoint_done(&mut self, source: DoneSource) -> bool {
        let now = tokio::time::Instant::now();
        if let Some((prev, at)) = self.last_done
            && prev != source
            && now.duration_since(at) < self.pair_window
        {
            self.last_done = None;
            self.counters.checkpoints_paired += 1;
            tracing::info!(
                ?source,
                "checkpoint done (already applied from the other source)"
            );
            return false;
        }
        self.rewriter.checkpoint_done();
        self.drain_released();
        self.last_done = Some((source, now));
        self.counters.checkpoints[match source {
            DoneSource::Link => 0,
            DoneSource::Control => 1,
        }] += 1;
        tracing::info!(
            ?source,
            checkpoints = self.rewriter.stats().checkpoints,
            "checkpoint done: offsets reset"
        );
        true
    }

    /// The primary is gone: face the client directly and restart its traffic.
    fn failover(&mut self) -> Result<Map<String, Value>, String> {
        let Some(client) = self.client.clone() else {
            return Err(
                "this secondary has no --client port, so it cannot face the client; restart it with --client PORT".into(),
            );
        };
        let mut m = Map::new();
        if self.failed_over {
            m.insert("already".into(), json!(true));
            return Ok(m);
        }
        self.failed_over = true;
        self.rewriter.failover();
        self.drain_released();
        let (mut arp, mut na) = (Vec::new(), Vec::new());
        for (ip, _) in self.addresses.addresses() {
            match ip {
                IpAddr::V4(v4) => arp.push(v4.to_string()),
                IpAddr::V6(v6) => na.push(v6.to_string()),
            }
        }
        for frame in self.addresses.announcements() {
            client.push(&frame);
        }
        let mut conns = Vec::new();
        for c in self.rewriter.live_connections() {
            let dup = tcp_dup_ack(&c);
            for _ in 0..3 {
                client.push(&dup);
            }
            conns.push(json!(format!("{} -> {}", c.vm, c.client)));
        }
        tracing::warn!(
            arp = arp.len(),
            na = na.len(),
            connections = conns.len(),
            unsent_to_primary = self.link.stats().queued_frames,
            "failover: facing the client directly; addresses announced, duplicate ACKs sent"
        );
        // Output queued for the dead primary was never compared nor seen by the
        // client; it is not replayed (the VM's own retransmission covers TCP).
        m.insert(
            "unsent_to_primary".into(),
            json!(self.link.stats().queued_frames),
        );
        m.insert("gratuitous_arp".into(), json!(arp));
        m.insert("neighbour_advertisement".into(), json!(na));
        m.insert("dup_ack_connections".into(), Value::Array(conns));
        m.insert(
            "dup_acks".into(),
            json!(3 * m["dup_ack_connections"].as_array().map_or(0, Vec::len)),
        );
        self.event(m.clone(), "failover-done");
        Ok(m)
    }

    fn stats_json(&self) -> Value {
        let c = &self.counters;
        let s = self.rewriter.stats();
        let pair = |a: [u64; 2]| json!({"frames": a[0], "bytes": a[1]});
        json!({
            "epoch": s.checkpoints,
            "failover": self.failed_over,
            "connections": self.rewriter.len(),
            "offsets_learned": s.offsets_learned,
            "frames_in": {"client_via_link": pair(c.link_client), "svm": pair(c.svm_in),
                          "client_port": pair(c.client_in)},
            "ignored": {"client_port_before_failover": c.client_ignored,
                        "link_after_failover": c.link_ignored},
            "svm_output_link_down": c.svm_link_down,
            "link_overflow": c.link_overflow,
            "rewritten": s.rewritten,
            "held": {"frames": s.held, "released": s.released, "expired": s.held_expired,
                     "dropped": c.rewriter_dropped},
            "checkpoints": {"link": c.checkpoints[0], "control": c.checkpoints[1],
                            "paired": c.checkpoints_paired, "last_link_epoch": c.last_link_epoch},
            "addresses": self.addresses.addresses().iter().map(|(ip, _)| ip.to_string()).collect::<Vec<_>>(),
            "link": {"up": self.link_up, "queue": self.link.stats().to_json(),
                     "unexpected": c.unexpected, "protocol_errors": c.protocol_errors},
            "svm": self.svm.stats_json(),
            "client": self.client.as_ref().map_or(Value::Null, FrameOut::stats_json),
            "peers": self.peers.to_json(),
        })
    }
}

impl Role for Driver {
    type Event = Event;

    fn clock(&self) -> Clock {
        self.clock
    }

    fn deadline(&self) -> Option<Instant> {
        self.rewriter.poll_timeout()
    }

    fn on_timeout(&mut self, now: Instant) {
        self.rewriter.handle_timeout(now);
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Vm(frames) => {
                let now = self.clock.now();
                for frame in frames {
                    self.svm_frame(now, frame);
                }
            }
            Event::Client(frames) => {
                let now = self.clock.now();
                for frame in frames {
                    if self.failed_over {
                        self.counters.client_in[0] += 1;
                        self.counters.client_in[1] += frame.data.len() as u64;
                        self.client_into_svm(now, frame);
                    } else {
                        self.counters.client_ignored += 1;
                    }
                }
            }
            Event::Link(ev) => self.link_event(ev),
            Event::Peer(PeerChange { role, up }) => {
                if role == link::ROLE {
                    self.link_up = up;
                }
                let name = self.peers.set(role, up);
                let mut f = Map::new();
                f.insert("role".into(), json!(role));
                self.event(f, name);
            }
            // The secondary runs no QMP checkpoint driver: nothing sends these.
            Event::Qmp(..) => {}
        }
    }

    fn on_command(&mut self, command: Command) -> Result<Map<String, Value>, String> {
        let mut m = Map::new();
        match command {
            Command::CheckpointDone => {
                let applied = self.checkpoint_done(DoneSource::Control);
                m.insert("applied".into(), json!(applied));
                m.insert("epoch".into(), json!(self.rewriter.stats().checkpoints));
            }
            Command::Failover => return self.failover(),
            Command::Stats => {
                m.insert("stats".into(), self.stats_json());
            }
            Command::SetFlowPolicy { .. } | Command::GetFlowPolicy => {
                return Err(
                    "the secondary has no flow policy (every connection must be \
                            rewritten); set flow policies on the primary"
                        .to_owned(),
                );
            }
            Command::Metrics => {
                let mut e = crate::shell::metrics::Exposition::new();
                crate::rewrite::driver::rewriter_metrics(&mut e, &self.rewriter);
                let queues: Vec<_> = self
                    .output_queues()
                    .into_iter()
                    .map(|(role, q)| (role, q.stats()))
                    .collect();
                e.out_queues(&queues);
                e.peers(self.peers.as_slice());
                return Ok(crate::shell::metrics::reply(e));
            }
        }
        Ok(m)
    }

    fn after_wake(&mut self, _inputs: &mut tokio::sync::mpsc::Receiver<Event>) {
        self.drain_released();
    }

    fn output_queues(&self) -> Vec<(&'static str, OutQueue)> {
        let mut q = vec![
            (self.svm.role, self.svm.queue.clone()),
            (link::ROLE, self.link.clone()),
        ];
        if let Some(c) = &self.client {
            q.push((c.role, c.queue.clone()));
        }
        q
    }
}
