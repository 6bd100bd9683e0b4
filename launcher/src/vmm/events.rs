//! Events that end or change the life of the VM, sent from vCPU threads, devices, the
//! control API and signal handlers to the launcher's main loop.

pub use ironvisor_launcher_api::exit::ExitStatus;

use std::fmt;

use ironvisor_launcher_api::control::ShutdownMode;
use tokio::sync::mpsc;

/// Something the main loop must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmEvent {
    /// The guest asked for soft-off (ACPI S5).
    GuestPoweroff,
    /// The guest asked for a reset (i8042 pulse, ACPI reset register).
    GuestReboot,
    /// A vCPU hit a triple fault (KVM_EXIT_SHUTDOWN).
    TripleFault { vcpu: u32 },
    /// A vCPU failed in a way the guest cannot recover from.
    VcpuFailed { vcpu: u32, reason: String },
    /// The control API or a signal asked for a shutdown.
    ShutdownRequested(ShutdownMode),
}

/// Sender half used by every event source. Sending never blocks, so vCPU threads may use it.
#[derive(Clone)]
pub struct EventSender(mpsc::UnboundedSender<VmEvent>);

impl fmt::Debug for EventSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EventSender")
    }
}

impl EventSender {
    /// Sends `event`; a closed main loop means the VM is already going away, so the event is
    /// dropped with a trace.
    pub fn send(&self, event: VmEvent) {
        if let Err(err) = self.0.send(event) {
            tracing::debug!(event = ?err.0, "main loop gone; event dropped");
        }
    }
}

/// Creates the event channel of one VM.
pub fn channel() -> (EventSender, mpsc::UnboundedReceiver<VmEvent>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (EventSender(tx), rx)
}
