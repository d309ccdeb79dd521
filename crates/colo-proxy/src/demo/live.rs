//! `colo-proxy demo` (the default, live run): the real `primary` and `secondary`
//! roles, in this process, over loopback Unix sockets in a temporary directory, with
//! the client and both VMs played by the demo on the QEMU-framed ports.
//!
//! Module map: [`traffic`] drives the client and the VMs and takes checkpoints;
//! [`monitor`] prints live progress from the proxies' own `stats`; [`summary`] is
//! the final table or JSON; [`wire`] holds the demo's ends of the sockets.

mod monitor;
mod summary;
mod traffic;
mod wire;

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Parser as _;
use tokio::sync::{Notify, watch};

use crate::cli::{Cli, Command, DemoArgs};

use self::monitor::{Log, monitor, progress_line};
use self::summary::{Scenario, Summary};
use self::traffic::{Plan, Traffic};
use self::wire::Ctl;

/// Largest response per connection in live mode (every byte crosses real sockets).
const MAX_LIVE_BYTES: u64 = 64 << 20;

/// Run the live demo; exit 0 when every client stream and datagram verified.
pub fn run(args: &DemoArgs) -> anyhow::Result<ExitCode> {
    if args.bytes_per_connection > MAX_LIVE_BYTES {
        bail!(
            "the live demo supports up to 64M per connection; use a smaller \
             --bytes-per-connection, or --simulate"
        );
    }
    let dir = std::env::temp_dir().join(format!("colo-proxy-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| {
        format!(
            "cannot create {} for the demo's sockets (set TMPDIR?)",
            dir.display()
        )
    })?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let result = rt.block_on(live(args, &dir));
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn parse<T>(argv: &[String], pick: impl Fn(Command) -> Option<T>) -> anyhow::Result<T> {
    let cli = Cli::try_parse_from(argv).context("building the roles' options")?;
    pick(cli.command).context("unexpected role")
}

async fn live(args: &DemoArgs, dir: &Path) -> anyhow::Result<ExitCode> {
    let p = |name: &str| dir.join(name).display().to_string();
    let argv = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let secondary = parse(
        &argv(&[
            "colo-proxy",
            "secondary",
            "--svm",
            &format!("stream:unix:{}", p("svm.sock")),
            "--link",
            &format!("unix:{}", p("link.sock")),
            "--control",
            &p("secondary.ctl"),
        ]),
        |c| match c {
            Command::Secondary(a) => Some(a),
            _ => None,
        },
    )?;
    let primary = parse(
        &argv(&[
            "colo-proxy",
            "primary",
            "--client",
            &format!("stream:unix:{}", p("client.sock")),
            "--pvm",
            &format!("stream:unix:{}", p("pvm.sock")),
            "--link",
            &format!("unix:{},connect", p("link.sock")),
            "--control",
            &p("primary.ctl"),
        ]),
        |c| match c {
            Command::Primary(a) => Some(a),
            _ => None,
        },
    )?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
        "demo finished"
    };
    let log = Log::new(args.quiet);
    let poke = Notify::new();
    let sec = crate::secondary::serve(&secondary, stopped(stop_rx.clone()));
    let pri = crate::primary::serve(&primary, stopped(stop_rx.clone()));
    let watcher = monitor(dir, &log, &poke, stop_rx);
    let scenario = async {
        let r = scenario(args, dir, &log, &poke).await;
        let _ = stop_tx.send(true);
        r
    };
    let (s, p, (), summary) = tokio::join!(sec, pri, watcher, scenario);
    s.context("the secondary proxy failed")?;
    p.context("the primary proxy failed")?;
    let summary = summary?;
    let text = if args.json {
        serde_json::to_string_pretty(&summary.to_json()).context("serialising the summary")?
    } else {
        summary.to_string()
    };
    super::report(
        &text,
        summary.verified(),
        &summary.verification.problems,
        "--log-level debug to see the proxies' decisions",
    )
}

async fn scenario(
    args: &DemoArgs,
    dir: &Path,
    log: &Log,
    poke: &Notify,
) -> anyhow::Result<Summary> {
    let plan = Plan {
        connections: args.connections,
        bulk: usize::try_from(args.bytes_per_connection).unwrap_or(usize::MAX),
        datagrams: args.datagrams,
        diverge_every: args.divergence_period(),
        checkpoint: Duration::from_millis(args.checkpoint_ms),
        pace: Duration::from_millis(args.pace_ms),
        seed: args.seed,
        drop_every: args.fault_drop_released,
    };
    let mut traffic = Traffic::connect(dir, plan, log, poke).await?;
    let mut sctl = Ctl::connect(&dir.join("secondary.ctl")).await?;
    traffic.wait_link_up().await?;
    log.event(&format!(
        "primary and secondary proxies up, linked over {}; {} connections and {} datagrams to go",
        dir.join("link.sock").display(),
        args.connections,
        args.datagrams
    ));
    let started = std::time::Instant::now();
    traffic.run().await?;
    let wall_seconds = started.elapsed().as_secs_f64();
    let primary = traffic.primary_stats().await?;
    let mut events = Vec::new();
    let secondary = sctl.stats(&mut events).await?;
    log.progress(&progress_line(&primary, &secondary));
    log.finish();
    Ok(Summary {
        scenario: Scenario {
            connections: args.connections,
            bulk_bytes: args.bytes_per_connection,
            datagrams: args.datagrams,
            seed: args.seed,
            diverge_every: args.divergence_period(),
            checkpoint_ms: args.checkpoint_ms,
        },
        wall_seconds,
        primary,
        secondary,
        checkpoints: std::mem::take(&mut traffic.checkpoints),
        verification: std::mem::take(&mut traffic.verification),
    })
}
