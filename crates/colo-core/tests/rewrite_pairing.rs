//! Property test of the rewriter against a model of the two VMs: both run the same
//! conversation with their own ISN and timestamp clock. Every frame of the secondary,
//! once rewritten, must be byte for byte the frame the primary sent (checksum
//! included), and every client frame (written against the primary), once rewritten,
//! must be byte for byte the frame the client would have sent had it talked to the
//! secondary. Covers IPv4/IPv6, VLAN tags, sequence wrap (random ISNs), SACK, one or
//! no timestamps, the secondary answering late (held frames) and checkpoints.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use colo_core::Instant;
use colo_core::rewrite::{Rewriter, Verdict};
use etherparse::PacketBuilder;
use proptest::prelude::*;

/// One VM's numbers: ISN and timestamp clock origin.
#[derive(Debug, Clone, Copy)]
struct Vm {
    isn: u32,
    ts: u32,
}

#[derive(Debug, Clone, Copy)]
struct Net {
    v6: bool,
    vlan: Option<u16>,
}

#[derive(Debug, Clone)]
struct Tcp {
    from_client: bool,
    seq: u32,
    ack: Option<u32>,
    syn: bool,
    ts: Option<(u32, u32)>,
    sack: Vec<(u32, u32)>,
    payload: Vec<u8>,
}

fn build(net: Net, t: &Tcp) -> Vec<u8> {
    let (c, v): (IpAddr, IpAddr) = if net.v6 {
        (
            Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1).into(),
            Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2).into(),
        )
    } else {
        (
            Ipv4Addr::new(192, 0, 2, 1).into(),
            Ipv4Addr::new(192, 0, 2, 2).into(),
        )
    };
    let (src, dst, sport, dport) = if t.from_client {
        (c, v, 50_000, 22)
    } else {
        (v, c, 22, 50_000)
    };
    let eth = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
    macro_rules! ip {
        ($step:expr) => {
            match (src, dst) {
                (IpAddr::V4(s), IpAddr::V4(d)) => $step.ipv4(s.octets(), d.octets(), 64),
                (IpAddr::V6(s), IpAddr::V6(d)) => $step.ipv6(s.octets(), d.octets(), 64),
                _ => unreachable!(),
            }
        };
    }
    let ip = match net.vlan {
        Some(id) => ip!(eth.single_vlan(id.try_into().unwrap())),
        None => ip!(eth),
    };
    let mut b = ip.tcp(sport, dport, t.seq, 64_000);
    if t.syn {
        b = b.syn();
    }
    if let Some(ack) = t.ack {
        b = b.ack(ack);
    }
    let mut opts = Vec::new();
    if let Some((val, ecr)) = t.ts {
        opts.extend_from_slice(&[1, 1, 8, 10]);
        opts.extend_from_slice(&val.to_be_bytes());
        opts.extend_from_slice(&ecr.to_be_bytes());
    }
    if !t.sack.is_empty() {
        opts.extend_from_slice(&[1, 1, 5, u8::try_from(2 + 8 * t.sack.len()).unwrap()]);
        for (l, r) in &t.sack {
            opts.extend_from_slice(&l.to_be_bytes());
            opts.extend_from_slice(&r.to_be_bytes());
        }
    }
    let b = b.options_raw(&opts).unwrap();
    let mut out = Vec::new();
    b.write(&mut out, &t.payload).unwrap();
    out
}

/// A step of the conversation after the handshake.
#[derive(Debug, Clone)]
enum Step {
    /// The VM sends `len` bytes.
    VmData(usize),
    /// The client sends `len` bytes (possibly 0: a pure ACK), acknowledging a fraction
    /// of what the VM sent, with up to `sack` SACK blocks above the acknowledgement.
    Client {
        len: usize,
        acked_permille: u32,
        sack: usize,
    },
    /// A checkpoint: from now on the secondary is a copy of the primary.
    Checkpoint,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0usize..300).prop_map(Step::VmData),
        (0usize..100, 0u32..=1000, 0usize..=3).prop_map(|(len, acked_permille, sack)| {
            Step::Client {
                len,
                acked_permille,
                sack,
            }
        }),
        Just(Step::Checkpoint),
    ]
}

/// What each party sends, in both VMs' spaces.
struct Model {
    net: Net,
    client: Vm,
    pvm: Vm,
    svm: Vm,
    /// Which sides use timestamps: (primary, secondary). The client always offers.
    ts: (bool, bool),
    vm_sent: u32,
    client_sent: u32,
    tick: u32,
    /// TSval offset (ticks) of the VM's latest segment: what the client echoes.
    vm_echo: u32,
}

impl Model {
    /// The VM segment as `vm` (primary or secondary) would send it.
    fn vm_segment(&self, vm: Vm, uses_ts: bool, syn: bool, payload: &[u8]) -> Tcp {
        Tcp {
            from_client: false,
            seq: if syn {
                vm.isn
            } else {
                vm.isn.wrapping_add(1).wrapping_add(self.vm_sent)
            },
            ack: Some(
                self.client
                    .isn
                    .wrapping_add(1)
                    .wrapping_add(self.client_sent),
            ),
            syn,
            ts: uses_ts.then(|| {
                (
                    vm.ts.wrapping_add(self.tick),
                    self.client.ts.wrapping_add(self.tick),
                )
            }),
            sack: Vec::new(),
            payload: payload.to_vec(),
        }
    }

    /// The client segment as sent to `vm`: acks, SACK edges and TSecr in its spaces.
    fn client_segment(
        &self,
        vm: Vm,
        vm_uses_ts: bool,
        acked: u32,
        sack: &[(u32, u32)],
        payload: &[u8],
    ) -> Tcp {
        let base = vm.isn.wrapping_add(1);
        Tcp {
            from_client: true,
            seq: self
                .client
                .isn
                .wrapping_add(1)
                .wrapping_add(self.client_sent),
            ack: Some(base.wrapping_add(acked)),
            syn: false,
            ts: vm_uses_ts.then(|| {
                (
                    self.client.ts.wrapping_add(self.tick),
                    vm.ts.wrapping_add(self.vm_echo),
                )
            }),
            sack: sack
                .iter()
                .map(|(l, r)| (base.wrapping_add(*l), base.wrapping_add(*r)))
                .collect(),
            payload: payload.to_vec(),
        }
    }
}

fn payload(len: usize, salt: u32) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(31).wrapping_add(salt) as u8)
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn rewritten_secondary_frames_equal_primary_frames(
        client_isn in any::<u32>(),
        pvm_isn in prop_oneof![any::<u32>(), u32::MAX - 300..=u32::MAX],
        svm_isn in prop_oneof![any::<u32>(), u32::MAX - 300..=u32::MAX],
        clocks in any::<(u32, u32, u32)>(),
        ts in prop_oneof![Just((true, true)), Just((false, false)), Just((true, false)), Just((false, true))],
        v6 in any::<bool>(),
        vlan in proptest::option::of(1u16..4095),
        svm_late in any::<bool>(),
        steps in proptest::collection::vec(step(), 1..40),
    ) {
        let net = Net { v6, vlan };
        let mut m = Model {
            net,
            client: Vm { isn: client_isn, ts: clocks.0 },
            pvm: Vm { isn: pvm_isn, ts: clocks.1 },
            svm: Vm { isn: svm_isn, ts: clocks.2 },
            ts,
            vm_sent: 0,
            client_sent: 0,
            tick: 0,
            vm_echo: 0,
        };
        let mut rw = Rewriter::default();
        let now = Instant::from_millis(10);

        // Client SYN, with timestamps offered.
        let syn = Tcp {
            from_client: true,
            seq: m.client.isn,
            ack: None,
            syn: true,
            ts: Some((m.client.ts, 0)),
            sack: Vec::new(),
            payload: Vec::new(),
        };
        let mut f = build(m.net, &syn);
        let before = f.clone();
        prop_assert!(rw.rewrite_to_secondary(now, &[], &mut f).forward());
        prop_assert_eq!(&f, &before);

        // The two SYN-ACKs, and the client's ACK of the primary's.
        let p_synack = build(m.net, &m.vm_segment(m.pvm, m.ts.0, true, &[]));
        let mut s_synack = build(m.net, &m.vm_segment(m.svm, m.ts.1, true, &[]));
        m.tick += 1;
        let to_pvm = m.client_segment(m.pvm, m.ts.0, 0, &[], &[]);
        let mut ack = build(m.net, &to_pvm);
        let want_ack = build(m.net, &m.client_segment(m.svm, m.ts.0, 0, &[], &[]));
        // Timestamps the secondary cannot translate stay as they are.
        let want_ack = if m.ts.0 && !m.ts.1 { build(m.net, &Tcp { ack: Some(m.svm.isn.wrapping_add(1)), ..to_pvm.clone() }) } else { want_ack };
        if svm_late {
            prop_assert_eq!(rw.rewrite_to_secondary(now, &[], &mut ack), Verdict::Held);
            prop_assert!(rw.rewrite_from_secondary(now, &[], &mut s_synack).forward());
            if m.ts.0 == m.ts.1 {
                prop_assert_eq!(&s_synack, &p_synack);
            }
            let released = rw.poll_to_secondary().expect("released");
            prop_assert_eq!(released.ethernet_bytes(), &want_ack[..]);
        } else {
            prop_assert!(rw.rewrite_from_secondary(now, &[], &mut s_synack).forward());
            prop_assert!(rw.rewrite_to_secondary(now, &[], &mut ack).forward());
            prop_assert_eq!(&ack, &want_ack);
        }
        prop_assert_eq!(rw.stats().ts_one_side, u64::from(m.ts.0 != m.ts.1));

        for (i, s) in steps.iter().enumerate() {
            m.tick += 1;
            match *s {
                Step::VmData(len) => {
                    let data = payload(len, i as u32);
                    let want = build(m.net, &m.vm_segment(m.pvm, m.ts.0, false, &data));
                    let mut got = build(m.net, &m.vm_segment(m.svm, m.ts.1, false, &data));
                    prop_assert!(rw.rewrite_from_secondary(now, &[], &mut got).forward());
                    if m.ts.0 == m.ts.1 {
                        prop_assert_eq!(&got, &want, "VM segment {}", i);
                    } else {
                        // Header lengths differ: compare what can be equal.
                        let c = colo_core::classify::classify(&got);
                        let w = colo_core::classify::classify(&want);
                        prop_assert_eq!(c.tcp().unwrap().seq, w.tcp().unwrap().seq);
                    }
                    m.vm_sent = m.vm_sent.wrapping_add(len as u32);
                    m.vm_echo = m.tick;
                }
                Step::Client { len, acked_permille, sack } => {
                    let acked = (u64::from(m.vm_sent) * u64::from(acked_permille) / 1000) as u32;
                    let hole = m.vm_sent - acked;
                    let blocks: Vec<(u32, u32)> = if hole >= 4 {
                        (0..sack as u32).map(|k| {
                            let step = hole / 4;
                            let l = acked + 1 + k * step;
                            (l, l + step / 2 + 1)
                        }).collect()
                    } else {
                        Vec::new()
                    };
                    let data = payload(len, 1000 + i as u32);
                    let mut got = build(m.net, &m.client_segment(m.pvm, m.ts.0, acked, &blocks, &data));
                    let mut want_seg = m.client_segment(m.svm, m.ts.0, acked, &blocks, &data);
                    if m.ts.0 && !m.ts.1 {
                        // The echo of the primary's clock stays untranslated.
                        want_seg.ts = Some((m.client.ts.wrapping_add(m.tick), m.pvm.ts.wrapping_add(m.vm_echo)));
                    }
                    let want = build(m.net, &want_seg);
                    prop_assert!(rw.rewrite_to_secondary(now, &[], &mut got).forward());
                    prop_assert_eq!(&got, &want, "client segment {}", i);
                    m.client_sent = m.client_sent.wrapping_add(len as u32);
                }
                Step::Checkpoint => {
                    rw.checkpoint_done();
                    m.svm = m.pvm;
                    m.ts.1 = m.ts.0;
                }
            }
        }
        prop_assert_eq!(rw.stats().held_expired + rw.stats().dropped_hold_full, 0);
        prop_assert_eq!(rw.stats().options_malformed, 0);
    }
}
