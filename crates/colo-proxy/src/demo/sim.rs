//! The discrete-event simulation: one client, two VMs, the secondary's rewriter and
//! the compare engine, on a simulated clock that the demo owns (sans-IO: nothing here
//! sleeps, reads a clock or touches a socket).
//!
//! Paths, all FIFO unless said otherwise:
//! - client → proxy → both VMs: the proxy lets the engine observe the client's frame
//!   and mirrors it to the primary as is and to the secondary through the rewriter.
//! - VM → proxy: each VM's NIC has its own jittered latency; the secondary's frames
//!   pass the rewriter first. TCP data segments are sometimes delayed past their
//!   successors (reordering) or sent twice (duplicates).
//! - proxy → client: released frames.
//!
//! When the engine asks for a checkpoint both VMs pause; after the checkpoint delay,
//! frames the primary had already sent reach the proxy, frames the secondary had sent
//! are lost with its old state, the engine and the rewriter are told, and the
//! secondary continues as a copy of the primary.

use colo_core::engine::{
    CheckpointReason, CheckpointRequest, Divergence, Engine, EngineConfig, EngineStats, Limit,
    Output,
};
use colo_core::flow::FlowKey;
use colo_core::rewrite::{Direction, RewriteConfig, RewriteStats, Rewriter};
use colo_core::sim::FlowAddrs;
use colo_core::{Duration, Frame, Instant, Side};

use super::client::Client;
use super::content;
use super::queue::TimedQueue;
use super::rng::Rng;
use super::segment::{datagram_payload, tcp_view};
use super::vm::{Vm, VmProfile, Workload};

/// Client ↔ proxy ↔ VM one-way delay of client frames and released frames.
const CLIENT_LINK: Duration = Duration::from_micros(60);
/// VM → proxy latency range, microseconds.
const VM_LINK_US: (u64, u64) = (20, 120);
/// One TCP data segment in this many is delayed past its successors.
const REORDER_ONE_IN: u64 = 40;
/// How long a reordered segment is delayed.
const REORDER_DELAY: Duration = Duration::from_micros(400);
/// One TCP data segment in this many is sent twice.
const DUPLICATE_ONE_IN: u64 = 60;
/// How long after the original a duplicate arrives.
const DUPLICATE_DELAY: Duration = Duration::from_micros(250);
/// Time between two connection opens.
const CONNECT_STAGGER: Duration = Duration::from_millis(15);
/// Time between two UDP queries.
const QUERY_INTERVAL: Duration = Duration::from_millis(12);
/// A run that has not finished after this much simulated time has stalled.
const MAX_SIM_TIME: Duration = Duration::from_secs(600);

/// The scenario.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// TCP connections.
    pub connections: usize,
    /// Response body bytes per connection.
    pub body_len: usize,
    /// UDP queries.
    pub datagrams: u32,
    /// Seed of every random choice.
    pub seed: u64,
    /// Every how many connections and datagrams the secondary's replies differ.
    pub diverge_every: Option<u32>,
    /// How long a checkpoint takes.
    pub checkpoint_delay: Duration,
    /// Fault injection: lose every Nth released frame before it reaches the client.
    pub drop_released_every: Option<u64>,
}

/// Addresses of UDP flow `n`.
fn udp_addrs(n: u32) -> FlowAddrs {
    FlowAddrs {
        vm: core::net::IpAddr::from([10, 0, 0, 1]),
        vm_port: 53,
        client: core::net::IpAddr::from([10, 2, 0, 1]),
        client_port: 53_000 + n as u16,
        vlan: None,
    }
}

/// Number of UDP flows the queries are spread over.
const UDP_FLOWS: u32 = 2;

/// A completed checkpoint.
#[derive(Debug, Clone)]
pub struct CheckpointRecord {
    /// The engine's request id.
    pub id: u64,
    /// Why it was asked for.
    pub reason: CheckpointReason,
    /// When it was asked for.
    pub requested_at: Instant,
    /// When it completed.
    pub done_at: Instant,
    /// Held primary frames the engine released when it completed.
    pub released: u64,
    /// Secondary frames in flight that were lost with the secondary's old state.
    pub secondary_lost: u64,
}

/// What the simulation reports as it runs.
pub trait Observer {
    /// The engine reported a divergence.
    fn divergence(&mut self, now: Instant, divergence: &Divergence);
    /// The engine asked for a checkpoint.
    fn checkpoint_requested(&mut self, now: Instant, request: &CheckpointRequest);
    /// A checkpoint completed.
    fn checkpoint_done(&mut self, now: Instant, record: &CheckpointRecord);
    /// The engine reached a limit.
    fn limit(&mut self, now: Instant, limit: Limit, flow: Option<FlowKey>, action: &str);
    /// Simulated time advanced (called after every step).
    fn tick(&mut self, now: Instant, stats: &EngineStats);
}

/// Counters of what the simulated network did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetCounters {
    /// TCP segments delayed past their successors.
    pub reordered: u64,
    /// TCP segments sent twice.
    pub duplicated: u64,
    /// Frames the client sent.
    pub client_frames: u64,
    /// Secondary frames dropped by the rewriter (it never drops in this scenario).
    pub rewriter_dropped: u64,
    /// Released frames lost on purpose (fault injection).
    pub released_lost: u64,
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Simulated time at the end.
    pub sim_time: Instant,
    /// The engine's counters.
    pub engine: EngineStats,
    /// The rewriter's counters.
    pub rewrite: RewriteStats,
    /// The network's counters.
    pub net: NetCounters,
    /// Every completed checkpoint.
    pub checkpoints: Vec<CheckpointRecord>,
    /// Client connections that closed both ways.
    pub connections_closed: usize,
    /// UDP flows used.
    pub udp_flows: usize,
    /// Why the run stopped before the client was done, if it did.
    pub stalled: Option<String>,
}

/// Something that happens at a point in simulated time.
#[derive(Debug)]
enum Event {
    /// The client opens connection `n`.
    Open(usize),
    /// The client sends UDP query `n`.
    Query(u32),
    /// A client frame reaches both VMs.
    ToVms(Frame),
    /// A client frame the rewriter held and has now released reaches the secondary.
    ToSecondary(Frame),
    /// A VM may send the next segment of a connection (stale unless `generation` is current).
    Emit {
        side: Side,
        conn: usize,
        generation: u64,
    },
    /// A VM frame reaches the proxy. `epoch` tells frames of a replaced secondary apart.
    ToProxy {
        side: Side,
        frame: Frame,
        epoch: u64,
    },
    /// A released frame reaches the client.
    ToClient(Frame),
    /// The outstanding checkpoint completes.
    CheckpointDone,
}

/// Per connection and side: whether a send is scheduled, and its generation.
#[derive(Debug, Clone, Copy, Default)]
struct EmitSlot {
    generation: u64,
    armed: bool,
}

/// An outstanding checkpoint request.
#[derive(Debug, Clone, Copy)]
struct PendingCheckpoint {
    id: u64,
    reason: CheckpointReason,
    requested_at: Instant,
}

/// The whole simulated world.
#[derive(Debug)]
pub struct Sim {
    cfg: SimConfig,
    now: Instant,
    queue: TimedQueue<Event>,
    engine: Engine,
    rewriter: Rewriter,
    vms: [Vm; 2],
    client: Client,
    /// Per side: when the last frame on its VM → proxy link arrives.
    wire_tail: [Instant; 2],
    emit: Vec<[EmitSlot; 2]>,
    /// Both VMs are paused for a checkpoint.
    paused: bool,
    /// Frames for the VMs that arrived while they were paused.
    deferred: Vec<Event>,
    checkpoint: Option<PendingCheckpoint>,
    /// Checkpoints completed (frames from an older secondary are stale).
    epoch: u64,
    net: NetCounters,
    checkpoints: Vec<CheckpointRecord>,
    /// Frames released so far (for fault injection).
    released: u64,
    /// The primary's answer to every query, as it sent it.
    primary_answers: Vec<Option<Vec<u8>>>,
}

impl Sim {
    /// Build the world for `cfg`.
    #[must_use]
    pub fn new(cfg: SimConfig) -> Self {
        let tcp: Vec<FlowAddrs> = (0..cfg.connections as u32).map(FlowAddrs::v4).collect();
        let udp: Vec<FlowAddrs> = (0..UDP_FLOWS).map(udp_addrs).collect();
        let work = Workload {
            seed: cfg.seed,
            body_len: cfg.body_len,
            diverge_every: cfg.diverge_every,
        };
        let isns = |stream| {
            let mut rng = Rng::derive(cfg.seed, stream);
            (0..cfg.connections)
                .map(|_| rng.next_u32())
                .collect::<Vec<u32>>()
        };
        // The secondary picks its own ISNs; the rewriter maps them to the primary's.
        let vms = [
            Vm::new(VmProfile::primary(), work.clone(), &tcp, &isns(0x40)),
            Vm::new(VmProfile::secondary(), work, &tcp, &isns(0x50)),
        ];
        let mut sim = Self {
            now: Instant::ZERO,
            queue: TimedQueue::default(),
            engine: Engine::new(EngineConfig::default()),
            rewriter: Rewriter::new(RewriteConfig::default()),
            vms,
            client: Client::new(cfg.seed, &tcp, &udp, cfg.datagrams),
            wire_tail: [Instant::ZERO; 2],
            emit: vec![[EmitSlot::default(); 2]; cfg.connections],
            paused: false,
            deferred: Vec::new(),
            checkpoint: None,
            epoch: 0,
            net: NetCounters::default(),
            checkpoints: Vec::new(),
            released: 0,
            primary_answers: vec![None; cfg.datagrams as usize],
            cfg,
        };
        for n in 0..sim.cfg.connections {
            let at = Instant::ZERO + Duration::from_micros(CONNECT_STAGGER.as_micros() * n as u64);
            sim.schedule(at, Event::Open(n));
        }
        for q in 0..sim.cfg.datagrams {
            let at = Instant::ZERO
                + Duration::from_micros(100 + QUERY_INTERVAL.as_micros() * u64::from(q));
            sim.schedule(at, Event::Query(q));
        }
        sim
    }

    /// The client (for verification).
    #[must_use]
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The primary VM (for verification: what it sent).
    #[must_use]
    pub fn primary(&self) -> &Vm {
        &self.vms[Side::Primary.index()]
    }

    /// The primary's answer to query `index`, as it sent it.
    #[must_use]
    pub fn primary_answer(&self, index: u32) -> Option<&[u8]> {
        self.primary_answers.get(index as usize)?.as_deref()
    }

    fn schedule(&mut self, at: Instant, event: Event) {
        self.queue.push(at, event);
    }

    /// Run until the client is done (or the run stalls).
    pub fn run(&mut self, obs: &mut dyn Observer) -> Outcome {
        let mut stalled = None;
        let mut last_timer: Option<Instant> = None;
        loop {
            let event_at = self.queue.next_at();
            let timer = [self.engine.poll_timeout(), self.rewriter.poll_timeout()]
                .into_iter()
                .flatten()
                .min()
                // A deadline that did not move after it was handled is not a reason to
                // loop: wait for the next event instead.
                .filter(|t| last_timer.is_none_or(|l| *t > l));
            let done = self.client.all_done();
            let step_timer = match (event_at, timer) {
                (Some(e), Some(t)) => t < e,
                (Some(_), None) => false,
                (None, Some(_)) if !done => true,
                _ => {
                    if !done {
                        stalled = Some(format!(
                            "nothing left to do at {} with {} of {} connections closed",
                            self.now,
                            self.client.connections_done(),
                            self.cfg.connections
                        ));
                    }
                    break;
                }
            };
            if step_timer {
                let t = timer.unwrap_or(self.now);
                self.now = self.now.max(t);
                last_timer = Some(t);
                self.engine.handle_timeout(self.now);
                self.rewriter.handle_timeout(self.now);
            } else if let Some((at, event)) = self.queue.pop() {
                self.now = self.now.max(at);
                last_timer = None;
                self.handle(event, obs);
            }
            self.drain_rewriter();
            self.drain_engine(obs);
            obs.tick(self.now, &self.engine.stats());
            if self.now.saturating_since(Instant::ZERO) > MAX_SIM_TIME {
                stalled = Some(format!(
                    "still running after {MAX_SIM_TIME} of simulated time, {} of {} connections closed",
                    self.client.connections_done(),
                    self.cfg.connections
                ));
                break;
            }
        }
        Outcome {
            sim_time: self.now,
            engine: self.engine.stats(),
            rewrite: self.rewriter.stats().clone(),
            net: self.net.clone(),
            checkpoints: self.checkpoints.clone(),
            connections_closed: self.client.connections_done(),
            udp_flows: self.cfg.datagrams.min(UDP_FLOWS) as usize,
            stalled,
        }
    }

    fn handle(&mut self, event: Event, obs: &mut dyn Observer) {
        match event {
            Event::Open(n) => {
                if let Some(f) = self.client.open(self.now, n) {
                    self.client_send(f);
                }
            }
            Event::Query(q) => {
                if let Some(f) = self.client.query(q) {
                    self.client_send(f);
                }
            }
            Event::ToVms(frame) if self.paused => self.deferred.push(Event::ToVms(frame)),
            Event::ToSecondary(frame) if self.paused => {
                self.deferred.push(Event::ToSecondary(frame));
            }
            Event::ToVms(frame) => {
                let mut mirrored = frame.clone();
                self.deliver(Side::Primary, &frame);
                let verdict =
                    self.rewriter
                        .rewrite_frame(self.now, Direction::ToSecondary, &mut mirrored);
                if verdict.forward() {
                    self.deliver(Side::Secondary, &mirrored);
                }
            }
            Event::ToSecondary(frame) => self.deliver(Side::Secondary, &frame),
            Event::Emit {
                side,
                conn,
                generation,
            } => {
                let slot = &mut self.emit[conn][side.index()];
                if slot.generation != generation {
                    return;
                }
                slot.armed = false;
                if self.paused {
                    return; // re-armed when the checkpoint completes
                }
                if let Some(frame) = self.vms[side.index()].send_next(self.now, conn) {
                    self.wire_send(side, frame, true);
                }
                self.arm(side, conn);
            }
            Event::ToProxy { side, frame, epoch } => {
                if side == Side::Secondary && epoch != self.epoch {
                    return;
                }
                tracing::trace!(
                    side = side.name(),
                    len = frame.data.len(),
                    "frame reaches the proxy"
                );
                self.engine.handle_frame(self.now, side, frame);
            }
            Event::ToClient(frame) => {
                for reply in self.client.on_released(self.now, &frame) {
                    self.client_send(reply);
                }
            }
            Event::CheckpointDone => self.complete_checkpoint(obs),
        }
    }

    /// The client sends a frame: the proxy sees it and mirrors it to both VMs.
    fn client_send(&mut self, frame: Frame) {
        self.net.client_frames += 1;
        self.engine.observe_client_frame(self.now, &frame);
        self.schedule(self.now + CLIENT_LINK, Event::ToVms(frame));
    }

    /// A client frame reaches one VM (already translated for the secondary).
    fn deliver(&mut self, side: Side, frame: &Frame) {
        let now = self.now;
        let vm = &mut self.vms[side.index()];
        if let Some(seg) = tcp_view(frame) {
            let Some(conn) = self.client.conn_of(&seg.key) else {
                return;
            };
            let replies = vm.on_client_tcp(now, conn, &seg);
            for r in replies {
                self.wire_send(side, r, false);
            }
            self.arm(side, conn);
        } else if let Some((_, payload)) = datagram_payload(frame) {
            let Some(index) = content::udp_index(&payload) else {
                return;
            };
            let addrs = udp_addrs(index % UDP_FLOWS);
            let reply = vm.on_client_datagram(now, &addrs, index);
            if side == Side::Primary
                && let Some(slot) = self.primary_answers.get_mut(index as usize)
            {
                *slot = datagram_payload(&reply).map(|(_, p)| p);
            }
            self.wire_send(side, reply, false);
        }
    }

    /// Schedule the next send of `conn` on `side` if it has one and none is scheduled.
    fn arm(&mut self, side: Side, conn: usize) {
        let s = side.index();
        if self.paused || self.emit[conn][s].armed {
            return;
        }
        let Some(ready) = self.vms[s].ready_at(self.now, conn) else {
            return;
        };
        let at = ready.max(self.now + self.vms[s].pace());
        let slot = &mut self.emit[conn][s];
        slot.armed = true;
        let generation = slot.generation;
        self.schedule(
            at,
            Event::Emit {
                side,
                conn,
                generation,
            },
        );
    }

    /// Put a VM's frame on its link to the proxy.
    fn wire_send(&mut self, side: Side, mut frame: Frame, data: bool) {
        let s = side.index();
        if side == Side::Secondary {
            let verdict =
                self.rewriter
                    .rewrite_frame(self.now, Direction::FromSecondary, &mut frame);
            if !verdict.forward() {
                self.net.rewriter_dropped += 1;
                return;
            }
        }
        let rng = self.vms[s].rng();
        let latency = Duration::from_micros(rng.range(VM_LINK_US.0, VM_LINK_US.1));
        let reorder = data && rng.one_in(REORDER_ONE_IN);
        let duplicate = data && rng.one_in(DUPLICATE_ONE_IN);
        let at = (self.now + latency).max(self.wire_tail[s] + Duration::from_micros(1));
        self.wire_tail[s] = at;
        let epoch = self.epoch;
        if duplicate {
            self.net.duplicated += 1;
            let copy = frame.clone();
            self.schedule(
                at + DUPLICATE_DELAY,
                Event::ToProxy {
                    side,
                    frame: copy,
                    epoch,
                },
            );
        }
        let at = if reorder {
            self.net.reordered += 1;
            at + REORDER_DELAY
        } else {
            at
        };
        self.schedule(at, Event::ToProxy { side, frame, epoch });
    }

    /// Client frames the rewriter held and now releases go to the secondary.
    fn drain_rewriter(&mut self) {
        while let Some(frame) = self.rewriter.poll_to_secondary() {
            self.schedule(self.now, Event::ToSecondary(frame));
        }
    }

    fn drain_engine(&mut self, obs: &mut dyn Observer) {
        while let Some(output) = self.engine.poll_output() {
            match output {
                Output::Release(frame) => {
                    self.released += 1;
                    if self
                        .cfg
                        .drop_released_every
                        .is_some_and(|n| self.released.is_multiple_of(n))
                    {
                        self.net.released_lost += 1;
                        continue;
                    }
                    self.schedule(self.now + CLIENT_LINK, Event::ToClient(frame));
                }
                Output::Divergence(d) => obs.divergence(self.now, &d),
                Output::RequestCheckpoint(req) => {
                    obs.checkpoint_requested(self.now, &req);
                    self.checkpoint = Some(PendingCheckpoint {
                        id: req.id,
                        reason: req.cause.reason(),
                        requested_at: self.now,
                    });
                    // COLO stops both VMs for the checkpoint.
                    tracing::debug!(id = req.id, "checkpoint requested: pausing both VMs");
                    self.paused = true;
                    self.schedule(self.now + self.cfg.checkpoint_delay, Event::CheckpointDone);
                }
                Output::LimitReached {
                    limit,
                    flow,
                    action,
                } => obs.limit(self.now, limit, flow, action),
            }
        }
    }

    fn complete_checkpoint(&mut self, obs: &mut dyn Observer) {
        let Some(pending) = self.checkpoint.take() else {
            return;
        };
        // Frames already on the wire: the primary's reach the proxy before the
        // checkpoint is declared done (its state includes having sent them); the
        // secondary's are lost with the state it is about to give up.
        let mut secondary_lost = 0;
        for (at, event) in self.queue.take_all() {
            match event {
                Event::ToProxy {
                    side: Side::Primary,
                    frame,
                    ..
                } => self.engine.handle_frame(self.now, Side::Primary, frame),
                Event::ToProxy {
                    side: Side::Secondary,
                    ..
                } => secondary_lost += 1,
                event => self.queue.push(at, event),
            }
        }
        self.drain_engine(obs);
        let flushed_before = self.engine.stats().released_by_flush;
        self.engine.handle_checkpoint_done(self.now);
        self.rewriter.checkpoint_done();
        let (primary, secondary) = self.vms.split_at_mut(1);
        secondary[0].become_copy_of(&primary[0]);
        tracing::debug!(
            id = pending.id,
            secondary_lost,
            deferred = self.deferred.len(),
            "checkpoint done: secondary is a copy of the primary, resuming both VMs"
        );
        self.epoch += 1;
        self.paused = false;
        let record = CheckpointRecord {
            id: pending.id,
            reason: pending.reason,
            requested_at: pending.requested_at,
            done_at: self.now,
            released: self.engine.stats().released_by_flush - flushed_before,
            secondary_lost,
        };
        obs.checkpoint_done(self.now, &record);
        self.checkpoints.push(record);
        for event in core::mem::take(&mut self.deferred) {
            self.schedule(self.now, event);
        }
        for conn in 0..self.cfg.connections {
            for side in [Side::Primary, Side::Secondary] {
                let slot = &mut self.emit[conn][side.index()];
                slot.generation += 1;
                slot.armed = false;
                self.arm(side, conn);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts what it is told.
    #[derive(Debug, Default)]
    struct Count {
        divergences: u64,
        requests: u64,
        done: u64,
        ticks: u64,
    }

    impl Observer for Count {
        fn divergence(&mut self, _: Instant, _: &Divergence) {
            self.divergences += 1;
        }
        fn checkpoint_requested(&mut self, _: Instant, _: &CheckpointRequest) {
            self.requests += 1;
        }
        fn checkpoint_done(&mut self, _: Instant, _: &CheckpointRecord) {
            self.done += 1;
        }
        fn limit(&mut self, _: Instant, _: Limit, _: Option<FlowKey>, _: &str) {}
        fn tick(&mut self, _: Instant, _: &EngineStats) {
            self.ticks += 1;
        }
    }

    fn config(diverge_every: Option<u32>) -> SimConfig {
        SimConfig {
            connections: 3,
            body_len: 30_000,
            datagrams: 3,
            seed: 5,
            diverge_every,
            checkpoint_delay: Duration::from_millis(10),
            drop_released_every: None,
        }
    }

    #[test]
    fn identical_vms_finish_without_checkpoints() {
        let mut sim = Sim::new(config(None));
        let mut obs = Count::default();
        let out = sim.run(&mut obs);
        assert_eq!(out.stalled, None);
        assert_eq!((obs.divergences, obs.requests), (0, 0));
        assert!(obs.ticks > 0);
        assert_eq!(out.connections_closed, 3);
        assert_eq!(out.engine.released_frames, out.engine.frames_in[0]);
        assert_eq!(out.engine.held_frames, 0);
        assert!(sim.client().all_done());
        for conn in 0..3 {
            let sent = sim.primary().response(conn).unwrap();
            assert_eq!(sim.client().report(conn).unwrap().data, &sent[..]);
        }
    }

    #[test]
    fn divergences_are_checkpointed_and_the_run_completes() {
        let mut sim = Sim::new(config(Some(1)));
        let mut obs = Count::default();
        let out = sim.run(&mut obs);
        assert_eq!(out.stalled, None);
        assert!(obs.requests > 0);
        assert_eq!(obs.done, obs.requests);
        assert_eq!(out.checkpoints.len() as u64, obs.requests);
        assert_eq!(out.engine.checkpoints_done, obs.requests);
        assert!(sim.client().all_done());
    }

    #[test]
    fn a_lost_release_stalls_the_run() {
        let mut cfg = config(None);
        cfg.drop_released_every = Some(10);
        let mut sim = Sim::new(cfg);
        let out = sim.run(&mut Count::default());
        assert!(out.net.released_lost > 0);
        assert!(out.stalled.is_some());
        assert!(!sim.client().all_done());
    }
}
