//! `ironvisor-launcher`: runs one VM (flags or `--config FILE`), or talks to a running
//! launcher's control API (`ctl`).

use std::process::ExitCode;

use clap::Parser;
use ironvisor_launcher::cli::{self, Command};
use ironvisor_launcher::config::LaunchArgs;
use ironvisor_launcher::host::HostCaps;
use ironvisor_launcher::privileges::RunAs;
use ironvisor_launcher::vmm::KvmBackend;

#[derive(Parser)]
#[command(
    name = "ironvisor-launcher",
    version,
    about = "Ironvisor's per-VM KVM microVMM",
    args_conflicts_with_subcommands = true,
    after_help = "Exit codes: 0 guest powered off, 1 launcher error, 3 guest rebooted, \
                  4 guest crashed, 5 stopped gracefully, 6 stopped hard, 7 a forbidden system call \
                  (seccomp). Environment: IRONVISOR_SECCOMP=enforce|log|off (default enforce; \
                  log and off are for debugging), IRONVISOR_LOG, IRONVISOR_BOOT_TRACE=1 (boot-phase \
                  timestamps on stderr)."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    launch: LaunchArgs,
    /// Become this unprivileged user (and group; the same number when absent), with no
    /// capabilities, once the VM is built and before any vCPU runs (needs root to start).
    #[arg(long, value_name = "UID[:GID]")]
    run_as: Option<RunAs>,
    /// Once the VM is built and before any vCPU runs, confine the launcher to an empty,
    /// read-only root in a mount namespace of its own: it keeps only the files it has open
    /// (needs root to start).
    #[arg(long)]
    jail: bool,
    /// Start no socket guardian: the parent removes the sockets if the launcher is killed
    /// (the node agent's monitor does, for a launcher it started jailed).
    #[arg(long)]
    no_socket_guardian: bool,
}

/// How the KVM launcher confines itself once its VM is built.
struct Confinement {
    run_as: Option<RunAs>,
    jail: bool,
    socket_guardian: bool,
}

fn main() -> ExitCode {
    ironvisor_launcher::boot_trace::mark("main");
    ironvisor_launcher::seccomp::prepare_process();
    cli::run_main(
        "ironvisor-launcher",
        |args: Cli| {
            let confinement = Confinement {
                run_as: args.run_as,
                jail: args.jail,
                socket_guardian: !args.no_socket_guardian,
            };
            (args.command, (args.launch, confinement))
        },
        run_launch,
    )
}

fn run_launch((args, confinement): (LaunchArgs, Confinement)) -> anyhow::Result<u8> {
    let print_only = args.print_config;
    let config = args.into_config()?;
    ironvisor_launcher::boot_trace::mark("args_parsed");
    if print_only {
        println!("{}", serde_json::to_string_pretty(&config)?);
        return Ok(0);
    }
    tracing::info!(
        uid = nix::unistd::getuid().as_raw(),
        euid = nix::unistd::geteuid().as_raw(),
        "launcher starting"
    );
    let host = HostCaps::probe();
    config.validate(&host.limits())?;
    ironvisor_launcher::boot_trace::mark("host_probed");
    host.check_hardware_kvm()?;
    ironvisor_launcher::boot_trace::mark("config_checked");
    let backend = KvmBackend {
        kvm_path: host.kvm_device.clone(),
        run_as: confinement.run_as,
        jail: confinement.jail,
        socket_guardian: confinement.socket_guardian,
    };
    cli::run_to_exit(config, backend)
}
