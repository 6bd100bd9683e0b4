//! `ironvisor.io/v1alpha1`: the `VirtualMachine` and `VirtualMachineInstance` kinds.

pub mod access;
pub mod clock;
pub mod condition;
pub mod instance;
pub mod instancetype;
pub mod vm;
pub mod vmi;

pub use access::{
    AccessCredential, AccessCredentialSecret, EmptyObject, QemuGuestAgentKeys,
    SshPropagationMethod, SshPublicKeyAccessCredential, SshPublicKeySource,
    UserPasswordAccessCredential, UserPasswordPropagationMethod,
};
pub use clock::{Clock, ClockOffsetUtc, Timer, TimerSettings};
pub use condition::{Condition, ConditionStatus, ConditionType};
pub use instance::*;
pub use instancetype::*;
pub use vm::*;
pub use vmi::*;

/// API group of every Ironvisor kind.
pub const GROUP: &str = "ironvisor.io";
/// API version of this module.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` of objects of this module.
pub const API_VERSION: &str = "ironvisor.io/v1alpha1";
/// Kind name of [`VirtualMachine`].
pub const VIRTUAL_MACHINE_KIND: &str = "VirtualMachine";
/// Kind name of [`VirtualMachineInstance`].
pub const VIRTUAL_MACHINE_INSTANCE_KIND: &str = "VirtualMachineInstance";
