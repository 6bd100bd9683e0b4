//! virtio-mmio transport (virtio 1.x, register layout version 2) and the launcher's virtio
//! devices: block over a raw image file, net over a tap device, a single-port console
//! over a host unix socket, and a rate-limited entropy source fed by `getrandom(2)`.
//!
//! The VMM places one [`MmioTransport`] per device on its MMIO bus, registers the transport's
//! [queue events](MmioTransport::queue_events) as KVM ioeventfds on `QueueNotify` and the
//! interrupt EventFd as a KVM irqfd. When the guest driver sets `DRIVER_OK`, the transport
//! hands the queues to the device ([`VirtioDevice::activate`]), which serves them from its own
//! worker thread until the driver resets the device or the device is dropped.
//!
//! ```no_run
//! use std::path::Path;
//! use ironvisor_virtio::{BlockDevice, MmioTransport};
//! use vm_memory::{GuestAddress, GuestMemoryMmap};
//! use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 256 << 20)])?;
//! let disk = BlockDevice::new(Path::new("/var/lib/vm/root.img"), false, "rootdisk")?;
//! let irq = EventFd::new(EFD_NONBLOCK)?;
//! let mut transport = MmioTransport::new(mem, Box::new(disk), irq)?;
//! let mut magic = [0u8; 4];
//! transport.read(0, &mut magic);
//! assert_eq!(u32::from_le_bytes(magic), 0x7472_6976);
//! # Ok(())
//! # }
//! ```

#![deny(missing_docs)]

mod block;
mod chain;
mod console;
mod device;
mod interrupt;
pub mod log_limit;
mod net;
mod queue_pass;
mod rate_limit;
mod rng;
mod transport;
mod worker;

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;

#[cfg(test)]
mod test_utils;

pub use block::{BlockDevice, BlockError, DiskFormat, SECTOR_SIZE};
pub use chain::ChainError;
pub use console::{ConsoleDevice, ConsoleError};
pub use device::{
    ActivateError, DeviceQueue, VirtioDevice, VIRTIO_F_VERSION_1_BIT,
    VIRTIO_RING_F_INDIRECT_DESC_BIT,
};
pub use interrupt::{Interrupt, VIRTIO_INT_CONFIG, VIRTIO_INT_VRING};
pub use net::{NetDevice, NetError, VNET_HDR_LEN};
pub use rate_limit::{RateLimit, RateLimiter};
pub use rng::{RngDevice, RngError};
pub use transport::{
    MmioTransport, TransportError, MMIO_MAGIC_VALUE, MMIO_VENDOR_ID, MMIO_VERSION,
};
pub use worker::{set_thread_init, ThreadInit, WorkerError, THREAD_STACK_BYTES};
