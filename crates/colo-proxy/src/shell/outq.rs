//! The output side: a bounded queue of encoded frames, and the task that writes it
//! to whoever is connected to an output endpoint (`--outdev`, `--to-secondary-out`,
//! ...).
//!
//! Backpressure policy: the driver never waits for the outdev. Released frames are
//! appended to [`OutQueue`], bounded in bytes (`--outdev-buffer`). While the outdev
//! peer is slow or disconnected the queue fills; a frame that does not fit is dropped
//! and counted (`outdev.dropped_*` in the stats, a warning in the log). A frame leaves
//! the queue only after it has been written whole, so a frame cut by a disconnect is
//! written again, from its first byte, to the next connection: nothing queued is lost
//! across an outdev reconnect. Reading the inputs therefore never blocks on the
//! outdev, and memory stays bounded by the engine's caps plus this buffer.
//!
//! Frames are queued as their QEMU framing prefix plus the frame's own `Bytes`
//! (a slice of the input's read buffer), so releasing a frame copies nothing, and the
//! writer sends everything queued (up to [`WRITE_BATCH_FRAMES`] frames or
//! [`WRITE_BATCH_BYTES`]) with one vectored write instead of a write per frame.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use colo_core::Frame;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::{Notify, mpsc};

use super::PeerChange;
use super::endpoint::Source;

/// Counters of the outdev queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutStats {
    /// Frames queued now (gauge).
    pub queued_frames: u64,
    /// Bytes queued now (gauge).
    pub queued_bytes: u64,
    /// Frames written to the outdev.
    pub written_frames: u64,
    /// Bytes written to the outdev.
    pub written_bytes: u64,
    /// Frames dropped because the queue was full.
    pub dropped_frames: u64,
    /// Bytes dropped because the queue was full.
    pub dropped_bytes: u64,
}

/// Most frames one vectored write takes (two slices each; Linux's `IOV_MAX` is 1024).
pub const WRITE_BATCH_FRAMES: usize = 256;
/// Most bytes one vectored write takes.
pub const WRITE_BATCH_BYTES: usize = 512 * 1024;

/// Longest prefix an entry can have (a link message's fixed part is at most 13).
pub const HEAD_MAX: usize = 16;

/// One queued frame: its framing prefix and its bytes.
#[derive(Debug, Clone)]
struct Wire {
    /// The framing prefix (QEMU's `len`, then `vnet_hdr_len` if on; or a link
    /// message's length, type and fixed fields); `head_len` bytes.
    head: [u8; HEAD_MAX],
    head_len: u8,
    body: Bytes,
}

impl Wire {
    fn len(&self) -> usize {
        usize::from(self.head_len) + self.body.len()
    }

    fn head(&self) -> &[u8] {
        &self.head[..usize::from(self.head_len)]
    }

    /// The entry as one piece: packet outputs queue bare frames, so this is the
    /// frame's own `Bytes`, not a copy; an entry with a prefix is copied once.
    fn to_packet(&self) -> Bytes {
        if self.head_len == 0 {
            self.body.clone()
        } else {
            let mut b = bytes::BytesMut::with_capacity(self.len());
            b.extend_from_slice(self.head());
            b.extend_from_slice(&self.body);
            b.freeze()
        }
    }
}

#[derive(Debug)]
struct Inner {
    frames: VecDeque<Wire>,
    /// Entries the writer has taken off `frames` and not yet written ([`Taken`]);
    /// still counted as queued, in `bytes` and in the gauges.
    taken: usize,
    bytes: usize,
    cap: usize,
    stats: OutStats,
}

/// Encoded frames waiting for the outdev, shared by the driver and the writer task.
#[derive(Debug, Clone)]
pub struct OutQueue {
    inner: Arc<Mutex<Inner>>,
    notify: Arc<Notify>,
}

impl OutQueue {
    /// An empty queue holding at most `cap` bytes (at least one frame always fits).
    pub fn new(cap: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                frames: VecDeque::new(),
                taken: 0,
                bytes: 0,
                cap,
                stats: OutStats::default(),
            })),
            notify: Arc::new(Notify::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queue bytes that are already encoded; `false` if they did not fit and were
    /// dropped (counted).
    #[cfg(test)]
    pub fn push(&self, wire: Bytes) -> bool {
        self.push_wire(Wire {
            head: [0; HEAD_MAX],
            head_len: 0,
            body: wire,
        })
    }

    /// Queue an entry made of a short prefix (at most [`HEAD_MAX`] bytes; longer is
    /// a bug and truncated) and a body that is not copied, written back to back;
    /// `false` if it did not fit and was dropped (counted).
    pub fn push_parts(&self, prefix: &[u8], body: Bytes) -> bool {
        debug_assert!(prefix.len() <= HEAD_MAX, "prefix of {} bytes", prefix.len());
        let n = prefix.len().min(HEAD_MAX);
        let mut head = [0u8; HEAD_MAX];
        head[..n].copy_from_slice(&prefix[..n]);
        self.push_wire(Wire {
            head,
            // n <= HEAD_MAX = 16.
            head_len: n as u8,
            body,
        })
    }

    /// Queue `frame` in QEMU's socket framing (with the `vnet_hdr_len` field if
    /// `vnet_hdr`), without copying its bytes; `false` if it did not fit and was
    /// dropped (counted).
    pub fn push_frame(&self, frame: &Frame, vnet_hdr: bool) -> bool {
        self.push_wire(stream_wire(frame.clone(), vnet_hdr))
    }

    fn push_wire(&self, wire: Wire) -> bool {
        self.push_wires(std::iter::once(wire)) == 0
    }

    /// Queue `wires` in order under one lock; returns how many did not fit and were
    /// dropped (counted).
    fn push_wires(&self, wires: impl IntoIterator<Item = Wire>) -> usize {
        let mut q = self.lock();
        let was_empty = q.frames.is_empty();
        let mut dropped = 0;
        for wire in wires {
            let len = wire.len();
            if q.bytes > 0 && q.bytes + len > q.cap {
                q.stats.dropped_frames += 1;
                q.stats.dropped_bytes += len as u64;
                dropped += 1;
                continue;
            }
            q.bytes += len;
            q.frames.push_back(wire);
        }
        let wake = was_empty && !q.frames.is_empty();
        drop(q);
        if wake {
            // The writer only waits when the queue is empty.
            self.notify.notify_one();
        }
        dropped
    }

    /// Counters, with the gauges brought up to date.
    pub fn stats(&self) -> OutStats {
        let q = self.lock();
        let mut s = q.stats;
        s.queued_frames = (q.frames.len() + q.taken) as u64;
        s.queued_bytes = q.bytes as u64;
        s
    }

    /// Whether nothing waits to be written.
    pub fn is_empty(&self) -> bool {
        let q = self.lock();
        q.frames.is_empty() && q.taken == 0
    }

    /// Move the first queued entries (at most `max_frames`, and `max_bytes` unless
    /// the first alone is larger) into `into` (emptied first), for the one writer
    /// of this queue. They count as queued until written; what is not written goes
    /// back to the front of the queue when the returned [`Taken`] is dropped.
    fn take<'a>(
        &'a self,
        max_frames: usize,
        max_bytes: usize,
        into: &'a mut Vec<Wire>,
    ) -> Taken<'a> {
        into.clear();
        let mut q = self.lock();
        let mut bytes = 0;
        while into.len() < max_frames {
            let Some(w) = q.frames.front() else { break };
            if !into.is_empty() && bytes + w.len() > max_bytes {
                break;
            }
            bytes += w.len();
            if let Some(w) = q.frames.pop_front() {
                into.push(w);
            }
        }
        q.taken += into.len();
        drop(q);
        Taken {
            queue: self,
            entries: into,
            done: 0,
        }
    }

    /// [`take`](Self::take) a write's worth ([`WRITE_BATCH_FRAMES`],
    /// [`WRITE_BATCH_BYTES`]), waiting while the queue is empty.
    async fn next_batch<'a>(&'a self, into: &'a mut Vec<Wire>) -> Taken<'a> {
        loop {
            if !self.lock().frames.is_empty() {
                return self.take(WRITE_BATCH_FRAMES, WRITE_BATCH_BYTES, into);
            }
            // Only an empty queue waits; a push into it stores a wake-up.
            self.notify.notified().await;
        }
    }
}

/// Entries the writer took off an [`OutQueue`]: `entries[..done]` have been dealt
/// with (written, or dropped after a failed send, and counted); the rest go back to
/// the front of the queue, in order, when this is dropped: after a failed write, or
/// when the writing task is cancelled by a disconnect. So a frame leaves the queue
/// only once written whole, without the writer cloning what it writes.
struct Taken<'a> {
    queue: &'a OutQueue,
    entries: &'a mut Vec<Wire>,
    done: usize,
}

impl Taken<'_> {
    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The next `n` entries were written whole.
    fn written(&mut self, n: usize) {
        let end = (self.done + n).min(self.entries.len());
        let bytes: usize = self.entries[self.done..end].iter().map(Wire::len).sum();
        let n = end - self.done;
        let mut q = self.queue.lock();
        q.taken -= n;
        q.bytes -= bytes;
        q.stats.written_frames += n as u64;
        q.stats.written_bytes += bytes as u64;
        drop(q);
        self.done = end;
    }

    /// The next entry could not be sent: dropped and counted.
    fn failed(&mut self) {
        let Some(w) = self.entries.get(self.done) else {
            return;
        };
        let mut q = self.queue.lock();
        q.taken -= 1;
        q.bytes -= w.len();
        q.stats.dropped_frames += 1;
        q.stats.dropped_bytes += w.len() as u64;
        drop(q);
        self.done += 1;
    }
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        let rest = self.entries.len() - self.done;
        if rest > 0 {
            let mut q = self.queue.lock();
            q.taken -= rest;
            for w in self.entries.drain(self.done..).rev() {
                q.frames.push_front(w);
            }
        }
        self.entries.clear();
    }
}

/// Entries at most this long (any standard-MTU frame) are copied into one staging
/// buffer and written as one slice with their neighbours: a vectored write's
/// per-slice cost in the kernel is larger than copying them (two slices per frame
/// otherwise). Measured: 130-byte frames 8-11% less proxy CPU; 1514-byte frames the
/// same proxy CPU and 8% less for the reader of outdev (docs/performance.md).
/// Jumbo frames keep their own slices.
pub const COALESCE_MAX: usize = 2048;

/// One slice of a batch on the wire.
#[derive(Debug, Clone)]
enum Piece {
    /// A run of small entries copied back to back into the staging buffer.
    Staged(std::ops::Range<usize>),
    /// The prefix of entry `i` of the batch.
    Head(usize),
    /// The body of entry `i` of the batch (not copied).
    Body(usize),
}

/// Writes the entries of `taken` whole with vectored writes, marking each written as
/// soon as its last byte is out (what is not written whole goes back to the queue
/// when `taken` is dropped). Small entries are copied into `stage` (reused from batch
/// to batch) and go out as one slice per run; larger ones go out as their prefix and
/// their own bytes.
async fn write_batch<W: AsyncWrite + Unpin>(
    wr: &mut W,
    taken: &mut Taken<'_>,
    stage: &mut Vec<u8>,
) -> std::io::Result<()> {
    stage.clear();
    let mut pieces = Vec::with_capacity(2 * taken.entries.len());
    // Where each entry ends on the wire, counted from the batch's first byte.
    let mut ends = Vec::with_capacity(taken.entries.len());
    let mut total = 0;
    for (i, w) in taken.entries.iter().enumerate() {
        if w.len() <= COALESCE_MAX {
            let start = stage.len();
            stage.extend_from_slice(w.head());
            stage.extend_from_slice(&w.body);
            match pieces.last_mut() {
                Some(Piece::Staged(run)) if run.end == start => run.end = stage.len(),
                _ => pieces.push(Piece::Staged(start..stage.len())),
            }
        } else {
            if w.head_len > 0 {
                pieces.push(Piece::Head(i));
            }
            pieces.push(Piece::Body(i));
        }
        total += w.len();
        ends.push(total);
    }
    let mut written = 0usize;
    while written < total {
        let n = {
            let batch: &[Wire] = taken.entries;
            let mut slices = Vec::with_capacity(pieces.len());
            let mut at = 0;
            for p in &pieces {
                let b: &[u8] = match p {
                    Piece::Staged(run) => &stage[run.clone()],
                    Piece::Head(i) => batch[*i].head(),
                    Piece::Body(i) => &batch[*i].body,
                };
                let (start, end) = (at, at + b.len());
                at = end;
                if end > written {
                    slices.push(IoSlice::new(&b[written.saturating_sub(start)..]));
                }
            }
            wr.write_vectored(&slices).await?
        };
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        written += n;
        let whole = ends[taken.done..]
            .iter()
            .take_while(|&&e| e <= written)
            .count();
        taken.written(whole);
    }
    Ok(())
}

/// Write the queue to the outdev peer, reconnecting as needed. Runs until the driver
/// is gone.
pub async fn run<E>(mut source: Source, queue: OutQueue, events: mpsc::Sender<E>)
where
    E: From<PeerChange> + Send + 'static,
{
    let role = source.role;
    loop {
        let io = source.next().await;
        if !PeerChange::announce(&events, role, true).await {
            return;
        }
        let (mut rd, mut wr) = tokio::io::split(io);
        let why = tokio::select! {
            why = write_queued(&mut wr, &queue) => why,
            why = ignore_input(&mut rd, role) => why,
        };
        tracing::info!(role, reason = %why, queued = queue.stats().queued_frames, "disconnected");
        if !PeerChange::announce(&events, role, false).await {
            return;
        }
    }
}

/// Read and discard what the peer of an output endpoint sends, until it closes.
async fn ignore_input<R: AsyncRead + Unpin>(rd: &mut R, role: &'static str) -> String {
    let mut scratch = [0u8; 4096];
    loop {
        match rd.read(&mut scratch).await {
            Ok(0) => return "closed by peer".to_owned(),
            Ok(n) => tracing::debug!(role, n, "ignoring bytes sent to an output endpoint"),
            Err(e) => return e.to_string(),
        }
    }
}

/// Write queued entries to `wr` as they come (in vectored batches), each whole
/// before it leaves the queue, until a write fails; returns why.
pub async fn write_queued<W: AsyncWrite + Unpin>(wr: &mut W, queue: &OutQueue) -> String {
    let (mut batch, mut stage) = (Vec::with_capacity(WRITE_BATCH_FRAMES), Vec::new());
    loop {
        let mut taken = queue.next_batch(&mut batch).await;
        if let Err(e) = write_batch(wr, &mut taken, &mut stage).await {
            return e.to_string();
        }
    }
}

/// [`write_queued`] for a connection that must never fall silent (the link): every
/// `interval`, busy or idle, `keepalive` is written too (between batches, never
/// inside an entry). Runs until a write fails; returns why.
pub async fn write_queued_keepalive<W: AsyncWrite + Unpin>(
    wr: &mut W,
    queue: &OutQueue,
    interval: std::time::Duration,
    keepalive: &[u8],
) -> String {
    let (mut batch, mut stage) = (Vec::with_capacity(WRITE_BATCH_FRAMES), Vec::new());
    // The first keepalive goes out at once, then one per interval (a late one
    // restarts the interval, as tokio's `MissedTickBehavior::Delay` would).
    let mut due = tokio::time::Instant::now();
    loop {
        let now = tokio::time::Instant::now();
        if now >= due {
            if let Err(e) = wr.write_all(keepalive).await {
                return e.to_string();
            }
            due = now + interval;
        }
        let mut taken = queue.take(WRITE_BATCH_FRAMES, WRITE_BATCH_BYTES, &mut batch);
        if taken.is_empty() {
            drop(taken);
            // Only an empty queue waits; a push into it stores a wake-up.
            tokio::select! {
                biased;
                () = tokio::time::sleep_until(due) => {}
                () = queue.notify.notified() => {}
            }
            continue;
        }
        if let Err(e) = write_batch(wr, &mut taken, &mut stage).await {
            return e.to_string();
        }
    }
}

/// Hand the next queued entry to `send` (a datagram socket, a TAP device: each entry
/// is one whole packet), waiting for one when the queue is empty. An entry that
/// `send` fails on is dropped and counted, as a lossy link would lose it.
pub async fn send_queued<F, Fut>(queue: &OutQueue, role: &'static str, mut send: F) -> String
where
    F: FnMut(Bytes) -> Fut,
    Fut: std::future::Future<Output = std::io::Result<()>>,
{
    let mut batch = Vec::with_capacity(WRITE_BATCH_FRAMES);
    loop {
        // Everything queued (up to a batch) per wake-up, one lock to take it.
        let mut taken = queue.next_batch(&mut batch).await;
        while let Some(w) = taken.entries.get(taken.done) {
            match send(w.to_packet()).await {
                Ok(()) => taken.written(1),
                Err(e) => {
                    tracing::debug!(role, error = %e, "send failed; frame dropped");
                    taken.failed();
                }
            }
        }
    }
}

/// `frame` in QEMU's socket framing: the be32 length (and the be32 `vnet_hdr_len`
/// when `vnet_hdr`) as the entry's prefix, the frame's own bytes as its body.
fn stream_wire(frame: Frame, vnet_hdr: bool) -> Wire {
    // The decoder's max_frame_len bounds every frame far below 4 GiB.
    let len = u32::try_from(frame.data.len()).unwrap_or(u32::MAX);
    let mut head = [0u8; HEAD_MAX];
    head[..4].copy_from_slice(&len.to_be_bytes());
    head[4..8].copy_from_slice(&frame.vnet_hdr_len.to_be_bytes());
    Wire {
        head,
        head_len: if vnet_hdr { 8 } else { 4 },
        body: frame.data,
    }
}

/// How frames are put on an output: QEMU's stream framing, or one packet each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// be32 length (+ be32 vnet header length when `vnet_hdr`) + frame.
    Stream {
        /// Write the vnet header length field.
        vnet_hdr: bool,
    },
    /// The bare Ethernet frame (datagram sockets, TAP devices).
    Packet,
}

/// An output queue with the framing of its endpoint: what a driver pushes frames to.
#[derive(Debug, Clone)]
pub struct FrameOut {
    /// The queue.
    pub queue: OutQueue,
    /// How frames are encoded for it.
    pub framing: Framing,
    /// The endpoint's role, for logs.
    pub role: &'static str,
}

impl FrameOut {
    /// Queue `frame` in this output's framing, without copying its bytes; `false` if
    /// it did not fit and was dropped (counted, logged at every power of two).
    pub fn push(&self, frame: &Frame) -> bool {
        let dropped = self
            .queue
            .push_wires(std::iter::once(self.wire(frame.clone())));
        self.note_dropped(dropped);
        dropped == 0
    }

    /// Queue `frames` in order, as [`push`](Self::push) would one by one, under one
    /// lock.
    pub fn push_all(&self, frames: Vec<Frame>) {
        if frames.is_empty() {
            return;
        }
        let dropped = self
            .queue
            .push_wires(frames.into_iter().map(|f| self.wire(f)));
        self.note_dropped(dropped);
    }

    /// `frame` as a queue entry in this output's framing.
    fn wire(&self, frame: Frame) -> Wire {
        match self.framing {
            Framing::Stream { vnet_hdr } => stream_wire(frame, vnet_hdr),
            Framing::Packet => {
                let start = frame.data.len().min(frame.vnet_hdr_len as usize);
                let mut body = frame.data;
                let _ = body.split_to(start);
                Wire {
                    head: [0; HEAD_MAX],
                    head_len: 0,
                    body,
                }
            }
        }
    }

    /// Log drops (at every power of two of the total), after a push dropped `now`.
    fn note_dropped(&self, now: usize) {
        if now == 0 {
            return;
        }
        let total = self.queue.stats().dropped_frames;
        let before = total - now as u64;
        // The total passed a power of two with this push.
        if (before + 1).next_power_of_two() <= total {
            tracing::warn!(
                role = self.role,
                dropped = total,
                "output buffer full: dropping frames"
            );
        }
    }

    /// The counters as JSON.
    #[must_use]
    pub fn stats_json(&self) -> serde_json::Value {
        self.queue.stats().to_json()
    }
}

impl OutStats {
    /// The counters as a JSON object (control protocol `stats`).
    #[must_use]
    pub fn to_json(self) -> serde_json::Value {
        serde_json::json!({"queued_frames": self.queued_frames, "queued_bytes": self.queued_bytes,
               "written_frames": self.written_frames, "written_bytes": self.written_bytes,
               "dropped_frames": self.dropped_frames, "dropped_bytes": self.dropped_bytes})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_is_bounded_and_counts_drops() {
        let q = OutQueue::new(10);
        assert!(
            q.push(Bytes::from_static(&[0; 20])),
            "one frame always fits"
        );
        assert!(!q.push(Bytes::from_static(&[0; 1])));
        q.take(1, usize::MAX, &mut Vec::new()).written(1);
        assert!(q.push(Bytes::from_static(&[0; 6])));
        assert!(q.push(Bytes::from_static(&[0; 4])));
        assert!(!q.push(Bytes::from_static(&[0; 1])));
        let s = q.stats();
        assert_eq!(s.queued_frames, 2);
        assert_eq!(s.queued_bytes, 10);
        assert_eq!(s.written_frames, 1);
        assert_eq!(s.dropped_frames, 2);
        assert_eq!(s.dropped_bytes, 2);
    }

    /// Accepts at most `chunk` bytes per write call (vectored or not), and `budget`
    /// bytes in all; after that, writes fail (a peer that went away).
    struct Trickle {
        got: Vec<u8>,
        chunk: usize,
        budget: usize,
    }

    impl Trickle {
        fn new(chunk: usize) -> Self {
            Self {
                got: Vec::new(),
                chunk,
                budget: usize::MAX,
            }
        }

        /// This call's limit, or the error once the budget is spent.
        fn take(&self) -> std::io::Result<usize> {
            if self.budget == 0 {
                return Err(std::io::ErrorKind::BrokenPipe.into());
            }
            Ok(self.chunk.min(self.budget))
        }
    }

    impl tokio::io::AsyncWrite for Trickle {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            let limit = match self.take() {
                Ok(l) => l,
                Err(e) => return std::task::Poll::Ready(Err(e)),
            };
            let n = buf.len().min(limit);
            self.got.extend_from_slice(&buf[..n]);
            self.budget -= n;
            std::task::Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> std::task::Poll<std::io::Result<usize>> {
            let limit = match self.take() {
                Ok(l) => l,
                Err(e) => return std::task::Poll::Ready(Err(e)),
            };
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(limit - n);
                self.got.extend_from_slice(&b[..take]);
                n += take;
                if n == limit {
                    break;
                }
            }
            self.budget -= n;
            std::task::Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn batched_vectored_writes_frame_exactly_like_encode_frame() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        for vnet in [false, true] {
            for chunk in [1, 3, 7, 64, 100_000] {
                let q = OutQueue::new(1 << 20);
                let mut want = bytes::BytesMut::new();
                // Small entries (staged) and large ones (their own slices), mixed.
                for i in 0..20u8 {
                    let len = if i % 3 == 0 {
                        600 + i as usize * 97
                    } else {
                        i as usize * 13 + 1
                    };
                    let data: Vec<u8> = (0..len).map(|j| j as u8 ^ i).collect();
                    let f = Frame {
                        vnet_hdr_len: if vnet { 10 } else { 0 },
                        data: data.into(),
                    };
                    colo_core::codec::encode_frame(&f, vnet, &mut want);
                    assert!(q.push_frame(&f, vnet));
                }
                assert!(q.push(Bytes::from_static(b"raw")));
                want.extend_from_slice(b"raw");
                let mut w = Trickle::new(chunk);
                let (mut batch, mut stage) = (Vec::new(), Vec::new());
                // Two batches: 16 frames, then the rest.
                while !q.is_empty() {
                    let mut taken = q.take(16, usize::MAX, &mut batch);
                    rt.block_on(write_batch(&mut w, &mut taken, &mut stage))
                        .unwrap();
                }
                assert_eq!(w.got, &want[..], "vnet {vnet} chunk {chunk}");
                let s = q.stats();
                assert_eq!((s.written_frames, s.queued_bytes), (21, 0));
                assert_eq!(s.written_bytes, want.len() as u64);
            }
        }
    }

    #[test]
    fn a_write_cut_inside_an_entry_keeps_that_entry_queued_whole() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        // Entries of 104, 1004, 104, 1004, 104 bytes on the wire (4-byte prefix each).
        let sizes = [100usize, 1000, 100, 1000, 100];
        for (cut, whole) in [(50, 0), (104, 1), (600, 1), (1108, 2), (1200, 2), (2300, 4)] {
            let q = OutQueue::new(1 << 20);
            for (i, n) in sizes.iter().enumerate() {
                assert!(q.push_frame(&Frame::ethernet(vec![i as u8; *n]), false));
            }
            let mut w = Trickle::new(333);
            w.budget = cut;
            let (mut batch, mut stage) = (Vec::new(), Vec::new());
            let mut taken = q.take(16, usize::MAX, &mut batch);
            assert!(
                rt.block_on(write_batch(&mut w, &mut taken, &mut stage))
                    .is_err()
            );
            drop(taken);
            let s = q.stats();
            assert_eq!(s.written_frames, whole, "cut at {cut}");
            assert_eq!(s.queued_frames, 5 - whole, "cut at {cut}");
            // What is still queued starts with the first entry not written whole.
            let taken = q.take(16, usize::MAX, &mut batch);
            let firsts: Vec<u8> = taken.entries.iter().map(|w| w.body[0]).collect();
            assert_eq!(firsts, (whole as u8..5).collect::<Vec<_>>(), "cut at {cut}");
        }
    }

    #[test]
    fn batches_respect_the_byte_limit_but_always_take_one() {
        let q = OutQueue::new(1 << 20);
        for _ in 0..4 {
            assert!(q.push(Bytes::from_static(&[0; 100])));
        }
        let mut b = Vec::new();
        assert_eq!(q.take(10, 250, &mut b).entries.len(), 2);
        assert_eq!(q.take(10, 50, &mut b).entries.len(), 1);
    }

    #[test]
    fn push_all_queues_in_order_and_counts_what_does_not_fit() {
        for framing in [Framing::Stream { vnet_hdr: true }, Framing::Packet] {
            let out = FrameOut {
                queue: OutQueue::new(100),
                framing,
                role: "outdev",
            };
            let frames: Vec<Frame> = (0..5u8)
                .map(|i| Frame {
                    vnet_hdr_len: 2,
                    data: vec![i; 30].into(),
                })
                .collect();
            out.push_all(frames);
            let s = out.queue.stats();
            // Stream entries are 38 bytes (two fit in 100), packets 28 (three fit).
            let fit = if framing == Framing::Packet { 3 } else { 2 };
            assert_eq!((s.queued_frames, s.dropped_frames), (fit, 5 - fit));
            let mut b = Vec::new();
            let taken = out.queue.take(16, usize::MAX, &mut b);
            let firsts: Vec<u8> = taken.entries.iter().map(|w| w.body[0]).collect();
            assert_eq!(firsts, (0..fit as u8).collect::<Vec<_>>());
            if framing == Framing::Packet {
                // The vnet header is not part of a packet.
                assert_eq!(taken.entries[0].len(), 28);
            }
        }
    }

    #[test]
    fn a_dropped_batch_goes_back_in_order_ahead_of_newer_entries() {
        let q = OutQueue::new(1 << 20);
        for i in 0..5u8 {
            assert!(q.push(Bytes::from(vec![i; 10])));
        }
        let mut b = Vec::new();
        let mut taken = q.take(3, usize::MAX, &mut b);
        taken.written(1);
        // Pushed while the writer holds its batch.
        assert!(q.push(Bytes::from(vec![5; 10])));
        assert_eq!(q.stats().queued_frames, 5);
        // The writer is cancelled (a disconnect) before writing the rest.
        drop(taken);
        let s = q.stats();
        assert_eq!(
            (s.queued_frames, s.queued_bytes, s.written_frames),
            (5, 50, 1)
        );
        let taken = q.take(16, usize::MAX, &mut b);
        let order: Vec<u8> = taken.entries.iter().map(|w| w.body[0]).collect();
        assert_eq!(order, [1, 2, 3, 4, 5]);
        drop(taken);
        assert!(!q.is_empty());
    }
}
