//! End-to-end tests of `colo-proxy demo --simulate` (the simulation), running the
//! built binary. The live two-proxy run (the default) is tested in `demo_live.rs`.

use std::process::{Command, Output};

use serde_json::Value;

fn colo_proxy(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_colo-proxy"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run colo-proxy")
}

/// A small demo run with `--json --quiet`; returns the exit code and the summary.
fn demo_json(extra: &[&str]) -> (i32, Value) {
    let mut args = vec![
        "demo",
        "--simulate",
        "--json",
        "--quiet",
        "--connections",
        "4",
        "--bytes-per-connection",
        "48K",
        "--datagrams",
        "6",
    ];
    args.extend_from_slice(extra);
    let out = colo_proxy(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}):\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().expect("exit code"), summary)
}

#[test]
fn deterministic_demo_verifies_without_checkpoints() {
    let (code, s) = demo_json(&[]);
    assert_eq!(code, 0, "{s:#}");
    assert_eq!(s["verified"], true, "{s:#}");
    assert_eq!(s["checkpoints"]["requested"], 0, "{s:#}");
    assert_eq!(s["checkpoints"]["completed"], 0);
    assert_eq!(s["divergences"]["total"], 0);
    assert_eq!(s["connections"]["tcp_closed"], 4);
    assert_eq!(s["verification"]["datagrams_ok"], 6);
    assert_eq!(s["verification"]["connections_ok"], 4);
    let expected = s["verification"]["bytes_expected"].as_u64().unwrap();
    assert!(
        expected > 4 * 48 * 1024,
        "headers come on top of the bodies"
    );
    assert_eq!(s["verification"]["bytes_received"].as_u64(), Some(expected));
    assert_eq!(
        s["released"]["frames"], s["frames_in"]["primary"],
        "every primary frame released"
    );
    assert!(
        s["rewriter"]["offsets_learned"].as_u64() >= Some(4),
        "{s:#}"
    );
}

#[test]
fn nondeterministic_demo_checkpoints_and_still_verifies() {
    let (code, s) = demo_json(&["--nondeterministic"]);
    assert_eq!(code, 0, "{s:#}");
    assert_eq!(s["verified"], true, "{s:#}");
    let requested = s["checkpoints"]["requested"].as_u64().unwrap();
    assert!(requested > 0, "{s:#}");
    assert_eq!(s["checkpoints"]["completed"].as_u64(), Some(requested));
    assert_eq!(
        s["checkpoints"]["list"].as_array().map(Vec::len),
        Some(requested as usize)
    );
    assert!(
        s["divergences"]["by_reason"]["payload"].as_u64() > Some(0),
        "{s:#}"
    );
    assert!(
        s["divergences"]["by_reason"]["datagram"].as_u64() > Some(0),
        "{s:#}"
    );
    assert!(s["released"]["by_checkpoint"].as_u64() > Some(0));
}

#[test]
fn every_reply_diverging_still_verifies() {
    let (code, s) = demo_json(&["--diverge-every", "1", "--checkpoint-ms", "5"]);
    assert_eq!(code, 0, "{s:#}");
    assert_eq!(s["verified"], true, "{s:#}");
    assert!(s["checkpoints"]["requested"].as_u64() > Some(0));
}

#[test]
fn same_seed_same_run() {
    let strip = |mut v: Value| {
        v["wall_seconds"] = Value::Null;
        v
    };
    let (_, a) = demo_json(&["--nondeterministic", "--seed", "7"]);
    let (_, b) = demo_json(&["--nondeterministic", "--seed", "7"]);
    let (_, c) = demo_json(&["--nondeterministic", "--seed", "8"]);
    assert_eq!(strip(a.clone()), strip(b));
    assert_ne!(strip(a)["network"], strip(c)["network"]);
}

#[test]
fn table_and_live_output_for_people() {
    let out = colo_proxy(&[
        "demo",
        "--simulate",
        "--connections",
        "3",
        "--bytes-per-connection",
        "32K",
        "--datagrams",
        "3",
        "--nondeterministic",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.starts_with("colo-proxy demo: 3 connections x 32.0 KiB"),
        "{stdout}"
    );
    assert!(
        stdout.contains("  verification         OK: 3/3 connections"),
        "{stdout}"
    );
    assert!(stderr.contains("divergence #1: "), "{stderr}");
    assert!(stderr.contains("checkpoint #1 requested"), "{stderr}");
    assert!(stderr.contains("checkpoint #1 done after 20ms"), "{stderr}");
    assert!(stderr.contains("| checkpoints "), "progress line: {stderr}");
}

#[test]
fn quiet_prints_only_the_summary() {
    let out = colo_proxy(&[
        "demo",
        "--simulate",
        "--quiet",
        "--connections",
        "2",
        "--bytes-per-connection",
        "8K",
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.stdout.is_empty());
}

#[test]
fn bad_flag_is_a_usage_error() {
    let out = colo_proxy(&["demo", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--no-such-flag"));
    assert_eq!(
        colo_proxy(&["demo", "--connections", "0"]).status.code(),
        Some(2)
    );
    assert_eq!(
        colo_proxy(&["demo", "--bytes-per-connection", "lots"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        colo_proxy(&["--log-level", "x=nonsense", "demo"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        colo_proxy(&[]).status.code(),
        Some(2),
        "a command is required"
    );
}

#[test]
fn impossible_request_is_a_runtime_failure_with_advice() {
    let out = colo_proxy(&["demo", "--simulate", "--bytes-per-connection", "2G"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(stderr.contains("use a smaller size"), "{stderr}");
}

#[test]
fn a_damaged_client_stream_fails_verification() {
    let (code, s) = demo_json(&["--fault-drop-released", "25"]);
    assert_eq!(code, 1, "{s:#}");
    assert_eq!(s["verified"], false);
    let problems = s["verification"]["problems"].as_array().unwrap();
    assert!(!problems.is_empty());
    assert!(s["network"]["released_lost"].as_u64() > Some(0));
}
