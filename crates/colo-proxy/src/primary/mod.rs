//! `colo-proxy primary`: the primary host's proxy in the two-host design.
//!
//! Data paths (one driver task owns the compare engine, see [`driver`]):
//! - client port → primary VM port, mirrored over the link to the secondary proxy,
//!   and shown to the engine ([`colo_core::engine::Engine::observe_client_frame`]);
//! - primary VM port → engine ([`colo_core::Side::Primary`]);
//! - link (the secondary's rewritten output) → engine ([`colo_core::Side::Secondary`]);
//! - engine releases → client port, in order.
//!
//! The compare side is `colo-proxy compare`'s driver with the link in the place of
//! `secondary_in`: the same events, degraded mode while the link is down, failover.
//! `checkpoint-done` is also forwarded to the secondary over the link.

pub mod driver;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use colo_core::codec::DecoderConfig;
use colo_core::engine::{Engine, EngineConfig};
use colo_core::{Duration, Frame};
use tokio::sync::{broadcast, mpsc};

use self::driver::{Driver, MirrorStats};
use crate::cli::{parse_control_path, parse_on_off, parse_size};
use crate::link::proto::LinkRole;
use crate::link::{self, LinkArgs, LinkEvent};
use crate::port::{Port, PortSpec};
use crate::shell::driver::Peers;
use crate::shell::endpoint::{Endpoint, Source, UnixServer};
use crate::shell::outq::{FrameOut, OutQueue};
use crate::shell::{Clock, PeerChange, control, input};

/// Options of `colo-proxy primary`.
#[derive(Debug, Clone, clap::Args)]
pub struct PrimaryArgs {
    /// Where the client's traffic comes in and released output goes out: tap:IFNAME,
    /// stream:unix:PATH[,connect], stream:tcp:HOST:PORT[,connect] or
    /// dgram:LOCALHOST:PORT=REMOTEHOST:PORT.
    #[arg(long, value_name = "PORT")]
    pub client: PortSpec,

    /// The primary VM's NIC (same PORT syntax).
    #[arg(long, value_name = "PORT")]
    pub pvm: PortSpec,

    /// The link to the secondary proxy: unix:PATH or tcp:HOST:PORT, listening by
    /// default, `,connect` to dial (typically tcp:SECONDARY:9000,connect).
    #[arg(long, value_name = "ENDPOINT")]
    pub link: Endpoint,

    /// Control socket (docs/control-protocol.md): unix:PATH or a plain path.
    #[arg(long, value_name = "unix:PATH", value_parser = parse_control_path)]
    pub control: Option<PathBuf>,

    /// Milliseconds a frame may wait unmatched before a checkpoint is requested.
    #[arg(long, value_name = "MS", default_value_t = 3000,
          value_parser = clap::value_parser!(u64).range(1..=u64::from(u32::MAX)))]
    pub compare_timeout: u64,

    /// Milliseconds between expiry scans (as `compare`).
    #[arg(long, value_name = "MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..=u64::from(u32::MAX)))]
    pub expired_scan_cycle: u64,

    /// Primary frames held per connection before a checkpoint is requested.
    #[arg(long, value_name = "N", default_value_t = 16_384)]
    pub max_queue_size: usize,

    /// Stream ports carry the be32 vnet_hdr_len field (QEMU vnet_hdr_support).
    #[arg(long, value_name = "on|off", num_args = 0..=1, default_value = "off",
          default_missing_value = "on", value_parser = parse_on_off)]
    pub vnet_hdr_support: bool,

    /// Bytes buffered per output (client, pvm, link) for a slow or absent peer;
    /// beyond it frames are dropped and counted. Accepts K, M, G suffixes.
    #[arg(long, value_name = "SIZE", default_value = "16M", value_parser = parse_size)]
    pub out_buffer: u64,

    /// Link options.
    #[command(flatten)]
    pub link_options: LinkArgs,
}

/// What the I/O tasks tell the primary's driver.
#[derive(Debug)]
pub enum Event {
    /// A frame from the client port.
    Client(Frame),
    /// A frame from the primary VM.
    Pvm(Frame),
    /// Something from the link.
    Link(LinkEvent),
    /// A peer came or went.
    Peer(PeerChange),
}

impl From<PeerChange> for Event {
    fn from(p: PeerChange) -> Self {
        Self::Peer(p)
    }
}

impl From<LinkEvent> for Event {
    fn from(e: LinkEvent) -> Self {
        Self::Link(e)
    }
}

/// Run `colo-proxy primary` until SIGINT or SIGTERM.
pub fn run(args: &PrimaryArgs) -> anyhow::Result<ExitCode> {
    if args.client == args.pvm {
        anyhow::bail!(
            "--client and --pvm are the same port ({}); each needs its own",
            args.client
        );
    }
    crate::shell::block_on(serve(args))
}

async fn serve(args: &PrimaryArgs) -> anyhow::Result<()> {
    let config = EngineConfig {
        compare_timeout: Duration::from_millis(args.compare_timeout),
        expired_scan_cycle: Duration::from_millis(args.expired_scan_cycle),
        max_held_frames_per_conn: args.max_queue_size,
        ..EngineConfig::default()
    };
    let decoder = DecoderConfig {
        vnet_hdr: args.vnet_hdr_support,
        ..DecoderConfig::default()
    };
    let shutdown = crate::shell::shutdown_signal()?;

    // Open everything first, so that address errors stop us before anything runs.
    let client = Port::bind("client", &args.client).await?;
    let pvm = Port::bind("pvm", &args.pvm).await?;
    let link_src = Source::bind(link::ROLE, args.link.clone()).await?;
    let control = match &args.control {
        Some(path) => Some(UnixServer::bind(path).context("--control")?),
        None => None,
    };

    let (in_tx, in_rx) = mpsc::channel(input::CHANNEL_FRAMES);
    let (ctl_tx, ctl_rx) = mpsc::channel(16);
    let (events, _) = broadcast::channel(control::EVENT_BACKLOG);
    let cap = usize::try_from(args.out_buffer).unwrap_or(usize::MAX);
    let client_out = FrameOut {
        queue: OutQueue::new(cap),
        framing: client.framing(args.vnet_hdr_support),
        role: "client",
    };
    let pvm_out = FrameOut {
        queue: OutQueue::new(cap),
        framing: pvm.framing(args.vnet_hdr_support),
        role: "pvm",
    };
    let link_q = OutQueue::new(cap);

    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(client.run(
        decoder,
        client_out.queue.clone(),
        in_tx.clone(),
        Event::Client,
    ));
    tasks.spawn(pvm.run(decoder, pvm_out.queue.clone(), in_tx.clone(), Event::Pvm));
    let link_config = args.link_options.config(LinkRole::Primary);
    tasks.spawn(link::run(
        link_src,
        link_config,
        link_q.clone(),
        in_tx.clone(),
    ));
    if let Some(server) = control {
        tracing::info!(path = %args.control.as_ref().map(|p| p.display().to_string()).unwrap_or_default(), "control socket listening");
        tasks.spawn(control::serve(server, ctl_tx, events.clone()));
    }
    drop(in_tx);

    tracing::info!(
        client = %args.client,
        pvm = %args.pvm,
        link = %args.link,
        compare_timeout_ms = args.compare_timeout,
        "primary proxy running"
    );
    let driver = Driver {
        compare: crate::compare::driver::Driver {
            engine: Engine::new(config),
            out: client_out,
            secondary_role: link::ROLE,
            events,
            notify: None,
            clock: Clock::new(),
            notify_unknown: 0,
            failed_over: false,
            checkpoint_done_by: [0; 2],
            peers: Peers::default(),
        },
        pvm: pvm_out,
        link: link_q,
        link_up: false,
        mirror: MirrorStats::default(),
    };
    driver.run(in_rx, ctl_rx, shutdown).await;
    // Dropping the tasks closes the sockets and removes the Unix socket files.
    tasks.shutdown().await;
    Ok(())
}
