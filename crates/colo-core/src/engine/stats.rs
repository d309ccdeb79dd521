//! Counters for everything the engine does.

use crate::engine::output::{CheckpointReason, Limit};
use crate::frame::Side;

/// Why a frame was dropped instead of queued or released.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// A secondary frame: secondary output is only compared, never released. Counted
    /// when it is discarded unmatched (checkpoint flush or a diverged stream).
    SecondaryDiscarded,
    /// A frame arrived while a queue cap was exceeded.
    QueueFull,
    /// A frame of a new connection arrived while the table was full and nothing
    /// could be evicted (secondary only; primary frames are held for the checkpoint).
    TableFull,
    /// A secondary frame of a flow whose policy is `pass`: not compared, discarded.
    Policy,
}

impl DropReason {
    /// Every reason, in counter order.
    pub const ALL: [Self; 4] = [
        Self::SecondaryDiscarded,
        Self::QueueFull,
        Self::TableFull,
        Self::Policy,
    ];

    /// Stable snake_case name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::SecondaryDiscarded => "secondary_discarded",
            Self::QueueFull => "queue_full",
            Self::TableFull => "table_full",
            Self::Policy => "policy",
        }
    }
}

/// Engine counters. Monotonic unless noted as a gauge.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Frames received, per side (index with [`Side::index`]).
    pub frames_in: [u64; 2],
    /// Bytes received, per side.
    pub bytes_in: [u64; 2],
    /// TCP payload bytes received, per side.
    pub tcp_payload_in: [u64; 2],
    /// TCP payload bytes matched between the sides.
    pub bytes_matched: u64,
    /// Datagrams matched between the sides.
    pub datagrams_matched: u64,
    /// Primary frames released to the client.
    pub released_frames: u64,
    /// Bytes of primary frames released.
    pub released_bytes: u64,
    /// Primary frames released without comparison by a checkpoint flush.
    pub released_by_flush: u64,
    /// Primary frames released without comparison in pass-through (degraded) mode.
    pub released_unchecked: u64,
    /// Primary frames released without comparison because their flow's policy is `pass`.
    pub released_by_policy: u64,
    /// Primary frames released by a window clamp rewrite.
    pub window_clamped: u64,
    /// Dropped frames, per [`DropReason`] (index = position in `DropReason::ALL`), per side.
    pub dropped: [[u64; 4]; 2],
    /// Divergences detected, per [`CheckpointReason`].
    pub divergences: [u64; 7],
    /// Checkpoint requests emitted, per [`CheckpointReason`] of their cause.
    pub checkpoints_requested: [u64; 7],
    /// Divergences folded into an outstanding or deferred request.
    pub checkpoints_coalesced: u64,
    /// Checkpoints completed (epochs started).
    pub checkpoints_done: u64,
    /// Times each limit was reached.
    pub limits_reached: [u64; 5],
    /// Connections created.
    pub connections_created: u64,
    /// Connections evicted to make room.
    pub connections_evicted: u64,
    /// Connections removed after close or idleness.
    pub connections_expired: u64,
    /// Gauge: connections tracked now.
    pub connections_active: u64,
    /// Gauge: primary frames held now.
    pub held_frames: u64,
    /// Gauge: bytes held now (frames and reassembly buffers).
    pub held_bytes: u64,
    /// Stale TCP bytes (before the compared front) seen, per side.
    pub stale_bytes: [u64; 2],
}

impl EngineStats {
    /// Count a drop.
    pub(crate) fn drop(&mut self, side: Side, reason: DropReason, n: u64) {
        let i = DropReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.dropped[side.index()][i] += n;
    }

    /// Drops of one reason on one side.
    #[must_use]
    pub fn dropped(&self, side: Side, reason: DropReason) -> u64 {
        let i = DropReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.dropped[side.index()][i]
    }

    /// Checkpoint requests for one reason.
    #[must_use]
    pub fn checkpoints(&self, reason: CheckpointReason) -> u64 {
        self.checkpoints_requested[reason.index()]
    }

    /// Total checkpoint requests.
    #[must_use]
    pub fn checkpoints_total(&self) -> u64 {
        self.checkpoints_requested.iter().sum()
    }

    /// Total divergences.
    #[must_use]
    pub fn divergences_total(&self) -> u64 {
        self.divergences.iter().sum()
    }

    pub(crate) fn limit(&mut self, limit: Limit) {
        self.limits_reached[limit as usize] += 1;
    }
}
