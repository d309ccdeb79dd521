//! The driver loop every role shares: one task owns the role's sans-IO state machine
//! and waits on whichever comes first: the shutdown signal, a control command, the
//! state machine's next deadline, or an event from the I/O tasks (taking up to 64
//! more that are ready at once). After each wake-up the role drains its outputs.

use std::future::Future;

use serde_json::{Map, Value};
use tokio::sync::mpsc;

use super::Clock;
use super::control::{Command, Request};
use super::outq::OutQueue;

/// What a role's driver does at each kind of wake-up.
pub trait Role {
    /// What the I/O tasks send it.
    type Event;

    /// The driver's clock.
    fn clock(&self) -> Clock;
    /// When [`Role::on_timeout`] must next run, if ever.
    fn deadline(&self) -> Option<colo_core::Instant>;
    /// A deadline has passed.
    fn on_timeout(&mut self, now: colo_core::Instant);
    /// An event from an I/O task.
    fn on_event(&mut self, event: Self::Event);
    /// A control command: the reply's fields, or an error message.
    fn on_command(&mut self, command: Command) -> Result<Map<String, Value>, String>;
    /// After every wake-up: carry out what the state machine asked for. `inputs` lets a
    /// role take events already delivered before acting (the QMP flush point).
    fn after_wake(&mut self, inputs: &mut mpsc::Receiver<Self::Event>);
    /// The role's output queues, by name, given a moment to drain at shutdown.
    fn output_queues(&self) -> Vec<(&'static str, OutQueue)>;
    /// Shutting down, before the outputs are flushed.
    fn on_stop(&mut self) {}
}

/// Run `role` until `shutdown` completes or every I/O task is gone, then give its
/// outputs a moment (one second at most) to take what is queued.
pub async fn run<R: Role>(
    mut role: R,
    mut inputs: mpsc::Receiver<R::Event>,
    mut control: mpsc::Receiver<Request>,
    shutdown: impl Future<Output = &'static str>,
) {
    tokio::pin!(shutdown);
    loop {
        let clock = role.clock();
        let deadline = role.deadline().map(|t| clock.to_tokio(t));
        let sleep =
            tokio::time::sleep_until(deadline.unwrap_or_else(|| {
                tokio::time::Instant::now() + std::time::Duration::from_secs(3600)
            }));
        tokio::select! {
            biased;
            why = &mut shutdown => {
                tracing::info!(signal = why, "shutting down");
                break;
            }
            Some(req) = control.recv() => {
                let result = role.on_command(req.command);
                let _ = req.reply.send(result);
            }
            () = sleep, if deadline.is_some() => role.on_timeout(clock.now()),
            ev = inputs.recv() => {
                let Some(ev) = ev else { break };
                super::poll::note_activity();
                role.on_event(ev);
                // Take what else is ready before draining outputs.
                for _ in 0..64 {
                    match inputs.try_recv() {
                        Ok(ev) => role.on_event(ev),
                        Err(_) => break,
                    }
                }
            }
        }
        role.after_wake(&mut inputs);
    }
    role.on_stop();
    role.after_wake(&mut inputs);
    let queues = role.output_queues();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(1);
    while !queues.iter().all(|(_, q)| q.is_empty()) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    for (output, q) in &queues {
        let s = q.stats();
        tracing::info!(
            output,
            written = s.written_frames,
            unsent = s.queued_frames,
            dropped = s.dropped_frames,
            "stopped"
        );
    }
}

/// Which endpoint roles have a peer now, in the order first seen.
#[derive(Debug, Clone, Default)]
pub struct Peers(Vec<(&'static str, bool)>);

impl Peers {
    /// Every endpoint role listed as down from the start, so a peer that never came
    /// shows as down.
    #[must_use]
    pub fn listed(roles: impl IntoIterator<Item = &'static str>) -> Self {
        Self(roles.into_iter().map(|r| (r, false)).collect())
    }

    /// `(role, up)` for each endpoint role.
    #[must_use]
    pub fn as_slice(&self) -> &[(&'static str, bool)] {
        &self.0
    }

    /// Record that `role`'s peer came or went; returns the control event's name.
    pub fn set(&mut self, role: &'static str, up: bool) -> &'static str {
        match self.0.iter_mut().find(|(r, _)| *r == role) {
            Some(p) => p.1 = up,
            None => self.0.push((role, up)),
        }
        if up {
            "peer-connected"
        } else {
            "peer-disconnected"
        }
    }

    /// `{"role": up, ...}` for `stats`.
    #[must_use]
    pub fn to_json(&self) -> Value {
        Value::Object(
            self.0
                .iter()
                .map(|(r, up)| ((*r).to_owned(), Value::Bool(*up)))
                .collect(),
        )
    }
}
