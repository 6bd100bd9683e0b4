//! The virtio-mmio interrupt: the `InterruptStatus` register shared between the transport
//! (guest reads and ACKs) and the device worker (which sets bits), plus the irq EventFd.

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};

use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};
use vmm_sys_util::eventfd::EventFd;

/// `InterruptStatus` bit 0: the device used buffers in at least one queue.
pub const VIRTIO_INT_VRING: u32 = VIRTIO_MMIO_INT_VRING;
/// `InterruptStatus` bit 1: the device configuration changed.
pub const VIRTIO_INT_CONFIG: u32 = VIRTIO_MMIO_INT_CONFIG;

/// Interrupt state of one virtio-mmio device.
///
/// The EventFd is registered by the VMM as a KVM irqfd on the device's GSI: every write
/// injects an edge, and the guest's handler reads `InterruptStatus` to learn why.
#[derive(Debug)]
pub struct Interrupt {
    status: AtomicU32,
    config_generation: AtomicU32,
    irq: EventFd,
}

impl Interrupt {
    /// Wraps the irq EventFd; the status starts clear.
    pub fn new(irq: EventFd) -> Self {
        Self {
            status: AtomicU32::new(0),
            config_generation: AtomicU32::new(0),
            irq,
        }
    }

    /// Marks used buffers and raises the interrupt.
    pub fn signal_used_queue(&self) -> io::Result<()> {
        self.raise(VIRTIO_INT_VRING)
    }

    /// Bumps the configuration generation, marks a configuration change and raises the
    /// interrupt.
    pub fn signal_config_change(&self) -> io::Result<()> {
        self.config_generation.fetch_add(1, Ordering::AcqRel);
        self.raise(VIRTIO_INT_CONFIG)
    }

    fn raise(&self, bit: u32) -> io::Result<()> {
        self.status.fetch_or(bit, Ordering::AcqRel);
        self.irq.write(1)
    }

    /// Current `InterruptStatus` value.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::Acquire)
    }

    /// `InterruptACK`: clears the given bits.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::AcqRel);
    }

    /// Clears every bit (device reset).
    pub fn clear(&self) {
        self.status.store(0, Ordering::Release);
    }

    /// `ConfigGeneration`: changes whenever the device configuration changes.
    pub fn config_generation(&self) -> u32 {
        self.config_generation.load(Ordering::Acquire)
    }

    /// The irq EventFd (for tests and diagnostics).
    pub fn irq_event(&self) -> &EventFd {
        &self.irq
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    #[test]
    fn signal_sets_bits_and_writes_eventfd() {
        let irq = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        let interrupt = Interrupt::new(irq);
        assert_eq!(interrupt.status(), 0);
        interrupt.signal_used_queue().expect("signal");
        assert_eq!(interrupt.status(), VIRTIO_INT_VRING);
        assert_eq!(interrupt.irq_event().read().expect("read irq"), 1);

        let generation = interrupt.config_generation();
        interrupt.signal_config_change().expect("signal");
        assert_eq!(interrupt.status(), VIRTIO_INT_VRING | VIRTIO_INT_CONFIG);
        assert_eq!(interrupt.config_generation(), generation + 1);

        interrupt.ack(VIRTIO_INT_VRING);
        assert_eq!(interrupt.status(), VIRTIO_INT_CONFIG);
        interrupt.clear();
        assert_eq!(interrupt.status(), 0);
    }
}
