//! `colo-proxy`: the COLO network proxy's command-line front end.
//!
//! Exit codes: 0 success, 1 runtime failure (including a demo whose client stream
//! failed verification), 2 usage error.

mod cli;
mod compare;
mod config_file;
mod ctl;
mod demo;
mod link;
mod logging;
mod port;
mod primary;
mod qmp;
mod replay;
mod rewrite;
mod secondary;
mod shell;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    // A config file's options become flags ahead of the user's (config_file.rs).
    let argv = match config_file::expand(
        std::env::args_os().collect(),
        std::env::var_os(config_file::ENV),
    ) {
        Ok(argv) => argv,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if config_file::wants_print(&argv) {
        return match config_file::print(&argv) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => e.exit(),
        };
    }
    // Usage errors exit with 2 here (clap's convention); --help and --version with 0.
    let cli = Cli::parse_from(argv);
    let result = logging::init(cli.log_level.as_deref()).and_then(|()| match &cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Compare(args) => compare::run(args),
        Command::Ctl(args) => ctl::run(args),
        Command::Replay(args) => replay::run(args),
        Command::Rewrite(args) => rewrite::run(args),
        Command::Primary(args) => primary::run(args),
        Command::Secondary(args) => secondary::run(args),
    });
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
