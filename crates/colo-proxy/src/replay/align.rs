//! How a paired TCP connection's secondary sequence numbers are put into the primary's
//! space: by colo-core's [`Rewriter`], as live, or, where the rewriter cannot learn the
//! offsets from the captures, by the difference of the two VMs' first sequence numbers.
//!
//! Live, the rewriter on the secondary host learns `ISN_p - ISN_s` from the client's
//! SYN (mirrored), the secondary's SYN-ACK, and the client's first ACK (which
//! acknowledges the primary's ISN), then rewrites the secondary's sequence numbers and
//! TCP timestamps (and, towards the secondary, the client's acknowledgements, SACK
//! blocks and timestamp echoes). The replay drives one [`Rewriter`] the same way: the
//! primary capture's client frames go through `Direction::ToSecondary` (what the
//! secondary host would have received), the secondary capture's VM frames, once moved to
//! the primary's addresses and ports, through `Direction::FromSecondary`.

use colo_core::Instant;
use colo_core::flow::{FlowKey, FlowProto};
use colo_core::rewrite::{PassReason, RewriteConfig, Rewriter, Verdict};

use super::index::ConnInfo;

/// How the secondary's TCP sequence numbers of a paired connection are aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqAlign {
    /// By the rewriter (both VMs' handshakes and the client's are in the captures).
    Rewriter,
    /// By the difference of the two VMs' first sequence numbers (a handshake is
    /// missing from a capture, so the rewriter cannot learn the offset); TCP timestamps
    /// are then not aligned (the engine does not compare them).
    FirstSegment,
    /// Not aligned: the address families differ, or a side sent no TCP segment.
    Unaligned,
}

impl SeqAlign {
    /// Stable name for reports.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Rewriter => "rewriter",
            Self::FirstSegment => "first_segment",
            Self::Unaligned => "unaligned",
        }
    }
}

/// Decide the alignment of a paired TCP connection, with the sequence delta the shell
/// applies itself (`FirstSegment` only).
#[must_use]
pub fn decide(p: &ConnInfo, s: &ConnInfo) -> (SeqAlign, u32) {
    let v4 = |c: &ConnInfo| c.vm.addr[..12] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];
    if p.key.proto != FlowProto::Tcp || v4(p) != v4(s) {
        return (SeqAlign::Unaligned, 0);
    }
    if p.vm_handshake && s.vm_handshake && p.client_handshake {
        return (SeqAlign::Rewriter, 0);
    }
    match (p.vm_first_seq, s.vm_first_seq) {
        (Some(a), Some(b)) => (SeqAlign::FirstSegment, a.wrapping_sub(b)),
        _ => (SeqAlign::Unaligned, 0),
    }
}

/// The replay's rewriter: one for the whole run, as on the secondary host.
#[derive(Debug)]
pub struct Aligner {
    rewriter: Rewriter,
    next_tick: Instant,
    /// Secondary frames the caller keeps until their offsets are learnt (all
    /// connections; the caller bounds it).
    pub parked: usize,
}

impl Default for Aligner {
    fn default() -> Self {
        Self::new()
    }
}

impl Aligner {
    /// A rewriter with the live defaults, except that nothing is dropped for lack of
    /// room: a replay has every connection's frames, so the table may be large.
    #[must_use]
    pub fn new() -> Self {
        Self {
            rewriter: Rewriter::new(RewriteConfig {
                max_connections: 1 << 20,
                ..RewriteConfig::default()
            }),
            next_tick: Instant::ZERO,
            parked: 0,
        }
    }

    /// A secondary VM frame, already in the primary's addresses and ports: rewrite its
    /// sequence number and timestamps. `false` means the offsets are not known yet (the
    /// primary's client has not acknowledged the primary's SYN-ACK in the merged
    /// timeline): the caller keeps the frame until [`Aligner::learned`].
    pub fn secondary_output(&mut self, now: Instant, eth: &mut [u8]) -> bool {
        self.tick(now);
        let verdict = self.rewriter.rewrite_from_secondary(now, &[], eth);
        verdict != Verdict::Unchanged(PassReason::OffsetUnknown)
    }

    /// A client frame of the primary capture, as mirrored to the secondary: it teaches
    /// the rewriter the client's ISN and the primary's. The rewritten bytes are not
    /// needed (no secondary VM is listening), so `eth` is scratch.
    pub fn client_input(&mut self, now: Instant, eth: &mut [u8]) {
        self.tick(now);
        let _ = self.rewriter.rewrite_to_secondary(now, &[], eth);
        while self.rewriter.poll_to_secondary().is_some() {}
    }

    /// Whether the offsets of `key` (the primary's flow) are known.
    #[must_use]
    pub fn learned(&self, key: &FlowKey) -> bool {
        self.rewriter
            .connection(key)
            .is_some_and(|c| c.offsets.is_some())
    }

    /// Expire the rewriter's entries on the captures' clock, at most once per
    /// millisecond of it (its timers are seconds long).
    fn tick(&mut self, now: Instant) {
        if now < self.next_tick {
            return;
        }
        self.next_tick = now + colo_core::Duration::from_millis(1);
        if self.rewriter.poll_timeout().is_some_and(|t| t <= now) {
            self.rewriter.handle_timeout(now);
        }
    }
}
