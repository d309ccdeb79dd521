//! What the engine hands to its shell: frames to release, divergences to report and
//! checkpoints to ask for. A divergence is an event, not an error.

use core::fmt;

use crate::classify::TcpFlags;
use crate::flow::FlowKey;
use crate::frame::{Frame, Side};
use crate::time::{Duration, Instant};

/// One unit of work for the I/O shell, in the order the engine produced it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Output {
    /// Send this primary frame to the client: everything it says has been matched.
    Release(Frame),
    /// The two VMs disagreed (or a limit was hit). Reported for every occurrence,
    /// including those folded into an outstanding checkpoint request.
    Divergence(Divergence),
    /// Ask the COLO framework for a checkpoint. At most one is outstanding; call
    /// [`crate::engine::Engine::handle_checkpoint_done`] when it has completed.
    RequestCheckpoint(CheckpointRequest),
    /// A configured limit was reached; what the engine did about it is in `action`.
    LimitReached {
        /// Which limit.
        limit: Limit,
        /// The flow concerned, when there is one.
        flow: Option<FlowKey>,
        /// What the engine did.
        action: &'static str,
    },
}

/// A checkpoint request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointRequest {
    /// Increasing request number (1 for the first).
    pub id: u64,
    /// The divergence that caused it (the first one, when several were coalesced).
    pub cause: Divergence,
}

/// A divergence between the two VMs' output, or a condition that needs a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Divergence {
    /// When it was detected.
    pub at: Instant,
    /// The engine epoch (number of completed checkpoints) it belongs to.
    pub epoch: u64,
    /// The flow concerned, when there is one.
    pub flow: Option<FlowKey>,
    /// What happened.
    pub kind: DivergenceKind,
}

impl Divergence {
    /// The reason class, for counters and reports.
    #[must_use]
    pub fn reason(&self) -> CheckpointReason {
        self.kind.reason()
    }
}

/// How a connection ended, as seen on one side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// Not closed (no FIN or RST where the other side had one).
    Open,
    /// FIN at a stream offset.
    Fin(u64),
    /// RST at a stream offset.
    Rst(u64),
}

/// What diverged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DivergenceKind {
    /// The TCP byte streams differ. `primary` and `secondary` hold up to 16 bytes from
    /// the first differing byte (fewer where a side has fewer).
    Payload {
        /// Stream offset of the first differing byte (0 = first byte after the SYN).
        offset: u64,
        /// Primary bytes from `offset`.
        primary: Vec<u8>,
        /// Secondary bytes from `offset`.
        secondary: Vec<u8>,
    },
    /// A retransmission carried bytes that differ from what that side sent before.
    Retransmission {
        /// Which VM retransmitted.
        side: Side,
        /// Stream offset of the first differing byte.
        offset: u64,
        /// The byte seen first.
        held: u8,
        /// The byte in the retransmission.
        offered: u8,
    },
    /// SYN flags disagree (SYN vs SYN-ACK).
    Handshake {
        /// Primary flags.
        primary: TcpFlags,
        /// Secondary flags.
        secondary: TcpFlags,
    },
    /// The sides closed the stream differently (FIN vs RST, or at other offsets).
    CloseMismatch {
        /// Primary's close.
        primary: Close,
        /// Secondary's close.
        secondary: Close,
    },
    /// Datagram number `index` of the flow differs.
    Datagram {
        /// Zero-based index of the datagram within the flow and epoch.
        index: u64,
        /// Primary datagram length (header fields + body).
        primary_len: usize,
        /// Secondary datagram length.
        secondary_len: usize,
        /// First differing byte of the compared body, if the difference is there.
        first_difference: Option<usize>,
    },
    /// A primary frame waited `waited` for matching secondary output (QEMU's only
    /// timeout reason). Also covers the ACK gate waiting on the secondary's ACK.
    SecondaryTooSlow {
        /// How long the oldest frame waited.
        waited: Duration,
    },
    /// The secondary produced output that the primary did not match within the timeout.
    SecondaryUnmatched {
        /// How long the secondary output waited.
        waited: Duration,
    },
    /// A limit was reached: comparing further would need more memory than allowed.
    LimitReached {
        /// Which limit.
        limit: Limit,
    },
}

impl DivergenceKind {
    /// The reason class.
    #[must_use]
    pub fn reason(&self) -> CheckpointReason {
        match self {
            Self::Payload { .. } => CheckpointReason::Payload,
            Self::Retransmission { .. } => CheckpointReason::Retransmission,
            Self::Handshake { .. } | Self::CloseMismatch { .. } => CheckpointReason::TcpControl,
            Self::Datagram { .. } => CheckpointReason::Datagram,
            Self::SecondaryTooSlow { .. } => CheckpointReason::SecondaryTooSlow,
            Self::SecondaryUnmatched { .. } => CheckpointReason::SecondaryUnmatched,
            Self::LimitReached { .. } => CheckpointReason::Limit,
        }
    }
}

/// Why a checkpoint was asked for, as a small enum for counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CheckpointReason {
    /// TCP payload bytes differ.
    Payload,
    /// A retransmission differs from the original.
    Retransmission,
    /// SYN/FIN/RST disagree.
    TcpControl,
    /// A datagram differs.
    Datagram,
    /// The secondary did not match primary output in time.
    SecondaryTooSlow,
    /// The primary did not match secondary output in time.
    SecondaryUnmatched,
    /// A queue, table or reassembly limit was reached.
    Limit,
}

impl CheckpointReason {
    /// Every reason, in counter order.
    pub const ALL: [Self; 7] = [
        Self::Payload,
        Self::Retransmission,
        Self::TcpControl,
        Self::Datagram,
        Self::SecondaryTooSlow,
        Self::SecondaryUnmatched,
        Self::Limit,
    ];

    /// Stable snake_case name (used in logs, JSON and metrics).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Payload => "payload",
            Self::Retransmission => "retransmission",
            Self::TcpControl => "tcp_control",
            Self::Datagram => "datagram",
            Self::SecondaryTooSlow => "secondary_too_slow",
            Self::SecondaryUnmatched => "secondary_unmatched",
            Self::Limit => "limit",
        }
    }

    /// Index into per-reason counter arrays.
    #[must_use]
    pub const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for CheckpointReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A configured limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    /// `max_connections`.
    Connections,
    /// `max_held_frames_per_conn`.
    HeldFramesPerConn,
    /// `max_conn_bytes`.
    ConnBytes,
    /// `max_total_bytes`.
    TotalBytes,
    /// The reassembler's hole limit (smoltcp assembler contigs).
    ReassemblyHoles,
}

impl Limit {
    /// Stable snake_case name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Connections => "max_connections",
            Self::HeldFramesPerConn => "max_held_frames_per_conn",
            Self::ConnBytes => "max_conn_bytes",
            Self::TotalBytes => "max_total_bytes",
            Self::ReassemblyHoles => "reassembly_holes",
        }
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Divergence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.reason())?;
        if let Some(flow) = &self.flow {
            write!(f, " on {flow}")?;
        }
        match &self.kind {
            DivergenceKind::Payload {
                offset,
                primary,
                secondary,
            } => write!(
                f,
                " at stream offset {offset}: primary {} vs secondary {}",
                Escaped(primary),
                Escaped(secondary)
            ),
            DivergenceKind::Retransmission {
                side,
                offset,
                held,
                offered,
            } => write!(
                f,
                ": {} retransmitted offset {offset} as {offered:#04x}, first sent as {held:#04x}",
                side.name()
            ),
            DivergenceKind::Handshake { primary, secondary } => {
                write!(f, ": SYN flags {:#04x} vs {:#04x}", primary.0, secondary.0)
            }
            DivergenceKind::CloseMismatch { primary, secondary } => {
                write!(f, ": primary {primary:?} vs secondary {secondary:?}")
            }
            DivergenceKind::Datagram {
                index,
                primary_len,
                secondary_len,
                first_difference,
            } => {
                write!(
                    f,
                    ": datagram #{index}, {primary_len} vs {secondary_len} bytes"
                )?;
                if let Some(d) = first_difference {
                    write!(f, ", first difference at byte {d}")?;
                }
                Ok(())
            }
            DivergenceKind::SecondaryTooSlow { waited } => {
                write!(f, ": primary output waited {waited} for the secondary")
            }
            DivergenceKind::SecondaryUnmatched { waited } => {
                write!(f, ": secondary output waited {waited} unmatched")
            }
            DivergenceKind::LimitReached { limit } => write!(f, ": {limit} reached"),
        }
    }
}

/// Bytes shown as an escaped string: `"GET /\r\n"`.
struct Escaped<'a>(&'a [u8]);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"")?;
        for &b in self.0 {
            for c in core::ascii::escape_default(b) {
                f.write_str(char::from(c).encode_utf8(&mut [0; 4]))?;
            }
        }
        f.write_str("\"")
    }
}
