//! Checkpoint latency figures: count, last, max, mean and percentiles over a bounded
//! window of the most recent samples.

use std::collections::VecDeque;

use colo_core::Duration;
use serde_json::{Value, json};

/// Samples kept for the percentiles (older ones only count in `count`/`max`/`mean`).
pub const WINDOW: usize = 4096;

/// Latency samples of one kind.
#[derive(Debug, Clone, Default)]
pub struct LatencyStats {
    count: u64,
    sum_us: u64,
    max_us: u64,
    last_us: Option<u64>,
    recent: VecDeque<u64>,
}

impl LatencyStats {
    /// Add one sample.
    pub fn record(&mut self, d: Duration) {
        let us = d.as_micros();
        self.count += 1;
        self.sum_us = self.sum_us.saturating_add(us);
        self.max_us = self.max_us.max(us);
        self.last_us = Some(us);
        if self.recent.len() == WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back(us);
    }

    /// Number of samples ever recorded.
    #[cfg(test)]
    #[must_use]
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The `q` quantile (0.0..=1.0) of the recent window, in microseconds (nearest rank).
    #[must_use]
    pub fn quantile_us(&self, q: f64) -> Option<u64> {
        if self.recent.is_empty() {
            return None;
        }
        let mut v: Vec<u64> = self.recent.iter().copied().collect();
        v.sort_unstable();
        let n = v.len();
        // Nearest rank: ceil(q * n), at least 1.
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let rank = ((q.clamp(0.0, 1.0) * n as f64).ceil() as usize).clamp(1, n);
        Some(v[rank - 1])
    }

    /// The figures as JSON, in milliseconds with microsecond precision.
    #[must_use]
    pub fn to_json(&self) -> Value {
        #[allow(clippy::cast_precision_loss)]
        let ms = |us: u64| json!(us as f64 / 1000.0);
        let opt = |v: Option<u64>| v.map_or(Value::Null, ms);
        json!({
            "count": self.count,
            "last_ms": opt(self.last_us),
            "mean_ms": opt(self.sum_us.checked_div(self.count)),
            "p50_ms": opt(self.quantile_us(0.5)),
            "p99_ms": opt(self.quantile_us(0.99)),
            "max_ms": opt((self.count > 0).then_some(self.max_us)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_over_the_window() {
        let mut l = LatencyStats::default();
        assert_eq!(l.quantile_us(0.5), None);
        assert_eq!(l.to_json()["p50_ms"], Value::Null);
        for ms in 1..=100 {
            l.record(Duration::from_millis(ms));
        }
        assert_eq!(l.count(), 100);
        assert_eq!(l.quantile_us(0.5), Some(50_000));
        assert_eq!(l.quantile_us(0.99), Some(99_000));
        let j = l.to_json();
        assert_eq!(j["last_ms"], json!(100.0));
        assert_eq!(j["max_ms"], json!(100.0));
        assert_eq!(j["mean_ms"], json!(50.5));
    }

    #[test]
    fn window_is_bounded() {
        let mut l = LatencyStats::default();
        for _ in 0..(WINDOW + 10) {
            l.record(Duration::from_micros(5));
        }
        assert_eq!(l.recent.len(), WINDOW);
        assert_eq!(l.count(), (WINDOW + 10) as u64);
    }
}
