//! x86_64 specifics of the Ironvisor launcher: the guest address map, kernel loading and
//! boot protocols, ACPI tables, and vCPU register/CPUID/MSR setup. Everything here works on
//! guest memory and plain KVM structures, so it is unit-tested without /dev/kvm.

pub mod layout;
