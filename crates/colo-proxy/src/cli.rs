//! Command-line syntax: `colo-proxy [--log-level LEVEL] <COMMAND>`.
//!
//! Each command's arguments live in their own struct here; the code that runs a
//! command lives in its own module (`demo`, ...).

use clap::{Args, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// COLO network proxy: compares the primary and secondary VMs' network output,
/// releases what matches and asks for a checkpoint when they diverge.
#[derive(Debug, Parser)]
#[command(name = "colo-proxy", version, propagate_version = true)]
pub struct Cli {
    /// Log filter: error, warn, info, debug, trace, or an EnvFilter directive list
    /// such as `warn,colo_proxy=debug`. Overrides RUST_LOG. Default: warn.
    #[arg(long, global = true, value_name = "LEVEL", value_parser = parse_log_filter)]
    pub log_level: Option<String>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a self-contained simulation: a client and two simulated VMs driving the
    /// real compare engine on a simulated clock. No root, VM or network needed.
    Demo(DemoArgs),
}

/// Options of `colo-proxy demo`.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Number of client TCP connections, each fetching one HTTP-like response.
    #[arg(long, value_name = "N", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub connections: u32,

    /// Response body size per connection; accepts K, M suffixes (powers of 1024).
    #[arg(long, value_name = "SIZE", default_value = "256K", value_parser = parse_size)]
    pub bytes_per_connection: u64,

    /// Number of UDP request/response exchanges.
    #[arg(long, value_name = "N", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub datagrams: u32,

    /// Seed of every random choice (segmentation, delays, reordering, content).
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

    /// Simulated time a checkpoint takes, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 20,
          value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub checkpoint_ms: u64,

    /// Print only the final summary (no progress line, no event lines).
    #[arg(long, short)]
    pub quiet: bool,

    /// Print the final summary as JSON on stdout instead of a table.
    #[arg(long)]
    pub json: bool,

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
}
