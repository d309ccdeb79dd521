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

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::{Bytes, BytesMut};
use colo_core::Frame;
use colo_core::codec::encode_frame;
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

#[derive(Debug)]
struct Inner {
    frames: VecDeque<Bytes>,
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

    /// Queue an encoded frame; `false` if it did not fit and was dropped (counted).
    pub fn push(&self, wire: Bytes) -> bool {
        let mut q = self.lock();
        if q.bytes > 0 && q.bytes + wire.len() > q.cap {
            q.stats.dropped_frames += 1;
            q.stats.dropped_bytes += wire.len() as u64;
            return false;
        }
        q.bytes += wire.len();
        q.frames.push_back(wire);
        drop(q);
        self.notify.notify_one();
        true
    }

    /// Counters, with the gauges brought up to date.
    pub fn stats(&self) -> OutStats {
        let q = self.lock();
        let mut s = q.stats;
        s.queued_frames = q.frames.len() as u64;
        s.queued_bytes = q.bytes as u64;
        s
    }

    /// Whether nothing waits to be written.
    pub fn is_empty(&self) -> bool {
        self.lock().frames.is_empty()
    }

    fn front(&self) -> Option<Bytes> {
        self.lock().frames.front().cloned()
    }

    /// Drop the front entry after a failed send (counted as dropped).
    fn pop_failed(&self, len: usize) {
        let mut q = self.lock();
        if q.frames.pop_front().is_some() {
            q.bytes -= len;
            q.stats.dropped_frames += 1;
            q.stats.dropped_bytes += len as u64;
        }
    }

    /// The entry at the front, waiting for one if the queue is empty. It stays queued
    /// until [`OutQueue::pop_written`].
    pub async fn next(&self) -> Bytes {
        loop {
            if let Some(b) = self.front() {
                return b;
            }
            self.notify.notified().await;
        }
    }

    /// The front entry has been written whole: take it off the queue.
    pub fn pop_written(&self) {
        let mut q = self.lock();
        if let Some(b) = q.frames.pop_front() {
            q.bytes -= b.len();
            q.stats.written_frames += 1;
            q.stats.written_bytes += b.len() as u64;
        }
    }
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

/// Write queued entries to `wr` as they come, each whole before it leaves the queue,
/// until a write fails; returns why.
pub async fn write_queued<W: AsyncWrite + Unpin>(wr: &mut W, queue: &OutQueue) -> String {
    loop {
        let frame = queue.next().await;
        if let Err(e) = wr.write_all(&frame).await {
            return e.to_string();
        }
        queue.pop_written();
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
    loop {
        let frame = queue.next().await;
        let len = frame.len();
        match send(frame).await {
            Ok(()) => queue.pop_written(),
            Err(e) => {
                tracing::debug!(role, error = %e, "send failed; frame dropped");
                queue.pop_failed(len);
            }
        }
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

impl Framing {
    /// `frame` on the wire.
    #[must_use]
    pub fn encode(self, frame: &Frame) -> Bytes {
        match self {
            Self::Stream { vnet_hdr } => {
                let mut wire = BytesMut::new();
                encode_frame(frame, vnet_hdr, &mut wire);
                wire.freeze()
            }
            Self::Packet => frame
                .data
                .slice(frame.data.len().min(frame.vnet_hdr_len as usize)..),
        }
    }
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
    /// Encode and queue `frame`; `false` if it did not fit and was dropped (counted,
    /// logged at every power of two).
    pub fn push(&self, frame: &Frame) -> bool {
        let ok = self.queue.push(self.framing.encode(frame));
        if !ok {
            let dropped = self.queue.stats().dropped_frames;
            if dropped.is_power_of_two() {
                tracing::warn!(
                    role = self.role,
                    dropped,
                    "output buffer full: dropping frames"
                );
            }
        }
        ok
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
        q.pop_written();
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
}
