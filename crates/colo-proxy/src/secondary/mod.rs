//! `colo-proxy secondary`: the secondary host's proxy in the two-host design.
//!
//! Data paths (one driver task owns the rewriter, see [`driver`]):
//! - link (client frames mirrored by the primary) → rewriter
//!   ([`colo_core::rewrite::Direction::ToSecondary`]) → secondary VM port;
//! - secondary VM port → rewriter ([`colo_core::rewrite::Direction::FromSecondary`])
//!   → link, to the primary's compare engine.
//!
//! After a `failover` command (the primary is gone) the secondary VM's output, still
//! rewritten, goes to `--client` instead, client frames from `--client` reach the VM
//! through the rewriter, and the proxy announces the VM's addresses (gratuitous
//! ARP, unsolicited neighbour advertisements) and sends three duplicate ACKs on each
//! live TCP connection so that clients retransmit at once ([`colo_core::announce`]).

pub mod driver;

use std::process::ExitCode;

use colo_core::announce::VmAddresses;
use colo_core::rewrite::{RewriteConfig, Rewriter};
use tokio::sync::mpsc;

use self::driver::{Counters, Driver};
use crate::cli::{parse_on_off, parse_size};
use crate::link::proto::LinkRole;
use crate::link::{self, LinkArgs, RoleEvent};
use crate::port::{Port, PortSpec};
use crate::shell::control::ControlPlane;
use crate::shell::driver::Peers;
use crate::shell::endpoint::{Endpoint, Source};
use crate::shell::outq::OutQueue;
use crate::shell::{Clock, input};

/// Options of `colo-proxy secondary`.
#[derive(Debug, Clone, clap::Args)]
pub struct SecondaryArgs {
    /// The secondary VM's NIC: tap:IFNAME, stream:unix:PATH[,connect],
    /// stream:tcp:HOST:PORT[,connect] or dgram:LOCALHOST:PORT=REMOTEHOST:PORT.
    #[arg(long, value_name = "PORT")]
    pub svm: PortSpec,

    /// The link to the primary proxy: unix:PATH or tcp:HOST:PORT, listening by
    /// default (typically tcp:0.0.0.0:9000), `,connect` to dial.
    #[arg(long, value_name = "ENDPOINT")]
    pub link: Endpoint,

    /// Where the client is reached after a failover (same PORT syntax); unused
    /// before. Without it, failover is refused.
    #[arg(long, value_name = "PORT")]
    pub client: Option<PortSpec>,

    /// The control socket and the metrics endpoint.
    #[command(flatten)]
    pub operator: crate::shell::control::OperatorArgs,

    /// How the runtime waits for work (`--busy-poll`).
    #[command(flatten)]
    pub runtime: crate::shell::RuntimeArgs,

    /// Stream ports carry the be32 vnet_hdr_len field (QEMU vnet_hdr_support).
    #[arg(long, value_name = "on|off", num_args = 0..=1, default_value = "off",
          default_missing_value = "on", value_parser = parse_on_off)]
    pub vnet_hdr_support: bool,

    /// Bytes buffered per output (svm, link, client) for a slow or absent peer;
    /// beyond it frames are dropped and counted. Accepts K, M, G suffixes.
    #[arg(long, value_name = "SIZE", default_value = "16M", value_parser = parse_size)]
    pub out_buffer: u64,

    /// A checkpoint-done from the control socket and one forwarded by the primary
    /// within this many milliseconds of each other are one checkpoint (reset the
    /// rewriter once).
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub checkpoint_pair_window: u64,

    /// Most VM addresses remembered for the failover announcements.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub max_announced_addresses: usize,

    /// Link options.
    #[command(flatten)]
    pub link_options: LinkArgs,
}

/// Run `colo-proxy secondary` until SIGINT or SIGTERM.
pub fn run(args: &SecondaryArgs) -> anyhow::Result<ExitCode> {
    if let Some(client) = &args.client {
        crate::cli::ensure_distinct("port", &[("--client", client), ("--svm", &args.svm)], |p| {
            *p
        })?;
    }
    args.link_options.validate()?;
    crate::shell::block_on(args.runtime, async {
        serve(args, crate::shell::shutdown_signal()?).await
    })
}

/// Run the secondary until `shutdown` completes (the daemon: SIGINT or SIGTERM;
/// the live demo: its own end).
pub(crate) async fn serve(
    args: &SecondaryArgs,
    shutdown: impl std::future::Future<Output = &'static str>,
) -> anyhow::Result<()> {
    let decoder = crate::shell::decoder_config(args.vnet_hdr_support);

    let svm = Port::bind("svm", &args.svm).await?;
    let client = match &args.client {
        Some(spec) => Some(Port::bind("client", spec).await?),
        None => None,
    };
    let link_src = Source::bind(link::ROLE, args.link.clone()).await?;
    let control = ControlPlane::bind(&args.operator)?;

    let (in_tx, in_rx) = mpsc::channel(input::CHANNEL_BATCHES);
    let cap = usize::try_from(args.out_buffer).unwrap_or(usize::MAX);
    let svm_out = svm.output(args.vnet_hdr_support, cap);
    let link_q = OutQueue::new(cap);

    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(svm.run(decoder, svm_out.queue.clone(), in_tx.clone(), RoleEvent::Vm));
    let client_out = client.map(|port| {
        let out = port.output(args.vnet_hdr_support, cap);
        tasks.spawn(port.run(decoder, out.queue.clone(), in_tx.clone(), RoleEvent::Client));
        out
    });
    let link_config = args.link_options.config(LinkRole::Secondary);
    tasks.spawn(link::run(
        link_src,
        link_config,
        link_q.clone(),
        in_tx.clone(),
    ));
    let (ctl_rx, events) = control.spawn(&mut tasks).await?;
    drop(in_tx);

    tracing::info!(svm = %args.svm, link = %args.link, "secondary proxy running");
    let driver = Driver {
        rewriter: Rewriter::new(RewriteConfig::default()),
        svm: svm_out,
        client: client_out,
        link: link_q,
        link_up: false,
        events,
        clock: Clock::new(),
        peers: Peers::listed(
            ["svm", link::ROLE]
                .into_iter()
                .chain(args.client.as_ref().map(|_| "client")),
        ),
        failed_over: false,
        addresses: VmAddresses::new(args.max_announced_addresses),
        pair_window: std::time::Duration::from_millis(args.checkpoint_pair_window),
        last_done: None,
        counters: Counters::default(),
    };
    crate::shell::driver::run(driver, in_rx, ctl_rx, shutdown).await;
    tasks.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use crate::cli::{Cli, Command};

    #[test]
    fn cli_contract() {
        let parse = |args: &[&str]| {
            let mut v = vec!["colo-proxy", "secondary"];
            v.extend_from_slice(args);
            match Cli::try_parse_from(v).map(|c| c.command) {
                Ok(Command::Secondary(a)) => Ok(a),
                Ok(other) => panic!("not secondary: {other:?}"),
                Err(e) => Err(e.to_string()),
            }
        };
        let a = parse(&[
            "--svm",
            "stream:unix:/run/svm.sock",
            "--link",
            "tcp:0.0.0.0:9000",
            "--client",
            "tap:tap1",
            "--control",
            "unix:/run/s.ctl",
            "--vnet-hdr-support",
            "--out-buffer",
            "2M",
        ])
        .unwrap();
        assert!(!a.link.connect);
        assert!(a.client.is_some());
        assert!(a.vnet_hdr_support);
        assert_eq!(a.out_buffer, 2 << 20);
        let b = parse(&[
            "--svm",
            "dgram:127.0.0.1:1=127.0.0.1:2",
            "--link",
            "unix:/l",
        ])
        .unwrap();
        assert!(b.client.is_none());
        assert_eq!(b.checkpoint_pair_window, 1000);
        assert!(parse(&["--link", "unix:/l"]).is_err());
    }
}
