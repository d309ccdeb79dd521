//! Scale mode: the connection table grows step by step (e.g. 16, 1k, 100k, 1M rows);
//! at each step every flow gets a trickle (round-robin over all rows, so each frame
//! hits a different, cache-cold connection) and the proxy's CPU time per frame and
//! its resident memory per row are read from `/proc/PID`.

use std::time::Instant;

use serde_json::{Value, json};

use crate::procstat;
use crate::windowed::{Phase, Sender};

/// Runs the steps; returns one JSON object per step, or an error message.
pub fn run(
    tx: &mut Sender<'_>,
    steps: &[u32],
    frames_per_step: u64,
    pid: Option<u32>,
) -> Result<Vec<Value>, String> {
    let sample = || pid.and_then(procstat::sample);
    let base = sample();
    let mut out = Vec::new();
    let mut rows = 0usize;
    for &step in steps {
        let step = step as usize;
        // Grow: one segment on each new flow, so the table has `step` rows.
        let grow = Phase {
            flows: rows..step,
            frames: (step - rows) as u64,
            until: None,
        };
        send(tx, &grow)?;
        rows = step;
        let before = sample();
        let t0 = Instant::now();
        let measure = Phase {
            flows: 0..rows,
            frames: frames_per_step,
            until: None,
        };
        send(tx, &measure)?;
        let secs = t0.elapsed().as_secs_f64();
        let after = sample();
        let cpu = match (before, after) {
            (Some(b), Some(a)) => json!(a.cpu_ns.saturating_sub(b.cpu_ns) / frames_per_step.max(1)),
            _ => Value::Null,
        };
        let (rss, per_row) = match (base, after) {
            (Some(b), Some(a)) => (
                json!(a.rss_kib),
                json!(a.rss_kib.saturating_sub(b.rss_kib) * 1024 / rows as u64),
            ),
            _ => (Value::Null, Value::Null),
        };
        out.push(json!({
            "rows": rows,
            "frames": frames_per_step,
            "seconds": secs,
            "frames_per_sec": frames_per_step as f64 / secs,
            "proxy_cpu_ns_per_frame": cpu,
            "proxy_rss_kib": rss,
            "proxy_bytes_per_row": per_row,
        }));
    }
    Ok(out)
}

/// Sends a phase and waits until all of it is released.
fn send(tx: &mut Sender<'_>, phase: &Phase) -> Result<(), String> {
    match tx.send(phase) {
        Ok(Some(_)) => {}
        Ok(None) => return Err("the receiver gave up".to_owned()),
        Err(e) => return Err(format!("sending: {e}")),
    }
    if tx.barrier() {
        Ok(())
    } else {
        Err(format!(
            "frames of the {}-row step were not released in time",
            phase.flows.end
        ))
    }
}
