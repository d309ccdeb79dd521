//! `colo-proxy compare`: a drop-in for QEMU's `colo-compare` object.
//!
//! A thin tokio shell around the sans-IO [`colo_core::engine::Engine`], built from
//! the shared pieces in [`crate::shell`] (endpoints, framed readers, the outdev
//! queue, the control socket), plus:
//! - [`notify`]: the Xen notify protocol (`--notify-dev`);
//! - [`driver`]: the single task that owns the engine.
//!
//! Degraded mode: while `secondary_in` has no peer, the engine passes primary frames
//! through unchecked (`degraded` control event); when a peer is back it compares
//! again after the next checkpoint (`secondary-back`). A `failover` command makes
//! pass-through permanent.
//!
//! Everything runs on one current-thread runtime: the engine is single-owner anyway,
//! and the I/O tasks only frame bytes.

pub mod driver;
pub mod notify;

use std::process::ExitCode;

use colo_core::engine::Engine;
use colo_core::{Frame, Side};
use tokio::sync::mpsc;

use crate::cli::CompareArgs;
use crate::qmp::{QmpInput, QmpLink, Vm};

use self::driver::Driver;
use crate::shell::control::ControlPlane;
use crate::shell::driver::Peers;
use crate::shell::endpoint::Source;
use crate::shell::outq::{self, FrameOut, Framing, OutQueue};
use crate::shell::{Clock, PeerChange, input};

/// What the I/O tasks tell the compare driver.
#[derive(Debug)]
pub enum Event {
    /// Whole frames from one VM, in arrival order (one read's worth).
    Frames(Side, Vec<Frame>),
    /// A peer of an endpoint connected or went away.
    Peer(PeerChange),
    /// The Xen notify peer said the checkpoint is done (`COLO_CHECKPOINT`).
    NotifyCheckpointDone,
    /// The Xen notify peer sent a message we do not know.
    NotifyUnknown,
    /// A QMP monitor said something (the checkpoint driver, `--qmp-*`).
    Qmp(Vm, QmpInput),
}

impl From<(Vm, QmpInput)> for Event {
    fn from((vm, input): (Vm, QmpInput)) -> Self {
        Self::Qmp(vm, input)
    }
}

impl From<PeerChange> for Event {
    fn from(p: PeerChange) -> Self {
        Self::Peer(p)
    }
}

/// Run `colo-proxy compare` until SIGINT or SIGTERM.
pub fn run(args: &CompareArgs) -> anyhow::Result<ExitCode> {
    args.validate()?;
    crate::shell::block_on(args.runtime, serve(args))
}

async fn serve(args: &CompareArgs) -> anyhow::Result<()> {
    let config = args.engine.engine_config();
    let decoder = crate::shell::decoder_config(args.vnet_hdr_support);

    let shutdown = crate::shell::shutdown_signal()?;

    // Bind everything first, so that address errors stop us before anything runs.
    let primary = Source::bind("primary_in", args.primary_in.clone()).await?;
    let secondary = Source::bind("secondary_in", args.secondary_in.clone()).await?;
    let out = Source::bind("outdev", args.outdev.clone()).await?;
    let notify_src = match &args.notify_dev {
        Some(ep) => Some(Source::bind("notify_dev", ep.clone()).await?),
        None => None,
    };
    let control = ControlPlane::bind(&args.operator)?;

    let (in_tx, in_rx) = mpsc::channel(input::CHANNEL_BATCHES);
    let outq = OutQueue::new(usize::try_from(args.outdev_buffer).unwrap_or(usize::MAX));

    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(input::run(primary, decoder, in_tx.clone(), |f| {
        Event::Frames(Side::Primary, f)
    }));
    tasks.spawn(input::run(secondary, decoder, in_tx.clone(), |f| {
        Event::Frames(Side::Secondary, f)
    }));
    tasks.spawn(outq::run(out, outq.clone(), in_tx.clone()));
    let notify = notify_src.map(|src| {
        let (tx, rx) = mpsc::channel(16);
        tasks.spawn(notify::run(src, rx, in_tx.clone()));
        tx
    });
    let (ctl_rx, events) = control.spawn(&mut tasks).await?;
    let qmp = QmpLink::spawn(&args.qmp, &mut tasks, &in_tx);
    drop(in_tx);

    tracing::info!(
        compare_timeout_ms = args.engine.compare_timeout,
        max_queue_size = args.engine.max_queue_size,
        vnet_hdr_support = args.vnet_hdr_support,
        "colo-compare running"
    );
    let driver = Driver {
        engine: Engine::new(config),
        out: FrameOut {
            queue: outq,
            framing: Framing::Stream {
                vnet_hdr: args.vnet_hdr_support,
            },
            role: "outdev",
        },
        secondary_role: "secondary_in",
        events,
        notify,
        clock: Clock::new(),
        notify_unknown: 0,
        failed_over: false,
        checkpoint_done_by: [0; 2],
        peers: Peers::listed(
            ["primary_in", "secondary_in", "outdev"]
                .into_iter()
                .chain(args.notify_dev.as_ref().map(|_| "notify_dev")),
        ),
        qmp,
    };
    crate::shell::driver::run(driver, in_rx, ctl_rx, shutdown).await;
    // Dropping the tasks closes the sockets and removes the Unix socket files.
    tasks.shutdown().await;
    Ok(())
}
