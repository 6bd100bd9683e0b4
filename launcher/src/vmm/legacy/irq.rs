//! Interrupt lines backed by KVM irqfds.

use vmm_sys_util::eventfd::EventFd;

/// An edge-triggered interrupt line: writing the EventFd (registered as a KVM irqfd on a
/// GSI) injects the interrupt.
#[derive(Debug)]
pub struct IrqLine(EventFd);

impl IrqLine {
    pub fn new(event: EventFd) -> Self {
        Self(event)
    }

    /// Raises the interrupt; a failure is logged, as the guest cannot be told about it.
    pub fn raise(&self) {
        if let Err(err) = self.0.write(1) {
            tracing::warn!(%err, "failed to signal irqfd");
        }
    }
}

impl vm_superio::Trigger for IrqLine {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}
