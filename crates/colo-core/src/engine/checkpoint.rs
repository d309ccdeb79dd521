//! Checkpoint request coalescing: one request outstanding at a time, and a minimum
//! interval after each completed checkpoint (a Nagle-like threshold), so a burst of
//! divergences costs one checkpoint.

use crate::engine::output::Divergence;
use crate::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum GateState {
    /// No request outstanding.
    Idle,
    /// A divergence arrived too soon after the last checkpoint; ask at `until`.
    Deferred { cause: Divergence, until: Instant },
    /// A request is outstanding.
    Requested,
}

/// What the gate decided about a divergence.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum GateDecision {
    /// Emit a request now.
    RequestNow,
    /// Folded into an outstanding or deferred request.
    Coalesced,
    /// Deferred until the minimum interval has passed.
    Deferred,
}

#[derive(Debug)]
pub(crate) struct CheckpointGate {
    pub(crate) state: GateState,
    last_done: Option<Instant>,
    min_interval: Duration,
    next_id: u64,
}

impl CheckpointGate {
    pub(crate) fn new(min_interval: Duration) -> Self {
        Self {
            state: GateState::Idle,
            last_done: None,
            min_interval,
            next_id: 1,
        }
    }

    pub(crate) fn on_divergence(&mut self, now: Instant, d: &Divergence) -> GateDecision {
        match self.state {
            GateState::Idle => match self.last_done {
                Some(last) if now < last + self.min_interval => {
                    self.state = GateState::Deferred {
                        cause: d.clone(),
                        until: last + self.min_interval,
                    };
                    GateDecision::Deferred
                }
                _ => {
                    self.state = GateState::Requested;
                    GateDecision::RequestNow
                }
            },
            GateState::Deferred { .. } | GateState::Requested => GateDecision::Coalesced,
        }
    }

    /// A deferred request that is now due, if any.
    pub(crate) fn poll_deferred(&mut self, now: Instant) -> Option<Divergence> {
        match &self.state {
            GateState::Deferred { until, .. } if *until <= now => {
                let GateState::Deferred { cause, .. } =
                    core::mem::replace(&mut self.state, GateState::Requested)
                else {
                    unreachable!()
                };
                Some(cause)
            }
            _ => None,
        }
    }

    pub(crate) fn deadline(&self) -> Option<Instant> {
        match &self.state {
            GateState::Deferred { until, .. } => Some(*until),
            _ => None,
        }
    }

    pub(crate) fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    pub(crate) fn done(&mut self, now: Instant) {
        self.state = GateState::Idle;
        self.last_done = Some(now);
    }

    pub(crate) fn outstanding(&self) -> bool {
        self.state != GateState::Idle
    }
}
