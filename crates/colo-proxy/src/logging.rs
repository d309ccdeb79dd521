//! Diagnostic logging through `tracing`, written to stderr.
//!
//! The filter comes from `--log-level` when given, else from `RUST_LOG`, else `warn`.
//! Either may be a plain level (`debug`) or a full `EnvFilter` directive list
//! (`warn,colo_proxy=trace`).

use anyhow::anyhow;
use tracing_subscriber::EnvFilter;

/// The filter used when neither `--log-level` nor `RUST_LOG` says anything.
const DEFAULT_FILTER: &str = "warn";

/// Install the global subscriber. `level` is the `--log-level` value, if any.
pub fn init(level: Option<&str>) -> anyhow::Result<()> {
    let filter = match level {
        Some(spec) => EnvFilter::try_new(spec).map_err(|e| {
            anyhow!("invalid --log-level {spec:?} ({e}); try error, warn, info, debug or trace")
        })?,
        None => match std::env::var(EnvFilter::DEFAULT_ENV) {
            Ok(spec) if !spec.trim().is_empty() => EnvFilter::try_new(&spec).map_err(|e| {
                anyhow!("invalid RUST_LOG {spec:?} ({e}); unset it or set a level such as info")
            })?,
            _ => EnvFilter::new(DEFAULT_FILTER),
        },
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only on a terminal, so logs redirected to files stay greppable.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init()
        .map_err(|e| anyhow!("cannot install the log subscriber: {e}"))
}
