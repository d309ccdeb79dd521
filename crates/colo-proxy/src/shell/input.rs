//! The input side: one task per input endpoint (`--primary-in`, `--to-secondary-in`,
//! ...) reads the QEMU framing with [`FrameDecoder`] and hands whole frames to the
//! driver.
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

/// Frames (and peer changes) in flight from the readers to the driver.
pub const CHANNEL_FRAMES: usize = 1024;

/// Read frames from `source`, connection after connection, and send each to the
/// driver as `wrap(frame)`. Runs until the driver is gone.
pub async fn run<E, W>(mut source: Source, config: DecoderConfig, tx: mpsc::Sender<E>, wrap: W)
where
    E: From<PeerChange> + Send + 'static,
    W: Fn(Frame) -> E + Send + 'static,
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

/// Read QEMU-framed frames from one connection until it ends, sending each to the
/// driver as `wrap(frame)`. Returns why the connection ended, or `None` when the
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
    W: Fn(Frame) -> E,
{
    let mut buf = vec![0u8; 64 * 1024];
    let mut dec = FrameDecoder::new(config);
    loop {
        let n = match io.read(&mut buf).await {
            Ok(0) => {
                return Some(match dec.finish() {
                    Ok(()) => "closed by peer".to_owned(),
                    Err(e) => format!("closed by peer: {e}"),
                });
            }
            Ok(n) => n,
            Err(e) => return Some(e.to_string()),
        };
        dec.push(&buf[..n]);
        loop {
            match dec.poll_frame() {
                Ok(Some(frame)) => {
                    if tx.send(wrap(frame)).await.is_err() {
                        return None;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(role, error = %e, "framing error; dropping this connection");
                    return Some(format!("framing error: {e}"));
                }
            }
        }
    }
}
