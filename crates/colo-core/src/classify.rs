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
///
/// The common case (Ethernet II, at most one 802.1Q tag, unfragmented IPv4 or IPv6
/// without extension headers, TCP) is parsed by hand; everything else goes through
/// etherparse. Both give the same [`Classified`] for every frame the fast path accepts
/// (checked by a property test against the etherparse path).
#[must_use]
pub fn classify(eth: &[u8]) -> Classified {
    match classify_fast(eth) {
        Some(c) => c,
        None => classify_etherparse(eth),
    }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// IPv4 address bytes as an IPv4-mapped IPv6 address, as [`Endpoint::new`] stores it.
fn v4_mapped(a: &[u8]) -> [u8; 16] {
    let mut m = [0u8; 16];
    m[10] = 0xff;
    m[11] = 0xff;
    m[12..].copy_from_slice(&a[..4]);
    m
}

/// The hand-written parser for untagged or single-tagged IPv4/IPv6 TCP and UDP.
/// Returns `None` for anything it is not sure about, and the caller falls back to
/// etherparse; when it returns `Some`, the result is the one [`classify_etherparse`]
/// gives.
/// IP protocol numbers the fast path takes.
const IP_TCP: u8 = 6;
/// See [`IP_TCP`].
const IP_UDP: u8 = 17;

fn classify_fast(eth: &[u8]) -> Option<Classified> {
    let mut vlan = [0u16; 2];
    let mut at = 14;
    let mut ethertype = be16(eth, 12)?;
    if ethertype == 0x8100 {
        vlan[0] = be16(eth, 14)? & 0x0fff;
        ethertype = be16(eth, 16)?;
        at = 18;
    }
    let ip = eth.get(at..)?;
    let (src, dst, tcp_offset, ip_end, ip_version, proto) = match ethertype {
        0x0800 => {
            let h = ip.get(..20)?;
            let ihl = usize::from(h[0] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([h[2], h[3]]));
            // Version 4, a sane header length, a total length that covers the header
            // and fits the frame, not a fragment (MF clear, offset 0), TCP or UDP.
            if h[0] >> 4 != 4
                || ihl < 20
                || total < ihl
                || total > ip.len()
                || u16::from_be_bytes([h[6], h[7]]) & 0x3fff != 0
                || !matches!(h[9], IP_TCP | IP_UDP)
            {
                return None;
            }
            (
                v4_mapped(&h[12..16]),
                v4_mapped(&h[16..20]),
                at + ihl,
                at + total,
                4u8,
                h[9],
            )
        }
        0x86dd => {
            let h = ip.get(..40)?;
            let payload_len = usize::from(u16::from_be_bytes([h[4], h[5]]));
            // Version 6, next header TCP or UDP (no extension headers), a payload
            // length that is set (0 means a jumbogram) and fits the frame.
            if h[0] >> 4 != 6
                || !matches!(h[6], IP_TCP | IP_UDP)
                || payload_len == 0
                || 40 + payload_len > ip.len()
            {
                return None;
            }
            let mut src = [0u8; 16];
            let mut dst = [0u8; 16];
            src.copy_from_slice(&h[8..24]);
            dst.copy_from_slice(&h[24..40]);
            (src, dst, at + 40, at + 40 + payload_len, 6u8, h[6])
        }
        _ => return None,
    };
    // TCP and UDP both start with the source and destination ports.
    let l4 = eth.get(tcp_offset..ip_end)?;
    let ports = l4.get(..4)?;
    let (key, dir) = FlowKey::new(
        vlan,
        if proto == IP_UDP {
            FlowProto::Udp
        } else {
            FlowProto::Tcp
        },
        Endpoint {
            addr: src,
            port: u16::from_be_bytes([ports[0], ports[1]]),
        },
        Endpoint {
            addr: dst,
            port: u16::from_be_bytes([ports[2], ports[3]]),
        },
    );
    if proto == IP_UDP {
        // The UDP length covers its 8-byte header and fits the IP payload; the body
        // compared is what it covers (as etherparse slices it).
        let uh = l4.get(..8)?;
        let udp_len = usize::from(u16::from_be_bytes([uh[4], uh[5]]));
        if udp_len < 8 || udp_len > l4.len() {
            return None;
        }
        return Some(Classified {
            key,
            dir,
            l4: L4::Datagram(DatagramMeta::new(&[], tcp_offset + 8..tcp_offset + udp_len)),
        });
    }
    let th = l4.get(..20)?;
    let tcp_header_len = usize::from(th[12] >> 4) * 4;
    if tcp_header_len < 20 || tcp_header_len > l4.len() {
        return None;
    }
    Some(Classified {
        key,
        dir,
        l4: L4::Tcp(TcpMeta {
            seq: Seq(be32(&th[4..8])),
            ack: Seq(be32(&th[8..12])),
            flags: TcpFlags(th[13] & 0x3f),
            window: u16::from_be_bytes([th[14], th[15]]),
            ip_version,
            tcp_offset,
            tcp_header_len,
            payload: tcp_offset + tcp_header_len..ip_end,
        }),
    })
}

/// Classify with etherparse (every frame the fast path does not take).
fn classify_etherparse(eth: &[u8]) -> Classified {
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
        Some(TransportSlice::Icmpv4(icmp)) => icmp_datagram(
            eth,
            vlan,
            ep,
            [icmp.type_u8(), icmp.code_u8()],
            icmp.bytes5to8(),
            matches!(icmp.type_u8(), 0 | 8),
            icmp.payload(),
        ),
        Some(TransportSlice::Icmpv6(icmp)) => icmp_datagram(
            eth,
            vlan,
            ep,
            [icmp.type_u8(), icmp.code_u8()],
            icmp.bytes5to8(),
            matches!(icmp.type_u8(), 128 | 129),
            icmp.payload(),
        ),
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

/// An ICMP or ICMPv6 message as a datagram: type, code and the rest of the header
/// must match; for echo request/reply (`echo`) the identifier separates sessions.
fn icmp_datagram(
    eth: &[u8],
    vlan: [u16; 2],
    endpoints: impl Fn(u16) -> (Endpoint, Endpoint),
    type_code: [u8; 2],
    rest: [u8; 4],
    echo: bool,
    payload: &[u8],
) -> Classified {
    let id = if echo {
        u16::from_be_bytes([rest[0], rest[1]])
    } else {
        0
    };
    let (a, b) = endpoints(id);
    let (key, dir) = FlowKey::new(vlan, FlowProto::Icmp, a, b);
    let header = [
        type_code[0],
        type_code[1],
        rest[0],
        rest[1],
        rest[2],
        rest[3],
    ];
    Classified {
        key,
        dir,
        l4: L4::Datagram(DatagramMeta::new(&header, range_in(eth, payload))),
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

    /// A TCP (or, with `udp`, UDP) frame with the given shape; flags byte overwritten.
    #[allow(clippy::too_many_arguments)]
    fn shaped_frame(
        vlan: u8,
        vid: u16,
        v6: bool,
        ip_options: &[u8],
        frag: (bool, u16),
        tcp_options: &[u8],
        flags: u8,
        payload: &[u8],
        udp: bool,
    ) -> Vec<u8> {
        use etherparse::{IpFragOffset, IpHeaders, IpNumber, Ipv4Header, Ipv6Header};
        let ip = if v6 {
            IpHeaders::Ipv6(
                Ipv6Header {
                    source: [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                    destination: [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
                    hop_limit: 64,
                    ..Ipv6Header::default()
                },
                Default::default(),
            )
        } else {
            let mut h =
                Ipv4Header::new(0, 64, IpNumber::TCP, [10, 0, 0, 1], [10, 0, 0, 2]).unwrap();
            h.options = ip_options.try_into().unwrap();
            h.more_fragments = frag.0;
            h.fragment_offset = IpFragOffset::try_new(frag.1 & 0x1fff).unwrap();
            IpHeaders::Ipv4(h, Default::default())
        };
        let vid = (vid & 0x0fff).try_into().unwrap();
        let mut out = Vec::new();
        macro_rules! finish {
            ($step:expr) => {{
                let step = $step.ip(ip);
                if udp {
                    step.udp(5353, 53).write(&mut out, payload).unwrap();
                } else {
                    step.tcp(80, 40000, 0x1234_5678, 29200)
                        .ack(0x9abc_def0)
                        .options_raw(tcp_options)
                        .unwrap()
                        .write(&mut out, payload)
                        .unwrap();
                }
            }};
        }
        let eth = PacketBuilder::ethernet2(MAC_A, MAC_B);
        match vlan % 3 {
            0 => finish!(eth),
            1 => finish!(eth.single_vlan(vid)),
            _ => finish!(eth.double_vlan(vid, 7.try_into().unwrap())),
        }
        if !udp {
            let at = match SlicedPacket::from_ethernet(&out) {
                Ok(SlicedPacket {
                    transport: Some(TransportSlice::Tcp(t)),
                    ..
                }) => Some(offset_in(&out, t.header_slice()) + 13),
                _ => None,
            };
            if let Some(at) = at {
                out[at] = flags;
            }
        }
        out
    }

    #[test]
    fn fast_path_takes_the_common_cases() {
        for (vlan, v6, ip_options) in [
            (0, false, &[][..]),
            (1, false, &[1, 1, 1, 0][..]),
            (0, true, &[][..]),
            (1, true, &[][..]),
        ] {
            let f = shaped_frame(
                vlan,
                42,
                v6,
                ip_options,
                (false, 0),
                &[1, 1, 1, 1],
                0x18,
                b"hi",
                false,
            );
            let fast = classify_fast(&f).expect("fast path");
            assert_eq!(fast, classify_etherparse(&f));
            assert_eq!(&f[fast.tcp().unwrap().payload.clone()], b"hi");
        }
        for (vlan, v6) in [(0, false), (1, false), (0, true), (1, true)] {
            let udp = shaped_frame(vlan, 9, v6, &[], (false, 0), &[], 0, b"dns", true);
            let fast = classify_fast(&udp).expect("fast path for UDP");
            assert_eq!(fast, classify_etherparse(&udp));
            let L4::Datagram(d) = &fast.l4 else {
                panic!("UDP is a datagram")
            };
            assert_eq!(&udp[d.body.clone()], b"dns");
        }
        // Fragments, double tags: left to etherparse.
        let frag = shaped_frame(0, 0, false, &[], (true, 0), &[], 0x10, b"x", false);
        assert!(classify_fast(&frag).is_none());
        let qinq = shaped_frame(2, 5, false, &[], (false, 0), &[], 0x10, b"x", false);
        assert!(classify_fast(&qinq).is_none());
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(5000))]
        /// The hand-written fast path agrees with etherparse on every frame it accepts:
        /// well-formed frames of every shape, and random mutations and truncations.
        #[test]
        fn fast_path_matches_etherparse(
            vlan in 0u8..3,
            vid in proptest::num::u16::ANY,
            v6 in proptest::bool::ANY,
            ip_option_words in 0usize..=10,
            frag in (proptest::bool::weighted(0.1), proptest::prop_oneof![3 => proptest::strategy::Just(0u16), 1 => 0u16..0x2000]),
            tcp_option_words in 0usize..=10,
            flags in proptest::num::u8::ANY,
            payload in proptest::prop_oneof![
                proptest::collection::vec(proptest::num::u8::ANY, 0..4),
                proptest::collection::vec(proptest::num::u8::ANY, 0..64),
            ],
            udp in proptest::bool::weighted(0.3),
            padding in proptest::collection::vec(proptest::num::u8::ANY, 0..24),
            mutations in proptest::collection::vec((0usize..90, proptest::num::u8::ANY), 0..3),
            nudges in proptest::collection::vec((0usize..10, -3i8..=3), 0..3),
            truncate in proptest::option::weighted(0.2, 0usize..200),
        ) {
            let ip_options = vec![1u8; ip_option_words * 4];
            let tcp_options = vec![1u8; tcp_option_words * 4];
            let mut f = shaped_frame(vlan, vid, v6, &ip_options, frag, &tcp_options, flags, &payload, udp);
            f.extend_from_slice(&padding);
            // Nudge the length and type fields the fast path checks by a little, so
            // that off-by-one boundaries are exercised, not only random bytes.
            let l3 = 14 + 4 * usize::from(vlan % 3);
            let l4 = l3 + if v6 { 40 } else { 20 + ip_options.len() };
            for (field, delta) in nudges {
                let (at, step) = match field {
                    0 => (12, 1),                            // ethertype (low byte)
                    1 => (l3 - 2, 1),                        // inner ethertype (low byte)
                    2 => (l3, 1),                            // version / IHL
                    3 => (l3 + if v6 { 5 } else { 3 }, 1),   // IP length (low byte)
                    4 => (l3 + 6, if v6 { 1 } else { 0x20 }),  // next header / MF flag
                    5 => (l3 + if v6 { 4 } else { 2 }, 1),   // IP length (high byte)
                    6 => (l4 + 12, 0x10),                    // TCP data offset
                    7 => (l4 + 5, 1),                        // UDP length (low byte)
                    8 => (l4 + 4, 1),                        // UDP length (high byte)
                    _ => (l3 + 7, 1),                        // fragment offset (low byte)
                };
                if let Some(b) = f.get_mut(at) {
                    *b = b.wrapping_add((delta as u8).wrapping_mul(step));
                }
            }
            for (at, value) in mutations {
                if let Some(b) = f.get_mut(at) {
                    *b = value;
                }
            }
            if let Some(n) = truncate {
                f.truncate(n);
            }
            if let Some(fast) = classify_fast(&f) {
                proptest::prop_assert_eq!(fast, classify_etherparse(&f));
            }
        }

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
