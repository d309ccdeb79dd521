//! Deterministic traffic for tests, benchmarks and the demo: Ethernet frames for
//! a TCP conversation between a client and a VM, and datagrams.
//!
//! These builders produce valid frames (checksums included) with etherparse. They
//! are part of the public API so that the daemon's demo, the benchmarks and
//! downstream test suites drive the engine with the same traffic.

use core::net::IpAddr;

use etherparse::PacketBuilder;

use crate::classify::TcpFlags;
use crate::frame::Frame;

/// The MAC address used for the VMs' NIC.
pub const VM_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
/// The MAC address used for the client.
pub const CLIENT_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xab, 0xcd, 0xef];

/// Addresses of one conversation between a VM and a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowAddrs {
    /// The VM's address.
    pub vm: IpAddr,
    /// The VM's port.
    pub vm_port: u16,
    /// The client's address.
    pub client: IpAddr,
    /// The client's port.
    pub client_port: u16,
    /// 802.1Q VLAN id, if tagged.
    pub vlan: Option<u16>,
}

impl FlowAddrs {
    /// IPv4 flow number `n` (distinct client ports, then distinct client addresses).
    #[must_use]
    pub fn v4(n: u32) -> Self {
        let port = 1024 + (n % 60_000) as u16;
        let host = n / 60_000;
        Self {
            vm: IpAddr::from([10, 0, 0, 1]),
            vm_port: 80,
            client: IpAddr::from([10, 1, (host >> 8) as u8, host as u8]),
            client_port: port,
            vlan: None,
        }
    }

    /// IPv6 flow number `n`.
    #[must_use]
    pub fn v6(n: u32) -> Self {
        let mut client = [0u8; 16];
        client[0] = 0xfd;
        client[12..].copy_from_slice(&n.to_be_bytes());
        let mut vm = [0u8; 16];
        vm[0] = 0xfd;
        vm[15] = 1;
        Self {
            vm: IpAddr::from(vm),
            vm_port: 80,
            client: IpAddr::from(client),
            client_port: 1024 + (n % 60_000) as u16,
            vlan: None,
        }
    }
}

/// Which way a built frame travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Towards {
    /// From the VM to the client (VM output, what the engine compares).
    Client,
    /// From the client to the VM.
    Vm,
}

/// Fields of one TCP segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment<'a> {
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgement number (sent only with ACK).
    pub ack: u32,
    /// Flags.
    pub flags: TcpFlags,
    /// Window.
    pub window: u16,
    /// Timestamps option (TSval, TSecr), if any.
    pub timestamps: Option<(u32, u32)>,
    /// Payload.
    pub payload: &'a [u8],
}

impl Default for Segment<'_> {
    fn default() -> Self {
        Self {
            seq: 0,
            ack: 0,
            flags: TcpFlags::ACK,
            window: 65535,
            timestamps: None,
            payload: &[],
        }
    }
}

fn ip_layer(
    addrs: &FlowAddrs,
    towards: Towards,
) -> etherparse::PacketBuilderStep<etherparse::IpHeaders> {
    let (smac, dmac, src, dst) = match towards {
        Towards::Client => (VM_MAC, CLIENT_MAC, addrs.vm, addrs.client),
        Towards::Vm => (CLIENT_MAC, VM_MAC, addrs.client, addrs.vm),
    };
    let eth = PacketBuilder::ethernet2(smac, dmac);
    match (src, dst, addrs.vlan) {
        (IpAddr::V4(s), IpAddr::V4(d), None) => eth.ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V4(s), IpAddr::V4(d), Some(v)) => eth
            .single_vlan(v.try_into().unwrap_or_default())
            .ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d), None) => eth.ipv6(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d), Some(v)) => eth
            .single_vlan(v.try_into().unwrap_or_default())
            .ipv6(s.octets(), d.octets(), 64),
        _ => panic!("sim: mixed address families"),
    }
}

/// A TCP segment of `addrs` travelling `towards`.
#[must_use]
pub fn tcp_frame(addrs: &FlowAddrs, towards: Towards, seg: &Segment<'_>) -> Frame {
    let (sport, dport) = match towards {
        Towards::Client => (addrs.vm_port, addrs.client_port),
        Towards::Vm => (addrs.client_port, addrs.vm_port),
    };
    let mut b = ip_layer(addrs, towards).tcp(sport, dport, seg.seq, seg.window);
    let f = seg.flags;
    if f.contains(TcpFlags::SYN) {
        b = b.syn();
    }
    if f.contains(TcpFlags::ACK) {
        b = b.ack(seg.ack);
    }
    if f.contains(TcpFlags::FIN) {
        b = b.fin();
    }
    if f.contains(TcpFlags::RST) {
        b = b.rst();
    }
    if f.contains(TcpFlags::PSH) {
        b = b.psh();
    }
    if let Some((val, ecr)) = seg.timestamps {
        b = b
            .options(&[
                etherparse::TcpOptionElement::Noop,
                etherparse::TcpOptionElement::Noop,
                etherparse::TcpOptionElement::Timestamp(val, ecr),
            ])
            .unwrap_or_else(|_| unreachable!("12 bytes of options always fit"));
    }
    let mut out = Vec::with_capacity(b.size(seg.payload.len()));
    b.write(&mut out, seg.payload)
        .unwrap_or_else(|e| panic!("sim: cannot build TCP frame: {e}"));
    Frame::ethernet(out)
}

/// A UDP datagram of `addrs` travelling `towards`.
#[must_use]
pub fn udp_frame(addrs: &FlowAddrs, towards: Towards, payload: &[u8]) -> Frame {
    let (sport, dport) = match towards {
        Towards::Client => (addrs.vm_port, addrs.client_port),
        Towards::Vm => (addrs.client_port, addrs.vm_port),
    };
    let b = ip_layer(addrs, towards).udp(sport, dport);
    let mut out = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut out, payload)
        .unwrap_or_else(|e| panic!("sim: cannot build UDP frame: {e}"));
    Frame::ethernet(out)
}

/// A TCP segment of `addrs` travelling `towards` (default window, no options).
#[must_use]
pub fn plain_tcp(
    addrs: &FlowAddrs,
    towards: Towards,
    seq: u32,
    ack: u32,
    flags: TcpFlags,
    payload: &[u8],
) -> Frame {
    tcp_frame(
        addrs,
        towards,
        &Segment {
            seq,
            ack,
            flags,
            payload,
            ..Segment::default()
        },
    )
}

/// A TCP segment from the client to the VM (default window, no options).
#[must_use]
pub fn client_tcp(addrs: &FlowAddrs, seq: u32, ack: u32, flags: TcpFlags, payload: &[u8]) -> Frame {
    plain_tcp(addrs, Towards::Vm, seq, ack, flags, payload)
}

/// One VM's side of a TCP connection: turns a byte stream into segments with that
/// VM's own ISN and timestamp clock.
#[derive(Debug, Clone)]
pub struct TcpSender {
    /// The conversation.
    pub addrs: FlowAddrs,
    /// Initial sequence number.
    pub isn: u32,
    /// Next sequence number to send.
    pub next_seq: u32,
    /// What the VM acknowledges (client's next sequence number).
    pub ack: u32,
    /// Window advertised.
    pub window: u16,
    /// Timestamp clock offset (TSval = ts_base + segments sent), if timestamps are on.
    pub ts_base: Option<u32>,
    /// TSecr echoed.
    pub ts_ecr: u32,
    sent: u32,
}

impl TcpSender {
    /// A sender with this ISN that acknowledges client sequence `ack`.
    #[must_use]
    pub fn new(addrs: FlowAddrs, isn: u32, ack: u32) -> Self {
        Self {
            addrs,
            isn,
            next_seq: isn.wrapping_add(1),
            ack,
            window: 65535,
            ts_base: None,
            ts_ecr: 0,
            sent: 0,
        }
    }

    fn ts(&mut self) -> Option<(u32, u32)> {
        let base = self.ts_base?;
        self.sent += 1;
        Some((base.wrapping_add(self.sent), self.ts_ecr))
    }

    /// The SYN-ACK answering the client's SYN (passive open).
    pub fn syn_ack(&mut self) -> Frame {
        let ts = self.ts();
        let seg = Segment {
            seq: self.isn,
            ack: self.ack,
            flags: TcpFlags::SYN.union(TcpFlags::ACK),
            window: self.window,
            timestamps: ts,
            payload: &[],
        };
        tcp_frame(&self.addrs, Towards::Client, &seg)
    }

    /// A SYN (active open: the VM connects out).
    pub fn syn(&mut self) -> Frame {
        let ts = self.ts();
        let seg = Segment {
            seq: self.isn,
            ack: 0,
            flags: TcpFlags::SYN,
            window: self.window,
            timestamps: ts,
            payload: &[],
        };
        tcp_frame(&self.addrs, Towards::Client, &seg)
    }

    /// One data segment carrying `payload`.
    pub fn data(&mut self, payload: &[u8]) -> Frame {
        let ts = self.ts();
        let seg = Segment {
            seq: self.next_seq,
            ack: self.ack,
            flags: TcpFlags::ACK.union(TcpFlags::PSH),
            window: self.window,
            timestamps: ts,
            payload,
        };
        self.next_seq = self.next_seq.wrapping_add(payload.len() as u32);
        tcp_frame(&self.addrs, Towards::Client, &seg)
    }

    /// `data` cut into segments of the given sizes (cycled); the last may be shorter.
    pub fn segments(&mut self, data: &[u8], sizes: &[usize]) -> Vec<Frame> {
        let mut out = Vec::new();
        let mut at = 0;
        let mut i = 0;
        while at < data.len() {
            let n = sizes[i % sizes.len()].max(1).min(data.len() - at);
            out.push(self.data(&data[at..at + n]));
            at += n;
            i += 1;
        }
        out
    }

    /// A pure ACK for client sequence `ack`.
    pub fn ack_to(&mut self, ack: u32) -> Frame {
        self.ack = ack;
        let ts = self.ts();
        let seg = Segment {
            seq: self.next_seq,
            ack,
            flags: TcpFlags::ACK,
            window: self.window,
            timestamps: ts,
            payload: &[],
        };
        tcp_frame(&self.addrs, Towards::Client, &seg)
    }

    /// A FIN (with ACK).
    pub fn fin(&mut self) -> Frame {
        let ts = self.ts();
        let seg = Segment {
            seq: self.next_seq,
            ack: self.ack,
            flags: TcpFlags::FIN.union(TcpFlags::ACK),
            window: self.window,
            timestamps: ts,
            payload: &[],
        };
        self.next_seq = self.next_seq.wrapping_add(1);
        tcp_frame(&self.addrs, Towards::Client, &seg)
    }

    /// A RST.
    pub fn rst(&mut self) -> Frame {
        let seg = Segment {
            seq: self.next_seq,
            ack: 0,
            flags: TcpFlags::RST,
            window: 0,
            timestamps: None,
            payload: &[],
        };
        tcp_frame(&self.addrs, Towards::Client, &seg)
    }
}
