//! The secondary-side TCP rewriter: puts the secondary VM's TCP into the primary's
//! sequence space and the client's TCP into the secondary's.
//!
//! Both VMs run the same guest, but each TCP stack picks its own initial sequence
//! number (ISN) and runs its own timestamp clock. The client only ever talks to the
//! primary, so the client's acknowledgements, SACK blocks and timestamp echoes are in
//! the primary's spaces, and the secondary's output is in its own. Per connection the
//! rewriter learns
//!
//! - `seq = ISN_p - ISN_s` (wrapping), and
//! - `ts = TSval_p - TSval_s` (wrapping), when both VMs use RFC 7323 timestamps,
//!
//! and rewrites, in place, with incremental checksum updates:
//!
//! | frame                                          | field      | change                |
//! |------------------------------------------------|------------|-----------------------|
//! | secondary to client ([`Direction::FromSecondary`]) | seq    | `+= seq`              |
//! |                                                | TSval      | `+= ts`               |
//! |                                                | ack, SACK, TSecr | none (client space) |
//! | client to secondary ([`Direction::ToSecondary`]) | ack      | `-= seq`              |
//! |                                                | SACK edges | `-= seq`              |
//! |                                                | TSecr      | `-= ts`               |
//! |                                                | seq, TSval | none (client space)   |
//!
//! ## Learning the offsets
//! - **Passive open** (the client connects to the VM): the client's SYN creates the
//!   entry; the secondary's SYN-ACK gives `ISN_s` (and its TSval); the client's first
//!   mirrored ACK acknowledges `ISN_p + 1` and echoes the primary's SYN-ACK TSval.
//! - **Active open** (the VM connects out): the secondary's SYN gives `ISN_s`; the
//!   peer's mirrored SYN-ACK acknowledges `ISN_p + 1` and echoes the primary's TSval.
//! - **The secondary is late**: when the client's (or peer's) packet arrives before the
//!   secondary's SYN or SYN-ACK has been seen, the packet cannot be translated yet, and
//!   passing it unchanged would make the secondary reset its half-open connection. It
//!   is **held** ([`Verdict::Held`]): the rewriter keeps a copy and hands it back,
//!   rewritten, from [`Rewriter::poll_to_secondary`] as soon as the secondary's
//!   ISN shows up (or unchanged after a checkpoint), or drops it after
//!   [`RewriteConfig::hold_timeout`]. Holding is bounded per connection and in total.
//! - **Already open** (the rewriter started mid-connection, or missed the handshake):
//!   offsets are assumed zero, which is exact right after any checkpoint because the
//!   secondary is then a copy of the primary, and counted in
//!   [`RewriteStats::midstream_assumed`]. If that assumption is wrong (a connection
//!   opened since the last checkpoint, handshake missed), the rewriter cannot tell: no
//!   single packet on the secondary host shows both ISNs. The compare engine sees the
//!   divergence and the resulting checkpoint makes zero right again.
//!
//! SYNs and SYN-ACKs of the secondary pass unrewritten while the offset is unknown
//! (the engine matches the SYN flag, not its number); once it is known (a
//! retransmission, or a SYN-ACK that arrived after the client's ACK was held) they are
//! rewritten like everything else.
//!
//! ## Checkpoint and failover
//! [`Rewriter::checkpoint_done`] makes every offset zero in O(1): entries carry the
//! checkpoint epoch in which their offsets were learned and are normalised lazily on
//! their next use. Held frames are released unchanged (the secondary now holds the
//! primary's state, in which those client packets were already processed, so they are
//! harmless duplicates at worst). [`Rewriter::failover`] stops tracking new
//! connections (they pass untouched); connections with an entry keep being rewritten
//! for as long as they live, with the longer [`RewriteConfig::failover_idle_timeout`].
//!
//! ## Table and timers
//! Entries are removed after FIN in both directions or a RST, once
//! [`RewriteConfig::close_linger`] has passed (late retransmissions are still
//! rewritten meanwhile); after [`RewriteConfig::idle_timeout`] without traffic; and, when
//! the table is full, by eviction of a closing entry or of the least recently used one
//! if it is idle-expired or provably harmless to forget (zero offsets). A connection
//! that finds no room passes unchanged and is counted: for it the rewriter behaves as
//! with zero offsets, which the next checkpoint makes right. Expiry is amortised O(1)
//! per entry: idle entries come off the head of an LRU list, lingering entries and
//! hold deadlines off FIFO queues; nothing scans the table.
//!
//! ## Checksums
//! Rewritten headers get an incremental checksum update ([`crate::checksum`]), except
//! when the virtio-net header says `NEEDS_CSUM`: the field then holds the pseudo-header
//! partial sum and the device completes it over the (rewritten) header, so it is left
//! alone. A checksum that was wrong before stays wrong by the same amount.

pub mod options;
mod table;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use self::options::{TcpOptions, parse_options, read_u32, write_u32};
use self::table::{Handle, Table};
use crate::announce::LiveConnection;
use crate::checksum::{self, TCP_CHECKSUM_OFFSET};
use crate::classify::{TcpFlags, TcpMeta, classify};
use crate::flow::{FlowDir, FlowKey};
use crate::{Duration, Frame, Instant, Seq};

/// Which way a frame passes the rewriter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Output of the secondary VM, heading to the compare engine (and, after failover,
    /// to the client): sequence numbers and TSvals are moved into the primary's spaces.
    FromSecondary,
    /// Client traffic mirrored to the secondary VM: acknowledgements, SACK blocks and
    /// TSecrs are moved into the secondary's spaces.
    ToSecondary,
}

/// Tunables of the [`Rewriter`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewriteConfig {
    /// Most connections tracked at once.
    pub max_connections: usize,
    /// An entry without traffic for this long is removed (before failover).
    pub idle_timeout: Duration,
    /// The idle timeout after [`Rewriter::failover`]. Entries then carry offsets that no
    /// checkpoint will ever reset, and forgetting one breaks its connection, so this is
    /// long: the default, 3 hours, outlasts Linux's 2-hour keepalive interval.
    pub failover_idle_timeout: Duration,
    /// How long an entry lingers after FIN both ways or a RST, for late retransmissions.
    pub close_linger: Duration,
    /// How long a frame waits for the secondary's ISN before it is dropped.
    pub hold_timeout: Duration,
    /// Most frames held for one connection.
    pub max_held_per_connection: usize,
    /// Most frames held in total.
    pub max_held_frames: usize,
}

impl Default for RewriteConfig {
    fn default() -> Self {
        Self {
            max_connections: 65_536,
            idle_timeout: Duration::from_secs(120),
            failover_idle_timeout: Duration::from_secs(3 * 3600),
            close_linger: Duration::from_secs(5),
            hold_timeout: Duration::from_secs(1),
            max_held_per_connection: 4,
            max_held_frames: 1024,
        }
    }
}

/// The learned translation of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Offsets {
    /// Added to the secondary's sequence numbers to get the primary's: `ISN_p - ISN_s`.
    pub seq: u32,
    /// Added to the secondary's TSvals to get the primary's; `None` when the two VMs
    /// do not both use timestamps on this connection (timestamp fields are then left
    /// alone).
    pub ts: Option<u32>,
}

impl Offsets {
    /// No translation: the secondary is a copy of the primary.
    pub const ZERO: Self = Self {
        seq: 0,
        ts: Some(0),
    };

    /// Whether applying these offsets changes nothing.
    #[must_use]
    pub const fn is_zero(&self) -> bool {
        self.seq == 0 && matches!(self.ts, None | Some(0))
    }
}

/// What to do with a frame after [`Rewriter::rewrite_from_secondary`] or
/// [`Rewriter::rewrite_to_secondary`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Some fields were rewritten; forward the frame.
    Rewritten,
    /// Nothing was changed; forward the frame as it is.
    Unchanged(PassReason),
    /// The rewriter kept a copy; forward nothing now. The frame comes back from
    /// [`Rewriter::poll_to_secondary`] once it can be translated.
    Held,
    /// Do not forward the frame.
    Drop(DropReason),
}

impl Verdict {
    /// Whether the caller should forward the frame now.
    #[must_use]
    pub const fn forward(&self) -> bool {
        matches!(self, Self::Rewritten | Self::Unchanged(_))
    }
}

/// Why a frame passed unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PassReason {
    /// Not a TCP segment (or not parsable as one; IP fragments included).
    NotTcp,
    /// Tracked, but the offsets are zero or the fields they apply to are absent.
    NothingToRewrite,
    /// A SYN or SYN-ACK before the offset is known.
    Handshake,
    /// A secondary's segment on a connection whose offset is not learned yet.
    OffsetUnknown,
    /// A segment of a connection without an entry after failover.
    Untracked,
    /// A RST of a connection without an entry: nothing to track.
    NoConnection,
    /// A new connection found the table full.
    TableFull,
    /// A client SYN with a new ISN on a live connection, or a secondary SYN-ACK with an
    /// ISN other than the one already seen. The entry is kept as it is.
    ConflictingSyn,
    /// The segment travels the wrong way for its entry (the secondary sending as the
    /// connection's remote end, say).
    DirectionMismatch,
}

/// Why a frame was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// It needed holding until the secondary's ISN is known, but the per-connection or
    /// global hold budget is used up.
    HoldFull,
}

/// How an entry's connection was first seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpenKind {
    /// The client connected to the VM.
    Passive,
    /// The VM connected out.
    Active,
    /// Already open when first seen: zero offsets assumed.
    Midstream,
}

/// A snapshot of one entry, for diagnostics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// How the connection was first seen.
    pub open: OpenKind,
    /// The offsets in force, `None` while still learning.
    pub offsets: Option<Offsets>,
    /// FIN both ways or RST seen: the entry is lingering.
    pub closing: bool,
    /// Frames held for this connection.
    pub held: usize,
}

/// Counters. Every frame is counted once by direction and once by outcome
/// (`rewritten`, a `pass_*`, `held` or a `dropped_*`); the rest count events.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RewriteStats {
    /// Frames passed to [`Rewriter::rewrite_from_secondary`].
    pub frames_from_secondary: u64,
    /// Frames passed to [`Rewriter::rewrite_to_secondary`].
    pub frames_to_secondary: u64,
    /// Frames rewritten in place.
    pub rewritten: u64,
    /// Frames whose rewrite left the checksum to the device (`NEEDS_CSUM`).
    pub partial_checksum: u64,
    /// Passed: [`PassReason::NotTcp`].
    pub pass_not_tcp: u64,
    /// Passed: [`PassReason::NothingToRewrite`].
    pub pass_nothing_to_rewrite: u64,
    /// Passed: [`PassReason::Handshake`].
    pub pass_handshake: u64,
    /// Passed: [`PassReason::OffsetUnknown`].
    pub pass_offset_unknown: u64,
    /// Passed: [`PassReason::Untracked`].
    pub pass_untracked: u64,
    /// Passed: [`PassReason::NoConnection`].
    pub pass_no_connection: u64,
    /// Passed: [`PassReason::TableFull`].
    pub pass_table_full: u64,
    /// Passed: [`PassReason::ConflictingSyn`].
    pub pass_conflicting_syn: u64,
    /// Passed: [`PassReason::DirectionMismatch`].
    pub pass_direction_mismatch: u64,
    /// Frames held ([`Verdict::Held`]).
    pub held: u64,
    /// Held frames handed back by [`Rewriter::poll_to_secondary`].
    pub released: u64,
    /// Held frames dropped: the hold timed out or the entry went away.
    pub held_expired: u64,
    /// Dropped: [`DropReason::HoldFull`].
    pub dropped_hold_full: u64,
    /// Entries created by a passive open (client SYN, or a secondary SYN-ACK).
    pub passive_opens: u64,
    /// Entries created by an active open (secondary SYN, or a peer SYN-ACK).
    pub active_opens: u64,
    /// Entries created mid-connection with zero offsets assumed.
    pub midstream_assumed: u64,
    /// Offsets learned from a handshake.
    pub offsets_learned: u64,
    /// Connections where one VM uses timestamps and the other does not; their
    /// timestamp fields are left alone.
    pub ts_one_side: u64,
    /// Frames to be rewritten whose option list is inconsistent; their options are
    /// left alone (seq/ack are still rewritten).
    pub options_malformed: u64,
    /// SYNs carrying data (TCP Fast Open); tracked like any SYN.
    pub syn_with_data: u64,
    /// Entries replaced by a new connection on the same addresses and ports.
    pub syn_replaced: u64,
    /// Entries that started closing (FIN both ways or RST).
    pub closed: u64,
    /// Entries removed after their close linger.
    pub expired_linger: u64,
    /// Entries removed after the idle timeout.
    pub expired_idle: u64,
    /// Entries evicted to make room.
    pub evicted: u64,
    /// Checkpoints.
    pub checkpoints: u64,
}

impl RewriteStats {
    fn count_pass(&mut self, reason: PassReason) {
        let c = match reason {
            PassReason::NotTcp => &mut self.pass_not_tcp,
            PassReason::NothingToRewrite => &mut self.pass_nothing_to_rewrite,
            PassReason::Handshake => &mut self.pass_handshake,
            PassReason::OffsetUnknown => &mut self.pass_offset_unknown,
            PassReason::Untracked => &mut self.pass_untracked,
            PassReason::NoConnection => &mut self.pass_no_connection,
            PassReason::TableFull => &mut self.pass_table_full,
            PassReason::ConflictingSyn => &mut self.pass_conflicting_syn,
            PassReason::DirectionMismatch => &mut self.pass_direction_mismatch,
        };
        *c += 1;
    }
}

/// An ISN (and the TSval that came with it) seen in a handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SynInfo {
    isn: Seq,
    tsval: Option<u32>,
}

/// A frame waiting for its connection's offset.
#[derive(Debug)]
struct Held {
    vnet_len: usize,
    data: Vec<u8>,
}

/// Per-connection state.
#[derive(Debug)]
struct Conn {
    open: OpenKind,
    /// Direction (on the flow key) of frames from the VM to the remote end.
    vm_dir: FlowDir,
    /// Checkpoint epoch the learning state below belongs to.
    epoch: u64,
    offsets: Option<Offsets>,
    /// The remote end's SYN (client space: valid across checkpoints).
    peer_isn: Option<Seq>,
    /// The secondary's SYN or SYN-ACK, this epoch.
    svm: Option<SynInfo>,
    /// The primary's ISN and TSval as acknowledged and echoed by the remote end.
    pvm: Option<SynInfo>,
    fin_vm: bool,
    fin_peer: bool,
    closing: bool,
    last_seen: Instant,
    held: Vec<Held>,
    hold_since: Instant,
    /// The VM's latest segment as the client saw it (after rewriting).
    vm_last: Option<VmLast>,
}

/// What a duplicate ACK from the VM must repeat, in the client's spaces.
#[derive(Debug, Clone, Copy)]
struct VmLast {
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    /// Sequence number after the segment (its payload, SYN and FIN included).
    seq_end: u32,
    ack: u32,
    window: u16,
    timestamps: Option<(u32, u32)>,
}

impl Conn {
    fn new(open: OpenKind, vm_dir: FlowDir, epoch: u64, now: Instant) -> Self {
        Self {
            open,
            vm_dir,
            epoch,
            offsets: (open == OpenKind::Midstream).then_some(Offsets::ZERO),
            peer_isn: None,
            svm: None,
            pvm: None,
            fin_vm: false,
            fin_peer: false,
            closing: false,
            last_seen: now,
            held: Vec::new(),
            hold_since: now,
            vm_last: None,
        }
    }

    /// Apply checkpoints that happened since this entry was last used: the secondary
    /// is now a copy of the primary, so a connection either VM had already answered
    /// has zero offsets, and ISNs seen before are history. An entry that has only seen
    /// the client's SYN keeps learning (neither VM may have answered it yet).
    fn normalize(&mut self, epoch: u64) {
        if self.epoch == epoch {
            return;
        }
        self.epoch = epoch;
        if self.offsets.is_some() || self.svm.is_some() || self.pvm.is_some() {
            self.offsets = Some(Offsets::ZERO);
        }
        self.svm = None;
        self.pvm = None;
    }

    /// Learn the offsets once both ISNs are known. Returns whether they were learned now.
    fn try_learn(&mut self, stats: &mut RewriteStats) -> bool {
        if self.offsets.is_some() {
            return false;
        }
        let (Some(s), Some(p)) = (self.svm, self.pvm) else {
            return false;
        };
        let ts = match (s.tsval, p.tsval) {
            (Some(s_ts), Some(p_ts)) => Some(p_ts.wrapping_sub(s_ts)),
            (None, None) => None,
            // Active open: a peer that declines timestamps answers both VMs without
            // them, so a secondary SYN with timestamps and an answer without is normal.
            (Some(_), None) if self.open == OpenKind::Active => None,
            _ => {
                stats.ts_one_side += 1;
                None
            }
        };
        self.offsets = Some(Offsets {
            seq: p.isn.0.wrapping_sub(s.isn.0),
            ts,
        });
        stats.offsets_learned += 1;
        true
    }

    /// Remember the VM's segment in the client's spaces (once the offsets are known).
    fn note_vm_segment(&mut self, eth: &[u8], tcp: &TcpMeta, seg: &Seg) {
        let Some(offsets) = self.offsets else { return };
        let (Some(dst), Some(src)) = (eth.get(0..6), eth.get(6..12)) else {
            return;
        };
        let (mut dst_mac, mut src_mac) = ([0u8; 6], [0u8; 6]);
        dst_mac.copy_from_slice(dst);
        src_mac.copy_from_slice(src);
        let tsval = |v: u32| offsets.ts.map_or(v, |ts| v.wrapping_add(ts));
        self.vm_last = Some(VmLast {
            src_mac,
            dst_mac,
            seq_end: seg
                .seq
                .0
                .wrapping_add(tcp.seq_len())
                .wrapping_add(offsets.seq),
            ack: seg.ack.0,
            window: tcp.window,
            timestamps: seg.tsval.zip(seg.tsecr).map(|(v, e)| (tsval(v), e)),
        });
    }

    fn closing_now(&self, seg: &Seg) -> bool {
        !self.closing && (seg.rst || (self.fin_vm && self.fin_peer))
    }
}

/// The fields of a segment the state machine looks at.
#[derive(Debug, Clone, Copy)]
struct Seg {
    seq: Seq,
    ack: Seq,
    syn: bool,
    ack_flag: bool,
    fin: bool,
    rst: bool,
    data: bool,
    tsval: Option<u32>,
    tsecr: Option<u32>,
}

impl Seg {
    fn new(tcp: &TcpMeta, opts: Option<TcpOptions>, header: &[u8]) -> Self {
        let ts_at = opts.and_then(|o| o.timestamps);
        Self {
            seq: tcp.seq,
            ack: tcp.ack,
            syn: tcp.flags.contains(TcpFlags::SYN),
            ack_flag: tcp.flags.contains(TcpFlags::ACK),
            fin: tcp.flags.contains(TcpFlags::FIN),
            rst: tcp.flags.contains(TcpFlags::RST),
            data: !tcp.payload.is_empty(),
            tsval: ts_at.and_then(|at| read_u32(header, at)),
            tsecr: ts_at.and_then(|at| read_u32(header, at + 4)),
        }
    }
}

/// What the state machine decided for a segment of a tracked connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Apply the offsets (if known: the connection is translated from now on).
    Rewrite,
    /// Pass unchanged.
    Pass(PassReason),
    /// Keep a copy until the offsets are known.
    Hold,
    /// The entry belongs to a finished connection: forget it and start over.
    Replace,
}

/// The result of applying offsets to one frame.
#[derive(Debug, Clone, Copy, Default)]
struct Applied {
    changed: bool,
    options_malformed: bool,
}

/// The secondary-side TCP rewriter. See the [module documentation](self).
#[derive(Debug)]
pub struct Rewriter {
    config: RewriteConfig,
    table: Table<Conn>,
    epoch: u64,
    failover: bool,
    /// `(removal time, entry)` for closing entries, in closing order.
    linger_queue: VecDeque<(Instant, Handle)>,
    /// `(drop time, entry)` for entries holding frames, in hold order.
    hold_queue: VecDeque<(Instant, Handle)>,
    held_frames: usize,
    released: VecDeque<Frame>,
    stats: RewriteStats,
}

impl Default for Rewriter {
    fn default() -> Self {
        Self::new(RewriteConfig::default())
    }
}

impl Rewriter {
    /// A rewriter with no connections.
    #[must_use]
    pub fn new(config: RewriteConfig) -> Self {
        Self {
            config,
            table: Table::new(),
            epoch: 0,
            failover: false,
            linger_queue: VecDeque::new(),
            hold_queue: VecDeque::new(),
            held_frames: 0,
            released: VecDeque::new(),
            stats: RewriteStats::default(),
        }
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &RewriteConfig {
        &self.config
    }

    /// The counters.
    #[must_use]
    pub fn stats(&self) -> &RewriteStats {
        &self.stats
    }

    /// Number of tracked connections.
    #[must_use]
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether no connection is tracked.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.table.len() == 0
    }

    /// Whether [`Rewriter::failover`] was called.
    #[must_use]
    pub fn is_failover(&self) -> bool {
        self.failover
    }

    /// The state of the entry for `key`, if any.
    #[must_use]
    pub fn connection(&self, key: &FlowKey) -> Option<ConnectionInfo> {
        let conn = self.table.get(self.table.find(key)?)?;
        let offsets = if conn.epoch == self.epoch {
            conn.offsets
        } else if conn.offsets.is_some() || conn.svm.is_some() || conn.pvm.is_some() {
            Some(Offsets::ZERO)
        } else {
            None
        };
        Some(ConnectionInfo {
            open: conn.open,
            offsets,
            closing: conn.closing,
            held: conn.held.len(),
        })
    }

    /// The connections the VM has open (not closing, the VM has acknowledged
    /// something, offsets known), with what a duplicate ACK from the VM to the client
    /// must carry: used after failover to restart client traffic at once
    /// ([`crate::announce::tcp_dup_ack`]). O(table size).
    pub fn live_connections(&self) -> impl Iterator<Item = LiveConnection> + '_ {
        self.table.iter().filter_map(|(key, conn)| {
            if conn.closing {
                return None;
            }
            let last = conn.vm_last?;
            let (vm, client) = key.endpoints(conn.vm_dir);
            Some(LiveConnection {
                vlan: key.vlan,
                vm,
                client,
                vm_mac: last.src_mac,
                client_mac: last.dst_mac,
                seq: last.seq_end,
                ack: last.ack,
                window: last.window,
                timestamps: last.timestamps,
            })
        })
    }

    /// Rewrite a frame the secondary VM sent. `vnet_hdr` is its virtio-net header
    /// (empty if none), `eth` the Ethernet frame, modified in place.
    pub fn rewrite_from_secondary(
        &mut self,
        now: Instant,
        vnet_hdr: &[u8],
        eth: &mut [u8],
    ) -> Verdict {
        self.stats.frames_from_secondary += 1;
        self.process(now, Direction::FromSecondary, vnet_hdr, eth)
    }

    /// Rewrite a client frame mirrored to the secondary VM. `vnet_hdr` is its
    /// virtio-net header (empty if none), `eth` the Ethernet frame, modified in place.
    /// After [`Verdict::Held`], drain [`Rewriter::poll_to_secondary`] after every later
    /// call so that released frames go out before newer ones.
    pub fn rewrite_to_secondary(
        &mut self,
        now: Instant,
        vnet_hdr: &[u8],
        eth: &mut [u8],
    ) -> Verdict {
        self.stats.frames_to_secondary += 1;
        self.process(now, Direction::ToSecondary, vnet_hdr, eth)
    }

    /// [`Rewriter::rewrite_from_secondary`] or [`Rewriter::rewrite_to_secondary`] on a
    /// [`Frame`]. The frame's buffer is reused when it is not shared, copied otherwise.
    pub fn rewrite_frame(&mut self, now: Instant, dir: Direction, frame: &mut Frame) -> Verdict {
        let vnet_len = usize::try_from(frame.vnet_hdr_len)
            .unwrap_or(usize::MAX)
            .min(frame.data.len());
        let mut buf = BytesMut::from(core::mem::take(&mut frame.data));
        let (vnet, eth) = buf.split_at_mut(vnet_len);
        let verdict = match dir {
            Direction::FromSecondary => self.rewrite_from_secondary(now, vnet, eth),
            Direction::ToSecondary => self.rewrite_to_secondary(now, vnet, eth),
        };
        frame.data = buf.freeze();
        verdict
    }

    /// The next previously held frame that is ready to go to the secondary VM, already
    /// rewritten. Drain it after every call into the rewriter.
    pub fn poll_to_secondary(&mut self) -> Option<Frame> {
        self.released.pop_front()
    }

    /// A checkpoint completed: the secondary is now a copy of the primary, so every
    /// connection's offsets become zero. O(number of held frames).
    pub fn checkpoint_done(&mut self) {
        self.epoch += 1;
        self.stats.checkpoints += 1;
        let queue = core::mem::take(&mut self.hold_queue);
        for (_, handle) in queue {
            if let Some(conn) = self.table.get_mut(handle) {
                conn.normalize(self.epoch);
                let held = core::mem::take(&mut conn.held);
                let offsets = conn.offsets.unwrap_or(Offsets::ZERO);
                self.release(offsets, held);
            }
        }
    }

    /// The secondary became the only VM. Connections with an entry keep being
    /// rewritten for as long as they live; new connections pass untouched.
    pub fn failover(&mut self) {
        self.failover = true;
    }

    /// The earliest time [`Rewriter::handle_timeout`] has work to do. It may be earlier
    /// than needed (a queued deadline of an entry that has since gone), never later.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let idle = self
            .table
            .lru()
            .and_then(|h| self.table.get(h))
            .map(|c| c.last_seen + self.idle_timeout());
        let linger = self.linger_queue.front().map(|(t, _)| *t);
        let hold = self.hold_queue.front().map(|(t, _)| *t);
        [idle, linger, hold].into_iter().flatten().min()
    }

    /// Expire lingering and idle entries and held frames whose time has come.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(deadline, handle)) = self.linger_queue.front() {
            if deadline > now {
                break;
            }
            self.linger_queue.pop_front();
            if self.table.get(handle).is_some_and(|c| c.closing) {
                self.remove(handle);
                self.stats.expired_linger += 1;
            }
        }
        while let Some(&(deadline, handle)) = self.hold_queue.front() {
            if deadline > now {
                break;
            }
            self.hold_queue.pop_front();
            let timeout = self.config.hold_timeout;
            if let Some(conn) = self.table.get_mut(handle)
                && !conn.held.is_empty()
                && conn.hold_since + timeout <= now
            {
                let n = conn.held.len();
                conn.held.clear();
                self.held_frames -= n;
                self.stats.held_expired += n as u64;
            }
        }
        let idle = self.idle_timeout();
        while let Some(handle) = self.table.lru() {
            match self.table.get(handle) {
                Some(c) if c.last_seen + idle <= now => {
                    self.remove(handle);
                    self.stats.expired_idle += 1;
                }
                _ => break,
            }
        }
    }

    fn idle_timeout(&self) -> Duration {
        if self.failover {
            self.config.failover_idle_timeout
        } else {
            self.config.idle_timeout
        }
    }

    fn pass(&mut self, reason: PassReason) -> Verdict {
        self.stats.count_pass(reason);
        Verdict::Unchanged(reason)
    }

    fn remove(&mut self, handle: Handle) {
        if let Some(conn) = self.table.remove(handle) {
            let n = conn.held.len();
            self.held_frames -= n;
            self.stats.held_expired += n as u64;
        }
    }

    fn process(
        &mut self,
        now: Instant,
        dir: Direction,
        vnet_hdr: &[u8],
        eth: &mut [u8],
    ) -> Verdict {
        let classified = classify(eth);
        let Some(tcp) = classified.tcp() else {
            return self.pass(PassReason::NotTcp);
        };
        let header_range = tcp.tcp_offset..tcp.tcp_offset + tcp.tcp_header_len;
        let Some(header) = eth.get(header_range) else {
            return self.pass(PassReason::NotTcp);
        };
        let opts = parse_options(header);
        let seg = Seg::new(tcp, opts.ok(), header);
        let key = classified.key;

        let h = match self.table.find(&key) {
            Some(h) => h,
            None => match self.open(now, dir, &key, classified.dir, &seg) {
                Ok(h) => h,
                Err(verdict) => return verdict,
            },
        };
        let (h, step) = match self.step(h, now, dir, classified.dir, &seg) {
            Step::Replace => {
                // The entry described a finished connection: forget it, start over.
                self.stats.syn_replaced += 1;
                self.remove(h);
                let h = match self.open(now, dir, &key, classified.dir, &seg) {
                    Ok(h) => h,
                    Err(verdict) => return verdict,
                };
                (h, self.step(h, now, dir, classified.dir, &seg))
            }
            // A frame travelling the wrong way says nothing about this connection.
            Step::Pass(PassReason::DirectionMismatch) => {
                return self.pass(PassReason::DirectionMismatch);
            }
            step => (h, step),
        };
        self.table.touch(h);
        let Some(conn) = self.table.get_mut(h) else {
            return self.pass(PassReason::NoConnection);
        };
        let closing = conn.closing_now(&seg);
        conn.closing |= closing;
        if dir == Direction::FromSecondary && seg.ack_flag && !seg.rst {
            conn.note_vm_segment(eth, tcp, &seg);
        }
        let release = if conn.offsets.is_some() && !conn.held.is_empty() {
            Some((
                conn.offsets.unwrap_or(Offsets::ZERO),
                core::mem::take(&mut conn.held),
            ))
        } else {
            None
        };
        if closing {
            self.stats.closed += 1;
            self.linger_queue
                .push_back((now + self.config.close_linger, h));
        }
        if let Some((offsets, held)) = release {
            self.release(offsets, held);
        }
        match step {
            Step::Rewrite => self.apply(h, dir, vnet_hdr, eth, tcp),
            Step::Pass(reason) => self.pass(reason),
            Step::Hold => self.hold(now, h, vnet_hdr, eth),
            // A fresh entry is never replaced.
            Step::Replace => self.pass(PassReason::ConflictingSyn),
        }
    }

    /// Run the state machine of entry `h` on `seg`.
    fn step(
        &mut self,
        h: Handle,
        now: Instant,
        dir: Direction,
        flow_dir: FlowDir,
        seg: &Seg,
    ) -> Step {
        let epoch = self.epoch;
        let Some(conn) = self.table.get_mut(h) else {
            return Step::Pass(PassReason::NoConnection);
        };
        conn.normalize(epoch);
        let expected = match dir {
            Direction::FromSecondary => conn.vm_dir,
            Direction::ToSecondary => reverse(conn.vm_dir),
        };
        if flow_dir != expected {
            return Step::Pass(PassReason::DirectionMismatch);
        }
        conn.last_seen = now;
        match dir {
            Direction::FromSecondary => from_secondary(conn, seg, &mut self.stats),
            Direction::ToSecondary => to_secondary(conn, seg, &mut self.stats),
        }
    }

    /// Create the entry for a connection first seen with `seg`.
    fn open(
        &mut self,
        now: Instant,
        dir: Direction,
        key: &FlowKey,
        flow_dir: FlowDir,
        seg: &Seg,
    ) -> Result<Handle, Verdict> {
        if self.failover {
            return Err(self.pass(PassReason::Untracked));
        }
        if seg.rst {
            return Err(self.pass(PassReason::NoConnection));
        }
        let vm_dir = match dir {
            Direction::FromSecondary => flow_dir,
            Direction::ToSecondary => reverse(flow_dir),
        };
        let open = match (dir, seg.syn, seg.ack_flag) {
            (Direction::ToSecondary, true, false) | (Direction::FromSecondary, true, true) => {
                OpenKind::Passive
            }
            (Direction::FromSecondary, true, false) | (Direction::ToSecondary, true, true) => {
                OpenKind::Active
            }
            (_, false, _) => OpenKind::Midstream,
        };
        if self.table.len() >= self.config.max_connections && !self.evict_one(now) {
            return Err(self.pass(PassReason::TableFull));
        }
        match open {
            OpenKind::Passive => self.stats.passive_opens += 1,
            OpenKind::Active => self.stats.active_opens += 1,
            OpenKind::Midstream => self.stats.midstream_assumed += 1,
        }
        Ok(self
            .table
            .insert(*key, Conn::new(open, vm_dir, self.epoch, now)))
    }

    /// Make room for one entry: a closing entry, else the least recently used one if it
    /// is idle-expired or has nothing to forget (zero offsets, nothing held).
    fn evict_one(&mut self, now: Instant) -> bool {
        while let Some(&(_, handle)) = self.linger_queue.front() {
            self.linger_queue.pop_front();
            if self.table.get(handle).is_some_and(|c| c.closing) {
                self.remove(handle);
                self.stats.evicted += 1;
                return true;
            }
        }
        let idle = self.idle_timeout();
        let epoch = self.epoch;
        let Some(handle) = self.table.lru() else {
            return false;
        };
        let Some(conn) = self.table.get_mut(handle) else {
            return false;
        };
        conn.normalize(epoch);
        let harmless = conn.held.is_empty() && conn.offsets.is_some_and(|o| o.is_zero());
        if harmless || conn.last_seen + idle <= now {
            self.remove(handle);
            self.stats.evicted += 1;
            true
        } else {
            false
        }
    }

    fn apply(
        &mut self,
        h: Handle,
        dir: Direction,
        vnet_hdr: &[u8],
        eth: &mut [u8],
        tcp: &TcpMeta,
    ) -> Verdict {
        let Some(offsets) = self.table.get(h).and_then(|c| c.offsets) else {
            return self.pass(match dir {
                Direction::FromSecondary => PassReason::OffsetUnknown,
                Direction::ToSecondary => PassReason::NothingToRewrite,
            });
        };
        let partial = checksum::vnet_needs_csum(vnet_hdr);
        let applied = apply_offsets(offsets, dir, partial, eth, tcp);
        if applied.options_malformed {
            self.stats.options_malformed += 1;
        }
        if applied.changed {
            self.stats.rewritten += 1;
            if partial {
                self.stats.partial_checksum += 1;
            }
            Verdict::Rewritten
        } else {
            self.pass(PassReason::NothingToRewrite)
        }
    }

    fn hold(&mut self, now: Instant, h: Handle, vnet_hdr: &[u8], eth: &[u8]) -> Verdict {
        let per_conn = self.config.max_held_per_connection;
        let full = self.held_frames >= self.config.max_held_frames;
        let Some(conn) = self.table.get_mut(h) else {
            return self.pass(PassReason::NoConnection);
        };
        if full || conn.held.len() >= per_conn {
            self.stats.dropped_hold_full += 1;
            return Verdict::Drop(DropReason::HoldFull);
        }
        if conn.held.is_empty() {
            conn.hold_since = now;
            self.hold_queue
                .push_back((now + self.config.hold_timeout, h));
        }
        let mut data = Vec::with_capacity(vnet_hdr.len() + eth.len());
        data.extend_from_slice(vnet_hdr);
        data.extend_from_slice(eth);
        conn.held.push(Held {
            vnet_len: vnet_hdr.len(),
            data,
        });
        self.held_frames += 1;
        self.stats.held += 1;
        Verdict::Held
    }

    /// Rewrite held frames with `offsets` and queue them for the secondary.
    fn release(&mut self, offsets: Offsets, held: Vec<Held>) {
        for mut frame in held {
            self.held_frames -= 1;
            self.stats.released += 1;
            let vnet_len = frame.vnet_len.min(frame.data.len());
            let (vnet, eth) = frame.data.split_at_mut(vnet_len);
            let partial = checksum::vnet_needs_csum(vnet);
            if let Some(tcp) = classify(eth).tcp() {
                let applied = apply_offsets(offsets, Direction::ToSecondary, partial, eth, tcp);
                if applied.options_malformed {
                    self.stats.options_malformed += 1;
                }
            }
            self.released.push_back(Frame {
                vnet_hdr_len: u32::try_from(vnet_len).unwrap_or(u32::MAX),
                data: Bytes::from(frame.data),
            });
        }
    }
}

const fn reverse(dir: FlowDir) -> FlowDir {
    match dir {
        FlowDir::LoToHi => FlowDir::HiToLo,
        FlowDir::HiToLo => FlowDir::LoToHi,
    }
}

/// The state machine for a secondary's segment on a tracked connection.
fn from_secondary(conn: &mut Conn, seg: &Seg, stats: &mut RewriteStats) -> Step {
    if seg.fin {
        conn.fin_vm = true;
    }
    if !seg.syn {
        return Step::Rewrite;
    }
    if seg.data {
        stats.syn_with_data += 1;
    }
    let info = SynInfo {
        isn: seg.seq,
        tsval: seg.tsval,
    };
    if seg.ack_flag {
        // SYN-ACK: the secondary answers a client.
        match conn.svm {
            None => {
                conn.svm = Some(info);
                conn.try_learn(stats);
            }
            Some(s) if s.isn == seg.seq => {
                if conn.offsets.is_none() {
                    // A retransmission: the client will echo its latest TSval.
                    conn.svm = Some(info);
                }
            }
            Some(_) => return Step::Pass(PassReason::ConflictingSyn),
        }
    } else {
        // SYN: the secondary connects out.
        match conn.svm {
            Some(s) if s.isn == seg.seq => {}
            None if conn.offsets.is_none() => {
                conn.svm = Some(info);
                conn.try_learn(stats);
            }
            // The VM sends a SYN only on a 4-tuple it has no connection on: whatever
            // the entry describes is over.
            _ => return Step::Replace,
        }
    }
    if conn.offsets.is_some() {
        Step::Rewrite
    } else {
        Step::Pass(PassReason::Handshake)
    }
}

/// The state machine for a client's (mirrored) segment on a tracked connection.
fn to_secondary(conn: &mut Conn, seg: &Seg, stats: &mut RewriteStats) -> Step {
    if seg.fin {
        conn.fin_peer = true;
    }
    if seg.syn && !seg.ack_flag {
        if seg.data {
            stats.syn_with_data += 1;
        }
        match conn.peer_isn {
            Some(isn) if isn == seg.seq => {}
            // A new connection on the addresses of a finished or unanswered one.
            Some(_) if conn.closing || conn.offsets.is_none() => return Step::Replace,
            None if conn.closing => return Step::Replace,
            None if conn.offsets.is_none() => conn.peer_isn = Some(seg.seq),
            // A SYN on a live connection: the VM answers with a challenge ACK and the
            // client resets; keep translating the live connection meanwhile.
            _ => return Step::Pass(PassReason::ConflictingSyn),
        }
        return Step::Pass(PassReason::Handshake);
    }
    if !seg.ack_flag {
        // Nothing client-side is in the VM's spaces without ACK.
        return Step::Pass(PassReason::NothingToRewrite);
    }
    if seg.syn && seg.data {
        stats.syn_with_data += 1;
    }
    if conn.offsets.is_some() {
        return Step::Rewrite;
    }
    if conn.pvm.is_none() {
        // The first acknowledgement of the VM: ISN_p + 1, echoing the primary's TSval.
        conn.pvm = Some(SynInfo {
            isn: seg.ack.sub(1),
            tsval: seg.tsecr,
        });
    }
    if conn.try_learn(stats) {
        Step::Rewrite
    } else {
        Step::Hold
    }
}

/// Apply `offsets` to the TCP header of `eth` in place, updating the checksum
/// incrementally unless it is partial.
fn apply_offsets(
    offsets: Offsets,
    dir: Direction,
    partial_csum: bool,
    eth: &mut [u8],
    tcp: &TcpMeta,
) -> Applied {
    let start = tcp.tcp_offset;
    let Some(header) = eth.get_mut(start..start + tcp.tcp_header_len) else {
        return Applied::default();
    };
    // The data offset field is 4 bits: a TCP header never exceeds 60 bytes.
    let len = header.len().min(60);
    let header = &mut header[..len];
    let mut old = [0u8; 60];
    old[..len].copy_from_slice(header);
    let opts = parse_options(header);
    let options_malformed = opts.is_err();
    let opts = opts.unwrap_or_default();

    let shift = |header: &mut [u8], at: usize, by: u32, add: bool| {
        if let Some(v) = read_u32(header, at) {
            write_u32(
                header,
                at,
                if add {
                    v.wrapping_add(by)
                } else {
                    v.wrapping_sub(by)
                },
            );
        }
    };
    match dir {
        Direction::FromSecondary => {
            shift(header, 4, offsets.seq, true);
            if let (Some(ts), Some(at)) = (offsets.ts, opts.timestamps) {
                shift(header, at, ts, true);
            }
        }
        Direction::ToSecondary => {
            if tcp.flags.contains(TcpFlags::ACK) {
                shift(header, 8, offsets.seq, false);
                if let Some((at, blocks)) = opts.sack {
                    for edge in 0..blocks * 2 {
                        shift(header, at + 4 * edge, offsets.seq, false);
                    }
                }
                if let (Some(ts), Some(at)) = (offsets.ts, opts.timestamps) {
                    shift(header, at + 4, ts, false);
                }
            }
        }
    }
    let changed = header[..] != old[..len];
    if changed && !partial_csum && len >= TCP_CHECKSUM_OFFSET + 2 {
        let csum =
            u16::from_be_bytes([header[TCP_CHECKSUM_OFFSET], header[TCP_CHECKSUM_OFFSET + 1]]);
        // The checksum field is equal in both, so it contributes nothing.
        let csum = checksum::update_bytes(csum, &old[..len], header);
        header[TCP_CHECKSUM_OFFSET..TCP_CHECKSUM_OFFSET + 2].copy_from_slice(&csum.to_be_bytes());
    }
    Applied {
        changed,
        options_malformed,
    }
}
