//! `colo-proxy demo`: COLO at work in one process, without root, VMs or a network.
//!
//! By default ([`live`]) the real primary and secondary proxies run in this process
//! over loopback Unix sockets, with a client and two simulated VMs driving TCP and
//! UDP traffic through them; the demo shows live what the proxies compare, release
//! and why they ask for checkpoints, then checks what the client received.
//!
//! `--simulate` runs the simulation instead: a simulated client talks to two
//! simulated VMs (deterministic servers built from `colo_core::sim`) through the real
//! compare engine and the real secondary rewriter, on a simulated clock with
//! reordering and duplication. It prints what the engine does as it happens, a
//! summary at the end, and checks that the client received exactly what the primary
//! sent; it exits 1 if not.
//!
//! Module map: [`sim`] runs the world on a [`queue`] of timed events; [`vm`] and
//! [`client`] are its endpoints, [`content`] what they say, [`segment`] how they read
//! frames, [`rng`] their dice; [`report`] prints live output, [`summary`] the final
//! table or JSON ([`format`](mod@format) helps both); [`verify`] is the end-to-end check.

mod client;
mod content;
mod format;
mod live;
mod queue;
mod report;
mod rng;
mod segment;
mod sim;
mod summary;
mod verify;
mod vm;

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use colo_core::Duration;

use crate::cli::DemoArgs;

use self::report::Reporter;
use self::sim::{Sim, SimConfig};
use self::summary::{Scenario, Summary};

/// Largest response per connection the demo accepts.
const MAX_BYTES_PER_CONNECTION: u64 = 1 << 30;
/// Largest total of all responses (both VMs and the client keep a copy).
const MAX_TOTAL_BYTES: u64 = 4 << 30;

/// Run the demo (live, or the simulation with `--simulate`); the exit code says whether the client stream verified.
pub fn run(args: &DemoArgs) -> anyhow::Result<ExitCode> {
    if !args.simulate {
        return live::run(args);
    }
    let connections = args.connections as usize;
    if args.bytes_per_connection > MAX_BYTES_PER_CONNECTION {
        bail!(
            "--bytes-per-connection {} is more than the demo supports ({}); use a smaller size \
             such as 256K or 4M",
            args.bytes_per_connection,
            MAX_BYTES_PER_CONNECTION
        );
    }
    let total = args
        .bytes_per_connection
        .saturating_mul(u64::from(args.connections));
    if total > MAX_TOTAL_BYTES {
        bail!(
            "{} connections x {} bytes is {total} bytes in all, more than the demo's {} byte \
             budget; lower --connections or --bytes-per-connection",
            args.connections,
            args.bytes_per_connection,
            MAX_TOTAL_BYTES
        );
    }
    let diverge_every = args.divergence_period();
    let cfg = SimConfig {
        connections,
        body_len: usize::try_from(args.bytes_per_connection)
            .context("--bytes-per-connection does not fit this machine's address space")?,
        datagrams: args.datagrams,
        seed: args.seed,
        diverge_every,
        checkpoint_delay: Duration::from_millis(args.checkpoint_ms),
        drop_released_every: args.fault_drop_released,
    };
    tracing::info!(?cfg, "starting the demo");

    let started = std::time::Instant::now();
    let mut sim = Sim::new(cfg);
    let mut reporter = Reporter::new(args.quiet);
    let outcome = sim.run(&mut reporter);
    reporter.finish(outcome.sim_time, &outcome.engine);
    let wall = started.elapsed().as_secs_f64();

    let verification = verify::verify(&sim, &outcome, connections, args.datagrams);
    let scenario = Scenario {
        connections,
        bytes_per_connection: args.bytes_per_connection,
        datagrams: args.datagrams,
        seed: args.seed,
        nondeterministic: diverge_every.is_some(),
        diverge_every,
        checkpoint_ms: args.checkpoint_ms,
    };
    let summary = Summary::new(scenario, &outcome, verification, wall);
    let text = if args.json {
        summary.to_json().context("serialising the summary")?
    } else {
        summary.to_string()
    };
    report(
        &text,
        summary.verified,
        &summary.verification.problems,
        &format!("--log-level debug and the same --seed {}", args.seed),
    )
}

/// Print the summary on stdout; exit 0 when the client got exactly what the primary
/// sent, else 1 with the first problem and how to rerun (`rerun_with`) on stderr.
pub(crate) fn report(
    text: &str,
    verified: bool,
    problems: &[String],
    rerun_with: &str,
) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", text.trim_end())
        .and_then(|()| out.flush())
        .context("writing the summary to stdout (is the pipe closed?)")?;
    if verified {
        return Ok(ExitCode::SUCCESS);
    }
    let first = problems.first().map_or("unknown problem", String::as_str);
    eprintln!(
        "error: the client did not receive exactly what the primary sent: {first}; \
         rerun with {rerun_with} to investigate"
    );
    Ok(ExitCode::FAILURE)
}
