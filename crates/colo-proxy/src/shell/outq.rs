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

use bytes::Bytes;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
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

    fn pop_written(&self) {
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
        let mut scratch = [0u8; 4096];
        let why = 'conn: loop {
            let Some(frame) = queue.front() else {
                // Idle: wait for work, but notice the peer closing meanwhile.
                tokio::select! {
                    () = queue.notify.notified() => continue,
                    r = rd.read(&mut scratch) => match r {
                        Ok(0) => break 'conn "closed by peer".to_owned(),
                        Ok(n) => {
                            tracing::debug!(role, n, "ignoring bytes sent to an output endpoint");
                            continue;
                        }
                        Err(e) => break 'conn e.to_string(),
                    },
                }
            };
            if let Err(e) = wr.write_all(&frame).await {
                break 'conn e.to_string();
            }
            queue.pop_written();
        };
        tracing::info!(role, reason = %why, queued = queue.stats().queued_frames, "disconnected");
        if !PeerChange::announce(&events, role, false).await {
            return;
        }
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
