//! The `creditflow` binary: parses the command line, loads and validates the configuration, sets up logging and
//! runs the chosen subcommand. Exit status 0 on success, 1 on a runtime failure, 2 on bad configuration.

mod cli;
mod config;
mod jobs;
mod logging;
mod report;
mod serve;
mod smoke;
mod stripe_trigger;
mod token;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

/// mimalloc rather than glibc's allocator. A usage batch allocates and frees tens of thousands of small strings and
/// maps at once; under glibc's allocator the worker spent more than half of its CPU in malloc and free (profiled
/// with perf while `bench/api/run --only batches` ran). Two builds differing only in this line, on one machine:
/// batches 43,000-46,000 -> 51,000-52,500 events/s, with 20-65 MiB more peak memory (bench/README.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Openapi = cli.command {
        println!("{}", creditflow_api::openapi_json());
        return ExitCode::SUCCESS;
    }
    let loaded = match config::load(cli.config.as_deref()) {
        Ok(loaded) => loaded,
        Err(error) => {
            eprintln!("creditflow: {error}");
            return ExitCode::from(2);
        }
    };
    match &cli.command {
        Command::Config => {
            print!("{}", loaded.config.to_redacted_toml());
            return ExitCode::SUCCESS;
        }
        Command::Token(args) => return token::print(&loaded, args),
        Command::Serve
        | Command::Api
        | Command::Worker
        | Command::Migrate
        | Command::Jobs(_)
        | Command::Smoke(_)
        | Command::Report(_)
        | Command::Stripe(_)
        | Command::Openapi => {}
    }
    logging::init(&loaded.config);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("creditflow: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve => serve::serve(&loaded).await,
            Command::Api => serve::api(&loaded).await,
            Command::Worker => serve::worker(&loaded).await,
            Command::Migrate => serve::migrate(&loaded).await,
            Command::Jobs(args) => jobs::run(&loaded, &args).await,
            Command::Smoke(args) => smoke::run(&loaded, &args).await,
            Command::Report(args) => report::run(&loaded, &args).await,
            Command::Stripe(cli::StripeCommand::Trigger(args)) => stripe_trigger::run(&loaded, &args).await,
            Command::Config | Command::Token(_) | Command::Openapi => Ok(()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // `{:#}` prints the whole cause chain on one line: what failed, then why.
            tracing::error!(error = format!("{error:#}"), "creditflow failed");
            eprintln!("creditflow: {error:#}");
            ExitCode::FAILURE
        }
    }
}
