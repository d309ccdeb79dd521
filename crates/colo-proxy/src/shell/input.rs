//! The input side: one task per input endpoint (`--primary-in`, `--to-secondary-in`,
//! ...) reads the QEMU framing with [`FrameDecoder`] and hands whole frames to the
//! driver, in batches: every frame decoded from one read (at most
//! [`BATCH_FRAMES`]) goes over the channel as one message, so the hand-off costs one
//! channel operation and one wake-up per read, not per frame. Frames are slices of
//! the decoder's buffer (no copy).
//!
//! A framing error (a hostile or desynchronised length prefix, a bad vnet header
//! length) is logged and that connection is dropped; the endpoint then waits for the
//! next one. The channel to the driver is bounded, so a driver that falls behind
//! slows the readers down (TCP backpressure to QEMU) instead of growing memory.

use colo_core::Frame;
use colo_core::codec::{DecoderConfig, FrameDecoder};
use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio::sync::mpsc;

use super::PeerChange;
use super::endpoint::Source;

/// Batches (and peer changes) in flight from the readers to the driver. With at most
/// [`BATCH_FRAMES`] frames and [`READ_BUF`] bytes per batch this bounds what the
/// channel holds.
pub const CHANNEL_BATCHES: usize = 64;
/// Most frames in one batch.
pub const BATCH_FRAMES: usize = 1024;
/// Bytes asked for per read at most (read straight into the decoder's buffer, no
/// copy): the size of each new buffer chunk.
pub const READ_BUF: usize = 256 * 1024;
/// The least room a read is given in the current chunk before a new [`READ_BUF`]
/// chunk is allocated (see [`ReadSize`]).
pub const MIN_READ: usize = 16 * 1024;

/// How much room the next read wants: twice the last read, between [`MIN_READ`] and
/// [`READ_BUF`]. Small reads (one frame at a time, as in request/response traffic)
/// then share a chunk instead of each allocating (and page-faulting) a fresh 256 KiB,
/// while bulk reads keep getting a whole chunk, so they are not cut short.
#[derive(Debug, Clone, Copy)]
pub struct ReadSize(usize);

impl Default for ReadSize {
    fn default() -> Self {
        Self(READ_BUF)
    }
}

impl ReadSize {
    /// Room to ask the decoder's buffer for before the next read.
    #[must_use]
    pub const fn want(self) -> usize {
        self.0
    }

    /// A read returned `n` bytes.
    pub fn update(&mut self, n: usize) {
        self.0 = n.saturating_mul(2).clamp(MIN_READ, READ_BUF);
    }
}

/// Read frames from `source`, connection after connection, and send them to the
/// driver as `wrap(batch)`, a batch per read (in order). Runs until the driver is
/// gone.
pub async fn run<E, W>(mut source: Source, config: DecoderConfig, tx: mpsc::Sender<E>, wrap: W)
where
    E: From<PeerChange> + Send + 'static,
    W: Fn(Vec<Frame>) -> E + Send + 'static,
{
    let role = source.role;
    loop {
        let io = source.next().await;
        if !PeerChange::announce(&tx, role, true).await {
            return;
        }
        let Some(why) = read_frames(io, role, config, &tx, &wrap).await else {
            return;
        };
        tracing::info!(role, reason = %why, "disconnected");
        if !PeerChange::announce(&tx, role, false).await {
            return;
        }
    }
}

/// Read QEMU-framed frames from one connection until it ends (straight into the
/// decoder's buffer, [`READ_BUF`] at most per read), sending them to the driver as
/// `wrap(batch)`, a batch per read (in order). Returns why the connection ended, or `None` when the
/// driver is gone.
pub async fn read_frames<R, E, W>(
    mut io: R,
    role: &'static str,
    config: DecoderConfig,
    tx: &mpsc::Sender<E>,
    wrap: &W,
) -> Option<String>
where
    R: AsyncRead + Unpin,
    W: Fn(Vec<Frame>) -> E,
{
    let mut dec = FrameDecoder::new(config);
    let mut size = ReadSize::default();
    loop {
        match io.read_buf(dec.read_buffer(size.want(), READ_BUF)).await {
            Ok(0) => {
                return Some(match dec.finish() {
                    Ok(()) => "closed by peer".to_owned(),
                    Err(e) => format!("closed by peer: {e}"),
                });
            }
            Ok(n) => size.update(n),
            Err(e) => return Some(e.to_string()),
        }
        let mut batch = Vec::new();
        let framing = loop {
            match dec.poll_frame() {
                Ok(Some(frame)) => {
                    batch.push(frame);
                    if batch.len() == BATCH_FRAMES
                        && tx.send(wrap(std::mem::take(&mut batch))).await.is_err()
                    {
                        return None;
                    }
                }
                Ok(None) => break None,
                Err(e) => break Some(e),
            }
        };
        // Frames decoded before a framing error still go to the driver.
        if !batch.is_empty() && tx.send(wrap(batch)).await.is_err() {
            return None;
        }
        if let Some(e) = framing {
            tracing::warn!(role, error = %e, "framing error; dropping this connection");
            return Some(format!("framing error: {e}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_size_follows_the_last_read_within_bounds() {
        let mut size = ReadSize::default();
        assert_eq!(size.want(), READ_BUF);
        size.update(130);
        assert_eq!(size.want(), MIN_READ);
        size.update(40_000);
        assert_eq!(size.want(), 80_000);
        size.update(READ_BUF);
        assert_eq!(size.want(), READ_BUF);
    }
}
