//! Cluster mode: `ironvisor-handler virt-launcher`, the program a launcher pod's `compute`
//! container runs (KubeVirt's `virt-launcher`). It turns the instance the controller put
//! in the pod into a running launcher, with the same translation, disks and backend
//! choice as standalone mode:
//!
//! 1. read the instance from the downward-API file ([`vmi_file`]);
//! 2. choose the backend ([`crate::backend`]): hardware KVM when `/dev/kvm` can run the
//!    guest, else software emulation, unless `hardwareIsolation: Required` refuses it;
//! 3. kernel from the kernel directory ([`kernel`]), disks from the containerDisk
//!    directories and the run directory ([`disks`]);
//! 4. write `<run-dir>/launcher.json` (console on `console.sock` *and* stdout, API on
//!    `api.sock`, graceful timeout = `terminationGracePeriodSeconds`);
//! 5. for emulation, start libvirt in the container if it is not running ([`libvirt`]:
//!    the system daemons as root, the per-user ones as the launcher user);
//! 6. run the launcher as a child ([`supervise`]), forward SIGTERM, reap every child;
//! 7. write `<run-dir>/status.json` and the termination message ([`termination`]) and
//!    exit with the launcher's exit code.
//!
//! With an interface, step 4 first waits for the node agent to wire the pod's network
//! namespace ([`network`]): the pod itself has no privilege to make a tap.

pub mod access;
pub mod container_disk;
pub mod dedicated_cpus;
pub mod disks;
pub mod kernel;
pub mod libvirt;
pub mod network;
pub mod ready;
pub mod supervise;
pub mod termination;
pub mod vmi_file;

use std::path::{Path, PathBuf};

use ironvisor_launcher_api::config::LaunchConfig;
use tracing::{error, info, warn};

use crate::backend::{BackendMode, BackendSelector, Unschedulable};
use crate::files::{write_atomic, FileError};
use crate::records::{BackendKind, ExitOutcome};
use crate::translate::{self, LaunchPlan, TranslateError};
use disks::{PodDiskError, PodVolumes};
use kernel::KernelError;
use libvirt::{LibvirtError, LibvirtSetup};
use supervise::{Signals, SuperviseError};
use termination::TerminationMessage;
use vmi_file::{Instance, VmiFileError};

/// Default instance file (downward API).
pub const DEFAULT_VMI_FILE: &str = "/var/run/ironvisor/vmi/vmi.json";
/// Default containerDisk directory.
pub const DEFAULT_CONTAINER_DISKS: &str = "/var/run/ironvisor/container-disks";
/// Where the pod's configMap, secret, serviceAccount and downwardAPI volumes are mounted,
/// one directory per volume.
pub const DEFAULT_CONFIG_VOLUMES: &str = "/var/run/ironvisor/config-volumes";
/// Where the directory of each hostDisk is mounted: `<dir>/<volume>/`.
pub const DEFAULT_HOST_DISKS: &str = "/var/run/ironvisor/host-disks";
/// Where the Secret of `accessCredentials[i]` is mounted: `<dir>/<i>/`.
pub const DEFAULT_ACCESS_CREDENTIALS: &str = "/var/run/ironvisor/access-credentials";
/// Default kernel directory.
pub const DEFAULT_KERNEL_DIR: &str = "/var/run/ironvisor/kernel";
/// Default run directory (sockets, launcher.json, status.json, emptyDisks, seeds).
pub const DEFAULT_RUN_DIR: &str = "/var/run/ironvisor/sockets";
/// The launcher's control API socket in the run directory.
pub const API_SOCKET: &str = "api.sock";
/// The launcher's console socket in the run directory.
pub const CONSOLE_SOCKET: &str = "console.sock";
/// The launcher configuration in the run directory.
pub const CONFIG_FILE: &str = "launcher.json";
/// How the launcher ended (`{"code":N}` / `{"signal":N}`, as in standalone mode).
pub const STATUS_FILE: &str = "status.json";

/// Settings of `virt-launcher`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtLauncherConfig {
    /// The instance file.
    pub vmi_file: PathBuf,
    /// `<dir>/<volume>/` per containerDisk.
    pub container_disks: PathBuf,
    /// `<dir>/<volume>/` per configMap, secret, serviceAccount or downwardAPI volume.
    pub config_volumes: PathBuf,
    /// `<dir>/<index>/` per `accessCredentials` Secret.
    pub access_credentials: PathBuf,
    /// `<dir>/<volume>/` per hostDisk: the node directory of its file.
    pub host_disks: PathBuf,
    /// The persistentVolumeClaim volumes, as the controller describes them.
    pub claims: Vec<ironvisor_crds::pod_claims::PodClaim>,
    /// `<dir>/<volume>/` per Filesystem claim.
    pub claim_mounts: PathBuf,
    /// `<dir>/<volume>` per Block claim.
    pub claim_devices: PathBuf,
    /// `kernel` and `initrd` of `kernelBoot.container`.
    pub kernel_dir: PathBuf,
    /// Sockets and files of this instance.
    pub run_dir: PathBuf,
    /// The KVM launcher.
    pub launcher: PathBuf,
    /// The software-emulation launcher.
    pub launcher_qemu: PathBuf,
    /// Backend choice.
    pub backend: BackendMode,
    /// Where to leave the termination message.
    pub termination_log: PathBuf,
    /// How to reach (or start) libvirt for emulation.
    pub libvirt: LibvirtSetup,
    /// How long to wait for the node agent to wire the pod network.
    pub network_wait: std::time::Duration,
}

/// Why the launcher could not be started.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    /// Signal handling could not be set up, or the launcher not run.
    #[error(transparent)]
    Supervise(#[from] SuperviseError),
    /// The instance file is unusable.
    #[error(transparent)]
    VmiFile(#[from] VmiFileError),
    /// Hardware isolation is required and unavailable.
    #[error("VM {vm}: {source}")]
    Unschedulable {
        /// The VM.
        vm: String,
        /// Why.
        #[source]
        source: Unschedulable,
    },
    /// No kernel to boot.
    #[error("VM {vm}: {source}")]
    Kernel {
        /// The VM.
        vm: String,
        /// Why.
        #[source]
        source: KernelError,
    },
    /// The access credentials cannot be given to the guest.
    #[error("VM {vm}: {source}")]
    Access {
        /// The VM.
        vm: String,
        /// Why.
        #[source]
        source: access::AccessError,
    },
    /// The vCPUs cannot get CPUs of their own.
    #[error("VM {vm}: {source}")]
    DedicatedCpus {
        /// The VM.
        vm: String,
        /// Why.
        #[source]
        source: dedicated_cpus::DedicatedCpuError,
    },
    /// The disks cannot be made.
    #[error("VM {vm}: {source}")]
    Disks {
        /// The VM.
        vm: String,
        /// Why.
        #[source]
        source: Box<PodDiskError>,
    },
    /// The spec cannot be translated.
    #[error(transparent)]
    Translate(#[from] TranslateError),
    /// The run directory cannot be made.
    #[error("cannot create the run directory {path}: {source}")]
    RunDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The launcher configuration cannot be written.
    #[error("cannot write the launcher configuration: {0}")]
    Config(String),
    /// The launcher binary is missing.
    #[error("launcher binary {0} does not exist or is not executable (set --launcher / --launcher-qemu)")]
    MissingLauncher(PathBuf),
    /// libvirt is not available for emulation.
    #[error(transparent)]
    Libvirt(#[from] LibvirtError),
    /// The instance's interfaces cannot be wired.
    #[error(transparent)]
    NetworkRequest(#[from] ironvisor_net::RequestError),
    /// The node agent did not wire the pod network.
    #[error(transparent)]
    Network(#[from] network::PodNetworkError),
}

impl PodError {
    /// The termination message reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Supervise(SuperviseError::Spawn { .. }) | Self::MissingLauncher(_) => {
                "LauncherStartFailed"
            }
            Self::Supervise(_) | Self::RunDir { .. } | Self::Config(_) => {
                termination::LAUNCHER_ERROR
            }
            Self::VmiFile(_) => "BadSpec",
            Self::Unschedulable { .. } => "HardwareIsolationUnavailable",
            Self::Kernel { source, .. } => source.reason(),
            Self::Access { source, .. } => source.reason(),
            Self::DedicatedCpus { source, .. } => source.reason(),
            Self::Disks { source, .. } => source.reason(),
            Self::Translate(e) => e.reason(),
            Self::Libvirt(_) => "LibvirtUnavailable",
            Self::NetworkRequest(e) => e.reason(),
            Self::Network(e) => e.reason(),
        }
    }
}

/// Everything ready to start.
struct Prepared {
    vm: String,
    launcher: PathBuf,
    config_file: PathBuf,
    /// Added to the launcher's environment (the emulation launcher's libvirt URI).
    envs: Vec<(&'static str, String)>,
}

/// Runs `virt-launcher`; returns the container's exit code.
pub fn run(config: &VirtLauncherConfig) -> i32 {
    let span = tracing::info_span!("virt_launcher", vmi = tracing::field::Empty);
    let _entered = span.enter();
    let (message, code) = match supervised(config, &span) {
        Ok(ending) => ending,
        Err(failure) => {
            error!(reason = failure.reason(), "{failure}");
            let message = TerminationMessage::failure(failure.reason(), failure.to_string());
            (message, 1)
        }
    };
    if let Err(error) = message.write(&config.termination_log) {
        info!(%error, "no termination message written");
    }
    info!(
        exit_code = code,
        reason = %message.reason,
        message = %message.message,
        "virt-launcher exits"
    );
    code
}

fn supervised(
    config: &VirtLauncherConfig,
    span: &tracing::Span,
) -> Result<(TerminationMessage, i32), PodError> {
    let signals = Signals::block()?;
    let prepared = prepare(config, span)?;
    if Signals::stop_pending() {
        let message = TerminationMessage {
            exit_code: 5,
            reason: "Stopped".into(),
            message: format!("VM {}: stopped before the guest started", prepared.vm),
        };
        return Ok((message, 5));
    }
    let envs: Vec<(&str, &str)> = prepared
        .envs
        .iter()
        .map(|(name, value)| (*name, value.as_str()))
        .collect();
    let ended = supervise::run_launcher(signals, &prepared.launcher, &prepared.config_file, &envs)?;
    let status_file = config.run_dir.join(STATUS_FILE);
    if let Ok(json) = serde_json::to_vec(&ended.outcome) {
        if let Err(error) = write_atomic(&status_file, &json) {
            warn!(%error, "cannot record the launcher's exit");
        }
    }
    let message =
        TerminationMessage::for_launcher(&prepared.vm, ended.outcome, ended.error_line.as_deref());
    let code = match ended.outcome {
        ExitOutcome::Code(code) => code,
        ExitOutcome::Signal(_) => message.exit_code,
        ExitOutcome::Vanished | ExitOutcome::NotStarted => 1,
    };
    Ok((message, code))
}

fn prepare(config: &VirtLauncherConfig, span: &tracing::Span) -> Result<Prepared, PodError> {
    let Instance { key, uid, mut spec } = vmi_file::load(&config.vmi_file)?;
    let vm = key.to_string();
    span.record("vmi", vm.as_str());
    info!(uid = %uid, file = %config.vmi_file.display(), "instance read");

    let selection = BackendSelector::probe(config.backend)
        .select(spec.hardware_isolation())
        .map_err(|source| PodError::Unschedulable {
            vm: vm.clone(),
            source,
        })?;
    if let Some(why) = &selection.emulation_reason {
        warn!(reason = %why, "no hardware-assisted KVM: the VM runs under software emulation (QEMU TCG)");
    }
    std::fs::create_dir_all(&config.run_dir).map_err(|source| PodError::RunDir {
        path: config.run_dir.clone(),
        source,
    })?;
    let boot =
        kernel::boot_files(&config.kernel_dir, &spec).map_err(|source| PodError::Kernel {
            vm: vm.clone(),
            source,
        })?;
    access::add_ssh_keys(&mut spec, &config.access_credentials).map_err(|source| {
        PodError::Access {
            vm: vm.clone(),
            source,
        }
    })?;
    let vcpu_affinity = if spec.dedicated_cpu_placement() {
        let pinned = dedicated_cpus::vcpu_affinity(spec.vcpus()).map_err(|source| {
            PodError::DedicatedCpus {
                vm: vm.clone(),
                source,
            }
        })?;
        info!(?pinned, "vCPUs pinned to the pod's dedicated CPUs");
        pinned
    } else {
        Vec::new()
    };
    let dirs = PodVolumes {
        container_disks: &config.container_disks,
        config_volumes: &config.config_volumes,
        host_disks: &config.host_disks,
        run_dir: &config.run_dir,
        claims: disks::PodClaims {
            given: &config.claims,
            mounts: &config.claim_mounts,
            devices: &config.claim_devices,
        },
    };
    let disks = disks::prepare(dirs, &key, &uid, &spec).map_err(|source| PodError::Disks {
        vm: vm.clone(),
        source: Box::new(source),
    })?;
    let request = ironvisor_net::request_for(&vm, &uid, &spec, |interface| {
        ironvisor_launcher_api::config::generated_mac(&vm, interface)
    })?;
    let nets = match request {
        Some(request) => vec![network::await_wiring(
            &config.run_dir,
            &request,
            config.network_wait,
            Signals::stop_pending,
        )?],
        None => Vec::new(),
    };
    let mut launch = translate::launch_config(
        &key,
        &spec,
        LaunchPlan {
            boot,
            disks,
            nets,
            console_socket: config.run_dir.join(CONSOLE_SOCKET),
            api_socket: config.run_dir.join(API_SOCKET),
            vcpu_affinity,
        },
    )?;
    launch.console.stdio = true;
    let config_file = config.run_dir.join(CONFIG_FILE);
    write_config(&config_file, &launch)?;

    let launcher = match selection.kind {
        BackendKind::Kvm => config.launcher.clone(),
        BackendKind::QemuTcg => config.launcher_qemu.clone(),
    };
    if !crate::launcher_proc::is_executable(&launcher) {
        return Err(PodError::MissingLauncher(launcher));
    }
    let mut envs = Vec::new();
    if selection.kind == BackendKind::QemuTcg {
        config.libvirt.ensure_running()?;
        envs.push((libvirt::URI_ENV, config.libvirt.uri.clone()));
    }
    info!(
        backend = selection.kind.as_str(),
        config = %config_file.display(),
        "starting the launcher"
    );
    Ok(Prepared {
        vm,
        launcher,
        config_file,
        envs,
    })
}

fn write_config(path: &Path, config: &LaunchConfig) -> Result<(), PodError> {
    let json = config
        .to_json()
        .map_err(|e| PodError::Config(e.to_string()))?;
    write_atomic(path, json.as_bytes()).map_err(|e: FileError| PodError::Config(e.to_string()))
}
