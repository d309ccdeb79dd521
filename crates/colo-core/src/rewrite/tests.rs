//! Unit tests of the rewriter: one scenario per case, every rewritten frame's TCP
//! checksum verified against a full recomputation by etherparse.

use core::net::IpAddr;

use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};

use super::*;
use crate::flow::{Endpoint, FlowProto};

const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const VM_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
const CLIENT_PORT: u16 = 40_000;
const VM_PORT: u16 = 80;

/// How frames are built: IP version and VLAN tags.
#[derive(Debug, Clone, Copy, Default)]
struct Net {
    v6: bool,
    vlan: Option<u16>,
    /// A second (inner) VLAN tag: double tagging.
    inner_vlan: Option<u16>,
}

const V4: Net = Net {
    v6: false,
    vlan: None,
    inner_vlan: None,
};

impl Net {
    fn addrs(self, from_client: bool) -> (IpAddr, IpAddr) {
        let (c, v): (IpAddr, IpAddr) = if self.v6 {
            ("fd00::1".parse().unwrap(), "fd00::2".parse().unwrap())
        } else {
            ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap())
        };
        if from_client { (c, v) } else { (v, c) }
    }

    fn key(self) -> FlowKey {
        let (c, v) = self.addrs(true);
        let vlan = [self.vlan.unwrap_or(0), self.inner_vlan.unwrap_or(0)];
        FlowKey::new(
            vlan,
            FlowProto::Tcp,
            Endpoint::new(c, CLIENT_PORT),
            Endpoint::new(v, VM_PORT),
        )
        .0
    }
}

/// A TCP segment to build. `flags` letters: S, A, F, R, P.
#[derive(Debug, Clone)]
struct Seg<'a> {
    from_client: bool,
    seq: u32,
    ack: u32,
    flags: &'a str,
    opts: Vec<u8>,
    payload: &'a [u8],
}

fn seg(from_client: bool, seq: u32, ack: u32, flags: &'static str) -> Seg<'static> {
    Seg {
        from_client,
        seq,
        ack,
        flags,
        opts: Vec::new(),
        payload: b"",
    }
}

impl<'a> Seg<'a> {
    fn opts(mut self, opts: Vec<u8>) -> Self {
        self.opts = opts;
        self
    }

    fn data(mut self, payload: &'a [u8]) -> Self {
        self.payload = payload;
        self
    }

    fn build(&self, net: Net) -> Vec<u8> {
        let (src, dst) = net.addrs(self.from_client);
        let (sport, dport) = if self.from_client {
            (CLIENT_PORT, VM_PORT)
        } else {
            (VM_PORT, CLIENT_PORT)
        };
        let (smac, dmac) = if self.from_client {
            (CLIENT_MAC, VM_MAC)
        } else {
            (VM_MAC, CLIENT_MAC)
        };
        let eth = PacketBuilder::ethernet2(smac, dmac);
        macro_rules! ip {
            ($step:expr) => {
                match (src, dst) {
                    (IpAddr::V4(s), IpAddr::V4(d)) => $step.ipv4(s.octets(), d.octets(), 64),
                    (IpAddr::V6(s), IpAddr::V6(d)) => $step.ipv6(s.octets(), d.octets(), 64),
                    _ => unreachable!(),
                }
            };
        }
        let ip = match (net.vlan, net.inner_vlan) {
            (Some(o), Some(i)) => {
                ip!(eth.double_vlan(o.try_into().unwrap(), i.try_into().unwrap()))
            }
            (Some(o), None) => ip!(eth.single_vlan(o.try_into().unwrap())),
            _ => ip!(eth),
        };
        let mut b = ip.tcp(sport, dport, self.seq, 29_200);
        for f in self.flags.chars() {
            b = match f {
                'S' => b.syn(),
                'A' => b.ack(self.ack),
                'F' => b.fin(),
                'R' => b.rst(),
                'P' => b.psh(),
                _ => panic!("flag {f}"),
            };
        }
        let b = b.options_raw(&self.opts).unwrap();
        let mut out = Vec::new();
        b.write(&mut out, self.payload).unwrap();
        out
    }
}

/// NOP NOP TS(tsval, tsecr): 12 bytes.
fn ts(tsval: u32, tsecr: u32) -> Vec<u8> {
    let mut o = vec![1, 1, 8, 10];
    o.extend_from_slice(&tsval.to_be_bytes());
    o.extend_from_slice(&tsecr.to_be_bytes());
    o
}

/// NOP NOP SACK(blocks): 4 + 8n bytes.
fn sack(blocks: &[(u32, u32)]) -> Vec<u8> {
    let mut o = vec![1, 1, 5, u8::try_from(2 + 8 * blocks.len()).unwrap()];
    for (l, r) in blocks {
        o.extend_from_slice(&l.to_be_bytes());
        o.extend_from_slice(&r.to_be_bytes());
    }
    o
}

/// The fields the rewriter touches, read back from a frame.
#[derive(Debug, PartialEq, Eq)]
struct Fields {
    seq: u32,
    ack: u32,
    ts: Option<(u32, u32)>,
    sack: Vec<(u32, u32)>,
}

fn fields(eth: &[u8]) -> Fields {
    let c = classify(eth);
    let t = c.tcp().expect("tcp");
    let h = &eth[t.tcp_offset..t.tcp_offset + t.tcp_header_len];
    let o = parse_options(h).unwrap_or_default();
    let ts = o
        .timestamps
        .map(|at| (read_u32(h, at).unwrap(), read_u32(h, at + 4).unwrap()));
    let sack = o
        .sack
        .map(|(at, n)| {
            (0..n)
                .map(|i| {
                    (
                        read_u32(h, at + 8 * i).unwrap(),
                        read_u32(h, at + 8 * i + 4).unwrap(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Fields {
        seq: t.seq.0,
        ack: t.ack.0,
        ts,
        sack,
    }
}

/// The checksum stored in the frame and the one a full recomputation gives.
fn checksums(eth: &[u8]) -> (u16, u16) {
    let p = SlicedPacket::from_ethernet(eth).unwrap();
    let Some(TransportSlice::Tcp(tcp)) = &p.transport else {
        panic!("not tcp")
    };
    let full = match &p.net {
        Some(NetSlice::Ipv4(ip)) => tcp
            .calc_checksum_ipv4(ip.header().source(), ip.header().destination())
            .unwrap(),
        Some(NetSlice::Ipv6(ip)) => tcp
            .calc_checksum_ipv6(ip.header().source(), ip.header().destination())
            .unwrap(),
        _ => panic!("not ip"),
    };
    (tcp.checksum(), full)
}

#[track_caller]
fn assert_checksum(eth: &[u8]) {
    let (stored, full) = checksums(eth);
    assert_eq!(stored, full, "TCP checksum after rewrite");
}

/// A rewriter and a clock.
struct Sim {
    rw: Rewriter,
    now: Instant,
    net: Net,
}

impl Sim {
    fn new(net: Net) -> Self {
        Self::with(net, RewriteConfig::default())
    }

    fn with(net: Net, config: RewriteConfig) -> Self {
        Self {
            rw: Rewriter::new(config),
            now: Instant::from_millis(1000),
            net,
        }
    }

    fn advance(&mut self, ms: u64) {
        self.now = self.now + Duration::from_millis(ms);
    }

    /// Send `s` through the rewriter (client segments to the secondary, VM segments
    /// from it). Returns the verdict and the frame after rewriting; checks the checksum.
    fn send(&mut self, s: &Seg<'_>) -> (Verdict, Vec<u8>) {
        let mut frame = s.build(self.net);
        let v = if s.from_client {
            self.rw.rewrite_to_secondary(self.now, &[], &mut frame)
        } else {
            self.rw.rewrite_from_secondary(self.now, &[], &mut frame)
        };
        assert_checksum(&frame);
        (v, frame)
    }

    fn info(&self) -> Option<ConnectionInfo> {
        self.rw.connection(&self.net.key())
    }
}

// Sequence and timestamp numbers of a passive-open scenario.
const C_ISN: u32 = 1_000;
const P_ISN: u32 = 5_000_000;
const S_ISN: u32 = 77;
const C_TS: u32 = 100;
const P_TS: u32 = 900_000;
const S_TS: u32 = 12_345;

/// Client SYN, secondary SYN-ACK, client ACK (acknowledging the primary's SYN-ACK).
/// Returns the rewritten client ACK.
fn passive_open(sim: &mut Sim, c_isn: u32, p_isn: u32, s_isn: u32) -> Vec<u8> {
    let (v, _) = sim.send(&seg(true, c_isn, 0, "S").opts(ts(C_TS, 0)));
    assert_eq!(v, Verdict::Unchanged(PassReason::Handshake));
    let (v, f) = sim.send(&seg(false, s_isn, c_isn.wrapping_add(1), "SA").opts(ts(S_TS, C_TS)));
    assert_eq!(v, Verdict::Unchanged(PassReason::Handshake));
    assert_eq!(
        fields(&f).seq,
        s_isn,
        "SYN-ACK passes unrewritten while the offset is unknown"
    );
    let (v, f) = sim.send(
        &seg(true, c_isn.wrapping_add(1), p_isn.wrapping_add(1), "A").opts(ts(C_TS + 1, P_TS)),
    );
    assert_eq!(v, Verdict::Rewritten);
    f
}

#[test]
fn passive_open_learns_and_rewrites_both_ways() {
    let mut sim = Sim::new(V4);
    let ack = passive_open(&mut sim, C_ISN, P_ISN, S_ISN);
    assert_eq!(
        fields(&ack),
        Fields {
            seq: C_ISN + 1,
            ack: S_ISN + 1,
            ts: Some((C_TS + 1, S_TS)),
            sack: vec![]
        }
    );
    let info = sim.info().unwrap();
    assert_eq!(info.open, OpenKind::Passive);
    assert_eq!(
        info.offsets,
        Some(Offsets {
            seq: P_ISN - S_ISN,
            ts: Some(P_TS - S_TS)
        })
    );

    // The secondary's data: seq and TSval into the primary's spaces, ack and TSecr kept.
    let (v, f) = sim.send(
        &seg(false, S_ISN + 1, C_ISN + 1, "PA")
            .opts(ts(S_TS + 5, C_TS + 1))
            .data(b"hello"),
    );
    assert_eq!(v, Verdict::Rewritten);
    assert_eq!(
        fields(&f),
        Fields {
            seq: P_ISN + 1,
            ack: C_ISN + 1,
            ts: Some((P_TS + 5, C_TS + 1)),
            sack: vec![]
        }
    );
    assert_eq!(&f[f.len() - 5..], b"hello");

    // The client's data acknowledging the primary's: ack and TSecr into the secondary's.
    let (v, f) = sim.send(
        &seg(true, C_ISN + 1, P_ISN + 6, "PA")
            .opts(ts(C_TS + 9, P_TS + 5))
            .data(b"GET /"),
    );
    assert_eq!(v, Verdict::Rewritten);
    assert_eq!(
        fields(&f),
        Fields {
            seq: C_ISN + 1,
            ack: S_ISN + 6,
            ts: Some((C_TS + 9, S_TS + 5)),
            sack: vec![]
        }
    );

    let st = sim.rw.stats();
    assert_eq!(st.passive_opens, 1);
    assert_eq!(st.offsets_learned, 1);
    assert_eq!(st.rewritten, 3);
    assert_eq!(st.pass_handshake, 2);
    assert_eq!(st.frames_from_secondary, 2);
    assert_eq!(st.frames_to_secondary, 3);
}

#[test]
fn active_open_learns_from_peer_syn_ack() {
    let mut sim = Sim::new(V4);
    // Here the "client" is the remote server the VM connects to.
    let srv_isn = 42_000;
    let srv_ts = 555;
    let (v, _) = sim.send(&seg(false, S_ISN, 0, "S").opts(ts(S_TS, 0)));
    assert_eq!(v, Verdict::Unchanged(PassReason::Handshake));
    let (v, f) = sim.send(&seg(true, srv_isn, P_ISN + 1, "SA").opts(ts(srv_ts, P_TS)));
    assert_eq!(v, Verdict::Rewritten);
    assert_eq!(
        fields(&f),
        Fields {
            seq: srv_isn,
            ack: S_ISN + 1,
            ts: Some((srv_ts, S_TS)),
            sack: vec![]
        }
    );
    assert_eq!(sim.info().unwrap().open, OpenKind::Active);

    let (v, f) = sim.send(&seg(false, S_ISN + 1, srv_isn + 1, "A").opts(ts(S_TS + 1, srv_ts)));
    assert_eq!(v, Verdict::Rewritten);
    assert_eq!(
        fields(&f),
        Fields {
            seq: P_ISN + 1,
            ack: srv_isn + 1,
            ts: Some((P_TS + 1, srv_ts)),
            sack: vec![]
        }
    );
    // A retransmitted SYN of the secondary, now that the offset is known, is rewritten too.
    let (v, f) = sim.send(&seg(false, S_ISN, 0, "S").opts(ts(S_TS + 1000, 0)));
    assert_eq!(v, Verdict::Rewritten);
    assert_eq!(fields(&f).seq, P_ISN);
    assert_eq!(sim.rw.stats().active_opens, 1);
    assert_eq!(sim.rw.stats().ts_one_side, 0);
}

#[test]
fn seq_wraps_across_2_pow_32() {
    let mut sim = Sim::new(V4);
    let c_isn = u32::MAX - 1; // the client's numbers wrap too
    let p_isn = 5;
    let s_isn = u32::MAX - 2;
    let ack = passive_open(&mut sim, c_isn, p_isn, s_isn);
    assert_eq!(fields(&ack).ack, u32::MAX - 1);
    assert_eq!(sim.info().unwrap().offsets.unwrap().seq, 8);
    // The secondary's data spans the wrap: seq u32::MAX - 1 .. + 10.
    let (v, f) = sim
        .send(&seg(false, s_isn.wrapping_add(1), c_isn.wrapping_add(1), "A").data(b"0123456789"));
    assert_eq!(v, Verdict::Rewritten);
    assert_eq!(fields(&f).seq, 6);
    // The client acknowledges primary seq 16 with a SACK block crossing nothing, and
    // one crossing the wrap in secondary space.
    let (v, f) = sim.send(&seg(true, 0, 16, "A").opts(sack(&[(20, 30), (7, 40)])));
    assert_eq!(v, Verdict::Rewritten);
    assert_eq!(fields(&f).ack, 8);
    assert_eq!(fields(&f).sack, vec![(12, 22), (u32::MAX, 32)]);
}

#[test]
fn sack_with_one_to_four_blocks() {
    let mut sim = Sim::new(V4);
    passive_open(&mut sim, C_ISN, P_ISN, S_ISN);
    let off = P_ISN - S_ISN;
    for n in 1..=4u32 {
        let blocks: Vec<(u32, u32)> = (0..n)
            .map(|i| (P_ISN + 100 * (i + 1), P_ISN + 100 * (i + 1) + 50))
            .collect();
        // Up to three blocks fit next to timestamps (as Linux sends them); four without.
        let opts = if n < 4 {
            [ts(C_TS + n, P_TS + n), sack(&blocks)].concat()
        } else {
            sack(&blocks)
        };
        let (v, f) = sim.send(&seg(true, C_ISN + 1, P_ISN + 1, "A").opts(opts));
        assert_eq!(v, Verdict::Rewritten);
        let got = fields(&f);
        let want: Vec<(u32, u32)> = blocks.iter().map(|(l, r)| (l - off, r - off)).collect();
        assert_eq!(got.sack, want, "{n} blocks");
        assert_eq!(got.ack, S_ISN + 1);
        if n < 4 {
            assert_eq!(got.ts, Some((C_TS + n, S_TS + n)));
        }
    }
    // SACK blocks from the secondary are in client space: untouched.
    let (_, f) =
        sim.send(&seg(false, S_ISN + 1, C_ISN + 1, "A").opts(sack(&[(C_ISN + 10, C_ISN + 20)])));
    assert_eq!(fields(&f).sack, vec![(C_ISN + 10, C_ISN + 20)]);
    assert_eq!(fields(&f).seq, P_ISN + 1);
}

#[test]
fn timestamps_only_on_the_secondary() {
    let mut sim = Sim::new(V4);
    sim.send(&seg(true, C_ISN, 0, "S").opts(ts(C_TS, 0)));
    sim.send(&seg(false, S_ISN, C_ISN + 1, "SA").opts(ts(S_TS, C_TS)));
    // The primary declined timestamps: the client's ACK carries none.
    let (v, f) = sim.send(&seg(true, C_ISN + 1, P_ISN + 1, "A"));
    assert_eq!(v, Verdict::Rewritten);
    assert_eq!(fields(&f).ack, S_ISN + 1);
    assert_eq!(sim.rw.stats().ts_one_side, 1);
    assert_eq!(sim.info().unwrap().offsets.unwrap().ts, None);
    // The secondary keeps sending TSvals: left alone, seq still rewritten.
    let (v, f) = sim.send(
        &seg(false, S_ISN + 1, C_ISN + 1, "A")
            .opts(ts(S_TS + 7, C_TS))
            .data(b"x"),
    );
    assert_eq!(v, Verdict::Rewritten);
    assert_eq!(fields(&f).ts, Some((S_TS + 7, C_TS)));
    assert_eq!(fields(&f).seq, P_ISN + 1);
}

#[test]
fn timestamps_only_on_the_primary() {
    let mut sim = Sim::new(V4);
    sim.send(&seg(true, C_ISN, 0, "S").opts(ts(C_TS, 0)));
    sim.send(&seg(false, S_ISN, C_ISN + 1, "SA"));
    let (v, f) = sim.send(&seg(true, C_ISN + 1, P_ISN + 1, "A").opts(ts(C_TS + 1, P_TS)));
    assert_eq!(v, Verdict::Rewritten);
    // The echo of the primary's clock cannot be translated: left alone.
    assert_eq!(
        fields(&f),
        Fields {
            seq: C_ISN + 1,
            ack: S_ISN + 1,
            ts: Some((C_TS + 1, P_TS)),
            sack: vec![]
        }
    );
    assert_eq!(sim.rw.stats().ts_one_side, 1);
}

#[test]
fn needs_csum_frames_keep_their_partial_checksum() {
    let mut sim = Sim::new(V4);
    passive_open(&mut sim, C_ISN, P_ISN, S_ISN);
    let mut vnet = [0u8; 12];
    vnet[0] = checksum::VIRTIO_NET_HDR_F_NEEDS_CSUM;

    let s = seg(false, S_ISN + 1, C_ISN + 1, "PA")
        .opts(ts(S_TS + 5, C_TS + 1))
        .data(b"partial");
    let mut frame = s.build(V4);
    // Put a partial checksum in place: the folded pseudo-header sum, as a guest does.
    let tcp_at = 14 + 20;
    let seg_len = u16::try_from(frame.len() - tcp_at).unwrap();
    let pseudo = {
        let mut sum = 0u32;
        for w in frame[26..34].chunks(2) {
            sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
        }
        sum += 6 + u32::from(seg_len);
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum as u16
    };
    frame[tcp_at + 16..tcp_at + 18].copy_from_slice(&pseudo.to_be_bytes());

    let v = sim.rw.rewrite_from_secondary(sim.now, &vnet, &mut frame);
    assert_eq!(v, Verdict::Rewritten);
    assert_eq!(fields(&frame).seq, P_ISN + 1);
    assert_eq!(fields(&frame).ts, Some((P_TS + 5, C_TS + 1)));
    assert_eq!(
        u16::from_be_bytes([frame[tcp_at + 16], frame[tcp_at + 17]]),
        pseudo,
        "partial sum untouched"
    );
    assert_eq!(sim.rw.stats().partial_checksum, 1);

    // What the device does: sum from the TCP header on (field included) and complement.
    let mut sum = 0u32;
    for w in frame[tcp_at..].chunks(2) {
        sum += u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let completed = !(sum as u16);
    frame[tcp_at + 16..tcp_at + 18].copy_from_slice(&completed.to_be_bytes());
    assert_checksum(&frame);
}

#[test]
fn ipv6() {
    let net = Net {
        v6: true,
        ..Net::default()
    };
    let mut sim = Sim::new(net);
    let ack = passive_open(&mut sim, C_ISN, P_ISN, S_ISN);
    assert_eq!(fields(&ack).ack, S_ISN + 1);
    let (v, f) = sim.send(
        &seg(false, S_ISN + 1, C_ISN + 1, "A")
            .opts(ts(S_TS + 1, C_TS))
            .data(b"v6"),
    );
    assert_eq!(v, Verdict::Rewritten);
    assert_eq!(fields(&f).seq, P_ISN + 1);
    assert_eq!(fields(&f).ts, Some((P_TS + 1, C_TS)));
    assert!(sim.info().is_some());
}

#[test]
fn vlan_tagged_frames() {
    for net in [
        Net {
            vlan: Some(42),
            ..Net::default()
        },
        Net {
            v6: true,
            vlan: Some(7),
            inner_vlan: Some(300),
        },
    ] {
        let mut sim = Sim::new(net);
        let ack = passive_open(&mut sim, C_ISN, P_ISN, S_ISN);
        assert_eq!(fields(&ack).ack, S_ISN + 1);
        let (v, f) = sim.send(&seg(false, S_ISN + 1, C_ISN + 1, "A").data(b"tagged"));
        assert_eq!(v, Verdict::Rewritten);
        assert_eq!(fields(&f).seq, P_ISN + 1);
        assert_eq!(sim.info().unwrap().offsets.unwrap().seq, P_ISN - S_ISN);
    }
}

#[test]
fn checkpoint_resets_offsets_to_zero() {
    let mut sim = Sim::new(V4);
    passive_open(&mut sim, C_ISN, P_ISN, S_ISN);
    // A second connection still in its handshake (only the client's SYN seen).
    let other = Net {
        vlan: Some(5),
        ..V4
    };
    let mut frame = seg(true, 9, 0, "S").build(other);
    sim.rw.rewrite_to_secondary(sim.now, &[], &mut frame);

    sim.rw.checkpoint_done();
    assert_eq!(sim.info().unwrap().offsets, Some(Offsets::ZERO));
    assert_eq!(
        sim.rw.connection(&other.key()).unwrap().offsets,
        None,
        "still learning"
    );
    // The secondary now speaks in the primary's numbers: nothing to rewrite.
    let (v, f) = sim.send(
        &seg(false, P_ISN + 1, C_ISN + 1, "A")
            .opts(ts(P_TS + 3, C_TS))
            .data(b"same"),
    );
    assert_eq!(v, Verdict::Unchanged(PassReason::NothingToRewrite));
    assert_eq!(fields(&f).seq, P_ISN + 1);
    let (v, _) = sim.send(&seg(true, C_ISN + 1, P_ISN + 5, "A").opts(ts(C_TS, P_TS + 3)));
    assert_eq!(v, Verdict::Unchanged(PassReason::NothingToRewrite));
    assert_eq!(sim.rw.stats().checkpoints, 1);

    // A connection opened after the checkpoint learns its own offset again.
    let third = Net {
        vlan: Some(6),
        ..V4
    };
    let mut sim3 = Sim {
        rw: sim.rw,
        now: sim.now,
        net: third,
    };
    passive_open(&mut sim3, 1, 1000, 400);
    assert_eq!(sim3.info().unwrap().offsets.unwrap().seq, 600);
}

#[test]
fn failover_keeps_old_connections_and_ignores_new_ones() {
    let mut sim = Sim::new(V4);
    passive_open(&mut sim, C_ISN, P_ISN, S_ISN);
    sim.rw.failover();
    assert!(sim.rw.is_failover());
    let (v, f) = sim.send(&seg(false, S_ISN + 1, C_ISN + 1, "A").data(b"still"));
    assert_eq!(v, Verdict::Rewritten);
    assert_eq!(fields(&f).seq, P_ISN + 1);
    let (v, f) = sim.send(&seg(true, C_ISN + 1, P_ISN + 6, "A"));
    assert_eq!(v, Verdict::Rewritten);
    assert_eq!(fields(&f).ack, S_ISN + 6);

    let new = Net {
        vlan: Some(9),
        ..V4
    };
    let mut sim2 = Sim {
        rw: sim.rw,
        now: sim.now,
        net: new,
    };
    let (v, _) = sim2.send(&seg(true, 5, 0, "S"));
    assert_eq!(v, Verdict::Unchanged(PassReason::Untracked));
    let (v, f) = sim2.send(&seg(false, 700, 6, "SA"));
    assert_eq!(v, Verdict::Unchanged(PassReason::Untracked));
    assert_eq!(fields(&f).seq, 700);
    let (v, _) = sim2.send(&seg(true, 6, 701, "A"));
    assert_eq!(v, Verdict::Unchanged(PassReason::Untracked));
    assert!(sim2.info().is_none());
    assert_eq!(sim2.rw.len(), 1);

    // The old connection idles long past the normal idle timeout and survives.
    sim2.advance(3_600_000);
    let now = sim2.now;
    sim2.rw.handle_timeout(now);
    assert!(sim2.rw.connection(&V4.key()).is_some());
}

#[test]
fn fin_both_ways_then_linger_then_removal() {
    let mut sim = Sim::new(V4);
    passive_open(&mut sim, C_ISN, P_ISN, S_ISN);
    sim.send(&seg(true, C_ISN + 1, P_ISN + 1, "FA"));
    assert!(!sim.info().unwrap().closing);
    sim.advance(10);
    let (v, _) = sim.send(&seg(false, S_ISN + 1, C_ISN + 2, "FA"));
    assert_eq!(v, Verdict::Rewritten);
    assert!(sim.info().unwrap().closing);
    let closed_at = sim.now;
    assert_eq!(
        sim.rw.poll_timeout(),
        Some(closed_at + Duration::from_secs(5))
    );

    // The last ACK and a late retransmission are still rewritten during the linger.
    sim.advance(1000);
    let (v, f) = sim.send(&seg(true, C_ISN + 2, P_ISN + 2, "A"));
    assert_eq!(v, Verdict::Rewritten);
    assert_eq!(fields(&f).ack, S_ISN + 2);
    let (v, _) = sim.send(&seg(false, S_ISN + 1, C_ISN + 2, "FA"));
    assert_eq!(v, Verdict::Rewritten);

    sim.rw
        .handle_timeout(closed_at + Duration::from_millis(4999));
    assert_eq!(sim.rw.len(), 1);
    sim.rw.handle_timeout(closed_at + Duration::from_secs(5));
    assert_eq!(sim.rw.len(), 0);
    assert_eq!(sim.rw.stats().closed, 1);
    assert_eq!(sim.rw.stats().expired_linger, 1);
    assert_eq!(sim.rw.poll_timeout(), None);
}

#[test]
fn rst_closes_after_linger() {
    let mut sim = Sim::new(V4);
    passive_open(&mut sim, C_ISN, P_ISN, S_ISN);
    let (v, f) = sim.send(&seg(false, S_ISN + 1, C_ISN + 1, "RA"));
    assert_eq!(v, Verdict::Rewritten);
    assert_eq!(fields(&f).seq, P_ISN + 1);
    assert!(sim.info().unwrap().closing);
    sim.advance(5000);
    let now = sim.now;
    sim.rw.handle_timeout(now);
    assert!(sim.rw.is_empty());

    // A RST of an unknown connection creates nothing.
    let (v, _) = sim.send(&seg(true, C_ISN + 1, 0, "R"));
    assert_eq!(v, Verdict::Unchanged(PassReason::NoConnection));
    assert!(sim.rw.is_empty());
    // A new SYN right after a RST (while lingering) replaces the entry.
    passive_open(&mut sim, 7, 70, 700);
    sim.send(&seg(true, 8, 71, "RA"));
    let (v, _) = sim.send(&seg(true, 5000, 0, "S"));
    assert_eq!(v, Verdict::Unchanged(PassReason::Handshake));
    assert_eq!(sim.rw.stats().syn_replaced, 1);
    assert!(!sim.info().unwrap().closing);
    assert_eq!(sim.info().unwrap().offsets, None);
}

#[test]
fn idle_entries_expire() {
    let mut sim = Sim::new(V4);
    passive_open(&mut sim, C_ISN, P_ISN, S_ISN);
    let last = sim.now;
    assert_eq!(sim.rw.poll_timeout(), Some(last + Duration::from_secs(120)));
    sim.rw.handle_timeout(last + Duration::from_secs(119));
    assert_eq!(sim.rw.len(), 1);
    sim.rw.handle_timeout(last + Duration::from_secs(120));
    assert_eq!(sim.rw.len(), 0);
    assert_eq!(sim.rw.stats().expired_idle, 1);

    // Traffic keeps an entry alive; the least recently used expires first.
    let mut sim = Sim::new(V4);
    passive_open(&mut sim, C_ISN, P_ISN, S_ISN);
    let b = Net {
        vlan: Some(2),
        ..V4
    };
    let mut f = seg(true, 1, 0, "S").build(b);
    sim.rw.rewrite_to_secondary(sim.now, &[], &mut f);
    sim.advance(100_000);
    sim.send(&seg(false, S_ISN + 1, C_ISN + 1, "A"));
    sim.advance(30_000);
    let now = sim.now;
    sim.rw.handle_timeout(now);
    assert!(sim.info().is_some());
    assert!(sim.rw.connection(&b.key()).is_none());
}

#[test]
fn table_cap() {
    let config = RewriteConfig {
        max_connections: 2,
        ..RewriteConfig::default()
    };
    let nets = [1, 2, 3, 4].map(|v| Net {
        vlan: Some(v),
        ..V4
    });
    let mut sims: Vec<Sim> = Vec::new();
    let mut rw = Rewriter::new(config);
    for net in &nets[..2] {
        let mut sim = Sim {
            rw,
            now: Instant::from_millis(1000),
            net: *net,
        };
        passive_open(&mut sim, C_ISN, P_ISN, S_ISN);
        rw = sim.rw;
    }
    // Full of live, translated connections: a third one passes untracked.
    let mut sim = Sim {
        rw,
        now: Instant::from_millis(2000),
        net: nets[2],
    };
    let (v, _) = sim.send(&seg(true, 1, 0, "S"));
    assert_eq!(v, Verdict::Unchanged(PassReason::TableFull));
    assert_eq!(sim.rw.stats().pass_table_full, 1);
    // Once one of them is reset, it is evicted for the newcomer.
    let mut first = Sim {
        rw: sim.rw,
        now: sim.now,
        net: nets[0],
    };
    first.send(&seg(true, C_ISN + 1, P_ISN + 1, "RA"));
    let mut sim = Sim {
        rw: first.rw,
        now: first.now,
        net: nets[2],
    };
    let (v, _) = sim.send(&seg(true, 1, 0, "S"));
    assert_eq!(v, Verdict::Unchanged(PassReason::Handshake));
    assert_eq!(sim.rw.stats().evicted, 1);
    assert_eq!(sim.rw.len(), 2);
    sims.push(sim);
    // After a checkpoint, zero-offset entries are harmless to forget: evicted (LRU).
    let mut sim = sims.pop().unwrap();
    sim.rw.checkpoint_done();
    sim.net = nets[3];
    let (v, _) = sim.send(&seg(true, 1, 0, "S"));
    assert_eq!(v, Verdict::Unchanged(PassReason::Handshake));
    assert_eq!(sim.rw.stats().evicted, 2);
    assert!(
        sim.rw.connection(&nets[1].key()).is_none(),
        "the LRU zero-offset entry went"
    );
    assert!(
        sim.rw.connection(&nets[2].key()).is_some(),
        "the learning entry stays"
    );
}

#[test]
fn malformed_options_leave_options_alone() {
    let mut sim = Sim::new(V4);
    passive_open(&mut sim, C_ISN, P_ISN, S_ISN);
    // An MSS option claiming 8 bytes in a 4-byte option area: runs past the header.
    let (v, f) = sim.send(&seg(true, C_ISN + 1, P_ISN + 1, "A").opts(vec![2, 8, 5, 0xb4]));
    assert_eq!(v, Verdict::Rewritten);
    assert_eq!(fields(&f).ack, S_ISN + 1);
    assert_eq!(&f[f.len() - 4..], &[2, 8, 5, 0xb4]);
    // A timestamps option of the wrong length: not touched.
    let bad_ts = vec![8, 9, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0];
    let (v, f) = sim.send(&seg(false, S_ISN + 1, C_ISN + 1, "A").opts(bad_ts.clone()));
    assert_eq!(v, Verdict::Rewritten);
    assert_eq!(&f[f.len() - 12..], &bad_ts[..]);
    assert_eq!(fields(&f).seq, P_ISN + 1);
    // A SACK option with a half block.
    let (_, f) = sim.send(&seg(true, C_ISN + 1, P_ISN + 1, "A").opts(vec![5, 6, 0, 0, 0, 1, 1, 1]));
    assert_eq!(&f[f.len() - 8..], &[5, 6, 0, 0, 0, 1, 1, 1]);
    assert_eq!(sim.rw.stats().options_malformed, 3);
}

#[test]
fn client_ack_before_secondary_syn_ack_is_held() {
    let mut sim = Sim::new(V4);
    sim.send(&seg(true, C_ISN, 0, "S").opts(ts(C_TS, 0)));
    // The primary answered and the client acknowledged before the secondary answered.
    let (v, _) = sim.send(&seg(true, C_ISN + 1, P_ISN + 1, "A").opts(ts(C_TS + 1, P_TS)));
    assert_eq!(v, Verdict::Held);
    let (v, _) = sim.send(
        &seg(true, C_ISN + 1, P_ISN + 1, "PA")
            .opts(ts(C_TS + 2, P_TS))
            .data(b"hi"),
    );
    assert_eq!(v, Verdict::Held);
    assert_eq!(sim.rw.poll_to_secondary(), None);
    assert_eq!(sim.info().unwrap().held, 2);
    // The secondary's SYN-ACK arrives: learned, and the SYN-ACK itself is translated.
    let (v, f) = sim.send(&seg(false, S_ISN, C_ISN + 1, "SA").opts(ts(S_TS, C_TS)));
    assert_eq!(v, Verdict::Rewritten);
    assert_eq!(fields(&f).seq, P_ISN);
    assert_eq!(fields(&f).ts, Some((P_TS, C_TS)));
    let first = sim.rw.poll_to_secondary().unwrap();
    let second = sim.rw.poll_to_secondary().unwrap();
    assert_eq!(sim.rw.poll_to_secondary(), None);
    for (frame, tsval) in [(&first, C_TS + 1), (&second, C_TS + 2)] {
        assert_eq!(frame.vnet_hdr_len, 0);
        let eth = frame.ethernet_bytes();
        assert_checksum(eth);
        assert_eq!(
            fields(eth),
            Fields {
                seq: C_ISN + 1,
                ack: S_ISN + 1,
                ts: Some((tsval, S_TS)),
                sack: vec![]
            }
        );
    }
    assert_eq!(&second.data[second.data.len() - 2..], b"hi");
    let st = sim.rw.stats();
    assert_eq!((st.held, st.released, st.held_expired), (2, 2, 0));
    assert_eq!(sim.info().unwrap().held, 0);
}

#[test]
fn peer_syn_ack_before_secondary_syn_is_held() {
    let mut sim = Sim::new(V4);
    let (v, _) = sim.send(&seg(true, 9000, P_ISN + 1, "SA").opts(ts(1, P_TS)));
    assert_eq!(v, Verdict::Held);
    assert_eq!(sim.info().unwrap().open, OpenKind::Active);
    let (v, f) = sim.send(&seg(false, S_ISN, 0, "S").opts(ts(S_TS, 0)));
    assert_eq!(v, Verdict::Rewritten);
    assert_eq!(fields(&f).seq, P_ISN);
    let rel = sim.rw.poll_to_secondary().unwrap();
    assert_checksum(rel.ethernet_bytes());
    assert_eq!(
        fields(rel.ethernet_bytes()),
        Fields {
            seq: 9000,
            ack: S_ISN + 1,
            ts: Some((1, S_TS)),
            sack: vec![]
        }
    );
}

#[test]
fn held_frames_expire_and_are_bounded() {
    let config = RewriteConfig {
        max_held_per_connection: 2,
        ..RewriteConfig::default()
    };
    let mut sim = Sim::with(V4, config);
    sim.send(&seg(true, C_ISN, 0, "S"));
    let held_at = sim.now;
    for _ in 0..2 {
        assert_eq!(
            sim.send(&seg(true, C_ISN + 1, P_ISN + 1, "A")).0,
            Verdict::Held
        );
    }
    assert_eq!(
        sim.send(&seg(true, C_ISN + 1, P_ISN + 1, "A")).0,
        Verdict::Drop(DropReason::HoldFull)
    );
    assert_eq!(
        sim.rw.poll_timeout(),
        Some(held_at + Duration::from_secs(1))
    );
    sim.rw.handle_timeout(held_at + Duration::from_secs(1));
    assert_eq!(sim.rw.stats().held_expired, 2);
    assert_eq!(sim.info().unwrap().held, 0);
    // The entry still learns when the secondary finally answers.
    assert_eq!(
        sim.send(&seg(true, C_ISN + 1, P_ISN + 1, "A")).0,
        Verdict::Held
    );
    sim.send(&seg(false, S_ISN, C_ISN + 1, "SA"));
    assert_eq!(
        fields(sim.rw.poll_to_secondary().unwrap().ethernet_bytes()).ack,
        S_ISN + 1
    );
}

#[test]
fn checkpoint_releases_held_frames_unchanged() {
    let mut sim = Sim::new(V4);
    sim.send(&seg(true, C_ISN, 0, "S"));
    assert_eq!(
        sim.send(&seg(true, C_ISN + 1, P_ISN + 1, "A")).0,
        Verdict::Held
    );
    sim.rw.checkpoint_done();
    let rel = sim.rw.poll_to_secondary().unwrap();
    assert_eq!(fields(rel.ethernet_bytes()).ack, P_ISN + 1);
    assert_eq!(sim.info().unwrap().offsets, Some(Offsets::ZERO));
    // The secondary (a copy of the primary) answers with the primary's ISN.
    let (v, _) = sim.send(&seg(false, P_ISN, C_ISN + 1, "SA"));
    assert_eq!(v, Verdict::Unchanged(PassReason::NothingToRewrite));
}

#[test]
fn second_syn_with_another_isn() {
    let mut sim = Sim::new(V4);
    // Before any answer: the client gave up and reconnected; the entry starts over.
    sim.send(&seg(true, C_ISN, 0, "S"));
    sim.send(&seg(true, C_ISN, 0, "S")); // a retransmission is fine
    sim.send(&seg(true, C_ISN + 99, 0, "S"));
    assert_eq!(sim.rw.stats().syn_replaced, 1);
    let mut sim = Sim::new(V4);
    passive_open(&mut sim, C_ISN, P_ISN, S_ISN);
    // On a live connection: passed, counted, the entry kept.
    let (v, _) = sim.send(&seg(true, 123_456, 0, "S"));
    assert_eq!(v, Verdict::Unchanged(PassReason::ConflictingSyn));
    // A secondary SYN-ACK with another ISN than before.
    let (v, f) = sim.send(&seg(false, S_ISN + 5, C_ISN + 1, "SA"));
    assert_eq!(v, Verdict::Unchanged(PassReason::ConflictingSyn));
    assert_eq!(fields(&f).seq, S_ISN + 5);
    assert_eq!(sim.rw.stats().pass_conflicting_syn, 2);
    assert_eq!(sim.info().unwrap().offsets.unwrap().seq, P_ISN - S_ISN);
    // The same secondary SYN-ACK retransmitted: translated.
    let (v, f) = sim.send(&seg(false, S_ISN, C_ISN + 1, "SA"));
    assert_eq!(v, Verdict::Rewritten);
    assert_eq!(fields(&f).seq, P_ISN);
}

#[test]
fn syn_with_data_is_counted_and_tracked() {
    let mut sim = Sim::new(V4);
    let (v, f) = sim.send(&seg(true, C_ISN, 0, "S").data(b"fastopen"));
    assert_eq!(v, Verdict::Unchanged(PassReason::Handshake));
    assert_eq!(&f[f.len() - 8..], b"fastopen");
    assert_eq!(sim.rw.stats().syn_with_data, 1);
    sim.send(&seg(false, S_ISN, C_ISN + 9, "SA"));
    let (v, f) = sim.send(&seg(true, C_ISN + 9, P_ISN + 1, "A"));
    assert_eq!(v, Verdict::Rewritten);
    assert_eq!(fields(&f).ack, S_ISN + 1);
}

#[test]
fn midstream_connections_assume_zero() {
    let mut sim = Sim::new(V4);
    let (v, f) = sim.send(&seg(false, 5555, 6666, "A").data(b"already open"));
    assert_eq!(v, Verdict::Unchanged(PassReason::NothingToRewrite));
    assert_eq!(fields(&f).seq, 5555);
    let info = sim.info().unwrap();
    assert_eq!(info.open, OpenKind::Midstream);
    assert_eq!(info.offsets, Some(Offsets::ZERO));
    sim.send(&seg(true, 6666, 5567, "A"));
    assert_eq!(sim.rw.stats().midstream_assumed, 1);
    // A new connection by the VM on the same addresses replaces the assumption.
    let (v, _) = sim.send(&seg(false, S_ISN, 0, "S"));
    assert_eq!(v, Verdict::Unchanged(PassReason::Handshake));
    assert_eq!(sim.info().unwrap().open, OpenKind::Active);
    assert_eq!(sim.rw.stats().syn_replaced, 1);
}

#[test]
fn non_tcp_and_garbage_pass() {
    let mut rw = Rewriter::default();
    let mut udp = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, VM_MAC)
        .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        .udp(53, 53)
        .write(&mut udp, b"dns")
        .unwrap();
    let orig = udp.clone();
    assert_eq!(
        rw.rewrite_from_secondary(Instant::ZERO, &[], &mut udp),
        Verdict::Unchanged(PassReason::NotTcp)
    );
    assert_eq!(udp, orig);
    let mut garbage = vec![0xffu8; 7];
    assert_eq!(
        rw.rewrite_to_secondary(Instant::ZERO, &[], &mut garbage),
        Verdict::Unchanged(PassReason::NotTcp)
    );
    assert_eq!(rw.stats().pass_not_tcp, 2);
    assert!(rw.is_empty());
}

#[test]
fn wrong_direction_is_passed() {
    let mut sim = Sim::new(V4);
    passive_open(&mut sim, C_ISN, P_ISN, S_ISN);
    // A frame "from the secondary" that travels as the client would.
    let mut f = seg(true, C_ISN + 1, P_ISN + 1, "A").build(V4);
    let v = sim.rw.rewrite_from_secondary(sim.now, &[], &mut f);
    assert_eq!(v, Verdict::Unchanged(PassReason::DirectionMismatch));
    assert_eq!(fields(&f).seq, C_ISN + 1);
    // Not even a RST travelling the wrong way closes the entry.
    let mut f = seg(true, C_ISN + 1, P_ISN + 1, "RA").build(V4);
    let v = sim.rw.rewrite_from_secondary(sim.now, &[], &mut f);
    assert_eq!(v, Verdict::Unchanged(PassReason::DirectionMismatch));
    assert!(!sim.info().unwrap().closing);
    assert_eq!(sim.rw.stats().pass_direction_mismatch, 2);
}

#[test]
fn frame_api_with_vnet_header_and_shared_buffer() {
    let mut sim = Sim::new(V4);
    passive_open(&mut sim, C_ISN, P_ISN, S_ISN);
    let eth = seg(false, S_ISN + 1, C_ISN + 1, "A").data(b"abc").build(V4);
    let mut data = vec![0u8; 10]; // a vnet header without NEEDS_CSUM
    data.extend_from_slice(&eth);
    let mut frame = Frame {
        vnet_hdr_len: 10,
        data: Bytes::from(data),
    };
    let shared = frame.clone();
    let v = sim
        .rw
        .rewrite_frame(sim.now, Direction::FromSecondary, &mut frame);
    assert_eq!(v, Verdict::Rewritten);
    assert!(v.forward());
    assert_eq!(frame.vnet_hdr_len, 10);
    assert_eq!(frame.vnet_header(), &[0u8; 10]);
    assert_eq!(fields(frame.ethernet_bytes()).seq, P_ISN + 1);
    assert_checksum(frame.ethernet_bytes());
    assert_eq!(
        fields(shared.ethernet_bytes()).seq,
        S_ISN + 1,
        "the shared copy is not modified"
    );
    // A vnet header length beyond the data: nothing to parse.
    let mut bogus = Frame {
        vnet_hdr_len: 99,
        data: Bytes::from_static(b"short"),
    };
    assert_eq!(
        sim.rw
            .rewrite_frame(sim.now, Direction::ToSecondary, &mut bogus),
        Verdict::Unchanged(PassReason::NotTcp)
    );
}

#[test]
fn poll_timeout_is_empty_without_entries() {
    let rw = Rewriter::default();
    assert_eq!(rw.poll_timeout(), None);
    assert!(rw.is_empty());
    assert!(!rw.is_failover());
    assert_eq!(rw.config().idle_timeout, Duration::from_secs(120));
}

proptest::proptest! {
    /// Random bytes, and a valid TCP frame with random corruption of its header and
    /// options: never a panic, and a frame with a valid checksum before has one after
    /// (or is left unchanged).
    #[test]
    fn never_panics_on_random_input(
        bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..120),
        to_secondary in proptest::bool::ANY,
        corrupt in proptest::collection::vec((34usize..86, proptest::num::u8::ANY), 0..6),
        opts in proptest::collection::vec(proptest::num::u8::ANY, 0..=10),
    ) {
        let mut sim = Sim::new(V4);
        passive_open(&mut sim, C_ISN, P_ISN, S_ISN);
        let mut b = bytes.clone();
        if to_secondary {
            sim.rw.rewrite_to_secondary(sim.now, &[], &mut b);
        } else {
            sim.rw.rewrite_from_secondary(sim.now, &[], &mut b);
        }
        let mut o = opts.clone();
        o.resize(o.len().div_ceil(4) * 4, 1);
        let mut frame = seg(to_secondary, S_ISN + 1, P_ISN + 1, "A").opts(o).data(b"payload").build(V4);
        for (at, v) in corrupt {
            // Corrupt the TCP header (not its data offset, which etherparse checks).
            if at < frame.len() && at != 14 + 20 + 12 {
                frame[at] = v;
            }
        }
        let ok_before = SlicedPacket::from_ethernet(&frame).ok().and_then(|p| match &p.transport {
            Some(TransportSlice::Tcp(_)) => Some(checksums(&frame)),
            _ => None,
        });
        if to_secondary {
            sim.rw.rewrite_to_secondary(sim.now, &[], &mut frame);
        } else {
            sim.rw.rewrite_from_secondary(sim.now, &[], &mut frame);
        }
        if let Some((stored, full)) = ok_before {
            let (stored2, full2) = checksums(&frame);
            if stored == full {
                proptest::prop_assert_eq!(stored2, full2);
            }
        }
    }
}

#[test]
fn live_connections_carry_the_client_facing_position() {
    use crate::classify::TcpFlags as SimFlags;
    use crate::sim::{FlowAddrs, Segment, Towards, tcp_frame};
    let addrs = FlowAddrs::v4(7);
    let mut rw = Rewriter::default();
    let now = Instant::ZERO;
    let isn_p: u32 = 1_000;
    let isn_s: u32 = 900_000;
    let client_isn: u32 = 5_000;
    let f = |rw: &mut Rewriter, dir, towards, seg: Segment<'_>| {
        let mut frame = tcp_frame(&addrs, towards, &seg);
        let v = rw.rewrite_frame(now, dir, &mut frame);
        assert!(v.forward(), "{v:?}");
        frame
    };
    let syn = SimFlags::SYN;
    let ack = SimFlags::ACK;
    f(
        &mut rw,
        Direction::ToSecondary,
        Towards::Vm,
        Segment {
            seq: client_isn,
            flags: syn,
            ..Segment::default()
        },
    );
    f(
        &mut rw,
        Direction::FromSecondary,
        Towards::Client,
        Segment {
            seq: isn_s,
            ack: client_isn + 1,
            flags: syn.union(ack),
            ..Segment::default()
        },
    );
    // The client acknowledges the primary's SYN-ACK: the offset is learned.
    f(
        &mut rw,
        Direction::ToSecondary,
        Towards::Vm,
        Segment {
            seq: client_isn + 1,
            ack: isn_p + 1,
            flags: ack,
            ..Segment::default()
        },
    );
    let out = f(
        &mut rw,
        Direction::FromSecondary,
        Towards::Client,
        Segment {
            seq: isn_s + 1,
            ack: client_isn + 1,
            flags: ack,
            window: 333,
            payload: b"hello",
            ..Segment::default()
        },
    );
    let live: Vec<_> = rw.live_connections().collect();
    assert_eq!(live.len(), 1);
    let c = live[0];
    assert_eq!(
        c.seq,
        isn_p + 1 + 5,
        "next sequence number in the primary's space"
    );
    assert_eq!(c.ack, client_isn + 1);
    assert_eq!(c.window, 333);
    assert_eq!(c.vm.port, 80);
    assert_eq!(c.client.ip(), addrs.client);
    assert_eq!(c.vm_mac, crate::sim::VM_MAC);
    assert_eq!(c.client_mac, crate::sim::CLIENT_MAC);
    // The dup ACK matches what the client saw last, minus the payload.
    let dup = crate::announce::tcp_dup_ack(&c);
    let p = SlicedPacket::from_ethernet(&dup.data).unwrap();
    let q = SlicedPacket::from_ethernet(&out.data).unwrap();
    let (Some(TransportSlice::Tcp(d)), Some(TransportSlice::Tcp(o))) = (&p.transport, &q.transport)
    else {
        panic!("not TCP")
    };
    assert_eq!(d.sequence_number(), o.sequence_number().wrapping_add(5));
    assert_eq!(d.acknowledgment_number(), o.acknowledgment_number());
    // A closing connection is not live.
    f(
        &mut rw,
        Direction::FromSecondary,
        Towards::Client,
        Segment {
            seq: isn_s + 6,
            ack: client_isn + 1,
            flags: ack.union(SimFlags::RST),
            ..Segment::default()
        },
    );
    assert_eq!(rw.live_connections().count(), 0);
}
