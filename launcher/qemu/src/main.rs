//! `ironvisor-launcher-qemu`: runs one VM under QEMU TCG through libvirt, with the same
//! flags, console, control API and exit codes as `ironvisor-launcher`; or talks to a
//! running launcher's control API (`ctl`).

use std::process::ExitCode;

use clap::Parser;
use ironvisor_launcher::cli::{self, Command};
use ironvisor_launcher::config::LaunchArgs;
use ironvisor_launcher::host::HostCaps;
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

fn main() -> ExitCode {
    cli::run_main(
        "ironvisor-launcher-qemu",
        |args: Cli| (args.command, args.launch),
        launch,
    )
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
    cli::run_to_exit(config, backend)
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
            Some(Command::Ctl(ironvisor_launcher::cli::CtlArgs {
                op: ironvisor_launcher::cli::CtlOp::Shutdown { force: true, .. },
                ..
            }))
        ));
    }
}
