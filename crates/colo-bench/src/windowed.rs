//! Windowed load: a sender (the calling thread) keeps at most `window` frames sent on
//! primary and not yet released; a receiver thread reads outdev, checks every frame
//! and returns the credit. The sender works in phases (a range of flows, a frame
//! budget or a deadline) with a barrier between them, which the scale mode uses.

use std::collections::VecDeque;
use std::io::Write as _;
use std::ops::Range;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::BytesMut;

use crate::endpoint::Stream;
use crate::frames::FlowSet;
use crate::outdev::OutdevReader;
use crate::report::Report;

/// Frames encoded per write.
const BATCH: usize = 64;

/// State shared by the sender and the receiver.
#[derive(Debug, Default)]
struct State {
    /// Per flow: (segment index, send time) of frames sent, not yet released.
    pending: Vec<VecDeque<(u32, Instant)>>,
    /// Frames sent and not yet released.
    in_flight: u64,
    /// Frames sent in total.
    sent: u64,
    /// The sender has finished.
    done_sending: bool,
    /// The receiver gave up: the sender must stop.
    abort: bool,
}

/// The sender's and receiver's meeting point.
#[derive(Debug, Default)]
pub struct Shared {
    state: Mutex<State>,
    cv: Condvar,
}

impl Shared {
    /// Shared state for `flows` flows.
    #[must_use]
    pub fn new(flows: usize) -> Self {
        Self {
            state: Mutex::new(State {
                pending: vec![VecDeque::new(); flows],
                ..State::default()
            }),
            cv: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Frames sent so far.
    pub fn sent(&self) -> u64 {
        self.lock().sent
    }

    /// Tell the receiver that nothing more will be sent.
    pub fn finish_sending(&self) {
        self.lock().done_sending = true;
        self.cv.notify_all();
    }
}

/// One stretch of sending.
#[derive(Debug, Clone)]
pub struct Phase {
    /// Flows sent round-robin.
    pub flows: Range<usize>,
    /// At most this many frames.
    pub frames: u64,
    /// Stop at this time.
    pub until: Option<Instant>,
}

/// The sending half.
#[derive(Debug)]
pub struct Sender<'a> {
    /// To primary_in.
    pub pri: Stream,
    /// To secondary_in.
    pub sec: Stream,
    /// The frames.
    pub set: &'a FlowSet,
    /// Pieces per segment on the secondary.
    pub split: u32,
    /// In-flight limit.
    pub window: u64,
    /// Shared with the receiver.
    pub shared: &'a Shared,
    /// Per flow: the next segment index.
    pub next_k: Vec<u32>,
    /// How long a barrier may wait without a release.
    pub drain_timeout: Duration,
}

impl Sender<'_> {
    /// Sends `phase`; returns the frames sent, or `Ok(None)` if the receiver gave up.
    pub fn send(&mut self, phase: &Phase) -> std::io::Result<Option<u64>> {
        let mut next = phase.flows.start;
        let mut sent = 0u64;
        let cap = BATCH * self.set.wire_len();
        let (mut pbuf, mut sbuf) = (BytesMut::with_capacity(cap), BytesMut::with_capacity(cap));
        let mut batch: Vec<(usize, u32)> = Vec::with_capacity(BATCH);
        while sent < phase.frames && phase.until.is_none_or(|t| Instant::now() < t) {
            let credit = {
                let mut st = self.shared.lock();
                while st.in_flight >= self.window && !st.abort {
                    st = self
                        .shared
                        .cv
                        .wait_timeout(st, Duration::from_millis(50))
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                    if phase.until.is_some_and(|t| Instant::now() >= t) {
                        break;
                    }
                }
                if st.abort {
                    return Ok(None);
                }
                self.window.saturating_sub(st.in_flight)
            };
            if credit == 0 {
                continue;
            }
            let n = credit.min(BATCH as u64).min(phase.frames - sent) as usize;
            pbuf.clear();
            sbuf.clear();
            batch.clear();
            let same = self.set.secondary_is_primary(self.split);
            for _ in 0..n {
                let k = self.next_k[next];
                self.next_k[next] = k.wrapping_add(1);
                if !same {
                    self.set.put_secondary(next, k, self.split, &mut sbuf);
                }
                self.set.put_primary(next, k, &mut pbuf);
                batch.push((next, k));
                next += 1;
                if next == phase.flows.end {
                    next = phase.flows.start;
                }
            }
            // Without a split the secondary's bytes are the primary's: built once.
            self.sec.write_all(if same { &pbuf } else { &sbuf })?;
            {
                let now = Instant::now();
                let mut st = self.shared.lock();
                for &(f, k) in &batch {
                    st.pending[f].push_back((k, now));
                }
                st.in_flight += n as u64;
                st.sent += n as u64;
            }
            self.pri.write_all(&pbuf)?;
            sent += n as u64;
        }
        Ok(Some(sent))
    }

    /// Waits until every frame sent has been released; `false` on timeout or abort.
    pub fn barrier(&self) -> bool {
        let mut st = self.shared.lock();
        let mut last = (st.in_flight, Instant::now());
        while st.in_flight > 0 && !st.abort {
            st = self
                .shared
                .cv
                .wait_timeout(st, Duration::from_millis(50))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            if st.in_flight != last.0 {
                last = (st.in_flight, Instant::now());
            } else if last.1.elapsed() > self.drain_timeout {
                return false;
            }
        }
        !st.abort
    }
}

/// Reads outdev, verifies and times every released frame, until the sender is done
/// and everything sent was released (or the drain timeout passes).
pub fn receive(
    mut out: Stream,
    set: &FlowSet,
    vnet: bool,
    drain_timeout: Duration,
    shared: &Shared,
    start: Instant,
) -> Report {
    let mut rd = OutdevReader::new(vnet);
    let mut rep = Report::default();
    let _ = out.set_read_timeout(Some(Duration::from_millis(50)));
    let mut last_progress = Instant::now();
    loop {
        let (sent, done) = {
            let st = shared.lock();
            (st.sent, st.done_sending)
        };
        if sent > rep.released && last_progress.elapsed() > drain_timeout {
            rep.error(format!(
                "no release for {} s with {} frames in flight; giving up",
                drain_timeout.as_secs_f64(),
                sent - rep.released
            ));
            break;
        }
        if done && rep.released >= sent {
            break;
        }
        if sent == rep.released {
            // Nothing in flight: time spent waiting for the sender is not a stall.
            last_progress = Instant::now();
        }
        let n = match rd.fill(&mut out) {
            Ok(0) => {
                rep.error("outdev closed by the proxy".to_owned());
                break;
            }
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(e) => {
                rep.error(format!("outdev read: {e}"));
                break;
            }
        };
        let now = Instant::now();
        last_progress = now;
        rep.elapsed = now.duration_since(start);
        rep.bytes += n as u64;
        let mut got = 0u64;
        let mut st = shared.lock();
        loop {
            let frame = match rd.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    rep.error(format!("outdev framing: {e}"));
                    st.abort = true;
                    drop(st);
                    shared.cv.notify_all();
                    return rep;
                }
            };
            got += 1;
            rep.released += 1;
            let Some(f) = set.flow_of(frame) else {
                rep.error(format!(
                    "released frame #{} belongs to no flow",
                    rep.released
                ));
                continue;
            };
            let Some(k) = set.segment_of(f, frame) else {
                rep.corrupt += 1;
                rep.error(format!(
                    "flow {f}: released a frame that is none of its segments \
                     (field {:?}, {} bytes)",
                    set.field_of(frame),
                    frame.len(),
                ));
                continue;
            };
            let q = &mut st.pending[f];
            let Some(i) = q.iter().position(|&(pk, _)| pk == k) else {
                rep.duplicate += 1;
                rep.error(format!("flow {f}: segment {k} released twice"));
                continue;
            };
            let (_, t) = q.remove(i).unwrap_or((k, now));
            rep.latency(now.duration_since(t));
            if i > 0 {
                rep.reordered += 1;
                rep.error(format!(
                    "flow {f}: segment {k} released before {i} earlier segment(s)"
                ));
            }
        }
        st.in_flight = st.in_flight.saturating_sub(got);
        drop(st);
        shared.cv.notify_all();
    }
    let mut st = shared.lock();
    st.abort = true;
    let lost: u64 = st.pending.iter().map(|q| q.len() as u64).sum();
    drop(st);
    if lost > 0 {
        rep.lost = lost;
        rep.error(format!("{lost} frames sent on primary were never released"));
        rep.errors += lost - 1;
    }
    shared.cv.notify_all();
    rep.finish(start);
    rep
}
