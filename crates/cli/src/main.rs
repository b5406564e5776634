//! The `truthgpt` binary. Library crates return errors; only this crate prints them.

mod args;
mod bench;
mod config_cmd;
mod quickstart;

use std::process::ExitCode;

use clap::Parser;

use crate::args::{BenchCommand, Cli, Command, ConfigCommand};

fn main() -> ExitCode {
    // clap prints usage errors and exits 2 itself; `--help` and `--version` exit 0.
    let cli = Cli::parse();
    match try_main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn try_main(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Config(ConfigCommand::Validate { file }) => config_cmd::validate(&file),
        Command::Config(ConfigCommand::Show { file, layers }) => config_cmd::show(file.as_deref(), &layers),
        Command::Bench(BenchCommand::Train(args)) => bench::train(&args),
        Command::Bench(BenchCommand::Moe(args)) => bench::moe(&args),
        Command::Quickstart(args) => quickstart::run(&args),
    }
}
