//! The launcher's one typed configuration: read from a JSON file or built from flags,
//! validated before anything is created.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Everything needed to build and run one VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct LaunchConfig {
    /// VM name, used in logs and status.
    pub name: String,
    /// Number of vCPUs (1..=MAX_VCPUS).
    #[serde(default = "default_vcpus")]
    pub vcpus: u32,
    /// Guest memory in MiB.
    #[serde(default = "default_memory_mib")]
    pub memory_mib: u64,
    pub kernel: KernelConfig,
    #[serde(default)]
    pub disks: Vec<DiskConfig>,
    #[serde(default)]
    pub nets: Vec<NetConfig>,
    #[serde(default)]
    pub console: ConsoleConfig,
    /// virtio-console port for a guest agent, exposed on the host as a unix socket.
    #[serde(default)]
    pub agent_socket: Option<PathBuf>,
    /// gRPC control API socket.
    #[serde(default)]
    pub api_socket: Option<PathBuf>,
    /// How long a graceful shutdown (SIGTERM or API) waits before a hard stop.
    #[serde(default = "default_shutdown_timeout_secs")]
    pub shutdown_timeout_secs: u64,
    /// Which hypervisor backend runs the guest.
    #[serde(default)]
    pub backend: BackendKind,
}

/// Kernel, initramfs and command line (direct kernel boot).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct KernelConfig {
    /// ELF vmlinux (PVH entry) or bzImage.
    pub path: PathBuf,
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    #[serde(default = "default_cmdline")]
    pub cmdline: String,
}

/// One virtio-blk disk over a raw image file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct DiskConfig {
    pub id: String,
    pub path: PathBuf,
    #[serde(default)]
    pub read_only: bool,
    /// Serial number reported by VIRTIO_BLK_T_GET_ID (at most 20 bytes); defaults to the id.
    #[serde(default)]
    pub serial: Option<String>,
}

/// One virtio-net device over a tap device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct NetConfig {
    pub id: String,
    /// Name of the tap device; created if missing (and then removed on exit).
    pub tap: String,
    /// Guest MAC, "52:54:00:12:34:56"; generated from the VM name and id when absent.
    #[serde(default)]
    pub mac: Option<String>,
}

/// Serial console exposure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct ConsoleConfig {
    /// Unix socket where console clients attach (many at once).
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// Bytes of console output kept for late attachers.
    #[serde(default = "default_ring_bytes")]
    pub ring_bytes: usize,
    /// Foreground mode: copy console output to stdout and stdin to the guest.
    #[serde(default)]
    pub stdio: bool,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            socket: None,
            ring_bytes: default_ring_bytes(),
            stdio: false,
        }
    }
}

/// The hypervisor backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendKind {
    /// Our own KVM microVMM.
    #[default]
    Kvm,
}

pub const MAX_VCPUS: u32 = 64;

fn default_vcpus() -> u32 {
    1
}
fn default_memory_mib() -> u64 {
    256
}
fn default_cmdline() -> String {
    "console=ttyS0 reboot=k panic=1".to_string()
}
fn default_ring_bytes() -> usize {
    256 * 1024
}
fn default_shutdown_timeout_secs() -> u64 {
    30
}
