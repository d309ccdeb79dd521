//! `--notify-dev`: the Xen COLO "userspace proxy" notify protocol, byte-exact with
//! QEMU's colo-compare (`notify_dev`) and libxl (`libxl_colo_proxy.c`).
//!
//! Messages are QEMU-framed (`be32 len` + bytes, no NUL) ASCII words:
//!
//! | direction | payload | our action |
//! |---|---|---|
//! | in | `COLO_USERSPACE_PROXY_INIT` | reply `COLO_COMPARE_GET_XEN_INIT` |
//! | in | `COLO_CHECKPOINT` | checkpoint done: release held primary frames, drop secondary |
//! | in | anything else | logged and counted (`notify_dev.unknown` in stats) |
//! | out | `DO_CHECKPOINT` | sent for every checkpoint request |
//!
//! Outgoing frames never carry a `vnet_hdr_len` field (as in QEMU). QEMU also
//! expects one on *incoming* notify frames when `vnet_hdr_support=on`, which libxl
//! never sends (so Xen with vnet headers is broken there); we read incoming notify
//! frames without it whatever `--vnet-hdr-support` says, which is what libxl sends.

use bytes::BytesMut;
use colo_core::Frame;
use colo_core::codec::{DecoderConfig, FrameDecoder, encode_frame};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;

use super::Event;
use crate::shell::PeerChange;
use crate::shell::endpoint::Source;

/// Xen's hello.
pub const PROXY_INIT: &[u8] = b"COLO_USERSPACE_PROXY_INIT";
/// Our answer to the hello.
pub const GET_XEN_INIT: &[u8] = b"COLO_COMPARE_GET_XEN_INIT";
/// Xen: a checkpoint has completed.
pub const CHECKPOINT: &[u8] = b"COLO_CHECKPOINT";
/// Us: please checkpoint now.
pub const DO_CHECKPOINT: &[u8] = b"DO_CHECKPOINT";

/// Largest notify message accepted (libxl's own buffer is 1024 bytes).
const MAX_MESSAGE: usize = 1024;

fn framed(msg: &'static [u8]) -> BytesMut {
    let mut out = BytesMut::new();
    encode_frame(&Frame::ethernet(msg), false, &mut out);
    out
}

/// Serve the notify endpoint: answer the hello, report checkpoints done, and send
/// `DO_CHECKPOINT` for every request that arrives on `requests`. Runs until the
/// driver is gone.
pub async fn run(mut source: Source, mut requests: mpsc::Receiver<()>, tx: mpsc::Sender<Event>) {
    let role = source.role;
    let config = DecoderConfig {
        max_frame_len: MAX_MESSAGE,
        vnet_hdr: false,
    };
    let mut buf = [0u8; 4096];
    loop {
        let io = source.next().await;
        if !PeerChange::announce(&tx, role, true).await {
            return;
        }
        let (mut rd, mut wr) = tokio::io::split(io);
        let mut dec = FrameDecoder::new(config);
        let why = 'conn: loop {
            tokio::select! {
                req = requests.recv() => {
                    if req.is_none() {
                        return;
                    }
                    if let Err(e) = wr.write_all(&framed(DO_CHECKPOINT)).await {
                        break 'conn e.to_string();
                    }
                    tracing::debug!(role, "sent DO_CHECKPOINT");
                }
                r = rd.read(&mut buf) => {
                    let n = match r {
                        Ok(0) => break 'conn "closed by peer".to_owned(),
                        Ok(n) => n,
                        Err(e) => break 'conn e.to_string(),
                    };
                    dec.push(&buf[..n]);
                    loop {
                        match dec.poll_frame() {
                            Ok(Some(f)) => {
                                let msg = &f.data[..];
                                if msg == PROXY_INIT {
                                    tracing::info!(role, "Xen userspace proxy init");
                                    if let Err(e) = wr.write_all(&framed(GET_XEN_INIT)).await {
                                        break 'conn e.to_string();
                                    }
                                } else if msg == CHECKPOINT {
                                    if tx.send(Event::NotifyCheckpointDone).await.is_err() {
                                        return;
                                    }
                                } else {
                                    tracing::warn!(
                                        role,
                                        message = %String::from_utf8_lossy(msg).escape_debug(),
                                        "unsupported notify message"
                                    );
                                    if tx.send(Event::NotifyUnknown).await.is_err() {
                                        return;
                                    }
                                }
                            }
                            Ok(None) => break,
                            Err(e) => {
                                tracing::warn!(role, error = %e, "framing error; dropping this connection");
                                break 'conn format!("framing error: {e}");
                            }
                        }
                    }
                }
            }
        };
        tracing::info!(role, reason = %why, "disconnected");
        if !PeerChange::announce(&tx, role, false).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_byte_exact() {
        assert_eq!(PROXY_INIT.len(), 25);
        assert_eq!(GET_XEN_INIT.len(), 25);
        assert_eq!(CHECKPOINT.len(), 15);
        assert_eq!(DO_CHECKPOINT.len(), 13);
        assert_eq!(&framed(DO_CHECKPOINT)[..], b"\0\0\0\x0dDO_CHECKPOINT");
    }
}
