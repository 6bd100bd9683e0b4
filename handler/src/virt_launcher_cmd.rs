//! `ironvisor-handler virt-launcher` and `virt-launcher-ready`: command lines of the
//! launcher pod's `compute` container and of its readiness probe (the work is in
//! `ironvisor_handler::pod`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use ironvisor_crds::pod_claims::{PodClaim, CLAIM_DEVICES_DIR, CLAIM_MOUNTS_DIR};
use ironvisor_handler::backend::{BackendMode, BACKEND_ENV};
use ironvisor_handler::config::launcher_binaries;
use ironvisor_handler::pod::libvirt::{self, LibvirtSetup};
use ironvisor_handler::pod::termination::DEFAULT_TERMINATION_LOG;
use ironvisor_handler::pod::{
    self, VirtLauncherConfig, DEFAULT_ACCESS_CREDENTIALS, DEFAULT_CONFIG_VOLUMES,
    DEFAULT_CONTAINER_DISKS, DEFAULT_HOST_DISKS, DEFAULT_KERNEL_DIR, DEFAULT_RUN_DIR,
    DEFAULT_VMI_FILE,
};

/// Command line of `virt-launcher`.
#[derive(Args)]
pub struct VirtLauncherArgs {
    /// The instance as JSON (the pod's downward-API file).
    #[arg(long, value_name = "FILE", default_value = DEFAULT_VMI_FILE)]
    vmi: PathBuf,
    /// containerDisk volumes: one directory per volume holding one disk file.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_CONTAINER_DISKS)]
    container_disks: PathBuf,
    /// configMap, secret, serviceAccount and downwardAPI volumes: one directory per volume.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_CONFIG_VOLUMES)]
    config_volumes: PathBuf,
    /// The Secrets of `accessCredentials`: one directory per credential, by index.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_ACCESS_CREDENTIALS)]
    access_credentials: PathBuf,
    /// hostDisk volumes: one directory per volume, the node directory of its file.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_HOST_DISKS)]
    host_disks: PathBuf,
    /// A persistentVolumeClaim volume: VOLUME=filesystem:BYTES (its file system mounted at
    /// --claim-mounts/VOLUME/) or VOLUME=block (its device at --claim-devices/VOLUME).
    #[arg(long = "claim", value_name = "VOLUME=MODE")]
    claims: Vec<PodClaim>,
    /// Filesystem claims: one mount per volume.
    #[arg(long, value_name = "DIR", default_value = CLAIM_MOUNTS_DIR)]
    claim_mounts: PathBuf,
    /// Block claims: one device per volume.
    #[arg(long, value_name = "DIR", default_value = CLAIM_DEVICES_DIR)]
    claim_devices: PathBuf,
    /// `kernel` and `initrd` copied from the kernel-boot container image.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_KERNEL_DIR)]
    kernel_dir: PathBuf,
    /// The launcher's sockets, configuration, status, emptyDisks and cloud-init seeds.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_RUN_DIR)]
    run_dir: PathBuf,
    /// The KVM launcher [default: ironvisor-launcher next to this binary].
    #[arg(long, value_name = "PATH")]
    launcher: Option<PathBuf>,
    /// The software-emulation launcher [default: ironvisor-launcher-qemu next to this binary].
    #[arg(long, value_name = "PATH")]
    launcher_qemu: Option<PathBuf>,
    /// Which launcher runs the VM: auto (hardware KVM if usable, else emulation), kvm, qemu-tcg.
    #[arg(long, env = BACKEND_ENV, default_value = "auto")]
    backend: BackendMode,
    /// Where to write the termination message (ignored when not writable).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_TERMINATION_LOG)]
    termination_log: PathBuf,
    /// The libvirtd socket (software emulation) [default: the system libvirtd's as root,
    /// else the per-user one's under XDG_RUNTIME_DIR].
    #[arg(long, hide = true, value_name = "PATH")]
    libvirt_socket: Option<PathBuf>,
    /// Seconds to wait for libvirtd to answer after starting it.
    #[arg(long, hide = true, default_value_t = libvirt::DEFAULT_TIMEOUT.as_secs())]
    libvirt_timeout_secs: u64,
    /// Seconds to wait for the node agent to wire the pod network of a VM with an interface.
    #[arg(long, value_name = "SECONDS", default_value_t = pod::network::DEFAULT_NETWORK_WAIT.as_secs())]
    network_wait_secs: u64,
}

/// Command line of `virt-launcher-ready`.
#[derive(Args)]
pub struct ReadyArgs {
    /// The run directory of `virt-launcher`.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_RUN_DIR)]
    run_dir: PathBuf,
}

/// Runs the instance; the exit code is the launcher's.
pub fn run(args: VirtLauncherArgs) -> ExitCode {
    let (launcher, launcher_qemu) = launcher_binaries(args.launcher, args.launcher_qemu);
    let config = VirtLauncherConfig {
        vmi_file: args.vmi,
        container_disks: args.container_disks,
        config_volumes: args.config_volumes,
        access_credentials: args.access_credentials,
        host_disks: args.host_disks,
        claims: args.claims,
        claim_mounts: args.claim_mounts,
        claim_devices: args.claim_devices,
        kernel_dir: args.kernel_dir,
        run_dir: args.run_dir,
        launcher,
        launcher_qemu,
        backend: args.backend,
        termination_log: args.termination_log,
        libvirt: LibvirtSetup::for_current_user(
            args.libvirt_socket,
            Duration::from_secs(args.libvirt_timeout_secs),
        ),
        network_wait: Duration::from_secs(args.network_wait_secs),
    };
    let code = pod::run(&config);
    ExitCode::from(u8::try_from(code & 0xff).unwrap_or(1))
}

/// The readiness probe: one line on stdout when ready, on stderr otherwise.
pub fn ready(args: ReadyArgs) -> ExitCode {
    match pod::ready::check(&args.run_dir) {
        Ok(summary) => {
            println!("ready: {summary}");
            ExitCode::SUCCESS
        }
        Err(reason) => {
            eprintln!("not ready: {reason}");
            ExitCode::FAILURE
        }
    }
}
