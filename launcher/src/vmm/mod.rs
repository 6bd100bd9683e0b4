//! The KVM virtual machine.
