//! `ironvisor-handler`: the Ironvisor node agent (standalone mode).
//!
//! - `serve`: the daemon (store, reconcile loop, API socket).
//! - `monitor` (hidden): the per-instance launcher monitor the daemon starts.
//! - `cluster`: the node agent as the cluster's DaemonSet runs it.
//! - `console`: an instance's serial console, through the agent (in the agent's pod).
//! - `virt-launcher`, `virt-launcher-ready`: a launcher pod's `compute` container and its
//!   readiness probe (see `ironvisor_handler::pod`).

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use ironvisor_handler::backend::{BackendMode, BACKEND_ENV};
use ironvisor_handler::cgroup::DEFAULT_CGROUP_PARENT;
use ironvisor_handler::config::{
    hostname, launcher_binaries, BackoffPolicy, DaemonConfig, DEFAULT_DATA_DIR, DEFAULT_RUN_DIR,
    DEFAULT_SOCKET,
};
use ironvisor_handler::monitor::{self, MonitorArgs};

mod cluster_cmd;
mod virt_launcher_cmd;

#[derive(Parser)]
#[command(
    name = "ironvisor-handler",
    version,
    about = "Ironvisor node agent: runs VirtualMachines on this machine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node agent daemon.
    Serve(Box<ServeArgs>),
    /// Supervise one launcher (started by the daemon; not for interactive use).
    #[command(hide = true)]
    Monitor(MonitorCli),
    /// Run as the cluster's node agent (the handler DaemonSet).
    Cluster(cluster_cmd::ClusterArgs),
    /// Attach to the serial console of an instance on this node (in the agent's pod).
    Console(cluster_cmd::ConsoleArgs),
    /// Run one VirtualMachineInstance in a launcher pod (the `compute` container).
    VirtLauncher(Box<virt_launcher_cmd::VirtLauncherArgs>),
    /// Readiness probe of a launcher pod: exit 0 iff the launcher answers and the guest runs.
    VirtLauncherReady(virt_launcher_cmd::ReadyArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// Durable state and per-VM files.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// The API socket (mode 0600).
    #[arg(long, value_name = "PATH", env = "IRONVISOR_SOCKET", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Base disk images (files) and kernel images (directories) [default: <data-dir>/images].
    #[arg(long, value_name = "DIR")]
    images_dir: Option<PathBuf>,
    /// Runtime directory for launcher sockets.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_RUN_DIR)]
    run_dir: PathBuf,
    /// The KVM launcher [default: ironvisor-launcher next to this binary].
    #[arg(long, value_name = "PATH")]
    launcher: Option<PathBuf>,
    /// The software-emulation launcher [default: ironvisor-launcher-qemu next to this binary].
    #[arg(long, value_name = "PATH")]
    launcher_qemu: Option<PathBuf>,
    /// Kernel for VMs without firmware.kernelBoot.
    #[arg(long, value_name = "PATH")]
    default_kernel: Option<PathBuf>,
    /// Initrd for VMs without firmware.kernelBoot.
    #[arg(long, value_name = "PATH", requires = "default_kernel")]
    default_initrd: Option<PathBuf>,
    /// This node's name [default: the host name].
    #[arg(long, value_name = "NAME")]
    node_name: Option<String>,
    /// Which launcher runs VMs: auto (hardware KVM if usable, else emulation), kvm, qemu-tcg.
    #[arg(long, env = BACKEND_ENV, default_value = "auto")]
    backend: BackendMode,
    /// Node bridge of the pod network.
    #[arg(long, value_name = "NAME", default_value = ironvisor_net::DEFAULT_BRIDGE)]
    bridge: String,
    /// Pod subnet handed out to VMs (CIDR).
    #[arg(long, value_name = "CIDR", default_value = ironvisor_net::DEFAULT_SUBNET)]
    pod_subnet: String,
    /// Where the CNI plugins (bridge, host-local) are installed.
    #[arg(long, value_name = "DIR", default_value = ironvisor_net::DEFAULT_CNI_BIN_DIR)]
    cni_bin_dir: PathBuf,
    /// Parent of the VM cgroups: absolute from each hierarchy's root, or relative to this
    /// daemon's own cgroup.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_CGROUP_PARENT)]
    cgroup_parent: String,
    /// Restart back-off base delay in milliseconds.
    #[arg(long, hide = true, default_value_t = 10_000)]
    restart_backoff_base_ms: u64,
    /// Longest restart back-off in milliseconds.
    #[arg(long, hide = true, default_value_t = 300_000)]
    restart_backoff_max_ms: u64,
    /// A run this long (seconds) resets the failure count.
    #[arg(long, hide = true, default_value_t = 60)]
    stable_run_secs: u64,
    /// Period of the reconcile loop in milliseconds.
    #[arg(long, hide = true, default_value_t = 1000)]
    resync_ms: u64,
    /// Refuse changes when the data directory has less free space than this.
    #[arg(long, hide = true, default_value_t = ironvisor_handler::store::DEFAULT_MIN_FREE_BYTES)]
    store_min_free_bytes: u64,
    /// First user id of the KVM launchers' users: each launcher becomes its own user
    /// (this plus a hash of its instance, within 2^20) before its guest runs; 0 keeps
    /// them root.
    #[arg(long, default_value_t = ironvisor_handler::config::DEFAULT_LAUNCHER_UID_BASE,
          value_parser = clap::value_parser!(u32).range(0..=i64::from(ironvisor_handler::config::MAX_LAUNCHER_UID_BASE)))]
    launcher_uid_base: u32,
    /// Whether each KVM launcher is jailed: started by its monitor in a mount namespace of
    /// its own whose root holds only the VM's files, as its own user (never root). With
    /// --launcher-uid-base 0 the launcher stays root and jails itself once its VM is built.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "true|false")]
    launcher_jail: bool,
}

#[derive(Args)]
struct MonitorCli {
    /// Where to write how the launcher ended.
    #[arg(long)]
    status_file: PathBuf,
    /// Where to write the launcher's pid.
    #[arg(long)]
    pid_file: PathBuf,
    /// The launcher's output.
    #[arg(long)]
    log_file: PathBuf,
    /// Rotate the log past this many bytes (one previous generation is kept).
    #[arg(long, hide = true, default_value_t = ironvisor_handler::log_rotation::MAX_LOG_BYTES)]
    log_max_bytes: u64,
    /// Network namespace to run the launcher in.
    #[arg(long)]
    netns: Option<PathBuf>,
    /// cgroup to join (repeat for each hierarchy).
    #[arg(long = "cgroup")]
    cgroups: Vec<PathBuf>,
    /// Start the launcher in the jail this plan (JSON) describes, as its user.
    #[arg(long, value_name = "PLAN")]
    jail: Option<PathBuf>,
    /// The launcher command line.
    #[arg(last = true, required = true)]
    argv: Vec<OsString>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Monitor(args) => run_monitor(args),
        Command::Cluster(args) => {
            init_tracing();
            cluster_cmd::run(args)
        }
        Command::VirtLauncher(args) => {
            init_tracing();
            virt_launcher_cmd::run(*args)
        }
        Command::VirtLauncherReady(args) => virt_launcher_cmd::ready(args),
        // No log lines: standard output is the guest's console.
        Command::Console(args) => cluster_cmd::console(args),
    }
}

/// The two-thread tokio runtime the long-running subcommands run on; on failure the
/// error is printed, naming `command`.
fn async_runtime(command: &str) -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|error| {
            eprintln!("ironvisor-handler {command}: cannot start the async runtime: {error}");
            ExitCode::FAILURE
        })
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("IRONVISOR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn serve(args: ServeArgs) -> ExitCode {
    init_tracing();
    let monitor_exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(error) => {
            eprintln!("ironvisor-handler: cannot find its own executable: {error}");
            return ExitCode::FAILURE;
        }
    };
    let images_dir = args
        .images_dir
        .unwrap_or_else(|| args.data_dir.join("images"));
    let (launcher, launcher_qemu) = launcher_binaries(args.launcher, args.launcher_qemu);
    let config = DaemonConfig {
        images_dir,
        socket: args.socket,
        run_dir: args.run_dir,
        launcher,
        launcher_qemu,
        default_kernel: args.default_kernel,
        default_initrd: args.default_initrd,
        node_name: args.node_name.unwrap_or_else(hostname),
        backend: args.backend,
        cgroup_parent: args.cgroup_parent,
        bridge: args.bridge,
        pod_subnet: args.pod_subnet,
        cni_bin_dir: args.cni_bin_dir,
        backoff: BackoffPolicy {
            base: Duration::from_millis(args.restart_backoff_base_ms),
            max: Duration::from_millis(args.restart_backoff_max_ms),
            stable_after: Duration::from_secs(args.stable_run_secs),
        },
        monitor_exe,
        resync: Duration::from_millis(args.resync_ms.max(50)),
        store_min_free_bytes: args.store_min_free_bytes,
        launcher_uid_base: (args.launcher_uid_base != 0).then_some(args.launcher_uid_base),
        launcher_jail: args.launcher_jail,
        data_dir: args.data_dir,
    };
    let runtime = match async_runtime("serve") {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    match runtime.block_on(ironvisor_handler::daemon::serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ironvisor-handler: error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run_monitor(args: MonitorCli) -> ExitCode {
    let args = MonitorArgs {
        status_file: args.status_file,
        pid_file: args.pid_file,
        log_file: args.log_file,
        log_max_bytes: args.log_max_bytes,
        netns: args.netns,
        cgroups: args.cgroups,
        jail: args.jail,
        argv: args.argv,
    };
    match monitor::run(&args) {
        Ok(code) => ExitCode::from(u8::try_from(code & 0xff).unwrap_or(1)),
        Err(error) => {
            eprintln!("ironvisor-handler {error}");
            ExitCode::FAILURE
        }
    }
}
