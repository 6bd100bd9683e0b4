//! The records the node agent keeps in its [`store`](crate::store): one [`VmRecord`] per
//! `VirtualMachine`, its `VirtualMachineInstance`, one [`LauncherRecord`] per running
//! launcher, and a bounded list of [`EventRecord`]s per VM.
//!
//! Everything is plain data serialized as JSON; no behaviour lives here beyond small
//! helpers that interpret the data.

use std::fmt;
use std::path::PathBuf;

use ironvisor_crds::v1alpha1::{RunStrategy, VirtualMachine};
use ironvisor_launcher_api::exit::ExitStatus;
use serde::{Deserialize, Serialize};

/// Namespace used when a manifest or a request leaves it empty.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Identifies a VM (and its instance, which has the same name): namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct VmKey {
    /// The namespace ("default" when none was given).
    pub namespace: String,
    /// The VM name.
    pub name: String,
}

impl VmKey {
    /// A key; an empty namespace means [`DEFAULT_NAMESPACE`].
    pub fn new(namespace: &str, name: &str) -> Self {
        let namespace = if namespace.is_empty() {
            DEFAULT_NAMESPACE
        } else {
            namespace
        };
        Self {
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }

    /// The key in the store's tables: `namespace/name` (neither may contain '/').
    pub fn storage_key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Reads a key written by [`Self::storage_key`].
    pub fn from_storage_key(key: &str) -> Option<Self> {
        let (namespace, name) = key.split_once('/')?;
        Some(Self::new(namespace, name))
    }

    /// `namespace_name`, a file-system-safe name unique per VM (names are DNS-1123, so
    /// they contain no '_').
    pub fn flat_name(&self) -> String {
        format!("{}_{}", self.namespace, self.name)
    }
}

impl fmt::Display for VmKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A user request to start or stop the VM, queued like KubeVirt's
/// `status.stateChangeRequests` and consumed by the runtime.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "action")]
pub enum StateChangeRequest {
    /// Start a new instance.
    Start,
    /// Stop the instance (the one with `uid` when set).
    Stop {
        /// UID of the instance to stop; `None` stops whatever runs.
        uid: Option<String>,
        /// Stop hard at once instead of asking the guest.
        force: bool,
        /// Grace period override in seconds (`None`: the VM's
        /// `terminationGracePeriodSeconds`).
        grace_period_seconds: Option<u64>,
    },
}

/// How a launcher process ended, as the monitor reported it (or failed to).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitOutcome {
    /// The launcher exited with this code (see [`ExitStatus`]).
    Code(i32),
    /// The launcher was killed by this signal.
    Signal(i32),
    /// The launcher is gone and nobody recorded how it ended.
    Vanished,
    /// The instance could not be started (disks, network, kernel or spawn failed).
    NotStarted,
}

impl ExitOutcome {
    /// The launcher's exit status, for the codes a launcher uses.
    pub fn status(self) -> Option<ExitStatus> {
        match self {
            Self::Code(code) => ExitStatus::from_code(code),
            _ => None,
        }
    }

    /// Whether the instance failed: a launcher error or guest crash (exit 1/4), a code a
    /// launcher never uses, a signal, or a launcher that vanished. A guest poweroff,
    /// reboot or a stop (exit 0/3/5/6) is not a failure.
    pub fn is_failure(self) -> bool {
        match self {
            Self::Code(code) => ExitStatus::from_code(code).is_none_or(ExitStatus::is_failure),
            Self::Signal(_) | Self::Vanished | Self::NotStarted => true,
        }
    }

    /// Whether the guest asked for a reboot (exit 3): the instance is replaced at once.
    pub fn is_reboot(self) -> bool {
        self.status() == Some(ExitStatus::GuestReboot)
    }

    /// A CamelCase reason for conditions and events.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Code(code) => match ExitStatus::from_code(code) {
                Some(ExitStatus::GuestPoweroff) => "GuestPoweredOff",
                Some(ExitStatus::LauncherError) => "LauncherError",
                Some(ExitStatus::GuestReboot) => "GuestRebooted",
                Some(ExitStatus::GuestCrash) => "GuestCrashed",
                Some(ExitStatus::GracefulStop) => "StoppedGracefully",
                Some(ExitStatus::HardStop) => "StoppedHard",
                Some(ExitStatus::SeccompViolation) => "SeccompViolation",
                None => "LauncherFailed",
            },
            Self::Signal(_) => "LauncherKilled",
            Self::Vanished => "LauncherDied",
            Self::NotStarted => "FailedCreate",
        }
    }
}

impl fmt::Display for ExitOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Code(code) => match ExitStatus::from_code(*code) {
                Some(status) => write!(f, "launcher exited with code {code} ({status})"),
                None => write!(f, "launcher exited with unexpected code {code}"),
            },
            Self::Signal(signal) => {
                let name = nix::sys::signal::Signal::try_from(*signal)
                    .map(|s| s.as_str())
                    .unwrap_or("unknown signal");
                write!(f, "launcher killed by signal {signal} ({name})")
            }
            Self::Vanished => f.write_str("launcher died without an exit status"),
            Self::NotStarted => f.write_str("the instance could not be started"),
        }
    }
}

/// The last instance's end, kept to apply the run strategy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastExit {
    /// UID of the instance.
    pub vmi_uid: String,
    /// How its launcher ended.
    pub outcome: ExitOutcome,
    /// Whether a user (stop, restart, delete, Halted) asked for the stop.
    pub requested: bool,
    /// When the exit was noticed (Unix milliseconds).
    pub at_unix_ms: i64,
}

/// Runtime bookkeeping of one VM that is not part of the Kubernetes object.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VmRuntime {
    /// Pending start/stop requests, oldest first.
    #[serde(default)]
    pub requests: Vec<StateChangeRequest>,
    /// The run strategy the runtime last acted on; a change (or a new VM) starts the
    /// VM for RerunOnFailure and Once, as in KubeVirt.
    #[serde(default)]
    pub observed_run_strategy: Option<RunStrategy>,
    /// Failed runs in a row (reset by a clean exit or a long enough run).
    #[serde(default)]
    pub consecutive_failures: u32,
    /// No new instance is started before this time (Unix milliseconds).
    #[serde(default)]
    pub retry_after_unix_ms: Option<i64>,
    /// How the last instance ended.
    #[serde(default)]
    pub last_exit: Option<LastExit>,
    /// Set by Delete: the runtime stops the instance, tears everything down and removes
    /// the VM.
    #[serde(default)]
    pub deleting: bool,
    /// Why the last start attempt failed before a launcher ran (reason, message).
    #[serde(default)]
    pub start_error: Option<(String, String)>,
}

/// Everything stored about one VM besides its instance and launcher.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmRecord {
    /// The VirtualMachine, defaulted, with its status.
    pub vm: VirtualMachine,
    /// Runtime bookkeeping.
    #[serde(default)]
    pub runtime: VmRuntime,
}

/// A process identity that survives pid reuse: the pid and the process start time
/// (field 22 of `/proc/PID/stat`, clock ticks since boot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessIdentity {
    /// Process id.
    pub pid: i32,
    /// Start time in clock ticks since boot.
    pub start_time: u64,
}

/// Which program runs the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendKind {
    /// `ironvisor-launcher`: hardware-assisted KVM.
    Kvm,
    /// `ironvisor-launcher-qemu`: QEMU with TCG software emulation.
    QemuTcg,
}

impl BackendKind {
    /// The name shown in views ("kvm" or "qemu-tcg").
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Kvm => "kvm",
            Self::QemuTcg => "qemu-tcg",
        }
    }
}

/// Why a launcher is being stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopCause {
    /// A stop or restart request.
    Request,
    /// The run strategy says no instance should run (Halted).
    RunStrategy,
    /// The VM is being deleted.
    Delete,
}

/// A stop in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopState {
    /// Why.
    pub cause: StopCause,
    /// Hard stop requested.
    pub forced: bool,
    /// When the stop was started (Unix milliseconds).
    pub started_unix_ms: i64,
    /// When the launcher's cgroup is killed if it is still running (Unix milliseconds).
    pub kill_after_unix_ms: i64,
}

/// Where a launcher is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LauncherPhase {
    /// Disks and network are being prepared; no process was started yet (or the daemon
    /// died before recording it).
    Preparing,
    /// The monitor was started.
    Spawned,
}

/// One launcher process (through its monitor) and everything made for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LauncherRecord {
    /// UID of the instance it runs.
    pub vmi_uid: String,
    /// Where it is in its life.
    pub phase: LauncherPhase,
    /// The monitor process (parent of the launcher).
    pub monitor: Option<ProcessIdentity>,
    /// The launcher process, once the monitor reported it.
    pub launcher: Option<ProcessIdentity>,
    /// Per-instance runtime directory (sockets, status file); removed at the end.
    pub run_dir: PathBuf,
    /// The launcher's control API socket.
    pub api_socket: PathBuf,
    /// The launcher's serial console socket.
    pub console_socket: PathBuf,
    /// Where the monitor writes how the launcher ended.
    pub status_file: PathBuf,
    /// Where the monitor writes the launcher's pid.
    pub pid_file: PathBuf,
    /// The launcher's stdout/stderr.
    pub log_file: PathBuf,
    /// Which launcher program runs the guest.
    pub backend: BackendKind,
    /// The VM's cgroups (one per hierarchy), created before the launcher starts.
    pub cgroups: Vec<PathBuf>,
    /// The network of the instance, as returned by the network layer, to tear it down.
    #[serde(default)]
    pub network: Option<serde_json::Value>,
    /// Disk files made for this instance only (removed at the end).
    #[serde(default)]
    pub ephemeral_files: Vec<PathBuf>,
    /// When the launcher was started (Unix milliseconds).
    pub started_unix_ms: i64,
    /// When the guest was first seen running (Unix milliseconds).
    #[serde(default)]
    pub running_since_unix_ms: Option<i64>,
    /// A stop in progress.
    #[serde(default)]
    pub stop: Option<StopState>,
    /// Host CPUs dedicated to this instance, vCPU i on `dedicated_cpus[i]`
    /// (`dedicatedCpuPlacement`); empty for VMs on shared CPUs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dedicated_cpus: Vec<u32>,
}

/// Severity of an event, as in Kubernetes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventType {
    /// Something expected happened.
    Normal,
    /// Something the user should look at.
    Warning,
}

impl EventType {
    /// "Normal" or "Warning".
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "Normal",
            Self::Warning => "Warning",
        }
    }
}

/// One event about a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    /// When (Unix seconds).
    pub time_unix: i64,
    /// Normal or Warning.
    pub type_: EventType,
    /// CamelCase reason ("Started", "SoftwareEmulation", ...).
    pub reason: String,
    /// Human-readable details.
    pub message: String,
}

/// Most events kept per VM; older ones are dropped.
pub const MAX_EVENTS_PER_VM: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_keys_round_trip_and_default_namespace() {
        let key = VmKey::new("", "web");
        assert_eq!(key.namespace, "default");
        assert_eq!(key.storage_key(), "default/web");
        assert_eq!(
            VmKey::from_storage_key("prod/db"),
            Some(VmKey::new("prod", "db"))
        );
        assert_eq!(VmKey::from_storage_key("nokey"), None);
        assert_eq!(key.flat_name(), "default_web");
        assert_eq!(key.to_string(), "default/web");
    }

    #[test]
    fn exit_outcomes_classify_like_kubevirt() {
        for code in [0, 3, 5, 6] {
            assert!(!ExitOutcome::Code(code).is_failure(), "code {code}");
        }
        for code in [1, 4, 2, 101] {
            assert!(ExitOutcome::Code(code).is_failure(), "code {code}");
        }
        assert!(ExitOutcome::Signal(9).is_failure());
        assert!(ExitOutcome::Vanished.is_failure());
        assert!(ExitOutcome::Code(3).is_reboot());
        assert!(!ExitOutcome::Code(0).is_reboot());
        assert_eq!(
            ExitOutcome::Signal(9).to_string(),
            "launcher killed by signal 9 (SIGKILL)"
        );
        assert_eq!(ExitOutcome::Code(4).reason(), "GuestCrashed");
        assert_eq!(ExitOutcome::Vanished.reason(), "LauncherDied");
    }
}
