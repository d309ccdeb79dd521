//! `colo-bench`: a load generator for any proxy speaking QEMU colo-compare's socket
//! interface (`primary_in`, `secondary_in`, `outdev`, QEMU framing, optional vnet
//! headers), such as `colo-proxy compare` or QEMU's own `colo-compare`.
//!
//! It sends identical Ethernet/IPv4/TCP streams for N flows to both inputs, keeps at
//! most `--window` frames in flight (sent on primary, not yet released on outdev),
//! checks that every released frame is byte-for-byte the frame sent on primary and
//! arrives in per-flow order, and reports frames/s, Gbit/s and send→release latency
//! percentiles. It exits 1 if any error was seen.
//!
//! Frames are built once per flow with `colo_core::sim` (valid checksums); later
//! segments patch the sequence number and update the TCP checksum incrementally
//! (RFC 1624), so building a frame costs a copy, not a checksum pass.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::{BufMut, BytesMut};
use clap::Parser;
use colo_core::codec::{DecoderConfig, FrameDecoder};
use colo_core::sim::{FlowAddrs, TcpSender};

/// Ethernet + IPv4 + TCP headers without options.
const HEADERS: usize = 14 + 20 + 20;
/// Offset of the TCP sequence number in the Ethernet frame.
const SEQ_OFF: usize = 14 + 20 + 4;
/// Offset of the TCP checksum in the Ethernet frame.
const CSUM_OFF: usize = 14 + 20 + 16;
/// Offset of the IPv4 destination address (the client's).
const DST_IP_OFF: usize = 14 + 16;
/// Offset of the TCP destination port (the client's).
const DST_PORT_OFF: usize = 14 + 20 + 2;
/// Size of the (all-zero) virtio-net header sent with `--vnet-hdr`.
const VNET_LEN: usize = 10;
/// Frames encoded per write.
const BATCH: usize = 64;

/// Command line.
#[derive(Debug, Clone, Parser)]
#[command(name = "colo-bench", version, about)]
struct Args {
    /// Unix socket of the proxy's primary_in.
    #[arg(long, value_name = "PATH")]
    primary_in: PathBuf,
    /// Unix socket of the proxy's secondary_in.
    #[arg(long, value_name = "PATH")]
    secondary_in: PathBuf,
    /// Unix socket of the proxy's outdev.
    #[arg(long, value_name = "PATH")]
    outdev: PathBuf,
    /// Connect to the three sockets (the proxy listens) instead of listening on
    /// them (the proxy connects, as QEMU's `-chardev socket,path=P` does).
    #[arg(long)]
    connect: bool,
    /// Number of TCP flows (VM → client), sent round-robin.
    #[arg(long, default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    flows: u32,
    /// Ethernet frame size in bytes (54 bytes of headers + payload).
    #[arg(long, default_value_t = 1514,
          value_parser = clap::value_parser!(u32).range(55..=9018))]
    frame_size: u32,
    /// Frames sent on primary but not yet released that the generator allows.
    #[arg(long, default_value_t = 256,
          value_parser = clap::value_parser!(u64).range(1..))]
    window: u64,
    /// Stop after sending this many frames.
    #[arg(long, value_name = "N", conflicts_with = "seconds")]
    frames: Option<u64>,
    /// Stop sending after this many seconds (default 5 if --frames is not given).
    #[arg(long, value_name = "S")]
    seconds: Option<f64>,
    /// Use the vnet_hdr_len field (QEMU's vnet_hdr_support=on) and a 10-byte
    /// virtio-net header on every frame.
    #[arg(long)]
    vnet_hdr: bool,
    /// After sending stops, how long to wait for outstanding releases (seconds).
    #[arg(long, default_value_t = 10.0)]
    drain_timeout: f64,
    /// How long to wait for the proxy to connect or to listen (seconds).
    #[arg(long, default_value_t = 30.0)]
    setup_timeout: f64,
    /// Print the report as one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

/// One flow's template frame and the frames of it in flight.
#[derive(Debug)]
struct Flow {
    /// The first data segment (with vnet header if enabled).
    template: Vec<u8>,
    /// Sequence number of the template.
    isn: u32,
    /// Segments sent so far.
    sent: u32,
}

/// State shared by the sender and the receiver.
#[derive(Debug, Default)]
struct Shared {
    /// Per flow: (segment index, send time) of frames sent, not yet released.
    pending: Vec<VecDeque<(u32, Instant)>>,
    /// Frames sent and not yet released.
    in_flight: u64,
    /// Frames sent in total.
    sent: u64,
    /// The sender has finished.
    done_sending: bool,
    /// The sender hit an I/O error.
    send_error: Option<String>,
    /// The receiver gave up: the sender must stop.
    abort: bool,
}

/// Adds the 16-bit words of `x` into a ones' complement accumulator.
fn add32(acc: u32, x: u32) -> u32 {
    acc + (x >> 16) + (x & 0xffff)
}

/// Folds a ones' complement accumulator to 16 bits.
fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// Rewrites the TCP sequence number of `eth` (an Ethernet/IPv4/TCP frame without IP
/// options) and updates the checksum incrementally (RFC 1624, eqn. 3).
fn set_seq(eth: &mut [u8], seq: u32) {
    let old = u32::from_be_bytes(eth[SEQ_OFF..SEQ_OFF + 4].try_into().unwrap_or_default());
    let hc = u16::from_be_bytes([eth[CSUM_OFF], eth[CSUM_OFF + 1]]);
    // HC' = ~(~HC + ~m + m')
    let mut acc = u32::from(!hc);
    acc = add32(acc, !old);
    acc = add32(acc, seq);
    let new = !fold(acc);
    eth[SEQ_OFF..SEQ_OFF + 4].copy_from_slice(&seq.to_be_bytes());
    eth[CSUM_OFF..CSUM_OFF + 2].copy_from_slice(&new.to_be_bytes());
}

/// The payload size of a frame of `frame_size` bytes.
fn payload_len(frame_size: u32) -> usize {
    frame_size as usize - HEADERS
}

/// Builds the flows: one template data segment each.
fn build_flows(n: u32, frame_size: u32, vnet: bool) -> Vec<Flow> {
    let payload: Vec<u8> = (0..payload_len(frame_size))
        .map(|i| b'a' + (i % 26) as u8)
        .collect();
    (0..n)
        .map(|i| {
            let isn = 1000u32.wrapping_add(i.wrapping_mul(7919));
            let mut s = TcpSender::new(FlowAddrs::v4(i), isn, 5000 + i);
            let seq = s.next_seq;
            let f = s.data(&payload);
            let mut template = Vec::with_capacity(f.data.len() + VNET_LEN);
            if vnet {
                template.extend_from_slice(&[0; VNET_LEN]);
            }
            template.extend_from_slice(&f.data);
            Flow {
                template,
                isn: seq,
                sent: 0,
            }
        })
        .collect()
}

/// Sequence number of segment `k` of a flow.
fn seq_of(flow: &Flow, k: u32, plen: usize) -> u32 {
    flow.isn.wrapping_add(k.wrapping_mul(plen as u32))
}

/// Which flow a released frame belongs to, from the client's address and port.
fn flow_of(eth: &[u8]) -> Option<u32> {
    if eth.len() < HEADERS {
        return None;
    }
    let host = u32::from(u16::from_be_bytes([
        eth[DST_IP_OFF + 2],
        eth[DST_IP_OFF + 3],
    ]));
    let port = u32::from(u16::from_be_bytes([
        eth[DST_PORT_OFF],
        eth[DST_PORT_OFF + 1],
    ]));
    Some(host * 60_000 + port.checked_sub(1024)?)
}

/// The three connected streams.
struct Conns {
    pri: UnixStream,
    sec: UnixStream,
    out: UnixStream,
}

fn accept_within(l: &UnixListener, what: &str, deadline: Instant) -> anyhow::Result<UnixStream> {
    l.set_nonblocking(true)?;
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false)?;
                return Ok(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e).with_context(|| format!("accept on {what}")),
        }
        if Instant::now() > deadline {
            bail!("nobody connected to {what} in time");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn connect_within(p: &Path, deadline: Instant) -> anyhow::Result<UnixStream> {
    loop {
        match UnixStream::connect(p) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() > deadline => {
                return Err(e).with_context(|| format!("connect to {}", p.display()));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn setup(args: &Args) -> anyhow::Result<Conns> {
    let deadline = Instant::now() + Duration::from_secs_f64(args.setup_timeout);
    if args.connect {
        return Ok(Conns {
            pri: connect_within(&args.primary_in, deadline)?,
            sec: connect_within(&args.secondary_in, deadline)?,
            out: connect_within(&args.outdev, deadline)?,
        });
    }
    let bind = |p: &Path| {
        let _ = std::fs::remove_file(p);
        UnixListener::bind(p).with_context(|| format!("bind {}", p.display()))
    };
    let lp = bind(&args.primary_in)?;
    let ls = bind(&args.secondary_in)?;
    let lo = bind(&args.outdev)?;
    Ok(Conns {
        pri: accept_within(&lp, "primary_in", deadline)?,
        sec: accept_within(&ls, "secondary_in", deadline)?,
        out: accept_within(&lo, "outdev", deadline)?,
    })
}

/// Sends batches on both inputs until the frame budget or the time is used up.
fn sender(
    mut pri: UnixStream,
    mut sec: UnixStream,
    mut flows: Vec<Flow>,
    args: &Args,
    shared: &(Mutex<Shared>, Condvar),
) -> std::io::Result<()> {
    let (lock, cv) = shared;
    let plen = payload_len(args.frame_size);
    let voff = if args.vnet_hdr { VNET_LEN } else { 0 };
    let limit = args.frames.unwrap_or(u64::MAX);
    let stop_at = match (args.frames, args.seconds) {
        (_, Some(s)) => Some(Instant::now() + Duration::from_secs_f64(s)),
        (Some(_), None) => None,
        (None, None) => Some(Instant::now() + Duration::from_secs(5)),
    };
    let nflows = flows.len();
    let mut next_flow = 0usize;
    let mut sent = 0u64;
    let mut buf = BytesMut::with_capacity(BATCH * (flows[0].template.len() + 8));
    let mut batch: Vec<(usize, u32)> = Vec::with_capacity(BATCH);
    while sent < limit && stop_at.is_none_or(|t| Instant::now() < t) {
        let credit = {
            let mut st = lock
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            while st.in_flight >= args.window && !st.abort {
                let (g, _) = cv
                    .wait_timeout(st, Duration::from_millis(50))
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                st = g;
                if stop_at.is_some_and(|t| Instant::now() >= t) {
                    break;
                }
            }
            if st.abort {
                return Ok(());
            }
            args.window.saturating_sub(st.in_flight)
        };
        if credit == 0 {
            continue;
        }
        let n = credit.min(BATCH as u64).min(limit - sent) as usize;
        buf.clear();
        batch.clear();
        for _ in 0..n {
            let f = &mut flows[next_flow];
            let k = f.sent;
            f.sent = f.sent.wrapping_add(1);
            let seq = seq_of(f, k, plen);
            buf.put_u32((f.template.len()) as u32);
            if args.vnet_hdr {
                buf.put_u32(VNET_LEN as u32);
            }
            let start = buf.len();
            buf.extend_from_slice(&f.template);
            set_seq(&mut buf[start + voff..], seq);
            batch.push((next_flow, k));
            next_flow = (next_flow + 1) % nflows;
        }
        sec.write_all(&buf)?;
        {
            let now = Instant::now();
            let mut st = lock
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for &(fi, k) in &batch {
                st.pending[fi].push_back((k, now));
            }
            st.in_flight += n as u64;
            st.sent += n as u64;
        }
        pri.write_all(&buf)?;
        sent += n as u64;
    }
    Ok(())
}

/// What the receiver measured.
#[derive(Debug, Default)]
struct Report {
    sent: u64,
    released: u64,
    errors: u64,
    first_errors: Vec<String>,
    bytes: u64,
    elapsed: Duration,
    latencies_ns: Vec<u64>,
}

impl Report {
    fn error(&mut self, msg: String) {
        self.errors += 1;
        if self.first_errors.len() < 10 {
            self.first_errors.push(msg);
        }
    }
}

/// Reads outdev, verifies and times every released frame.
fn receiver(
    mut out: UnixStream,
    templates: &[Vec<u8>],
    isns: &[u32],
    args: &Args,
    shared: &(Mutex<Shared>, Condvar),
    start: Instant,
) -> Report {
    let (lock, cv) = shared;
    let plen = payload_len(args.frame_size);
    let voff = if args.vnet_hdr { VNET_LEN } else { 0 };
    let mut dec = FrameDecoder::new(DecoderConfig {
        vnet_hdr: args.vnet_hdr,
        ..DecoderConfig::default()
    });
    let mut rep = Report::default();
    let mut buf = vec![0u8; 256 * 1024];
    let mut expected = Vec::with_capacity(9100);
    let _ = out.set_read_timeout(Some(Duration::from_millis(50)));
    let mut last_progress = Instant::now();
    let mut drain_deadline: Option<Instant> = None;
    loop {
        let (sent, done) = {
            let st = lock
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            (st.sent, st.done_sending)
        };
        let stalled = last_progress.elapsed() > Duration::from_secs_f64(args.drain_timeout);
        if !done && stalled && sent > rep.released {
            rep.error(format!(
                "no release for {} s with {} frames in flight; giving up",
                args.drain_timeout,
                sent - rep.released
            ));
            break;
        }
        if done {
            if rep.released >= sent {
                break;
            }
            let dl = *drain_deadline.get_or_insert_with(|| {
                Instant::now() + Duration::from_secs_f64(args.drain_timeout)
            });
            if Instant::now() > dl
                || last_progress.elapsed() > Duration::from_secs_f64(args.drain_timeout)
            {
                rep.error(format!(
                    "{} frames sent on primary were never released",
                    sent - rep.released
                ));
                rep.errors += sent - rep.released - 1;
                break;
            }
        }
        let n = match out.read(&mut buf) {
            Ok(0) => {
                rep.error("outdev closed by the proxy".to_owned());
                break;
            }
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(e) => {
                rep.error(format!("outdev read: {e}"));
                break;
            }
        };
        let now = Instant::now();
        last_progress = now;
        rep.elapsed = now.duration_since(start);
        rep.bytes += n as u64;
        dec.push(&buf[..n]);
        let mut got = 0u64;
        let mut st = lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        loop {
            let frame = match dec.poll_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    drop(st);
                    rep.error(format!("outdev framing: {e}"));
                    return finish(rep, start);
                }
            };
            got += 1;
            rep.released += 1;
            let data = &frame.data[..];
            let eth = data.get(voff..).unwrap_or(&[]);
            let Some(fi) = flow_of(eth).filter(|&f| (f as usize) < templates.len()) else {
                rep.error(format!(
                    "released frame #{} belongs to no flow",
                    rep.released
                ));
                continue;
            };
            let fi = fi as usize;
            let Some((k, t)) = st.pending[fi].pop_front() else {
                rep.error(format!("flow {fi}: released a frame never sent (or twice)"));
                continue;
            };
            rep.latencies_ns
                .push(u64::try_from(now.duration_since(t).as_nanos()).unwrap_or(u64::MAX));
            expected.clear();
            expected.extend_from_slice(&templates[fi]);
            let seq = isns[fi].wrapping_add(k.wrapping_mul(plen as u32));
            set_seq(&mut expected[voff..], seq);
            if data != &expected[..] {
                let got_seq = eth
                    .get(SEQ_OFF..SEQ_OFF + 4)
                    .map(|b| u32::from_be_bytes(b.try_into().unwrap_or_default()));
                rep.error(format!(
                    "flow {fi}: segment {k} differs from what was sent \
                     (expected seq {seq}, got {got_seq:?}, {} vs {} bytes)",
                    data.len(),
                    expected.len()
                ));
            }
        }
        st.in_flight = st.in_flight.saturating_sub(got);
        drop(st);
        cv.notify_one();
    }
    finish(rep, start)
}

/// Ends a run; the measured time runs from the first send to the last release
/// (drain waits are not counted).
fn finish(mut rep: Report, start: Instant) -> Report {
    if rep.elapsed.is_zero() {
        rep.elapsed = start.elapsed();
    }
    rep
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

fn run(args: &Args) -> anyhow::Result<bool> {
    let flows = build_flows(args.flows, args.frame_size, args.vnet_hdr);
    let templates: Vec<Vec<u8>> = flows.iter().map(|f| f.template.clone()).collect();
    let isns: Vec<u32> = flows.iter().map(|f| f.isn).collect();
    let conns = setup(args)?;
    let shared = Arc::new((
        Mutex::new(Shared {
            pending: vec![VecDeque::new(); flows.len()],
            ..Shared::default()
        }),
        Condvar::new(),
    ));
    let start = Instant::now();
    let sh = Arc::clone(&shared);
    let a = args.clone();
    let Conns { pri, sec, out } = conns;
    let tx = std::thread::spawn(move || {
        let r = sender(pri, sec, flows, &a, &sh);
        let mut st =
            sh.0.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        st.done_sending = true;
        if let Err(e) = r {
            st.send_error = Some(e.to_string());
        }
    });
    let mut rep = receiver(out, &templates, &isns, args, &shared, start);
    let send_error = {
        let mut st = shared
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Stop a sender waiting on a full window if the receiver gave up.
        st.abort = true;
        rep.sent = st.sent;
        st.send_error.clone()
    };
    shared.1.notify_all();
    let deadline = Instant::now() + Duration::from_secs(2);
    while !tx.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    if !tx.is_finished() {
        // The sender may be blocked writing to a proxy that stopped reading.
        bail!("the sender did not finish: the proxy stopped reading its inputs");
    }
    let _ = tx.join();
    if let Some(e) = send_error {
        rep.error(format!("sending: {e}"));
    }
    rep.latencies_ns.sort_unstable();
    let secs = rep.elapsed.as_secs_f64();
    let fps = rep.released as f64 / secs;
    let gbps = (rep.released as f64 * f64::from(args.frame_size) * 8.0) / secs / 1e9;
    let (p50, p99, p999) = (
        percentile(&rep.latencies_ns, 0.5),
        percentile(&rep.latencies_ns, 0.99),
        percentile(&rep.latencies_ns, 0.999),
    );
    if args.json {
        let v = serde_json::json!({
            "flows": args.flows,
            "frame_size": args.frame_size,
            "window": args.window,
            "vnet_hdr": args.vnet_hdr,
            "sent": rep.sent,
            "released": rep.released,
            "errors": rep.errors,
            "first_errors": rep.first_errors,
            "seconds": secs,
            "frames_per_sec": fps,
            "gbit_per_sec": gbps,
            "latency_us": { "p50": p50, "p99": p99, "p99_9": p999 },
        });
        println!("{v}");
    } else {
        println!(
            "load: {} flows, {}-byte frames, window {}{}",
            args.flows,
            args.frame_size,
            args.window,
            if args.vnet_hdr { ", vnet headers" } else { "" }
        );
        println!(
            "sent {} released {} errors {} in {:.3} s",
            rep.sent, rep.released, rep.errors, secs
        );
        println!("throughput: {fps:.0} frames/s, {gbps:.3} Gbit/s (Ethernet bytes)");
        println!("latency send->release: p50 {p50:.1} us, p99 {p99:.1} us, p99.9 {p999:.1} us");
        for e in &rep.first_errors {
            println!("error: {e}");
        }
    }
    Ok(rep.errors == 0 && rep.released == rep.sent)
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("colo-bench: {e:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patched_segments_equal_freshly_built_ones() {
        for size in [130u32, 1514] {
            let plen = payload_len(size);
            let flows = build_flows(3, size, false);
            let payload: Vec<u8> = (0..plen).map(|i| b'a' + (i % 26) as u8).collect();
            for (i, f) in flows.iter().enumerate() {
                let i = i as u32;
                let mut s = TcpSender::new(FlowAddrs::v4(i), 1000 + i * 7919, 5000 + i);
                for k in 0..3000u32 {
                    let want = s.data(&payload);
                    let mut got = f.template.clone();
                    set_seq(&mut got, seq_of(f, k, plen));
                    assert_eq!(&got[..], &want.data[..], "size {size} flow {i} seg {k}");
                }
                assert_eq!(flow_of(&f.template), Some(i));
            }
        }
    }

    #[test]
    fn flow_of_covers_many_hosts() {
        let f = build_flows(1, 130, false);
        assert_eq!(f.len(), 1);
        let big = colo_core::sim::tcp_frame(
            &FlowAddrs::v4(123_456),
            colo_core::sim::Towards::Client,
            &colo_core::sim::Segment::default(),
        );
        assert_eq!(flow_of(&big.data), Some(123_456));
    }
}
