//! Engine configuration: every limit the engine enforces, with defaults that match
//! QEMU's colo-compare where QEMU has an equivalent.

use crate::time::Duration;

/// How the secondary's TCP sequence numbers relate to the primary's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SeqAlignment {
    /// The secondary's output has been rewritten into the primary's sequence space
    /// (by colo-proxy's rewriter or QEMU's filter-rewriter). Only the secondary's own
    /// SYN carries its own ISN; the stream origin is taken from the primary.
    #[default]
    Shared,
    /// Each side's stream starts at its own ISN (no rewriter upstream, as in two raw
    /// captures). Offsets are aligned by each side's SYN; after a checkpoint both sides
    /// share the primary's numbers, since the secondary is then a copy of the primary.
    PerSideIsn,
}

/// Engine settings. `Default` gives QEMU-compatible timing and generous caps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// A primary frame (or secondary output) unmatched for this long asks for a
    /// checkpoint (QEMU `compare_timeout`, default 3000 ms).
    pub compare_timeout: Duration,
    /// QEMU's `expired_scan_cycle` (default 1000 ms). The engine checks deadlines
    /// exactly, so this only bounds how stale the idle-expiry pass may be.
    pub expired_scan_cycle: Duration,
    /// Minimum time between the end of one checkpoint and the next request; later
    /// divergences inside it are coalesced into one deferred request.
    pub checkpoint_min_interval: Duration,
    /// Maximum tracked connections (QEMU resets everything at 16384; we evict idle
    /// connections, and ask for a checkpoint when none can go).
    pub max_connections: usize,
    /// Maximum primary frames held per connection (QEMU `max_queue_size`).
    pub max_held_frames_per_conn: usize,
    /// Maximum bytes held per connection: held primary frames plus both sides'
    /// reassembly buffers.
    pub max_conn_bytes: usize,
    /// Maximum bytes held by the whole engine.
    pub max_total_bytes: usize,
    /// A connection with nothing pending and no traffic for this long is forgotten.
    pub idle_timeout: Duration,
    /// A connection closed by RST, or by FIN both ways, is forgotten this long after
    /// its last frame (late retransmissions still find it).
    pub close_linger: Duration,
    /// A connection whose VM side sent FIN (client's FIN not seen) is forgotten after
    /// this long without traffic.
    pub half_close_timeout: Duration,
    /// Hold a primary frame until the secondary has acknowledged as much client data
    /// as the frame does, so a failover never loses data the client believes delivered.
    pub ack_gate: bool,
    /// Clamp the window of released primary frames to the secondary's last window.
    pub clamp_window: bool,
    /// How the two sides' sequence numbers relate.
    pub seq_alignment: SeqAlignment,
    /// Per-flow policies in force from the start (see [`super::FlowPolicy`]); more
    /// can be set with [`super::Engine::set_flow_policy`].
    pub flow_rules: Vec<super::FlowRule>,
    /// Most flow rules in force at once.
    pub max_flow_rules: usize,
    /// From how many tracked connections on [`super::Engine::handle_frames`] groups
    /// frames to overlap their cache misses. Below it the table stays in the caches
    /// and frames are handled one by one; the outcome is the same either way.
    pub batch_from_connections: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            compare_timeout: Duration::from_millis(3000),
            expired_scan_cycle: Duration::from_millis(1000),
            checkpoint_min_interval: Duration::from_millis(100),
            max_connections: 1 << 20,
            max_held_frames_per_conn: 16_384,
            max_conn_bytes: 16 << 20,
            max_total_bytes: 512 << 20,
            idle_timeout: Duration::from_secs(300),
            close_linger: Duration::from_secs(5),
            half_close_timeout: Duration::from_secs(60),
            ack_gate: true,
            clamp_window: false,
            seq_alignment: SeqAlignment::Shared,
            flow_rules: Vec::new(),
            max_flow_rules: 1024,
            batch_from_connections: 65_536,
        }
    }
}
