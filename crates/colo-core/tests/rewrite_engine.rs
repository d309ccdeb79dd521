//! The rewriter paired with the compare engine, as on a real secondary host: two
//! simulated VMs with different random ISNs and timestamp clocks send the same
//! random byte stream with random segmentation; the secondary's output goes through
//! the rewriter, the client's ACK through the rewriter to the secondary, and the
//! engine compares. No checkpoint, every primary frame released once; one flipped
//! byte gives exactly one divergence at its offset.

use colo_core::classify::TcpFlags;
use colo_core::engine::{DivergenceKind, Engine, EngineConfig, Output};
use colo_core::rewrite::{Direction, Rewriter, Verdict};
use colo_core::sim::{FlowAddrs, Segment, TcpSender, Towards, tcp_frame};
use colo_core::{Frame, Instant, Side};
use proptest::prelude::*;

struct Outcome {
    released: Vec<Frame>,
    primary: Vec<Frame>,
    divergences: Vec<DivergenceKind>,
    requests: usize,
    matched: u64,
}

#[allow(clippy::too_many_arguments)]
fn run(
    data: &[u8],
    secondary_data: &[u8],
    isn_p: u32,
    isn_s: u32,
    ts_p: u32,
    ts_s: u32,
    psizes: &[usize],
    ssizes: &[usize],
) -> Outcome {
    let addrs = FlowAddrs::v4(42);
    let client_isn = 777_000u32;
    let mut engine = Engine::new(EngineConfig::default());
    let mut rewriter = Rewriter::default();
    let mut now = 0u64;
    let mut tick = || {
        now += 10;
        Instant::from_micros(now)
    };
    let mut p = TcpSender::new(addrs, isn_p, client_isn.wrapping_add(1));
    p.ts_base = Some(ts_p);
    let mut s = TcpSender::new(addrs, isn_s, client_isn.wrapping_add(1));
    s.ts_base = Some(ts_s);

    // The client's SYN reaches both VMs (the secondary's copy through the rewriter).
    let mut syn = tcp_frame(
        &addrs,
        Towards::Vm,
        &Segment {
            seq: client_isn,
            flags: TcpFlags::SYN,
            timestamps: Some((5, 0)),
            ..Default::default()
        },
    );
    assert!(
        rewriter
            .rewrite_frame(tick(), Direction::ToSecondary, &mut syn)
            .forward()
    );

    let mut primary = Vec::new();
    let psa = p.syn_ack();
    primary.push(psa.clone());
    engine.handle_frame(tick(), Side::Primary, psa.clone());
    let mut ssa = s.syn_ack();
    assert!(
        rewriter
            .rewrite_frame(tick(), Direction::FromSecondary, &mut ssa)
            .forward()
    );
    engine.handle_frame(tick(), Side::Secondary, ssa);

    // The client acknowledges the primary's SYN-ACK (echoing its TSval); the rewriter
    // learns both offsets from the copy sent to the secondary.
    let psa_ts = p.ts_base.map(|b| b.wrapping_add(1)).unwrap_or(0);
    let mut ack = tcp_frame(
        &addrs,
        Towards::Vm,
        &Segment {
            seq: client_isn.wrapping_add(1),
            ack: isn_p.wrapping_add(1),
            flags: TcpFlags::ACK,
            timestamps: Some((6, psa_ts)),
            ..Default::default()
        },
    );
    let v = rewriter.rewrite_frame(tick(), Direction::ToSecondary, &mut ack);
    assert!(
        matches!(v, Verdict::Rewritten),
        "client ACK to the secondary: {v:?}"
    );

    let pf = p.segments(data, psizes);
    let sf = s.segments(secondary_data, ssizes);
    let (mut i, mut j) = (0, 0);
    while i < pf.len() || j < sf.len() {
        if i < pf.len() && (j >= sf.len() || i <= j) {
            primary.push(pf[i].clone());
            engine.handle_frame(tick(), Side::Primary, pf[i].clone());
            i += 1;
        } else {
            let mut f = sf[j].clone();
            let v = rewriter.rewrite_frame(tick(), Direction::FromSecondary, &mut f);
            assert!(v.forward(), "secondary data: {v:?}");
            engine.handle_frame(tick(), Side::Secondary, f);
            j += 1;
        }
    }
    let mut out = Outcome {
        released: vec![],
        primary,
        divergences: vec![],
        requests: 0,
        matched: 0,
    };
    while let Some(o) = engine.poll_output() {
        match o {
            Output::Release(f) => out.released.push(f),
            Output::Divergence(d) => out.divergences.push(d.kind),
            Output::RequestCheckpoint(_) => out.requests += 1,
            Output::LimitReached { .. } => {}
        }
    }
    out.matched = engine.stats().bytes_matched;
    out
}

fn sizes() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..2000, 1..6)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn rewritten_streams_match_without_checkpoint(
        data in prop::collection::vec(any::<u8>(), 1..8000),
        isn_p in any::<u32>(), isn_s in any::<u32>(), ts_p in any::<u32>(), ts_s in any::<u32>(),
        psizes in sizes(), ssizes in sizes(),
    ) {
        let o = run(&data, &data, isn_p, isn_s, ts_p, ts_s, &psizes, &ssizes);
        prop_assert!(o.divergences.is_empty(), "{:?}", o.divergences);
        prop_assert_eq!(o.requests, 0);
        prop_assert_eq!(&o.released, &o.primary);
        prop_assert_eq!(o.matched, data.len() as u64);
    }

    #[test]
    fn one_flipped_byte_through_the_rewriter(
        data in prop::collection::vec(any::<u8>(), 1..8000), flip in any::<usize>(), mask in 1u8..,
        isn_p in any::<u32>(), isn_s in any::<u32>(), ts_p in any::<u32>(), ts_s in any::<u32>(),
        psizes in sizes(), ssizes in sizes(),
    ) {
        let at = flip % data.len();
        let mut other = data.clone();
        other[at] ^= mask;
        let o = run(&data, &other, isn_p, isn_s, ts_p, ts_s, &psizes, &ssizes);
        prop_assert_eq!(o.divergences.len(), 1);
        prop_assert_eq!(o.requests, 1);
        match &o.divergences[0] {
            DivergenceKind::Payload { offset, .. } => prop_assert_eq!(*offset, at as u64),
            k => prop_assert!(false, "unexpected divergence {:?}", k),
        }
    }
}
