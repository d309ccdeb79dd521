//! Restarting client traffic after a failover: the frames the surviving (secondary)
//! proxy sends towards the clients the moment it takes over.
//!
//! - [`gratuitous_arp`]: an ARP request for the VM's own IPv4 address (sender and
//!   target both that address), broadcast, so switches and neighbours learn where
//!   the VM's MAC now lives;
//! - [`unsolicited_na`]: the IPv6 equivalent, an unsolicited neighbour advertisement
//!   with the override flag to all nodes (`ff02::1`, RFC 4861 section 7.2.6);
//! - [`tcp_dup_ack`]: a pure ACK repeating the VM's last client-facing sequence,
//!   acknowledgement and window on a live connection; three of them make the client
//!   retransmit at once (fast retransmit) instead of waiting for its backed-off timer.
//!
//! [`VmAddresses`] learns the addresses (with their MAC) the VM has used from its
//! output, bounded. Everything here is sans-IO: frames in, frames out.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::Bytes;
use etherparse::{Icmpv6Header, Icmpv6Type, IpNumber, Ipv4Header, icmpv6};

use crate::Frame;
use crate::checksum::{TCP_CHECKSUM_OFFSET, tcp_checksum_ipv4, tcp_checksum_ipv6};
use crate::flow::Endpoint;

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_VLAN: u16 = 0x8100;
const BROADCAST: [u8; 6] = [0xff; 6];
/// Ethernet's minimum frame length without the FCS: shorter frames are padded.
const MIN_FRAME: usize = 60;

/// A TCP connection the VM has open, as the client sees it: the values a duplicate
/// ACK from the VM must carry. Produced by
/// [`crate::rewrite::Rewriter::live_connections`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveConnection {
    /// 802.1Q VLAN ids of the connection's frames (0 when absent).
    pub vlan: [u16; 2],
    /// The VM's end.
    pub vm: Endpoint,
    /// The client's end.
    pub client: Endpoint,
    /// The VM's MAC address (source of its last segment).
    pub vm_mac: [u8; 6],
    /// The next hop towards the client (destination of the VM's last segment).
    pub client_mac: [u8; 6],
    /// The VM's next sequence number, in the client's (the primary's) space.
    pub seq: u32,
    /// The VM's last acknowledgement number.
    pub ack: u32,
    /// The VM's last raw (unscaled) receive window.
    pub window: u16,
    /// TSval and TSecr of the VM's last segment, in the client's space, when the
    /// connection uses RFC 7323 timestamps.
    pub timestamps: Option<(u32, u32)>,
}

/// Write the Ethernet header (with VLAN tags when `vlan` is non-zero).
fn ethernet(out: &mut Vec<u8>, src: [u8; 6], dst: [u8; 6], vlan: [u16; 2], ether_type: u16) {
    out.extend_from_slice(&dst);
    out.extend_from_slice(&src);
    for id in vlan.into_iter().filter(|&v| v != 0) {
        out.extend_from_slice(&ETHERTYPE_VLAN.to_be_bytes());
        out.extend_from_slice(&(id & 0x0fff).to_be_bytes());
    }
    out.extend_from_slice(&ether_type.to_be_bytes());
}

fn finish(mut data: Vec<u8>) -> Frame {
    if data.len() < MIN_FRAME {
        data.resize(MIN_FRAME, 0);
    }
    Frame::ethernet(Bytes::from(data))
}

/// A gratuitous ARP request announcing that `ip` is at `mac`.
#[must_use]
pub fn gratuitous_arp(mac: [u8; 6], ip: Ipv4Addr) -> Frame {
    let mut out = Vec::with_capacity(MIN_FRAME);
    ethernet(&mut out, mac, BROADCAST, [0, 0], ETHERTYPE_ARP);
    out.extend_from_slice(&1u16.to_be_bytes()); // hardware: Ethernet
    out.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    out.extend_from_slice(&[6, 4]);
    out.extend_from_slice(&1u16.to_be_bytes()); // request
    out.extend_from_slice(&mac);
    out.extend_from_slice(&ip.octets());
    out.extend_from_slice(&[0; 6]);
    out.extend_from_slice(&ip.octets());
    finish(out)
}

/// An unsolicited neighbour advertisement (override set, solicited clear) for `ip`
/// at `mac`, to all nodes, with the target link-layer address option.
#[must_use]
pub fn unsolicited_na(mac: [u8; 6], ip: Ipv6Addr) -> Frame {
    const ALL_NODES: [u8; 16] = [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    // Target address, then option 2 (target link-layer address), length 1 (8 bytes).
    let mut body = Vec::with_capacity(24);
    body.extend_from_slice(&ip.octets());
    body.extend_from_slice(&[2, 1]);
    body.extend_from_slice(&mac);
    let icmp_type = Icmpv6Type::NeighborAdvertisement(icmpv6::NeighborAdvertisementHeader {
        router: false,
        solicited: false,
        r#override: true,
    });
    let mut icmp = Vec::with_capacity(8 + body.len());
    // The body is 24 bytes: far below any length limit, so this cannot fail.
    if let Ok(h) = Icmpv6Header::with_checksum(icmp_type, ip.octets(), ALL_NODES, &body) {
        icmp.extend_from_slice(&h.to_bytes());
    }
    icmp.extend_from_slice(&body);
    let mut out = Vec::with_capacity(14 + 40 + icmp.len());
    ethernet(
        &mut out,
        mac,
        [0x33, 0x33, 0, 0, 0, 1],
        [0, 0],
        ETHERTYPE_IPV6,
    );
    ipv6_header(
        &mut out,
        ip.octets(),
        ALL_NODES,
        IpNumber::IPV6_ICMP.0,
        icmp.len(),
        255,
    );
    out.extend_from_slice(&icmp);
    finish(out)
}

fn ipv6_header(out: &mut Vec<u8>, src: [u8; 16], dst: [u8; 16], next: u8, len: usize, hops: u8) {
    out.extend_from_slice(&[0x60, 0, 0, 0]);
    out.extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes());
    out.extend_from_slice(&[next, hops]);
    out.extend_from_slice(&src);
    out.extend_from_slice(&dst);
}

/// One duplicate ACK from the VM to the client on `conn`.
#[must_use]
pub fn tcp_dup_ack(conn: &LiveConnection) -> Frame {
    let mut tcp = Vec::with_capacity(32);
    tcp.extend_from_slice(&conn.vm.port.to_be_bytes());
    tcp.extend_from_slice(&conn.client.port.to_be_bytes());
    tcp.extend_from_slice(&conn.seq.to_be_bytes());
    tcp.extend_from_slice(&conn.ack.to_be_bytes());
    let words: u8 = if conn.timestamps.is_some() { 8 } else { 5 };
    tcp.push(words << 4);
    tcp.push(0x10); // ACK
    tcp.extend_from_slice(&conn.window.to_be_bytes());
    tcp.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
    if let Some((tsval, tsecr)) = conn.timestamps {
        tcp.extend_from_slice(&[1, 1, 8, 10]);
        tcp.extend_from_slice(&tsval.to_be_bytes());
        tcp.extend_from_slice(&tsecr.to_be_bytes());
    }
    // The IP header (checksummed where IPv4 has one) and the TCP checksum.
    let mut ip = Vec::with_capacity(40);
    let (ether_type, csum) = match (conn.vm.ip(), conn.client.ip()) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            let len = u16::try_from(tcp.len()).unwrap_or(u16::MAX);
            if let Ok(mut h) = Ipv4Header::new(len, 64, IpNumber::TCP, src.octets(), dst.octets()) {
                h.dont_fragment = true;
                h.header_checksum = h.calc_header_checksum();
                ip.extend_from_slice(&h.to_bytes());
            }
            (
                ETHERTYPE_IPV4,
                tcp_checksum_ipv4(src.octets(), dst.octets(), &tcp),
            )
        }
        (src, dst) => {
            let (src, dst) = (v6_octets(src), v6_octets(dst));
            ipv6_header(&mut ip, src, dst, IpNumber::TCP.0, tcp.len(), 64);
            (ETHERTYPE_IPV6, tcp_checksum_ipv6(src, dst, &tcp))
        }
    };
    tcp[TCP_CHECKSUM_OFFSET..TCP_CHECKSUM_OFFSET + 2].copy_from_slice(&csum.to_be_bytes());
    let mut out = Vec::with_capacity(MIN_FRAME + 40);
    ethernet(
        &mut out,
        conn.vm_mac,
        conn.client_mac,
        conn.vlan,
        ether_type,
    );
    out.extend_from_slice(&ip);
    out.extend_from_slice(&tcp);
    finish(out)
}

fn v6_octets(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The unicast addresses a VM has used as a source, each with the MAC it used, in
/// the order first seen; at most `capacity` (more are counted in
/// [`VmAddresses::overflow`], not stored).
#[derive(Debug, Clone, Default)]
pub struct VmAddresses {
    addrs: Vec<(IpAddr, [u8; 6])>,
    capacity: usize,
    overflow: u64,
}

impl VmAddresses {
    /// An empty set holding at most `capacity` addresses.
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        Self {
            addrs: Vec::new(),
            capacity,
            overflow: 0,
        }
    }

    /// The learned addresses, in the order first seen.
    #[must_use]
    pub fn addresses(&self) -> &[(IpAddr, [u8; 6])] {
        &self.addrs
    }

    /// Addresses not stored because the set was full.
    #[must_use]
    pub fn overflow(&self) -> u64 {
        self.overflow
    }

    /// Learn from one Ethernet frame the VM sent: the source address of IPv4 and
    /// IPv6 packets, the sender address of ARP. Malformed frames, unspecified,
    /// multicast and broadcast sources are ignored. The latest MAC for an address wins.
    pub fn learn(&mut self, eth: &[u8]) {
        let Some((mac, ip)) = source_of(eth) else {
            return;
        };
        if let Some(entry) = self.addrs.iter_mut().find(|(a, _)| *a == ip) {
            entry.1 = mac;
            return;
        }
        if self.addrs.len() >= self.capacity {
            self.overflow += 1;
            return;
        }
        self.addrs.push((ip, mac));
    }

    /// The failover announcements for every learned address: a gratuitous ARP per
    /// IPv4 address, an unsolicited neighbour advertisement per IPv6 address.
    #[must_use]
    pub fn announcements(&self) -> Vec<Frame> {
        self.addrs
            .iter()
            .map(|&(ip, mac)| match ip {
                IpAddr::V4(v4) => gratuitous_arp(mac, v4),
                IpAddr::V6(v6) => unsolicited_na(mac, v6),
            })
            .collect()
    }
}

/// The source MAC and unicast source address of a frame, if it has one.
fn source_of(eth: &[u8]) -> Option<([u8; 6], IpAddr)> {
    let mac: [u8; 6] = eth.get(6..12)?.try_into().ok()?;
    if mac[0] & 1 == 1 {
        return None;
    }
    let mut at = 12;
    let mut ether_type = u16::from_be_bytes(eth.get(at..at + 2)?.try_into().ok()?);
    while ether_type == ETHERTYPE_VLAN || ether_type == 0x88a8 {
        at += 4;
        ether_type = u16::from_be_bytes(eth.get(at..at + 2)?.try_into().ok()?);
    }
    let l3 = eth.get(at + 2..)?;
    let ip = match ether_type {
        ETHERTYPE_IPV4 if l3.first()? >> 4 == 4 => {
            IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(l3.get(12..16)?).ok()?))
        }
        ETHERTYPE_IPV6 if l3.first()? >> 4 == 6 => {
            IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(l3.get(8..24)?).ok()?))
        }
        // Ethernet/IPv4 ARP: sender protocol address at 14..18.
        ETHERTYPE_ARP if l3.get(0..6)? == [0, 1, 8, 0, 6, 4] => {
            IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(l3.get(14..18)?).ok()?))
        }
        _ => return None,
    };
    let usable = match ip {
        IpAddr::V4(v4) => !(v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast()),
        IpAddr::V6(v6) => !(v6.is_unspecified() || v6.is_multicast()),
    };
    usable.then_some((mac, ip))
}

#[cfg(test)]
mod tests {
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};

    use super::*;
    use crate::sim::{FlowAddrs, TcpSender, udp_frame};

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

    #[test]
    fn gratuitous_arp_announces_the_address() {
        let f = gratuitous_arp(MAC, Ipv4Addr::new(10, 0, 0, 2));
        let d = &f.data[..];
        assert_eq!(d.len(), MIN_FRAME);
        assert_eq!(&d[0..6], &BROADCAST);
        assert_eq!(&d[6..12], &MAC);
        assert_eq!(&d[12..14], &[8, 6]);
        assert_eq!(&d[20..22], &[0, 1], "request");
        assert_eq!(&d[22..28], &MAC, "sender MAC");
        assert_eq!(&d[28..32], &[10, 0, 0, 2], "sender IP");
        assert_eq!(&d[38..42], &[10, 0, 0, 2], "target IP is the same");
    }

    #[test]
    fn neighbour_advertisement_parses_and_checks() {
        let ip: Ipv6Addr = "fd00::2".parse().unwrap();
        let f = unsolicited_na(MAC, ip);
        let p = SlicedPacket::from_ethernet(&f.data).unwrap();
        let Some(NetSlice::Ipv6(v6)) = &p.net else {
            panic!("not IPv6")
        };
        assert_eq!(v6.header().hop_limit(), 255);
        let Some(TransportSlice::Icmpv6(icmp)) = &p.transport else {
            panic!("not ICMPv6")
        };
        let Icmpv6Type::NeighborAdvertisement(h) = icmp.icmp_type() else {
            panic!("not an NA: {:?}", icmp.icmp_type())
        };
        assert!(h.r#override && !h.solicited && !h.router);
        let expect = icmp
            .header()
            .icmp_type
            .calc_checksum(
                v6.header().source(),
                v6.header().destination(),
                icmp.payload(),
            )
            .unwrap();
        assert_eq!(icmp.checksum(), expect);
        assert_eq!(&icmp.payload()[..16], &ip.octets());
        assert_eq!(
            &icmp.payload()[16..24],
            &[2, 1, 0x52, 0x54, 0, 0x12, 0x34, 0x56]
        );
    }

    fn live(v6: bool, ts: Option<(u32, u32)>) -> LiveConnection {
        let (vm, client): (IpAddr, IpAddr) = if v6 {
            ("fd00::2".parse().unwrap(), "fd00::99".parse().unwrap())
        } else {
            ("10.0.0.2".parse().unwrap(), "10.0.0.99".parse().unwrap())
        };
        LiveConnection {
            vlan: [0, 0],
            vm: Endpoint::new(vm, 80),
            client: Endpoint::new(client, 40000),
            vm_mac: MAC,
            client_mac: [2, 0, 0, 0, 0, 9],
            seq: 0xdead_beef,
            ack: 1234,
            window: 501,
            timestamps: ts,
        }
    }

    #[test]
    fn dup_acks_parse_with_valid_checksums() {
        for (v6, ts) in [
            (false, None),
            (false, Some((7, 9))),
            (true, None),
            (true, Some((1, 2))),
        ] {
            let c = live(v6, ts);
            let f = tcp_dup_ack(&c);
            let p = SlicedPacket::from_ethernet(&f.data).unwrap();
            let Some(TransportSlice::Tcp(tcp)) = &p.transport else {
                panic!("not TCP")
            };
            assert_eq!(tcp.source_port(), 80);
            assert_eq!(tcp.destination_port(), 40000);
            assert_eq!(tcp.sequence_number(), 0xdead_beef);
            assert_eq!(tcp.acknowledgment_number(), 1234);
            assert_eq!(tcp.window_size(), 501);
            assert!(tcp.ack() && !tcp.syn() && !tcp.fin() && !tcp.rst() && !tcp.psh());
            assert!(tcp.payload().is_empty());
            let expect = match &p.net {
                Some(NetSlice::Ipv4(ip)) => {
                    assert!(!v6);
                    let h = ip.header().to_header();
                    assert_eq!(h.header_checksum, h.calc_header_checksum());
                    tcp.to_header()
                        .calc_checksum_ipv4(&h, tcp.payload())
                        .unwrap()
                }
                Some(NetSlice::Ipv6(ip)) => {
                    assert!(v6);
                    tcp.to_header()
                        .calc_checksum_ipv6(&ip.header().to_header(), tcp.payload())
                        .unwrap()
                }
                other => panic!("{other:?}"),
            };
            assert_eq!(tcp.checksum(), expect);
            let got_ts = tcp.options_iterator().find_map(|o| match o {
                Ok(etherparse::TcpOptionElement::Timestamp(a, b)) => Some((a, b)),
                _ => None,
            });
            assert_eq!(got_ts, ts);
        }
    }

    #[test]
    fn learns_unicast_sources_bounded() {
        let mut a = VmAddresses::new(2);
        let mut s = TcpSender::new(FlowAddrs::v4(1), 100, 200);
        a.learn(&s.syn_ack().data);
        a.learn(&s.data(b"x").data);
        a.learn(&udp_frame(&FlowAddrs::v6(1), crate::sim::Towards::Client, b"y").data);
        a.learn(&gratuitous_arp(MAC, Ipv4Addr::new(192, 168, 1, 1)).data);
        a.learn(b"short");
        assert_eq!(a.addresses().len(), 2, "{a:?}");
        assert_eq!(a.overflow(), 1);
        assert!(a.addresses()[0].0.is_ipv4());
        assert!(a.addresses()[1].0.is_ipv6());
        let ann = a.announcements();
        assert_eq!(ann.len(), 2);
        assert_eq!(&ann[0].data[12..14], &[8, 6]);
        assert_eq!(&ann[1].data[12..14], &[0x86, 0xdd]);
        // Multicast and unspecified sources are not the VM's addresses.
        let mut b = VmAddresses::new(8);
        b.learn(&gratuitous_arp(MAC, Ipv4Addr::UNSPECIFIED).data);
        assert!(b.addresses().is_empty());
    }
}
