//! Replay tests on synthetic captures built with `colo_core::sim` and written with
//! pcap-file: checkpoints after a resync, the rewriter, reused 4-tuples, ICMP echo
//! identifiers, IPv6 extension headers.

use std::path::{Path, PathBuf};

use clap::Parser;
use colo_core::classify::TcpFlags;
use colo_core::sim::{
    CLIENT_MAC, FlowAddrs, Segment, TcpSender, Towards, VM_MAC, client_tcp, tcp_frame,
};
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};

use super::args::ReplayArgs;
use super::progress::Progress;
use super::report::{CHECKPOINT_MODEL, Report};
use super::run;

#[derive(Debug, Parser)]
struct Wrap {
    #[command(flatten)]
    args: ReplayArgs,
}

/// One captured frame: time in microseconds and the Ethernet bytes.
type Rec = (u64, Vec<u8>);

fn write(path: &Path, recs: &[Rec]) {
    let file = std::fs::File::create(path).unwrap();
    let mut w = PcapWriter::with_header(
        file,
        PcapHeader {
            ts_resolution: pcap_file::TsResolution::NanoSecond,
            ..PcapHeader::default()
        },
    )
    .unwrap();
    let base = 1_700_000_000_000_000u64;
    for (us, data) in recs {
        let ts = std::time::Duration::from_micros(base + us);
        w.write_packet(&PcapPacket::new(ts, data.len() as u32, data))
            .unwrap();
    }
}

fn replay_recs(p: &[Rec], s: &[Rec], extra: &[&str]) -> Report {
    let dir = tempfile::tempdir().unwrap();
    let (pp, sp): (PathBuf, PathBuf) = (dir.path().join("p.pcap"), dir.path().join("s.pcap"));
    write(&pp, p);
    write(&sp, s);
    let mut argv = vec![
        "replay".to_string(),
        pp.display().to_string(),
        sp.display().to_string(),
    ];
    argv.extend(extra.iter().map(|a| (*a).to_string()));
    let args = Wrap::parse_from(argv).args;
    run::replay(&args, &mut Progress::new(false)).unwrap()
}

/// A client/VM TCP conversation: handshake, request/reply exchanges 1 s apart, FINs.
struct Conversation<'a> {
    addrs: FlowAddrs,
    vm_isn: u32,
    client_isn: u32,
    /// TCP timestamps: the VM's TSval clock base.
    ts_base: Option<u32>,
    start_us: u64,
    exchanges: &'a [(&'a [u8], &'a [u8])],
    handshake: bool,
}

impl Conversation<'_> {
    fn frames(&self) -> Vec<Rec> {
        let a = &self.addrs;
        let mut out = Vec::new();
        let mut t = self.start_us;
        let mut cseq = self.client_isn;
        let client = |seq: u32, ack: u32, flags: TcpFlags, payload: &[u8]| {
            tcp_frame(
                a,
                Towards::Vm,
                &Segment {
                    seq,
                    ack,
                    flags,
                    payload,
                    timestamps: Some((7, 0)),
                    ..Segment::default()
                },
            )
            .data
            .to_vec()
        };
        let mut vm = TcpSender::new(*a, self.vm_isn, cseq.wrapping_add(1));
        vm.ts_base = self.ts_base;
        let syn = TcpFlags::SYN;
        let ack = TcpFlags::ACK;
        if self.handshake {
            out.push((t, client(cseq, 0, syn, b"")));
            out.push((t + 50, vm.syn_ack().data.to_vec()));
        } else {
            vm.next_seq = vm.next_seq.wrapping_add(1);
        }
        cseq = cseq.wrapping_add(1);
        if self.handshake {
            out.push((t + 100, client(cseq, vm.next_seq, ack, b"")));
        }
        for (req, reply) in self.exchanges {
            t += 1_000_000;
            out.push((t, client(cseq, vm.next_seq, ack.union(TcpFlags::PSH), req)));
            cseq = cseq.wrapping_add(req.len() as u32);
            vm.ack = cseq;
            out.push((t + 100, vm.data(reply).data.to_vec()));
            out.push((t + 200, client(cseq, vm.next_seq, ack, b"")));
        }
        t += 1_000_000;
        out.push((t, vm.fin().data.to_vec()));
        out.push((
            t + 100,
            client(cseq, vm.next_seq, TcpFlags::FIN.union(TcpFlags::ACK), b""),
        ));
        out
    }
}

fn conv<'a>(
    n: u32,
    vm_isn: u32,
    client_isn: u32,
    exchanges: &'a [(&'a [u8], &'a [u8])],
) -> Conversation<'a> {
    Conversation {
        addrs: FlowAddrs::v4(n),
        vm_isn,
        client_isn,
        ts_base: Some(vm_isn / 3),
        start_us: 0,
        exchanges,
        handshake: true,
    }
}

#[test]
fn checkpoints_after_a_resync_are_counted() {
    let p: &[(&[u8], &[u8])] = &[
        (b"time?\n", b"t=100\n"),
        (b"echo a\n", b"a\n"),
        (b"time?\n", b"t=102\n"),
    ];
    let s: &[(&[u8], &[u8])] = &[
        (b"time?\n", b"t=7\n"),
        (b"echo a\n", b"a\n"),
        (b"time?\n", b"t=9\n"),
    ];
    let r = replay_recs(
        &conv(1, 1000, 5000, p).frames(),
        &conv(1, 900_000, 7000, s).frames(),
        &[],
    );
    assert_eq!(r.connections.len(), 1, "{}", r.text());
    let c = &r.connections[0];
    assert_eq!(c.verdict, "diverged");
    // The replies differ in length (6 vs 4 bytes): after the first checkpoint each side
    // continues from its own position, so the equal second exchange matches and the
    // third diverges again: a second checkpoint.
    assert_eq!(c.divergences, 2, "{}", r.text());
    assert_eq!(r.summary.checkpoints, 2, "{}", r.text());
    assert_eq!(r.summary.divergences_by_reason.get("payload"), Some(&2));
    assert_eq!(r.summary.checkpoint_model, CHECKPOINT_MODEL);
    assert_eq!(c.seq_alignment, Some("rewriter"));
    assert!(r.text().contains("1 more divergence(s) after checkpoints"));
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["summary"]["checkpoint_model"], CHECKPOINT_MODEL);
    assert_eq!(json["connections"][0]["divergences"], 2);
}

#[test]
fn rewriter_aligns_a_secondary_that_answers_before_the_primary_client_acks() {
    let x: &[(&[u8], &[u8])] = &[(b"get\n", b"some reply\n"), (b"get\n", b"more\n")];
    let mut p = conv(2, 0xffff_fff0, 5000, x);
    p.start_us = 300_000; // the primary's whole conversation is 300 ms later
    let s = conv(2, 12_345, 7000, x);
    let r = replay_recs(&p.frames(), &s.frames(), &[]);
    assert_eq!(r.result, "identical", "{}", r.text());
    assert_eq!(r.connections[0].seq_alignment, Some("rewriter"));
    assert_eq!(r.connections[0].bytes_compared, 16);
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
}

#[test]
fn without_handshakes_sequence_numbers_align_by_first_segment() {
    let x: &[(&[u8], &[u8])] = &[(b"get\n", b"reply one\n"), (b"get\n", b"reply two\n")];
    let mut p = conv(3, 1000, 5000, x);
    let mut s = conv(3, 777_777, 5000, x);
    p.handshake = false;
    s.handshake = false;
    let r = replay_recs(&p.frames(), &s.frames(), &["--vm-port", "80"]);
    assert_eq!(r.result, "identical", "{}", r.text());
    assert_eq!(r.connections[0].seq_alignment, Some("first_segment"));
    assert!(r.text().contains("sequence numbers aligned: first segment"));
}

#[test]
fn a_reused_four_tuple_is_a_separate_connection() {
    let same: &[(&[u8], &[u8])] = &[(b"a\n", b"first\n")];
    let p2: &[(&[u8], &[u8])] = &[(b"b\n", b"second\n")];
    let s2: &[(&[u8], &[u8])] = &[(b"b\n", b"SECOND\n")];
    let build = |isn: [u32; 2], cisn: [u32; 2], second: &[(&[u8], &[u8])]| {
        let mut a = conv(4, isn[0], cisn[0], same).frames();
        let mut b = conv(4, isn[1], cisn[1], second);
        // Reused 2.5 s later, well inside the engine's 5 s close_linger.
        b.start_us = 2_500_000 + 1_000_000;
        a.extend(b.frames());
        a
    };
    let r = replay_recs(
        &build([1000, 2_000_000], [5000, 9000], p2),
        &build([40_000, 3_000_000], [6000, 8000], s2),
        &[],
    );
    assert_eq!(r.connections.len(), 2, "{}", r.text());
    assert_eq!(r.connections[0].verdict, "identical", "{}", r.text());
    assert_eq!(r.connections[1].verdict, "diverged", "{}", r.text());
    let d = r.connections[1].divergence.as_ref().unwrap();
    assert_eq!(d.offset, Some(0));
    assert_eq!(r.summary.checkpoints, 1);
}

/// An Ethernet/IPv4 ICMP echo request or reply.
fn icmp_echo(a: &FlowAddrs, towards: Towards, id: u16, seq: u16, data: &[u8]) -> Vec<u8> {
    let (std::net::IpAddr::V4(vm), std::net::IpAddr::V4(cl)) = (a.vm, a.client) else {
        unreachable!()
    };
    let (smac, dmac, src, dst) = match towards {
        Towards::Client => (VM_MAC, CLIENT_MAC, vm, cl),
        Towards::Vm => (CLIENT_MAC, VM_MAC, cl, vm),
    };
    let b = etherparse::PacketBuilder::ethernet2(smac, dmac).ipv4(src.octets(), dst.octets(), 64);
    let b = match towards {
        Towards::Client => b.icmpv4_echo_reply(id, seq),
        Towards::Vm => b.icmpv4_echo_request(id, seq),
    };
    let mut out = Vec::new();
    b.write(&mut out, data).unwrap();
    out
}

#[test]
fn icmp_echo_with_other_identifiers_is_paired_by_order() {
    let a = FlowAddrs::v4(5);
    let pings = |id: u16, last: &[u8]| -> Vec<Rec> {
        (0..3u16)
            .flat_map(|seq| {
                let t = u64::from(seq) * 1_000_000;
                let reply = if seq == 2 { last } else { b"payload" };
                [
                    (t, icmp_echo(&a, Towards::Vm, id, seq, b"payload")),
                    (t + 100, icmp_echo(&a, Towards::Client, id, seq, reply)),
                ]
            })
            .collect()
    };
    let r = replay_recs(&pings(0x100, b"payload"), &pings(0x2345, b"payload"), &[]);
    assert_eq!(r.connections.len(), 1, "{}", r.text());
    let c = &r.connections[0];
    assert_eq!(c.paired_by, Some("order_icmp_id_differs"));
    assert_eq!(c.verdict, "identical", "{}", r.text());
    assert_eq!(c.datagrams_compared, 3);
    // A different reply body is still found, at its index.
    let r = replay_recs(&pings(0x100, b"payload"), &pings(0x2345, b"PAYLOAD"), &[]);
    let d = r.connections[0].divergence.as_ref().expect("diverged");
    assert_eq!(d.datagram, Some(2), "{}", r.text());
}

/// Question-and-answer exchanges over IPv6 UDP from `client_port`, one millisecond
/// apart: the client's "question", then 100 µs later the VM's answer, fragmented
/// with that identifier where one is given.
fn udp6_exchanges(client_port: u16, answers: &[(&[u8], Option<u32>)]) -> Vec<Rec> {
    let mut out = Vec::new();
    for (t, &(answer, fragment)) in (0u64..).step_by(1000).zip(answers) {
        for f in udp6(client_port, Towards::Vm, b"question", None) {
            out.push((t, f));
        }
        for f in udp6(client_port, Towards::Client, answer, fragment) {
            out.push((t + 100, f));
        }
    }
    out
}

/// An Ethernet/IPv6 UDP datagram behind a hop-by-hop and a destination options header,
/// or (with `fragment`) split into two fragments behind a fragment header.
fn udp6(client_port: u16, towards: Towards, payload: &[u8], fragment: Option<u32>) -> Vec<Vec<u8>> {
    let vm = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let cl = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
    let (smac, dmac, src, dst, sport, dport) = match towards {
        Towards::Client => (VM_MAC, CLIENT_MAC, vm, cl, 53u16, client_port),
        Towards::Vm => (CLIENT_MAC, VM_MAC, cl, vm, client_port, 53u16),
    };
    let mut udp = Vec::new();
    udp.extend_from_slice(&sport.to_be_bytes());
    udp.extend_from_slice(&dport.to_be_bytes());
    udp.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let frame = |next: u8, ext: &[u8], body: &[u8]| {
        let mut f = Vec::new();
        f.extend_from_slice(&dmac);
        f.extend_from_slice(&smac);
        f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
        f.extend_from_slice(&((ext.len() + body.len()) as u16).to_be_bytes());
        f.extend_from_slice(&[next, 64]);
        f.extend_from_slice(&src);
        f.extend_from_slice(&dst);
        f.extend_from_slice(ext);
        f.extend_from_slice(body);
        f
    };
    match fragment {
        None => {
            // Hop-by-hop (next: destination options), destination options (next: UDP),
            // each 8 bytes with a PadN option.
            let ext = [60, 0, 1, 4, 0, 0, 0, 0, 17, 0, 1, 4, 0, 0, 0, 0];
            vec![frame(0, &ext, &udp)]
        }
        Some(id) => {
            let split = 16.min(udp.len());
            let frag = |offset: usize, more: bool| {
                let mut h = vec![17, 0];
                h.extend_from_slice(&(((offset / 8) as u16) << 3 | u16::from(more)).to_be_bytes());
                h.extend_from_slice(&id.to_be_bytes());
                h
            };
            vec![
                frame(44, &frag(0, true), &udp[..split]),
                frame(44, &frag(split, false), &udp[split..]),
            ]
        }
    }
}

#[test]
fn ipv6_extension_headers_are_classified_rewritten_and_compared() {
    let capture = |client_port: u16, last: &[u8]| -> Vec<Rec> {
        let same: &[u8] = b"an answer of some length";
        udp6_exchanges(
            client_port,
            &[(same, None), (same, None), (same, None), (last, None)],
        )
    };
    // The client ports differ, so the secondary's datagrams are rewritten to the
    // primary's ports behind the extension headers.
    let r = replay_recs(
        &capture(40_000, b"an answer of some length"),
        &capture(41_000, b"an answer of some length"),
        &[],
    );
    assert_eq!(r.result, "identical", "{}", r.text());
    assert_eq!(r.connections.len(), 1, "{}", r.text());
    assert_eq!(
        r.connections[0].paired_by,
        Some("order_client_port_differs")
    );
    assert_eq!(r.connections[0].datagrams_compared, 4);
    let r = replay_recs(
        &capture(40_000, b"an answer of some length"),
        &capture(41_000, b"an answer of other length"),
        &[],
    );
    assert_eq!(r.connections[0].verdict, "diverged", "{}", r.text());
    assert_eq!(
        r.connections[0].divergence.as_ref().unwrap().datagram,
        Some(3)
    );
}

#[test]
fn ipv6_fragments_are_compared() {
    let capture = |last: &[u8]| -> Vec<Rec> {
        // Fragment identifiers differ between the VMs; they are not compared.
        let id = |i: u32| Some(if last.is_empty() { 1 } else { 1000 } + i);
        let same: &[u8] = b"a fragmented answer, long enough";
        udp6_exchanges(40_000, &[(same, id(0)), (same, id(1)), (last, id(2))])
    };
    let same = b"a fragmented answer, long enough";
    let mut p = capture(same);
    let s = capture(same);
    // Other fragment identifiers in the primary.
    for (_, f) in &mut p {
        if f.len() > 62 && f[20] == 44 {
            f[58] ^= 0x55;
        }
    }
    let r = replay_recs(&p, &s, &[]);
    assert_eq!(r.result, "identical", "{}", r.text());
    let frags = r
        .connections
        .iter()
        .find(|c| c.proto == "ip-proto-17")
        .expect("fragments form their own flow");
    assert_eq!(frags.datagrams_compared, 6, "{}", r.text());
    let r = replay_recs(&p, &capture(b"a fragmented answer, LONG enough"), &[]);
    assert_eq!(r.result, "diverged", "{}", r.text());
}

/// The model's documented limit: a side caught mid-message at the checkpoint is
/// resynchronised mid-message; a checkpoint duration that covers the rest of the message
/// avoids the extra checkpoint.
#[test]
fn a_side_caught_mid_message_costs_one_more_checkpoint_unless_the_checkpoint_lasts() {
    let a = FlowAddrs::v4(6);
    let reply: Vec<u8> = (0..8192u32).map(|i| b'a' + (i % 26) as u8).collect();
    let mut other = reply.clone();
    other[100] = b'#';
    let build = |isn: u32, first: &[u8], sizes: usize| -> Vec<Rec> {
        let mut vm = TcpSender::new(a, isn, 5001);
        let client = |seq: u32, ack: u32, flags: TcpFlags, payload: &[u8]| {
            client_tcp(&a, seq, ack, flags, payload).data.to_vec()
        };
        let mut out = vec![(0, client(5000, 0, TcpFlags::SYN, b""))];
        out.push((50, vm.syn_ack().data.to_vec()));
        out.push((100, client(5001, vm.next_seq, TcpFlags::ACK, b"")));
        let mut t = 1_000_000;
        for chunk in first.chunks(sizes) {
            out.push((t, vm.data(chunk).data.to_vec()));
            t += 1000;
        }
        // A second, identical reply a second later.
        for chunk in reply.chunks(sizes) {
            out.push((2_000_000 + t, vm.data(chunk).data.to_vec()));
            t += 1000;
        }
        out
    };
    // The primary sends each reply in one 8 KB super-frame, the secondary in 1448-byte
    // segments 1 ms apart; the first replies differ at byte 100.
    let p = build(1000, &reply, 8192);
    let s = build(70_000, &other, 1448);
    let r = replay_recs(&p, &s, &["--no-ack-gate"]);
    assert_eq!(r.summary.checkpoints, 2, "{}", r.text());
    let r = replay_recs(&p, &s, &["--no-ack-gate", "--checkpoint-duration", "20"]);
    assert_eq!(r.summary.checkpoints, 1, "{}", r.text());
    assert_eq!(r.connections[0].divergences, 1);
}

/// Secondary frames waiting for an offset the rewriter never learns are bounded, and the
/// report says why the connection was not compared.
#[test]
fn frames_waiting_for_the_rewriter_are_bounded() {
    let a = FlowAddrs::v4(7);
    let build = |isn: u32, client_ack: bool| -> Vec<Rec> {
        let mut vm = TcpSender::new(a, isn, 5001);
        let syn = tcp_frame(
            &a,
            Towards::Vm,
            &Segment {
                seq: 5000,
                flags: TcpFlags::SYN,
                ..Segment::default()
            },
        );
        let mut out = vec![(0, syn.data.to_vec()), (50, vm.syn_ack().data.to_vec())];
        if client_ack {
            let ack = tcp_frame(
                &a,
                Towards::Vm,
                &Segment {
                    seq: 5001,
                    ack: vm.next_seq,
                    ..Segment::default()
                },
            );
            out.push((100, ack.data.to_vec()));
        }
        for i in 0..300u64 {
            out.push((1000 + i * 10, vm.data(b"0123456789").data.to_vec()));
        }
        out
    };
    // The primary capture lacks the client's handshake ACK: the rewriter never learns
    // the primary's ISN.
    let r = replay_recs(
        &build(1000, false),
        &build(50_000, true),
        &["--no-ack-gate"],
    );
    let c = &r.connections[0];
    assert_eq!(c.seq_alignment, Some("rewriter"));
    let note = c.note.as_deref().unwrap_or_default();
    assert!(
        note.contains("too many secondary frames wait"),
        "{}",
        r.text()
    );
    assert!(
        r.warnings
            .iter()
            .any(|w| w.contains("256 secondary frame(s) were never compared")),
        "{:?}",
        r.warnings
    );
    assert_ne!(r.result, "identical");
}
