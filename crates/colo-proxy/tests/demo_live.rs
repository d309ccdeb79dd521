//! `colo-proxy demo` (the default, live run): the real primary and secondary roles in
//! one process over loopback Unix sockets, a client and two simulated VMs driving TCP
//! and UDP through them. The client's streams and datagrams must verify; with
//! nondeterminism the primary must ask for the expected checkpoints, which the demo
//! takes; the output is what an operator would watch.

use std::process::{Command, Output};

use serde_json::Value;

fn colo_proxy(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_colo-proxy"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run colo-proxy")
}

/// `colo-proxy demo --json --quiet --pace-ms 0 EXTRA...`: exit code and summary.
fn live_json(extra: &[&str]) -> (i32, Value) {
    let mut args = vec!["demo", "--json", "--quiet", "--pace-ms", "0"];
    args.extend_from_slice(extra);
    let out = colo_proxy(&args);
    let text = String::from_utf8_lossy(&out.stdout);
    let v = serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}):\n{text}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().expect("exit code"), v)
}

#[test]
fn default_demo_runs_both_proxies_and_verifies_without_checkpoints() {
    // The default traffic: 8 connections (bulk and small replies) and 16 datagrams.
    let (code, s) = live_json(&[]);
    assert_eq!(code, 0, "{s:#}");
    assert_eq!(s["mode"], "live", "{s:#}");
    assert_eq!(s["verified"], true, "{s:#}");
    assert_eq!(s["checkpoints"]["requested"], 0, "{s:#}");
    assert_eq!(s["checkpoints"]["completed"], 0, "{s:#}");
    assert_eq!(s["divergences"]["total"], 0, "{s:#}");
    let v = &s["verification"];
    assert_eq!(v["connections"], 8, "{s:#}");
    assert_eq!(v["connections_ok"], 8, "{s:#}");
    assert_eq!(v["closed"], 8, "{s:#}");
    assert_eq!(v["datagrams"], 16, "{s:#}");
    assert_eq!(v["datagrams_ok"], 16, "{s:#}");
    let expected = v["bytes_expected"].as_u64().unwrap();
    assert!(expected > 4 * 256 * 1024, "four bulk replies: {s:#}");
    assert_eq!(v["bytes_received"].as_u64(), Some(expected), "{s:#}");
    assert_eq!(
        s["released"]["frames"], s["frames_in"]["primary"],
        "every primary frame released: {s:#}"
    );
    // The VMs segment differently, so the primary compares streams, not frames...
    let pf = s["frames_in"]["primary"].as_u64().unwrap();
    let sf = s["frames_in"]["secondary"].as_u64().unwrap();
    assert!(sf > pf, "the secondary VM uses smaller segments: {s:#}");
    // ... and choose different ISNs, so the secondary proxy rewrites.
    assert_eq!(s["rewriter"]["connections"], 8, "{s:#}");
    assert_eq!(s["rewriter"]["offsets_learned"], 8, "{s:#}");
    assert!(s["rewriter"]["rewritten"].as_u64() > Some(sf / 2), "{s:#}");
    assert_eq!(s["link"]["primary_up"], true, "{s:#}");
    assert_eq!(s["primary"]["mode"], "compare", "{s:#}");
    assert_eq!(s["primary"]["held"]["frames"], 0, "{s:#}");
    assert!(s["secondary"]["frames_in"]["svm"]["frames"].as_u64() > Some(0));
}

#[test]
fn nondeterministic_demo_checkpoints_per_diverging_reply_and_still_verifies() {
    let (code, s) = live_json(&[
        "--connections",
        "6",
        "--bytes-per-connection",
        "40K",
        "--datagrams",
        "6",
        "--diverge-every",
        "3",
        "--checkpoint-ms",
        "5",
    ]);
    assert_eq!(code, 0, "{s:#}");
    assert_eq!(s["verified"], true, "{s:#}");
    assert_eq!(s["scenario"]["nondeterministic"], true, "{s:#}");
    // Connections 2 and 5 differ in their payload, datagrams 2 and 5 too.
    let c = &s["checkpoints"];
    assert_eq!(c["by_reason"]["payload"], 2, "{s:#}");
    assert_eq!(c["by_reason"]["datagram"], 2, "{s:#}");
    assert_eq!(c["requested"], 4, "{s:#}");
    assert_eq!(c["completed"], 4, "{s:#}");
    let list = c["list"].as_array().unwrap();
    assert_eq!(list.len(), 4, "{s:#}");
    assert_eq!(list[0]["reason"], "payload", "{s:#}");
    assert!(
        list[0]["flow"].as_str().unwrap().contains("10.1.0.0:1026"),
        "connection 2's flow: {s:#}"
    );
    let detail = list[0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("\"1111") && detail.contains("\"2222"),
        "the differing bytes: {detail}"
    );
    assert_eq!(list[3]["reason"], "datagram", "{s:#}");
    assert!(
        list.iter()
            .all(|c| c["released_frames"].as_u64() >= Some(1)),
        "each checkpoint releases what the divergence held: {s:#}"
    );
    assert_eq!(s["verification"]["connections_ok"], 6, "{s:#}");
    assert_eq!(s["verification"]["datagrams_ok"], 6, "{s:#}");
}

#[test]
fn live_output_for_people() {
    let out = colo_proxy(&[
        "demo",
        "--pace-ms",
        "150",
        "--connections",
        "3",
        "--bytes-per-connection",
        "16K",
        "--datagrams",
        "2",
        "--nondeterministic",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.starts_with("colo-proxy demo: real primary and secondary proxies"),
        "{stdout}"
    );
    assert!(
        stdout.contains("  verification         OK: 3/3 connections"),
        "{stdout}"
    );
    assert!(stdout.contains("frames rewritten"), "{stdout}");
    assert!(
        stderr.contains("checkpoint #1 requested (payload): payload on tcp"),
        "{stderr}"
    );
    assert!(
        stderr.contains("checkpoint #1 done after 20 ms"),
        "{stderr}"
    );
    // Paced connections leave time for periodic progress lines from the stats.
    let progress = stderr.lines().filter(|l| l.contains("| released ")).count();
    assert!(progress >= 3, "progress lines: {stderr}");
}

#[test]
fn quiet_prints_only_the_summary() {
    let out = colo_proxy(&[
        "demo",
        "--quiet",
        "--connections",
        "2",
        "--bytes-per-connection",
        "8K",
        "--datagrams",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("verification"));
}

#[test]
fn a_damaged_client_stream_fails_verification_with_exit_1() {
    let (code, s) = live_json(&[
        "--connections",
        "2",
        "--bytes-per-connection",
        "64K",
        "--fault-drop-released",
        "10",
    ]);
    assert_eq!(code, 1, "{s:#}");
    assert_eq!(s["verified"], false, "{s:#}");
    assert!(s["verification"]["lost_on_purpose"].as_u64() > Some(0));
    assert!(!s["verification"]["problems"].as_array().unwrap().is_empty());
}

#[test]
fn simulate_and_live_are_exclusive_and_live_is_still_accepted() {
    assert_eq!(
        colo_proxy(&["demo", "--simulate", "--live"]).status.code(),
        Some(2)
    );
    let (code, s) = live_json(&["--live", "--connections", "1", "--datagrams", "1"]);
    assert_eq!(code, 0, "{s:#}");
    assert_eq!(s["mode"], "live", "{s:#}");
}
