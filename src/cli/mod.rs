//! The `mfbatch` command line: parses arguments, runs one command, renders its events and its
//! error (once), and maps the result to an exit code from [`exit`].

mod args;
mod batch_args;
mod config_cmd;
mod configure_cmd;
mod doctor_cmd;
mod exit;
mod failure;
mod follow;
mod jobs_cmd;
mod list_cmd;
mod metadata_cmd;
mod pathspec_cmd;
mod prompt;
mod render;
mod report;
mod run;
mod serve_cmd;
mod signals;
mod stack_cmd;
mod style;
mod words;

use std::process::ExitCode;

use clap::Parser;

use args::{Cli, Command};
use style::Style;

/// Global choices every command honours.
#[derive(Debug, Clone, Copy)]
pub struct Global {
    pub output: args::Output,
    pub quiet: bool,
    pub style: Style,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let global = Global {
        output: cli.output,
        quiet: cli.quiet,
        style: Style::detect(),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            report::print_error(&global, &e, None);
            return ExitCode::from(exit::FAILURE);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run::run(*args, global).await,
            Command::Config => config_cmd::show(global).map(|()| exit::SUCCESS),
            Command::Logs(args) => jobs_cmd::logs(args, global).await,
            Command::Status(args) => jobs_cmd::status(args, global).await,
            Command::Kill(args) => jobs_cmd::kill(args, global).await,
            Command::Metadata { command } => metadata_cmd::command(command, global).await,
            Command::Stack(args) => stack_cmd::run(args, global).await,
            Command::Configure(args) => configure_cmd::run(*args, global).await,
            Command::Doctor(args) => doctor_cmd::run(args, global).await,
            Command::List(args) => list_cmd::list(args, global).await,
            Command::Serve(args) => serve_cmd::run(args).await,
        }
    });
    let code = match result {
        Ok(code) => code,
        Err(failure) => failure.report(&global),
    };
    // Do not wait for background work (idle HTTP connections, abandoned tasks) at exit.
    runtime.shutdown_background();
    ExitCode::from(code)
}
