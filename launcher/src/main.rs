//! `ironvisor-launcher`: runs one VM (flags or `--config FILE`), or talks to a running
//! launcher's control API (`ctl`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ironvisor_launcher::config::{LaunchArgs, LaunchConfig};
use ironvisor_launcher::guardian::{self, Guardian};
use ironvisor_launcher::host::HostCaps;
use ironvisor_launcher::vmm::events::ExitStatus;
use ironvisor_launcher::vmm::run::run_vm_guarded;
use ironvisor_launcher::vmm::KvmBackend;
use ironvisor_launcher_api::control::{ShutdownMode, VmStatus};
use ironvisor_launcher_api::LauncherClient;

#[derive(Parser)]
#[command(
    name = "ironvisor-launcher",
    version,
    about = "Ironvisor's per-VM KVM microVMM",
    args_conflicts_with_subcommands = true,
    after_help = "Exit codes: 0 guest powered off, 1 launcher error, 3 guest rebooted, \
                  4 guest crashed, 5 stopped gracefully, 6 stopped hard."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    launch: LaunchArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Talk to a running launcher over its control API.
    Ctl(CtlArgs),
}

#[derive(clap::Args)]
struct CtlArgs {
    /// The launcher's API socket.
    #[arg(long)]
    api_socket: PathBuf,
    #[command(subcommand)]
    op: CtlOp,
}

#[derive(Subcommand)]
enum CtlOp {
    /// Print the VM status as JSON.
    Status,
    /// Pause the vCPUs.
    Pause,
    /// Resume paused vCPUs.
    Resume,
    /// Stop the VM: gracefully (Ctrl+Alt+Del, then hard after the timeout) or --force.
    Shutdown {
        #[arg(long)]
        force: bool,
        #[arg(long, default_value_t = 30)]
        timeout_secs: u64,
    },
    /// Check that the launcher answers.
    Ping,
}

fn main() -> ExitCode {
    // The socket guardian (a hidden subcommand): no logging, no clap, no runtime.
    if std::env::args_os().nth(1).as_deref() == Some(guardian::GUARDIAN_SUBCOMMAND.as_ref()) {
        return ExitCode::from(guardian::run_process());
    }
    init_tracing();
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Ctl(args)) => run_ctl(args),
        None => run_launch(cli.launch),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("ironvisor-launcher: error: {err:#}");
            ExitCode::from(ExitStatus::LauncherError.code() as u8)
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("IRONVISOR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

fn run_launch(args: LaunchArgs) -> anyhow::Result<u8> {
    let print_only = args.print_config;
    let config = args.into_config()?;
    if print_only {
        println!("{}", serde_json::to_string_pretty(&config)?);
        return Ok(0);
    }
    let host = HostCaps::probe();
    config.validate(&host.limits())?;
    host.check_hardware_kvm()?;
    let backend = KvmBackend {
        kvm_path: host.kvm_device.clone(),
    };
    // Before the runtime starts any thread.
    let guardian = spawn_guardian(&config);
    let runtime = runtime()?;
    let result = runtime.block_on(run_vm_guarded(config, backend, guardian.as_ref()));
    // Every socket is removed once the runtime is gone (served or not): the guardian has
    // nothing left to do.
    drop(runtime);
    if let Some(guardian) = guardian {
        guardian.release();
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

fn run_ctl(args: CtlArgs) -> anyhow::Result<u8> {
    runtime()?.block_on(async move {
        let client = LauncherClient::connect(&args.api_socket).await?;
        match args.op {
            CtlOp::Status => println!("{}", status_json(&client.status().await?)),
            CtlOp::Pause => client.pause().await?,
            CtlOp::Resume => client.resume().await?,
            CtlOp::Shutdown {
                force,
                timeout_secs,
            } => {
                let mode = if force {
                    ShutdownMode::Forced
                } else {
                    ShutdownMode::Graceful {
                        timeout: std::time::Duration::from_secs(timeout_secs),
                    }
                };
                client.shutdown(mode).await?;
            }
            CtlOp::Ping => println!("{:?}", client.ping().await?),
        }
        Ok(0)
    })
}

fn status_json(status: &VmStatus) -> serde_json::Value {
    let devices: Vec<_> = status
        .devices
        .iter()
        .map(|d| {
            serde_json::json!({
                "kind": d.kind, "id": d.id, "mac": d.mac,
                "backend": d.backend, "read_only": d.read_only,
            })
        })
        .collect();
    serde_json::json!({
        "name": status.name,
        "state": format!("{:?}", status.state),
        "vcpus": status.vcpus,
        "memory_mib": status.memory_mib,
        "devices": devices,
        "uptime_ms": status.uptime.as_millis() as u64,
        "backend": status.backend,
    })
}
