//! Ironvisor launcher: one microVMM process per VM.
//!
//! The launcher builds a KVM virtual machine from a validated [`config::LaunchConfig`],
//! boots a Linux kernel on it, runs its virtio-mmio devices and serves the gRPC control
//! API on a unix socket. Crates and modules:
//!
//! - [`boot_trace`]: boot-phase timestamps for the boot benchmark.
//! - [`cli`]: what both launcher binaries share (`ctl`, logging, running with the
//!   socket guardian, the error report).
//! - `config` (from `ironvisor-launcher-api`): the one typed configuration and its validation.
//! - [`guardian`]: the socket guardian process, which removes the socket files of a
//!   launcher that was killed.
//! - [`sockets`]: clearing a stale socket path before binding, refusing a live one.
//! - [`seccomp`]: the seccomp filters of the vmm, vCPU and device worker threads.
//! - [`host`]: what the host can do (is there a /dev/kvm, can it run hardware-assisted guests).
//! - [`instance`]: what a hypervisor backend provides to the main loop.
//! - [`vmm`]: the KVM VM, vCPU threads, the I/O bus, legacy devices and the run loop.
//! - `ironvisor-arch`: guest layout, boot protocols, ACPI tables, vCPU register setup.
//! - `ironvisor-virtio`: virtio-mmio transport and virtio block/net/console devices.
//! - `ironvisor-console`: serial console fan-out (socket clients, boot-log ring, stdio).
//! - `ironvisor-launcher-api`: the gRPC control service and the `VmControl` contract.

pub use ironvisor_launcher_api::config;
pub mod boot_trace;
pub mod cli;
pub mod guardian;
pub mod host;
pub mod instance;
pub mod jail;
pub mod privileges;
pub mod seccomp;
pub mod sockets;
pub mod vmm;

/// Guest physical memory as every part of the launcher sees it.
pub type GuestMemory = vm_memory::GuestMemoryMmap<()>;
