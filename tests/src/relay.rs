//! The relay: what the primary and secondary proxies do, in one thread, between three
//! TAP devices.
//!
//! ```text
//!  client tap ──┬───────────────────────────────────────────────▶ primary tap
//!               └─ Rewriter(ToSecondary) ─ poll_to_secondary ───▶ secondary tap
//!  primary tap ───────────────────────────── Engine(Primary) ──┐
//!  secondary tap ── Rewriter(FromSecondary) ─ Engine(Secondary)┤
//!                                   Output::Release ───────────┴─▶ client tap
//! ```
//!
//! One thread owns the [`Engine`] and the [`Rewriter`] (both are single-owner sans-IO
//! state machines) and blocks in `poll(2)` (mio) on the three non-blocking TAP fds,
//! with the engine's and rewriter's next deadlines as the timeout. Frames are handled
//! one at a time, in the order they are read, round-robin across the taps. Every
//! divergence, checkpoint request and limit is recorded as a [`RelayEvent`];
//! [`Relay::stop`] returns a [`RelayReport`] with the events and all counters.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::thread::{self, JoinHandle};

use colo_core::Seq;
use colo_core::classify::{TcpFlags, classify};
use colo_core::engine::{
    CheckpointRequest, Divergence, Engine, EngineConfig, EngineStats, Limit, Output,
};
use colo_core::flow::FlowKey;
use colo_core::rewrite::{
    Direction, Offsets, OpenKind, RewriteConfig, RewriteStats, Rewriter, Verdict,
};
use colo_core::{Frame, Instant, Side};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::tap::Tap;

/// The three taps the relay serves.
#[derive(Debug)]
pub struct RelayTaps {
    /// The client's NIC.
    pub client: Tap,
    /// The primary VM's NIC.
    pub primary: Tap,
    /// The secondary VM's NIC.
    pub secondary: Tap,
}

/// One of the relay's taps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TapRole {
    /// The client's tap.
    Client = 0,
    /// The primary VM's tap.
    Primary = 1,
    /// The secondary VM's tap.
    Secondary = 2,
}

impl TapRole {
    const ALL: [Self; 3] = [Self::Client, Self::Primary, Self::Secondary];

    /// Lower-case name.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Primary => "primary",
            Self::Secondary => "secondary",
        }
    }
}

/// What the relay does when the engine asks for a checkpoint. Real stacks in
/// namespaces cannot be checkpointed, so either choice is a stand-in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointPolicy {
    /// Record the request and do nothing: the engine keeps holding what it holds (it
    /// releases at its own timeouts only after a checkpoint). For tests that expect
    /// no request at all.
    Record,
    /// Record the request and at once tell the engine and the rewriter that a
    /// checkpoint completed, so that traffic continues. The secondary is **not** a
    /// copy of the primary afterwards, so its streams really differ from then on.
    CompleteImmediately,
}

/// Relay settings.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// The compare engine's settings.
    pub engine: EngineConfig,
    /// The rewriter's settings.
    pub rewrite: RewriteConfig,
    /// What to do on a checkpoint request.
    pub checkpoint: CheckpointPolicy,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            engine: EngineConfig::default(),
            rewrite: RewriteConfig::default(),
            checkpoint: CheckpointPolicy::Record,
        }
    }
}

/// Something that happened in the relay, for assertions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayEvent {
    /// The engine reported a divergence.
    Divergence(Divergence),
    /// The engine asked for a checkpoint.
    CheckpointRequested(CheckpointRequest),
    /// The relay completed a checkpoint ([`CheckpointPolicy::CompleteImmediately`]).
    CheckpointCompleted {
        /// The request it answered.
        id: u64,
    },
    /// The engine reached a limit.
    LimitReached {
        /// Which limit.
        limit: Limit,
        /// The flow, if any.
        flow: Option<FlowKey>,
        /// What the engine did.
        action: &'static str,
    },
    /// The rewriter told the relay to drop a frame.
    RewriterDropped {
        /// Which way the frame was going.
        direction: Direction,
        /// The verdict.
        verdict: Verdict,
    },
    /// Waiting for the taps failed.
    PollError(String),
    /// Reading or writing a tap failed (other than "would block").
    TapError {
        /// The tap.
        tap: TapRole,
        /// Whether the failure was a write (`true`) or a read.
        write: bool,
        /// The error.
        error: String,
    },
}

/// An event and when it happened (relay clock: time since the relay started).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimedEvent {
    /// When.
    pub at: Instant,
    /// What.
    pub event: RelayEvent,
}

/// Offsets the rewriter learned for one connection (recorded when
/// [`RewriteStats::offsets_learned`] went up, so they survive the entry's expiry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LearnedOffsets {
    /// The connection.
    pub flow: FlowKey,
    /// How the rewriter saw it open.
    pub open: OpenKind,
    /// What it learned.
    pub offsets: Offsets,
    /// When.
    pub at: Instant,
}

/// Frame counters of one tap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TapCounters {
    /// Frames read from the tap (sent by its namespace).
    pub frames_in: u64,
    /// Bytes read.
    pub bytes_in: u64,
    /// Frames written to the tap (delivered into its namespace).
    pub frames_out: u64,
    /// Bytes written.
    pub bytes_out: u64,
    /// Failed reads and writes.
    pub errors: u64,
}

/// The headline fields of a frame, for reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameSummary {
    /// Its flow.
    pub flow: FlowKey,
    /// Sequence number, acknowledgement, flags and payload length, for TCP.
    pub tcp: Option<(Seq, Seq, TcpFlags, usize)>,
    /// Frame length.
    pub len: usize,
}

impl FrameSummary {
    /// Summarise an Ethernet frame.
    #[must_use]
    pub fn of(eth: &[u8]) -> Self {
        let c = classify(eth);
        Self {
            flow: c.key,
            tcp: c.tcp().map(|t| (t.seq, t.ack, t.flags, t.payload_len())),
            len: eth.len(),
        }
    }
}

impl fmt::Display for FrameSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({} B)", self.flow, self.len)?;
        if let Some((seq, ack, flags, len)) = self.tcp {
            let names = [
                (TcpFlags::SYN, "S"),
                (TcpFlags::FIN, "F"),
                (TcpFlags::RST, "R"),
                (TcpFlags::PSH, "P"),
                (TcpFlags::ACK, "."),
            ];
            let flags: String = names
                .iter()
                .filter(|(fl, _)| flags.contains(*fl))
                .map(|(_, n)| *n)
                .collect();
            write!(f, " [{flags}] seq {} ack {} len {len}", seq.0, ack.0)?;
        }
        Ok(())
    }
}

/// Everything the relay saw, returned by [`Relay::stop`].
#[derive(Debug, Clone)]
pub struct RelayReport {
    /// Every event, in order.
    pub events: Vec<TimedEvent>,
    /// The engine's counters at stop.
    pub engine: EngineStats,
    /// The engine's epoch (completed checkpoints) at stop.
    pub engine_epoch: u64,
    /// The rewriter's counters at stop.
    pub rewriter: RewriteStats,
    /// Offsets learned, in order.
    pub learned: Vec<LearnedOffsets>,
    /// Per-tap counters, indexed by [`TapRole`] as usize.
    pub taps: [TapCounters; 3],
    /// Primary frames the engine had not released when the relay stopped, in
    /// arrival order (matched by content; a frame the engine modified on release,
    /// by a window clamp, would be listed too).
    pub unreleased: Vec<FrameSummary>,
    /// How long the relay ran.
    pub runtime: std::time::Duration,
}

impl RelayReport {
    /// The counters of one tap.
    #[must_use]
    pub fn tap(&self, role: TapRole) -> &TapCounters {
        &self.taps[role as usize]
    }

    /// Every divergence, in order.
    pub fn divergences(&self) -> impl Iterator<Item = &Divergence> {
        self.events.iter().filter_map(|e| match &e.event {
            RelayEvent::Divergence(d) => Some(d),
            _ => None,
        })
    }

    /// Every checkpoint request, in order.
    pub fn checkpoint_requests(&self) -> impl Iterator<Item = &CheckpointRequest> {
        self.events.iter().filter_map(|e| match &e.event {
            RelayEvent::CheckpointRequested(r) => Some(r),
            _ => None,
        })
    }

    /// The offsets learned for `flow`, if any.
    #[must_use]
    pub fn learned_for(&self, flow: &FlowKey) -> Option<&LearnedOffsets> {
        self.learned.iter().find(|l| l.flow == *flow)
    }

    /// A readable summary, for test logs.
    #[must_use]
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let e = &self.engine;
        let r = &self.rewriter;
        let _ = writeln!(s, "relay ran {:?}", self.runtime);
        for role in TapRole::ALL {
            let t = self.tap(role);
            let _ = writeln!(
                s,
                "  tap {:9}: in {} frames / {} B, out {} frames / {} B, errors {}",
                role.name(),
                t.frames_in,
                t.bytes_in,
                t.frames_out,
                t.bytes_out,
                t.errors
            );
        }
        let _ = writeln!(
            s,
            "  engine: frames in {:?}, tcp payload in {:?}, matched {} B + {} datagrams, \
             released {} frames ({} by flush), held now {} frames / {} B, stale {:?}, \
             divergences {}, checkpoint requests {}, epoch {}",
            e.frames_in,
            e.tcp_payload_in,
            e.bytes_matched,
            e.datagrams_matched,
            e.released_frames,
            e.released_by_flush,
            e.held_frames,
            e.held_bytes,
            e.stale_bytes,
            e.divergences_total(),
            e.checkpoints_total(),
            self.engine_epoch
        );
        let _ = writeln!(
            s,
            "  rewriter: from secondary {}, to secondary {}, rewritten {}, passive opens {}, \
             learned {}, held {} (released {}, expired {}, dropped {}), pass handshake {}, \
             pass not-tcp {}, pass offset-unknown {}, midstream {}",
            r.frames_from_secondary,
            r.frames_to_secondary,
            r.rewritten,
            r.passive_opens,
            r.offsets_learned,
            r.held,
            r.released,
            r.held_expired,
            r.dropped_hold_full,
            r.pass_handshake,
            r.pass_not_tcp,
            r.pass_offset_unknown,
            r.midstream_assumed
        );
        for l in &self.learned {
            let _ = writeln!(
                s,
                "  learned {} ({:?}): seq {:#010x}, ts {:?}",
                l.flow,
                l.open,
                l.offsets.seq,
                l.offsets.ts.map(|t| format!("{t:#010x}"))
            );
        }
        for f in &self.unreleased {
            let _ = writeln!(s, "  unreleased primary frame: {f}");
        }
        for ev in &self.events {
            match &ev.event {
                RelayEvent::Divergence(d) => {
                    let _ = writeln!(s, "  {} divergence: {d}", ev.at);
                }
                other => {
                    let _ = writeln!(s, "  {} {other:?}", ev.at);
                }
            }
        }
        s
    }
}

const WAKER: Token = Token(3);
/// Upper bound on a poll wait: how stale the stop flag may be read (the waker makes
/// stopping immediate; this is a safety net).
const MAX_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

/// What the relay thread publishes while it runs.
#[derive(Debug, Default)]
struct Live {
    events: Vec<TimedEvent>,
    engine: EngineStats,
    /// Frames read from any tap so far.
    frames: u64,
}

/// A running relay. Stop it with [`Relay::stop`]; dropping it stops it too.
#[derive(Debug)]
pub struct Relay {
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    live: Arc<Mutex<Live>>,
    report: mpsc::Receiver<RelayReport>,
    thread: Option<JoinHandle<()>>,
}

impl Relay {
    /// Start relaying between `taps`.
    ///
    /// # Errors
    /// The taps cannot be made non-blocking or registered with the poller, or the
    /// thread cannot be started.
    pub fn start(taps: RelayTaps, config: RelayConfig) -> io::Result<Self> {
        let poll = Poll::new()?;
        let taps = [taps.client, taps.primary, taps.secondary];
        for (i, tap) in taps.iter().enumerate() {
            tap.set_non_blocking()?;
            poll.registry().register(
                &mut SourceFd(&tap.as_raw_fd()),
                Token(i),
                Interest::READABLE,
            )?;
        }
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let stop = Arc::new(AtomicBool::new(false));
        let live = Arc::new(Mutex::new(Live::default()));
        let (tx, report) = mpsc::channel();
        let state = State {
            clock: std::time::Instant::now(),
            engine: Engine::new(config.engine),
            rewriter: Rewriter::new(config.rewrite),
            policy: config.checkpoint,
            taps,
            counters: [TapCounters::default(); 3],
            events: Vec::new(),
            live: Arc::clone(&live),
            frames: 0,
            learned: Vec::new(),
            arrival: 0,
            unreleased: HashMap::new(),
        };
        let flag = Arc::clone(&stop);
        let thread = thread::Builder::new()
            .name("colo-relay".into())
            .spawn(move || {
                let report = state.run(poll, &flag);
                // The receiver may be gone if the owner gave up waiting.
                let _ = tx.send(report);
            })?;
        Ok(Self {
            stop,
            waker,
            live,
            report,
            thread: Some(thread),
        })
    }

    fn live(&self) -> std::sync::MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The events so far (the relay keeps running).
    #[must_use]
    pub fn events(&self) -> Vec<TimedEvent> {
        self.live().events.clone()
    }

    /// The engine's counters as of the relay's last batch of frames.
    #[must_use]
    pub fn engine_stats(&self) -> EngineStats {
        self.live().engine.clone()
    }

    /// Wait until the engine holds no frame and no frame has arrived for `quiet`;
    /// `false` if that did not happen within `timeout`. Use it before
    /// [`Relay::stop`] so that the last ACKs and FINs have gone through.
    #[must_use]
    pub fn wait_quiescent(&self, quiet: std::time::Duration, timeout: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let mut last = (u64::MAX, std::time::Instant::now());
        loop {
            let now = std::time::Instant::now();
            let (frames, held) = {
                let live = self.live();
                (live.frames, live.engine.held_frames)
            };
            if frames != last.0 {
                last = (frames, now);
            } else if held == 0 && now.duration_since(last.1) >= quiet {
                return true;
            }
            if now >= deadline {
                return false;
            }
            thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// Stop the relay and return its report. The taps are closed (and so the devices
    /// removed) when the relay thread ends.
    ///
    /// # Errors
    /// `TimedOut` if the thread did not finish within `timeout` (it is then left to
    /// finish on its own), or the thread panicked.
    pub fn stop(&mut self, timeout: std::time::Duration) -> io::Result<RelayReport> {
        self.stop.store(true, Ordering::SeqCst);
        self.waker.wake()?;
        match self.report.recv_timeout(timeout) {
            Ok(report) => {
                if let Some(t) = self.thread.take() {
                    let _ = t.join();
                }
                Ok(report)
            }
            Err(mpsc::RecvTimeoutError::Timeout) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("relay did not stop within {timeout:?}"),
            )),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let panic = self.thread.take().map(JoinHandle::join);
                Err(io::Error::other(format!(
                    "relay thread ended without a report: {panic:?}"
                )))
            }
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.stop(std::time::Duration::from_secs(5));
        }
    }
}

/// The relay thread's state.
struct State {
    clock: std::time::Instant,
    engine: Engine,
    rewriter: Rewriter,
    policy: CheckpointPolicy,
    taps: [Tap; 3],
    counters: [TapCounters; 3],
    events: Vec<TimedEvent>,
    live: Arc<Mutex<Live>>,
    frames: u64,
    learned: Vec<LearnedOffsets>,
    /// Primary frames not released yet: content -> arrival numbers.
    unreleased: HashMap<Vec<u8>, Vec<u64>>,
    arrival: u64,
}

impl State {
    fn now(&self) -> Instant {
        let micros = self.clock.elapsed().as_micros();
        Instant::from_micros(u64::try_from(micros).unwrap_or(u64::MAX))
    }

    fn run(mut self, mut poll: Poll, stop: &AtomicBool) -> RelayReport {
        let mut events = Events::with_capacity(8);
        let mut ready = [false; 3];
        // Largest frame a tap without offloads delivers is MTU + 18; leave room.
        let mut buf = vec![0u8; 65_536];
        while !stop.load(Ordering::SeqCst) {
            self.timers();
            self.publish();
            let wait = self.next_wait();
            if let Err(e) = poll.poll(&mut events, Some(wait))
                && e.kind() != io::ErrorKind::Interrupted
            {
                self.event(RelayEvent::PollError(e.to_string()));
                thread::sleep(MAX_WAIT);
            }
            for ev in &events {
                if let Some(r) = ready.get_mut(ev.token().0) {
                    *r = true;
                }
            }
            // Edge-triggered: read every tap until it would block, one frame from
            // each ready tap per round.
            let mut rounds = 0u32;
            while ready.iter().any(|r| *r) {
                for role in TapRole::ALL {
                    if !ready[role as usize] {
                        continue;
                    }
                    match self.taps[role as usize].recv(&mut buf) {
                        Ok(n) => self.on_frame(role, &buf[..n]),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            ready[role as usize] = false;
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            ready[role as usize] = false;
                            self.tap_error(role, false, &e);
                        }
                    }
                }
                rounds += 1;
                if rounds.is_multiple_of(64) {
                    self.timers();
                    self.publish();
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                }
            }
        }
        let mut unreleased: Vec<(u64, FrameSummary)> = self
            .unreleased
            .iter()
            .flat_map(|(bytes, arrivals)| {
                let summary = FrameSummary::of(bytes);
                arrivals.iter().map(move |a| (*a, summary))
            })
            .collect();
        unreleased.sort_by_key(|(a, _)| *a);
        RelayReport {
            unreleased: unreleased.into_iter().map(|(_, f)| f).collect(),
            events: self.events,
            engine: self.engine.stats(),
            engine_epoch: self.engine.epoch(),
            rewriter: self.rewriter.stats().clone(),
            learned: self.learned,
            taps: self.counters,
            runtime: self.clock.elapsed(),
        }
    }

    /// Publish the counters for [`Relay::engine_stats`] and [`Relay::wait_quiescent`].
    fn publish(&self) {
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        live.engine = self.engine.stats();
        live.frames = self.frames;
    }

    /// Time until the next engine or rewriter deadline, at least 1 ms (a deadline the
    /// engine cannot act on yet must not spin the loop), at most [`MAX_WAIT`].
    fn next_wait(&self) -> std::time::Duration {
        let now = self.now();
        let next = [self.engine.poll_timeout(), self.rewriter.poll_timeout()]
            .into_iter()
            .flatten()
            .min();
        next.map_or(MAX_WAIT, |t| {
            std::time::Duration::from(t.saturating_since(now))
                .clamp(std::time::Duration::from_millis(1), MAX_WAIT)
        })
    }

    fn timers(&mut self) {
        let now = self.now();
        if self.engine.poll_timeout().is_some_and(|t| t <= now) {
            self.engine.handle_timeout(now);
            self.drain_engine(now);
        }
        if self.rewriter.poll_timeout().is_some_and(|t| t <= now) {
            self.rewriter.handle_timeout(now);
            self.drain_rewriter();
        }
    }

    fn on_frame(&mut self, role: TapRole, bytes: &[u8]) {
        self.frames += 1;
        let c = &mut self.counters[role as usize];
        c.frames_in += 1;
        c.bytes_in += bytes.len() as u64;
        let now = self.now();
        let frame = Frame::ethernet(bytes.to_vec());
        match role {
            TapRole::Client => {
                self.engine.observe_client_frame(now, &frame);
                self.send(TapRole::Primary, frame.ethernet_bytes());
                let mut mirrored = frame;
                let verdict = self.rewrite(now, Direction::ToSecondary, &mut mirrored);
                // Frames released from the hold are older: they go out first.
                self.drain_rewriter();
                if verdict.forward() {
                    self.send(TapRole::Secondary, mirrored.ethernet_bytes());
                }
            }
            TapRole::Primary => {
                self.arrival += 1;
                self.unreleased
                    .entry(bytes.to_vec())
                    .or_default()
                    .push(self.arrival);
                self.engine.handle_frame(now, Side::Primary, frame);
                self.drain_engine(now);
            }
            TapRole::Secondary => {
                let mut frame = frame;
                let verdict = self.rewrite(now, Direction::FromSecondary, &mut frame);
                self.drain_rewriter();
                if verdict.forward() {
                    self.engine.handle_frame(now, Side::Secondary, frame);
                    self.drain_engine(now);
                }
            }
        }
    }

    fn rewrite(&mut self, now: Instant, direction: Direction, frame: &mut Frame) -> Verdict {
        let learned = self.rewriter.stats().offsets_learned;
        let verdict = self.rewriter.rewrite_frame(now, direction, frame);
        if self.rewriter.stats().offsets_learned > learned {
            let flow = classify(frame.ethernet_bytes()).key;
            if let Some(info) = self.rewriter.connection(&flow)
                && let Some(offsets) = info.offsets
            {
                self.learned.push(LearnedOffsets {
                    flow,
                    open: info.open,
                    offsets,
                    at: now,
                });
            }
        }
        if let Verdict::Drop(_) = verdict {
            self.event(RelayEvent::RewriterDropped { direction, verdict });
        }
        verdict
    }

    fn drain_rewriter(&mut self) {
        while let Some(frame) = self.rewriter.poll_to_secondary() {
            self.send(TapRole::Secondary, frame.ethernet_bytes());
        }
    }

    fn drain_engine(&mut self, now: Instant) {
        while let Some(out) = self.engine.poll_output() {
            match out {
                Output::Release(frame) => {
                    let bytes = frame.ethernet_bytes();
                    if let Some(arrivals) = self.unreleased.get_mut(bytes) {
                        arrivals.remove(0);
                        if arrivals.is_empty() {
                            self.unreleased.remove(bytes);
                        }
                    }
                    self.send(TapRole::Client, bytes);
                }
                Output::Divergence(d) => self.event(RelayEvent::Divergence(d)),
                Output::RequestCheckpoint(req) => {
                    let id = req.id;
                    self.event(RelayEvent::CheckpointRequested(req));
                    if self.policy == CheckpointPolicy::CompleteImmediately {
                        self.engine.handle_checkpoint_done(now);
                        self.rewriter.checkpoint_done();
                        self.event(RelayEvent::CheckpointCompleted { id });
                        self.drain_rewriter();
                    }
                }
                Output::LimitReached {
                    limit,
                    flow,
                    action,
                } => self.event(RelayEvent::LimitReached {
                    limit,
                    flow,
                    action,
                }),
            }
        }
    }

    fn send(&mut self, role: TapRole, bytes: &[u8]) {
        match self.taps[role as usize].send(bytes) {
            Ok(_) => {
                let c = &mut self.counters[role as usize];
                c.frames_out += 1;
                c.bytes_out += bytes.len() as u64;
            }
            Err(e) => self.tap_error(role, true, &e),
        }
    }

    fn tap_error(&mut self, tap: TapRole, write: bool, e: &io::Error) {
        let c = &mut self.counters[tap as usize];
        c.errors += 1;
        // Report the first few; the counter has the rest.
        if c.errors <= 8 {
            self.event(RelayEvent::TapError {
                tap,
                write,
                error: e.to_string(),
            });
        }
    }

    fn event(&mut self, event: RelayEvent) {
        let ev = TimedEvent {
            at: self.now(),
            event,
        };
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .events
            .push(ev.clone());
        self.events.push(ev);
    }
}
