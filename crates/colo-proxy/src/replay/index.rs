//! Pass 1: index each capture's flows (cheap header parsing, no comparison), decide
//! which side of each flow is the VM, and pair connections across the captures.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;

use colo_core::classify::{L4, TcpFlags, classify};
use colo_core::flow::{Endpoint, FlowDir, FlowKey, FlowProto};

use super::capture::{CaptureError, CaptureReader, Link, normalize};
use super::headers;
use super::progress::Progress;

/// What pass 1 learnt about one flow (both directions).
#[derive(Debug, Clone)]
pub struct FlowInfo {
    /// The normalised flow.
    pub key: FlowKey,
    /// First packet number and time of the flow.
    pub first: (u64, u64),
    /// Frames sent by `lo` and by `hi`.
    pub frames: [u64; 2],
    /// Source MAC of the first frame from `lo` and from `hi`.
    pub mac: [Option<[u8; 6]>; 2],
    /// Sequence number of a SYN without ACK sent by `lo` / `hi`.
    pub syn: [Option<u32>; 2],
    /// (seq, ack) of a SYN-ACK sent by `lo` / `hi`.
    pub synack: [Option<(u32, u32)>; 2],
    /// Packet number of the first SYN or SYN-ACK sent by `lo` / `hi`.
    pub syn_number: [Option<u64>; 2],
    /// Which endpoint sent the flow's first frame (0 = `lo`, 1 = `hi`).
    pub opener: usize,
    /// Sequence number of the first payload byte of the first TCP segment sent by
    /// `lo` / `hi` (a SYN's number plus one).
    pub first_seq: [Option<u32>; 2],
}

/// What pass 1 learnt about one capture.
#[derive(Debug, Default)]
pub struct CaptureIndex {
    /// Flows in order of first appearance. A TCP 4-tuple reused by a new connection
    /// (a SYN with another ISN) starts a new flow with the same key.
    pub flows: Vec<FlowInfo>,
    /// Flow key to position in `flows` of its latest connection.
    pub map: FastMap<FlowKey, usize>,
    /// Packets read.
    pub packets: u64,
    /// Bytes of captured data read.
    pub bytes: u64,
    /// First and last packet time (ns since the epoch).
    pub first_ts: Option<u64>,
    /// Last packet time.
    pub last_ts: u64,
    /// Where reading stopped early, if it did.
    pub error: Option<CaptureError>,
    /// pcap or pcapng.
    pub format: &'static str,
    /// Link types.
    pub links: Vec<&'static str>,
    /// File size.
    pub size: u64,
}

fn idx(dir: FlowDir) -> usize {
    match dir {
        FlowDir::LoToHi => 0,
        FlowDir::HiToLo => 1,
    }
}

/// Read a capture's headers (pass 1). A read error ends the pass and is kept in
/// `error`; everything before it is indexed.
pub fn index_capture(path: &Path, progress: &mut Progress) -> Result<CaptureIndex, CaptureError> {
    let mut reader = CaptureReader::open(path)?;
    let mut ix = CaptureIndex {
        format: reader.format().name(),
        size: reader.size().unwrap_or(0),
        ..CaptureIndex::default()
    };
    let mut buf = Vec::with_capacity(2048);
    loop {
        let pkt = match reader.next_packet() {
            Ok(Some(p)) => p,
            Ok(None) => break,
            Err(e) => {
                ix.error = Some(e);
                break;
            }
        };
        ix.packets += 1;
        ix.bytes += pkt.data.len() as u64;
        ix.first_ts.get_or_insert(pkt.ts_ns);
        ix.last_ts = ix.last_ts.max(pkt.ts_ns);
        let (number, ts) = (pkt.number, pkt.ts_ns);
        // Ethernet frames that are whole are classified in place (no copy).
        let eth: &[u8] = if pkt.link == Link::Ethernet && !pkt.is_cut() {
            pkt.data
        } else {
            let _ = normalize(&pkt, &mut buf);
            &buf
        };
        let c = classify(eth);
        let src_mac = headers::src_mac(eth);
        progress.tick(reader.position());
        let n = ix.flows.len();
        let mut at = *ix.map.entry(c.key).or_insert(n);
        if let L4::Tcp(t) = &c.l4
            && at < n
            && t.flags.contains(TcpFlags::SYN)
            && !t.flags.contains(TcpFlags::ACK)
            && ix.flows[at].syn[idx(c.dir)].is_some_and(|isn| isn != t.seq.0)
        {
            // The 4-tuple is reused by a new connection.
            at = n;
            ix.map.insert(c.key, n);
        }
        if at == n {
            ix.flows.push(FlowInfo {
                key: c.key,
                first: (number, ts),
                frames: [0; 2],
                mac: [None; 2],
                syn: [None; 2],
                synack: [None; 2],
                syn_number: [None; 2],
                opener: idx(c.dir),
                first_seq: [None; 2],
            });
        }
        let f = &mut ix.flows[at];
        let d = idx(c.dir);
        f.frames[d] += 1;
        if f.mac[d].is_none() {
            f.mac[d] = src_mac;
        }
        if let L4::Tcp(t) = &c.l4 {
            let syn = u32::from(t.flags.contains(TcpFlags::SYN));
            f.first_seq[d].get_or_insert_with(|| t.seq.0.wrapping_add(syn));
        }
        if let L4::Tcp(t) = &c.l4
            && t.flags.contains(TcpFlags::SYN)
        {
            if t.flags.contains(TcpFlags::ACK) {
                f.synack[d].get_or_insert((t.seq.0, t.ack.0));
            } else {
                f.syn[d].get_or_insert(t.seq.0);
            }
            f.syn_number[d].get_or_insert(number);
        }
    }
    ix.links = reader.link_names().to_vec();
    Ok(ix)
}

/// How the VM's output is recognised in one capture.
#[derive(Debug, Clone, Default)]
pub struct VmSide {
    /// VM addresses (IPv4 as mapped IPv6).
    pub addrs: Vec<[u8; 16]>,
    /// VM MAC addresses (for non-IP frames, or when given).
    pub macs: Vec<[u8; 6]>,
    /// Require the MAC to match (given with `--vm-mac`).
    pub mac_given: bool,
    /// VM ports (given with `--vm-port`).
    pub ports: Vec<u16>,
    /// "options" or "guessed".
    pub how: &'static str,
    /// What was decided, in words.
    pub description: String,
}

impl VmSide {
    /// Is a frame from `src` (with source MAC `mac`) the VM's output?
    #[must_use]
    pub fn is_vm(&self, src: &Endpoint, mac: Option<[u8; 6]>, has_ports: bool) -> bool {
        if self.mac_given && !mac.is_some_and(|m| self.macs.contains(&m)) {
            return false;
        }
        if !self.addrs.is_empty() && !self.addrs.contains(&src.addr) {
            return false;
        }
        if !(self.ports.is_empty() || has_ports && self.ports.contains(&src.port)) {
            return false;
        }
        true
    }

    /// Is a non-IP frame from this MAC the VM's output?
    #[must_use]
    pub fn is_vm_mac(&self, mac: Option<[u8; 6]>) -> bool {
        mac.is_some_and(|m| self.macs.contains(&m))
    }
}

/// Options that pick the VM side, one value per capture (or the same for both).
#[derive(Debug, Clone, Default)]
pub struct VmOptions {
    /// `--vm-mac`.
    pub mac: Option<[u8; 6]>,
    /// `--vm-addr`.
    pub addr: Option<IpAddr>,
    /// `--vm-port`.
    pub port: Option<u16>,
}

fn mac_str(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn addr_str(a: &[u8; 16]) -> String {
    Endpoint { addr: *a, port: 0 }.ip().to_string()
}

fn has_ports(proto: FlowProto) -> bool {
    matches!(proto, FlowProto::Tcp | FlowProto::Udp)
}

/// Decide the VM side of a capture from the options, or guess it from the handshakes.
#[must_use]
pub fn decide_vm(ix: &CaptureIndex, opt: &VmOptions) -> VmSide {
    let mut side = VmSide::default();
    if opt.mac.is_some() || opt.addr.is_some() || opt.port.is_some() {
        let mut parts = Vec::new();
        if let Some(m) = opt.mac {
            side.macs.push(m);
            side.mac_given = true;
            parts.push(format!("MAC {}", mac_str(&m)));
        }
        if let Some(a) = opt.addr {
            side.addrs.push(Endpoint::new(a, 0).addr);
            parts.push(format!("address {a}"));
        }
        if let Some(p) = opt.port {
            side.ports.push(p);
            parts.push(format!("port {p}"));
        }
        side.how = "options";
        side.description = format!("VM output is what is sent from {}", parts.join(", "));
    } else {
        // Guess: the address that answers SYNs with SYN-ACKs is the VM; without any
        // handshake, the address that answers flows others open.
        let mut answers: HashMap<[u8; 16], u64> = HashMap::new();
        let mut responds: HashMap<[u8; 16], u64> = HashMap::new();
        for f in &ix.flows {
            if !has_ports(f.key.proto) && f.key.proto != FlowProto::Icmp {
                continue;
            }
            for (d, ep) in [f.key.lo, f.key.hi].iter().enumerate() {
                if f.synack[d].is_some() {
                    *answers.entry(ep.addr).or_default() += 1;
                }
                if d != f.opener && f.frames[d] > 0 {
                    *responds.entry(ep.addr).or_default() += 1;
                }
            }
        }
        let best = |m: &HashMap<[u8; 16], u64>| {
            m.iter()
                .max_by_key(|(a, n)| (**n, std::cmp::Reverse(**a)))
                .map(|(a, n)| (*a, *n))
        };
        side.how = "guessed";
        if let Some((a, n)) = best(&answers) {
            side.addrs.push(a);
            side.description = format!(
                "guessed: the VM is {} (it answered {n} SYN{} with SYN-ACK)",
                addr_str(&a),
                if n == 1 { "" } else { "s" }
            );
        } else if let Some((a, n)) = best(&responds) {
            side.addrs.push(a);
            side.description = format!(
                "guessed: the VM is {} (no TCP handshake seen; it answered {n} flow{} opened by the other side)",
                addr_str(&a),
                if n == 1 { "" } else { "s" }
            );
        } else {
            side.description = "guessed: no IP traffic; every frame is taken as VM output".into();
        }
    }
    // Learn the VM's MACs from its IP frames (for ARP and other non-IP frames).
    if !side.mac_given {
        for f in &ix.flows {
            if f.key.proto == FlowProto::Arp || !has_ports(f.key.proto) && f.key.lo == f.key.hi {
                continue;
            }
            for (d, ep) in [f.key.lo, f.key.hi].iter().enumerate() {
                if f.frames[d] > 0
                    && side.is_vm(ep, f.mac[d], has_ports(f.key.proto))
                    && let Some(m) = f.mac[d]
                    && m != [0; 6]
                    && !side.macs.contains(&m)
                {
                    side.macs.push(m);
                }
            }
        }
    }
    side
}

/// One connection (or datagram flow) of one capture, oriented VM → client.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The flow key.
    pub key: FlowKey,
    /// The VM's endpoint.
    pub vm: Endpoint,
    /// The client's endpoint.
    pub client: Endpoint,
    /// Direction of VM → client frames on the flow.
    pub vm_dir: FlowDir,
    /// First packet number and time.
    pub first: (u64, u64),
    /// The client's initial sequence number, when the handshake was captured.
    pub client_isn: Option<u32>,
    /// The VM sent a SYN or SYN-ACK in this capture.
    pub vm_handshake: bool,
    /// The client sent a SYN or SYN-ACK in this capture.
    pub client_handshake: bool,
    /// Sequence number of the VM's first payload byte (its SYN's number plus one, or
    /// its first segment's number).
    pub vm_first_seq: Option<u32>,
}

/// The connections of a capture that carry VM output, in order of appearance.
#[must_use]
pub fn connections(ix: &CaptureIndex, vm: &VmSide) -> Vec<ConnInfo> {
    let mut out = Vec::new();
    for f in &ix.flows {
        let ports = has_ports(f.key.proto);
        let non_ip = matches!(
            f.key.proto,
            FlowProto::Arp | FlowProto::Ethertype(_) | FlowProto::Unparsed
        );
        let (d, vm_dir) = if non_ip {
            // Direction is per frame (by MAC); one entry per flow.
            (0, FlowDir::LoToHi)
        } else if vm.is_vm(&f.key.lo, f.mac[0], ports) && f.frames[0] > 0 {
            (0, FlowDir::LoToHi)
        } else if vm.is_vm(&f.key.hi, f.mac[1], ports) && f.frames[1] > 0 {
            (1, FlowDir::HiToLo)
        } else {
            continue;
        };
        let (vm_ep, client) = f.key.endpoints(vm_dir);
        let c = 1 - d;
        let client_isn = f.syn[c]
            .or_else(|| f.synack[c].map(|(s, _)| s))
            .or_else(|| f.synack[d].map(|(_, a)| a.wrapping_sub(1)));
        out.push(ConnInfo {
            key: f.key,
            vm: vm_ep,
            client,
            vm_dir,
            first: f.first,
            client_isn,
            vm_handshake: f.syn[d].is_some() || f.synack[d].is_some(),
            client_handshake: f.syn[c].is_some() || f.synack[c].is_some(),
            vm_first_seq: f.first_seq[d],
        });
    }
    out
}

/// How a pair of connections was matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairedBy {
    /// Same client address and port, same VM port.
    ClientEndpoint,
    /// Same client address and port; the VM's ports differ (VM-initiated): matched
    /// by order of appearance.
    OrderVmPortDiffers,
    /// Same client address and VM port; the client's ports differ: matched by order
    /// of appearance.
    OrderClientPortDiffers,
    /// Non-IP traffic (ARP, other ethertypes): same kind and VLAN.
    SameKind,
    /// ICMP echo flows of the same peer whose identifiers differ: matched by order of
    /// appearance.
    OrderIcmpIdDiffers,
}

impl PairedBy {
    /// Stable name for reports.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ClientEndpoint => "client_endpoint",
            Self::OrderVmPortDiffers => "order_vm_port_differs",
            Self::OrderClientPortDiffers => "order_client_port_differs",
            Self::SameKind => "same_kind",
            Self::OrderIcmpIdDiffers => "order_icmp_id_differs",
        }
    }
}

/// Pair the primary's connections with the secondary's. Returns pairs of indices
/// into `p` and `s` (either may be missing) in primary order, then the secondary's
/// leftovers.
#[must_use]
pub fn pair(
    p: &[ConnInfo],
    s: &[ConnInfo],
) -> Vec<(Option<usize>, Option<usize>, Option<PairedBy>)> {
    let mut p_of_s: Vec<Option<(usize, PairedBy)>> = vec![None; s.len()];
    let mut s_of_p: Vec<Option<usize>> = vec![None; p.len()];
    let non_ip = |c: &ConnInfo| {
        !matches!(
            c.key.proto,
            FlowProto::Tcp | FlowProto::Udp | FlowProto::Icmp | FlowProto::OtherIp(_)
        )
    };
    type Group = (FlowProto, [u16; 2], [u8; 16], u16);
    type GroupOf = fn(&ConnInfo) -> Group;
    let rounds: [(PairedBy, GroupOf); 4] = [
        (PairedBy::ClientEndpoint, |c| {
            (c.key.proto, c.key.vlan, c.client.addr, c.client.port)
        }),
        (PairedBy::OrderVmPortDiffers, |c| {
            (c.key.proto, c.key.vlan, c.client.addr, c.client.port)
        }),
        (PairedBy::OrderClientPortDiffers, |c| {
            (c.key.proto, c.key.vlan, c.client.addr, c.vm.port)
        }),
        // ICMP echo: the identifier is both endpoints' "port"; pair by peer and order.
        (PairedBy::OrderIcmpIdDiffers, |c| {
            (c.key.proto, c.key.vlan, c.client.addr, 0)
        }),
    ];
    // Non-IP: by kind.
    for (i, pc) in p.iter().enumerate() {
        if non_ip(pc)
            && let Some(j) = s.iter().position(|sc| sc.key == pc.key)
            && p_of_s[j].is_none()
        {
            s_of_p[i] = Some(j);
            p_of_s[j] = Some((i, PairedBy::SameKind));
        }
    }
    for (round, (how, group)) in rounds.iter().enumerate() {
        let mut free_s: HashMap<Group, std::collections::VecDeque<usize>> = HashMap::new();
        let icmp_only = *how == PairedBy::OrderIcmpIdDiffers;
        for (j, sc) in s.iter().enumerate() {
            if p_of_s[j].is_none() && !non_ip(sc) && (!icmp_only || sc.key.proto == FlowProto::Icmp)
            {
                free_s.entry(group(sc)).or_default().push_back(j);
            }
        }
        for (i, pc) in p.iter().enumerate() {
            if s_of_p[i].is_some() || non_ip(pc) || icmp_only && pc.key.proto != FlowProto::Icmp {
                continue;
            }
            let Some(q) = free_s.get_mut(&group(pc)) else {
                continue;
            };
            let found = if round == 0 {
                q.iter().position(|&j| s[j].vm.port == pc.vm.port)
            } else {
                (!q.is_empty()).then_some(0)
            };
            if let Some(k) = found
                && let Some(j) = q.remove(k)
            {
                s_of_p[i] = Some(j);
                p_of_s[j] = Some((i, *how));
            }
        }
    }
    let mut out: Vec<_> = (0..p.len())
        .map(|i| {
            (
                Some(i),
                s_of_p[i],
                s_of_p[i].and_then(|j| p_of_s[j].map(|(_, h)| h)),
            )
        })
        .collect();
    out.extend(
        (0..s.len())
            .filter(|&j| p_of_s[j].is_none())
            .map(|j| (None, Some(j), None)),
    );
    out
}

/// Flow key and packet number to connection id, for one capture: a 4-tuple reused by
/// later connections maps to each of them from its first packet on.
#[derive(Debug, Default)]
pub struct ConnMap(FastMap<FlowKey, Generations>);

#[derive(Debug)]
struct Generations {
    id: usize,
    /// Later connections on the key: (first packet number, id), in order.
    later: Vec<(u64, usize)>,
}

impl ConnMap {
    /// Record that connection `id` uses `key` from packet `first` on. Calls for one
    /// key must come in packet order.
    pub fn insert(&mut self, key: FlowKey, first: u64, id: usize) {
        match self.0.get_mut(&key) {
            Some(g) => g.later.push((first, id)),
            None => {
                self.0.insert(
                    key,
                    Generations {
                        id,
                        later: Vec::new(),
                    },
                );
            }
        }
    }

    /// The connection packet `number` with flow `key` belongs to.
    #[must_use]
    pub fn get(&self, key: &FlowKey, number: u64) -> Option<usize> {
        let g = self.0.get(key)?;
        // `later` is in packet order: the last one starting at or before `number`.
        let n = g.later.partition_point(|(first, _)| *first <= number);
        Some(n.checked_sub(1).map_or(g.id, |i| g.later[i].1))
    }
}

/// A fast hasher for flow keys (FNV-1a over 8-byte words; the keys are not
/// attacker-chosen in an offline replay, so SipHash's protection is not needed).
#[derive(Debug, Clone, Copy, Default)]
pub struct FastHasher(u64);

impl std::hash::Hasher for FastHasher {
    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 29)
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut h = self.0 ^ 0xcbf2_9ce4_8422_2325;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            h = (h ^ u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .wrapping_mul(0x0100_0000_01b3)
                .rotate_left(23);
        }
        for &b in chunks.remainder() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }

    fn write_u16(&mut self, n: u16) {
        self.0 = (self.0 ^ u64::from(n))
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(17);
    }
}

/// `HashMap` with [`FastHasher`].
pub type FastMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<FastHasher>>;
