//! The contract between the virtio-mmio transport and a virtio device.

use std::sync::Arc;

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::interrupt::Interrupt;
use crate::worker::WorkerError;

/// Feature bit of `VIRTIO_F_VERSION_1`: the device is a virtio 1.x ("modern") device.
pub const VIRTIO_F_VERSION_1_BIT: u64 = 1 << VIRTIO_F_VERSION_1;
/// Feature bit of `VIRTIO_RING_F_INDIRECT_DESC`: the driver may use indirect descriptor
/// tables (our queue implementation walks them transparently).
pub const VIRTIO_RING_F_INDIRECT_DESC_BIT: u64 = 1 << VIRTIO_RING_F_INDIRECT_DESC;
/// Features every device of this crate offers.
pub(crate) const COMMON_FEATURES: u64 = VIRTIO_F_VERSION_1_BIT | VIRTIO_RING_F_INDIRECT_DESC_BIT;

/// One virtqueue handed to a device at activation.
#[derive(Debug)]
pub struct DeviceQueue {
    /// Index of the queue in the device (0 = first queue).
    pub index: usize,
    /// The queue as configured by the driver (size, ring addresses, ready).
    pub queue: Queue,
    /// Signalled when the driver notifies the queue (a clone of the transport's EventFd,
    /// which the VMM registers as an ioeventfd).
    pub event: EventFd,
}

/// Why a device could not start serving its queues.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver enabled a different number of queues than the device serves.
    #[error("{device}: activation needs {expected} queues, the driver set up {actual}")]
    QueueCount {
        /// Device kind ("virtio-blk", ...).
        device: &'static str,
        /// Number of queues the device serves.
        expected: usize,
        /// Number of queues handed over.
        actual: usize,
    },
    /// `activate` was called while the device was already running.
    #[error("{device}: activate called while the device is already active")]
    AlreadyActive {
        /// Device kind.
        device: &'static str,
    },
    /// The device's worker thread could not be started.
    #[error("{device}: cannot start the worker thread: {source}")]
    Worker {
        /// Device kind.
        device: &'static str,
        /// What failed.
        #[source]
        source: WorkerError,
    },
    /// A backend resource needed by the worker could not be duplicated.
    #[error("{device}: cannot prepare the backend for the worker: {source}")]
    Backend {
        /// Device kind.
        device: &'static str,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
}

/// A virtio device behind a transport.
///
/// The transport owns the guest-visible register state; the device supplies its identity,
/// features and configuration space, and serves its queues once activated.
pub trait VirtioDevice: Send {
    /// Virtio device ID (`VIRTIO_ID_BLOCK`, `VIRTIO_ID_NET`, ...).
    fn device_type(&self) -> u32;

    /// Short device kind for logs ("virtio-blk", ...).
    fn kind(&self) -> &'static str;

    /// Maximum size of each queue; the number of entries is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];

    /// Feature bits the device offers (all 64 bits; `VIRTIO_F_VERSION_1` must be set).
    fn avail_features(&self) -> u64;

    /// Records the features the driver accepted (a subset of [`Self::avail_features`]),
    /// called when the driver sets `FEATURES_OK` and the transport validated them.
    fn ack_features(&mut self, features: u64);

    /// Reads `data.len()` bytes of the device configuration space at `offset`; bytes
    /// beyond the configuration space read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// Writes `data` to the device configuration space at `offset`; read-only fields are
    /// left unchanged.
    fn write_config(&mut self, offset: u64, data: &[u8]);

    /// Starts serving `queues` (every queue of the device, in index order) from a worker
    /// thread, raising `interrupt` when used buffers are returned.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap<()>,
        interrupt: Arc<Interrupt>,
        queues: Vec<DeviceQueue>,
    ) -> Result<(), ActivateError>;

    /// Stops the worker thread (joining it) and returns the device to its pre-activation
    /// state; the backend (image, tap, socket) stays open. A no-op when not active.
    fn reset(&mut self);

    /// Whether the worker thread is running.
    fn is_active(&self) -> bool;
}

/// Copies the part of `config` at `offset` into `data`, zero-filling what lies beyond it.
pub(crate) fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if start >= config.len() {
        return;
    }
    let end = config.len().min(start.saturating_add(data.len()));
    data[..end - start].copy_from_slice(&config[start..end]);
}

/// Checks the queue count handed to `activate`.
pub(crate) fn expect_queue_count(
    device: &'static str,
    queues: &[DeviceQueue],
    expected: usize,
) -> Result<(), ActivateError> {
    if queues.len() == expected {
        Ok(())
    } else {
        Err(ActivateError::QueueCount {
            device,
            expected,
            actual: queues.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_config_bytes_copies_and_zero_fills() {
        let config = [1u8, 2, 3, 4, 5, 6];
        let mut data = [0xffu8; 4];
        read_config_bytes(&config, 4, &mut data);
        assert_eq!(data, [5, 6, 0, 0]);
        read_config_bytes(&config, 1, &mut data);
        assert_eq!(data, [2, 3, 4, 5]);
        read_config_bytes(&config, 100, &mut data);
        assert_eq!(data, [0, 0, 0, 0]);
        read_config_bytes(&config, u64::MAX, &mut data);
        assert_eq!(data, [0, 0, 0, 0]);
    }

    #[test]
    fn common_features_include_version_1() {
        assert_eq!(COMMON_FEATURES & (1 << 32), 1 << 32);
        assert_eq!(COMMON_FEATURES & (1 << 28), 1 << 28);
    }
}
