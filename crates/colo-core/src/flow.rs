//! Flow identity: the normalised key under which both VMs' frames for one
//! conversation meet, in the engine's and the rewriter's connection tables.

use core::fmt;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// What kind of conversation a flow is. Ports are meaningful only for TCP and UDP;
/// for ICMP echo the identifier stands in for the port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FlowProto {
    /// TCP: compared as byte streams.
    Tcp,
    /// UDP: compared datagram by datagram.
    Udp,
    /// ICMP or ICMPv6.
    Icmp,
    /// Any other IP protocol number (GRE, ESP, SCTP, fragments of anything ...).
    OtherIp(u8),
    /// ARP.
    Arp,
    /// A non-IP, non-ARP ethertype.
    Ethertype(u16),
    /// A frame that could not be parsed: compared as raw bytes.
    Unparsed,
}

/// One end of a flow: an address (IPv4 stored as IPv4-mapped IPv6) and a port.
/// Ordered by address (bytewise), then port.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Endpoint {
    /// IPv6 address, or IPv4-mapped IPv6 for IPv4.
    pub addr: [u8; 16],
    /// Port (TCP/UDP), echo identifier (ICMP), or 0.
    pub port: u16,
}

impl Endpoint {
    /// An endpoint from a standard address and a port.
    #[must_use]
    pub fn new(addr: IpAddr, port: u16) -> Self {
        let addr = match addr {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        };
        Self { addr, port }
    }

    /// The address as a standard `IpAddr` (IPv4-mapped addresses come back as IPv4).
    #[must_use]
    pub fn ip(&self) -> IpAddr {
        let v6 = Ipv6Addr::from(self.addr);
        match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        }
    }
}

impl Ord for Endpoint {
    fn cmp(&self, other: &Self) -> core::cmp::Ordering {
        // The address as one big-endian integer orders exactly as its bytes do, in
        // one comparison instead of a byte loop (every frame's key is normalised
        // with this).
        (u128::from_be_bytes(self.addr), self.port)
            .cmp(&(u128::from_be_bytes(other.addr), other.port))
    }
}

impl PartialOrd for Endpoint {
    fn partial_cmp(&self, other: &Self) -> Option<core::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ip() {
            IpAddr::V4(v4) => write!(f, "{v4}:{}", self.port),
            IpAddr::V6(v6) => write!(f, "[{v6}]:{}", self.port),
        }
    }
}

/// A normalised flow key: the same value for both directions of a conversation
/// (`lo` is the smaller endpoint), so client-to-VM and VM-to-client frames meet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Outer and inner 802.1Q VLAN ids, 0 when absent.
    pub vlan: [u16; 2],
    /// Protocol.
    pub proto: FlowProto,
    /// The smaller endpoint.
    pub lo: Endpoint,
    /// The larger endpoint.
    pub hi: Endpoint,
}

/// Which way a frame travels on its flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlowDir {
    /// From `lo` to `hi`.
    LoToHi,
    /// From `hi` to `lo`.
    HiToLo,
}

impl FlowKey {
    /// The key of a frame from `src` to `dst`, and the direction it travels in.
    #[must_use]
    pub fn new(vlan: [u16; 2], proto: FlowProto, src: Endpoint, dst: Endpoint) -> (Self, FlowDir) {
        if src <= dst {
            (
                Self {
                    vlan,
                    proto,
                    lo: src,
                    hi: dst,
                },
                FlowDir::LoToHi,
            )
        } else {
            (
                Self {
                    vlan,
                    proto,
                    lo: dst,
                    hi: src,
                },
                FlowDir::HiToLo,
            )
        }
    }

    /// A key for frames that carry no addresses (ARP, other ethertypes, unparsable).
    #[must_use]
    pub fn non_ip(vlan: [u16; 2], proto: FlowProto) -> Self {
        Self {
            vlan,
            proto,
            lo: Endpoint::default(),
            hi: Endpoint::default(),
        }
    }

    /// Source and destination of a frame travelling in `dir`.
    #[must_use]
    pub fn endpoints(&self, dir: FlowDir) -> (Endpoint, Endpoint) {
        match dir {
            FlowDir::LoToHi => (self.lo, self.hi),
            FlowDir::HiToLo => (self.hi, self.lo),
        }
    }
}

impl fmt::Display for FlowKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = match self.proto {
            FlowProto::Tcp => "tcp".to_string(),
            FlowProto::Udp => "udp".to_string(),
            FlowProto::Icmp => "icmp".to_string(),
            FlowProto::OtherIp(p) => format!("ip-proto-{p}"),
            FlowProto::Arp => return write!(f, "arp{}", vlan_suffix(self.vlan)),
            FlowProto::Ethertype(t) => {
                return write!(f, "ethertype-{t:#06x}{}", vlan_suffix(self.vlan));
            }
            FlowProto::Unparsed => return write!(f, "unparsed{}", vlan_suffix(self.vlan)),
        };
        write!(
            f,
            "{proto} {} <-> {}{}",
            self.lo,
            self.hi,
            vlan_suffix(self.vlan)
        )
    }
}

fn vlan_suffix(vlan: [u16; 2]) -> String {
    match vlan {
        [0, 0] => String::new(),
        [v, 0] => format!(" vlan {v}"),
        [o, i] => format!(" vlan {o}.{i}"),
    }
}

impl From<Ipv4Addr> for Endpoint {
    fn from(addr: Ipv4Addr) -> Self {
        Self::new(IpAddr::V4(addr), 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_directions_share_a_key() {
        let a = Endpoint::new("10.0.0.1".parse().unwrap(), 80);
        let b = Endpoint::new("10.0.0.2".parse().unwrap(), 40000);
        let (k1, d1) = FlowKey::new([0, 0], FlowProto::Tcp, a, b);
        let (k2, d2) = FlowKey::new([0, 0], FlowProto::Tcp, b, a);
        assert_eq!(k1, k2);
        assert_ne!(d1, d2);
        assert_eq!(k1.endpoints(d1), (a, b));
        assert_eq!(k1.to_string(), "tcp 10.0.0.1:80 <-> 10.0.0.2:40000");
        assert_eq!(a.ip().to_string(), "10.0.0.1");
    }

    proptest::proptest! {
        /// The order is the bytewise order of the address, then the port: what the
        /// derived order of `(addr, port)` gives.
        #[test]
        fn endpoint_order_is_address_bytes_then_port(
            a in proptest::array::uniform16(proptest::prelude::any::<u8>()),
            b in proptest::array::uniform16(proptest::prelude::any::<u8>()),
            same_prefix in 0usize..=16,
            pa in proptest::prelude::any::<u16>(),
            pb in proptest::prelude::any::<u16>(),
        ) {
            // Share a prefix often, so equal and near-equal addresses are covered.
            let mut b = b;
            b[..same_prefix].copy_from_slice(&a[..same_prefix]);
            let x = Endpoint { addr: a, port: pa };
            let y = Endpoint { addr: b, port: pb };
            proptest::prop_assert_eq!(x.cmp(&y), (a, pa).cmp(&(b, pb)));
            proptest::prop_assert_eq!(x.partial_cmp(&y), Some((a, pa).cmp(&(b, pb))));
        }
    }
}
