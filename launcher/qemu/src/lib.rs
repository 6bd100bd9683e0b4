//! Ironvisor's software-emulation launcher backend: the VM runs on QEMU with TCG, driven
//! through libvirt, behind the same [`Backend`](ironvisor_launcher::instance::Backend)
//! contract as the KVM microVMM. The launcher's shared main loop
//! (`ironvisor_launcher::vmm::run::run_vm`) then serves the same console socket, control
//! API and exit codes for both.
//!
//! Used where `/dev/kvm` is missing or cannot run stock guests (PVM hosts); nothing here
//! isolates the guest with hardware virtualization.
//!
//! - [`backend`]: [`QemuBackend`], the prepared and running instance, cleanup.
//! - [`domain`]: the domain plan and its libvirt XML (pure, unit-tested).
//! - [`libvirt`]: libvirt's event loop and the domain event callbacks (FFI).
//! - [`monitor`]: turns libvirt events (and state polls) into VM events.
//! - [`console`]: the serial socket pump into the console hub.
//! - [`qemu_args`]: the QEMU arguments of each NIC (libvirt's QEMU namespace passthrough).
//! - [`relay`]: the per-NIC frame relay between the tap and QEMU's datagram socket.
//! - [`tap`]: opening the VM's taps in the launcher's network namespace.

#![deny(missing_docs)]

pub mod backend;
pub mod console;
pub mod domain;
pub mod libvirt;
pub mod monitor;
pub mod qemu_args;
pub mod relay;
pub mod tap;

pub use backend::{QemuBackend, QemuError, QemuInstance, BACKEND_NAME};
