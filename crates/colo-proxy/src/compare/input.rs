//! The input side: one task per `--primary-in` / `--secondary-in` endpoint reads the
//! QEMU framing with [`FrameDecoder`] and hands whole frames to the driver.
//!
//! A framing error (a hostile or desynchronised length prefix, a bad vnet header
//! length) is logged and that connection is dropped; the endpoint then waits for the
//! next one. The channel to the driver is bounded, so a driver that falls behind
//! slows the readers down (TCP backpressure to QEMU) instead of growing memory.

use colo_core::Frame;
use colo_core::Side;
use colo_core::codec::{DecoderConfig, FrameDecoder};
use tokio::io::AsyncReadExt as _;
use tokio::sync::mpsc;

use super::endpoint::Source;

/// Frames (and peer changes) in flight from the readers to the driver.
pub const CHANNEL_FRAMES: usize = 1024;

/// What the I/O tasks tell the driver.
#[derive(Debug)]
pub enum Event {
    /// A whole frame from one VM.
    Frame(Side, Frame),
    /// A peer of an endpoint connected (`up`) or went away.
    Peer {
        /// The endpoint's role (`primary_in`, `outdev`, ...).
        role: &'static str,
        /// Connected or disconnected.
        up: bool,
    },
    /// The Xen notify peer said the checkpoint is done (`COLO_CHECKPOINT`).
    NotifyCheckpointDone,
    /// The Xen notify peer sent a message we do not know.
    NotifyUnknown,
}

/// Read frames from `source`, connection after connection. Runs until the driver is gone.
pub async fn run(side: Side, mut source: Source, config: DecoderConfig, tx: mpsc::Sender<Event>) {
    let role = source.role;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut io = source.next().await;
        if tx.send(Event::Peer { role, up: true }).await.is_err() {
            return;
        }
        let mut dec = FrameDecoder::new(config);
        let why = 'conn: loop {
            let n = match io.read(&mut buf).await {
                Ok(0) => match dec.finish() {
                    Ok(()) => break 'conn "closed by peer".to_owned(),
                    Err(e) => break 'conn format!("closed by peer: {e}"),
                },
                Ok(n) => n,
                Err(e) => break 'conn e.to_string(),
            };
            dec.push(&buf[..n]);
            loop {
                match dec.poll_frame() {
                    Ok(Some(frame)) => {
                        if tx.send(Event::Frame(side, frame)).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(role, error = %e, "framing error; dropping this connection");
                        break 'conn format!("framing error: {e}");
                    }
                }
            }
        };
        drop(io);
        tracing::info!(role, reason = %why, "disconnected");
        if tx.send(Event::Peer { role, up: false }).await.is_err() {
            return;
        }
    }
}
