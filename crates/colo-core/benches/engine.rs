//! Criterion benchmarks of the compare engine alone (no I/O, no framing codec).
//!
//! - `identical_tcp_1448`: throughput of one TCP stream whose primary and secondary
//!   copies are identical (the secondary already rewritten into the primary's sequence
//!   space), 1448-byte segments fed in lockstep (primary frame *i*, then secondary
//!   frame *i*). Throughput is counted in payload bytes of one copy of the stream.
//! - `identical_tcp_1448_lag64`: the same stream, but the secondary runs 64 segments
//!   (about 92 KB) behind the primary, so both sides' bytes are buffered before they
//!   are compared and the primary's frames queue before they are released.
//! - `per_frame_cost/{1,10000,1000000}_conns`: the cost of one matched pair of 64-byte
//!   segments when the table tracks N quiescent connections and the pairs go to a
//!   pseudo-random sequence of them (so table lookups are not cache-hot).
//! - Before the criterion groups, in benchmark mode, the resident memory of 1M idle
//!   connections is printed (bytes per connection; not a criterion measurement).
//!
//! Time inside the engine stays at [`Instant::ZERO`]: nothing expires and no
//! compare timeout fires, so the figures are the steady-state cost of comparing and
//! releasing. `cargo test --all-targets` runs this file in criterion's test mode;
//! there the 1M-connection case and the memory report are skipped.
//!
//! Run with `cargo bench -p colo-core --bench engine`; results are recorded in
//! `docs/performance.md`.

use std::hint::black_box;
use std::time::{Duration, Instant as WallInstant};

use colo_core::engine::{Engine, EngineConfig, Output};
use colo_core::sim::{FlowAddrs, TcpSender};
use colo_core::{Frame, Instant, Side};
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput};

/// Initial sequence number shared by both VMs (the secondary is already rewritten).
const ISN: u32 = 0x1000_0000;
/// The client sequence number both VMs acknowledge.
const CLIENT_ACK: u32 = 0x2000_0000;
/// The engine's clock during the benchmarks.
const NOW: Instant = Instant::ZERO;

/// Segment size of the throughput benchmark: the usual MSS on a 1500-byte MTU with
/// TCP timestamps (the frames built here carry no TCP options).
const SEGMENT: usize = 1448;
/// Segments per stream in the throughput benchmark (about 5.9 MB of payload).
const SEGMENTS: usize = 4096;

/// Payload of each frame in the per-frame benchmark.
const SMALL: usize = 64;
/// Frame pairs pre-built at a time for the per-frame benchmark.
const POOL: usize = 1 << 17;
/// Connection counts of the per-frame benchmark.
const CONNS: [usize; 3] = [1, 10_000, 1_000_000];

/// Deterministic pseudo-random bytes / indices (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        // Bias is irrelevant here (n <= 1M, 64-bit source).
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| (self.next() >> 56) as u8).collect()
    }
}

/// A copy of `frame` in its own allocation, as the secondary's frame would be.
fn copy(frame: &Frame) -> Frame {
    Frame::ethernet(frame.data.to_vec())
}

/// Feed one primary/secondary pair and drain the outputs; returns the releases.
#[inline]
fn feed_pair(engine: &mut Engine, primary: Frame, secondary: Frame) -> u64 {
    engine.handle_frame(NOW, Side::Primary, primary);
    engine.handle_frame(NOW, Side::Secondary, secondary);
    let mut released = 0;
    while let Some(out) = engine.poll_output() {
        released += u64::from(matches!(out, Output::Release(_)));
        drop(black_box(out));
    }
    released
}

/// Feed a whole stream, the secondary `lag` frames behind the primary (1: lockstep),
/// draining the outputs after every frame; returns the releases.
fn feed_stream(engine: &mut Engine, primary: Vec<Frame>, secondary: Vec<Frame>, lag: usize) -> u64 {
    let mut released = 0;
    let (mut p, mut s) = (primary.into_iter(), secondary.into_iter());
    loop {
        let mut fed = 0;
        for (side, frames) in [(Side::Primary, &mut p), (Side::Secondary, &mut s)] {
            for frame in frames.by_ref().take(lag) {
                engine.handle_frame(NOW, side, frame);
                fed += 1;
                while let Some(out) = engine.poll_output() {
                    released += u64::from(matches!(out, Output::Release(_)));
                    drop(black_box(out));
                }
            }
        }
        if fed == 0 {
            return released;
        }
    }
}

/// Resident set size of this process, in bytes (0 if /proc is unavailable).
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// Whether criterion runs real benchmarks (`cargo bench`) rather than its test mode
/// (`cargo test --benches`, one quick pass) or a listing.
fn benchmark_mode() -> bool {
    let args: Vec<String> = std::env::args().collect();
    let has = |flag: &str| args.iter().any(|a| a == flag);
    has("--bench") && !has("--test") && !has("--list")
}

fn identical_tcp(c: &mut Criterion) {
    let data = Rng(0x5eed).bytes(SEGMENT * SEGMENTS);
    let addrs = FlowAddrs::v4(0);
    let primary = TcpSender::new(addrs, ISN, CLIENT_ACK).segments(&data, &[SEGMENT]);
    let secondary = TcpSender::new(addrs, ISN, CLIENT_ACK).segments(&data, &[SEGMENT]);
    // The secondary's frames live in their own buffers, as they would in the proxy.
    let secondary: Vec<Frame> = secondary.iter().map(copy).collect();
    assert_eq!(primary.len(), SEGMENTS);

    // Sanity: the whole stream is released with no checkpoint.
    for lag in [1, 64] {
        let mut engine = Engine::new(EngineConfig::default());
        let released = feed_stream(&mut engine, primary.clone(), secondary.clone(), lag);
        assert_eq!(released, SEGMENTS as u64);
        assert_eq!(engine.stats().checkpoints_total(), 0);
        assert_eq!(engine.stats().bytes_matched, data.len() as u64);
    }

    let mut group = c.benchmark_group("engine");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Bytes(data.len() as u64));
    for (name, lag) in [("identical_tcp_1448", 1), ("identical_tcp_1448_lag64", 64)] {
        group.bench_function(name, |b| {
            // A fresh engine per iteration so the stream starts over; building it and
            // cloning the frame handles (reference counts, no copies) is not timed.
            b.iter_batched(
                || {
                    (
                        Engine::new(EngineConfig::default()),
                        primary.clone(),
                        secondary.clone(),
                    )
                },
                |(mut engine, p, s)| {
                    let released = feed_stream(&mut engine, p, s, lag);
                    // The engine is returned so that dropping it is not timed.
                    (engine, black_box(released))
                },
                BatchSize::PerIteration,
            );
        });
    }
    group.finish();
}

/// An engine tracking `conns` quiescent TCP connections, and a supply of matched
/// 64-byte segment pairs for a pseudo-random sequence of those connections.
struct ManyConns {
    engine: Engine,
    /// Segments sent so far on each connection (both sides are in step).
    sent: Vec<u32>,
    /// Pre-built pairs, consumed from the back.
    pool: Vec<(Frame, Frame)>,
    pool_size: usize,
    payload: Vec<u8>,
    rng: Rng,
    released: u64,
    fed: u64,
}

impl ManyConns {
    /// Set up `conns` connections, each of which has exchanged one matched segment.
    fn new(conns: usize, pool_size: usize) -> Self {
        let payload = Rng(0x64).bytes(SMALL);
        let sent = vec![1u32; conns];
        let config = EngineConfig {
            max_connections: conns.max(EngineConfig::default().max_connections),
            ..EngineConfig::default()
        };
        let started = WallInstant::now();
        let rss_before = rss_bytes();
        let mut engine = Engine::new(config);
        for n in 0..conns {
            let p = sender(n, 0).data(&payload);
            let s = copy(&p);
            assert_eq!(feed_pair(&mut engine, p, s), 1);
        }
        let rss_after = rss_bytes();
        let stats = engine.stats();
        assert_eq!(stats.connections_active, conns as u64);
        assert_eq!(stats.checkpoints_total(), 0);
        assert_eq!(stats.held_frames, 0);
        if conns >= 100_000 {
            let per_conn = rss_after.saturating_sub(rss_before) as f64 / conns as f64;
            eprintln!(
                "engine memory: {conns} idle TCP connections: VmRSS {:.1} MiB -> {:.1} MiB, \
                 {per_conn:.0} bytes/connection (setup {:.2?})",
                rss_before as f64 / (1 << 20) as f64,
                rss_after as f64 / (1 << 20) as f64,
                started.elapsed(),
            );
        }
        Self {
            engine,
            sent,
            pool: Vec::new(),
            pool_size,
            payload,
            rng: Rng(0x00c0_ffee ^ conns as u64),
            released: 0,
            fed: 0,
        }
    }

    /// Pre-build the next `pool_size` pairs (not timed).
    fn refill(&mut self) {
        assert_eq!(self.released, self.fed, "every fed pair must be released");
        assert_eq!(self.engine.stats().checkpoints_total(), 0);
        let n = self.sent.len();
        let mut pool = Vec::with_capacity(self.pool_size);
        for _ in 0..self.pool_size {
            let conn = self.rng.below(n);
            let sent = &mut self.sent[conn];
            let p = sender(conn, *sent).data(&self.payload);
            *sent += 1;
            let s = copy(&p);
            pool.push((p, s));
        }
        pool.reverse();
        // Pairs not fed yet go first (the pool is popped from the end).
        pool.append(&mut self.pool);
        self.pool = pool;
    }

    /// Feed `iters` pairs; only the feeding is timed.
    fn run(&mut self, iters: u64) -> Duration {
        let mut total = Duration::ZERO;
        let mut left = iters;
        while left > 0 {
            if self.pool.is_empty() {
                self.refill();
            }
            let k = left.min(self.pool.len() as u64);
            let start = WallInstant::now();
            let mut released = 0;
            for _ in 0..k {
                let Some((p, s)) = self.pool.pop() else { break };
                released += feed_pair(&mut self.engine, p, s);
            }
            total += start.elapsed();
            self.released += released;
            self.fed += k;
            left -= k;
        }
        total
    }
}

impl ManyConns {
    /// Like [`ManyConns::run`], but the way the compare daemon gets frames: [`BATCH`]
    /// primary frames in one `handle_frames` call, then their [`BATCH`] secondary
    /// copies in another, then the outputs drained. Still timed per pair.
    fn run_batched(&mut self, iters: u64) -> Duration {
        let mut total = Duration::ZERO;
        let mut left = iters;
        let mut primaries = Vec::with_capacity(BATCH);
        let mut secondaries = Vec::with_capacity(BATCH);
        while left > 0 {
            if self.pool.len() < BATCH {
                self.refill();
            }
            let k = left.min(self.pool.len() as u64);
            let start = WallInstant::now();
            let mut released = 0;
            let mut fed = 0;
            while fed < k {
                for (p, s) in self
                    .pool
                    .drain(
                        self.pool
                            .len()
                            .saturating_sub(BATCH.min((k - fed) as usize))..,
                    )
                    .rev()
                {
                    primaries.push(p);
                    secondaries.push(s);
                }
                fed += primaries.len() as u64;
                self.engine
                    .handle_frames(NOW, Side::Primary, primaries.drain(..));
                self.engine
                    .handle_frames(NOW, Side::Secondary, secondaries.drain(..));
                while let Some(out) = self.engine.poll_output() {
                    released += u64::from(matches!(out, Output::Release(_)));
                    drop(black_box(out));
                }
            }
            total += start.elapsed();
            self.released += released;
            self.fed += fed;
            left -= fed.min(left);
        }
        total
    }
}

/// Pairs per batch in [`ManyConns::run_batched`]: what one read of a busy socket holds.
const BATCH: usize = 64;

/// The sender of connection `conn` after `sent` segments of [`SMALL`] bytes.
fn sender(conn: usize, sent: u32) -> TcpSender {
    let index = u32::try_from(conn).expect("connection index fits u32");
    let mut s = TcpSender::new(FlowAddrs::v4(index), ISN, CLIENT_ACK);
    s.next_seq = s.next_seq.wrapping_add(sent.wrapping_mul(SMALL as u32));
    s
}

fn per_frame_cost(c: &mut Criterion, full: bool, mut big: Option<ManyConns>) {
    let mut group = c.benchmark_group("per_frame_cost");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .throughput(Throughput::Elements(1));
    for conns in CONNS {
        let mut state = match big.take() {
            Some(state) if state.sent.len() == conns => state,
            other => {
                big = other;
                if !full && conns > 10_000 {
                    eprintln!("per_frame_cost/{conns}_conns: skipped in test mode");
                    continue;
                }
                ManyConns::new(conns, if full { POOL } else { 256 })
            }
        };
        group.bench_function(BenchmarkId::from_parameter(format!("{conns}_conns")), |b| {
            b.iter_custom(|iters| state.run(iters));
        });
        group.bench_function(
            BenchmarkId::from_parameter(format!("batched_{conns}_conns")),
            |b| b.iter_custom(|iters| state.run_batched(iters)),
        );
    }
    group.finish();
}

fn main() {
    let full = benchmark_mode();
    // Build the 1M-connection engine first, in a fresh heap, so its resident-memory
    // delta is not masked by memory that earlier benchmarks freed.
    let big = full.then(|| ManyConns::new(CONNS[2], POOL));
    let mut c = Criterion::default().configure_from_args();
    identical_tcp(&mut c);
    per_frame_cost(&mut c, full, big);
    c.final_summary();
}
