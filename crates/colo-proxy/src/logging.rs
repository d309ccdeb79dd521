//! Diagnostic logging through `tracing`, written to stderr.
//!
//! The filter comes from `--log-level` when given, else from `RUST_LOG`, else `warn`.
//! Either may be a plain level (`debug`) or a full `EnvFilter` directive list
//! (`warn,colo_proxy=trace`). It can be changed while running with
//! [`set_filter`] (the control socket's `set-log-level` command).

use std::sync::{Mutex, OnceLock, PoisonError};

use anyhow::anyhow;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Registry, reload};

/// The filter used when neither `--log-level` nor `RUST_LOG` says anything.
const DEFAULT_FILTER: &str = "warn";

/// The installed filter's reload handle and its text.
struct Reloadable {
    handle: reload::Handle<EnvFilter, Registry>,
    current: String,
}

static FILTER: OnceLock<Mutex<Reloadable>> = OnceLock::new();

/// Install the global subscriber. `level` is the `--log-level` value, if any.
pub fn init(level: Option<&str>) -> anyhow::Result<()> {
    let (filter, current) = match level {
        Some(spec) => (
            EnvFilter::try_new(spec).map_err(|e| {
                anyhow!("invalid --log-level {spec:?} ({e}); try error, warn, info, debug or trace")
            })?,
            spec.to_owned(),
        ),
        None => match std::env::var(EnvFilter::DEFAULT_ENV) {
            Ok(spec) if !spec.trim().is_empty() => (
                EnvFilter::try_new(&spec).map_err(|e| {
                    anyhow!("invalid RUST_LOG {spec:?} ({e}); unset it or set a level such as info")
                })?,
                spec,
            ),
            _ => (EnvFilter::new(DEFAULT_FILTER), DEFAULT_FILTER.to_owned()),
        },
    };
    let (filter, handle) = reload::Layer::new(filter);
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                // Colours only on a terminal, so logs redirected to files stay greppable.
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .try_init()
        .map_err(|e| anyhow!("cannot install the log subscriber: {e}"))?;
    let _ = FILTER.set(Mutex::new(Reloadable { handle, current }));
    Ok(())
}

/// Replace the log filter; returns the old and the new filter text (as written by
/// the operator). A directive that does not parse leaves the filter as it was.
pub fn set_filter(spec: &str) -> Result<(String, String), String> {
    let spec = spec.trim();
    if spec.is_empty() {
        return Err(
            "empty filter; use error, warn, info, debug, trace or a directive list \
                    such as warn,colo_proxy=debug"
                .to_owned(),
        );
    }
    let filter = EnvFilter::try_new(spec).map_err(|e| {
        format!(
            "invalid filter {spec:?} ({e}); use error, warn, info, debug, trace or a \
             directive list such as warn,colo_proxy=debug"
        )
    })?;
    let new = spec.to_owned();
    let Some(lock) = FILTER.get() else {
        return Err("logging is not set up in this process".to_owned());
    };
    let mut state = lock.lock().unwrap_or_else(PoisonError::into_inner);
    state
        .handle
        .reload(filter)
        .map_err(|e| format!("cannot change the log filter: {e}"))?;
    let old = std::mem::replace(&mut state.current, new.clone());
    drop(state);
    tracing::warn!(old = %old, new = %new, "log filter changed");
    Ok((old, new))
}
