//! The sans-IO checkpoint driver: what to say to the two QEMUs' QMP monitors, and
//! what their events mean for the compare engine.
//!
//! Recipe (QEMU 7.2, see `qemu-glue/README.md`):
//! - **Ask**: `migrate-set-parameters {"x-checkpoint-delay": <current value>}` on the
//!   primary runs the same checkpoint notifier colo-compare uses. QEMU absorbs a request
//!   while a checkpoint runs, so a request stays *pending* until a primary `STOP` shows a
//!   checkpoint started, and is asked again when no `STOP` follows within `reask`.
//! - **Start**: the primary's `STOP`. **Flush point**: the secondary's `RESUME` (the SVM
//!   has loaded the new state while the primary is still stopped), or the primary's
//!   `RESUME` when no secondary monitor is configured. **End**: the primary's `RESUME`;
//!   latency is measured from the request to it. `MIGRATION_PASS` (`events` capability)
//!   numbers the checkpoints.
//! - **Heartbeat**: a `query-status` probe every `probe_interval`; a monitor that is
//!   disconnected for `heartbeat_timeout`, or connected but silent for
//!   `silence_timeout` (a busy QEMU main loop can stall for a second), is lost, and with
//!   `auto_failover` the survivor gets `x-colo-lost-heartbeat`. Only once COLO has run
//!   (a checkpoint was flushed): before that the secondary is no copy to fail over to.
//!
//! Time is an argument; work comes out of [`CheckpointDriver::poll_action`].

use std::collections::VecDeque;

use colo_core::{Duration, Instant};
use serde_json::{Value, json};

use super::latency::LatencyStats;

/// One of the two VMs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vm {
    /// The primary VM (PVM), whose output the client sees.
    Primary,
    /// The secondary VM (SVM).
    Secondary,
}

impl Vm {
    /// Index into per-VM arrays.
    #[must_use]
    pub const fn index(self) -> usize {
        match self {
            Self::Primary => 0,
            Self::Secondary => 1,
        }
    }

    /// The other VM.
    #[must_use]
    pub const fn other(self) -> Self {
        match self {
            Self::Primary => Self::Secondary,
            Self::Secondary => Self::Primary,
        }
    }

    /// Lower-case name for logs and the control protocol.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Primary => "primary",
            Self::Secondary => "secondary",
        }
    }
}

/// What a QMP monitor said (already parsed by the client).
#[derive(Debug, Clone, PartialEq)]
pub enum QmpInput {
    /// The monitor is connected and capabilities are negotiated.
    Connected,
    /// The connection is gone.
    Disconnected,
    /// An asynchronous event: `event` with its `data`.
    Event {
        /// Event name (`STOP`, `RESUME`, `MIGRATION_PASS`, ...).
        name: String,
        /// The event's `data` (Null when absent).
        data: Value,
    },
    /// A reply to one of our commands.
    Reply {
        /// The `id` we sent with the command, if the reply echoed one.
        id: Option<String>,
        /// `Ok(return)` or `Err(error description)`.
        result: Result<Value, String>,
    },
}

/// Settings of the checkpoint driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QmpConfig {
    /// `x-checkpoint-delay` (ms) to write when asking, until the primary tells us its own.
    pub checkpoint_delay_ms: u64,
    /// Replace `checkpoint_delay_ms` with the primary's own value when it connects.
    pub learn_delay: bool,
    /// Ask again when no checkpoint started this long after asking.
    pub reask: Duration,
    /// How often each monitor is probed with `query-status`.
    pub probe_interval: Duration,
    /// A monitor disconnected this long is lost.
    pub heartbeat_timeout: Duration,
    /// A connected monitor that answers nothing this long is lost.
    pub silence_timeout: Duration,
    /// Fail over to the survivor when a monitor is lost.
    pub auto_failover: bool,
}

impl Default for QmpConfig {
    fn default() -> Self {
        Self {
            checkpoint_delay_ms: 20_000,
            learn_delay: true,
            reask: Duration::from_millis(200),
            probe_interval: Duration::from_millis(250),
            heartbeat_timeout: Duration::from_millis(1000),
            silence_timeout: Duration::from_millis(5000),
            auto_failover: true,
        }
    }
}

/// Why a failover happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailoverCause {
    /// The operator's `failover` command.
    Command,
    /// The other VM's monitor was lost for the heartbeat timeout.
    HeartbeatLost,
}

impl FailoverCause {
    /// Name for logs and the control protocol.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Command => "command",
            Self::HeartbeatLost => "heartbeat-lost",
        }
    }
}

/// Work for the shell.
#[derive(Debug, Clone, PartialEq)]
pub enum QmpAction {
    /// Write this command (a JSON object with `execute` and `id`) to a VM's monitor.
    Send {
        /// Whose monitor.
        vm: Vm,
        /// The command object.
        command: Value,
    },
    /// A checkpoint has made the secondary a copy: drain what the data sockets already
    /// delivered, then tell the engine the checkpoint is done.
    CheckpointDone {
        /// The `MIGRATION_PASS` number of this checkpoint, when known.
        pass: Option<u64>,
        /// We had asked for it (as opposed to a periodic or initial one).
        requested: bool,
    },
    /// Switch the proxy to failover mode: `survivor` carries on alone.
    Failover {
        /// The VM that carries on.
        survivor: Vm,
        /// Why.
        cause: FailoverCause,
    },
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    /// When the engine asked.
    since: Instant,
    /// When we last wrote the request to the primary (None: not yet, e.g. no monitor).
    asked_at: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct Running {
    stopped_at: Instant,
    requested_at: Option<Instant>,
    flushed: bool,
}

#[derive(Debug, Clone, Copy, Default)]
struct Monitor {
    /// Configured at all (a `--qmp-*` option was given).
    configured: bool,
    up: bool,
    /// Last time anything arrived (or the connection came up).
    last_heard: Option<Instant>,
    /// Since when it is lost (disconnected or silent); None while healthy.
    lost_since: Option<Instant>,
    next_probe: Option<Instant>,
}

/// Counters of the checkpoint driver (the `qmp` object of the `stats` command).
#[derive(Debug, Clone, Default)]
pub struct QmpStats {
    /// Checkpoint requests from the engine.
    pub requests: u64,
    /// `migrate-set-parameters` writes (first asks plus re-asks).
    pub asks: u64,
    /// Re-asks after no checkpoint started in time.
    pub reasks: u64,
    /// Checkpoints seen (primary `STOP`).
    pub started: u64,
    /// Checkpoints flushed into the engine.
    pub flushed: u64,
    /// Checkpoints that we had asked for.
    pub requested_done: u64,
    /// Checkpoints we had not asked for (periodic, initial).
    pub unrequested_done: u64,
    /// Request to primary `RESUME`, for requested checkpoints.
    pub latency: LatencyStats,
    /// Primary `STOP` to `RESUME` (the VM pause), for every checkpoint.
    pub pause: LatencyStats,
    /// Last `MIGRATION_PASS` number.
    pub last_pass: Option<u64>,
    /// Error replies from a monitor.
    pub errors: u64,
    /// Heartbeat losses (a monitor silent or disconnected for the timeout).
    pub heartbeat_losses: u64,
}

/// The checkpoint driver's state machine.
#[derive(Debug)]
pub struct CheckpointDriver {
    config: QmpConfig,
    monitors: [Monitor; 2],
    pending: Option<Pending>,
    running: Option<Running>,
    failed_over: Option<Vm>,
    next_id: u64,
    actions: VecDeque<QmpAction>,
    stats: QmpStats,
}

impl CheckpointDriver {
    /// A driver for the monitors that are configured (`primary`, `secondary`).
    #[must_use]
    pub fn new(config: QmpConfig, primary: bool, secondary: bool) -> Self {
        let mut monitors = [Monitor::default(); 2];
        monitors[0].configured = primary;
        monitors[1].configured = secondary;
        Self {
            config,
            monitors,
            pending: None,
            running: None,
            failed_over: None,
            next_id: 0,
            actions: VecDeque::new(),
            stats: QmpStats::default(),
        }
    }

    /// Counters.
    #[must_use]
    pub fn stats(&self) -> &QmpStats {
        &self.stats
    }

    /// The `x-checkpoint-delay` written when asking.
    #[must_use]
    pub fn checkpoint_delay_ms(&self) -> u64 {
        self.config.checkpoint_delay_ms
    }

    /// A request is waiting for a checkpoint to start.
    #[must_use]
    pub fn pending(&self) -> bool {
        self.pending.is_some()
    }

    /// A checkpoint is running (primary stopped, not resumed yet).
    #[must_use]
    pub fn running(&self) -> bool {
        self.running.is_some()
    }

    /// The survivor, after a failover.
    #[must_use]
    pub fn failed_over(&self) -> Option<Vm> {
        self.failed_over
    }

    /// Whether a VM's monitor is connected.
    #[must_use]
    pub fn is_up(&self, vm: Vm) -> bool {
        self.monitors[vm.index()].up
    }

    /// The next piece of work, in order.
    pub fn poll_action(&mut self) -> Option<QmpAction> {
        self.actions.pop_front()
    }

    fn command(&mut self, vm: Vm, tag: &str, execute: &str, arguments: Option<Value>) {
        self.next_id += 1;
        let mut cmd = json!({"execute": execute, "id": format!("{tag}-{}", self.next_id)});
        if let Some(args) = arguments {
            cmd["arguments"] = args;
        }
        self.actions.push_back(QmpAction::Send { vm, command: cmd });
    }

    /// The engine wants a checkpoint. Level-triggered: a request while one is pending
    /// adds nothing.
    pub fn request_checkpoint(&mut self, now: Instant) {
        self.stats.requests += 1;
        if self.failed_over.is_some() || self.pending.is_some() {
            return;
        }
        self.pending = Some(Pending {
            since: now,
            asked_at: None,
        });
        self.ask(now);
    }

    /// Write the request to the primary if it can take it now.
    fn ask(&mut self, now: Instant) {
        let Some(p) = self.pending else { return };
        if self.running.is_some() || !self.monitors[Vm::Primary.index()].up {
            return; // asked when the checkpoint ends or the monitor is back
        }
        if p.asked_at.is_some() {
            self.stats.reasks += 1;
        }
        self.stats.asks += 1;
        self.pending = Some(Pending {
            asked_at: Some(now),
            ..p
        });
        let delay = self.config.checkpoint_delay_ms;
        self.command(
            Vm::Primary,
            "checkpoint",
            "migrate-set-parameters",
            Some(json!({"x-checkpoint-delay": delay})),
        );
    }

    /// Something arrived from (or happened to) a VM's monitor.
    pub fn handle_input(&mut self, now: Instant, vm: Vm, input: QmpInput) {
        let m = &mut self.monitors[vm.index()];
        match input {
            QmpInput::Connected => {
                m.up = true;
                m.last_heard = Some(now);
                m.lost_since = None;
                m.next_probe = Some(now + self.config.probe_interval);
                if vm == Vm::Primary {
                    self.command(vm, "params", "query-migrate-parameters", None);
                    self.ask(now);
                }
            }
            QmpInput::Disconnected => {
                m.up = false;
                m.next_probe = None;
                if m.lost_since.is_none() {
                    m.lost_since = Some(now);
                }
                self.check_heartbeats(now);
            }
            QmpInput::Event { name, data } => {
                m.last_heard = Some(now);
                m.lost_since = None;
                self.event(now, vm, &name, &data);
            }
            QmpInput::Reply { id, result } => {
                m.last_heard = Some(now);
                m.lost_since = None;
                match result {
                    Ok(ret) => {
                        if self.config.learn_delay
                            && id.as_deref().is_some_and(|i| i.starts_with("params-"))
                            && let Some(d) = ret.get("x-checkpoint-delay").and_then(Value::as_u64)
                        {
                            self.config.checkpoint_delay_ms = d;
                        }
                    }
                    Err(e) => {
                        self.stats.errors += 1;
                        tracing::warn!(vm = vm.as_str(), id = ?id, error = %e, "QMP command failed");
                    }
                }
            }
        }
    }

    fn event(&mut self, now: Instant, vm: Vm, name: &str, data: &Value) {
        if self.failed_over.is_some() {
            return;
        }
        match (vm, name) {
            (Vm::Primary, "STOP") => {
                self.stats.started += 1;
                let requested_at = self.pending.take().map(|p| p.since);
                self.running = Some(Running {
                    stopped_at: now,
                    requested_at,
                    flushed: false,
                });
            }
            (Vm::Primary, "MIGRATION_PASS") => {
                if let Some(pass) = data.get("pass").and_then(Value::as_u64) {
                    self.stats.last_pass = Some(pass);
                }
            }
            (Vm::Secondary, "RESUME") => {
                // The SVM has loaded the new state: the flush point.
                match &mut self.running {
                    Some(r) if !r.flushed => {
                        r.flushed = true;
                        let requested = r.requested_at.is_some();
                        self.flush(requested);
                    }
                    Some(_) => {}
                    // No STOP seen (no primary monitor, or it came up late): flush anyway.
                    None => self.flush(false),
                }
            }
            (Vm::Primary, "RESUME") => {
                let Some(r) = self.running.take() else { return };
                if !r.flushed {
                    self.flush(r.requested_at.is_some());
                }
                self.stats.pause.record(now.saturating_since(r.stopped_at));
                if let Some(at) = r.requested_at {
                    self.stats.latency.record(now.saturating_since(at));
                }
                // A request that came in during the checkpoint was absorbed: ask now.
                self.ask(now);
            }
            _ => {}
        }
    }

    fn flush(&mut self, requested: bool) {
        self.stats.flushed += 1;
        if requested {
            self.stats.requested_done += 1;
        } else {
            self.stats.unrequested_done += 1;
        }
        self.actions.push_back(QmpAction::CheckpointDone {
            pass: self.stats.last_pass,
            requested,
        });
    }

    /// The operator's `failover`: the survivor is the secondary when the primary's
    /// monitor is down, otherwise the primary (the secondary is declared gone).
    pub fn failover(&mut self, now: Instant) -> Vm {
        let survivor = if self.monitors[0].configured && !self.monitors[0].up {
            Vm::Secondary
        } else {
            Vm::Primary
        };
        self.fail_over(now, survivor, FailoverCause::Command);
        survivor
    }

    fn fail_over(&mut self, _now: Instant, survivor: Vm, cause: FailoverCause) {
        if self.failed_over.is_some() {
            return;
        }
        self.failed_over = Some(survivor);
        self.pending = None;
        self.running = None;
        if self.monitors[survivor.index()].up {
            self.command(survivor, "failover", "x-colo-lost-heartbeat", None);
        }
        self.actions
            .push_back(QmpAction::Failover { survivor, cause });
    }

    /// When [`Self::handle_timeout`] next has work.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.failed_over.is_some() {
            return None;
        }
        let mut next: Option<Instant> = None;
        let mut at = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        if let Some(Pending {
            asked_at: Some(a), ..
        }) = self.pending
            && self.running.is_none()
        {
            at(a + self.config.reask);
        }
        for m in &self.monitors {
            if let Some(p) = m.next_probe {
                at(p);
            }
            if let Some(l) = m.lost_since {
                at(l + self.config.heartbeat_timeout);
            } else if m.up
                && let Some(h) = m.last_heard
            {
                at(h + self.config.silence_timeout);
            }
        }
        next
    }

    /// Re-ask, probe, and check heartbeats.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.failed_over.is_some() {
            return;
        }
        if let Some(Pending {
            asked_at: Some(a), ..
        }) = self.pending
            && self.running.is_none()
            && now >= a + self.config.reask
        {
            tracing::debug!("no checkpoint started after the request: asking again");
            self.ask(now);
        }
        for vm in [Vm::Primary, Vm::Secondary] {
            let m = self.monitors[vm.index()];
            if m.up && m.next_probe.is_some_and(|p| now >= p) {
                self.monitors[vm.index()].next_probe = Some(now + self.config.probe_interval);
                self.command(vm, "probe", "query-status", None);
            }
        }
        self.check_heartbeats(now);
    }

    fn check_heartbeats(&mut self, now: Instant) {
        let timeout = self.config.heartbeat_timeout;
        let silence = self.config.silence_timeout;
        // Before the first checkpoint the secondary is not a copy: nothing to fail over to.
        let armed = self.config.auto_failover && self.stats.flushed > 0;
        for vm in [Vm::Primary, Vm::Secondary] {
            let m = &mut self.monitors[vm.index()];
            if !m.configured {
                continue;
            }
            if m.lost_since.is_none() && m.up && m.last_heard.is_some_and(|h| now >= h + silence) {
                // Lost from when it fell silent, less the disconnect timeout, which is
                // thereby over: silence is acted on at `silence_timeout`.
                m.lost_since = m.last_heard.map(|h| h + silence - timeout);
            }
            let Some(lost) = m.lost_since else { continue };
            if now < lost + timeout || !armed {
                continue;
            }
            let other = self.monitors[vm.other().index()];
            if other.configured && other.up && other.lost_since.is_none() {
                self.stats.heartbeat_losses += 1;
                tracing::warn!(
                    lost = vm.as_str(),
                    survivor = vm.other().as_str(),
                    "QMP heartbeat lost: failing over"
                );
                self.fail_over(now, vm.other(), FailoverCause::HeartbeatLost);
                return;
            }
        }
    }
}
