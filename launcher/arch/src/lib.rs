//! x86_64 specifics of the Ironvisor launcher: the guest address map, kernel loading and
//! boot protocols, ACPI and SMBIOS tables, and vCPU register/CPUID/MSR setup. Everything
//! here works on guest memory and plain KVM structures, so it is unit-tested without
//! /dev/kvm.
//!
//! The order the VMM uses them in:
//! 1. [`memory::create_guest_memory`];
//! 2. [`boot::load_kernel`], then [`boot::load_initrd_for_kernel`] (or [`boot::load_initrd`]);
//! 3. [`acpi::create_acpi_tables`], whose RSDP address goes to [`boot::configure_boot`],
//!    and [`smbios::create_smbios_tables`] (found by the guest's own scan);
//! 4. per vCPU: [`cpuid::filter_cpuid`] (for its place in the [`topology::CpuTopology`]),
//!    [`cpu::boot_msrs`], [`cpu::boot_fpu`], [`cpu::setup_lint`], and on the boot vCPU
//!    [`cpu::boot_regs`] and [`cpu::setup_boot_sregs`].

#![deny(missing_docs)]

#[cfg(not(target_arch = "x86_64"))]
compile_error!("ironvisor-arch only supports x86_64 hosts and guests");

pub mod acpi;
pub mod boot;
pub mod cpu;
pub mod cpuid;
pub mod file_copy;
pub mod initrd_format;
pub mod layout;
pub mod memory;
pub mod ram_mapping;
pub mod smbios;
pub mod topology;
