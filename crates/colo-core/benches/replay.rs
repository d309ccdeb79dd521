//! Criterion benchmark of the per-frame work `colo-proxy replay` does on two captures
//! of identical streams, without the file reading: classify each frame once, pass the
//! secondary's frames through the [`Rewriter`] (`FromSecondary`) and the primary
//! capture's client frames through it (`ToSecondary`), feed the engine with
//! [`Engine::handle_classified`] and drain its output.
//!
//! - `identical_tcp_1448`: one connection per iteration: handshake (client SYN, each
//!   VM's SYN-ACK with its own ISN and TCP timestamps, client ACK), 1448-byte segments
//!   from both VMs merged in time order (primary segment *i*, then secondary segment
//!   *i*), a client ACK every 8 segments, FINs. Throughput is counted in bytes of both
//!   captures' frames (VM and client frames, both sides), as the replay's GB/s figure
//!   is.
//!
//! Run with `cargo bench -p colo-core --bench replay`; results are recorded in
//! `docs/performance.md` next to `scripts/replay-bench.sh`, which times the whole
//! `colo-proxy replay` (file reading included).

use std::hint::black_box;

use colo_core::classify::{TcpFlags, classify};
use colo_core::engine::{Engine, EngineConfig, Output};
use colo_core::rewrite::{Rewriter, Verdict};
use colo_core::sim::{FlowAddrs, Segment, TcpSender, Towards, tcp_frame};
use colo_core::{Frame, Instant, Side};
use criterion::{BatchSize, Criterion, Throughput};

const SEGMENT: usize = 1448;
const SEGMENTS: usize = 2048;

/// Which capture a frame comes from and whether it is the VM's output.
#[derive(Clone, Copy)]
enum Source {
    PrimaryVm,
    PrimaryClient,
    SecondaryVm,
}

fn capture_frames() -> Vec<(Source, Frame)> {
    let a = FlowAddrs::v4(1);
    let payload: Vec<u8> = (0..SEGMENT * SEGMENTS)
        .map(|i| (i * 131 + 7) as u8)
        .collect();
    let client_isn = 5000u32;
    let client = |seq: u32, ack: u32, flags: TcpFlags| {
        tcp_frame(
            &a,
            Towards::Vm,
            &Segment {
                seq,
                ack,
                flags,
                timestamps: Some((1, 0)),
                ..Segment::default()
            },
        )
    };
    let mut p = TcpSender::new(a, 0x1000_0000, client_isn + 1);
    let mut s = TcpSender::new(a, 0x7abc_0000, client_isn + 1);
    p.ts_base = Some(100);
    s.ts_base = Some(987_654);
    let mut out = vec![
        (Source::PrimaryClient, client(client_isn, 0, TcpFlags::SYN)),
        (Source::PrimaryVm, p.syn_ack()),
        (Source::SecondaryVm, s.syn_ack()),
        (
            Source::PrimaryClient,
            client(client_isn + 1, p.next_seq, TcpFlags::ACK),
        ),
    ];
    for (i, chunk) in payload.chunks(SEGMENT).enumerate() {
        out.push((Source::PrimaryVm, p.data(chunk)));
        out.push((Source::SecondaryVm, s.data(chunk)));
        if i % 8 == 7 {
            out.push((
                Source::PrimaryClient,
                client(client_isn + 1, p.next_seq, TcpFlags::ACK),
            ));
        }
    }
    out.push((Source::PrimaryVm, p.fin()));
    out.push((Source::SecondaryVm, s.fin()));
    out
}

/// What the replay does per frame. Returns the bytes matched.
fn replay(frames: Vec<(Source, Frame)>) -> u64 {
    let mut engine = Engine::new(EngineConfig::default());
    let mut rewriter = Rewriter::default();
    let now = Instant::ZERO;
    for (source, frame) in frames {
        match source {
            Source::PrimaryVm => {
                let c = classify(frame.ethernet_bytes());
                engine.handle_classified(now, Side::Primary, frame, c);
            }
            Source::PrimaryClient => {
                let c = classify(frame.ethernet_bytes());
                engine.observe_client_classified(now, &c);
                let mut eth = frame.data.to_vec();
                let _ = rewriter.rewrite_to_secondary(now, &[], &mut eth);
                while rewriter.poll_to_secondary().is_some() {}
            }
            Source::SecondaryVm => {
                let mut eth = frame.data.to_vec();
                let verdict = rewriter.rewrite_from_secondary(now, &[], &mut eth);
                debug_assert!(!matches!(verdict, Verdict::Drop(_)));
                let c = classify(&eth);
                engine.handle_classified(now, Side::Secondary, Frame::ethernet(eth), c);
            }
        }
        while let Some(out) = engine.poll_output() {
            black_box(matches!(out, Output::Divergence(_)));
        }
    }
    engine.stats().bytes_matched
}

fn bench(c: &mut Criterion) {
    let frames = capture_frames();
    let bytes: u64 = frames.iter().map(|(_, f)| f.data.len() as u64 + 16).sum();
    assert_eq!(
        replay(frames.clone()),
        (SEGMENT * SEGMENTS) as u64,
        "identical streams match completely"
    );
    let mut g = c.benchmark_group("replay");
    g.throughput(Throughput::Bytes(bytes));
    g.sample_size(20);
    g.bench_function("identical_tcp_1448", |b| {
        b.iter_batched(
            || frames.clone(),
            |f| black_box(replay(f)),
            BatchSize::LargeInput,
        );
    });
    g.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
}
