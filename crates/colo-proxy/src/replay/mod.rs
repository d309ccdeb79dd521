//! `colo-proxy replay PRIMARY SECONDARY`: compare two captures on the live engine,
//! with the capture timestamps as its clock, and explain every divergence.
//!
//! 1. Pass 1 ([`index`]): read each capture's headers, decide which side is the VM,
//!    list the connections, pair them across the captures.
//! 2. Pass 2 ([`run`]): merge the captures by time and feed the VM's output to
//!    [`colo_core::engine::Engine`]: the primary's frames as `Side::Primary`, the
//!    secondary's, rewritten into the paired primary connection's addresses, ports and
//!    client sequence space and then by colo-core's rewriter ([`align`]), as
//!    `Side::Secondary`. Checkpoints complete on the captures' clock
//!    (`Engine::handle_checkpoint_resync`), so later divergences are counted too.
//! 3. Pass 3 ([`context`]): only when something diverged, read the captures again
//!    for the bytes and packets around each divergence (and `--evidence` files).
//!
//! See docs/replay.md for the semantics, the JSON schema and the limitations.

pub mod align;
pub mod args;
pub mod capture;
pub mod context;
pub mod headers;
pub mod index;
pub mod progress;
pub mod report;
pub mod run;

#[cfg(test)]
mod synthetic_tests;
#[cfg(test)]
mod tests;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

pub use args::ReplayArgs;

/// Exit code: both captures say the same.
pub const EXIT_IDENTICAL: u8 = 0;
/// Exit code: a divergence, a close difference or one-sided output was found.
pub const EXIT_DIVERGED: u8 = 1;
/// Exit code: a capture is missing, unreadable or damaged (the report still covers
/// what was read). Usage errors exit with 2 (clap's convention).
pub const EXIT_INPUT: u8 = 3;

/// Run `colo-proxy replay`.
pub fn run(args: &ReplayArgs) -> anyhow::Result<ExitCode> {
    let total = [&args.primary, &args.secondary]
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum::<u64>();
    let show = match args.progress {
        args::ProgressMode::Always => true,
        args::ProgressMode::Never => false,
        args::ProgressMode::Auto => std::io::stderr().is_terminal() && total > 64 << 20,
    };
    let mut progress = progress::Progress::new(show);
    let report = match run::replay(args, &mut progress) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(EXIT_INPUT));
        }
    };
    let text = match args.format {
        args::ReportFormat::Text => report.text(),
        args::ReportFormat::Json => {
            let mut s = serde_json::to_string_pretty(&report)?;
            s.push('\n');
            s
        }
    };
    let mut out = std::io::stdout().lock();
    // A closed pipe (`| head`) is not an error worth a message.
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
    for i in &report.inputs {
        if let Some(e) = &i.error {
            eprintln!("error: {}: at offset {}: {}", i.path, e.offset, e.problem);
        }
    }
    Ok(ExitCode::from(report.exit_code))
}
