//! Arguments of `colo-proxy replay`.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, ValueEnum};

/// A value given once for both captures, or as `PRIMARY,SECONDARY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PerCapture<T>(pub [T; 2]);

fn per_capture<T: Copy>(
    s: &str,
    one: impl Fn(&str) -> Result<T, String>,
) -> Result<PerCapture<T>, String> {
    match s.split_once(',') {
        Some((a, b)) => Ok(PerCapture([one(a.trim())?, one(b.trim())?])),
        None => {
            let v = one(s.trim())?;
            Ok(PerCapture([v, v]))
        }
    }
}

fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    if parts.len() != 6 {
        return Err(format!("{s:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"));
    }
    let mut m = [0u8; 6];
    for (b, p) in m.iter_mut().zip(parts) {
        *b = u8::from_str_radix(p, 16).map_err(|_| format!("{s:?} is not a MAC address"))?;
    }
    Ok(m)
}

fn macs(s: &str) -> Result<PerCapture<[u8; 6]>, String> {
    per_capture(s, parse_mac)
}

fn addrs(s: &str) -> Result<PerCapture<IpAddr>, String> {
    per_capture(s, |a| {
        a.parse().map_err(|_| format!("{a:?} is not an IP address"))
    })
}

fn ports(s: &str) -> Result<PerCapture<u16>, String> {
    per_capture(s, |a| {
        a.parse().map_err(|_| format!("{a:?} is not a port number"))
    })
}

/// Report format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    /// For people.
    Text,
    /// For scripts (schema in docs/replay.md).
    Json,
}

/// Which clock the two captures share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Clock {
    /// Capture timestamps as they are: both captures were taken on one clock (one
    /// host, or synchronised hosts). What the live proxy saw.
    Absolute,
    /// Each capture's first packet is time zero (captures from unsynchronised hosts).
    Relative,
}

/// When to print progress on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProgressMode {
    /// When stderr is a terminal and the captures are larger than 64 MB.
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

/// Options of `colo-proxy replay`.
///
/// Exit codes: 0 identical, 1 diverged, 2 usage error, 3 a capture is damaged or
/// unreadable (the report of what was read is still printed).
#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    /// Capture of the primary VM's traffic (pcap or pcapng).
    #[arg(value_name = "PRIMARY")]
    pub primary: PathBuf,

    /// Capture of the secondary VM's traffic (pcap or pcapng).
    #[arg(value_name = "SECONDARY")]
    pub secondary: PathBuf,

    /// The VM's MAC address: frames from it are the VM's output. One value for both
    /// captures, or `PRIMARY,SECONDARY`.
    #[arg(long, value_name = "MAC[,MAC]", value_parser = macs)]
    pub vm_mac: Option<PerCapture<[u8; 6]>>,

    /// The VM's IP address: frames from it are the VM's output. One value for both
    /// captures, or `PRIMARY,SECONDARY`.
    #[arg(long, value_name = "ADDR[,ADDR]", value_parser = addrs)]
    pub vm_addr: Option<PerCapture<IpAddr>>,

    /// The VM's service port: TCP/UDP frames from it are the VM's output.
    #[arg(long, value_name = "PORT[,PORT]", value_parser = ports)]
    pub vm_port: Option<PerCapture<u16>>,

    /// Report format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: ReportFormat,

    /// Milliseconds a frame may wait unmatched before the live proxy would ask for a
    /// checkpoint (the engine's compare_timeout).
    #[arg(long, value_name = "MS", default_value_t = 3000)]
    pub compare_timeout: u64,

    /// Minimum milliseconds between a checkpoint's end and the next request.
    #[arg(long, value_name = "MS", default_value_t = 100)]
    pub checkpoint_min_interval: u64,

    /// How long a checkpoint is assumed to take, in milliseconds (for counting the
    /// checkpoints the live proxy would have asked for).
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub checkpoint_duration: u64,

    /// Which clock the captures share.
    #[arg(long, value_enum, default_value = "absolute")]
    pub clock: Clock,

    /// Turn the engine's ACK gate off (use when the client's handshakes are not in
    /// the captures, so acknowledgement numbers cannot be aligned).
    #[arg(long)]
    pub no_ack_gate: bool,

    /// Bytes of context shown on each side of a divergence.
    #[arg(long, value_name = "BYTES", default_value_t = 32)]
    pub context: usize,

    /// Write a small pcapng per divergence into this directory (both sides' frames
    /// around it).
    #[arg(long, value_name = "DIR")]
    pub evidence: Option<PathBuf>,

    /// Progress lines on stderr.
    #[arg(long, value_enum, default_value = "auto")]
    pub progress: ProgressMode,
}
