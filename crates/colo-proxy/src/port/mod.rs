//! VM and client ports of `colo-proxy primary` and `secondary`: where Ethernet
//! frames enter and leave, in both directions on one port.
//!
//! - `tap:IFNAME`: a TAP device (the `tun-tap` crate, no packet information),
//!   created if missing (needs root), read and written through tokio's `AsyncFd`.
//!   The proxy only attaches to it: bringing it up, bridging it or moving it into a
//!   namespace is the operator's (`ip link set IFNAME up`). Frames carry no vnet
//!   header on a TAP device (nor on `dgram:`);
//! - `stream:unix:PATH[,connect]`, `stream:tcp:HOST:PORT[,connect]`: QEMU's
//!   `-netdev stream`/`socket` framing (be32 length + frame, with the vnet header
//!   length field under `--vnet-hdr-support`), listening by default;
//! - `dgram:LOCALHOST:PORT=REMOTEHOST:PORT`: QEMU's `-netdev dgram`: one frame per UDP
//!   datagram, no prefix; sent to the remote address, received from anyone.
//!
//! [`Port::run`] reads frames for the driver and writes the port's [`OutQueue`]
//! (byte-capped, written whole, kept across stream reconnects).

mod tap;

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use anyhow::Context as _;
use bytes::{Bytes, BytesMut};
use colo_core::Frame;
use colo_core::codec::{DecoderConfig, frame_from_datagram};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::shell::PeerChange;
use crate::shell::endpoint::{Endpoint, Source};
use crate::shell::input::read_frames;
use crate::shell::outq::{FrameOut, Framing, OutQueue, send_queued, write_queued};

/// A port as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortSpec {
    /// A TAP device.
    Tap(String),
    /// A QEMU stream socket.
    Stream(Endpoint),
    /// A QEMU dgram socket pair.
    Dgram {
        /// `host:port` to bind.
        local: String,
        /// `host:port` to send to.
        remote: String,
    },
}

impl FromStr for PortSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const SYNTAX: &str = "a port is tap:IFNAME, stream:unix:PATH[,connect], \
                              stream:tcp:HOST:PORT[,connect] or dgram:LOCALHOST:PORT=REMOTEHOST:PORT";
        if let Some(name) = s.strip_prefix("tap:") {
            // Linux interface names: 1 to 15 bytes, no '/', no white space.
            if name.is_empty() || name.len() > 15 || name.contains(['/', ' ', ':']) {
                return Err(format!(
                    "{s:?}: a TAP interface name has 1 to 15 characters, no '/', ':' or spaces"
                ));
            }
            return Ok(Self::Tap(name.to_owned()));
        }
        if let Some(ep) = s.strip_prefix("stream:") {
            return ep
                .parse()
                .map(Self::Stream)
                .map_err(|e| format!("{s:?}: {e}"));
        }
        if let Some(pair) = s.strip_prefix("dgram:") {
            let Some((local, remote)) = pair.split_once('=') else {
                return Err(format!("{s:?}: {SYNTAX}"));
            };
            for hp in [local, remote] {
                let port = hp.rsplit_once(':').map(|(_, p)| p.parse::<u16>());
                if !matches!(port, Some(Ok(_))) {
                    return Err(format!("{s:?}: {hp:?} is not HOST:PORT"));
                }
            }
            return Ok(Self::Dgram {
                local: local.to_owned(),
                remote: remote.to_owned(),
            });
        }
        Err(format!("{s:?}: {SYNTAX}"))
    }
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tap(name) => write!(f, "tap:{name}"),
            Self::Stream(ep) => write!(f, "stream:{ep}"),
            Self::Dgram { local, remote } => write!(f, "dgram:{local}={remote}"),
        }
    }
}

/// A bound port, ready to run.
#[derive(Debug)]
pub struct Port {
    role: &'static str,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Stream(Source),
    Dgram(UdpSocket, SocketAddr),
    Tap(tap::Tap),
}

impl Port {
    /// Open the port (bind, create the TAP device) so that errors stop the proxy
    /// before anything runs. `role` names it in logs and events.
    pub async fn bind(role: &'static str, spec: &PortSpec) -> anyhow::Result<Self> {
        let kind = match spec {
            PortSpec::Stream(ep) => Kind::Stream(Source::bind(role, ep.clone()).await?),
            PortSpec::Dgram { local, remote } => {
                let sock = UdpSocket::bind(local)
                    .await
                    .with_context(|| format!("{role}: cannot bind UDP {local}"))?;
                let remote = tokio::net::lookup_host(remote)
                    .await
                    .ok()
                    .and_then(|mut a| a.next())
                    .with_context(|| format!("{role}: cannot resolve {remote}"))?;
                Kind::Dgram(sock, remote)
            }
            PortSpec::Tap(name) => Kind::Tap(tap::Tap::open(name).with_context(|| {
                format!("{role}: cannot open TAP device {name} (needs root and /dev/net/tun)")
            })?),
        };
        Ok(Self { role, kind })
    }

    /// How frames are written to this port.
    #[must_use]
    pub fn framing(&self, vnet_hdr: bool) -> Framing {
        match self.kind {
            Kind::Stream(_) => Framing::Stream { vnet_hdr },
            Kind::Dgram(..) | Kind::Tap(_) => Framing::Packet,
        }
    }

    /// A byte-capped output queue for frames to this port, in its framing.
    #[must_use]
    pub fn output(&self, vnet_hdr: bool, cap: usize) -> FrameOut {
        FrameOut {
            queue: OutQueue::new(cap),
            framing: self.framing(vnet_hdr),
            role: self.role,
        }
    }

    /// Carry frames both ways until the driver is gone.
    pub async fn run<E, W>(
        self,
        decoder: DecoderConfig,
        queue: OutQueue,
        tx: mpsc::Sender<E>,
        wrap: W,
    ) where
        E: From<PeerChange> + Send + 'static,
        W: Fn(Vec<Frame>) -> E + Send + 'static,
    {
        let role = self.role;
        match self.kind {
            Kind::Stream(mut source) => loop {
                let io = source.next().await;
                if !PeerChange::announce(&tx, role, true).await {
                    return;
                }
                let (rd, mut wr) = tokio::io::split(io);
                let why = tokio::select! {
                    why = read_frames(rd, role, decoder, &tx, &wrap) => why,
                    why = write_queued(&mut wr, &queue) => Some(why),
                };
                let Some(why) = why else { return };
                tracing::info!(role, reason = %why, "disconnected");
                if !PeerChange::announce(&tx, role, false).await {
                    return;
                }
            },
            Kind::Dgram(sock, remote) => {
                if !PeerChange::announce(&tx, role, true).await {
                    return;
                }
                let max = decoder.max_frame_len;
                tokio::select! {
                    () = recv_datagrams(&sock, role, max, &tx, &wrap) => {}
                    _ = send_queued(&queue, role, |b: Bytes| {
                        let sock = &sock;
                        async move { sock.send_to(&b, remote).await.map(|_| ()) }
                    }) => {}
                }
            }
            Kind::Tap(tap) => {
                if !PeerChange::announce(&tx, role, true).await {
                    return;
                }
                let max = decoder.max_frame_len;
                tokio::select! {
                    () = tap.recv_frames(role, PACKET_BATCH, |packets| deliver_packets(packets, role, max, &tx, &wrap)) => {}
                    _ = send_queued(&queue, role, |b: Bytes| tap.send(b)) => {}
                }
            }
        }
    }
}

/// Most packets (datagrams, TAP reads) read per wake-up and handed over as one batch.
pub const PACKET_BATCH: usize = 256;

/// Largest packet a TAP device or a UDP socket can hand over.
const MAX_PACKET: usize = 65_536;

/// Received packets are read into a scratch buffer and copied into a shared
/// allocation they are then slices of, so a packet costs a copy of its own bytes but
/// no allocation of its own.
#[derive(Debug)]
pub(crate) struct PacketArena {
    scratch: Vec<u8>,
    arena: BytesMut,
}

impl PacketArena {
    /// Bytes allocated at a time for the packets' slices.
    const CHUNK: usize = 64 * 1024;

    pub(crate) fn new() -> Self {
        Self {
            scratch: vec![0u8; MAX_PACKET],
            arena: BytesMut::new(),
        }
    }

    /// Where the next packet is read into.
    pub(crate) fn scratch(&mut self) -> &mut [u8] {
        &mut self.scratch
    }

    /// The first `n` bytes of the scratch buffer as a packet of their own.
    pub(crate) fn take(&mut self, n: usize) -> Bytes {
        let n = n.min(self.scratch.len());
        if self.arena.capacity() < n {
            self.arena = BytesMut::with_capacity(Self::CHUNK.max(n));
        }
        self.arena.extend_from_slice(&self.scratch[..n]);
        self.arena.split().freeze()
    }
}

/// Receive datagrams as frames, every one ready (at most [`PACKET_BATCH`]) per
/// wake-up as one batch, until the driver is gone. Bad datagrams (empty, too long)
/// are logged and skipped.
async fn recv_datagrams<E, W>(
    sock: &UdpSocket,
    role: &'static str,
    max: usize,
    tx: &mpsc::Sender<E>,
    wrap: &W,
) where
    W: Fn(Vec<Frame>) -> E,
{
    let mut arena = PacketArena::new();
    loop {
        let n = match sock.recv_from(arena.scratch()).await {
            Ok((n, _)) => n,
            Err(e) => {
                // ICMP errors of earlier sends surface here; they are not fatal.
                tracing::debug!(role, error = %e, "UDP receive error");
                continue;
            }
        };
        let mut batch = vec![arena.take(n)];
        while batch.len() < PACKET_BATCH {
            match sock.try_recv_from(arena.scratch()) {
                Ok((n, _)) => batch.push(arena.take(n)),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::debug!(role, error = %e, "UDP receive error");
                    break;
                }
            }
        }
        if !deliver_packets(batch, role, max, tx, wrap).await {
            return;
        }
    }
}

/// Hand received packets (datagrams, TAP reads) to the driver as one batch of
/// frames. A bad one (empty, too long) is logged and skipped. `false` when the driver
/// is gone.
async fn deliver_packets<E, W>(
    packets: Vec<Bytes>,
    role: &'static str,
    max: usize,
    tx: &mpsc::Sender<E>,
    wrap: &W,
) -> bool
where
    W: Fn(Vec<Frame>) -> E,
{
    let mut frames = Vec::with_capacity(packets.len());
    for packet in packets {
        match frame_from_datagram(packet, max) {
            Ok(frame) => frames.push(frame),
            Err(e) => tracing::warn!(role, error = %e, "packet skipped"),
        }
    }
    frames.is_empty() || tx.send(wrap(frames)).await.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ports() {
        assert_eq!("tap:tap0".parse(), Ok(PortSpec::Tap("tap0".into())));
        assert!("tap:".parse::<PortSpec>().is_err());
        assert!("tap:waytoolonginterfacename".parse::<PortSpec>().is_err());
        let PortSpec::Stream(ep) = "stream:unix:/tmp/a.sock,connect".parse().unwrap() else {
            panic!()
        };
        assert!(ep.connect);
        assert!(matches!(
            "stream:tcp:127.0.0.1:9000".parse(),
            Ok(PortSpec::Stream(Endpoint { connect: false, .. }))
        ));
        assert_eq!(
            "dgram:127.0.0.1:5000=127.0.0.1:5001".parse(),
            Ok(PortSpec::Dgram {
                local: "127.0.0.1:5000".into(),
                remote: "127.0.0.1:5001".into()
            })
        );
        assert!("dgram:127.0.0.1:5000".parse::<PortSpec>().is_err());
        assert!("dgram:a=b".parse::<PortSpec>().is_err());
        assert!(
            "unix:/tmp/x"
                .parse::<PortSpec>()
                .unwrap_err()
                .contains("a port is")
        );
        for s in [
            "tap:tap0",
            "stream:unix:/x,connect",
            "dgram:[::1]:1=[::1]:2",
        ] {
            assert_eq!(s.parse::<PortSpec>().unwrap().to_string(), s);
        }
    }
}
