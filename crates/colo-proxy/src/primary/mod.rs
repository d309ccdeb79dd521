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

use std::process::ExitCode;

use colo_core::engine::Engine;
use tokio::sync::mpsc;

use self::driver::{Driver, MirrorStats};
use crate::cli::{parse_on_off, parse_size};
use crate::link::proto::LinkRole;
use crate::link::{self, LinkArgs, RoleEvent};
use crate::port::{Port, PortSpec};
use crate::qmp::QmpLink;
use crate::shell::control::ControlPlane;
use crate::shell::driver::Peers;
use crate::shell::endpoint::{Endpoint, Source};
use crate::shell::outq::OutQueue;
use crate::shell::{Clock, input};

/// Options of `colo-proxy primary`.
#[derive(Debug, Clone, clap::Args)]
#[command(mut_arg(crate::qmp::args::QMP_HEARTBEAT_TIMEOUT_ID, |a| a.long("qmp-heartbeat-timeout")))]
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

    /// The control socket and the metrics endpoint.
    #[command(flatten)]
    pub operator: crate::shell::control::OperatorArgs,

    /// How the runtime waits for work (`--busy-poll`).
    #[command(flatten)]
    pub runtime: crate::shell::RuntimeArgs,

    /// The compare engine's options (as `compare`).
    #[command(flatten)]
    pub engine: crate::cli::EngineArgs,

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

    /// The QMP checkpoint driver (as `compare`; its heartbeat option is
    /// --qmp-heartbeat-timeout here).
    #[command(flatten)]
    pub qmp: crate::qmp::QmpArgs,
}

/// Run `colo-proxy primary` until SIGINT or SIGTERM.
pub fn run(args: &PrimaryArgs) -> anyhow::Result<ExitCode> {
    crate::cli::ensure_distinct(
        "port",
        &[("--client", &args.client), ("--pvm", &args.pvm)],
        |p| *p,
    )?;
    args.link_options.validate()?;
    args.engine.validate()?;
    crate::shell::block_on(args.runtime, async {
        serve(args, crate::shell::shutdown_signal()?).await
    })
}

/// Run the primary until `shutdown` completes (the daemon: SIGINT or SIGTERM; the
/// live demo: its own end).
pub(crate) async fn serve(
    args: &PrimaryArgs,
    shutdown: impl std::future::Future<Output = &'static str>,
) -> anyhow::Result<()> {
    let config = args.engine.engine_config();
    let decoder = crate::shell::decoder_config(args.vnet_hdr_support);

    // Open everything first, so that address errors stop us before anything runs.
    let client = Port::bind("client", &args.client).await?;
    let pvm = Port::bind("pvm", &args.pvm).await?;
    let link_src = Source::bind(link::ROLE, args.link.clone()).await?;
    let control = ControlPlane::bind(&args.operator)?;

    let (in_tx, in_rx) = mpsc::channel(input::CHANNEL_BATCHES);
    let cap = usize::try_from(args.out_buffer).unwrap_or(usize::MAX);
    let client_out = client.output(args.vnet_hdr_support, cap);
    let pvm_out = pvm.output(args.vnet_hdr_support, cap);
    let link_q = OutQueue::new(cap);

    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(client.run(
        decoder,
        client_out.queue.clone(),
        in_tx.clone(),
        RoleEvent::Client,
    ));
    tasks.spawn(pvm.run(decoder, pvm_out.queue.clone(), in_tx.clone(), RoleEvent::Vm));
    let link_config = args.link_options.config(LinkRole::Primary);
    tasks.spawn(link::run(
        link_src,
        link_config,
        link_q.clone(),
        in_tx.clone(),
    ));
    let (ctl_rx, events) = control.spawn(&mut tasks).await?;
    let qmp = QmpLink::spawn(&args.qmp, &mut tasks, &in_tx);
    drop(in_tx);

    tracing::info!(
        client = %args.client,
        pvm = %args.pvm,
        link = %args.link,
        compare_timeout_ms = args.engine.compare_timeout,
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
            peers: Peers::listed(["client", "pvm", link::ROLE]),
            qmp,
        },
        pvm: pvm_out,
        link: link_q,
        link_up: false,
        mirror: MirrorStats::default(),
    };
    crate::shell::driver::run(driver, in_rx, ctl_rx, shutdown).await;
    // Dropping the tasks closes the sockets and removes the Unix socket files.
    tasks.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use crate::cli::{Cli, Command};
    use crate::port::PortSpec;

    fn parse(args: &[&str]) -> Result<super::PrimaryArgs, String> {
        let mut v = vec!["colo-proxy", "primary"];
        v.extend_from_slice(args);
        match Cli::try_parse_from(v).map(|c| c.command) {
            Ok(Command::Primary(a)) => Ok(a),
            Ok(other) => panic!("not primary: {other:?}"),
            Err(e) => Err(e.to_string()),
        }
    }

    #[test]
    fn cli_contract() {
        let a = parse(&[
            "--client",
            "tap:tap0",
            "--pvm",
            "stream:unix:/run/pvm.sock",
            "--link",
            "tcp:10.0.0.2:9000,connect",
            "--control",
            "unix:/run/p.ctl",
            "--compare-timeout",
            "100",
            "--expired-scan-cycle",
            "50",
            "--max-queue-size",
            "64",
            "--vnet-hdr-support=on",
            "--out-buffer",
            "1M",
        ])
        .unwrap();
        assert_eq!(a.client, PortSpec::Tap("tap0".into()));
        assert!(a.link.connect);
        assert_eq!(
            (
                a.engine.compare_timeout,
                a.engine.expired_scan_cycle,
                a.engine.max_queue_size
            ),
            (100, 50, 64)
        );
        assert!(a.vnet_hdr_support);
        assert_eq!(a.out_buffer, 1 << 20);
        let d = parse(&[
            "--client",
            "dgram:127.0.0.1:5000=127.0.0.1:5001",
            "--pvm",
            "stream:tcp:127.0.0.1:7000,connect",
            "--link",
            "unix:/run/link.sock",
        ])
        .unwrap();
        assert!(!d.vnet_hdr_support);
        assert_eq!(d.engine.compare_timeout, 3000);
        d.link_options.validate().unwrap();
        assert!(parse(&["--client", "tap:x", "--link", "unix:/l"]).is_err());
        let bad = parse(&[
            "--client", "nonsense", "--pvm", "tap:a", "--link", "unix:/l",
        ]);
        assert!(bad.unwrap_err().contains("a port is"));
        let hb = parse(&[
            "--client",
            "tap:a",
            "--pvm",
            "tap:b",
            "--link",
            "unix:/l",
            "--heartbeat-interval",
            "500",
            "--heartbeat-timeout",
            "500",
        ])
        .unwrap();
        assert!(hb.link_options.validate().is_err());
        assert!(!hb.qmp.enabled());
        // The QMP driver's heartbeat has its own name next to the link's.
        let q = parse(&[
            "--client",
            "tap:a",
            "--pvm",
            "tap:b",
            "--link",
            "unix:/l",
            "--qmp-primary",
            "unix:/run/pvm.qmp",
            "--heartbeat-timeout",
            "4000",
            "--qmp-heartbeat-timeout",
            "700",
        ])
        .unwrap();
        assert!(q.qmp.enabled());
        assert_eq!(
            (q.link_options.heartbeat_timeout, q.qmp.heartbeat_timeout),
            (4000, 700)
        );
    }
}
