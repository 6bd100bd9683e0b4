//! `VirtualMachineInstanceSpec`: the machine itself, shared by `VirtualMachine` templates
//! and `VirtualMachineInstance` objects. Field names and shapes follow KubeVirt's
//! `kubevirt.io/v1`, restricted to what the Ironvisor microVM implements. Every struct
//! refuses unknown fields, so a KubeVirt feature Ironvisor lacks is an error, not a
//! silently ignored setting.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, Toleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::vmi::VirtualMachineInstanceStatus;

/// Desired state of one virtual machine instance: the spec of a `VirtualMachineInstance`
/// (`kubectl get vmi`) and of a `VirtualMachine`'s template.
// The printcolumns repeat `type_ = "string"`, which clippy takes for duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, JsonSchema, Debug, Clone, Default, PartialEq)]
#[kube(
    group = "ironvisor.io",
    version = "v1alpha1",
    kind = "VirtualMachineInstance",
    namespaced,
    shortname = "vmi",
    shortname = "vmis",
    category = "all",
    status = "VirtualMachineInstanceStatus",
    derive = "PartialEq",
    doc = "A virtual machine instance: one run of a machine on one node.",
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "IP",
        type_ = "string",
        json_path = ".status.interfaces[0].ipAddress"
    ),
    printcolumn(name = "NodeName", type_ = "string", json_path = ".status.nodeName"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type=='Ready')].status"
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualMachineInstanceSpec {
    /// The virtual hardware: CPU, memory, devices, firmware.
    pub domain: DomainSpec,
    /// Networks the interfaces of `domain.devices.interfaces` attach to (matched by name).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<Network>,
    /// Storage that backs the disks of `domain.devices.disks` (matched by name).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    /// Seconds the guest gets to shut down after a stop request before it is killed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_grace_period_seconds: Option<i64>,
    /// Node labels that a node must carry to run this instance.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Scheduling constraints, as for pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Taints this instance tolerates, as for pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Guest architecture, as KubeVirt's webhook writes it: `amd64` (the only one served).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
    /// SSH public keys from Secrets, added to the cloud-init userData (cluster mode).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_credentials: Vec<super::AccessCredential>,
}

/// The virtual hardware of an instance.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DomainSpec {
    /// CPU topology; vCPUs = cores × sockets × threads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Cpu>,
    /// Guest memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Memory>,
    /// Resources requested from and limited on the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Disks and network interfaces.
    #[serde(default)]
    pub devices: Devices,
    /// Boot configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<Firmware>,
    /// Ironvisor features of the machine (hardware isolation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<Features>,
    /// The machine type KubeVirt's webhook writes (`q35`, or a versioned `pc-q35-*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<Machine>,
    /// The guest's real-time clock (default UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock: Option<super::Clock>,
}

/// The emulated machine. Ironvisor runs every guest on its own microVM machine; the q35
/// family (KubeVirt's default, carried by every exported VM) is accepted as meaning it,
/// anything else is refused.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Machine {
    /// Machine type name.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub machine_type: Option<String>,
}

/// CPU topology.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Cpu {
    /// Cores per socket (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cores: Option<u32>,
    /// Sockets (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sockets: Option<u32>,
    /// Threads per core (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<u32>,
    /// Give each vCPU a host CPU of its own and pin the vCPU's thread to it (as KubeVirt
    /// does with the CPU manager's static policy). The node refuses the VM when it has
    /// fewer free CPUs than the VM has vCPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedicated_cpu_placement: Option<bool>,
    /// CPU model: `host-passthrough` or `host-model` (both give the guest the host's CPU
    /// features the hypervisor can pass on); named models are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

impl Cpu {
    /// Number of vCPUs (cores × sockets × threads, unset factors count as 1), saturating.
    pub fn vcpus(&self) -> u32 {
        [self.cores, self.sockets, self.threads]
            .into_iter()
            .map(|factor| factor.unwrap_or(1))
            .fold(1u32, u32::saturating_mul)
    }
}

/// Guest memory.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Memory {
    /// Memory visible to the guest ("512Mi", "2Gi").
    pub guest: Quantity,
}

/// Resource requests and limits, keyed by resource name ("cpu", "memory").
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourceRequirements {
    /// Amounts the node must have available.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requests: BTreeMap<String, Quantity>,
    /// Amounts the instance may never exceed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, Quantity>,
}

/// Devices of the machine.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Devices {
    /// Block devices, each backed by the volume of the same name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<Disk>,
    /// Network interfaces, each attached to the network of the same name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    /// When false, no pod network and interface are added if none are given (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoattach_pod_interface: Option<bool>,
    /// The serial console (default true; it is how the node agent and `virtctl console`
    /// reach the guest, so false is refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoattach_serial_console: Option<bool>,
    /// A virtio-rng device fed from the host kernel's entropy (`{}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rng: Option<Rng>,
}

/// A virtio-rng device; it has no settings.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Rng {}

/// One block device.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Disk {
    /// Device name; a volume with the same name backs it.
    pub name: String,
    /// Expose the volume as a disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<DiskTarget>,
    /// Expose the volume as a read-only CD-ROM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cdrom: Option<CdRomTarget>,
    /// SCSI passthrough of the volume (KubeVirt); refused: the microVM has no SCSI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lun: Option<LunTarget>,
    /// Serial number reported to the guest (at most 20 characters: letters, digits, `-`, `_`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// Boot priority (1 is first); unique among disks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_order: Option<u32>,
    /// Most bytes and requests per second the guest gets served from this disk (an
    /// Ironvisor extension; unlimited when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<DeviceRateLimit>,
}

/// A device's rate limit: token buckets refilled every second, each holding one second's
/// worth as its burst. On an interface it applies to each direction separately.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeviceRateLimit {
    /// Bytes per second, as a quantity (`10Mi` is 10 MiB/s): a disk request's data, or a
    /// NIC's whole frames.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_per_second: Option<Quantity>,
    /// Operations per second: disk requests, or frames.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops_per_second: Option<u64>,
}

// A quantity compares as the text it was written as, which is an equivalence.
impl Eq for DeviceRateLimit {}

/// Bus a disk is attached to. Ironvisor's microVM only has virtio.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DiskBus {
    /// virtio-blk (the only bus the Ironvisor launcher provides).
    Virtio,
    /// SATA (KubeVirt; not available on the microVM).
    Sata,
    /// SCSI (KubeVirt; not available on the microVM).
    Scsi,
    /// USB (KubeVirt; not available on the microVM).
    Usb,
}

impl DiskBus {
    /// The name used in manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Virtio => "virtio",
            Self::Sata => "sata",
            Self::Scsi => "scsi",
            Self::Usb => "usb",
        }
    }
}

/// A disk device.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DiskTarget {
    /// Bus (default virtio).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bus: Option<DiskBus>,
}

/// A SCSI LUN device (KubeVirt's `lun`), read only to refuse it by name.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LunTarget {
    /// Bus.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bus: Option<DiskBus>,
    /// Read-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readonly: Option<bool>,
}

/// A CD-ROM device.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CdRomTarget {
    /// Bus (default virtio).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bus: Option<DiskBus>,
    /// Read-only (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readonly: Option<bool>,
}

/// One network interface.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Interface {
    /// Interface name; the network with the same name is attached.
    pub name: String,
    /// NAT the guest behind the pod's address (pod network only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masquerade: Option<InterfaceMasquerade>,
    /// Bridge the guest onto the network directly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<InterfaceBridge>,
    /// Guest MAC address ("02:00:00:12:34:56"); generated when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac_address: Option<String>,
    /// With masquerade, the ports forwarded to the guest; none listed forwards all (as
    /// KubeVirt).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
    /// NIC model: `virtio` (the only one the microVM has).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Most bytes and frames per second in each direction (an Ironvisor extension;
    /// unlimited when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<DeviceRateLimit>,
}

/// A port forwarded to the guest through the masquerade binding.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Port {
    /// A name for the port (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `TCP` (the default) or `UDP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// The port number, 1 to 65535; the same on the pod address and in the guest.
    pub port: i32,
}

impl Port {
    /// The protocol as written, `TCP` when absent.
    pub fn protocol_or_default(&self) -> &str {
        self.protocol.as_deref().unwrap_or("TCP")
    }
}

/// Masquerade (NAT) binding. Takes no settings.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct InterfaceMasquerade {}

/// Bridge binding. Takes no settings.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct InterfaceBridge {}

/// Boot firmware settings.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Firmware {
    /// Direct kernel boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_boot: Option<KernelBoot>,
    /// The guest's SMBIOS system UUID (`/sys/class/dmi/id/product_uuid`), RFC 4122 text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// The guest's SMBIOS system serial number (`/sys/class/dmi/id/product_serial`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// Boot the disk's own bootloader with this firmware (KubeVirt's default without
    /// `kernelBoot` is `bios`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootloader: Option<Bootloader>,
}

/// The firmware a boot disk was made for: set one of `bios` and `efi`.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Bootloader {
    /// A PC BIOS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bios: Option<BiosBootloader>,
    /// UEFI, without Secure Boot (`secureBoot: false` is required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub efi: Option<EfiBootloader>,
}

/// BIOS boot.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BiosBootloader {
    /// KubeVirt shows the BIOS's own messages on the serial console with this. Accepted
    /// with a `BiosSerialMapped` Warning event: the guest's bootloader and kernel use the
    /// serial console either way, the BIOS's messages are not copied there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_serial: Option<bool>,
}

/// UEFI boot.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EfiBootloader {
    /// Secure Boot. KubeVirt defaults it to true; Ironvisor has no Secure Boot, so it
    /// must be set to false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure_boot: Option<bool>,
    /// Keep the UEFI variables across restarts. Not served: each boot starts from the
    /// firmware's default variables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent: Option<bool>,
}

/// Direct kernel boot: the kernel and initrd come from an image, not from a disk.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KernelBoot {
    /// Extra kernel command line arguments (requires `container`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_args: Option<String>,
    /// Where the kernel and initrd come from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<KernelBootContainer>,
}

/// Kernel and initrd inside an image. In standalone mode the node agent resolves the
/// image name to local files.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KernelBootContainer {
    /// Image name, e.g. `ironvisor/guest-kernel:debian-6.1`.
    pub image: String,
    /// Absolute path of the kernel inside the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_path: Option<String>,
    /// Absolute path of the initrd inside the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<String>,
}

/// Ironvisor extensions of the machine.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Features {
    /// Whether the instance may fall back to software emulation (default Preferred).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardware_isolation: Option<HardwareIsolation>,
    /// ACPI (always on: the guest's power button and shutdown go through it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acpi: Option<FeatureState>,
    /// The local APIC (always on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apic: Option<FeatureState>,
    /// System management mode (KubeVirt: for EFI secure boot); not emulated, so only
    /// `enabled: false` is accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smm: Option<FeatureState>,
}

/// A machine feature switch as KubeVirt writes it: `{}` means enabled.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FeatureState {
    /// Whether the feature is on (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

impl FeatureState {
    /// KubeVirt's reading: present and not explicitly disabled.
    pub fn is_enabled(&self) -> bool {
        self.enabled != Some(false)
    }
}

/// Hardware isolation demand of an instance.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum HardwareIsolation {
    /// Run only with hardware-assisted virtualization (real KVM); never emulate. An instance
    /// that no node can run with hardware isolation stays unschedulable.
    Required,
    /// Use hardware-assisted virtualization when the node has it, else emulate in software.
    #[default]
    Preferred,
}

/// A network an interface attaches to.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Network {
    /// Network name; the interface with the same name uses it.
    pub name: String,
    /// The pod's own network (at most one per instance).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodNetwork>,
    /// A secondary network defined by a Multus NetworkAttachmentDefinition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multus: Option<MultusNetwork>,
}

/// The pod network. Takes no settings.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PodNetwork {}

/// A Multus network.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MultusNetwork {
    /// Name of the NetworkAttachmentDefinition, `name` or `namespace/name`.
    pub network_name: String,
}

/// Storage for one disk. Exactly one source must be set.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Volume {
    /// Volume name; the disk with the same name uses it.
    pub name: String,
    /// An ephemeral copy of a base disk image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_disk: Option<ContainerDiskSource>,
    /// A PersistentVolumeClaim in the instance's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim: Option<PersistentVolumeClaimSource>,
    /// A disk image file on the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_disk: Option<HostDisk>,
    /// A blank, ephemeral disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty_disk: Option<EmptyDiskSource>,
    /// A NoCloud cloud-init data source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_init_no_cloud: Option<CloudInitNoCloudSource>,
    /// A ConfigMap's keys as files on a read-only disk (cluster mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ConfigMapVolumeSource>,
    /// A Secret's keys as files on a read-only disk (cluster mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretVolumeSource>,
    /// A service account's token, CA bundle and namespace on a read-only disk (cluster
    /// mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<ServiceAccountVolumeSource>,
    /// The instance's own fields (labels, annotations, ...) as files on a read-only disk
    /// (cluster mode).
    #[serde(
        default,
        rename = "downwardAPI",
        skip_serializing_if = "Option::is_none"
    )]
    pub downward_api: Option<DownwardApiVolumeSource>,
}

/// A ConfigMap in the instance's namespace, each key a file on a FAT disk.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigMapVolumeSource {
    /// The ConfigMap's name.
    pub name: String,
    /// Start the instance even when the ConfigMap does not exist (an empty disk then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
    /// The FAT volume label the guest sees (at most 11 characters; default: the volume's
    /// name, cut to 11). `cidata` makes the disk a cloud-init NoCloud seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_label: Option<String>,
}

/// A Secret in the instance's namespace, each key a file on a FAT disk.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretVolumeSource {
    /// The Secret's name.
    pub secret_name: String,
    /// Start the instance even when the Secret does not exist (an empty disk then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
    /// The FAT volume label the guest sees (as for `configMap`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_label: Option<String>,
}

/// A service account of the instance's namespace: `token`, `ca.crt` and `namespace`.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceAccountVolumeSource {
    /// The service account's name; the launcher pod runs as it.
    pub service_account_name: String,
}

/// Fields of the instance as files, as a pod's downward API volume has them.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DownwardApiVolumeSource {
    /// The files and the field each holds.
    #[serde(default)]
    pub fields: Vec<k8s_openapi::api::core::v1::DownwardAPIVolumeFile>,
    /// The FAT volume label the guest sees (as for `configMap`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_label: Option<String>,
}

/// The kinds of volume source, for messages and counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeSourceKind {
    /// `containerDisk`.
    ContainerDisk,
    /// `persistentVolumeClaim`.
    PersistentVolumeClaim,
    /// `hostDisk`.
    HostDisk,
    /// `emptyDisk`.
    EmptyDisk,
    /// `cloudInitNoCloud`.
    CloudInitNoCloud,
    /// `configMap`.
    ConfigMap,
    /// `secret`.
    Secret,
    /// `serviceAccount`.
    ServiceAccount,
    /// `downwardAPI`.
    DownwardApi,
}

impl VolumeSourceKind {
    /// The field name used in manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ContainerDisk => "containerDisk",
            Self::PersistentVolumeClaim => "persistentVolumeClaim",
            Self::HostDisk => "hostDisk",
            Self::EmptyDisk => "emptyDisk",
            Self::CloudInitNoCloud => "cloudInitNoCloud",
            Self::ConfigMap => "configMap",
            Self::Secret => "secret",
            Self::ServiceAccount => "serviceAccount",
            Self::DownwardApi => "downwardAPI",
        }
    }
}

impl Volume {
    /// The FAT volume label of a configMap, secret, serviceAccount or downwardAPI disk:
    /// `volumeLabel` when set, else the volume's name cut to 11 bytes.
    pub fn config_disk_label(&self) -> String {
        let given = self
            .config_map
            .as_ref()
            .and_then(|s| s.volume_label.clone())
            .or_else(|| self.secret.as_ref().and_then(|s| s.volume_label.clone()))
            .or_else(|| {
                self.downward_api
                    .as_ref()
                    .and_then(|s| s.volume_label.clone())
            });
        given.unwrap_or_else(|| self.name.chars().take(11).collect())
    }

    /// The sources that are set (a valid volume has exactly one).
    pub fn sources(&self) -> Vec<VolumeSourceKind> {
        [
            (
                self.container_disk.is_some(),
                VolumeSourceKind::ContainerDisk,
            ),
            (
                self.persistent_volume_claim.is_some(),
                VolumeSourceKind::PersistentVolumeClaim,
            ),
            (self.host_disk.is_some(), VolumeSourceKind::HostDisk),
            (self.empty_disk.is_some(), VolumeSourceKind::EmptyDisk),
            (
                self.cloud_init_no_cloud.is_some(),
                VolumeSourceKind::CloudInitNoCloud,
            ),
            (self.config_map.is_some(), VolumeSourceKind::ConfigMap),
            (self.secret.is_some(), VolumeSourceKind::Secret),
            (
                self.service_account.is_some(),
                VolumeSourceKind::ServiceAccount,
            ),
            (self.downward_api.is_some(), VolumeSourceKind::DownwardApi),
        ]
        .into_iter()
        .filter_map(|(set, kind)| set.then_some(kind))
        .collect()
    }
}

/// A base disk image; the instance writes to a throw-away overlay.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerDiskSource {
    /// Image name, e.g. `ironvisor/rootfs:busybox`.
    pub image: String,
}

/// A PersistentVolumeClaim.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PersistentVolumeClaimSource {
    /// Name of the claim in the instance's namespace.
    pub claim_name: String,
    /// Attach read-only (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
}

/// A disk image file on the node.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostDisk {
    /// Absolute path of the image file on the node.
    pub path: String,
    /// Whether the file must exist (`Disk`) or is created when missing (`DiskOrCreate`).
    #[serde(rename = "type")]
    pub type_: HostDiskType,
    /// Size of the file created by `DiskOrCreate` (required then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<Quantity>,
}

/// How a host disk file is obtained.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum HostDiskType {
    /// The file must already exist.
    #[default]
    Disk,
    /// The file is created with `capacity` bytes when it does not exist.
    DiskOrCreate,
}

/// A blank disk that lives as long as the instance.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EmptyDiskSource {
    /// Size of the disk ("1Gi").
    pub capacity: Quantity,
}

/// Cloud-init NoCloud data, exposed to the guest as a small `cidata` disk.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CloudInitNoCloudSource {
    /// User data as text (e.g. a `#cloud-config` document).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    /// User data encoded in base64 (instead of `userData`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data_base64: Option<String>,
    /// Network configuration (cloud-init network config v1 or v2) as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_data: Option<String>,
}

/// Metadata of the instances a `VirtualMachine` creates (a subset of `ObjectMeta`).
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TemplateMetadata {
    /// Labels copied to the instance.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations copied to the instance.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Ignored; accepted because generated KubeVirt manifests carry
    /// `creationTimestamp: null` here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<Time>,
}

impl VirtualMachineInstanceSpec {
    /// The effective hardware isolation demand (Preferred when unset).
    pub fn hardware_isolation(&self) -> HardwareIsolation {
        self.domain
            .features
            .as_ref()
            .and_then(|features| features.hardware_isolation)
            .unwrap_or_default()
    }

    /// Number of vCPUs (1 when no CPU topology is given).
    pub fn vcpus(&self) -> u32 {
        self.domain.cpu.as_ref().map_or(1, Cpu::vcpus)
    }

    /// Whether each vCPU gets a dedicated host CPU (`dedicatedCpuPlacement`).
    pub fn dedicated_cpu_placement(&self) -> bool {
        self.domain
            .cpu
            .as_ref()
            .and_then(|c| c.dedicated_cpu_placement)
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vcpus_multiplies_topology() {
        let cpu = Cpu {
            cores: Some(2),
            sockets: Some(2),
            threads: None,
            dedicated_cpu_placement: None,
            model: None,
        };
        assert_eq!(cpu.vcpus(), 4);
        assert_eq!(Cpu::default().vcpus(), 1);
        let huge = Cpu {
            cores: Some(u32::MAX),
            sockets: Some(2),
            threads: Some(2),
            dedicated_cpu_placement: None,
            model: None,
        };
        assert_eq!(huge.vcpus(), u32::MAX);
    }

    #[test]
    fn volume_sources_lists_every_set_source() {
        let mut volume = Volume {
            name: "v".into(),
            ..Default::default()
        };
        assert!(volume.sources().is_empty());
        volume.container_disk = Some(ContainerDiskSource { image: "i".into() });
        volume.empty_disk = Some(EmptyDiskSource {
            capacity: Quantity("1Gi".into()),
        });
        assert_eq!(
            volume.sources(),
            vec![VolumeSourceKind::ContainerDisk, VolumeSourceKind::EmptyDisk]
        );
    }

    #[test]
    fn hardware_isolation_defaults_to_preferred() {
        let mut spec = VirtualMachineInstanceSpec::default();
        assert_eq!(spec.hardware_isolation(), HardwareIsolation::Preferred);
        spec.domain.features = Some(Features {
            hardware_isolation: Some(HardwareIsolation::Required),
            ..Features::default()
        });
        assert_eq!(spec.hardware_isolation(), HardwareIsolation::Required);
    }
}
