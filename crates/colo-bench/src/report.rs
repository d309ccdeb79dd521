//! What a run measured, and its summary (text or one JSON line).

use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// What the receiving side measured.
#[derive(Debug, Default)]
pub struct Report {
    /// Frames sent on primary.
    pub sent: u64,
    /// Frames read from outdev.
    pub released: u64,
    /// Errors (wrong bytes, wrong order, unknown flow, never released, I/O).
    pub errors: u64,
    /// Released frames that are none of the flow's segments (wrong bytes).
    pub corrupt: u64,
    /// Released ahead of an earlier segment of the same flow.
    pub reordered: u64,
    /// Released more than once.
    pub duplicate: u64,
    /// Sent on primary and never released.
    pub lost: u64,
    /// The first few error messages.
    pub first_errors: Vec<String>,
    /// Bytes read from outdev (framing included).
    pub bytes: u64,
    /// From the first send to the last release.
    pub elapsed: Duration,
    /// Send → release latency of every released frame, nanoseconds.
    pub latencies_ns: Vec<u64>,
}

impl Report {
    /// Counts an error and keeps its message if it is one of the first ten.
    pub fn error(&mut self, msg: String) {
        self.errors += 1;
        if self.first_errors.len() < 10 {
            self.first_errors.push(msg);
        }
    }

    /// Records one frame's latency.
    pub fn latency(&mut self, d: Duration) {
        self.latencies_ns
            .push(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Ends a run: the measured time runs from the first send to the last release
    /// (drain waits are not counted).
    pub fn finish(&mut self, start: Instant) {
        if self.elapsed.is_zero() {
            self.elapsed = start.elapsed();
        }
    }

    /// Whether every frame sent was released, right and in order.
    #[must_use]
    pub const fn ok(&self) -> bool {
        self.errors == 0 && self.released == self.sent
    }
}

/// Percentile `p` (0..=1) of sorted nanoseconds, in microseconds.
#[must_use]
pub fn percentile_us(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

/// The run's figures as JSON; `load` describes the load (flows, sizes, mode...).
#[must_use]
pub fn summary(rep: &mut Report, frame_size: u32, load: Value, proxy: Value) -> Value {
    rep.latencies_ns.sort_unstable();
    let secs = rep.elapsed.as_secs_f64().max(1e-9);
    let fps = rep.released as f64 / secs;
    let gbps = (rep.released as f64 * f64::from(frame_size) * 8.0) / secs / 1e9;
    let l = &rep.latencies_ns;
    let mut v = load;
    let extra = json!({
        "sent": rep.sent,
        "released": rep.released,
        "errors": rep.errors,
        "error_kinds": {
            "corrupt": rep.corrupt,
            "reordered": rep.reordered,
            "duplicate": rep.duplicate,
            "lost": rep.lost,
        },
        "first_errors": rep.first_errors,
        "seconds": secs,
        "frames_per_sec": fps,
        "gbit_per_sec": gbps,
        "latency_us": {
            "p50": percentile_us(l, 0.5),
            "p99": percentile_us(l, 0.99),
            "p99_9": percentile_us(l, 0.999),
        },
        "proxy": proxy,
    });
    if let (Some(m), Value::Object(e)) = (v.as_object_mut(), extra) {
        m.extend(e);
    }
    v
}

/// Prints a summary as text.
pub fn print_text(v: &Value) {
    let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    println!(
        "load: {} {} flows, {}-byte frames, {} (window {}), secondary split {}{}",
        v["flows"],
        v["proto"].as_str().unwrap_or("?"),
        v["frame_size"],
        v["mode"].as_str().unwrap_or("?"),
        v["window"],
        v["sec_split"],
        if v["vnet_hdr"] == true {
            ", vnet headers"
        } else {
            ""
        }
    );
    println!(
        "sent {} released {} errors {} in {:.3} s",
        v["sent"],
        v["released"],
        v["errors"],
        f("seconds")
    );
    println!(
        "throughput: {:.0} frames/s, {:.3} Gbit/s (Ethernet bytes)",
        f("frames_per_sec"),
        f("gbit_per_sec")
    );
    let l = &v["latency_us"];
    println!(
        "latency send->release: p50 {:.1} us, p99 {:.1} us, p99.9 {:.1} us",
        l["p50"].as_f64().unwrap_or(f64::NAN),
        l["p99"].as_f64().unwrap_or(f64::NAN),
        l["p99_9"].as_f64().unwrap_or(f64::NAN)
    );
    println!(
        "colo-bench itself: {} ns CPU per frame",
        v["bench_cpu_ns_per_frame"]
    );
    if let Some(p) = v["proxy"].as_object() {
        println!(
            "proxy: {} ns CPU per frame, RSS {} KiB",
            p.get("cpu_ns_per_frame").unwrap_or(&Value::Null),
            p.get("rss_kib").unwrap_or(&Value::Null)
        );
    }
    if let Some(steps) = v["scale"].as_array() {
        println!(
            "{:>9} {:>10} {:>11} {:>12} {:>10} {:>12}",
            "rows", "frames", "frames/s", "cpu ns/frm", "rss KiB", "B/row"
        );
        for s in steps {
            let t = |k: &str| s[k].to_string();
            println!(
                "{:>9} {:>10} {:>11.0} {:>12} {:>10} {:>12}",
                t("rows"),
                t("frames"),
                s["frames_per_sec"].as_f64().unwrap_or(f64::NAN),
                t("proxy_cpu_ns_per_frame"),
                t("proxy_rss_kib"),
                t("proxy_bytes_per_row")
            );
        }
    }
    for e in v["first_errors"].as_array().into_iter().flatten() {
        println!("error: {}", e.as_str().unwrap_or("?"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let v: Vec<u64> = (1..=1000).map(|i| i * 1000).collect();
        assert!((percentile_us(&v, 0.5) - 501.0).abs() < 1e-9);
        assert!((percentile_us(&v, 0.99) - 990.0).abs() < 1e-9);
        assert!((percentile_us(&v, 0.999) - 999.0).abs() < 1e-9);
        assert!(percentile_us(&[], 0.5).abs() < 1e-9);
    }
}
