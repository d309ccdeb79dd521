//! `colo-bench` against `colo-proxy compare`: a short run must release every frame,
//! in order and unchanged: both connection directions, Unix and TCP endpoints, vnet
//! headers, UDP, a secondary cut at other points, closed loop and the scale mode.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// Builds `colo-proxy` (debug profile) and returns its path.
fn colo_proxy() -> PathBuf {
    let status = Command::new(env!("CARGO"))
        .args(["build", "-q", "-p", "colo-proxy", "--bin", "colo-proxy"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("run cargo build");
    assert!(status.success(), "cargo build -p colo-proxy failed");
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"),
        PathBuf::from,
    );
    let bin = target.join("debug/colo-proxy");
    assert!(bin.exists(), "{} not found after building", bin.display());
    bin
}

/// Kills the proxy when the test ends, however it ends.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free TCP port on loopback (bound and released; good enough for a test).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One run's setup.
struct Case<'a> {
    proxy_connects: bool,
    tcp: bool,
    vnet: bool,
    frame_size: &'a str,
    extra: &'a [&'a str],
    proxy_extra: &'a [&'a str],
}

impl Default for Case<'_> {
    fn default() -> Self {
        Self {
            proxy_connects: false,
            tcp: false,
            vnet: false,
            frame_size: "1514",
            extra: &[],
            proxy_extra: &[],
        }
    }
}

/// Runs colo-bench against a fresh `colo-proxy compare`; returns the JSON report
/// after checking that every frame came back.
fn run(c: &Case<'_>) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let eps: Vec<String> = ["pri.sock", "sec.sock", "out.sock"]
        .iter()
        .map(|n| {
            if c.tcp {
                format!("tcp:127.0.0.1:{}", free_port())
            } else {
                format!("unix:{}", dir.path().join(n).display())
            }
        })
        .collect();
    let suffix = if c.proxy_connects { ",connect" } else { "" };
    let mut cmd = Command::new(colo_proxy());
    cmd.args(["--log-level", "warn", "compare"])
        .args(["--primary-in", &format!("{}{suffix}", eps[0])])
        .args(["--secondary-in", &format!("{}{suffix}", eps[1])])
        .args(["--outdev", &format!("{}{suffix}", eps[2])])
        .args(c.proxy_extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if c.vnet {
        cmd.arg("--vnet-hdr-support");
    }
    let proxy = Guard(cmd.spawn().expect("start colo-proxy"));

    let mut bench = Command::new(env!("CARGO_BIN_EXE_colo-bench"));
    bench
        .args(["--primary-in", &eps[0]])
        .args(["--secondary-in", &eps[1]])
        .args(["--outdev", &eps[2]])
        .args(["--flows", "8", "--window", "64"])
        .args(["--frame-size", c.frame_size, "--json"])
        .args(["--proxy-pid", &proxy.0.id().to_string()])
        .args(["--setup-timeout", "30", "--drain-timeout", "10"])
        .args(c.extra);
    if !c.extra.contains(&"--scale") {
        bench.args(["--frames", "3000"]);
    }
    if !c.proxy_connects {
        bench.arg("--connect");
    }
    if c.vnet {
        bench.arg("--vnet-hdr");
    }
    let out = bench.output().expect("run colo-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "colo-bench failed ({}): {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON report");
    assert_eq!(v["errors"], 0, "{v}");
    assert_eq!(v["sent"], v["released"], "{v}");
    assert!(v["frames_per_sec"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["latency_us"]["p99_9"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["proxy"]["rss_kib"].as_u64().unwrap() > 0, "{v}");
    v
}

#[test]
fn bench_connects_to_listening_proxy() {
    let v = run(&Case::default());
    assert_eq!(v["sent"], 3000, "{v}");
}

#[test]
fn bench_listens_and_proxy_connects_small_frames_vnet() {
    let v = run(&Case {
        proxy_connects: true,
        vnet: true,
        frame_size: "130",
        ..Case::default()
    });
    assert_eq!(v["released"], 3000, "{v}");
}

#[test]
fn udp_flows_over_tcp_endpoints() {
    let v = run(&Case {
        tcp: true,
        frame_size: "200",
        extra: &["--proto", "udp"],
        ..Case::default()
    });
    assert_eq!(v["proto"], "udp", "{v}");
    assert_eq!(v["released"], 3000, "{v}");
}

#[test]
fn secondary_cut_at_other_points_is_compared_as_a_stream() {
    for split in ["2", "5"] {
        let v = run(&Case {
            vnet: true,
            extra: &["--sec-split", split],
            ..Case::default()
        });
        assert_eq!(v["sec_split"].to_string(), split, "{v}");
        assert_eq!(v["released"], 3000, "{v}");
    }
}

#[test]
fn closed_loop_over_tcp_endpoints_proxy_connects() {
    let v = run(&Case {
        proxy_connects: true,
        tcp: true,
        frame_size: "130",
        extra: &["--mode", "closed-loop", "--sec-split", "3"],
        ..Case::default()
    });
    assert_eq!(v["mode"], "closed-loop", "{v}");
    assert_eq!(v["released"], 3000, "{v}");
}

#[test]
fn scale_mode_reports_every_step() {
    let v = run(&Case {
        frame_size: "130",
        extra: &["--scale", "16,1000,5000", "--scale-frames", "5000"],
        ..Case::default()
    });
    let steps = v["scale"].as_array().expect("scale steps");
    assert_eq!(steps.len(), 3, "{v}");
    for (s, rows) in steps.iter().zip([16, 1000, 5000]) {
        assert_eq!(s["rows"], rows, "{v}");
        assert!(s["frames_per_sec"].as_f64().unwrap() > 0.0, "{v}");
        assert!(s["proxy_rss_kib"].as_u64().unwrap() > 0, "{v}");
    }
    // Each step sends its new rows once, then 5000 frames.
    assert_eq!(v["sent"], 5000 + 3 * 5000, "{v}");
}

#[test]
fn closed_loop_busy_poll_vnet() {
    let v = run(&Case {
        vnet: true,
        extra: &["--mode", "closed-loop", "--busy-poll"],
        ..Case::default()
    });
    assert_eq!(v["busy_poll"], true, "{v}");
    assert_eq!(v["released"], 3000, "{v}");
}

#[test]
fn proxy_busy_poll_serves_windowed_and_closed_loop_loads() {
    // The busy-poll spinner must not starve the readers, the driver or the writer.
    for extra in [&["--mode", "windowed"][..], &["--mode", "closed-loop"][..]] {
        let v = run(&Case {
            frame_size: "130",
            extra,
            proxy_extra: &["--busy-poll"],
            ..Case::default()
        });
        assert_eq!(v["released"], 3000, "{v}");
    }
}
