//! Events that end or change the life of the VM, sent from vCPU threads, devices, the
//! control API and signal handlers to the launcher's main loop.

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

/// How the launcher process ends; the value is its exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// The guest powered itself off.
    GuestPoweroff = 0,
    /// The launcher could not build or run the VM (message on stderr).
    LauncherError = 1,
    /// The guest rebooted; a microVM does not reset in place, the node agent restarts it.
    GuestReboot = 3,
    /// The guest crashed (triple fault or a vCPU failure).
    GuestCrash = 4,
    /// A graceful shutdown (SIGTERM or API) completed: the guest went down by itself.
    GracefulStop = 5,
    /// The VM was stopped hard: a forced shutdown, or a graceful one that timed out.
    HardStop = 6,
}

impl ExitStatus {
    pub fn code(self) -> i32 {
        self as i32
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            ExitStatus::GuestPoweroff => "guest powered off",
            ExitStatus::LauncherError => "launcher error",
            ExitStatus::GuestReboot => "guest rebooted",
            ExitStatus::GuestCrash => "guest crashed",
            ExitStatus::GracefulStop => "stopped gracefully",
            ExitStatus::HardStop => "stopped hard",
        };
        f.write_str(text)
    }
}
