//! The compare engine.
//!
//! Feed it both VMs' output with [`Engine::handle_frame`]; drain [`Engine::poll_output`]
//! for frames to release, divergences and checkpoint requests; call
//! [`Engine::handle_timeout`] at [`Engine::poll_timeout`]; call
//! [`Engine::handle_checkpoint_done`] when a checkpoint has completed. Frames that
//! arrived together (one read) go in with [`Engine::handle_frames`], which overlaps their
//! cache misses on a large connection table (module `batch`). A shell that has
//! classified a frame already passes it with [`Engine::handle_classified`]; the offline
//! replay of two independent captures completes checkpoints with
//! [`Engine::handle_checkpoint_resync`] (module `replay_mode`).
//!
//! ```
//! use colo_core::engine::{Engine, EngineConfig, Output};
//! use colo_core::{Frame, Instant, Side};
//!
//! let mut engine = Engine::new(EngineConfig::default());
//! let frame = Frame::ethernet(vec![0u8; 60]); // an unparsable frame: compared raw
//! engine.handle_frame(Instant::ZERO, Side::Primary, frame.clone());
//! assert!(engine.poll_output().is_none()); // held until the secondary says the same
//! engine.handle_frame(Instant::ZERO, Side::Secondary, frame.clone());
//! assert_eq!(engine.poll_output(), Some(Output::Release(frame)));
//! ```

mod batch;
mod checkpoint;
mod config;
mod conn;
mod datagram;
mod output;
mod policy;
mod replay_mode;
mod stats;
mod table;
mod tcp;
mod window;

use std::collections::VecDeque;

pub use config::{EngineConfig, SeqAlignment};
pub use output::{
    CheckpointReason, CheckpointRequest, Close, Divergence, DivergenceKind, Limit, Output,
};
pub use policy::{FlowMatch, FlowPolicy, FlowPolicyError, FlowRule, FlowRuleState, MatchProto};
pub use stats::{DropReason, EngineStats};

use checkpoint::{CheckpointGate, GateDecision};
use conn::{Conn, DatagramConn, HeldFrame, Proto, TcpConn};
use policy::PolicyTable;
use table::{ConnKey, ConnTable};

use crate::classify::{Classified, L4, classify};
use crate::flow::{FlowKey, FlowProto};
use crate::frame::{Frame, Side};
use crate::reassembly::StreamReassembler;
use crate::time::{Duration, Instant};

/// Whether the engine compares, or releases primary output unchecked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Normal operation.
    Compare,
    /// Degraded: the secondary is gone; primary frames are released as they come.
    PassThrough,
    /// The secondary is back; still passing through until the next checkpoint
    /// makes it a copy of the primary again.
    AwaitingCheckpoint,
}

/// The sans-IO compare engine. See the module documentation.
#[derive(Debug)]
pub struct Engine {
    config: EngineConfig,
    table: ConnTable,
    outputs: VecDeque<Output>,
    stats: EngineStats,
    gate: CheckpointGate,
    mode: Mode,
    epoch: u64,
    now: Instant,
    arrival: u64,
    total_bytes: usize,
    /// Primary frames of connections the table had no room for; released at the
    /// checkpoint that the overflow asked for.
    overflow: VecDeque<HeldFrame>,
    total_limit_reported: bool,
    policies: PolicyTable,
    /// The batched path's group buffer, kept to reuse its allocation.
    batch: Vec<batch::Pending>,
}

impl Engine {
    /// A new engine.
    #[must_use]
    pub fn new(config: EngineConfig) -> Self {
        let mut policies = PolicyTable::default();
        for rule in &config.flow_rules {
            // Beyond max_flow_rules the rest are ignored; shells check the count first.
            let _ = policies.set(*rule, config.max_flow_rules);
        }
        Self {
            policies,
            gate: CheckpointGate::new(config.checkpoint_min_interval),
            config,
            table: ConnTable::default(),
            outputs: VecDeque::new(),
            stats: EngineStats::default(),
            mode: Mode::Compare,
            epoch: 0,
            now: Instant::ZERO,
            arrival: 0,
            total_bytes: 0,
            overflow: VecDeque::new(),
            total_limit_reported: false,
            batch: Vec::new(),
        }
    }

    /// The configuration in force.
    #[must_use]
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Counters, with gauges brought up to date.
    #[must_use]
    pub fn stats(&self) -> EngineStats {
        let mut s = self.stats.clone();
        s.connections_active = self.table.len() as u64;
        s.held_bytes = self.total_bytes as u64;
        s
    }

    /// Number of completed checkpoints since the engine started.
    #[must_use]
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The current mode.
    #[must_use]
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// A checkpoint request is outstanding (or deferred).
    #[must_use]
    pub fn checkpoint_pending(&self) -> bool {
        self.gate.outstanding()
    }

    /// Next unit of work for the shell.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When [`Engine::handle_timeout`] must next be called, if ever.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.table.next_timer(), self.gate.deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn advance(&mut self, now: Instant) {
        // Time never goes backwards inside the engine (capture timestamps may).
        self.now = self.now.max(now);
    }

    /// Feed one frame produced by a VM.
    pub fn handle_frame(&mut self, now: Instant, side: Side, frame: Frame) {
        let classified = classify(frame.ethernet_bytes());
        self.handle_trusted(now, side, frame, classified);
    }

    /// [`Engine::handle_frame`] for a frame the caller has already classified (the
    /// offline replay classifies every frame to route it), so it is not parsed twice.
    /// `classified` must be `classify(frame.ethernet_bytes())` of this very frame: its
    /// ranges index into the frame's bytes.
    pub fn handle_classified(
        &mut self,
        now: Instant,
        side: Side,
        frame: Frame,
        classified: Classified,
    ) {
        // A classification that does not fit this frame would index outside it:
        // classify again rather than trust it.
        let classified = if fits(&classified, frame.ethernet_bytes().len()) {
            classified
        } else {
            classify(frame.ethernet_bytes())
        };
        self.handle_trusted(now, side, frame, classified);
    }

    /// The frame with its own fresh classification (the live path checks nothing twice).
    fn handle_trusted(&mut self, now: Instant, side: Side, frame: Frame, classified: Classified) {
        self.handle_probed(now, side, frame, classified, None);
    }

    /// [`Engine::handle_trusted`], where `probed`, if given, is what
    /// `self.table.lookup` returns for the frame's key right now (the batched path
    /// probed the index ahead and the table has not changed since).
    fn handle_probed(
        &mut self,
        now: Instant,
        side: Side,
        frame: Frame,
        classified: Classified,
        probed: Option<Option<u32>>,
    ) {
        self.advance(now);
        let s = side.index();
        self.stats.frames_in[s] += 1;
        self.stats.bytes_in[s] += frame.data.len() as u64;
        if self.mode != Mode::Compare {
            match side {
                Side::Primary => {
                    let c = &classified;
                    if let (Some(t), Some(slot)) = (
                        c.tcp(),
                        self.table.lookup(&ConnKey {
                            flow: c.key,
                            dir: c.dir,
                        }),
                    ) && let Some(conn) = self.table.get_mut(slot)
                    {
                        tcp::note_primary_position(conn, t);
                    }
                    self.stats.released_unchecked += 1;
                    self.release(frame);
                }
                Side::Secondary => self.stats.drop(side, DropReason::SecondaryDiscarded, 1),
            }
            return;
        }
        if !self.policies.is_empty() && self.pass_by_policy(&classified.key, side, &frame) {
            return;
        }
        let key = ConnKey {
            flow: classified.key,
            dir: classified.dir,
        };
        let found = match probed {
            Some(found) => found,
            None => self.table.lookup(&key),
        };
        let Some(slot) = found.or_else(|| self.create(key, side, &frame)) else {
            return;
        };
        let before = self.table.get(slot).map_or(0, Conn::bytes);
        match classified.l4 {
            L4::Tcp(meta) => {
                self.stats.tcp_payload_in[s] += meta.payload_len() as u64;
                self.tcp_frame(slot, side, frame, &meta);
            }
            L4::Datagram(meta) => self.datagram_frame(slot, side, frame, meta),
        }
        self.after_activity(slot, before);
    }

    /// Feed a frame the client sent towards the VMs. Optional: it lets the engine see
    /// the client's FIN and RST, so closed connections leave the table sooner.
    pub fn observe_client_frame(&mut self, now: Instant, frame: &Frame) {
        self.observe_client_classified(now, &classify(frame.ethernet_bytes()));
    }

    /// [`Engine::observe_client_frame`] for a frame the caller has already classified.
    pub fn observe_client_classified(&mut self, now: Instant, c: &Classified) {
        self.advance(now);
        let Some(meta) = c.tcp() else { return };
        let dir = match c.dir {
            crate::flow::FlowDir::LoToHi => crate::flow::FlowDir::HiToLo,
            crate::flow::FlowDir::HiToLo => crate::flow::FlowDir::LoToHi,
        };
        let Some(slot) = self.table.lookup(&ConnKey { flow: c.key, dir }) else {
            return;
        };
        if let Some(tcp) = self.table.get_mut(slot).and_then(Conn::tcp) {
            tcp.client_fin |= meta.flags.contains(crate::classify::TcpFlags::FIN);
            tcp.client_rst |= meta.flags.contains(crate::classify::TcpFlags::RST);
        }
        self.schedule(slot);
    }

    /// Process every deadline that has passed: compare timeouts, deferred checkpoint
    /// requests, idle and closed connections.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.advance(now);
        if let Some(cause) = self.gate.poll_deferred(self.now) {
            self.emit_request(cause);
        }
        while let Some(slot) = self.table.pop_due(self.now) {
            self.check_deadlines(slot);
        }
    }

    /// A checkpoint has completed: the secondary is now a copy of the primary.
    /// Every held primary frame is released in arrival order, every secondary frame is
    /// dropped, and a new epoch starts for every stream.
    pub fn handle_checkpoint_done(&mut self, now: Instant) {
        self.advance(now);
        self.flush();
        self.epoch += 1;
        self.stats.checkpoints_done += 1;
        self.gate.done(self.now);
        if self.mode == Mode::AwaitingCheckpoint {
            self.mode = Mode::Compare;
        }
    }

    /// Enter or leave degraded mode. Entering releases everything held and passes
    /// primary frames through unchecked; leaving waits for the next checkpoint before
    /// comparing again, since only a checkpoint makes the secondary a copy again.
    pub fn set_pass_through(&mut self, on: bool) {
        match (on, self.mode) {
            (true, _) => {
                self.flush();
                self.mode = Mode::PassThrough;
            }
            (false, Mode::PassThrough) => self.mode = Mode::AwaitingCheckpoint,
            (false, _) => {}
        }
    }

    /// The rules in force, with their counters.
    #[must_use]
    pub fn flow_policies(&self) -> &[FlowRuleState] {
        self.policies.rules()
    }

    /// Set the policy of the flows `matcher` names (replacing a rule with the same
    /// match); returns the policy that match had before. Setting `pass` releases what
    /// matching connections hold now, in arrival order, and forgets them; from then on
    /// their primary output is released as it comes and their secondary output is
    /// discarded. Setting `compare` again compares from the next frame on: if the VMs
    /// are not in step on such a flow, that is a divergence and a checkpoint resyncs it.
    pub fn set_flow_policy(
        &mut self,
        matcher: FlowMatch,
        policy: FlowPolicy,
    ) -> Result<FlowPolicy, FlowPolicyError> {
        let before = self
            .policies
            .set(FlowRule { matcher, policy }, self.config.max_flow_rules)?;
        if policy == FlowPolicy::Pass {
            self.forget_passed_connections();
        }
        Ok(before)
    }

    /// Whether the frame's flow is passed by policy (and the frame dealt with).
    fn pass_by_policy(&mut self, key: &FlowKey, side: Side, frame: &Frame) -> bool {
        let Some(i) = self.policies.lookup(key) else {
            return false;
        };
        let Some(rule) = self.policies.get_mut(i) else {
            return false;
        };
        if rule.rule.policy != FlowPolicy::Pass {
            return false;
        }
        match side {
            Side::Primary => {
                rule.released_frames += 1;
                rule.released_bytes += frame.data.len() as u64;
                self.stats.released_by_policy += 1;
                self.release(frame.clone());
            }
            Side::Secondary => {
                rule.discarded_frames += 1;
                self.stats.drop(side, DropReason::Policy, 1);
            }
        }
        true
    }

    /// Release what connections now passed by policy hold, and drop them from the table.
    fn forget_passed_connections(&mut self) {
        let passed: Vec<u32> = self
            .table
            .slots()
            .filter(|&slot| {
                self.table.get(slot).is_some_and(|c| {
                    self.policies
                        .lookup(&c.key.flow)
                        .and_then(|i| self.policies.rules().get(i))
                        .is_some_and(|r| r.rule.policy == FlowPolicy::Pass)
                })
            })
            .collect();
        let mut released: Vec<HeldFrame> = Vec::new();
        for slot in passed {
            let Some(mut conn) = self.table.remove(slot) else {
                continue;
            };
            self.total_bytes = self.total_bytes.saturating_sub(conn.bytes());
            released.extend(conn.held.drain());
            self.stats.connections_expired += 1;
        }
        released.sort_unstable_by_key(|h| h.arrival);
        self.stats.held_frames -= self.stats.held_frames.min(released.len() as u64);
        self.stats.released_by_policy += released.len() as u64;
        for held in released {
            self.release(held.frame);
        }
    }

    /// A new connection for `key`, which the table does not hold; `None` if the table
    /// is full and nothing can be evicted (the frame is then dealt with).
    fn create(&mut self, key: ConnKey, side: Side, frame: &Frame) -> Option<u32> {
        if self.table.len() >= self.config.max_connections {
            if let Some(victim) = self.table.pop_evictable() {
                self.table.remove(victim);
                self.stats.connections_evicted += 1;
            } else {
                self.limit_reached(
                    Limit::Connections,
                    Some(key.flow),
                    "holding the frame for a checkpoint",
                );
                match side {
                    Side::Primary => {
                        let held = self.hold(frame.clone(), conn::Need::Nothing);
                        self.total_bytes += held.frame.data.len();
                        self.overflow.push_back(held);
                    }
                    Side::Secondary => self.stats.drop(side, DropReason::TableFull, 1),
                }
                return None;
            }
        }
        let proto = if key.flow.proto == FlowProto::Tcp {
            let limit = self.config.max_conn_bytes;
            Proto::Tcp(TcpConn {
                sides: Default::default(),
                streams: [
                    StreamReassembler::new(0, limit),
                    StreamReassembler::new(0, limit),
                ],
                client_fin: false,
                client_rst: false,
                parked: Vec::new(),
                parked_bytes: 0,
            })
        } else {
            Proto::Datagram(DatagramConn::default())
        };
        self.stats.connections_created += 1;
        Some(self.table.insert(key, Conn::new(key, proto, self.now)))
    }

    fn hold(&mut self, frame: Frame, need: conn::Need) -> HeldFrame {
        self.arrival += 1;
        self.stats.held_frames += 1;
        HeldFrame {
            frame,
            arrival: self.arrival,
            since: self.now,
            need,
        }
    }

    /// Check a frame that would hold `cost` more bytes against the caps. `false`
    /// means it was dropped (counted, reported, and a checkpoint asked for).
    fn admit(&mut self, slot: u32, side: Side, cost: usize) -> bool {
        let Some(conn) = self.table.get(slot) else {
            return false;
        };
        let limit =
            if side == Side::Primary && conn.held.len() >= self.config.max_held_frames_per_conn {
                Some(Limit::HeldFramesPerConn)
            } else if conn.bytes() + cost > self.config.max_conn_bytes {
                Some(Limit::ConnBytes)
            } else if self.total_bytes + cost > self.config.max_total_bytes {
                Some(Limit::TotalBytes)
            } else {
                None
            };
        let Some(limit) = limit else { return true };
        self.stats.drop(side, DropReason::QueueFull, 1);
        self.conn_limit(
            slot,
            limit,
            "dropping the frame and asking for a checkpoint",
        );
        false
    }

    /// Report a limit on one connection (once per epoch) and mark it for checkpoint.
    fn conn_limit(&mut self, slot: u32, limit: Limit, action: &'static str) {
        let Some(conn) = self.table.get_mut(slot) else {
            return;
        };
        let flow = conn.key.flow;
        let first = !conn.limit_reported;
        conn.limit_reported = true;
        conn.diverged = true;
        if first || limit == Limit::TotalBytes && !self.total_limit_reported {
            self.total_limit_reported |= limit == Limit::TotalBytes;
            self.limit_reached(limit, Some(flow), action);
        } else {
            self.stats.limit(limit);
        }
    }

    fn limit_reached(&mut self, limit: Limit, flow: Option<FlowKey>, action: &'static str) {
        self.stats.limit(limit);
        self.outputs.push_back(Output::LimitReached {
            limit,
            flow,
            action,
        });
        self.divergence(flow, DivergenceKind::LimitReached { limit });
    }

    fn divergence(&mut self, flow: Option<FlowKey>, kind: DivergenceKind) {
        let d = Divergence {
            at: self.now,
            epoch: self.epoch,
            flow,
            kind,
        };
        self.stats.divergences[d.reason().index()] += 1;
        let decision = self.gate.on_divergence(self.now, &d);
        self.outputs.push_back(Output::Divergence(d.clone()));
        match decision {
            GateDecision::RequestNow => self.emit_request(d),
            GateDecision::Coalesced | GateDecision::Deferred => {
                self.stats.checkpoints_coalesced += 1
            }
        }
    }

    fn emit_request(&mut self, cause: Divergence) {
        self.stats.checkpoints_requested[cause.reason().index()] += 1;
        let id = self.gate.take_id();
        self.outputs
            .push_back(Output::RequestCheckpoint(CheckpointRequest { id, cause }));
    }

    fn release(&mut self, frame: Frame) {
        self.stats.released_frames += 1;
        self.stats.released_bytes += frame.data.len() as u64;
        self.outputs.push_back(Output::Release(frame));
    }

    /// Bookkeeping after a frame touched a connection: memory, timers, quiescence.
    fn after_activity(&mut self, slot: u32, bytes_before: usize) {
        let Some(conn) = self.table.get_mut(slot) else {
            return;
        };
        conn.last_seen = self.now;
        if let Proto::Tcp(tcp) = &conn.proto {
            conn.buffered_bytes = tcp.streams[0].buffered_bytes()
                + tcp.streams[1].buffered_bytes()
                + tcp.parked_bytes;
        }
        let after = conn.bytes();
        self.total_bytes = (self.total_bytes + after).saturating_sub(bytes_before);
        let quiescent = conn.is_quiescent();
        if quiescent {
            self.table.mark_quiescent(slot);
        }
        self.schedule(slot);
    }

    /// Arm the connection's next deadline: a compare timeout if anything waits,
    /// otherwise its expiry.
    fn schedule(&mut self, slot: u32) {
        let Some(conn) = self.table.get(slot) else {
            return;
        };
        let at = match self.pending_since(conn) {
            Some(since) => since + self.config.compare_timeout,
            None => conn.last_seen + self.expiry_timeout(conn),
        };
        if conn.diverged && at <= self.now {
            // Past its expiry, but it cannot go before the checkpoint it asked for
            // (which reschedules every connection): arming now would make
            // `handle_timeout` pop it again at once, forever.
            return;
        }
        self.table.arm(slot, at);
    }

    /// The oldest thing waiting for the other side, unless a checkpoint is already due.
    fn pending_since(&self, conn: &Conn) -> Option<Instant> {
        if conn.diverged {
            return None;
        }
        match (
            conn.held.front().map(|h| h.since),
            conn.secondary_pending_since,
        ) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn expiry_timeout(&self, conn: &Conn) -> Duration {
        match &conn.proto {
            Proto::Tcp(tcp) => {
                let vm = &tcp.sides[Side::Primary.index()];
                if vm.rst_at.is_some() || tcp.client_rst || vm.fin_at.is_some() && tcp.client_fin {
                    self.config.close_linger
                } else if vm.fin_at.is_some() {
                    self.config.half_close_timeout
                } else {
                    self.config.idle_timeout
                }
            }
            Proto::Datagram(_) => self.config.idle_timeout,
        }
    }

    fn check_deadlines(&mut self, slot: u32) {
        let Some(conn) = self.table.get(slot) else {
            return;
        };
        let timeout = self.config.compare_timeout;
        if !conn.diverged {
            let held = conn
                .held
                .front()
                .map(|h| h.since)
                .filter(|s| *s + timeout <= self.now);
            let unmatched = conn
                .secondary_pending_since
                .filter(|s| *s + timeout <= self.now);
            let flow = conn.key.flow;
            let kind = if let Some(since) = held {
                Some(DivergenceKind::SecondaryTooSlow {
                    waited: self.now.saturating_since(since),
                })
            } else {
                unmatched.map(|since| DivergenceKind::SecondaryUnmatched {
                    waited: self.now.saturating_since(since),
                })
            };
            if let Some(kind) = kind {
                if let Some(conn) = self.table.get_mut(slot) {
                    conn.diverged = true;
                }
                self.divergence(Some(flow), kind);
            }
        }
        let Some(conn) = self.table.get(slot) else {
            return;
        };
        if conn.is_quiescent() {
            if conn.last_seen + self.expiry_timeout(conn) <= self.now {
                self.table.remove(slot);
                self.stats.connections_expired += 1;
                return;
            }
            // Quiet when its timer came due (at most `compare_timeout` after it last
            // held anything): give back the buffers kept for reuse. An active
            // connection reaches this once per timer period at most, so the
            // reallocation this may cost it later is negligible.
            if let Some(conn) = self.table.get_mut(slot) {
                conn.trim();
            }
        }
        self.schedule(slot);
    }

    /// Release every held primary frame in arrival order, discard all secondary
    /// state, and restart every stream at the primary's position.
    fn flush(&mut self) {
        let mut flushed: Vec<HeldFrame> = self.overflow.drain(..).collect();
        let slots: Vec<u32> = self.table.slots().collect();
        for slot in slots {
            let Some(conn) = self.table.get_mut(slot) else {
                continue;
            };
            flushed.extend(conn.held.drain());
            let discarded = match &mut conn.proto {
                Proto::Tcp(tcp) => tcp.start_epoch(),
                Proto::Datagram(dg) => dg.start_epoch(),
            };
            conn.held_bytes = 0;
            conn.buffered_bytes = 0;
            conn.diverged = false;
            conn.limit_reported = false;
            conn.secondary_pending_since = None;
            self.stats
                .drop(Side::Secondary, DropReason::SecondaryDiscarded, discarded);
            self.table.mark_quiescent(slot);
            self.schedule(slot);
        }
        flushed.sort_unstable_by_key(|h| h.arrival);
        self.stats.held_frames = 0;
        self.stats.released_by_flush += flushed.len() as u64;
        for held in flushed {
            self.release(held.frame);
        }
        self.total_bytes = 0;
        self.total_limit_reported = false;
    }
}

/// Whether every range of `c` lies within a frame of `len` bytes.
fn fits(c: &Classified, len: usize) -> bool {
    match &c.l4 {
        L4::Tcp(t) => {
            t.payload.start <= t.payload.end
                && t.payload.end <= len
                && t.tcp_offset.saturating_add(t.tcp_header_len) <= len
        }
        L4::Datagram(d) => d.body.start <= d.body.end && d.body.end <= len,
    }
}

/// Index of the first differing byte of two equally long slices.
fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    if a == b {
        return None;
    }
    // Narrow down in 64-byte chunks, then bytewise.
    let chunk = a.chunks(64).zip(b.chunks(64)).position(|(x, y)| x != y)?;
    let start = chunk * 64;
    a[start..]
        .iter()
        .zip(&b[start..])
        .position(|(x, y)| x != y)
        .map(|i| start + i)
}

#[cfg(test)]
mod tests;
