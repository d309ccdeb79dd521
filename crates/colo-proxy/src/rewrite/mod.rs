//! `colo-proxy rewrite`: a drop-in for QEMU's filter-rewriter on the secondary host.
//!
//! A thin tokio shell around the sans-IO [`colo_core::rewrite::Rewriter`], built
//! from the shared pieces in [`crate::shell`]:
//! - `to_secondary_in` → [`Direction::ToSecondary`] → `to_secondary_out`: client
//!   traffic mirrored from the primary, on its way into the secondary VM;
//! - `from_secondary_in` → [`Direction::FromSecondary`] → `from_secondary_out`: the
//!   secondary VM's output, on its way to the primary's compare;
//! - [`driver`]: the single task that owns the rewriter.
//!
//! Each output has its own byte-capped queue, so a slow peer on one direction never
//! blocks the other.

pub mod driver;

use std::process::ExitCode;

use colo_core::Frame;
use colo_core::rewrite::{Direction, RewriteConfig, Rewriter};
use tokio::sync::mpsc;

use self::driver::Driver;
use crate::cli::RewriteArgs;
use crate::shell::control::ControlPlane;
use crate::shell::endpoint::Source;
use crate::shell::outq::{self, OutQueue};
use crate::shell::{Clock, PeerChange, input};

/// What the I/O tasks tell the rewrite driver.
#[derive(Debug)]
pub enum Event {
    /// Whole frames (one read's worth, in order), to be rewritten in this direction.
    Frames(Direction, Vec<Frame>),
    /// A peer of an endpoint connected or went away.
    Peer(PeerChange),
}

impl From<PeerChange> for Event {
    fn from(p: PeerChange) -> Self {
        Self::Peer(p)
    }
}

/// Run `colo-proxy rewrite` until SIGINT or SIGTERM.
pub fn run(args: &RewriteArgs) -> anyhow::Result<ExitCode> {
    args.validate()?;
    crate::shell::block_on(args.runtime, serve(args))
}

async fn serve(args: &RewriteArgs) -> anyhow::Result<()> {
    let decoder = crate::shell::decoder_config(args.vnet_hdr_support);
    let shutdown = crate::shell::shutdown_signal()?;

    // Bind everything first, so that address errors stop us before anything runs.
    let to_in = Source::bind("to_secondary_in", args.to_secondary_in.clone()).await?;
    let to_out = Source::bind("to_secondary_out", args.to_secondary_out.clone()).await?;
    let from_in = Source::bind("from_secondary_in", args.from_secondary_in.clone()).await?;
    let from_out = Source::bind("from_secondary_out", args.from_secondary_out.clone()).await?;
    let control = ControlPlane::bind(&args.operator)?;

    let (in_tx, in_rx) = mpsc::channel(input::CHANNEL_BATCHES);
    let cap = usize::try_from(args.out_buffer).unwrap_or(usize::MAX);
    let to_q = OutQueue::new(cap);
    let from_q = OutQueue::new(cap);

    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(input::run(to_in, decoder, in_tx.clone(), |f| {
        Event::Frames(Direction::ToSecondary, f)
    }));
    tasks.spawn(input::run(from_in, decoder, in_tx.clone(), |f| {
        Event::Frames(Direction::FromSecondary, f)
    }));
    tasks.spawn(outq::run(to_out, to_q.clone(), in_tx.clone()));
    tasks.spawn(outq::run(from_out, from_q.clone(), in_tx.clone()));
    let (ctl_rx, events) = control.spawn(&mut tasks).await?;
    drop(in_tx);

    tracing::info!(
        vnet_hdr_support = args.vnet_hdr_support,
        "filter-rewriter running"
    );
    let driver = Driver {
        rewriter: Rewriter::new(RewriteConfig::default()),
        vnet_hdr: args.vnet_hdr_support,
        to_secondary: to_q,
        from_secondary: from_q,
        events,
        clock: Clock::new(),
        peers: crate::shell::driver::Peers::listed([
            "to_secondary_in",
            "to_secondary_out",
            "from_secondary_in",
            "from_secondary_out",
        ]),
    };
    crate::shell::driver::run(driver, in_rx, ctl_rx, shutdown).await;
    tasks.shutdown().await;
    Ok(())
}
