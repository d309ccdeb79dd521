//! Command-line syntax: `colo-proxy [--log-level LEVEL] <COMMAND>`.
//!
//! Each command's arguments live in their own struct here; the code that runs a
//! command lives in its own module (`demo`, ...).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::shell::endpoint::Endpoint;

/// COLO network proxy: compares the primary and secondary VMs' network output,
/// releases what matches and asks for a checkpoint when they diverge.
#[derive(Debug, Parser)]
#[command(name = "colo-proxy", version, propagate_version = true)]
pub struct Cli {
    /// Log filter: error, warn, info, debug, trace, or an EnvFilter directive list
    /// such as `warn,colo_proxy=debug`. Overrides RUST_LOG. Default: warn.
    #[arg(long, global = true, value_name = "LEVEL", value_parser = parse_log_filter)]
    pub log_level: Option<String>,

    /// Read options from this TOML file (also `COLO_PROXY_CONFIG`): top-level
    /// `log-level`, and a table per command (`[compare]`, `[rewrite]`, ...) with keys
    /// named like the long flags. Flags on the command line win over the file.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Print the effective configuration (file, flags and defaults) as TOML and exit.
    #[arg(long, global = true)]
    pub print_config: bool,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Watch COLO work, with no VM and no root: the real primary and secondary
    /// proxies in this process over loopback Unix sockets, a client and two
    /// simulated VMs driving traffic through them, live progress from the proxies'
    /// own counters, a summary and an end-to-end check of what the client received.
    /// `--simulate` runs the compare engine on a simulated clock instead.
    /// Exit codes: 0 the client received exactly what the primary VM sent, 1 not.
    Demo(DemoArgs),
    /// Drop-in for QEMU's colo-compare object: read the primary's and the
    /// secondary's output (QEMU socket framing), release what matches on the outdev,
    /// ask for a checkpoint (control socket, Xen notify device) when they diverge.
    Compare(CompareArgs),
    /// Drop-in for QEMU's filter-rewriter on the secondary host: translates TCP
    /// sequence numbers between the secondary VM's and the primary's spaces, between
    /// two pairs of QEMU-framed chardev streams.
    ///
    /// QEMU wiring it replaces (secondary host): the primary's filter-mirror feeds
    /// client traffic to a chardev that filter-redirector `f1` (`indev`) injects into
    /// the secondary's netdev, where filter-rewriter `rew0` rewrites it on its way to
    /// the guest; the guest's output passes `rew0` and is stolen by filter-redirector
    /// `f2` (`outdev`) towards the primary's colo-compare `secondary_in`. With
    /// colo-proxy rewrite, drop `rew0` and put the proxy on both paths:
    ///
    ///   primary filter-mirror outdev -> --to-secondary-in
    ///   --to-secondary-out -> filter-redirector f1 indev (into the secondary VM)
    ///   filter-redirector f2 outdev (the secondary VM's output) -> --from-secondary-in
    ///   --from-secondary-out -> primary colo-compare secondary_in
    ///
    /// An ENDPOINT is `unix:PATH` or `tcp:HOST:PORT`, listening by default (QEMU's
    /// `server=on`); add `,connect` to dial out instead (retried until the peer is up).
    /// Frames keep their framing (and vnet header) from input to output.
    #[command(verbatim_doc_comment)]
    Rewrite(RewriteArgs),
    /// Send one command to a running proxy's control socket and print the reply.
    Ctl(CtlArgs),
    /// Compare two captures (primary and secondary VM) on the compare engine, with
    /// the capture timestamps as its clock, and explain every divergence.
    /// Exit codes: 0 identical, 1 diverged, 2 usage error, 3 damaged or unreadable capture.
    Replay(crate::replay::ReplayArgs),
    /// The primary proxy of the two-host design: faces the client (PORT), feeds the
    /// primary VM (PORT), mirrors client traffic to the secondary proxy over the
    /// link and compares the secondary's output against the primary VM's.
    Primary(crate::primary::PrimaryArgs),
    /// The secondary proxy of the two-host design: rewrites mirrored client traffic
    /// into the secondary VM and its output back over the link; after a failover it
    /// faces the client itself (--client PORT).
    Secondary(crate::secondary::SecondaryArgs),
}

/// Options of `colo-proxy compare`, named after colo-compare's properties.
///
/// An ENDPOINT is `unix:PATH` or `tcp:HOST:PORT`, listening by default (QEMU's
/// `server=on`); add `,connect` to dial out instead (retried until the peer is up).
#[derive(Debug, Clone, Args)]
pub struct CompareArgs {
    /// Where the primary VM's output arrives (colo-compare `primary_in`).
    #[arg(long, value_name = "ENDPOINT")]
    pub primary_in: Endpoint,

    /// Where the secondary VM's output arrives (colo-compare `secondary_in`).
    #[arg(long, value_name = "ENDPOINT")]
    pub secondary_in: Endpoint,

    /// Where released primary frames go (colo-compare `outdev`).
    #[arg(long, value_name = "ENDPOINT")]
    pub outdev: Endpoint,

    /// Xen COLO notify channel (colo-compare `notify_dev`): `DO_CHECKPOINT` out,
    /// `COLO_CHECKPOINT` and `COLO_USERSPACE_PROXY_INIT` in.
    #[arg(long, value_name = "ENDPOINT")]
    pub notify_dev: Option<Endpoint>,

    /// The compare engine's options.
    #[command(flatten)]
    pub engine: EngineArgs,

    /// Read and write the be32 vnet_hdr_len field on primary_in, secondary_in and
    /// outdev. Accepts `--vnet-hdr-support`, `--vnet-hdr-support=on|off`.
    #[arg(long, value_name = "on|off", num_args = 0..=1, default_value = "off",
          default_missing_value = "on", value_parser = parse_on_off)]
    pub vnet_hdr_support: bool,

    /// The control socket and the metrics endpoint.
    #[command(flatten)]
    pub operator: crate::shell::control::OperatorArgs,

    /// How the runtime waits for work (`--busy-poll`).
    #[command(flatten)]
    pub runtime: crate::shell::RuntimeArgs,

    /// Bytes of released frames buffered for a slow or disconnected outdev; beyond
    /// it released frames are dropped and counted. Accepts K, M, G suffixes.
    #[arg(long, value_name = "SIZE", default_value = "16M", value_parser = parse_size)]
    pub outdev_buffer: u64,

    /// The QMP checkpoint driver (`--qmp-primary`, `--qmp-secondary`, ...).
    #[command(flatten)]
    pub qmp: crate::qmp::QmpArgs,
}

impl CompareArgs {
    /// Checks clap cannot express: the three data endpoints must differ (as QEMU requires).
    pub fn validate(&self) -> anyhow::Result<()> {
        let eps = [
            ("--primary-in", &self.primary_in),
            ("--secondary-in", &self.secondary_in),
            ("--outdev", &self.outdev),
        ];
        ensure_distinct("endpoint", &eps, |ep| &ep.addr)?;
        self.engine.validate()
    }
}

/// The compare engine's options, shared by `compare` and `primary` (named after
/// colo-compare's properties).
#[derive(Debug, Clone, Args)]
pub struct EngineArgs {
    /// Milliseconds a frame may wait unmatched before a checkpoint is requested.
    #[arg(long, value_name = "MS", default_value_t = 3000,
          value_parser = clap::value_parser!(u64).range(1..=u64::from(u32::MAX)))]
    pub compare_timeout: u64,

    /// Milliseconds between expiry scans (QEMU's timer period; our deadlines are
    /// exact, so this only bounds how stale idle expiry may be).
    #[arg(long, value_name = "MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..=u64::from(u32::MAX)))]
    pub expired_scan_cycle: u64,

    /// Primary frames held per connection before a checkpoint is requested (the
    /// engine's max_held_frames_per_conn; QEMU's default is 1024 and drops silently).
    #[arg(long, value_name = "N", default_value_t = 16_384)]
    pub max_queue_size: usize,

    /// Release the primary's output of matching flows without comparing (and discard
    /// the secondary's): `PROTO:PORT` or `PROTO:ADDR:PORT`, PROTO tcp or udp, e.g.
    /// `udp:123` (NTP). Repeatable. More can be set at run time (set-flow-policy).
    #[arg(long, value_name = "PROTO:[ADDR:]PORT", action = clap::ArgAction::Append)]
    pub pass_port: Vec<colo_core::engine::FlowMatch>,
}

impl EngineArgs {
    /// Checks clap cannot express.
    pub fn validate(&self) -> anyhow::Result<()> {
        let max_rules = colo_core::engine::EngineConfig::default().max_flow_rules;
        anyhow::ensure!(
            self.pass_port.len() <= max_rules,
            "too many --pass-port rules ({}); at most {max_rules}",
            self.pass_port.len(),
        );
        Ok(())
    }

    /// The engine configuration these options ask for.
    #[must_use]
    pub fn engine_config(&self) -> colo_core::engine::EngineConfig {
        use colo_core::engine::{EngineConfig, FlowPolicy, FlowRule};
        EngineConfig {
            compare_timeout: colo_core::Duration::from_millis(self.compare_timeout),
            expired_scan_cycle: colo_core::Duration::from_millis(self.expired_scan_cycle),
            max_held_frames_per_conn: self.max_queue_size,
            flow_rules: self
                .pass_port
                .iter()
                .map(|&matcher| FlowRule {
                    matcher,
                    policy: FlowPolicy::Pass,
                })
                .collect(),
            ..EngineConfig::default()
        }
    }
}

/// Options of `colo-proxy rewrite` (see the `Rewrite` command for the wiring).
#[derive(Debug, Clone, Args)]
pub struct RewriteArgs {
    /// Client traffic mirrored from the primary (the primary's filter-mirror
    /// `outdev`): acknowledgements are moved into the secondary's sequence space.
    #[arg(long, value_name = "ENDPOINT")]
    pub to_secondary_in: Endpoint,

    /// Where rewritten client traffic goes, towards the secondary VM (the chardev a
    /// filter-redirector `indev` reads on the secondary's netdev).
    #[arg(long, value_name = "ENDPOINT")]
    pub to_secondary_out: Endpoint,

    /// The secondary VM's output (a filter-redirector `outdev` on the secondary's
    /// netdev): sequence numbers are moved into the primary's space.
    #[arg(long, value_name = "ENDPOINT")]
    pub from_secondary_in: Endpoint,

    /// Where the rewritten secondary output goes: the primary's colo-compare
    /// `secondary_in` (or `colo-proxy compare --secondary-in`).
    #[arg(long, value_name = "ENDPOINT")]
    pub from_secondary_out: Endpoint,

    /// Read and write the be32 vnet_hdr_len field on all four endpoints (QEMU's
    /// `vnet_hdr_support` on the rewriter and redirectors). Accepts
    /// `--vnet-hdr-support`, `--vnet-hdr-support=on|off`.
    #[arg(long, value_name = "on|off", num_args = 0..=1, default_value = "off",
          default_missing_value = "on", value_parser = parse_on_off)]
    pub vnet_hdr_support: bool,

    /// The control socket and the metrics endpoint.
    #[command(flatten)]
    pub operator: crate::shell::control::OperatorArgs,

    /// How the runtime waits for work (`--busy-poll`).
    #[command(flatten)]
    pub runtime: crate::shell::RuntimeArgs,

    /// Bytes buffered per output for a slow or disconnected peer; beyond it frames
    /// are dropped and counted. Accepts K, M, G suffixes.
    #[arg(long, value_name = "SIZE", default_value = "16M", value_parser = parse_size)]
    pub out_buffer: u64,
}

impl RewriteArgs {
    /// The four data endpoints must differ.
    pub fn validate(&self) -> anyhow::Result<()> {
        let eps = [
            ("--to-secondary-in", &self.to_secondary_in),
            ("--to-secondary-out", &self.to_secondary_out),
            ("--from-secondary-in", &self.from_secondary_in),
            ("--from-secondary-out", &self.from_secondary_out),
        ];
        ensure_distinct("endpoint", &eps, |ep| &ep.addr)?;
        Ok(())
    }
}

/// Options of `colo-proxy ctl`.
#[derive(Debug, Clone, Args)]
pub struct CtlArgs {
    /// The proxy's control socket: `unix:PATH` or a plain path.
    #[arg(long, value_name = "unix:PATH", value_parser = parse_control_path)]
    pub control: PathBuf,

    /// The command to send.
    #[arg(value_enum)]
    pub command: CtlCommand,

    /// The command's arguments: `set-log-level FILTER`,
    /// `set-flow-policy PROTO:[ADDR:]PORT pass|compare`.
    #[arg(value_name = "ARG")]
    pub args: Vec<String>,
}

/// Commands `colo-proxy ctl` can send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CtlCommand {
    /// Print the counters.
    Stats,
    /// Tell the proxy the COLO checkpoint has completed.
    CheckpointDone,
    /// Tell the proxy the other VM is gone (compare: stop comparing; rewrite: new
    /// connections pass untouched).
    Failover,
    /// Change the log filter: `set-log-level debug` or `set-log-level warn,colo_proxy=debug`.
    SetLogLevel,
    /// Set a flow's policy (compare): `set-flow-policy udp:123 pass`.
    SetFlowPolicy,
    /// List the flow policies in force (compare).
    GetFlowPolicy,
}

impl CtlCommand {
    /// The command's name in the control protocol.
    #[must_use]
    pub const fn wire_name(self) -> &'static str {
        match self {
            Self::Stats => "stats",
            Self::CheckpointDone => "checkpoint-done",
            Self::Failover => "failover",
            Self::SetLogLevel => "set-log-level",
            Self::SetFlowPolicy => "set-flow-policy",
            Self::GetFlowPolicy => "get-flow-policy",
        }
    }
}

/// `on`/`off` (QEMU style) or `true`/`false`.
pub(crate) fn parse_on_off(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => Err(format!("{s:?}: use on or off")),
    }
}

/// Each named option must have its own endpoint or port (`what`): two equal `key`s
/// are a usage error naming both options.
pub(crate) fn ensure_distinct<T: std::fmt::Display, K: PartialEq>(
    what: &str,
    items: &[(&str, T)],
    key: impl Fn(&T) -> K,
) -> anyhow::Result<()> {
    for (i, (a, x)) in items.iter().enumerate() {
        for (b, y) in &items[i + 1..] {
            if key(x) == key(y) {
                anyhow::bail!("{a} and {b} are the same {what} ({x}); each needs its own");
            }
        }
    }
    Ok(())
}

/// A control socket path: `unix:PATH` or `PATH`.
pub(crate) fn parse_control_path(s: &str) -> Result<PathBuf, String> {
    let path = s.strip_prefix("unix:").unwrap_or(s);
    if path.is_empty() || path.contains(',') && path.ends_with(",connect") {
        return Err(format!("{s:?}: the control socket is unix:PATH"));
    }
    Ok(PathBuf::from(path))
}

/// Options of `colo-proxy demo`.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Number of client TCP connections, each fetching one HTTP-like response.
    #[arg(long, value_name = "N", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub connections: u32,

    /// Response body size per connection; accepts K, M suffixes (powers of 1024).
    /// In the live run every other connection gets a small reply instead.
    #[arg(long, value_name = "SIZE", default_value = "256K", value_parser = parse_size)]
    pub bytes_per_connection: u64,

    /// Number of UDP request/response exchanges.
    #[arg(long, value_name = "N", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub datagrams: u32,

    /// Seed of every random choice (segmentation, delays, reordering, content; in the
    /// live run the ISNs and the secondary VM's segment sizes).
    #[arg(long, value_name = "SEED", default_value_t = 1)]
    pub seed: u64,

    /// Make the secondary's replies differ on some connections and datagrams (its
    /// clock differs), so the engine asks for checkpoints. Every 3rd by default.
    #[arg(long)]
    pub nondeterministic: bool,

    /// With nondeterminism, which replies differ: every Nth connection and datagram.
    /// Implies --nondeterministic.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub diverge_every: Option<u32>,

    /// Time a checkpoint takes, in milliseconds (simulated, or slept in the live run).
    #[arg(long, value_name = "MS", default_value_t = 20,
          value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub checkpoint_ms: u64,

    /// Live run: pause between two connections, in milliseconds (a quarter of it
    /// between two datagrams), so that the progress can be watched; 0 runs flat out.
    #[arg(long, value_name = "MS", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub pace_ms: u64,

    /// Print only the final summary (no progress line, no event lines).
    #[arg(long, short)]
    pub quiet: bool,

    /// Print the final summary as JSON on stdout instead of a table.
    #[arg(long)]
    pub json: bool,

    /// Run the simulation (the compare engine and the rewriter on a simulated clock,
    /// with reordering and duplication) instead of the live two-proxy run.
    #[arg(long, conflicts_with = "live")]
    pub simulate: bool,

    /// The live two-proxy run (the default; kept for scripts that ask for it).
    #[arg(long, hide = true)]
    pub live: bool,

    /// Fault injection, for testing the demo's own verification: lose every Nth
    /// frame the proxy releases on its way to the client.
    #[arg(long, value_name = "N", hide = true,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub fault_drop_released: Option<u64>,
}

impl DemoArgs {
    /// Every how many connections (and datagrams) the secondary diverges, if at all.
    #[must_use]
    pub fn divergence_period(&self) -> Option<u32> {
        match (self.diverge_every, self.nondeterministic) {
            (Some(n), _) => Some(n),
            (None, true) => Some(3),
            (None, false) => None,
        }
    }
}

/// Parse a byte count with an optional binary suffix: `4096`, `64K`, `1.5M`, `2MiB`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => return Err(format!("unknown size unit {other:?}; use K, M or G")),
    };
    let value: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size; write e.g. 300000, 256K or 1M"))?;
    let bytes = value * mult as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(bytes.round() as u64)
}

/// Check a `--log-level` value is a valid filter (so a typo is a usage error).
fn parse_log_filter(s: &str) -> Result<String, String> {
    EnvFilter::try_new(s)
        .map(|_| s.to_owned())
        .map_err(|e| format!("{e}; use error, warn, info, debug or trace"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(65_536));
        assert_eq!(parse_size("64kib"), Ok(65_536));
        assert_eq!(parse_size("1.5M"), Ok(1_572_864));
        assert_eq!(parse_size(" 2 MiB "), Ok(2 << 20));
        assert_eq!(parse_size("0"), Ok(0));
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("K").is_err());
        assert!(parse_size("-5").is_err());
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn divergence_period_follows_flags() {
        let parse = |args: &[&str]| match Cli::try_parse_from(args).map(|c| c.command) {
            Ok(Command::Demo(d)) => d.divergence_period(),
            Ok(other) => panic!("not demo: {other:?}"),
            Err(e) => panic!("{e}"),
        };
        assert_eq!(parse(&["colo-proxy", "demo"]), None);
        assert_eq!(
            parse(&["colo-proxy", "demo", "--nondeterministic"]),
            Some(3)
        );
        assert_eq!(
            parse(&["colo-proxy", "demo", "--diverge-every", "5"]),
            Some(5)
        );
        assert!(Cli::try_parse_from(["colo-proxy", "demo", "--diverge-every", "0"]).is_err());
        assert!(Cli::try_parse_from(["colo-proxy", "--log-level", "x=nonsense", "demo"]).is_err());
    }

    fn compare(args: &[&str]) -> Result<CompareArgs, String> {
        let mut v = vec!["colo-proxy", "compare"];
        v.extend_from_slice(args);
        match Cli::try_parse_from(v).map(|c| c.command) {
            Ok(Command::Compare(a)) => Ok(a),
            Ok(other) => panic!("not compare: {other:?}"),
            Err(e) => Err(e.to_string()),
        }
    }

    #[test]
    fn compare_options_follow_colo_compare() {
        let base = [
            "--primary-in",
            "unix:/a",
            "--secondary-in",
            "tcp:127.0.0.1:9000,connect",
            "--outdev",
            "unix:/c",
        ];
        let a = compare(&base).unwrap();
        assert_eq!(a.engine.compare_timeout, 3000);
        assert_eq!(a.engine.expired_scan_cycle, 1000);
        assert_eq!(a.engine.max_queue_size, 16_384);
        assert!(!a.vnet_hdr_support);
        assert!(a.secondary_in.connect);
        assert_eq!(a.outdev_buffer, 16 << 20);
        a.validate().unwrap();
        for (flag, want) in [
            (&["--vnet-hdr-support"][..], true),
            (&["--vnet-hdr-support=on"], true),
            (&["--vnet-hdr-support=off"], false),
        ] {
            let mut v = base.to_vec();
            v.extend_from_slice(flag);
            assert_eq!(compare(&v).unwrap().vnet_hdr_support, want, "{flag:?}");
        }
        let mut v = base.to_vec();
        v.extend_from_slice(&["--compare-timeout", "0"]);
        assert!(compare(&v).is_err(), "0 is rejected, as in QEMU");
        let mut v = base.to_vec();
        v.extend_from_slice(&["--control", "unix:/run/x.ctl"]);
        assert_eq!(
            compare(&v).unwrap().operator.control,
            Some(PathBuf::from("/run/x.ctl"))
        );
        assert!(compare(&["--primary-in", "unix:/a"]).is_err());
        let same = compare(&[
            "--primary-in",
            "unix:/a",
            "--secondary-in",
            "unix:/a",
            "--outdev",
            "unix:/c",
        ])
        .unwrap();
        assert!(
            same.validate()
                .unwrap_err()
                .to_string()
                .contains("same endpoint")
        );
    }

    #[test]
    fn rewrite_options_name_both_directions() {
        let parse = |extra: &[&str]| {
            let mut v = vec![
                "colo-proxy",
                "rewrite",
                "--to-secondary-in",
                "tcp::9003",
                "--to-secondary-out",
                "unix:/run/f1.sock",
                "--from-secondary-in",
                "unix:/run/f2.sock",
                "--from-secondary-out",
                "tcp:10.0.0.1:9004,connect",
            ];
            v.extend_from_slice(extra);
            match Cli::try_parse_from(v).map(|c| c.command) {
                Ok(Command::Rewrite(a)) => a,
                Ok(other) => panic!("not rewrite: {other:?}"),
                Err(e) => panic!("{e}"),
            }
        };
        let a = parse(&[]);
        assert!(!a.vnet_hdr_support);
        assert!(a.from_secondary_out.connect);
        assert_eq!(a.out_buffer, 16 << 20);
        a.validate().unwrap();
        let a = parse(&["--vnet-hdr-support", "--control", "/run/rw.ctl"]);
        assert!(a.vnet_hdr_support);
        assert_eq!(a.operator.control, Some(PathBuf::from("/run/rw.ctl")));
        assert_eq!(CtlCommand::Failover.wire_name(), "failover");
    }
}
