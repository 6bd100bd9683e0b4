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
//! - [`tap`]: creating and removing taps that do not exist yet.

#![deny(missing_docs)]

pub mod backend;
pub mod console;
pub mod domain;
pub mod libvirt;
pub mod monitor;
pub mod tap;

pub use backend::{QemuBackend, QemuError, QemuInstance, BACKEND_NAME};
