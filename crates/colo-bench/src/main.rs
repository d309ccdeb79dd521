//! `colo-bench`: a load generator for any proxy speaking QEMU colo-compare's socket
//! interface (`primary_in`, `secondary_in`, `outdev` over Unix or TCP sockets, QEMU
//! framing, optional vnet headers), such as `colo-proxy compare` or QEMU's own
//! `colo-compare`.
//!
//! It sends the same Ethernet/IPv4 TCP or UDP streams for N flows to both inputs
//! (optionally cut at different points on the secondary, `--sec-split`), checks that
//! every released frame is byte-for-byte the frame sent on primary and arrives in
//! per-flow order, and reports frames/s, Gbit/s and send→release latency percentiles.
//! Modes:
//! - `windowed` (default): at most `--window` frames in flight, a sender and a
//!   receiver thread;
//! - `closed-loop`: one frame in flight, one thread;
//! - `--scale 16,1000,100000,1000000`: the table grows step by step and each step
//!   measures the proxy's CPU per frame and memory per row (`--proxy-pid`).
//!
//! Exit status: 0 if every frame came back right, 1 if any error was seen, 2 if the
//! run could not start (bad arguments, sockets).

mod closed_loop;
mod endpoint;
mod frames;
mod outdev;
mod procstat;
mod report;
mod scale;
mod windowed;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Parser;
use serde_json::{Value, json};

use crate::endpoint::Endpoint;
use crate::frames::{FlowSet, Proto};
use crate::report::Report;
use crate::windowed::{Phase, Sender, Shared};

/// How frames are paced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Mode {
    /// Up to `--window` frames in flight (sender and receiver threads).
    Windowed,
    /// One frame in flight, one thread: send, wait for the release, repeat.
    ClosedLoop,
}

impl Mode {
    const fn name(self) -> &'static str {
        match self {
            Self::Windowed => "windowed",
            Self::ClosedLoop => "closed-loop",
        }
    }
}

/// Command line.
#[derive(Debug, Clone, Parser)]
#[command(name = "colo-bench", version, about)]
struct Args {
    /// The proxy's primary_in: `unix:PATH` (or just PATH) or `tcp:HOST:PORT`.
    #[arg(long, value_name = "ENDPOINT")]
    primary_in: Endpoint,
    /// The proxy's secondary_in.
    #[arg(long, value_name = "ENDPOINT")]
    secondary_in: Endpoint,
    /// The proxy's outdev.
    #[arg(long, value_name = "ENDPOINT")]
    outdev: Endpoint,
    /// Connect to the three sockets (the proxy listens) instead of listening on
    /// them (the proxy connects, as QEMU's `-chardev socket,path=P` does).
    #[arg(long)]
    connect: bool,
    /// Transport of the flows.
    #[arg(long, value_enum, default_value_t = Proto::Tcp)]
    proto: Proto,
    /// Number of flows (VM → client), sent round-robin.
    #[arg(long, default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(1..=2_000_000))]
    flows: u32,
    /// Ethernet frame size in bytes (headers + payload).
    #[arg(long, default_value_t = 1514,
          value_parser = clap::value_parser!(u32).range(60..=9018))]
    frame_size: u32,
    /// Pacing.
    #[arg(long, value_enum, default_value_t = Mode::Windowed)]
    mode: Mode,
    /// Frames sent on primary but not yet released that the generator allows
    /// (windowed mode).
    #[arg(long, default_value_t = 256,
          value_parser = clap::value_parser!(u64).range(1..))]
    window: u64,
    /// Cut every TCP segment into N pieces at pseudo-random points on the
    /// secondary (same bytes, other boundaries), so the proxy must compare streams.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=64))]
    sec_split: u32,
    /// Closed loop: spin on a non-blocking outdev instead of sleeping in `read`, to
    /// take the generator's own wake-up out of the latency (uses a whole core).
    #[arg(long)]
    busy_poll: bool,
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
    /// After sending stops (or between scale steps), how long to wait without any
    /// release before counting the rest as lost (seconds).
    #[arg(long, default_value_t = 10.0)]
    drain_timeout: f64,
    /// How long to wait for the proxy to connect or to listen (seconds).
    #[arg(long, default_value_t = 30.0)]
    setup_timeout: f64,
    /// The proxy's process id: report its CPU time per frame and its RSS from /proc.
    #[arg(long, value_name = "PID")]
    proxy_pid: Option<u32>,
    /// Scale mode: grow the table to each of these row counts in turn (ascending,
    /// comma-separated) and measure a trickle over all rows at each.
    #[arg(
        long,
        value_name = "ROWS,...",
        value_delimiter = ',',
        conflicts_with = "mode"
    )]
    scale: Vec<u32>,
    /// Scale mode: frames sent per step, round-robin over all rows.
    #[arg(long, value_name = "N", default_value_t = 1_000_000)]
    scale_frames: u64,
    /// Print the report as one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

impl Args {
    fn validate(&mut self) -> anyhow::Result<()> {
        let min = self.proto.headers() + if self.proto == Proto::Udp { 4 } else { 1 };
        if (self.frame_size as usize) < min {
            bail!(
                "--frame-size must be at least {min} for {}",
                self.proto.name()
            );
        }
        if !self.scale.is_empty() {
            if !self.scale.windows(2).all(|w| w[0] < w[1]) || self.scale[0] == 0 {
                bail!("--scale steps must be ascending and non-zero");
            }
            self.flows = *self.scale.last().unwrap_or(&1);
        }
        Ok(())
    }

    fn load_json(&self) -> Value {
        json!({
            "proto": self.proto.name(),
            "flows": self.flows,
            "frame_size": self.frame_size,
            "mode": if self.scale.is_empty() { self.mode.name() } else { "scale" },
            "window": if self.mode == Mode::ClosedLoop { 1 } else { self.window },
            "sec_split": self.sec_split,
            "vnet_hdr": self.vnet_hdr,
            "busy_poll": self.busy_poll,
        })
    }
}

/// Runs the load; returns the summary and whether every frame came back right.
fn run(args: &Args) -> anyhow::Result<(Value, bool)> {
    let set = FlowSet::build(
        args.proto,
        args.flows,
        args.frame_size as usize,
        args.vnet_hdr,
    );
    let conns = endpoint::setup(
        [&args.primary_in, &args.secondary_in, &args.outdev],
        args.connect,
        Duration::from_secs_f64(args.setup_timeout),
    )?;
    let drain = Duration::from_secs_f64(args.drain_timeout);
    for s in [&conns.pri, &conns.sec] {
        s.set_write_timeout(Some(drain))?;
    }
    let limit = args.frames.unwrap_or(u64::MAX);
    let until = match (args.frames, args.seconds) {
        (_, Some(s)) => Some(Instant::now() + Duration::from_secs_f64(s)),
        (Some(_), None) => None,
        (None, None) => Some(Instant::now() + Duration::from_secs(5)),
    };
    let before = args.proxy_pid.and_then(procstat::sample);
    let own_before = procstat::sample(std::process::id());
    let mut scale_steps = None;
    let mut rep = if args.scale.is_empty() && args.mode == Mode::ClosedLoop {
        closed_loop::run(
            conns,
            &set,
            closed_loop::Settings {
                split: args.sec_split,
                vnet: args.vnet_hdr,
                frames: limit,
                until,
                drain_timeout: drain,
                busy_poll: args.busy_poll,
            },
        )
    } else {
        let shared = Shared::new(set.len());
        let start = Instant::now();
        let endpoint::Conns { pri, sec, out } = conns;
        std::thread::scope(|scope| {
            let rx =
                scope.spawn(|| windowed::receive(out, &set, args.vnet_hdr, drain, &shared, start));
            let mut tx = Sender {
                pri,
                sec,
                set: &set,
                split: args.sec_split,
                window: args.window,
                shared: &shared,
                next_k: vec![0; set.len()],
                drain_timeout: drain,
            };
            let sent = if args.scale.is_empty() {
                let phase = Phase {
                    flows: 0..set.len(),
                    frames: limit,
                    until,
                };
                tx.send(&phase)
                    .map(|_| ())
                    .map_err(|e| format!("sending: {e}"))
            } else {
                scale::run(&mut tx, &args.scale, args.scale_frames, args.proxy_pid)
                    .map(|s| scale_steps = Some(s))
            };
            shared.finish_sending();
            let mut rep: Report = rx.join().unwrap_or_default();
            rep.sent = shared.sent();
            if let Err(e) = sent {
                rep.error(e);
            }
            rep
        })
    };
    let after = args.proxy_pid.and_then(procstat::sample);
    let proxy = match (before, after) {
        (Some(b), Some(a)) => json!({
            "cpu_ns_per_frame": a.cpu_ns.saturating_sub(b.cpu_ns) / rep.released.max(1),
            "rss_kib": a.rss_kib,
        }),
        _ => Value::Null,
    };
    let own = match (own_before, procstat::sample(std::process::id())) {
        (Some(b), Some(a)) => json!(a.cpu_ns.saturating_sub(b.cpu_ns) / rep.released.max(1)),
        _ => Value::Null,
    };
    let ok = rep.ok();
    let mut v = report::summary(&mut rep, args.frame_size, args.load_json(), proxy);
    if let Some(m) = v.as_object_mut() {
        // The generator's own CPU per released frame: it shares the machine.
        m.insert("bench_cpu_ns_per_frame".into(), own);
        if let Some(steps) = scale_steps {
            m.insert("scale".into(), Value::Array(steps));
        }
    }
    Ok((v, ok))
}

fn main() -> ExitCode {
    let mut args = Args::parse();
    if let Err(e) = args.validate() {
        eprintln!("colo-bench: {e:#}");
        return ExitCode::from(2);
    }
    match run(&args) {
        Ok((v, ok)) => {
            if args.json {
                println!("{v}");
            } else {
                report::print_text(&v);
            }
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("colo-bench: {e:#}");
            ExitCode::from(2)
        }
    }
}
