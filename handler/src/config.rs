//! Settings of the node agent (`ironvisor-handler serve` flags) and the file layout they
//! imply.
//!
//! ```text
//! <data-dir>/state.redb                       the database (see store)
//! <data-dir>/vms/<ns>/<name>/launcher.json    the launcher configuration of the last start
//! <data-dir>/vms/<ns>/<name>/launcher.log     the launcher's output (current or last run)
//! <data-dir>/vms/<ns>/<name>/disks/           overlays, emptyDisks, cloud-init seeds
//! <data-dir>/net/                             CNI IPAM leases and per-VM network state
//! <data-dir>/volumes/<claim>.img              standalone PersistentVolumeClaims
//! <data-dir>/oci-disks/sha256-<hex>/          containerDisks unpacked from oci: / oci-archive:
//! <run-dir>/vmi/<uid>/                        per-instance sockets, pid and status files
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::backend::BackendMode;
use crate::records::VmKey;

/// Default data directory.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/ironvisor";
/// Default API socket.
pub const DEFAULT_SOCKET: &str = "/run/ironvisor/handler.sock";
/// Default runtime directory.
pub const DEFAULT_RUN_DIR: &str = "/run/ironvisor";
/// Name of the KVM launcher binary.
pub const LAUNCHER_BINARY: &str = "ironvisor-launcher";
/// Name of the software-emulation launcher binary.
pub const LAUNCHER_QEMU_BINARY: &str = "ironvisor-launcher-qemu";

/// Restart back-off after failures (KubeVirt-like: exponential, capped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// Delay before the second restart in a row; doubled for each further failure (the
    /// first failure restarts at once).
    pub base: Duration,
    /// Longest delay.
    pub max: Duration,
    /// A run this long resets the failure count.
    pub stable_after: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(10),
            max: Duration::from_secs(300),
            stable_after: Duration::from_secs(60),
        }
    }
}

impl BackoffPolicy {
    /// The delay before restarting after `failures` failures in a row.
    pub fn delay(&self, failures: u32) -> Duration {
        if failures <= 1 {
            return Duration::ZERO;
        }
        let factor = 1u32.checked_shl(failures - 2).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }
}

/// Everything the daemon needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonConfig {
    /// Durable state and per-VM files.
    pub data_dir: PathBuf,
    /// The API socket.
    pub socket: PathBuf,
    /// Runtime directory (sockets of the launchers).
    pub run_dir: PathBuf,
    /// Base images (disks) and kernel images (directories).
    pub images_dir: PathBuf,
    /// The KVM launcher.
    pub launcher: PathBuf,
    /// The software-emulation launcher.
    pub launcher_qemu: PathBuf,
    /// Kernel for VMs without `kernelBoot`.
    pub default_kernel: Option<PathBuf>,
    /// Initrd for VMs without `kernelBoot`.
    pub default_initrd: Option<PathBuf>,
    /// This node's name (VMI `nodeName`).
    pub node_name: String,
    /// Backend choice.
    pub backend: BackendMode,
    /// Parent of the VM cgroups (see [`crate::cgroup`]).
    pub cgroup_parent: String,
    /// Restart back-off.
    pub backoff: BackoffPolicy,
    /// The executable that runs the monitor subcommand (this binary).
    pub monitor_exe: PathBuf,
    /// How often the reconcile loop runs without a trigger.
    pub resync: Duration,
    /// Node bridge of the pod network (created by the CNI bridge plugin).
    pub bridge: String,
    /// Pod subnet (CIDR) handed out by host-local IPAM.
    pub pod_subnet: String,
    /// Where the CNI plugins are installed.
    pub cni_bin_dir: PathBuf,
    /// Writes are refused when the data directory has less free space (see
    /// [`crate::store::DEFAULT_MIN_FREE_BYTES`]).
    pub store_min_free_bytes: u64,
    /// First user id of the KVM launchers' own users (see [`launcher_identity`]); `None`:
    /// KVM launchers keep running as root.
    pub launcher_uid_base: Option<u32>,
    /// Whether each KVM launcher is jailed: started by its monitor in a mount namespace
    /// whose root holds only its own files, as its own user (see [`crate::jailer`]). With
    /// no launcher user (`launcher_uid_base` `None`) it jails itself once its VM is built
    /// (`ironvisor-launcher --jail`).
    pub launcher_jail: bool,
}

/// Default first user id of the KVM launchers' users: far above login users and the
/// usual subordinate-id ranges of rootless containers.
pub const DEFAULT_LAUNCHER_UID_BASE: u32 = 1_800_000_000;
/// How many user ids the launchers' users span from the base.
pub const LAUNCHER_UID_SPAN: u32 = 1 << 20;
/// Highest base: the span stays below uid 4294967295, which means "no user".
pub const MAX_LAUNCHER_UID_BASE: u32 = u32::MAX - LAUNCHER_UID_SPAN;

/// The user and group (the same number) the KVM launcher of instance `instance_uid`
/// becomes once its VM is built: `base` plus a hash of the instance uid into
/// [`LAUNCHER_UID_SPAN`] numbers, so launchers of different VMs run as different users and
/// cannot signal each other. Two instances share a number by chance with a probability of
/// about n²/2²¹ for n instances on the node (0.01 % for 15); ptrace is refused to them
/// anyway by their seccomp filters, signals are not.
pub fn launcher_identity(base: u32, instance_uid: &str) -> u32 {
    // FNV-1a: stable across releases and platforms, unlike the standard library's hasher.
    let hash = instance_uid.bytes().fold(0x811c_9dc5_u32, |hash, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    });
    base.min(MAX_LAUNCHER_UID_BASE) + hash % LAUNCHER_UID_SPAN
}

impl DaemonConfig {
    /// The VM's own directory.
    pub fn vm_dir(&self, key: &VmKey) -> PathBuf {
        self.data_dir
            .join("vms")
            .join(&key.namespace)
            .join(&key.name)
    }

    /// The per-instance runtime directory.
    pub fn vmi_run_dir(&self, uid: &str) -> PathBuf {
        self.run_dir.join("vmi").join(uid)
    }

    /// Network state directory.
    pub fn net_state_dir(&self) -> PathBuf {
        self.data_dir.join("net")
    }

    /// The node network settings for `ironvisor-net`.
    pub fn network(&self) -> ironvisor_net::NetworkConfig {
        ironvisor_net::NetworkConfig {
            bridge: self.bridge.clone(),
            subnet: self.pod_subnet.clone(),
            cni_bin_dir: self.cni_bin_dir.clone(),
            state_dir: self.net_state_dir(),
        }
    }

    /// Standalone PVC images.
    pub fn volumes_dir(&self) -> PathBuf {
        self.data_dir.join("volumes")
    }

    /// The cache of containerDisks unpacked from OCI layouts and archives
    /// (see `ironvisor_disks::oci_cache`).
    pub fn oci_disks_dir(&self) -> PathBuf {
        self.data_dir.join("oci-disks")
    }

    /// The launcher program for a backend.
    pub fn launcher_for(&self, backend: crate::records::BackendKind) -> &Path {
        match backend {
            crate::records::BackendKind::Kvm => &self.launcher,
            crate::records::BackendKind::QemuTcg => &self.launcher_qemu,
        }
    }
}

/// `name` next to the running executable (how launcher binaries are found by default).
pub fn sibling_binary(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(name)))
        .unwrap_or_else(|| PathBuf::from(name))
}

/// The KVM and software-emulation launchers: the paths given, else the binaries next to
/// this one.
pub fn launcher_binaries(
    launcher: Option<PathBuf>,
    launcher_qemu: Option<PathBuf>,
) -> (PathBuf, PathBuf) {
    (
        launcher.unwrap_or_else(|| sibling_binary(LAUNCHER_BINARY)),
        launcher_qemu.unwrap_or_else(|| sibling_binary(LAUNCHER_QEMU_BINARY)),
    )
}

/// The machine's host name (the default node name).
pub fn hostname() -> String {
    first_host_name(
        ["/proc/sys/kernel/hostname", "/etc/hostname"]
            .iter()
            .filter_map(|path| std::fs::read_to_string(path).ok()),
    )
}

/// The first usable name: trimmed, not empty and not the kernel's `(none)` (its value
/// while no host name was ever set); `localhost` when there is none.
fn first_host_name(candidates: impl IntoIterator<Item = String>) -> String {
    candidates
        .into_iter()
        .map(|name| name.trim().to_string())
        .find(|name| !name.is_empty() && name != "(none)")
        .unwrap_or_else(|| "localhost".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launcher_identities_are_stable_distinct_and_within_the_span() {
        let a = launcher_identity(
            DEFAULT_LAUNCHER_UID_BASE,
            "0b6a1c2e-5d1f-4f7a-9f57-3c2b1a0e9d88",
        );
        assert_eq!(
            a,
            launcher_identity(
                DEFAULT_LAUNCHER_UID_BASE,
                "0b6a1c2e-5d1f-4f7a-9f57-3c2b1a0e9d88"
            )
        );
        let b = launcher_identity(
            DEFAULT_LAUNCHER_UID_BASE,
            "7e4d0f1a-2b3c-4d5e-8f90-a1b2c3d4e5f6",
        );
        assert_ne!(a, b);
        for id in [a, b] {
            assert!(
                (DEFAULT_LAUNCHER_UID_BASE..DEFAULT_LAUNCHER_UID_BASE + LAUNCHER_UID_SPAN)
                    .contains(&id)
            );
        }
        // The highest base the daemon accepts never reaches uid -1 (u32::MAX).
        for uid in ["x", "y", "z"] {
            assert!(launcher_identity(MAX_LAUNCHER_UID_BASE, uid) < u32::MAX);
        }
    }

    #[test]
    fn an_unset_kernel_host_name_falls_back() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(first_host_name(names(&["(none)\n", "node-a\n"])), "node-a");
        assert_eq!(first_host_name(names(&["  \n", "(none)"])), "localhost");
        assert_eq!(first_host_name(names(&["vm1\n"])), "vm1");
    }

    #[test]
    fn backoff_is_immediate_then_exponential_and_capped() {
        let policy = BackoffPolicy {
            base: Duration::from_secs(10),
            max: Duration::from_secs(300),
            stable_after: Duration::from_secs(60),
        };
        assert_eq!(policy.delay(0), Duration::ZERO);
        assert_eq!(policy.delay(1), Duration::ZERO);
        assert_eq!(policy.delay(2), Duration::from_secs(10));
        assert_eq!(policy.delay(3), Duration::from_secs(20));
        assert_eq!(policy.delay(5), Duration::from_secs(80));
        assert_eq!(policy.delay(7), Duration::from_secs(300));
        assert_eq!(policy.delay(100), Duration::from_secs(300));
    }
}
