//! Command-line options of the QMP checkpoint driver, shared by the roles that drive
//! COLO checkpoints (`compare`; `primary` can flatten the same struct).

use std::path::PathBuf;

use clap::Args;
use colo_core::Duration;

use super::machine::QmpConfig;

/// The clap id of `--heartbeat-timeout`, for roles that rename it
/// (`mut_arg`) because another flattened struct has its own.
pub const QMP_HEARTBEAT_TIMEOUT_ID: &str = "qmp_heartbeat_timeout";

/// QMP checkpoint driver options.
#[derive(Debug, Clone, Args)]
pub struct QmpArgs {
    /// The primary QEMU's QMP socket (QEMU: `-qmp unix:PATH,server=on,wait=off`, one
    /// of its own; scripts use another). Checkpoints are asked for and followed
    /// there (STOP/RESUME/MIGRATION_PASS).
    #[arg(long, value_name = "unix:PATH", value_parser = parse_qmp_path)]
    pub qmp_primary: Option<PathBuf>,

    /// The secondary QEMU's QMP socket: its RESUME is the flush point of a
    /// checkpoint, and it gets `x-colo-lost-heartbeat` when the primary is lost.
    #[arg(long, value_name = "unix:PATH", value_parser = parse_qmp_path)]
    pub qmp_secondary: Option<PathBuf>,

    /// `x-checkpoint-delay` (ms) written to ask for a checkpoint. Default: the
    /// primary's current value, read with query-migrate-parameters (rewriting the
    /// same value only triggers the checkpoint).
    #[arg(long, value_name = "MS")]
    pub checkpoint_delay: Option<u64>,

    /// Ask again when no checkpoint started this many ms after asking (QEMU absorbs
    /// requests made during a running checkpoint).
    #[arg(long, value_name = "MS", default_value_t = 200,
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub checkpoint_reask: u64,

    /// A QMP monitor disconnected this many ms is lost; with --auto-failover the
    /// other VM then gets `x-colo-lost-heartbeat` (once COLO has run a checkpoint).
    /// (`primary` names it --qmp-heartbeat-timeout: its --heartbeat-timeout is the
    /// link's.)
    #[arg(id = QMP_HEARTBEAT_TIMEOUT_ID, long = "heartbeat-timeout", value_name = "MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    pub heartbeat_timeout: u64,

    /// A connected QMP monitor that answers no probe for this many ms is lost too
    /// (QEMU's main loop can stall for a second under load; at least
    /// --heartbeat-timeout).
    #[arg(long, value_name = "MS", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    pub silence_timeout: u64,

    /// Fail over by itself when a monitor is lost (`on`), or only on the `failover`
    /// control command (`off`).
    #[arg(long, value_name = "on|off", num_args = 0..=1, default_value = "on",
          default_missing_value = "on", value_parser = crate::cli::parse_on_off)]
    pub auto_failover: bool,

    /// Shell command run after a failover (e.g. to move the client network to the
    /// survivor's host), with COLO_SURVIVOR=primary|secondary and
    /// COLO_FAILOVER_CAUSE=command|heartbeat-lost in its environment.
    #[arg(long, value_name = "COMMAND")]
    pub on_failover: Option<String>,
}

impl QmpArgs {
    /// Whether any monitor is configured.
    #[must_use]
    pub fn enabled(&self) -> bool {
        self.qmp_primary.is_some() || self.qmp_secondary.is_some()
    }

    /// The state machine's settings.
    #[must_use]
    pub fn config(&self) -> QmpConfig {
        let heartbeat = Duration::from_millis(self.heartbeat_timeout);
        QmpConfig {
            checkpoint_delay_ms: self
                .checkpoint_delay
                .unwrap_or_else(|| QmpConfig::default().checkpoint_delay_ms),
            learn_delay: self.checkpoint_delay.is_none(),
            reask: Duration::from_millis(self.checkpoint_reask),
            probe_interval: Duration::from_micros((heartbeat.as_micros() / 4).max(1000)),
            heartbeat_timeout: heartbeat,
            silence_timeout: Duration::from_millis(
                self.silence_timeout.max(self.heartbeat_timeout),
            ),
            auto_failover: self.auto_failover,
        }
    }
}

fn parse_qmp_path(s: &str) -> Result<PathBuf, String> {
    let path = s.strip_prefix("unix:").unwrap_or(s);
    if path.is_empty() || path.starts_with("tcp:") {
        return Err(format!("{s:?}: a QMP socket is unix:PATH"));
    }
    Ok(PathBuf::from(path))
}
