//! The QMP checkpoint driver: drives COLO checkpoints of a QEMU pair from the proxy.
//!
//! - [`machine`]: the sans-IO state machine (ask, pending and re-ask, STOP/RESUME/
//!   MIGRATION_PASS, flush point, heartbeat and failover, latency figures);
//! - [`client`]: one tokio task per QMP monitor (connect, capabilities, lines);
//! - [`args`]: the `--qmp-*` options, flattened into the roles that use them;
//! - [`latency`]: latency counters for the `stats` control command.
//!
//! [`QmpLink`] is what a role's driver holds: the machine plus the command channels
//! of the monitor tasks.

pub mod args;
pub mod client;
pub mod latency;
pub mod machine;
#[cfg(test)]
mod tests;

use serde_json::{Value, json};
use tokio::sync::mpsc;

pub use self::args::QmpArgs;
pub use self::machine::{CheckpointDriver, FailoverCause, QmpAction, QmpInput, Vm};

/// Commands buffered per monitor task.
const COMMAND_BACKLOG: usize = 64;

/// The checkpoint driver as a role holds it.
#[derive(Debug)]
pub struct QmpLink {
    /// The state machine.
    pub machine: CheckpointDriver,
    commands: [Option<mpsc::Sender<Value>>; 2],
    on_failover: Option<String>,
    /// Commands dropped because a monitor task was not keeping up.
    pub commands_dropped: u64,
}

impl QmpLink {
    /// Start one monitor task per configured socket, feeding `tx`. `None` when no
    /// `--qmp-*` option was given.
    pub fn spawn<E>(
        args: &QmpArgs,
        tasks: &mut tokio::task::JoinSet<()>,
        tx: &mpsc::Sender<E>,
    ) -> Option<Self>
    where
        E: From<(Vm, QmpInput)> + Send + 'static,
    {
        if !args.enabled() {
            return None;
        }
        let mut commands = [None, None];
        for (vm, path) in [
            (Vm::Primary, &args.qmp_primary),
            (Vm::Secondary, &args.qmp_secondary),
        ] {
            if let Some(path) = path {
                let (ctx, crx) = mpsc::channel(COMMAND_BACKLOG);
                tasks.spawn(client::run(vm, path.clone(), crx, tx.clone()));
                commands[vm.index()] = Some(ctx);
            }
        }
        Some(Self {
            machine: CheckpointDriver::new(
                args.config(),
                args.qmp_primary.is_some(),
                args.qmp_secondary.is_some(),
            ),
            commands,
            on_failover: args.on_failover.clone(),
            commands_dropped: 0,
        })
    }

    /// Hand a command to a monitor task (dropped and counted if it is not keeping up;
    /// the machine re-asks what matters).
    pub fn send(&mut self, vm: Vm, command: Value) {
        if let Some(tx) = &self.commands[vm.index()] {
            tracing::debug!(vm = vm.as_str(), %command, "QMP command");
            if tx.try_send(command).is_err() {
                self.commands_dropped += 1;
            }
        }
    }

    /// Run the `--on-failover` hook, if any, without waiting for it.
    pub fn run_failover_hook(&self, survivor: Vm, cause: FailoverCause) {
        let Some(cmd) = &self.on_failover else { return };
        match tokio::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .env("COLO_SURVIVOR", survivor.as_str())
            .env("COLO_FAILOVER_CAUSE", cause.as_str())
            .spawn()
        {
            Ok(mut child) => {
                tokio::spawn(async move {
                    match child.wait().await {
                        Ok(st) if st.success() => tracing::info!("--on-failover hook done"),
                        Ok(st) => tracing::warn!(status = %st, "--on-failover hook failed"),
                        Err(e) => tracing::warn!(error = %e, "--on-failover hook: wait failed"),
                    }
                });
            }
            Err(e) => tracing::warn!(error = %e, "cannot start the --on-failover hook"),
        }
    }

    /// The `qmp` object of the `stats` reply.
    #[must_use]
    pub fn stats_json(&self) -> Value {
        let m = &self.machine;
        let s = m.stats();
        json!({
            "primary_up": m.is_up(Vm::Primary),
            "secondary_up": m.is_up(Vm::Secondary),
            "pending": m.pending(),
            "running": m.running(),
            "failed_over": m.failed_over().map(Vm::as_str),
            "checkpoint_delay_ms": m.checkpoint_delay_ms(),
            "requests": s.requests,
            "asks": s.asks,
            "reasks": s.reasks,
            "started": s.started,
            "flushed": s.flushed,
            "requested_done": s.requested_done,
            "unrequested_done": s.unrequested_done,
            "last_pass": s.last_pass,
            "errors": s.errors,
            "heartbeat_losses": s.heartbeat_losses,
            "commands_dropped": self.commands_dropped,
            "latency": s.latency.to_json(),
            "pause": s.pause.to_json(),
        })
    }
}
