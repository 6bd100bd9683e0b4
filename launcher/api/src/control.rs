//! The contract between the control API and the running VM.
//!
//! The gRPC service ([`crate::server`]) only sees a [`VmControl`] trait object, so it can be
//! tested without KVM, and the VMM (`ironvisor_launcher::vmm`) implements it.

use std::time::Duration;

/// Lifecycle state of the VM as reported by `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmState {
    /// Devices and vCPUs are being created; the guest has not run yet.
    Starting,
    /// vCPUs are running guest code.
    Running,
    /// vCPUs are stopped by a `pause` request.
    Paused,
    /// A shutdown was requested; waiting for the guest (or the timeout).
    ShuttingDown,
    /// The guest is gone; the launcher is about to exit.
    Stopped,
}

/// One device as reported by `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceStatus {
    /// "virtio-blk", "virtio-net", "virtio-console", "virtio-rng", "serial".
    pub kind: String,
    /// The id from the configuration ("rootdisk", "net0", ...).
    pub id: String,
    /// Guest-visible MAC address for network devices.
    pub mac: Option<String>,
    /// Host-side backing: image path, tap name, socket path (for "virtio-rng": the
    /// entropy source and its rate).
    pub backend: String,
    /// Read-only flag for block devices.
    pub read_only: bool,
}

/// A snapshot of the VM, answered by `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmStatus {
    pub name: String,
    pub state: VmState,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub devices: Vec<DeviceStatus>,
    /// Time since the vCPUs were first started.
    pub uptime: Duration,
    /// Which backend runs the VM ("kvm" or "qemu-tcg").
    pub backend: String,
    /// The pinning the launcher applied: per vCPU, the host CPUs its thread is pinned to
    /// (an empty list for an unpinned vCPU; no entries when nothing is pinned).
    pub vcpu_affinity: Vec<Vec<u32>>,
}

/// How to stop the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownMode {
    /// Ask the guest to shut down (Ctrl+Alt+Del on the i8042), and stop it hard when
    /// the timeout expires.
    Graceful { timeout: Duration },
    /// Stop the vCPUs now.
    Forced,
}

/// Why a control request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("operation not valid while the VM is {0:?}")]
    InvalidState(VmState),
    #[error("vCPU {index} did not respond: {reason}")]
    VcpuUnresponsive { index: u32, reason: String },
    #[error("internal error: {0}")]
    Internal(String),
}

/// Operations the control API can perform on a running VM.
pub trait VmControl: Send + Sync + 'static {
    fn status(&self) -> VmStatus;
    fn pause(&self) -> Result<(), ControlError>;
    fn resume(&self) -> Result<(), ControlError>;
    /// Starts a shutdown and returns at once; the launcher exits when the guest is gone.
    fn shutdown(&self, mode: ShutdownMode) -> Result<(), ControlError>;
}
