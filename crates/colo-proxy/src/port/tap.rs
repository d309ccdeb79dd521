//! A TAP device as a port: `tun-tap` opens (and if need be creates) the device
//! without packet information; the file descriptor is non-blocking and driven by
//! tokio's [`AsyncFd`]. One read is one frame, one write is one frame; every frame
//! ready at a wake-up is read before the batch is handed over.

use bytes::Bytes;
use tokio::io::unix::AsyncFd;
use tun_tap::{Iface, Mode};

use super::PacketArena;

/// An open TAP device.
#[derive(Debug)]
pub struct Tap {
    fd: AsyncFd<Iface>,
}

impl Tap {
    /// Open (or create) TAP device `name`. Needs `CAP_NET_ADMIN` and /dev/net/tun.
    pub fn open(name: &str) -> std::io::Result<Self> {
        let iface = Iface::without_packet_info(name, Mode::Tap)?;
        iface.set_non_blocking()?;
        tracing::info!(name = iface.name(), "TAP device open");
        // `AsyncFd::new` is deprecated because a caller could close the descriptor
        // while it is registered; here the `Iface` that owns it moves into the
        // `AsyncFd` and is closed only when that is dropped (after deregistration).
        #[allow(deprecated)]
        let fd = AsyncFd::new(iface)?;
        Ok(Self { fd })
    }

    /// Read packets, every one ready (at most `max_batch`) per wake-up, and hand
    /// them to `deliver` as one batch until it says the driver is gone. Failed reads
    /// are logged and skipped.
    pub async fn recv_frames<D, F>(&self, role: &'static str, max_batch: usize, mut deliver: D)
    where
        D: FnMut(Vec<Bytes>) -> F,
        F: std::future::Future<Output = bool>,
    {
        let mut arena = PacketArena::new();
        loop {
            let mut guard = match self.fd.readable().await {
                Ok(g) => g,
                Err(e) => {
                    tracing::error!(role, error = %e, "TAP device unusable");
                    return;
                }
            };
            let mut batch = Vec::new();
            while batch.len() < max_batch {
                match guard.try_io(|inner| inner.get_ref().recv(arena.scratch())) {
                    Ok(Ok(n)) => batch.push(arena.take(n)),
                    Ok(Err(e)) => {
                        tracing::warn!(role, error = %e, "TAP read failed");
                        break;
                    }
                    // Readiness cleared: the next `readable` waits for more.
                    Err(_would_block) => break,
                }
            }
            if !batch.is_empty() && !deliver(batch).await {
                return;
            }
        }
    }

    /// Write one frame.
    pub async fn send(&self, frame: Bytes) -> std::io::Result<()> {
        loop {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|inner| inner.get_ref().send(&frame)) {
                Ok(r) => return r.map(|_| ()),
                Err(_would_block) => {}
            }
        }
    }
}
