//! The virtio-mmio transport, register layout version 2 (virtio 1.x §4.2.2).

use std::sync::Arc;

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
};
use virtio_bindings::virtio_mmio as regs;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::device::{ActivateError, DeviceQueue, VirtioDevice, VIRTIO_F_VERSION_1_BIT};
use crate::interrupt::Interrupt;
use crate::log_limit::{guest_warn, LogLimiter};

/// `MagicValue`: "virt" in little endian.
pub const MMIO_MAGIC_VALUE: u32 = 0x7472_6976;
/// `Version`: 2 is the virtio 1.x ("modern") register layout.
pub const MMIO_VERSION: u32 = 2;
/// `VendorID` reported by every device: "IRON" in little endian.
pub const MMIO_VENDOR_ID: u32 = 0x4e4f_5249;

/// Offset of the device configuration space.
const CONFIG_SPACE: u64 = regs::VIRTIO_MMIO_CONFIG as u64;
/// The device status bits a driver sets (virtio 1.x §2.1).
const DRIVER_STATUS_BITS: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE
    | VIRTIO_CONFIG_S_DRIVER
    | VIRTIO_CONFIG_S_DRIVER_OK
    | VIRTIO_CONFIG_S_FEATURES_OK
    | VIRTIO_CONFIG_S_FAILED;

/// Why a transport could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The device declares no queues.
    #[error("{device}: a virtio device needs at least one queue")]
    NoQueues {
        /// Device kind.
        device: &'static str,
    },
    /// A queue's maximum size is zero, above 32768 or not a power of two.
    #[error("{device}: queue {index} has invalid maximum size {size}")]
    InvalidQueueSize {
        /// Device kind.
        device: &'static str,
        /// Queue index.
        index: usize,
        /// The rejected size.
        size: u16,
    },
    /// The device does not offer `VIRTIO_F_VERSION_1`.
    #[error("{device}: devices behind the version 2 mmio transport must offer VIRTIO_F_VERSION_1")]
    NotModern {
        /// Device kind.
        device: &'static str,
    },
    /// A queue notification EventFd could not be created.
    #[error("{device}: cannot create the notification eventfd of queue {index}: {source}")]
    QueueEvent {
        /// Device kind.
        device: &'static str,
        /// Queue index.
        index: usize,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// The driver set DRIVER_OK while a queue was not enabled.
    #[error("{device}: cannot activate, queue {index} is not ready")]
    QueueNotReady {
        /// Device kind.
        device: &'static str,
        /// Queue index.
        index: usize,
    },
    /// A queue's rings are misaligned or lie outside guest memory.
    #[error(
        "{device}: cannot activate, queue {index} rings are misconfigured or outside guest memory"
    )]
    QueueInvalid {
        /// Device kind.
        device: &'static str,
        /// Queue index.
        index: usize,
    },
    /// A queue's EventFd could not be duplicated for the device.
    #[error("{device}: cannot duplicate the notification eventfd of queue {index}: {source}")]
    QueueEventClone {
        /// Device kind.
        device: &'static str,
        /// Queue index.
        index: usize,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// The device refused to start.
    #[error("{device}: activation failed: {source}")]
    Activate {
        /// Device kind.
        device: &'static str,
        /// The device's reason.
        #[source]
        source: ActivateError,
    },
}

/// One virtio device as seen through its 4 KiB virtio-mmio window.
pub struct MmioTransport {
    mem: GuestMemoryMmap<()>,
    device: Box<dyn VirtioDevice>,
    interrupt: Arc<Interrupt>,
    queues: Vec<Queue>,
    queue_events: Vec<EventFd>,
    queue_select: u32,
    device_features_select: u32,
    driver_features_select: u32,
    driver_features: u64,
    status: u32,
    log: LogLimiter,
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device", &self.device.kind())
            .field("status", &self.status)
            .field("driver_features", &self.driver_features)
            .field("queues", &self.queues.len())
            .finish()
    }
}

impl MmioTransport {
    /// Builds the transport for `device`.
    ///
    /// `irq` is an EventFd the VMM registers as a KVM irqfd on the device's GSI (edge).
    pub fn new(
        mem: GuestMemoryMmap<()>,
        device: Box<dyn VirtioDevice>,
        irq: EventFd,
    ) -> Result<Self, TransportError> {
        let kind = device.kind();
        if device.avail_features() & VIRTIO_F_VERSION_1_BIT == 0 {
            return Err(TransportError::NotModern { device: kind });
        }
        let sizes = device.queue_max_sizes().to_vec();
        if sizes.is_empty() {
            return Err(TransportError::NoQueues { device: kind });
        }
        let mut queues = Vec::with_capacity(sizes.len());
        let mut queue_events = Vec::with_capacity(sizes.len());
        for (index, &size) in sizes.iter().enumerate() {
            let queue = Queue::new(size).map_err(|_| TransportError::InvalidQueueSize {
                device: kind,
                index,
                size,
            })?;
            queues.push(queue);
            let event =
                EventFd::new(EFD_NONBLOCK).map_err(|source| TransportError::QueueEvent {
                    device: kind,
                    index,
                    source,
                })?;
            queue_events.push(event);
        }
        Ok(Self {
            mem,
            device,
            interrupt: Arc::new(Interrupt::new(irq)),
            queues,
            queue_events,
            queue_select: 0,
            device_features_select: 0,
            driver_features_select: 0,
            driver_features: 0,
            status: 0,
            log: LogLimiter::default(),
        })
    }

    /// One EventFd per queue; the VMM registers each as a KVM ioeventfd at
    /// base + 0x50 (QueueNotify) with datamatch = queue index (u32).
    pub fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    /// The device behind the transport.
    pub fn device(&self) -> &dyn VirtioDevice {
        self.device.as_ref()
    }

    /// The interrupt state shared with the device worker.
    pub fn interrupt(&self) -> &Arc<Interrupt> {
        &self.interrupt
    }

    /// The device status register as the driver last set it.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Whether the driver finished initialisation and the device serves its queues.
    pub fn is_activated(&self) -> bool {
        self.status & VIRTIO_CONFIG_S_DRIVER_OK != 0 && self.device.is_active()
    }

    /// Guest MMIO read of `data.len()` bytes at `base + offset`.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE {
            self.device.read_config(offset - CONFIG_SPACE, data);
            return;
        }
        if data.len() != 4 {
            guest_warn!(
                self.log,
                "odd-width-access",
                device = self.device.kind(),
                offset,
                len = data.len(),
                "non 32-bit read of a virtio-mmio register"
            );
            data.fill(0);
            return;
        }
        let value = self.read_register(offset);
        data.copy_from_slice(&value.to_le_bytes());
    }

    /// Guest MMIO write of `data` at `base + offset`.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE {
            if self.status & VIRTIO_CONFIG_S_DRIVER == 0 {
                guest_warn!(
                    self.log,
                    "early-config-write",
                    device = self.device.kind(),
                    offset,
                    "config space write before the driver is set up, ignored"
                );
                return;
            }
            self.device.write_config(offset - CONFIG_SPACE, data);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            guest_warn!(
                self.log,
                "odd-width-access",
                device = self.device.kind(),
                offset,
                len = data.len(),
                "non 32-bit write of a virtio-mmio register, ignored"
            );
            return;
        };
        self.write_register(offset, u32::from_le_bytes(bytes));
    }

    fn selected_queue(&self) -> Option<&Queue> {
        self.queues.get(self.queue_select as usize)
    }

    fn read_register(&self, offset: u64) -> u32 {
        let Ok(reg) = u32::try_from(offset) else {
            return 0;
        };
        match reg {
            regs::VIRTIO_MMIO_MAGIC_VALUE => MMIO_MAGIC_VALUE,
            regs::VIRTIO_MMIO_VERSION => MMIO_VERSION,
            regs::VIRTIO_MMIO_DEVICE_ID => self.device.device_type(),
            regs::VIRTIO_MMIO_VENDOR_ID => MMIO_VENDOR_ID,
            regs::VIRTIO_MMIO_DEVICE_FEATURES => {
                let features = self.device.avail_features();
                match self.device_features_select {
                    0 => features as u32,
                    1 => (features >> 32) as u32,
                    _ => 0,
                }
            }
            regs::VIRTIO_MMIO_QUEUE_NUM_MAX => {
                self.selected_queue().map_or(0, |q| u32::from(q.max_size()))
            }
            regs::VIRTIO_MMIO_QUEUE_READY => {
                self.selected_queue().map_or(0, |q| u32::from(q.ready()))
            }
            regs::VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt.status(),
            regs::VIRTIO_MMIO_STATUS => {
                if self.interrupt.needs_reset() {
                    self.status | VIRTIO_CONFIG_S_NEEDS_RESET
                } else {
                    self.status
                }
            }
            regs::VIRTIO_MMIO_CONFIG_GENERATION => self.interrupt.config_generation(),
            // No shared memory regions: a length of all ones means "no such region".
            regs::VIRTIO_MMIO_SHM_LEN_LOW
            | regs::VIRTIO_MMIO_SHM_LEN_HIGH
            | regs::VIRTIO_MMIO_SHM_BASE_LOW
            | regs::VIRTIO_MMIO_SHM_BASE_HIGH => u32::MAX,
            _ => {
                guest_warn!(
                    self.log,
                    "unknown-register",
                    device = self.device.kind(),
                    offset,
                    "read of a write-only or unknown virtio-mmio register"
                );
                0
            }
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        let Ok(reg) = u32::try_from(offset) else {
            return;
        };
        match reg {
            regs::VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_select = value,
            regs::VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_select = value,
            regs::VIRTIO_MMIO_DRIVER_FEATURES => self.write_driver_features(value),
            regs::VIRTIO_MMIO_QUEUE_SEL => self.queue_select = value,
            regs::VIRTIO_MMIO_QUEUE_NUM
            | regs::VIRTIO_MMIO_QUEUE_READY
            | regs::VIRTIO_MMIO_QUEUE_DESC_LOW
            | regs::VIRTIO_MMIO_QUEUE_DESC_HIGH
            | regs::VIRTIO_MMIO_QUEUE_AVAIL_LOW
            | regs::VIRTIO_MMIO_QUEUE_AVAIL_HIGH
            | regs::VIRTIO_MMIO_QUEUE_USED_LOW
            | regs::VIRTIO_MMIO_QUEUE_USED_HIGH => self.write_queue_register(reg, value),
            regs::VIRTIO_MMIO_QUEUE_NOTIFY => self.notify(value),
            regs::VIRTIO_MMIO_INTERRUPT_ACK => self.interrupt.ack(value),
            regs::VIRTIO_MMIO_STATUS => self.set_status(value),
            regs::VIRTIO_MMIO_SHM_SEL => {}
            _ => {
                guest_warn!(
                    self.log,
                    "unknown-register",
                    device = self.device.kind(),
                    offset,
                    value,
                    "write to a read-only or unknown virtio-mmio register, ignored"
                );
            }
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        if self.status & VIRTIO_CONFIG_S_DRIVER == 0
            || self.status & VIRTIO_CONFIG_S_FEATURES_OK != 0
        {
            guest_warn!(
                self.log,
                "feature-negotiation",
                device = self.device.kind(),
                status = self.status,
                "DriverFeatures written outside feature negotiation, ignored"
            );
            return;
        }
        let value = u64::from(value);
        match self.driver_features_select {
            0 => self.driver_features = (self.driver_features & !0xffff_ffff) | value,
            1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (value << 32),
            select => {
                guest_warn!(
                    self.log,
                    "feature-negotiation",
                    device = self.device.kind(),
                    select,
                    "DriverFeatures written with a selector beyond bit 63, ignored"
                );
            }
        }
    }

    fn write_queue_register(&mut self, reg: u32, value: u32) {
        let kind = self.device.kind();
        if self.status & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            guest_warn!(
                self.log,
                "queue-setup",
                device = kind,
                reg,
                "queue register written after DRIVER_OK, ignored"
            );
            return;
        }
        let index = self.queue_select;
        let Some(queue) = self.queues.get_mut(index as usize) else {
            guest_warn!(
                self.log,
                "queue-setup",
                device = kind,
                index,
                "queue register written for a queue that does not exist"
            );
            return;
        };
        let result = match reg {
            regs::VIRTIO_MMIO_QUEUE_NUM => u16::try_from(value)
                .map_err(|_| virtio_queue::Error::InvalidSize)
                .and_then(|size| queue.try_set_size(size)),
            regs::VIRTIO_MMIO_QUEUE_READY => {
                queue.set_ready(value == 1);
                Ok(())
            }
            regs::VIRTIO_MMIO_QUEUE_DESC_LOW => {
                queue.try_set_desc_table_address(set_low(queue.desc_table(), value))
            }
            regs::VIRTIO_MMIO_QUEUE_DESC_HIGH => {
                queue.try_set_desc_table_address(set_high(queue.desc_table(), value))
            }
            regs::VIRTIO_MMIO_QUEUE_AVAIL_LOW => {
                queue.try_set_avail_ring_address(set_low(queue.avail_ring(), value))
            }
            regs::VIRTIO_MMIO_QUEUE_AVAIL_HIGH => {
                queue.try_set_avail_ring_address(set_high(queue.avail_ring(), value))
            }
            regs::VIRTIO_MMIO_QUEUE_USED_LOW => {
                queue.try_set_used_ring_address(set_low(queue.used_ring(), value))
            }
            regs::VIRTIO_MMIO_QUEUE_USED_HIGH => {
                queue.try_set_used_ring_address(set_high(queue.used_ring(), value))
            }
            _ => Ok(()),
        };
        if let Err(err) = result {
            guest_warn!(self.log, "queue-setup", device = kind, index, reg, value, %err, "invalid queue configuration, ignored");
        }
    }

    fn notify(&mut self, value: u32) {
        // Reached only when the VMM did not register the ioeventfd for this queue.
        match self.queue_events.get(value as usize) {
            Some(event) => {
                if let Err(err) = event.write(1) {
                    tracing::error!(device = self.device.kind(), queue = value, %err, "cannot signal queue event");
                }
            }
            None => {
                guest_warn!(
                    self.log,
                    "bad-notify",
                    device = self.device.kind(),
                    queue = value,
                    "QueueNotify for a queue that does not exist"
                );
            }
        }
    }

    fn set_status(&mut self, value: u32) {
        let kind = self.device.kind();
        let span = tracing::debug_span!(
            "virtio_status",
            device = kind,
            old = self.status,
            new = value
        );
        let _entered = span.enter();
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        // Bits 8-31 are reserved and DEVICE_NEEDS_RESET is the device's to set: only the
        // driver's five bits are taken (a driver writing back what it read keeps the
        // device's NEEDS_RESET as it was).
        let foreign = value & !(DRIVER_STATUS_BITS | VIRTIO_CONFIG_S_NEEDS_RESET);
        if foreign != 0 {
            guest_warn!(
                self.log,
                "status-reserved",
                bits = foreign,
                "driver set reserved device status bits, ignored"
            );
        }
        let value = (value & DRIVER_STATUS_BITS) | (old & VIRTIO_CONFIG_S_NEEDS_RESET);
        if value & old != old {
            guest_warn!(
                self.log,
                "status-write",
                "driver tried to clear device status bits, ignored"
            );
            return;
        }
        let added = value & !old;
        let mut new = value;
        if added & VIRTIO_CONFIG_S_FEATURES_OK != 0 {
            match self.check_features() {
                Ok(()) => self.device.ack_features(self.driver_features),
                Err(reason) => {
                    guest_warn!(
                        self.log,
                        "features-refused",
                        features = self.driver_features,
                        reason,
                        "FEATURES_OK refused"
                    );
                    new &= !VIRTIO_CONFIG_S_FEATURES_OK;
                }
            }
        }
        if added & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            if new & VIRTIO_CONFIG_S_FEATURES_OK == 0 {
                guest_warn!(
                    self.log,
                    "driver-ok-early",
                    "DRIVER_OK without FEATURES_OK, ignored"
                );
                new &= !VIRTIO_CONFIG_S_DRIVER_OK;
            } else if let Err(err) = self.activate() {
                if let Some(suppressed) = self.log.admit("activation") {
                    tracing::error!(
                        cause = "activation",
                        suppressed,
                        %err,
                        "device activation failed; it needs a reset"
                    );
                }
                new |= VIRTIO_CONFIG_S_NEEDS_RESET;
                self.status = new;
                if let Err(err) = self.interrupt.signal_config_change() {
                    tracing::error!(%err, "cannot raise the configuration interrupt");
                }
                return;
            }
        }
        if added & VIRTIO_CONFIG_S_FAILED != 0 {
            guest_warn!(
                self.log,
                "driver-failed",
                "driver gave up on the device (FAILED)"
            );
        }
        tracing::debug!(status = new, "device status");
        self.status = new;
    }

    fn check_features(&self) -> Result<(), &'static str> {
        let needed = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER;
        if self.status & needed != needed {
            return Err("ACKNOWLEDGE and DRIVER must be set first");
        }
        if self.driver_features & !self.device.avail_features() != 0 {
            return Err("driver accepted features the device does not offer");
        }
        if self.driver_features & VIRTIO_F_VERSION_1_BIT == 0 {
            return Err("driver did not accept VIRTIO_F_VERSION_1");
        }
        Ok(())
    }

    fn activate(&mut self) -> Result<(), TransportError> {
        let device = self.device.kind();
        let mut queues = Vec::with_capacity(self.queues.len());
        for (index, queue) in self.queues.iter().enumerate() {
            if !queue.ready() {
                return Err(TransportError::QueueNotReady { device, index });
            }
            if !queue.is_valid(&self.mem) {
                return Err(TransportError::QueueInvalid { device, index });
            }
            let queue = Queue::try_from(queue.state())
                .map_err(|_| TransportError::QueueInvalid { device, index })?;
            let event = self.queue_events[index].try_clone().map_err(|source| {
                TransportError::QueueEventClone {
                    device,
                    index,
                    source,
                }
            })?;
            queues.push(DeviceQueue {
                index,
                queue,
                event,
            });
        }
        self.device
            .activate(self.mem.clone(), self.interrupt.clone(), queues)
            .map_err(|source| TransportError::Activate { device, source })?;
        tracing::info!(device, "device activated");
        Ok(())
    }

    fn reset(&mut self) {
        tracing::debug!(device = self.device.kind(), "device reset");
        self.device.reset();
        for queue in &mut self.queues {
            queue.reset();
        }
        for event in &self.queue_events {
            // Drop notifications of the previous driver instance.
            let _ = event.read();
        }
        self.interrupt.clear();
        self.queue_select = 0;
        self.device_features_select = 0;
        self.driver_features_select = 0;
        self.driver_features = 0;
        self.status = 0;
    }
}

fn set_low(addr: u64, low: u32) -> GuestAddress {
    GuestAddress((addr & !0xffff_ffff) | u64::from(low))
}

fn set_high(addr: u64, high: u32) -> GuestAddress {
    GuestAddress((addr & 0xffff_ffff) | (u64::from(high) << 32))
}

#[cfg(test)]
mod tests;
