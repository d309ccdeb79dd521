//! `colo-proxy`: the COLO network proxy's command-line front end.
//!
//! Exit codes: 0 success, 1 runtime failure (including a demo whose client stream
//! failed verification), 2 usage error.

mod cli;
mod compare;
mod ctl;
mod demo;
mod logging;
mod qmp;
mod replay;
mod rewrite;
mod shell;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    // Usage errors exit with 2 here (clap's convention); --help and --version with 0.
    let cli = Cli::parse();
    let result = logging::init(cli.log_level.as_deref()).and_then(|()| match &cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Compare(args) => compare::run(args),
        Command::Ctl(args) => ctl::run(args),
        Command::Replay(args) => replay::run(args),
        Command::Rewrite(args) => rewrite::run(args),
    });
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
