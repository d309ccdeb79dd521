//! Frame classification: parse a guest's Ethernet frame (with etherparse) into the
//! flow it belongs to and the fields the engine and the rewriter work on.
//!
//! Classification never fails: a frame that cannot be parsed, or whose lengths do
//! not add up, becomes an [`L4::Datagram`] on the [`FlowProto::Unparsed`] flow of its VLAN,
//! and is then compared byte for byte. Nothing is ever released unchecked.

use core::ops::Range;

use etherparse::{LinkExtSlice, NetSlice, SlicedPacket, TransportSlice};

use crate::flow::{Endpoint, FlowDir, FlowKey, FlowProto};
use crate::seq::Seq;

/// TCP control flags, as in the TCP header's flags byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    /// No more data from sender.
    pub const FIN: Self = Self(0x01);
    /// Synchronise sequence numbers.
    pub const SYN: Self = Self(0x02);
    /// Reset the connection.
    pub const RST: Self = Self(0x04);
    /// Push function.
    pub const PSH: Self = Self(0x08);
    /// Acknowledgement field is significant.
    pub const ACK: Self = Self(0x10);
    /// Urgent pointer field is significant.
    pub const URG: Self = Self(0x20);

    /// All flags of `other` are set in `self`.
    #[must_use]
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// The union of two flag sets.
    #[must_use]
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
}

/// The TCP fields of a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpMeta {
    /// Sequence number.
    pub seq: Seq,
    /// Acknowledgement number (meaningful when [`TcpFlags::ACK`] is set).
    pub ack: Seq,
    /// Control flags.
    pub flags: TcpFlags,
    /// Raw (unscaled) receive window.
    pub window: u16,
    /// IP version: 4 or 6.
    pub ip_version: u8,
    /// Offset of the TCP header within the Ethernet frame.
    pub tcp_offset: usize,
    /// TCP header length, options included.
    pub tcp_header_len: usize,
    /// The payload's range within the Ethernet frame (clipped to the IP length, so
    /// Ethernet padding is not part of it).
    pub payload: Range<usize>,
}

impl TcpMeta {
    /// Payload length in bytes.
    #[must_use]
    pub fn payload_len(&self) -> usize {
        self.payload.len()
    }

    /// Sequence space the segment occupies: payload, plus one for SYN and one for FIN.
    #[must_use]
    pub fn seq_len(&self) -> u32 {
        let mut n = u32::try_from(self.payload.len()).unwrap_or(u32::MAX);
        if self.flags.contains(TcpFlags::SYN) {
            n = n.saturating_add(1);
        }
        if self.flags.contains(TcpFlags::FIN) {
            n = n.saturating_add(1);
        }
        n
    }
}

/// Maximum number of protocol header bytes a datagram carries for comparison.
pub const DATAGRAM_HEADER_MAX: usize = 8;

/// A datagram (UDP, ICMP, ARP, other IP, other ethertype or an unparsable frame):
/// what must be equal between the two VMs beyond the flow key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatagramMeta {
    /// Protocol header fields that must match (ICMP type, code and rest-of-header;
    /// a fragment marker). Fields that legitimately differ between two VMs (IP ID,
    /// TTL, checksums) are never part of it.
    pub header: [u8; DATAGRAM_HEADER_MAX],
    /// How many bytes of `header` are used.
    pub header_len: u8,
    /// The range of the frame compared byte for byte.
    pub body: Range<usize>,
}

impl DatagramMeta {
    fn new(header: &[u8], body: Range<usize>) -> Self {
        let mut h = [0; DATAGRAM_HEADER_MAX];
        let n = header.len().min(DATAGRAM_HEADER_MAX);
        h[..n].copy_from_slice(&header[..n]);
        Self {
            header: h,
            header_len: n as u8,
            body,
        }
    }

    /// The header bytes that are compared.
    #[must_use]
    pub fn header(&self) -> &[u8] {
        &self.header[..usize::from(self.header_len)]
    }
}

/// The transport-level view of a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum L4 {
    /// A TCP segment.
    Tcp(TcpMeta),
    /// Anything compared datagram by datagram.
    Datagram(DatagramMeta),
}

/// A classified frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classified {
    /// The normalised flow.
    pub key: FlowKey,
    /// The direction the frame travels on its flow.
    pub dir: FlowDir,
    /// Transport details.
    pub l4: L4,
}

impl Classified {
    /// The TCP details, if this is a TCP segment.
    #[must_use]
    pub fn tcp(&self) -> Option<&TcpMeta> {
        match &self.l4 {
            L4::Tcp(t) => Some(t),
            L4::Datagram(_) => None,
        }
    }
}

/// Byte offset of `inner` within `outer`. `inner` must be a sub-slice of `outer`.
fn offset_in(outer: &[u8], inner: &[u8]) -> usize {
    (inner.as_ptr() as usize)
        .wrapping_sub(outer.as_ptr() as usize)
        .min(outer.len())
}

fn range_in(outer: &[u8], inner: &[u8]) -> Range<usize> {
    let start = offset_in(outer, inner);
    start..(start + inner.len()).min(outer.len())
}

fn unparsed(eth: &[u8], vlan: [u16; 2]) -> Classified {
    Classified {
        key: FlowKey::non_ip(vlan, FlowProto::Unparsed),
        dir: FlowDir::LoToHi,
        l4: L4::Datagram(DatagramMeta::new(&[], 0..eth.len())),
    }
}

/// Classify one Ethernet frame (without its virtio-net header).
#[must_use]
pub fn classify(eth: &[u8]) -> Classified {
    let Ok(packet) = SlicedPacket::from_ethernet(eth) else {
        return unparsed(eth, raw_vlan(eth));
    };
    let mut vlan = [0u16; 2];
    for (slot, ext) in vlan.iter_mut().zip(packet.link_exts.iter()) {
        if let LinkExtSlice::Vlan(v) = ext {
            *slot = v.vlan_identifier().value();
        }
    }
    let Some(net) = &packet.net else {
        // Not IP nor ARP: compare the whole link payload per ethertype.
        let ethertype = match packet.link_exts.last() {
            Some(LinkExtSlice::Vlan(v)) => v.ether_type().0,
            _ => match &packet.link {
                Some(etherparse::LinkSlice::Ethernet2(e)) => e.ether_type().0,
                _ => 0,
            },
        };
        return Classified {
            key: FlowKey::non_ip(vlan, FlowProto::Ethertype(ethertype)),
            dir: FlowDir::LoToHi,
            l4: L4::Datagram(DatagramMeta::new(&[], 0..eth.len())),
        };
    };
    let (src, dst, ip_payload, ip_version) = match net {
        NetSlice::Ipv4(ip) => {
            let h = ip.header();
            (
                core::net::IpAddr::V4(h.source_addr()),
                core::net::IpAddr::V4(h.destination_addr()),
                ip.payload(),
                4u8,
            )
        }
        NetSlice::Ipv6(ip) => {
            let h = ip.header();
            (
                core::net::IpAddr::V6(h.source_addr()),
                core::net::IpAddr::V6(h.destination_addr()),
                ip.payload(),
                6u8,
            )
        }
        NetSlice::Arp(arp) => {
            return Classified {
                key: FlowKey::non_ip(vlan, FlowProto::Arp),
                dir: FlowDir::LoToHi,
                l4: L4::Datagram(DatagramMeta::new(&[], range_in(eth, arp.slice()))),
            };
        }
    };
    let ip_proto = ip_payload.ip_number.0;
    let ep = |port: u16| (Endpoint::new(src, port), Endpoint::new(dst, port));
    match &packet.transport {
        Some(TransportSlice::Tcp(tcp)) => {
            let (key, dir) = FlowKey::new(
                vlan,
                FlowProto::Tcp,
                Endpoint::new(src, tcp.source_port()),
                Endpoint::new(dst, tcp.destination_port()),
            );
            let header = tcp.header_slice();
            Classified {
                key,
                dir,
                l4: L4::Tcp(TcpMeta {
                    seq: Seq(tcp.sequence_number()),
                    ack: Seq(tcp.acknowledgment_number()),
                    flags: TcpFlags(header[13] & 0x3f),
                    window: tcp.window_size(),
                    ip_version,
                    tcp_offset: offset_in(eth, header),
                    tcp_header_len: header.len(),
                    payload: range_in(eth, tcp.payload()),
                }),
            }
        }
        Some(TransportSlice::Udp(udp)) => {
            let (key, dir) = FlowKey::new(
                vlan,
                FlowProto::Udp,
                Endpoint::new(src, udp.source_port()),
                Endpoint::new(dst, udp.destination_port()),
            );
            Classified {
                key,
                dir,
                l4: L4::Datagram(DatagramMeta::new(&[], range_in(eth, udp.payload()))),
            }
        }
        Some(TransportSlice::Icmpv4(icmp)) => {
            let rest = icmp.bytes5to8();
            // Echo request/reply: the identifier separates ping sessions.
            let id = if matches!(icmp.type_u8(), 0 | 8) {
                u16::from_be_bytes([rest[0], rest[1]])
            } else {
                0
            };
            let (a, b) = ep(id);
            let (key, dir) = FlowKey::new(vlan, FlowProto::Icmp, a, b);
            let header = [
                icmp.type_u8(),
                icmp.code_u8(),
                rest[0],
                rest[1],
                rest[2],
                rest[3],
            ];
            Classified {
                key,
                dir,
                l4: L4::Datagram(DatagramMeta::new(&header, range_in(eth, icmp.payload()))),
            }
        }
        Some(TransportSlice::Icmpv6(icmp)) => {
            let rest = icmp.bytes5to8();
            let id = if matches!(icmp.type_u8(), 128 | 129) {
                u16::from_be_bytes([rest[0], rest[1]])
            } else {
                0
            };
            let (a, b) = ep(id);
            let (key, dir) = FlowKey::new(vlan, FlowProto::Icmp, a, b);
            let header = [
                icmp.type_u8(),
                icmp.code_u8(),
                rest[0],
                rest[1],
                rest[2],
                rest[3],
            ];
            Classified {
                key,
                dir,
                l4: L4::Datagram(DatagramMeta::new(&header, range_in(eth, icmp.payload()))),
            }
        }
        // IGMP, other protocols and fragments (etherparse leaves `transport` empty for
        // fragmented payloads): compare the IP payload under the protocol number.
        _ => {
            let (a, b) = ep(0);
            let (key, dir) = FlowKey::new(vlan, FlowProto::OtherIp(ip_proto), a, b);
            let header = [ip_proto, u8::from(ip_payload.fragmented)];
            Classified {
                key,
                dir,
                l4: L4::Datagram(DatagramMeta::new(
                    &header,
                    range_in(eth, ip_payload.payload),
                )),
            }
        }
    }
}

/// VLAN ids read straight from the bytes, for frames etherparse rejects, so that
/// unparsable frames of different VLANs stay apart.
fn raw_vlan(eth: &[u8]) -> [u16; 2] {
    let tag = |at: usize| -> Option<u16> {
        let tpid = u16::from_be_bytes([*eth.get(at)?, *eth.get(at + 1)?]);
        if matches!(tpid, 0x8100 | 0x88a8 | 0x9100) {
            Some(u16::from_be_bytes([*eth.get(at + 2)?, *eth.get(at + 3)?]) & 0x0fff)
        } else {
            None
        }
    };
    match tag(12) {
        Some(outer) => [outer, tag(16).unwrap_or(0)],
        None => [0, 0],
    }
}

#[cfg(test)]
mod tests {
    use etherparse::PacketBuilder;

    use super::*;

    const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 2];

    macro_rules! build {
        ($b:expr, $payload:expr) => {{
            let mut out = Vec::new();
            $b.write(&mut out, $payload).unwrap();
            out
        }};
    }

    #[test]
    fn tcp_ipv4() {
        let b = PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(80, 40000, 1000, 65535)
            .ack(77)
            .fin();
        let frame = build!(b, b"hello");
        let c = classify(&frame);
        let t = c.tcp().unwrap();
        assert_eq!(t.seq, Seq(1000));
        assert_eq!(t.ack, Seq(77));
        assert!(t.flags.contains(TcpFlags::ACK.union(TcpFlags::FIN)));
        assert!(!t.flags.contains(TcpFlags::SYN));
        assert_eq!(&frame[t.payload.clone()], b"hello");
        assert_eq!(t.tcp_offset, 14 + 20);
        assert_eq!(t.tcp_header_len, 20);
        assert_eq!(t.seq_len(), 6);
        assert_eq!(c.key.proto, FlowProto::Tcp);
        assert_eq!(c.key.to_string(), "tcp 10.0.0.1:80 <-> 10.0.0.2:40000");
    }

    #[test]
    fn ethernet_padding_is_not_payload() {
        let b = PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(1, 2, 3, 4);
        let mut frame = build!(b, b"");
        frame.resize(60, 0xee);
        let t = classify(&frame).tcp().cloned().unwrap();
        assert!(t.payload.is_empty());
    }

    #[test]
    fn tcp_ipv6_with_vlan() {
        let b = PacketBuilder::ethernet2(MAC_A, MAC_B)
            .single_vlan(42.try_into().unwrap())
            .ipv6([1; 16], [2; 16], 64)
            .tcp(443, 5000, 9, 100);
        let frame = build!(b, b"x");
        let c = classify(&frame);
        assert_eq!(c.key.vlan, [42, 0]);
        let t = c.tcp().unwrap();
        assert_eq!(t.ip_version, 6);
        assert_eq!(&frame[t.payload.clone()], b"x");
    }

    #[test]
    fn udp_and_icmp() {
        let b = PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(53, 999);
        let frame = build!(b, b"dns");
        let c = classify(&frame);
        assert_eq!(c.key.proto, FlowProto::Udp);
        let L4::Datagram(d) = &c.l4 else { panic!() };
        assert_eq!(&frame[d.body.clone()], b"dns");
        assert!(d.header().is_empty());

        let b = PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .icmpv4_echo_reply(7, 3);
        let frame = build!(b, b"ping");
        let c = classify(&frame);
        assert_eq!(c.key.proto, FlowProto::Icmp);
        assert_eq!(c.key.lo.port, 7);
        let L4::Datagram(d) = &c.l4 else { panic!() };
        assert_eq!(d.header(), &[0, 0, 0, 7, 0, 3]);
        assert_eq!(&frame[d.body.clone()], b"ping");
    }

    #[test]
    fn arp_and_garbage() {
        let mut arp = vec![0xff; 6];
        arp.extend_from_slice(&MAC_A);
        arp.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
        arp.extend_from_slice(&MAC_A);
        arp.extend_from_slice(&[10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 10, 0, 0, 2]);
        let c = classify(&arp);
        assert_eq!(c.key.proto, FlowProto::Arp);

        let garbage = [0u8; 5];
        let c = classify(&garbage);
        assert_eq!(c.key.proto, FlowProto::Unparsed);
        let L4::Datagram(d) = &c.l4 else { panic!() };
        assert_eq!(d.body, 0..5);

        // IPv4 that claims more bytes than it has: unparsed, compared raw.
        let b = PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(1, 2);
        let mut frame = build!(b, b"abcdef");
        frame.truncate(frame.len() - 3);
        assert_eq!(classify(&frame).key.proto, FlowProto::Unparsed);
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let c = classify(&bytes);
            match &c.l4 {
                L4::Tcp(t) => proptest::prop_assert!(t.payload.end <= bytes.len()),
                L4::Datagram(d) => proptest::prop_assert!(d.body.end <= bytes.len()),
            }
        }
    }
}
