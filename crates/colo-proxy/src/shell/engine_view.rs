//! The operator's view of a compare [`Engine`], shared by every role that owns one
//! (`compare` now, `primary` later): its counters as Prometheus metrics, its mode's
//! name, and the flow-policy control commands.

use colo_core::Side;
use colo_core::engine::{CheckpointReason, DropReason, Engine, FlowMatch, FlowPolicy, Mode};
use serde_json::{Map, Value, json};

use super::metrics::{Exposition, Labels};

/// The engine mode's name in the control protocol and the metrics.
#[must_use]
pub fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Compare => "compare",
        Mode::PassThrough => "pass-through",
        Mode::AwaitingCheckpoint => "awaiting-checkpoint",
    }
}

/// `set-flow-policy`: set the rule, log it, and say what changed.
pub fn set_flow_policy(
    engine: &mut Engine,
    matcher: FlowMatch,
    policy: FlowPolicy,
) -> Result<Map<String, Value>, String> {
    let held_before = engine.stats().held_frames;
    let before = engine
        .set_flow_policy(matcher, policy)
        .map_err(|e| e.to_string())?;
    let released_held = held_before.saturating_sub(engine.stats().held_frames);
    tracing::warn!(flow = %matcher, %before, %policy, released_held, "flow policy set");
    let mut m = Map::new();
    m.insert("match".into(), json!(matcher.to_string()));
    m.insert("policy".into(), json!(policy.as_str()));
    m.insert("before".into(), json!(before.as_str()));
    m.insert("released_held".into(), json!(released_held));
    Ok(m)
}

/// `get-flow-policy`: the default and the rules in force.
#[must_use]
pub fn get_flow_policy(engine: &Engine) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("default".into(), json!("compare"));
    m.insert("rules".into(), rules_json(engine));
    m
}

/// The rules in force, with their counters.
#[must_use]
pub fn rules_json(engine: &Engine) -> Value {
    engine
        .flow_policies()
        .iter()
        .map(|r| {
            json!({"match": r.rule.matcher.to_string(), "policy": r.rule.policy.as_str(),
                   "released_frames": r.released_frames, "released_bytes": r.released_bytes,
                   "discarded_frames": r.discarded_frames})
        })
        .collect()
}

/// The engine's counters as metric families (`colo_frames_in_total`, ...).
pub fn metrics(e: &mut Exposition, engine: &Engine) {
    let s = engine.stats();
    let sides = |a: &[u64; 2]| {
        [
            ("primary", a[Side::Primary.index()]),
            ("secondary", a[Side::Secondary.index()]),
        ]
    };
    e.counter_by(
        "colo_frames_in_total",
        "Frames received from each VM.",
        "side",
        &sides(&s.frames_in),
    );
    e.counter_by(
        "colo_bytes_in_total",
        "Bytes received from each VM.",
        "side",
        &sides(&s.bytes_in),
    );
    let compared = s
        .released_frames
        .saturating_sub(s.released_by_flush + s.released_unchecked + s.released_by_policy);
    e.counter_by(
        "colo_released_frames_total",
        "Primary frames released, by how: compared (matched), flush (by a \
         checkpoint), unchecked (degraded or failover), policy (pass flows).",
        "how",
        &[
            ("compared", compared),
            ("flush", s.released_by_flush),
            ("unchecked", s.released_unchecked),
            ("policy", s.released_by_policy),
        ],
    );
    e.counter1(
        "colo_released_bytes_total",
        "Bytes of primary frames released.",
        s.released_bytes,
    );
    e.gauge1(
        "colo_held_frames",
        "Primary frames held now, waiting for the secondary.",
        s.held_frames,
    );
    e.gauge1(
        "colo_held_bytes",
        "Bytes held now (frames and reassembly buffers).",
        s.held_bytes,
    );
    let per_reason = |a: &[u64; 7]| -> Vec<(&str, u64)> {
        CheckpointReason::ALL
            .iter()
            .map(|r| (r.as_str(), a[r.index()]))
            .collect()
    };
    e.counter_by(
        "colo_divergences_total",
        "Divergences detected, by reason.",
        "reason",
        &per_reason(&s.divergences),
    );
    e.counter_by(
        "colo_checkpoints_requested_total",
        "Checkpoint requests sent, by the reason of their cause.",
        "reason",
        &per_reason(&s.checkpoints_requested),
    );
    e.counter1(
        "colo_checkpoints_coalesced_total",
        "Divergences folded into an outstanding or deferred checkpoint request.",
        s.checkpoints_coalesced,
    );
    e.counter1(
        "colo_checkpoints_done_total",
        "Checkpoints completed.",
        s.checkpoints_done,
    );
    e.gauge1(
        "colo_checkpoint_pending",
        "Whether a checkpoint request is outstanding (1) or not (0).",
        u64::from(engine.checkpoint_pending()),
    );
    e.gauge1(
        "colo_epoch",
        "Checkpoints completed since start.",
        engine.epoch(),
    );
    let mode = mode_name(engine.mode());
    e.gauge_by(
        "colo_mode",
        "The engine's mode: 1 for the current one, 0 for the others.",
        "mode",
        &["compare", "pass-through", "awaiting-checkpoint"].map(|m| (m, u64::from(m == mode))),
    );
    e.gauge1(
        "colo_connections",
        "Connections tracked now.",
        s.connections_active,
    );
    e.counter_by(
        "colo_connections_total",
        "Connections by event: created, evicted (to make room), expired (closed or idle).",
        "event",
        &[
            ("created", s.connections_created),
            ("evicted", s.connections_evicted),
            ("expired", s.connections_expired),
        ],
    );
    let drops: Vec<(&str, &str, u64)> =
        [("primary", Side::Primary), ("secondary", Side::Secondary)]
            .into_iter()
            .flat_map(|(name, side)| {
                let s = &s;
                DropReason::ALL
                    .iter()
                    .map(move |r| (name, r.as_str(), s.dropped(side, *r)))
            })
            .collect();
    let drop_labels: Vec<[(&str, &str); 2]> = drops
        .iter()
        .map(|(side, r, _)| [("side", *side), ("reason", *r)])
        .collect();
    let drop_samples: Vec<(Labels<'_>, u64)> = drop_labels
        .iter()
        .zip(&drops)
        .map(|(l, d)| (&l[..], d.2))
        .collect();
    e.counter(
        "colo_engine_dropped_frames_total",
        "Frames the engine dropped, by VM side and reason.",
        &drop_samples,
    );
    e.gauge1(
        "colo_flow_rules",
        "Flow policy rules in force.",
        engine.flow_policies().len() as u64,
    );
}
