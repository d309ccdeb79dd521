//! Property tests of the compare engine on its public API: random byte streams,
//! random segmentation, reordering and duplication on each side.

use colo_core::engine::{DivergenceKind, Engine, EngineConfig, Output, SeqAlignment};
use colo_core::sim::{FlowAddrs, TcpSender, Towards, udp_frame};
use colo_core::{Frame, Instant, Side};
use proptest::prelude::*;

/// Cut `data` at the given cut points into segments, send them with `sender`.
fn segment(sender: &mut TcpSender, data: &[u8], cuts: &[usize]) -> Vec<Frame> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
    points.push(0);
    points.push(data.len());
    points.sort_unstable();
    points.dedup();
    points
        .windows(2)
        .map(|w| sender.data(&data[w[0]..w[1]]))
        .collect()
}

/// Reorder `frames` locally (each frame moves at most `spread` places) and duplicate
/// some, as a real network path or a retransmitting stack would.
fn shuffle(frames: Vec<Frame>, swaps: &[(usize, usize)], dups: &[usize]) -> Vec<Frame> {
    let mut out = frames;
    if out.len() > 1 {
        for &(a, d) in swaps {
            let a = a % out.len();
            let b = (a + 1 + d % 4).min(out.len() - 1);
            out.swap(a, b);
        }
    }
    for &d in dups {
        if !out.is_empty() {
            let i = d % out.len();
            let f = out[i].clone();
            out.insert((i + 3).min(out.len()), f);
        }
    }
    out
}

/// The sender's SYN-ACK followed by `frames` (built from a clone of the sender).
/// Live connections always show the engine their handshake; without one the stream
/// origin is learned from the first segment seen (see docs/architecture.md).
fn handshake_then(syn_ack: Frame, frames: Vec<Frame>) -> Vec<Frame> {
    let mut out = vec![syn_ack];
    out.extend(frames);
    out
}

#[derive(Default)]
struct Run {
    released: Vec<Frame>,
    divergences: Vec<DivergenceKind>,
    requests: usize,
}

fn drain(e: &mut Engine, run: &mut Run) {
    while let Some(o) = e.poll_output() {
        match o {
            Output::Release(f) => run.released.push(f),
            Output::Divergence(d) => run.divergences.push(d.kind),
            Output::RequestCheckpoint(_) => run.requests += 1,
            Output::LimitReached { .. } => {}
        }
    }
}

/// Feed both sides, interleaving them by the `order` bits.
fn feed(primary: &[Frame], secondary: &[Frame], order: &[bool]) -> (Engine, Run) {
    feed_with(EngineConfig::default(), primary, secondary, order)
}

fn feed_with(
    config: EngineConfig,
    primary: &[Frame],
    secondary: &[Frame],
    order: &[bool],
) -> (Engine, Run) {
    let mut e = Engine::new(config);
    let mut run = Run::default();
    let (mut i, mut j) = (0, 0);
    let mut k = 0;
    while i < primary.len() || j < secondary.len() {
        let take_primary =
            j >= secondary.len() || (i < primary.len() && order.get(k).copied().unwrap_or(true));
        k += 1;
        let now = Instant::from_micros(k as u64);
        if take_primary {
            e.handle_frame(now, Side::Primary, primary[i].clone());
            i += 1;
        } else {
            e.handle_frame(now, Side::Secondary, secondary[j].clone());
            j += 1;
        }
        drain(&mut e, &mut run);
    }
    (e, run)
}

fn stream() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 1..6000)
}

fn cuts() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(any::<usize>(), 0..12)
}

fn swaps() -> impl Strategy<Value = Vec<(usize, usize)>> {
    prop::collection::vec((any::<usize>(), any::<usize>()), 0..6)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// The same stream, cut differently on each side, reordered and duplicated:
    /// every primary frame is released exactly once, in the primary's own order, and
    /// no checkpoint is asked for.
    #[test]
    fn identical_streams_release_every_frame_once(
        data in stream(), pcuts in cuts(), scuts in cuts(),
        pswaps in swaps(), sswaps in swaps(),
        pdups in prop::collection::vec(any::<usize>(), 0..3),
        sdups in prop::collection::vec(any::<usize>(), 0..3),
        isn in any::<u32>(),
        order in prop::collection::vec(any::<bool>(), 0..64),
    ) {
        let addrs = FlowAddrs::v4(1);
        let mut p = TcpSender::new(addrs, isn, 1);
        let mut s = TcpSender::new(addrs, isn, 1);
        let pf = handshake_then(p.syn_ack(), shuffle(segment(&mut p, &data, &pcuts), &pswaps, &pdups));
        let sf = handshake_then(s.syn_ack(), shuffle(segment(&mut s, &data, &scuts), &sswaps, &sdups));
        let (e, run) = feed(&pf, &sf, &order);
        prop_assert!(run.divergences.is_empty(), "unexpected divergence {:?}", run.divergences);
        prop_assert_eq!(run.requests, 0);
        prop_assert_eq!(&run.released, &pf);
        prop_assert_eq!(e.stats().bytes_matched, data.len() as u64);
    }

    /// One flipped byte anywhere in the secondary's stream: exactly one divergence,
    /// at that offset, and one checkpoint request.
    #[test]
    fn one_flipped_byte_is_one_divergence_at_its_offset(
        data in stream(), flip in any::<usize>(), mask in 1u8..,
        pcuts in cuts(), scuts in cuts(), sswaps in swaps(),
        order in prop::collection::vec(any::<bool>(), 0..64),
    ) {
        let at = flip % data.len();
        let mut other = data.clone();
        other[at] ^= mask;
        let addrs = FlowAddrs::v4(2);
        let mut p = TcpSender::new(addrs, 7, 1);
        let mut s = TcpSender::new(addrs, 7, 1);
        let pf = handshake_then(p.syn_ack(), segment(&mut p, &data, &pcuts));
        let sf = handshake_then(s.syn_ack(), shuffle(segment(&mut s, &other, &scuts), &sswaps, &[]));
        let (_, run) = feed(&pf, &sf, &order);
        prop_assert_eq!(run.divergences.len(), 1);
        prop_assert_eq!(run.requests, 1);
        match &run.divergences[0] {
            DivergenceKind::Payload { offset, primary, secondary } => {
                prop_assert_eq!(*offset, at as u64);
                prop_assert_eq!(primary[0], data[at]);
                prop_assert_eq!(secondary[0], other[at]);
            }
            k => prop_assert!(false, "unexpected divergence {:?}", k),
        }
        // Only frames entirely before the difference were released.
        for f in &run.released {
            prop_assert!(pf.contains(f));
        }
    }

    /// Unrewritten streams (each VM with its own ISN, as in two raw captures) align
    /// by their SYNs in `PerSideIsn` mode, across the 2^32 wrap.
    #[test]
    fn per_side_isn_streams_align(
        data in stream(), pcuts in cuts(), scuts in cuts(), sswaps in swaps(),
        pisn in any::<u32>(), sisn in any::<u32>(),
        order in prop::collection::vec(any::<bool>(), 0..64),
    ) {
        let addrs = FlowAddrs::v6(5);
        let mut p = TcpSender::new(addrs, pisn, 1);
        let mut s = TcpSender::new(addrs, sisn, 1);
        let pf = handshake_then(p.syn_ack(), segment(&mut p, &data, &pcuts));
        let sf = handshake_then(s.syn_ack(), shuffle(segment(&mut s, &data, &scuts), &sswaps, &[]));
        let cfg = EngineConfig { seq_alignment: SeqAlignment::PerSideIsn, ..EngineConfig::default() };
        let (e, run) = feed_with(cfg, &pf, &sf, &order);
        prop_assert!(run.divergences.is_empty(), "unexpected divergence {:?}", run.divergences);
        prop_assert_eq!(&run.released, &pf);
        prop_assert_eq!(e.stats().bytes_matched, data.len() as u64);
    }

    /// Datagrams: identical sequences match one for one, whatever the interleaving.
    #[test]
    fn identical_datagrams_match(
        payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 1..20),
        order in prop::collection::vec(any::<bool>(), 0..64),
    ) {
        let addrs = FlowAddrs::v4(3);
        let frames: Vec<Frame> = payloads.iter().map(|p| udp_frame(&addrs, Towards::Client, p)).collect();
        let (e, run) = feed(&frames, &frames, &order);
        prop_assert_eq!(run.requests, 0);
        prop_assert_eq!(&run.released, &frames);
        prop_assert_eq!(e.stats().datagrams_matched, frames.len() as u64);
    }

    /// Arbitrary bytes as frames on both sides never panic, and every primary frame
    /// is either released or still accounted for after a checkpoint flush.
    #[test]
    fn garbage_never_panics_and_nothing_is_lost(
        frames in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..120), 0..30),
        order in prop::collection::vec(any::<bool>(), 0..64),
    ) {
        let frames: Vec<Frame> = frames.into_iter().map(Frame::ethernet).collect();
        let (mut e, mut run) = feed(&frames, &frames[..frames.len() / 2], &order);
        e.handle_checkpoint_done(Instant::from_millis(10_000));
        drain(&mut e, &mut run);
        prop_assert_eq!(run.released.len(), frames.len());
    }
}
