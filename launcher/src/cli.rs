//! What both launcher binaries (`ironvisor-launcher`, `ironvisor-launcher-qemu`) share
//! around their backend: the `ctl` subcommand, logging, the runtime, running a VM with
//! its socket guardian, and the error report on stderr.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use ironvisor_launcher_api::control::{ShutdownMode, VmStatus};
use ironvisor_launcher_api::LauncherClient;

use crate::config::LaunchConfig;
use crate::guardian::{self, Guardian};
use crate::instance::Backend;
use crate::vmm::events::ExitStatus;
use crate::vmm::run::run_vm_guarded;

/// `ctl`: talk to a running launcher over its control API.
#[derive(clap::Args, Debug)]
pub struct CtlArgs {
    /// The launcher's API socket.
    #[arg(long)]
    pub api_socket: PathBuf,
    #[command(subcommand)]
    pub op: CtlOp,
}

/// The `ctl` operations.
#[derive(Subcommand, Debug)]
pub enum CtlOp {
    /// Print the VM status as JSON.
    Status,
    /// Pause the guest's vCPUs.
    Pause,
    /// Resume a paused guest.
    Resume,
    /// Stop the VM: gracefully (Ctrl+Alt+Del, hard stop after the timeout) or --force.
    Shutdown {
        /// Stop at once instead of asking the guest.
        #[arg(long)]
        force: bool,
        /// Grace period of a graceful shutdown.
        #[arg(long, default_value_t = 30)]
        timeout_secs: u64,
    },
    /// Check that the launcher answers.
    Ping,
}

/// The subcommands both launcher binaries have.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Talk to a running launcher over its control API.
    Ctl(CtlArgs),
}

/// The whole `main` of a launcher binary: the guardian if asked for, else logging, the
/// arguments (`C`, split by `parts` into the subcommand and the launch flags `L`), `ctl`
/// or `launch`, and the exit code or error report.
pub fn run_main<C: clap::Parser, L>(
    program: &str,
    parts: fn(C) -> (Option<Command>, L),
    launch: fn(L) -> anyhow::Result<u8>,
) -> ExitCode {
    // The socket guardian (a hidden subcommand): no logging, no clap, no runtime.
    if let Some(code) = guardian_requested() {
        return code;
    }
    init_tracing();
    let result = match parts(C::parse()) {
        (Some(Command::Ctl(ctl)), _) => run_ctl(ctl),
        (None, args) => launch(args),
    };
    exit(program, result)
}

/// Runs the guardian when `argv[1]` asks for it (before anything else in `main`: no
/// logging, argument parsing or runtime); `None` otherwise.
pub fn guardian_requested() -> Option<ExitCode> {
    (std::env::args_os().nth(1).as_deref() == Some(guardian::GUARDIAN_SUBCOMMAND.as_ref()))
        .then(|| ExitCode::from(guardian::run_process()))
}

/// Logging to stderr, filtered by `IRONVISOR_LOG` (default `info`), coloured only on a
/// terminal.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("IRONVISOR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colours only on a terminal: a log file or a container log gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_stack_size(ironvisor_virtio::THREAD_STACK_BYTES)
        .enable_all()
        .build()?)
}

/// Runs the VM on `backend` until it ends; returns the launcher's exit code. Call it
/// before any thread exists: it starts the socket guardian first.
pub fn run_to_exit<B: Backend>(config: LaunchConfig, backend: B) -> anyhow::Result<u8> {
    let guardian = if backend.socket_guardian() {
        spawn_guardian(&config)
    } else {
        None
    };
    backend.before_threads()?;
    let hides_socket_paths = backend.hides_socket_paths();
    let runtime = runtime()?;
    crate::boot_trace::mark("runtime_started");
    let result = runtime.block_on(run_vm_guarded(config, backend, guardian.as_ref()));
    // Every socket the launcher can see is removed once the runtime is gone (served or
    // not); a jailed launcher sees none, so its guardian removes them.
    drop(runtime);
    match guardian {
        Some(guardian) if hides_socket_paths => guardian.hand_over(),
        Some(guardian) => guardian.release(),
        None => {}
    }
    Ok(result?.code() as u8)
}

/// Starts the socket guardian when the VM has sockets to clean up after a SIGKILL. A
/// guardian that cannot start is no reason not to run the VM.
fn spawn_guardian(config: &LaunchConfig) -> Option<Guardian> {
    if config.api_socket.is_none() && config.console.socket.is_none() {
        return None;
    }
    match Guardian::spawn() {
        Ok(guardian) => Some(guardian),
        Err(err) => {
            tracing::warn!(%err, "socket files stay behind if the launcher is killed");
            None
        }
    }
}

/// Runs one `ctl` operation; prints JSON for `status`.
pub fn run_ctl(args: CtlArgs) -> anyhow::Result<u8> {
    runtime()?.block_on(async move {
        let client = LauncherClient::connect(&args.api_socket).await?;
        match args.op {
            CtlOp::Status => println!("{}", status_json(&client.status().await?)),
            CtlOp::Pause => client.pause().await?,
            CtlOp::Resume => client.resume().await?,
            CtlOp::Shutdown {
                force: true,
                timeout_secs: _,
            } => client.shutdown(ShutdownMode::Forced).await?,
            CtlOp::Shutdown {
                force: false,
                timeout_secs,
            } => {
                let timeout = Duration::from_secs(timeout_secs);
                client.shutdown(ShutdownMode::Graceful { timeout }).await?
            }
            CtlOp::Ping => println!("{:?}", client.ping().await?),
        }
        Ok(0)
    })
}

/// The status as the JSON `ctl status` prints.
pub fn status_json(status: &VmStatus) -> serde_json::Value {
    let devices: Vec<serde_json::Value> = status
        .devices
        .iter()
        .map(|device| {
            serde_json::json!({
                "kind": device.kind,
                "id": device.id,
                "mac": device.mac,
                "backend": device.backend,
                "read_only": device.read_only,
            })
        })
        .collect();
    serde_json::json!({
        "name": status.name,
        "state": format!("{:?}", status.state),
        "vcpus": status.vcpus,
        "memory_mib": status.memory_mib,
        "devices": devices,
        "uptime_ms": u64::try_from(status.uptime.as_millis()).unwrap_or(u64::MAX),
        "backend": status.backend,
    })
}

/// The exit of `main`: the code, or the error on stderr (`PROGRAM: error: ...`) and the
/// launcher-error code.
pub fn exit(program: &str, result: anyhow::Result<u8>) -> ExitCode {
    match result {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("{program}: error: {}", error_chain(&err));
            ExitCode::from(ExitStatus::LauncherError.code() as u8)
        }
    }
}

/// The error and its causes joined by `: `, leaving out a cause whose text the message
/// before it already contains (the errors of this workspace mostly include their source
/// in their own message, so printing the chain as is repeats it).
pub fn error_chain(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let message = cause.to_string();
        if text.contains(&message) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&message);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("loading kernel /k: {source}")]
    struct Wrapping {
        source: std::io::Error,
    }

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        let inner = std::io::Error::other("bad magic");
        let err = anyhow::Error::new(Wrapping { source: inner });
        assert_eq!(error_chain(&err), "loading kernel /k: bad magic");
    }

    #[test]
    fn context_and_causes_not_in_the_message_are_kept() {
        let err = anyhow::Error::new(std::io::Error::other("no such file")).context("reading /c");
        assert_eq!(error_chain(&err), "reading /c: no such file");
    }
}
