//! Status of a `VirtualMachineInstance`: one running (or about to run) machine, on one
//! node. The root type itself is derived from
//! [`VirtualMachineInstanceSpec`](super::instance::VirtualMachineInstanceSpec).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::condition::Condition;

/// Observed state of a virtual machine instance.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualMachineInstanceStatus {
    /// Lifecycle phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<VirtualMachineInstancePhase>,
    /// CamelCase reason for the current phase (e.g. why it failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Observed conditions (Ready, Paused, AgentConnected, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Node that runs the instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// Guest network interfaces and their addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<VirtualMachineInstanceNetworkInterface>,
    /// Process id of the Ironvisor launcher on the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launcher_pid: Option<u32>,
    /// How the instance is actually isolated (hardware or software emulation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation: Option<IsolationMode>,
    /// Operating system details reported by the guest agent.
    #[serde(
        rename = "guestOSInfo",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub guest_os_info: Option<GuestOsInfo>,
    /// When the instance entered each phase.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub phase_transition_timestamps: Vec<PhaseTransitionTimestamp>,
}

/// Lifecycle phase of an instance, as in KubeVirt.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Copy, PartialEq, Eq)]
pub enum VirtualMachineInstancePhase {
    /// Accepted, not yet placed on a node.
    Pending,
    /// A node is being chosen.
    Scheduling,
    /// Placed on a node; the launcher is starting.
    Scheduled,
    /// The guest runs.
    Running,
    /// The guest shut down cleanly.
    Succeeded,
    /// The guest or its launcher failed.
    Failed,
    /// The state could not be obtained.
    Unknown,
}

impl VirtualMachineInstancePhase {
    /// True once the instance has stopped for good (Succeeded or Failed).
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }
}

/// How the launcher isolates the guest.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Copy, PartialEq, Eq)]
pub enum IsolationMode {
    /// Hardware-assisted virtualization (KVM with VMX/SVM).
    Hardware,
    /// Software emulation (no usable hardware virtualization on the node).
    Emulation,
}

/// One guest network interface.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualMachineInstanceNetworkInterface {
    /// Name of the interface in the spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Primary IP address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<String>,
    /// All IP addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_addresses: Vec<String>,
    /// MAC address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Interface name inside the guest ("eth0").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface_name: Option<String>,
}

/// Operating system details reported by the guest agent.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GuestOsInfo {
    /// OS name ("Debian GNU/Linux").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// OS id ("debian").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Full name with version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pretty_name: Option<String>,
    /// Version ("12 (bookworm)").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Version id ("12").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
    /// Kernel release ("6.1.0-26-cloud-amd64").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_release: Option<String>,
    /// Kernel version string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_version: Option<String>,
    /// Machine architecture ("x86_64").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<String>,
}

/// When an instance entered a phase.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PhaseTransitionTimestamp {
    /// The phase entered.
    pub phase: VirtualMachineInstancePhase,
    /// When.
    pub phase_transition_timestamp: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
}
