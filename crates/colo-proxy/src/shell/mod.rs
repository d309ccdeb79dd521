//! Pieces shared by the daemon roles (`compare`, `rewrite`, `primary`,
//! `secondary`): transport endpoints, QEMU-framed readers, byte-capped output queues
//! that survive reconnects, the JSON-lines control socket and the driver loop.
//!
//! - [`endpoint`]: `unix:PATH` / `tcp:HOST:PORT` endpoints, listening or `,connect`;
//! - [`input`]: a reader task per input endpoint (QEMU framing, [`colo_core::codec`]);
//! - [`outq`]: a bounded queue of encoded frames and the task writing it to a peer;
//! - [`control`]: the control socket (`docs/control-protocol.md`);
//! - [`metrics`]: the Prometheus endpoint (`--metrics`);
//! - [`engine_view`]: a compare engine's metrics and flow-policy commands;
//! - [`driver`]: the select loop every role's driver runs ([`driver::Role`]);
//! - [`poll`]: polling the sockets for a while after each burst of work
//!   (`--poll-us`, `--busy-poll`).
//!
//! The I/O tasks only frame bytes; each role's driver task owns its sans-IO state
//! machine and receives everything over one channel of its own event type, which
//! must accept a [`PeerChange`].

pub mod control;
pub mod driver;
pub mod endpoint;
pub mod engine_view;
pub mod input;
pub mod metrics;
pub mod outq;
pub mod poll;

/// A peer of an endpoint connected (`up`) or went away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerChange {
    /// The endpoint's role (`primary_in`, `outdev`, ...).
    pub role: &'static str,
    /// Connected or disconnected.
    pub up: bool,
}

impl PeerChange {
    /// Tell the driver that `role`'s peer came (`up`) or went. `false` means the
    /// driver is gone and the I/O task should stop.
    pub async fn announce<E: From<Self>>(
        tx: &tokio::sync::mpsc::Sender<E>,
        role: &'static str,
        up: bool,
    ) -> bool {
        tx.send(Self { role, up }.into()).await.is_ok()
    }
}

/// The driver's clock: tokio's monotonic clock as a [`colo_core::Instant`] counted
/// from `start`.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// `Instant::ZERO`.
    pub start: tokio::time::Instant,
}

impl Clock {
    /// A clock starting now.
    #[must_use]
    pub fn new() -> Self {
        Self {
            start: tokio::time::Instant::now(),
        }
    }

    /// Now.
    #[must_use]
    pub fn now(&self) -> colo_core::Instant {
        let micros = self.start.elapsed().as_micros();
        colo_core::Instant::from_micros(u64::try_from(micros).unwrap_or(u64::MAX))
    }

    /// A core instant as a tokio instant.
    #[must_use]
    pub fn to_tokio(self, at: colo_core::Instant) -> tokio::time::Instant {
        self.start + std::time::Duration::from_micros(at.as_micros())
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// QEMU stream framing, with the vnet header length field when `vnet_hdr`.
#[must_use]
pub(crate) fn decoder_config(vnet_hdr: bool) -> colo_core::codec::DecoderConfig {
    colo_core::codec::DecoderConfig {
        vnet_hdr,
        ..colo_core::codec::DecoderConfig::default()
    }
}

/// A future that completes with the signal's name on SIGTERM or SIGINT. Set up
/// before anything runs, so that an early signal is not lost.
pub(crate) fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = &'static str>> {
    use anyhow::Context as _;
    use tokio::signal::unix::{SignalKind, signal};
    let mut sigterm = signal(SignalKind::terminate()).context("cannot catch SIGTERM")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot catch SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = sigterm.recv() => "SIGTERM",
            _ = sigint.recv() => "SIGINT",
        }
    })
}

/// How a daemon role's runtime waits for work; flattened into every daemon role.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct RuntimeArgs {
    /// After each burst of work, keep polling the sockets for this many microseconds
    /// before sleeping: a frame that arrives within it is picked up without a
    /// wake-up (several microseconds on a VM), at the price of that much spinning per
    /// burst. 0 sleeps at once. QEMU's iothreads poll the same way (`poll-max-ns`,
    /// 32 µs by default).
    #[arg(long, value_name = "US", default_value_t = 32,
          value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    pub poll_us: u64,

    /// Poll the sockets all the time, never sleeping: one core is kept 100% busy even
    /// when idle. For hosts with a core to spare for the proxy
    /// (docs/performance.md, "busy-poll").
    #[arg(long)]
    pub busy_poll: bool,
}

impl Default for RuntimeArgs {
    fn default() -> Self {
        Self {
            poll_us: 32,
            busy_poll: false,
        }
    }
}

/// Run a role to completion on a single-threaded tokio runtime (the engine and the
/// rewriter are owned by one task, so more threads would only add hand-offs), with
/// the socket polling of `runtime` ([`poll`]).
pub(crate) fn block_on(
    runtime: RuntimeArgs,
    role: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<std::process::ExitCode> {
    use anyhow::Context as _;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    rt.block_on(async {
        let poller = poll::start(runtime);
        let result = role.await;
        if let Some(poller) = poller {
            poller.abort();
        }
        result
    })?;
    Ok(std::process::ExitCode::SUCCESS)
}
