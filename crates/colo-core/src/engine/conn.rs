//! Per-connection compare state.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::classify::{DatagramMeta, TcpFlags};
use crate::frame::Frame;
use crate::reassembly::StreamReassembler;
use crate::seq::Seq;
use crate::time::Instant;

use super::table::ConnKey;

/// What a held primary frame waits for before it may be released.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Need {
    /// TCP: its payload ends at stream offset `end`; `flags` (SYN/FIN/RST) must be
    /// matched; `ack` must have been acknowledged by the secondary too.
    Tcp {
        end: u64,
        flags: TcpFlags,
        ctl_at: u64,
        ack: Option<Seq>,
    },
    /// A datagram matched against the secondary's next datagram of the flow.
    Datagram(DatagramMeta),
    /// Nothing to compare (already released data, pass-through): release in order.
    Nothing,
}

/// A primary frame waiting for release.
#[derive(Debug, Clone)]
pub(crate) struct HeldFrame {
    pub(crate) frame: Frame,
    /// Global arrival number (for flush ordering across connections).
    pub(crate) arrival: u64,
    pub(crate) since: Instant,
    pub(crate) need: Need,
}

/// A connection's held primary frames, oldest first. The oldest is stored inline, so a
/// connection that holds at most one frame at a time (lockstep traffic, small
/// request/response exchanges) never allocates; more spill into a `VecDeque`, whose
/// buffer [`HeldQueue::trim`] gives back once the connection has gone quiet.
#[derive(Debug, Default)]
pub(crate) struct HeldQueue {
    /// The oldest frame. `None` only when the queue is empty.
    head: Option<HeldFrame>,
    /// The frames after `head`.
    rest: VecDeque<HeldFrame>,
}

impl HeldQueue {
    pub(crate) fn len(&self) -> usize {
        usize::from(self.head.is_some()) + self.rest.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.head.is_none()
    }

    pub(crate) fn front(&self) -> Option<&HeldFrame> {
        self.head.as_ref()
    }

    pub(crate) fn push_back(&mut self, frame: HeldFrame) {
        if self.head.is_none() {
            debug_assert!(self.rest.is_empty());
            self.head = Some(frame);
        } else {
            self.rest.push_back(frame);
        }
    }

    pub(crate) fn pop_front(&mut self) -> Option<HeldFrame> {
        let head = self.head.take()?;
        self.head = self.rest.pop_front();
        Some(head)
    }

    /// Remove every frame, oldest first.
    pub(crate) fn drain(&mut self) -> impl Iterator<Item = HeldFrame> + '_ {
        self.head.take().into_iter().chain(self.rest.drain(..))
    }

    /// Free the spill buffer if it is empty.
    pub(crate) fn trim(&mut self) {
        if self.rest.is_empty() && self.rest.capacity() > 0 {
            self.rest = VecDeque::new();
        }
    }
}

/// One side's view of a TCP stream's control events.
#[derive(Debug, Clone, Default)]
pub(crate) struct TcpSideState {
    /// The stream origin in this side's sequence space (first payload byte).
    pub(crate) base: Option<Seq>,
    /// Flags of the SYN this side sent (SYN or SYN|ACK).
    pub(crate) syn: Option<TcpFlags>,
    /// Stream offset of this side's FIN.
    pub(crate) fin_at: Option<u64>,
    /// Stream offset of this side's RST.
    pub(crate) rst_at: Option<u64>,
    /// Highest acknowledgement this side sent.
    pub(crate) max_ack: Option<Seq>,
    /// Last raw window this side advertised.
    pub(crate) window: Option<u16>,
    /// The sequence number after the furthest byte (or FIN) this side sent.
    pub(crate) next_seq: Option<crate::seq::Seq>,
}

#[derive(Debug)]
pub(crate) struct TcpConn {
    pub(crate) sides: [TcpSideState; 2],
    /// Both sides' reassemblers; their fronts are always equal (the matched offset).
    pub(crate) streams: [StreamReassembler; 2],
    /// The client's FIN was seen (only when the shell feeds client frames).
    pub(crate) client_fin: bool,
    /// The client's RST was seen (likewise).
    pub(crate) client_rst: bool,
    /// Secondary segments that arrived before the primary showed the stream origin
    /// (shared sequence space only); replayed once it is known.
    pub(crate) parked: Vec<(Frame, crate::classify::TcpMeta)>,
    /// Bytes of `parked` frames.
    pub(crate) parked_bytes: usize,
}

impl TcpConn {
    /// Start a new epoch: the secondary is now a copy of the primary, so it shares the
    /// primary's sequence space and control state, and both streams restart where the
    /// primary's output ended. Returns how many secondary bytes were discarded.
    pub(crate) fn start_epoch(&mut self) -> u64 {
        let [primary, secondary] = &mut self.streams;
        let discarded = (secondary.buffered_bytes() + self.parked_bytes) as u64;
        self.parked.clear();
        self.parked_bytes = 0;
        // Restart at the primary's send position, which also covers what it sent
        // while comparison was off (pass-through), in the same offset space so that
        // recorded FIN/RST offsets stay valid.
        let mut front = primary.highest_end();
        if let (Some(base), Some(next)) = (self.sides[0].base, self.sides[0].next_seq) {
            let at = primary.front();
            let ahead = next.diff(base.add(at as u32));
            front = front.max(at.saturating_add_signed(ahead));
        }
        primary.reset(front);
        secondary.reset(front);
        self.sides[1] = self.sides[0].clone();
        discarded
    }
}

#[derive(Debug, Default)]
pub(crate) struct DatagramConn {
    /// Secondary datagrams not yet matched: compare header and body.
    pub(crate) secondary: VecDeque<(DatagramMeta, Bytes)>,
    /// Datagrams matched in this epoch (the index of the next one).
    pub(crate) index: u64,
}

impl DatagramConn {
    /// Start a new epoch; returns how many secondary datagrams were discarded.
    pub(crate) fn start_epoch(&mut self) -> u64 {
        let n = self.secondary.len() as u64;
        self.secondary.clear();
        self.index = 0;
        n
    }
}

/// `TcpConn` is stored inline (not boxed): one allocation and one dependent cache miss
/// fewer per TCP frame; datagram connections pay the larger slab entry.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(crate) enum Proto {
    Tcp(TcpConn),
    Datagram(DatagramConn),
}

#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) key: ConnKey,
    pub(crate) proto: Proto,
    pub(crate) held: HeldQueue,
    /// Bytes of held primary frames.
    pub(crate) held_bytes: usize,
    /// Bytes in secondary datagram queues or reassembly buffers (both sides).
    pub(crate) buffered_bytes: usize,
    /// The streams diverged: compare nothing more until the checkpoint.
    pub(crate) diverged: bool,
    /// Since when secondary output has been waiting unmatched.
    pub(crate) secondary_pending_since: Option<Instant>,
    pub(crate) last_seen: Instant,
    /// Deadline of this connection's current entry in the timer heap.
    pub(crate) armed_at: Option<Instant>,
    pub(crate) in_quiescent_queue: bool,
    /// A limit event was already reported for this connection in this epoch.
    pub(crate) limit_reported: bool,
}

impl Conn {
    pub(crate) fn new(key: ConnKey, proto: Proto, now: Instant) -> Self {
        Self {
            key,
            proto,
            held: HeldQueue::default(),
            held_bytes: 0,
            buffered_bytes: 0,
            diverged: false,
            secondary_pending_since: None,
            last_seen: now,
            armed_at: None,
            in_quiescent_queue: false,
            limit_reported: false,
        }
    }

    /// Nothing held, nothing pending: the connection could be forgotten without loss.
    pub(crate) fn is_quiescent(&self) -> bool {
        self.held.is_empty() && self.secondary_pending_since.is_none() && !self.diverged
    }

    pub(crate) fn bytes(&self) -> usize {
        self.held_bytes + self.buffered_bytes
    }

    /// Give back heap memory kept for reuse (empty queue and reassembly buffers). For
    /// connections that have gone quiet: doing it on every release would cost an
    /// allocation per frame.
    pub(crate) fn trim(&mut self) {
        self.held.trim();
        match &mut self.proto {
            Proto::Tcp(tcp) => {
                for stream in &mut tcp.streams {
                    stream.shrink_to_fit();
                }
                if tcp.parked.is_empty() {
                    tcp.parked = Vec::new();
                }
            }
            Proto::Datagram(dg) => {
                if dg.secondary.is_empty() {
                    dg.secondary = VecDeque::new();
                }
            }
        }
    }

    pub(crate) fn tcp(&mut self) -> Option<&mut TcpConn> {
        match &mut self.proto {
            Proto::Tcp(t) => Some(t),
            Proto::Datagram(_) => None,
        }
    }
}
