//! Deterministic engine tests: two simulated VMs driven step by step with a fake clock.

use super::*;
use crate::classify::TcpFlags;
use crate::sim::{FlowAddrs, TcpSender, Towards, udp_frame};

/// Everything the engine produced since the last drain.
#[derive(Debug, Default)]
struct Drained {
    released: Vec<Frame>,
    divergences: Vec<Divergence>,
    requests: Vec<CheckpointRequest>,
    limits: Vec<Limit>,
}

fn drain(e: &mut Engine) -> Drained {
    let mut d = Drained::default();
    while let Some(o) = e.poll_output() {
        match o {
            Output::Release(f) => d.released.push(f),
            Output::Divergence(x) => d.divergences.push(x),
            Output::RequestCheckpoint(r) => d.requests.push(r),
            Output::LimitReached { limit, .. } => d.limits.push(limit),
        }
    }
    d
}

fn ms(n: u64) -> Instant {
    Instant::from_millis(n)
}

/// A primary and a secondary sender for the same flow, already past the handshake.
fn pair(n: u32) -> (TcpSender, TcpSender) {
    let a = FlowAddrs::v4(n);
    (TcpSender::new(a, 1000, 5000), TcpSender::new(a, 1000, 5000))
}

fn stream(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

#[test]
fn identical_streams_release_everything_in_order() {
    let mut e = Engine::new(EngineConfig::default());
    let (mut p, mut s) = pair(1);
    let data = stream(10_000);
    let pf = p.segments(&data, &[1448]);
    let sf = s.segments(&data, &[1448]);
    for (a, b) in pf.iter().zip(&sf) {
        e.handle_frame(ms(1), Side::Primary, a.clone());
        e.handle_frame(ms(1), Side::Secondary, b.clone());
    }
    let d = drain(&mut e);
    assert_eq!(d.released, pf);
    assert!(d.requests.is_empty() && d.divergences.is_empty());
    assert_eq!(e.stats().bytes_matched, 10_000);
}

#[test]
fn segmentation_differences_still_match() {
    let mut e = Engine::new(EngineConfig::default());
    let (mut p, mut s) = pair(1);
    let data = stream(1400);
    let pf = p.segments(&data, &[700]);
    let sf = s.segments(&data, &[1400]);
    e.handle_frame(ms(0), Side::Primary, pf[0].clone());
    e.handle_frame(ms(0), Side::Primary, pf[1].clone());
    assert!(
        drain(&mut e).released.is_empty(),
        "nothing is released before the secondary matches"
    );
    e.handle_frame(ms(0), Side::Secondary, sf[0].clone());
    let d = drain(&mut e);
    assert_eq!(d.released, pf);
    assert!(d.requests.is_empty());
}

#[test]
fn secondary_first_then_primary() {
    let mut e = Engine::new(EngineConfig::default());
    let (mut p, mut s) = pair(1);
    let data = stream(3000);
    for f in s.segments(&data, &[1000, 500]) {
        e.handle_frame(ms(0), Side::Secondary, f);
    }
    let pf = p.segments(&data, &[1448]);
    for f in &pf {
        e.handle_frame(ms(0), Side::Primary, f.clone());
    }
    let d = drain(&mut e);
    assert_eq!(d.released, pf);
    assert!(d.requests.is_empty());
}

#[test]
fn flipped_byte_is_one_divergence_at_its_offset() {
    let mut e = Engine::new(EngineConfig::default());
    let (mut p, mut s) = pair(1);
    let data = stream(5000);
    let mut other = data.clone();
    other[3210] ^= 0x20;
    let pf = p.segments(&data, &[1448]);
    for f in &pf {
        e.handle_frame(ms(0), Side::Primary, f.clone());
    }
    for f in s.segments(&other, &[1000]) {
        e.handle_frame(ms(0), Side::Secondary, f);
    }
    let d = drain(&mut e);
    assert_eq!(d.divergences.len(), 1);
    assert_eq!(d.requests.len(), 1);
    match &d.divergences[0].kind {
        DivergenceKind::Payload {
            offset,
            primary,
            secondary,
        } => {
            assert_eq!(*offset, 3210);
            assert_eq!(primary[0], data[3210]);
            assert_eq!(secondary[0], other[3210]);
        }
        k => panic!("unexpected {k:?}"),
    }
    // Frames whose bytes all precede the difference were released; the rest wait.
    assert_eq!(d.released, pf[..2].to_vec());
    e.handle_checkpoint_done(ms(50));
    let d = drain(&mut e);
    assert_eq!(
        d.released,
        pf[2..].to_vec(),
        "the checkpoint releases the rest in order"
    );
    assert_eq!(e.epoch(), 1);
}

#[test]
fn primary_reordering_keeps_primary_order() {
    let mut e = Engine::new(EngineConfig::default());
    let (mut p, mut s) = pair(1);
    let data = stream(3000);
    let pf = p.segments(&data, &[1000]);
    let reordered = vec![pf[1].clone(), pf[0].clone(), pf[2].clone()];
    for f in &reordered {
        e.handle_frame(ms(0), Side::Primary, f.clone());
    }
    for f in s.segments(&data, &[3000]) {
        e.handle_frame(ms(0), Side::Secondary, f);
    }
    let d = drain(&mut e);
    assert_eq!(
        d.released, reordered,
        "released in the primary's own order, not LIFO, not resorted"
    );
}

#[test]
fn retransmission_with_other_bytes_diverges() {
    let mut e = Engine::new(EngineConfig::default());
    let (mut p, _) = pair(1);
    let first = p.data(b"hello world");
    let mut again = p.clone();
    again.next_seq = 1001;
    let bad = again.data(b"hello WORLD");
    e.handle_frame(ms(0), Side::Primary, first);
    e.handle_frame(ms(0), Side::Primary, bad);
    let d = drain(&mut e);
    assert!(matches!(
        d.divergences[0].kind,
        DivergenceKind::Retransmission {
            side: Side::Primary,
            offset: 6,
            ..
        }
    ));
}

#[test]
fn ack_gate_holds_until_secondary_acknowledges() {
    let mut e = Engine::new(EngineConfig::default());
    let (mut p, mut s) = pair(1);
    // The primary acknowledges 100 bytes of client data that the secondary has not.
    let pa = p.ack_to(5100);
    e.handle_frame(ms(0), Side::Primary, pa.clone());
    let sa = s.ack_to(5050);
    e.handle_frame(ms(0), Side::Secondary, sa);
    assert!(drain(&mut e).released.is_empty());
    let sa = s.ack_to(5100);
    e.handle_frame(ms(1), Side::Secondary, sa);
    assert_eq!(drain(&mut e).released, vec![pa]);

    let mut off = Engine::new(EngineConfig {
        ack_gate: false,
        ..EngineConfig::default()
    });
    let pa = p.ack_to(5200);
    off.handle_frame(ms(0), Side::Primary, pa.clone());
    assert_eq!(
        drain(&mut off).released,
        vec![pa],
        "pure ACKs pass without the gate"
    );
}

#[test]
fn slow_secondary_times_out_into_one_checkpoint() {
    let cfg = EngineConfig::default();
    let mut e = Engine::new(cfg.clone());
    let (mut p, _) = pair(1);
    let f = p.data(b"abc");
    e.handle_frame(ms(0), Side::Primary, f.clone());
    assert_eq!(e.poll_timeout(), Some(ms(3000)));
    e.handle_timeout(ms(2999));
    assert!(drain(&mut e).requests.is_empty());
    e.handle_timeout(ms(3000));
    let d = drain(&mut e);
    assert_eq!(d.requests.len(), 1);
    assert!(matches!(
        d.requests[0].cause.kind,
        DivergenceKind::SecondaryTooSlow { .. }
    ));
    assert!(d.released.is_empty());
    e.handle_checkpoint_done(ms(3100));
    assert_eq!(drain(&mut e).released, vec![f]);
}

#[test]
fn secondary_output_the_primary_never_matches_times_out() {
    let mut e = Engine::new(EngineConfig::default());
    let (_, mut s) = pair(1);
    e.handle_frame(ms(0), Side::Secondary, s.data(b"extra"));
    e.handle_timeout(ms(3000));
    let d = drain(&mut e);
    assert_eq!(d.requests.len(), 1);
    assert_eq!(
        d.requests[0].cause.reason(),
        CheckpointReason::SecondaryUnmatched
    );
}

#[test]
fn divergences_are_coalesced_and_rate_limited() {
    let cfg = EngineConfig {
        checkpoint_min_interval: Duration::from_millis(100),
        ..Default::default()
    };
    let mut e = Engine::new(cfg);
    for n in 0..5 {
        let (mut p, mut s) = pair(n);
        e.handle_frame(ms(0), Side::Primary, p.data(b"aaaa"));
        e.handle_frame(ms(0), Side::Secondary, s.data(b"bbbb"));
    }
    let d = drain(&mut e);
    assert_eq!(d.divergences.len(), 5, "every divergence is reported");
    assert_eq!(d.requests.len(), 1, "one checkpoint for the burst");
    assert_eq!(e.stats().checkpoints_coalesced, 4);
    e.handle_checkpoint_done(ms(10));
    assert_eq!(drain(&mut e).released.len(), 5);

    // A divergence 20 ms after the checkpoint waits for the 100 ms interval.
    let (mut p, mut s) = pair(99);
    e.handle_frame(ms(30), Side::Primary, p.data(b"x"));
    e.handle_frame(ms(30), Side::Secondary, s.data(b"y"));
    assert!(drain(&mut e).requests.is_empty());
    assert_eq!(e.poll_timeout(), Some(ms(110)));
    e.handle_timeout(ms(110));
    let d = drain(&mut e);
    assert_eq!(d.requests.len(), 1);
    assert_eq!(d.requests[0].id, 2);
}

#[test]
fn fin_against_rst_is_a_close_mismatch() {
    let mut e = Engine::new(EngineConfig::default());
    let (mut p, mut s) = pair(1);
    e.handle_frame(ms(0), Side::Primary, p.data(b"bye"));
    e.handle_frame(ms(0), Side::Secondary, s.data(b"bye"));
    e.handle_frame(ms(0), Side::Primary, p.fin());
    e.handle_frame(ms(0), Side::Secondary, s.rst());
    let d = drain(&mut e);
    assert_eq!(d.released.len(), 1);
    assert!(matches!(
        d.divergences[0].kind,
        DivergenceKind::CloseMismatch {
            primary: Close::Fin(3),
            secondary: Close::Rst(3)
        }
    ));
}

#[test]
fn matching_fin_is_released_and_connection_expires() {
    let mut e = Engine::new(EngineConfig::default());
    let (mut p, mut s) = pair(1);
    let pf = p.fin();
    e.handle_frame(ms(0), Side::Primary, pf.clone());
    assert!(
        drain(&mut e).released.is_empty(),
        "FIN waits for the secondary's FIN"
    );
    e.handle_frame(ms(0), Side::Secondary, s.fin());
    assert_eq!(drain(&mut e).released, vec![pf]);
    // Client's FIN seen: the connection is closed both ways and leaves after the linger.
    let client_fin = crate::sim::tcp_frame(
        &p.addrs,
        Towards::Vm,
        &crate::sim::Segment {
            seq: 5000,
            ack: 1002,
            flags: TcpFlags::FIN.union(TcpFlags::ACK),
            ..Default::default()
        },
    );
    e.observe_client_frame(ms(0), &client_fin);
    assert_eq!(e.stats().connections_active, 1);
    e.handle_timeout(ms(5000));
    assert_eq!(e.stats().connections_active, 0);
    assert_eq!(e.stats().connections_expired, 1);
}

#[test]
fn handshake_passive_open_with_own_isns() {
    // The secondary's SYN-ACK carries its own ISN (the rewriter cannot know the offset
    // yet); its later data has been rewritten into the primary's space.
    let mut e = Engine::new(EngineConfig::default());
    let a = FlowAddrs::v4(7);
    let mut p = TcpSender::new(a, 0xffff_fff0, 77);
    let mut s = TcpSender::new(a, 12345, 77);
    let psa = p.syn_ack();
    e.handle_frame(ms(0), Side::Primary, psa.clone());
    e.handle_frame(ms(0), Side::Secondary, s.syn_ack());
    assert_eq!(drain(&mut e).released, vec![psa]);
    // Rewritten secondary: same numbers as the primary, across the 2^32 wrap.
    let mut s = p.clone();
    let data = stream(100);
    let pf = p.segments(&data, &[10]);
    for f in s.segments(&data, &[33]) {
        e.handle_frame(ms(1), Side::Secondary, f);
    }
    for f in &pf {
        e.handle_frame(ms(1), Side::Primary, f.clone());
    }
    let d = drain(&mut e);
    assert_eq!(d.released, pf);
    assert!(d.divergences.is_empty());
}

#[test]
fn syn_against_syn_ack_diverges() {
    let mut e = Engine::new(EngineConfig::default());
    let a = FlowAddrs::v4(7);
    let mut p = TcpSender::new(a, 1, 77);
    let mut s = TcpSender::new(a, 2, 77);
    e.handle_frame(ms(0), Side::Primary, p.syn_ack());
    e.handle_frame(ms(0), Side::Secondary, s.syn());
    let d = drain(&mut e);
    assert!(matches!(
        d.divergences[0].kind,
        DivergenceKind::Handshake { .. }
    ));
}

#[test]
fn per_side_isn_alignment_for_unrewritten_streams() {
    let cfg = EngineConfig {
        seq_alignment: SeqAlignment::PerSideIsn,
        ..Default::default()
    };
    let mut e = Engine::new(cfg);
    let a = FlowAddrs::v4(3);
    let mut p = TcpSender::new(a, 100, 9);
    let mut s = TcpSender::new(a, 4_000_000_000, 9);
    e.handle_frame(ms(0), Side::Primary, p.syn_ack());
    e.handle_frame(ms(0), Side::Secondary, s.syn_ack());
    let data = stream(4000);
    for f in p.segments(&data, &[1448]) {
        e.handle_frame(ms(0), Side::Primary, f);
    }
    for f in s.segments(&data, &[999]) {
        e.handle_frame(ms(0), Side::Secondary, f);
    }
    let d = drain(&mut e);
    assert_eq!(d.released.len(), 4);
    assert!(d.divergences.is_empty());
}

#[test]
fn datagrams_match_in_fifo_order_and_diverge_by_index() {
    let mut e = Engine::new(EngineConfig::default());
    let a = FlowAddrs::v6(1);
    let frames: Vec<Frame> = (0..3)
        .map(|i| udp_frame(&a, Towards::Client, &[i; 40]))
        .collect();
    for f in &frames {
        e.handle_frame(ms(0), Side::Primary, f.clone());
    }
    assert!(drain(&mut e).released.is_empty());
    e.handle_frame(ms(0), Side::Secondary, frames[0].clone());
    e.handle_frame(ms(0), Side::Secondary, frames[1].clone());
    assert_eq!(drain(&mut e).released, frames[..2].to_vec());
    e.handle_frame(
        ms(0),
        Side::Secondary,
        udp_frame(&a, Towards::Client, &[9; 40]),
    );
    let d = drain(&mut e);
    assert!(matches!(
        d.divergences[0].kind,
        DivergenceKind::Datagram {
            index: 2,
            primary_len: 40,
            secondary_len: 40,
            first_difference: Some(0)
        }
    ));
}

#[test]
fn vlan_and_ipv6_tcp_are_compared_not_passed() {
    let mut e = Engine::new(EngineConfig::default());
    let mut a = FlowAddrs::v6(4);
    a.vlan = Some(100);
    let mut p = TcpSender::new(a, 1, 1);
    let mut s = TcpSender::new(a, 1, 1);
    e.handle_frame(ms(0), Side::Primary, p.data(b"same?"));
    assert!(
        drain(&mut e).released.is_empty(),
        "not released before comparison"
    );
    e.handle_frame(ms(0), Side::Secondary, s.data(b"nope!"));
    assert_eq!(drain(&mut e).divergences.len(), 1);
}

#[test]
fn table_cap_evicts_quiescent_connections_first() {
    let cfg = EngineConfig {
        max_connections: 2,
        ..Default::default()
    };
    let mut e = Engine::new(cfg);
    for n in 0..2 {
        let (mut p, mut s) = pair(n);
        e.handle_frame(ms(0), Side::Primary, p.data(b"x"));
        e.handle_frame(ms(0), Side::Secondary, s.data(b"x"));
    }
    let (mut p, mut s) = pair(2);
    e.handle_frame(ms(1), Side::Primary, p.data(b"y"));
    assert_eq!(e.stats().connections_evicted, 1);
    // Now two connections, one of them holding a frame; fill the other too.
    let (mut p3, _) = pair(3);
    e.handle_frame(ms(1), Side::Primary, p3.data(b"z"));
    assert_eq!(e.stats().connections_evicted, 2);
    // Both tracked connections hold frames: a new one cannot be tracked.
    let (mut p4, _) = pair(4);
    let f4 = p4.data(b"w");
    e.handle_frame(ms(2), Side::Primary, f4.clone());
    let d = drain(&mut e);
    assert_eq!(d.limits, vec![Limit::Connections]);
    assert_eq!(d.requests.len(), 1);
    e.handle_frame(ms(2), Side::Secondary, s.data(b"y"));
    e.handle_checkpoint_done(ms(3));
    let d = drain(&mut e);
    assert!(
        d.released.contains(&f4),
        "the untracked primary frame is released, not lost"
    );
}

#[test]
fn held_frame_cap_asks_for_a_checkpoint_and_counts_the_drop() {
    let cfg = EngineConfig {
        max_held_frames_per_conn: 3,
        ..Default::default()
    };
    let mut e = Engine::new(cfg);
    let (mut p, _) = pair(1);
    for _ in 0..5 {
        e.handle_frame(ms(0), Side::Primary, p.data(b"0123456789"));
    }
    let d = drain(&mut e);
    assert_eq!(d.limits, vec![Limit::HeldFramesPerConn]);
    assert_eq!(d.requests.len(), 1);
    assert_eq!(e.stats().dropped(Side::Primary, DropReason::QueueFull), 2);
    e.handle_checkpoint_done(ms(1));
    assert_eq!(drain(&mut e).released.len(), 3);
}

#[test]
fn total_memory_cap_is_enforced() {
    let cfg = EngineConfig {
        max_total_bytes: 4000,
        ..Default::default()
    };
    let mut e = Engine::new(cfg);
    for n in 0..10 {
        let (mut p, _) = pair(n);
        e.handle_frame(ms(0), Side::Primary, p.data(&[1; 1000]));
    }
    assert!(e.stats().held_bytes <= 4000);
    let d = drain(&mut e);
    assert!(d.limits.contains(&Limit::TotalBytes));
    assert_eq!(d.requests.len(), 1);
}

#[test]
fn epoch_separates_before_and_after_a_checkpoint() {
    let mut e = Engine::new(EngineConfig::default());
    let (mut p, mut s) = pair(1);
    // The primary sent 10 bytes the secondary never matched; a checkpoint came.
    let f = p.data(b"0123456789");
    e.handle_frame(ms(0), Side::Primary, f.clone());
    let late = s.data(b"XXXXXXXXXX");
    e.handle_checkpoint_done(ms(1));
    assert_eq!(drain(&mut e).released, vec![f]);
    // The secondary's pre-checkpoint output arriving late is stale, never compared.
    e.handle_frame(ms(2), Side::Secondary, late);
    // After the checkpoint the secondary continues from the primary's position.
    let mut s = p.clone();
    let pf = p.data(b"after");
    e.handle_frame(ms(2), Side::Primary, pf.clone());
    e.handle_frame(ms(2), Side::Secondary, s.data(b"after"));
    let d = drain(&mut e);
    assert_eq!(d.released, vec![pf]);
    assert!(d.divergences.is_empty());
}

#[test]
fn pass_through_releases_unchecked_until_a_checkpoint() {
    let mut e = Engine::new(EngineConfig::default());
    let (mut p, mut s) = pair(1);
    let held = p.data(b"held");
    e.handle_frame(ms(0), Side::Primary, held.clone());
    e.set_pass_through(true);
    assert_eq!(drain(&mut e).released, vec![held]);
    let f = p.data(b"free");
    e.handle_frame(ms(1), Side::Primary, f.clone());
    assert_eq!(drain(&mut e).released, vec![f]);
    e.set_pass_through(false);
    assert_eq!(e.mode(), Mode::AwaitingCheckpoint);
    let f = p.data(b"still free");
    e.handle_frame(ms(1), Side::Primary, f.clone());
    assert_eq!(drain(&mut e).released, vec![f]);
    e.handle_checkpoint_done(ms(2));
    assert_eq!(e.mode(), Mode::Compare);
    let mut s2 = p.clone();
    let f = p.data(b"compared");
    e.handle_frame(ms(3), Side::Primary, f.clone());
    assert!(drain(&mut e).released.is_empty());
    e.handle_frame(ms(3), Side::Secondary, s2.data(b"compared"));
    assert_eq!(drain(&mut e).released, vec![f]);
    let _ = s.data(b"");
}

#[test]
fn unparsable_frames_are_compared_raw() {
    let mut e = Engine::new(EngineConfig::default());
    let junk = Frame::ethernet(vec![0xde, 0xad, 0xbe, 0xef]);
    e.handle_frame(ms(0), Side::Primary, junk.clone());
    assert!(drain(&mut e).released.is_empty());
    e.handle_frame(
        ms(0),
        Side::Secondary,
        Frame::ethernet(vec![0xde, 0xad, 0xbe, 0xee]),
    );
    let d = drain(&mut e);
    assert_eq!(d.divergences.len(), 1);
}

#[test]
fn window_clamp_rewrites_window_and_checksum() {
    let cfg = EngineConfig {
        clamp_window: true,
        ..Default::default()
    };
    let mut e = Engine::new(cfg);
    let (mut p, mut s) = pair(1);
    s.window = 1000;
    e.handle_frame(ms(0), Side::Primary, p.data(b"abc"));
    e.handle_frame(ms(0), Side::Secondary, s.data(b"abc"));
    let d = drain(&mut e);
    let out = &d.released[0];
    let c = crate::classify::classify(out.ethernet_bytes());
    assert_eq!(c.tcp().unwrap().window, 1000);
    let sliced = etherparse::SlicedPacket::from_ethernet(out.ethernet_bytes()).unwrap();
    let (Some(etherparse::NetSlice::Ipv4(ip)), Some(etherparse::TransportSlice::Tcp(tcp))) =
        (&sliced.net, &sliced.transport)
    else {
        panic!()
    };
    let want = tcp
        .calc_checksum_ipv4(ip.header().source(), ip.header().destination())
        .unwrap();
    assert_eq!(tcp.checksum(), want);
    assert_eq!(e.stats().window_clamped, 1);
}

#[test]
fn final_ack_after_fin_is_released() {
    // The VM closes first; its last ACK (for the client's FIN) carries seq = FIN + 1.
    let mut e = Engine::new(EngineConfig::default());
    let (mut p, mut s) = pair(1);
    let frames = [p.data(b"bye"), p.fin(), p.ack_to(5001)];
    for f in &frames {
        e.handle_frame(ms(0), Side::Primary, f.clone());
    }
    for f in [s.data(b"bye"), s.fin(), s.ack_to(5001)] {
        e.handle_frame(ms(0), Side::Secondary, f);
    }
    let d = drain(&mut e);
    assert_eq!(d.released, frames.to_vec());
    assert_eq!(e.stats().held_frames, 0);
    e.handle_timeout(ms(3000));
    assert!(
        drain(&mut e).requests.is_empty(),
        "nothing left to time out"
    );
}

#[test]
fn quiet_connection_is_trimmed_and_keeps_working() {
    let mut e = Engine::new(EngineConfig::default());
    let (mut p, mut s) = pair(1);
    let data = stream(6000);
    // Three frames held at once: the held queue spills beyond its inline slot.
    let pf = p.segments(&data, &[1000]);
    let sf = s.segments(&data, &[1500]);
    for f in &pf[..3] {
        e.handle_frame(ms(0), Side::Primary, f.clone());
    }
    e.handle_frame(ms(0), Side::Secondary, sf[0].clone());
    e.handle_frame(ms(0), Side::Secondary, sf[1].clone());
    assert_eq!(drain(&mut e).released, pf[..3].to_vec());
    let slot = e.table.slots().next().unwrap();
    // The timer armed while frames were held comes due while the connection is quiet:
    // its buffers are given back, and nothing else happens.
    assert_eq!(e.poll_timeout(), Some(ms(3000)));
    e.handle_timeout(ms(3000));
    let d = drain(&mut e);
    assert!(d.released.is_empty() && d.requests.is_empty() && d.divergences.is_empty());
    {
        let conn = e.table.get_mut(slot).unwrap();
        assert!(conn.is_quiescent());
        let tcp = conn.tcp().unwrap();
        assert_eq!(tcp.streams[0].heap_bytes() + tcp.streams[1].heap_bytes(), 0);
    }
    assert_eq!(e.stats().connections_active, 1);
    // The stream goes on where it was.
    for f in &pf[3..] {
        e.handle_frame(ms(3001), Side::Primary, f.clone());
    }
    for f in &sf[2..] {
        e.handle_frame(ms(3001), Side::Secondary, f.clone());
    }
    let d = drain(&mut e);
    assert_eq!(d.released, pf[3..].to_vec());
    assert!(d.requests.is_empty() && d.divergences.is_empty());
    assert_eq!(e.stats().bytes_matched, 6000);
}

fn ntp_addrs(n: u32) -> FlowAddrs {
    FlowAddrs {
        vm_port: 123,
        ..FlowAddrs::v4(n)
    }
}

#[test]
fn pass_policy_releases_primary_unchecked_and_discards_secondary() {
    let rule = FlowRule {
        matcher: "udp:123".parse().unwrap(),
        policy: FlowPolicy::Pass,
    };
    let mut e = Engine::new(EngineConfig {
        flow_rules: vec![rule],
        ..EngineConfig::default()
    });
    let a = ntp_addrs(1);
    let p = udp_frame(&a, Towards::Client, b"time=1111");
    let s = udp_frame(&a, Towards::Client, b"time=2222");
    let p_len = p.data.len() as u64;
    e.handle_frame(ms(0), Side::Primary, p.clone());
    assert_eq!(drain(&mut e).released, vec![p], "released without waiting");
    e.handle_frame(ms(0), Side::Secondary, s);
    let d = drain(&mut e);
    assert!(d.released.is_empty() && d.divergences.is_empty() && d.requests.is_empty());
    e.handle_timeout(ms(60_000));
    assert!(
        drain(&mut e).requests.is_empty(),
        "nothing held, nothing times out"
    );
    let st = e.stats();
    assert_eq!(st.released_by_policy, 1);
    assert_eq!(st.dropped(Side::Secondary, DropReason::Policy), 1);
    assert_eq!(st.connections_active, 0, "passed flows are not tracked");
    assert_eq!(st.held_frames, 0);
    let r = e.flow_policies()[0];
    assert_eq!((r.released_frames, r.discarded_frames), (1, 1));
    assert_eq!(r.released_bytes, p_len);

    // Other flows are still compared: a different reply on port 80 is a divergence.
    let web = FlowAddrs::v4(2);
    e.handle_frame(ms(1), Side::Primary, udp_frame(&web, Towards::Client, b"a"));
    e.handle_frame(
        ms(1),
        Side::Secondary,
        udp_frame(&web, Towards::Client, b"b"),
    );
    assert_eq!(drain(&mut e).requests.len(), 1);
}

#[test]
fn setting_pass_releases_what_the_flow_holds_and_compare_restores_comparing() {
    let mut e = Engine::new(EngineConfig::default());
    let a = ntp_addrs(1);
    let other = FlowAddrs::v4(9);
    let held: Vec<Frame> = (0..3u8)
        .map(|i| udp_frame(&a, Towards::Client, &[i; 30]))
        .collect();
    e.handle_frame(ms(0), Side::Primary, held[0].clone());
    e.handle_frame(
        ms(0),
        Side::Primary,
        udp_frame(&other, Towards::Client, b"x"),
    );
    e.handle_frame(ms(0), Side::Primary, held[1].clone());
    e.handle_frame(ms(0), Side::Primary, held[2].clone());
    assert!(drain(&mut e).released.is_empty());
    assert_eq!(e.stats().held_frames, 4);

    let before = e
        .set_flow_policy("udp:10.0.0.1:123".parse().unwrap(), FlowPolicy::Pass)
        .unwrap();
    assert_eq!(before, FlowPolicy::Compare);
    assert_eq!(
        drain(&mut e).released,
        held,
        "held frames released in order"
    );
    let st = e.stats();
    assert_eq!(st.held_frames, 1, "the other flow still waits");
    assert_eq!(st.connections_active, 1);
    assert_eq!(st.released_by_policy, 3);

    let before = e
        .set_flow_policy("udp:10.0.0.1:123".parse().unwrap(), FlowPolicy::Compare)
        .unwrap();
    assert_eq!(before, FlowPolicy::Pass);
    let f = udp_frame(&a, Towards::Client, b"again");
    e.handle_frame(ms(1), Side::Primary, f.clone());
    assert!(drain(&mut e).released.is_empty(), "compared again: held");
    e.handle_frame(ms(1), Side::Secondary, f.clone());
    assert_eq!(drain(&mut e).released, vec![f]);
}

#[test]
fn pass_policy_on_tcp_port_and_rule_cap() {
    let mut e = Engine::new(EngineConfig {
        max_flow_rules: 1,
        ..EngineConfig::default()
    });
    e.set_flow_policy("tcp:80".parse().unwrap(), FlowPolicy::Pass)
        .unwrap();
    assert_eq!(
        e.set_flow_policy("tcp:81".parse().unwrap(), FlowPolicy::Pass),
        Err(FlowPolicyError::TooManyRules { max: 1 })
    );
    let (mut p, mut s) = pair(1);
    let pf = p.segments(&stream(3000), &[1448]);
    let sf = s.segments(
        &stream(3000).iter().map(|b| !b).collect::<Vec<_>>(),
        &[1000],
    );
    for f in &pf {
        e.handle_frame(ms(0), Side::Primary, f.clone());
    }
    for f in sf {
        e.handle_frame(ms(0), Side::Secondary, f);
    }
    let d = drain(&mut e);
    assert_eq!(d.released, pf);
    assert!(d.divergences.is_empty());
    assert_eq!(e.flow_policies().len(), 1);
}

/// A connection that diverged and then outlived its expiry while no checkpoint came
/// must not make `handle_timeout` spin: its next wake-up lies in the future.
#[test]
fn diverged_connection_past_its_expiry_does_not_spin() {
    let mut e = Engine::new(EngineConfig::default());
    let (mut p, mut s) = pair(1);
    e.handle_frame(ms(1), Side::Primary, p.data(b"aaaa"));
    e.handle_frame(ms(1), Side::Secondary, s.data(b"bbbb"));
    e.handle_frame(ms(2), Side::Primary, p.rst());
    let d = drain(&mut e);
    assert_eq!(d.divergences.len(), 1);
    let later = ms(1) + EngineConfig::default().idle_timeout + Duration::from_secs(1);
    e.handle_timeout(later);
    assert!(
        e.poll_timeout().is_none_or(|t| t > later),
        "{:?}",
        e.poll_timeout()
    );
}

/// A connection whose timer is re-armed on every one of thousands of frames still wakes
/// the engine a bounded number of times and expires exactly once, at its idle expiry.
/// (Guards the timer structure: stale deadlines must not expire or keep anything alive.)
#[test]
fn timers_rearmed_many_times_expire_once_at_the_end() {
    let cfg = EngineConfig::default();
    let mut e = Engine::new(cfg.clone());
    let (mut p, mut s) = pair(1);
    for i in 0..5000u64 {
        e.handle_frame(ms(i), Side::Primary, p.data(b"x"));
        e.handle_frame(ms(i), Side::Secondary, s.data(b"x"));
    }
    assert_eq!(drain(&mut e).released.len(), 5000);
    let expiry = ms(4999) + cfg.idle_timeout;
    let mut wakes = 0;
    while let Some(at) = e.poll_timeout() {
        wakes += 1;
        assert!(wakes <= 10_000, "timer wakes do not end");
        e.handle_timeout(at);
        if e.stats().connections_active == 0 {
            assert_eq!(at, expiry);
            break;
        }
        assert!(at < expiry, "woken at {at:?}, after the expiry {expiry:?}");
    }
    let stats = e.stats();
    assert_eq!(stats.connections_expired, 1);
    assert_eq!(stats.checkpoints_total(), 0);
    assert!(drain(&mut e).divergences.is_empty());
    assert_eq!(e.poll_timeout(), None);
}

/// A deadline far beyond any wheel span or heap horizon (ten days) is kept exactly.
#[test]
fn far_future_deadline_fires_exactly_then() {
    let cfg = EngineConfig {
        idle_timeout: Duration::from_secs(10 * 24 * 3600),
        ..EngineConfig::default()
    };
    let mut e = Engine::new(cfg.clone());
    let (mut p, mut s) = pair(1);
    e.handle_frame(ms(5), Side::Primary, p.data(b"hello"));
    e.handle_frame(ms(5), Side::Secondary, s.data(b"hello"));
    let expiry = ms(5) + cfg.idle_timeout;
    // The compare deadline armed by the held frame may wake it first; then only the expiry.
    while let Some(at) = e.poll_timeout() {
        if at == expiry {
            break;
        }
        assert!(at < expiry);
        e.handle_timeout(at);
        assert_eq!(e.stats().connections_active, 1);
    }
    assert_eq!(e.poll_timeout(), Some(expiry));
    e.handle_timeout(Instant::from_micros(expiry.as_micros() - 1));
    assert_eq!(e.stats().connections_active, 1);
    e.handle_timeout(expiry);
    assert_eq!(e.stats().connections_active, 0);
    assert_eq!(e.poll_timeout(), None);
}
