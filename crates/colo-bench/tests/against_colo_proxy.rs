//! `colo-bench` against `colo-proxy compare`: a short run must release every frame,
//! in order and unchanged, in both connection directions and with vnet headers.

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

fn run(proxy_connects: bool, vnet: bool, frame_size: &str) {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).display().to_string();
    let suffix = if proxy_connects { ",connect" } else { "" };
    let mut cmd = Command::new(colo_proxy());
    cmd.args(["--log-level", "warn", "compare"])
        .args(["--primary-in", &format!("unix:{}{suffix}", p("pri.sock"))])
        .args(["--secondary-in", &format!("unix:{}{suffix}", p("sec.sock"))])
        .args(["--outdev", &format!("unix:{}{suffix}", p("out.sock"))])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if vnet {
        cmd.arg("--vnet-hdr-support");
    }
    let _proxy = Guard(cmd.spawn().expect("start colo-proxy"));

    let mut bench = Command::new(env!("CARGO_BIN_EXE_colo-bench"));
    bench
        .args(["--primary-in", &p("pri.sock")])
        .args(["--secondary-in", &p("sec.sock")])
        .args(["--outdev", &p("out.sock")])
        .args(["--frames", "3000", "--flows", "8", "--window", "64"])
        .args(["--frame-size", frame_size, "--json"])
        .args(["--setup-timeout", "30", "--drain-timeout", "10"]);
    if !proxy_connects {
        bench.arg("--connect");
    }
    if vnet {
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
    assert_eq!(v["sent"], 3000, "{v}");
    assert_eq!(v["released"], 3000, "{v}");
    assert!(v["frames_per_sec"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["latency_us"]["p99_9"].as_f64().unwrap() > 0.0, "{v}");
}

#[test]
fn bench_connects_to_listening_proxy() {
    run(false, false, "1514");
}

#[test]
fn bench_listens_and_proxy_connects_small_frames_vnet() {
    run(true, true, "130");
}
