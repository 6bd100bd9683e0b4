//! `VirtualMachineClusterInstancetype` and `VirtualMachineClusterPreference`: cluster-wide
//! sizes and defaults a `VirtualMachine` names in `spec.instancetype` and
//! `spec.preference` instead of writing them out (KubeVirt's instance types, with
//! `ironvisor.io/v1alpha1` in place of `instancetype.kubevirt.io/v1beta1`). How a VM's
//! template takes them is [`crate::instancetype`].

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::clock::Clock;
use super::EmptyObject;

/// Kind of the cluster-wide instance type.
pub const CLUSTER_INSTANCETYPE_KIND: &str = "VirtualMachineClusterInstancetype";
/// Kind of the cluster-wide preference.
pub const CLUSTER_PREFERENCE_KIND: &str = "VirtualMachineClusterPreference";

/// A size: vCPUs and guest memory.
#[derive(CustomResource, Serialize, Deserialize, JsonSchema, Debug, Clone, Default, PartialEq)]
#[kube(
    group = "ironvisor.io",
    version = "v1alpha1",
    kind = "VirtualMachineClusterInstancetype",
    shortname = "vmclusterinstancetype",
    derive = "PartialEq",
    doc = "A cluster-wide instance type: the vCPUs and memory of the VMs that name it."
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InstancetypeSpec {
    /// The vCPUs.
    pub cpu: InstancetypeCpu,
    /// The guest memory.
    pub memory: InstancetypeMemory,
}

/// vCPUs of an instance type.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InstancetypeCpu {
    /// How many; the preference's `preferredCPUTopology` shapes them (sockets by
    /// default, as KubeVirt).
    pub guest: u32,
    /// Give each vCPU a host CPU of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedicated_cpu_placement: Option<bool>,
}

/// Memory of an instance type.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InstancetypeMemory {
    /// Guest memory.
    pub guest: Quantity,
}

/// Defaults for what a VM leaves out.
#[derive(CustomResource, Serialize, Deserialize, JsonSchema, Debug, Clone, Default, PartialEq)]
#[kube(
    group = "ironvisor.io",
    version = "v1alpha1",
    kind = "VirtualMachineClusterPreference",
    shortname = "vmclusterpref",
    derive = "PartialEq",
    doc = "A cluster-wide preference: defaults for the VMs that name it."
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PreferenceSpec {
    /// How the instance type's vCPUs are arranged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<PreferenceCpu>,
    /// Device defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<PreferenceDevices>,
    /// Firmware defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<PreferenceFirmware>,
    /// The clock, when the VM sets none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock: Option<PreferenceClock>,
    /// The grace period, when the VM sets none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_termination_grace_period_seconds: Option<i64>,
}

/// vCPU arrangement.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PreferenceCpu {
    /// `sockets` (default), `cores` or `threads` (KubeVirt's `preferSockets`,
    /// `preferCores`, `preferThreads` are accepted too): every vCPU its own socket, core
    /// of one socket, or thread of one core.
    #[serde(
        default,
        rename = "preferredCPUTopology",
        skip_serializing_if = "Option::is_none"
    )]
    pub preferred_cpu_topology: Option<String>,
}

/// Device defaults.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PreferenceDevices {
    /// Bus of the disks and cdroms that name none (`virtio`; `sata` is mapped to virtio
    /// with a warning, as on a VM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_disk_bus: Option<super::DiskBus>,
    /// Model of the interfaces that name none (`virtio`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_interface_model: Option<String>,
    /// A virtio-rng device when the VM has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_rng: Option<EmptyObject>,
}

/// Firmware defaults (used when the VM names no bootloader and no kernel image).
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PreferenceFirmware {
    /// BIOS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_use_bios: Option<bool>,
    /// UEFI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_use_efi: Option<bool>,
    /// UEFI Secure Boot (not served: refused when the VM is validated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_use_secure_boot: Option<bool>,
}

/// Clock default.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PreferenceClock {
    /// The clock of a VM that sets none (`utc` or `timezone`, as `domain.clock`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_clock_offset: Option<Clock>,
}

/// A VM's reference to an instance type or preference.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InstancetypeMatcher {
    /// The object's name.
    pub name: String,
    /// `VirtualMachineClusterInstancetype` or `VirtualMachineClusterPreference` (the
    /// default); the namespaced kinds are not served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}
