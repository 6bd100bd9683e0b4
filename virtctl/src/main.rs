//! `virtctl`: manage Ironvisor virtual machines through the node daemon's socket.

use std::process::ExitCode;

use clap::Parser;
use ironvisor_virtctl::cli::Cli;
use tracing_subscriber::EnvFilter;

/// Environment variable with a `tracing` filter for diagnostics on standard error.
const LOG_ENV: &str = "VIRTCTL_LOG";

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_env(LOG_ENV).unwrap_or_else(|_| EnvFilter::new("off"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(ironvisor_virtctl::run(cli));
    // The console's standard-input reader may still be blocked in read(2): do not wait.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is_broken_pipe() => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
