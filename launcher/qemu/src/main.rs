//! `ironvisor-launcher-qemu`: runs one VM under QEMU TCG through libvirt, with the same
//! flags, console, control API and exit codes as `ironvisor-launcher`; or talks to a
//! running launcher's control API (`ctl`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use ironvisor_launcher::config::LaunchArgs;
use ironvisor_launcher::host::HostCaps;
use ironvisor_launcher::vmm::events::ExitStatus;
use ironvisor_launcher::vmm::run::run_vm;
use ironvisor_launcher_api::control::{ShutdownMode, VmStatus};
use ironvisor_launcher_api::LauncherClient;
use ironvisor_launcher_qemu::QemuBackend;

#[derive(Parser)]
#[command(
    name = "ironvisor-launcher-qemu",
    version,
    about = "Runs one Ironvisor VM under software emulation (QEMU TCG via libvirt)",
    args_conflicts_with_subcommands = true,
    after_help = "Exit codes: 0 guest powered off, 1 launcher error, 3 guest rebooted, \
                  4 guest crashed, 5 stopped gracefully, 6 stopped hard.\n\
                  Environment: IRONVISOR_LIBVIRT_URI (default qemu:///system), \
                  IRONVISOR_QEMU_RUNTIME_DIR, IRONVISOR_LOG."
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
    /// Pause the guest.
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

fn main() -> ExitCode {
    init_tracing();
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Ctl(args)) => ctl(args),
        None => launch(cli.launch),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("ironvisor-launcher-qemu: error: {err:#}");
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

fn launch(args: LaunchArgs) -> anyhow::Result<u8> {
    let print_only = args.print_config;
    let config = args.into_config()?;
    if print_only {
        println!("{}", config.to_json()?);
        return Ok(0);
    }
    let host = HostCaps::probe();
    config.validate(&host.limits())?;
    let reason = match host.check_hardware_kvm() {
        Err(err) => err.to_string(),
        Ok(()) => {
            "hardware KVM is available, but the software-emulation launcher was chosen".to_string()
        }
    };
    let backend = QemuBackend::from_env(Some(reason));
    let status = runtime()?.block_on(run_vm(config, backend))?;
    Ok(status.code() as u8)
}

fn ctl(args: CtlArgs) -> anyhow::Result<u8> {
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

fn status_json(status: &VmStatus) -> serde_json::Value {
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent_and_mirrors_the_kvm_launcher() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "ironvisor-launcher-qemu",
            "--name",
            "vm",
            "--kernel",
            "/k",
            "--net",
            "id=net0,tap=tap0",
            "--stdio",
        ])
        .unwrap();
        assert!(cli.command.is_none());
        let config = cli.launch.into_config().unwrap();
        assert_eq!(config.nets[0].tap, "tap0");
        assert!(config.console.stdio);
        let cli = Cli::try_parse_from([
            "ironvisor-launcher-qemu",
            "ctl",
            "--api-socket",
            "/run/a.sock",
            "shutdown",
            "--force",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::Ctl(CtlArgs {
                op: CtlOp::Shutdown { force: true, .. },
                ..
            }))
        ));
    }
}
