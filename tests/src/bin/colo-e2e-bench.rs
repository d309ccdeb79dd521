//! `colo-e2e-bench`: throughput and latency through `colo-proxy primary` and
//! `colo-proxy secondary` next to the direct path, on the two-host lab of issue 6
//! (`colo_integration::twin`). Run it through `scripts/bench-e2e.sh` (release build,
//! as root).
//!
//! ```text
//! colo-e2e-bench [--rounds N] [--bulk-mib M] [--rtt COUNT] [--path direct|proxies|both]
//! ```
//!
//! It builds one lab per path (all up at once), starts the deterministic service in
//! the VMs and runs N rounds, each path in turn within a round, of: one bulk download
//! of M MiB (throughput measured by the client, from its request to the last byte),
//! then COUNT request/response round trips on one connection (percentiles measured by
//! the client). It prints every round and the medians over the rounds.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use colo_integration::process::run_with_timeout;
use colo_integration::twin::{PathKind, TwinConfig, TwinLab, unavailable_reason, vm_addr};

const BULK_PORT: u16 = 7000;
const ECHO_PORT: u16 = 7001;

#[derive(Debug)]
struct Options {
    rounds: usize,
    bulk_mib: u64,
    rtt: u32,
    paths: Vec<PathKind>,
}

#[derive(Debug, Default)]
struct Round {
    mbit_s: f64,
    rtt_us: [u64; 4],
}

fn parse() -> Result<Options, String> {
    let mut o = Options {
        rounds: 5,
        bulk_mib: 100,
        rtt: 2000,
        paths: vec![PathKind::Direct, PathKind::Proxies],
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--rounds" => o.rounds = value()?.parse().map_err(|e| format!("--rounds: {e}"))?,
            "--bulk-mib" => {
                o.bulk_mib = value()?.parse().map_err(|e| format!("--bulk-mib: {e}"))?;
            }
            "--rtt" => o.rtt = value()?.parse().map_err(|e| format!("--rtt: {e}"))?,
            "--path" => {
                o.paths = match value()?.as_str() {
                    "direct" => vec![PathKind::Direct],
                    "proxies" => vec![PathKind::Proxies],
                    "both" => vec![PathKind::Direct, PathKind::Proxies],
                    other => return Err(format!("--path {other}: direct, proxies or both")),
                }
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if o.rounds == 0 {
        return Err("--rounds must be at least 1".into());
    }
    Ok(o)
}

fn testsrv() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    exe.with_file_name("colo-testsrv")
}

fn run_round(lab: &TwinLab, o: &Options) -> Result<Round, String> {
    let srv = testsrv();
    let bytes = o.bulk_mib << 20;
    let mut cmd = lab.client.command(&srv);
    cmd.args([
        "client",
        "bulk",
        &vm_addr(false, BULK_PORT).to_string(),
        &bytes.to_string(),
    ]);
    let out = run_with_timeout(&mut cmd, "bulk client", Duration::from_secs(600))
        .map_err(|e| e.to_string())?;
    if !out.status.success() || out.stdout.len() as u64 != bytes {
        return Err(format!(
            "bulk client failed ({}, {} bytes): {}",
            out.status,
            out.stdout.len(),
            out.stderr_text()
        ));
    }
    if out.stdout != colo_integration::proto::bulk_bytes(out.stdout.len()) {
        return Err("bulk bytes differ from the pattern".into());
    }
    let micros: f64 = out
        .stderr_text()
        .lines()
        .find_map(|l| l.strip_prefix("received ")?.split(' ').nth(2)?.parse().ok())
        .ok_or_else(|| format!("no timing from the bulk client: {}", out.stderr_text()))?;
    let mbit_s = bytes as f64 * 8.0 / micros;

    let mut cmd = lab.client.command(&srv);
    cmd.args([
        "client",
        "rtt",
        &vm_addr(false, ECHO_PORT).to_string(),
        &o.rtt.to_string(),
    ]);
    let out = run_with_timeout(&mut cmd, "rtt client", Duration::from_secs(600))
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout);
    let nums: Vec<u64> = text
        .lines()
        .find_map(|l| l.strip_prefix("rtt_us "))
        .map(|l| l.split(' ').filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_default();
    let rtt_us: [u64; 4] = nums
        .try_into()
        .map_err(|_| format!("rtt client failed: {text} {}", out.stderr_text()))?;
    Ok(Round { mbit_s, rtt_us })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn start_lab(path: &PathKind) -> Result<TwinLab, String> {
    let config = TwinConfig {
        path: path.clone(),
        log_filter: "warn".into(),
        ..TwinConfig::default()
    };
    let mut lab = TwinLab::start(&config).map_err(|e| e.to_string())?;
    lab.start_service(
        testsrv().as_os_str(),
        [
            "serve".to_owned(),
            "--lifetime".into(),
            "3600".into(),
            format!("bulk:{BULK_PORT}"),
            format!("echo:{ECHO_PORT}"),
        ],
    )
    .map_err(|e| e.to_string())?;
    Ok(lab)
}

/// All labs up at once; each round runs every path in turn (interleaved, so that
/// a change in the machine's load affects them alike).
fn bench(o: &Options) -> Result<Vec<(PathKind, Vec<Round>)>, String> {
    let mut labs = Vec::new();
    for path in &o.paths {
        labs.push((path.clone(), start_lab(path)?, Vec::new()));
    }
    for i in 1..=o.rounds {
        for (path, lab, rounds) in &mut labs {
            let r =
                run_round(lab, o).map_err(|e| format!("{path:?}: {e}\n{}", lab.proxy_logs()))?;
            println!(
                "{path:?} round {i}: bulk {:.0} Mbit/s; rtt p50 {} us, p90 {} us, p99 {} us, max {} us",
                r.mbit_s, r.rtt_us[0], r.rtt_us[1], r.rtt_us[2], r.rtt_us[3]
            );
            rounds.push(r);
        }
    }
    Ok(labs.into_iter().map(|(p, _, r)| (p, r)).collect())
}

fn main() -> ExitCode {
    let o = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("colo-e2e-bench: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(reason) = unavailable_reason() {
        eprintln!("colo-e2e-bench: cannot build the lab: {reason}");
        return ExitCode::from(3);
    }
    println!(
        "bulk {} MiB, {} round trips, {} rounds per path",
        o.bulk_mib, o.rtt, o.rounds
    );
    let table = match bench(&o) {
        Ok(table) => table,
        Err(e) => {
            eprintln!("colo-e2e-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("\n| path | bulk Mbit/s (median) | rtt p50 us | rtt p90 us | rtt p99 us |");
    println!("|---|---|---|---|---|");
    for (path, rounds) in &table {
        let col = |k: usize| median(rounds.iter().map(|r| r.rtt_us[k] as f64).collect());
        println!(
            "| {path:?} | {:.0} | {:.0} | {:.0} | {:.0} |",
            median(rounds.iter().map(|r| r.mbit_s).collect()),
            col(0),
            col(1),
            col(2)
        );
    }
    ExitCode::SUCCESS
}
