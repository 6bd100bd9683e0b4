//! The virtio-mmio interrupt: the `InterruptStatus` register shared between the transport
//! (guest reads and ACKs) and the device worker (which sets bits), plus the irq EventFd.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

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
    /// Set by a worker whose queue the driver corrupted; the transport shows it as
    /// `DEVICE_NEEDS_RESET` in the device status until the driver resets the device.
    needs_reset: AtomicBool,
    irq: EventFd,
}

impl Interrupt {
    /// Wraps the irq EventFd; the status starts clear.
    pub fn new(irq: EventFd) -> Self {
        Self {
            status: AtomicU32::new(0),
            config_generation: AtomicU32::new(0),
            needs_reset: AtomicBool::new(false),
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

    /// The device hit an error it cannot recover from without a reset (virtio 1.x §2.1.2):
    /// records `DEVICE_NEEDS_RESET` and sends the configuration change notification the
    /// spec requires of a device whose driver is running.
    pub fn signal_needs_reset(&self) -> io::Result<()> {
        self.needs_reset.store(true, Ordering::Release);
        self.raise(VIRTIO_INT_CONFIG)
    }

    /// Whether a worker asked for a reset since the last one.
    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::Acquire)
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

    /// Clears every bit and the reset request (device reset).
    pub fn clear(&self) {
        self.status.store(0, Ordering::Release);
        self.needs_reset.store(false, Ordering::Release);
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

    #[test]
    fn needs_reset_raises_the_config_interrupt_until_cleared() {
        let irq = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        let interrupt = Interrupt::new(irq);
        assert!(!interrupt.needs_reset());
        interrupt.signal_needs_reset().expect("signal");
        assert!(interrupt.needs_reset());
        assert_eq!(interrupt.status(), VIRTIO_INT_CONFIG);
        assert_eq!(interrupt.irq_event().read().expect("read irq"), 1);
        interrupt.clear();
        assert!(!interrupt.needs_reset());
    }
}
