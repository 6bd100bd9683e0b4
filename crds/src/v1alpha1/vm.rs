//! `VirtualMachine`: a stateful machine whose run strategy decides when an instance runs.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::condition::Condition;
use super::instance::{TemplateMetadata, VirtualMachineInstanceSpec};

/// Desired state of a virtual machine (`kubectl get vm`).
// The printcolumns repeat `type_ = "string"`, which clippy takes for duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, JsonSchema, Debug, Clone, Default, PartialEq)]
#[kube(
    group = "ironvisor.io",
    version = "v1alpha1",
    kind = "VirtualMachine",
    namespaced,
    shortname = "vm",
    shortname = "vms",
    category = "all",
    status = "VirtualMachineStatus",
    derive = "PartialEq",
    doc = "A virtual machine: a template for its instances and a run strategy that says when one runs.",
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = ".status.printableStatus"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type=='Ready')].status"
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualMachineSpec {
    /// When an instance of this machine runs (default Halted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_strategy: Option<RunStrategy>,
    /// Deprecated: true means `runStrategy: Always`, false `Halted`. Mutually exclusive
    /// with `runStrategy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<bool>,
    /// The instance this machine creates.
    pub template: VirtualMachineInstanceTemplateSpec,
    /// A `VirtualMachineClusterInstancetype` that gives the template its vCPUs and memory
    /// (the template then sets neither).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instancetype: Option<super::InstancetypeMatcher>,
    /// A `VirtualMachineClusterPreference` whose defaults fill what the template leaves
    /// out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preference: Option<super::InstancetypeMatcher>,
}

/// The instance a `VirtualMachine` creates.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualMachineInstanceTemplateSpec {
    /// Labels and annotations of the instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<TemplateMetadata>,
    /// Specification of the instance.
    pub spec: VirtualMachineInstanceSpec,
}

/// When an instance of a `VirtualMachine` runs.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStrategy {
    /// Always keep an instance running; restart it whatever way it stops.
    Always,
    /// Restart the instance only when it fails; a clean guest shutdown stops the machine.
    RerunOnFailure,
    /// Start and stop only on explicit user requests.
    Manual,
    /// Keep the machine stopped.
    Halted,
    /// Run the instance once to completion and never restart it.
    Once,
}

/// Observed state of a virtual machine.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualMachineStatus {
    /// One-word state for `kubectl get vm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub printable_status: Option<VirtualMachinePrintableStatus>,
    /// An instance of this machine exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<bool>,
    /// The instance is ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<bool>,
    /// Observed conditions (Ready, Failure, Paused, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Repeated start failures, which back off (CrashLoopBackOff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_failure: Option<StartFailure>,
}

/// Bookkeeping of consecutive failed starts.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StartFailure {
    /// How many starts in a row failed.
    pub consecutive_fail_count: u32,
    /// UID of the instance that failed last.
    #[serde(
        default,
        rename = "lastFailedVMIUID",
        skip_serializing_if = "Option::is_none"
    )]
    pub last_failed_vmi_uid: Option<String>,
    /// No new start is attempted before this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_timestamp: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
}

/// The one-word state shown by `kubectl get vm`, as in KubeVirt.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Copy, PartialEq, Eq)]
pub enum VirtualMachinePrintableStatus {
    /// No instance exists and none should.
    Stopped,
    /// Resources (volumes, images) are being prepared.
    Provisioning,
    /// An instance was created and is starting.
    Starting,
    /// The instance is running.
    Running,
    /// The instance is paused.
    Paused,
    /// The instance is being stopped.
    Stopping,
    /// The machine is being deleted.
    Terminating,
    /// The instance keeps failing to start; starts are backing off.
    CrashLoopBackOff,
    /// The instance is moving to another node.
    Migrating,
    /// The state could not be determined.
    Unknown,
    /// No node can run the instance (e.g. hardware isolation Required and no KVM node).
    ErrorUnschedulable,
    /// An image could not be fetched or resolved.
    ErrImagePull,
    /// Fetching an image failed repeatedly and is backing off.
    ImagePullBackOff,
    /// A PersistentVolumeClaim of the machine does not exist.
    ErrorPvcNotFound,
    /// Waiting for a PersistentVolumeClaim to be bound.
    WaitingForVolumeBinding,
}
