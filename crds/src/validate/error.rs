//! The problems validation reports.

use std::fmt;

use super::HARDWARE_ISOLATION_ANNOTATION;
use crate::quantity::QuantityError;

/// One problem found by validation. Every variant names the field path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// A required field is missing or empty.
    #[error("{path}: required field is missing or empty")]
    Required {
        /// Field path.
        path: String,
    },
    /// A name is not a DNS-1123 label or subdomain.
    #[error("{path}: {value:?} is not a valid name: {reason}")]
    InvalidName {
        /// Field path.
        path: String,
        /// The offending name.
        value: String,
        /// What rule it breaks.
        reason: &'static str,
    },
    /// A label or annotation key or value is malformed.
    #[error("{path}: {value:?} is not a valid label/annotation {part}: {reason}")]
    InvalidLabel {
        /// Field path.
        path: String,
        /// The offending key or value.
        value: String,
        /// "key" or "value".
        part: &'static str,
        /// What rule it breaks.
        reason: &'static str,
    },
    /// `running` and `runStrategy` are both set.
    #[error("{path}: running and runStrategy are mutually exclusive; remove the deprecated running field")]
    RunningAndRunStrategy {
        /// Field path.
        path: String,
    },
    /// Two entries of a list have the same name.
    #[error("{path}: duplicate name {name:?} (first used at {first})")]
    DuplicateName {
        /// Field path of the second entry.
        path: String,
        /// The repeated name.
        name: String,
        /// Field path of the first entry.
        first: String,
    },
    /// A disk has no volume of the same name.
    #[error("{path}: disk {name:?} has no volume of the same name in volumes")]
    DiskWithoutVolume {
        /// Field path.
        path: String,
        /// The disk name.
        name: String,
    },
    /// A volume is not used by any disk.
    #[error("{path}: volume {name:?} is not used by any disk in domain.devices.disks")]
    VolumeWithoutDisk {
        /// Field path.
        path: String,
        /// The volume name.
        name: String,
    },
    /// An interface has no network of the same name.
    #[error("{path}: interface {name:?} has no network of the same name in networks")]
    InterfaceWithoutNetwork {
        /// Field path.
        path: String,
        /// The interface name.
        name: String,
    },
    /// A network is not used by any interface.
    #[error("{path}: network {name:?} is not used by any interface in domain.devices.interfaces")]
    NetworkWithoutInterface {
        /// Field path.
        path: String,
        /// The network name.
        name: String,
    },
    /// Neither `domain.memory.guest` nor `domain.resources.requests.memory` is set.
    #[error("{path}: guest memory is not set (set domain.memory.guest or domain.resources.requests.memory)")]
    MemoryMissing {
        /// Field path.
        path: String,
    },
    /// Guest memory is zero.
    #[error("{path}: guest memory must be greater than zero")]
    MemoryZero {
        /// Field path.
        path: String,
    },
    /// Guest memory is larger than [`MAX_GUEST_MEMORY_BYTES`](super::MAX_GUEST_MEMORY_BYTES).
    #[error("{path}: guest memory {value} ({bytes} bytes) is larger than the 1Ti limit")]
    MemoryTooLarge {
        /// Field path.
        path: String,
        /// The quantity as written.
        value: String,
        /// The quantity in bytes.
        bytes: u64,
    },
    /// Guest memory is larger than `resources.limits.memory`.
    #[error("{path}: guest memory {guest} is larger than the memory limit {limit}")]
    MemoryAboveLimit {
        /// Field path.
        path: String,
        /// Guest memory as written.
        guest: String,
        /// Limit as written.
        limit: String,
    },
    /// A request is larger than the matching limit.
    #[error("{path}: request {request} is larger than the limit {limit}")]
    RequestAboveLimit {
        /// Field path of the request.
        path: String,
        /// Request as written.
        request: String,
        /// Limit as written.
        limit: String,
    },
    /// A quantity could not be parsed or is negative.
    #[error("{path}: {source}")]
    InvalidQuantity {
        /// Field path.
        path: String,
        /// The parse error.
        source: QuantityError,
    },
    /// A size (capacity) is zero.
    #[error("{path}: capacity must be greater than zero")]
    CapacityZero {
        /// Field path.
        path: String,
    },
    /// A CPU topology factor is zero.
    #[error("{path}: must be at least 1")]
    CpuZero {
        /// Field path.
        path: String,
    },
    /// cores × sockets × threads exceeds [`MAX_VCPUS`](super::MAX_VCPUS).
    #[error(
        "{path}: {count} vCPUs requested (cores x sockets x threads), at most {max} are supported"
    )]
    TooManyVcpus {
        /// Field path.
        path: String,
        /// vCPUs requested (saturated at `u32::MAX`).
        count: u32,
        /// The limit.
        max: u32,
    },
    /// More disks and interfaces than the microVM can attach.
    #[error("{path}: {count} disks and interfaces, at most {max} virtio devices are supported")]
    TooManyDevices {
        /// Field path.
        path: String,
        /// Disks plus interfaces.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A volume sets no source or several sources.
    #[error("{path}: volume {name:?} must set exactly one source (containerDisk, persistentVolumeClaim, hostDisk, emptyDisk, cloudInitNoCloud), found {found}")]
    VolumeSourceCount {
        /// Field path.
        path: String,
        /// The volume name.
        name: String,
        /// The sources found, or "none".
        found: String,
    },
    /// A disk sets both `disk` and `cdrom`.
    #[error("{path}: disk {name:?} must set at most one of disk and cdrom")]
    DiskTargetCount {
        /// Field path.
        path: String,
        /// The disk name.
        name: String,
    },
    /// An interface sets both `masquerade` and `bridge`.
    #[error("{path}: interface {name:?} must set at most one of masquerade and bridge")]
    InterfaceBindingCount {
        /// Field path.
        path: String,
        /// The interface name.
        name: String,
    },
    /// A network sets neither or both of `pod` and `multus`.
    #[error("{path}: network {name:?} must set exactly one of pod and multus")]
    NetworkSourceCount {
        /// Field path.
        path: String,
        /// The network name.
        name: String,
    },
    /// More than one pod network.
    #[error("{path}: only one pod network is allowed (the first is {first})")]
    MultiplePodNetworks {
        /// Field path of the second pod network.
        path: String,
        /// Field path of the first one.
        first: String,
    },
    /// A masquerade interface is attached to a non-pod network.
    #[error("{path}: masquerade is only supported on the pod network, but network {network:?} is not a pod network")]
    MasqueradeNeedsPodNetwork {
        /// Field path.
        path: String,
        /// The network name.
        network: String,
    },
    /// A disk bus other than virtio.
    #[error("{path}: bus {bus} is not supported by the Ironvisor microVM; use virtio (sata is served as virtio)")]
    UnsupportedBus {
        /// Field path.
        path: String,
        /// The bus requested.
        bus: &'static str,
    },
    /// A `hostDisk` of type `DiskOrCreate` without `capacity`.
    #[error("{path}: hostDisk type DiskOrCreate requires a capacity")]
    HostDiskCapacityRequired {
        /// Field path.
        path: String,
    },
    /// A file path is not absolute and normalized.
    #[error("{path}: {value:?} must be an absolute path without '..' components")]
    InvalidPath {
        /// Field path.
        path: String,
        /// The path as written.
        value: String,
    },
    /// A MAC address is malformed or not a unicast address.
    #[error("{path}: {value:?} is not a valid MAC address: {reason}")]
    InvalidMac {
        /// Field path.
        path: String,
        /// The address as written.
        value: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// Two interfaces use the same MAC address.
    #[error("{path}: MAC address {value:?} is already used at {first}")]
    DuplicateMac {
        /// Field path.
        path: String,
        /// The address.
        value: String,
        /// Where it is first used.
        first: String,
    },
    /// A `bootOrder` of zero.
    #[error("{path}: bootOrder must be at least 1")]
    BootOrderZero {
        /// Field path.
        path: String,
    },
    /// Two disks with the same `bootOrder`.
    #[error("{path}: bootOrder {value} is already used at {first}")]
    DuplicateBootOrder {
        /// Field path.
        path: String,
        /// The boot order.
        value: u32,
        /// Where it is first used.
        first: String,
    },
    /// A rate limit sets neither rate.
    #[error(
        "{path}: sets neither bytesPerSecond nor opsPerSecond; leave rateLimit out for no limit"
    )]
    RateLimitEmpty {
        /// Field path.
        path: String,
    },
    /// A rate of zero would stall the device for good.
    #[error("{path}: must be at least 1 per second (0 would stall the device for good)")]
    RateLimitZero {
        /// Field path.
        path: String,
    },
    /// A disk serial number is malformed.
    #[error("{path}: serial {value:?} must be 1 to 20 characters of letters, digits, '-', '_', '.', '+'")]
    InvalidSerial {
        /// Field path.
        path: String,
        /// The serial as written.
        value: String,
    },
    /// An image name is malformed.
    #[error("{path}: {value:?} is not a valid image name: {reason}")]
    InvalidImage {
        /// Field path.
        path: String,
        /// The image as written.
        value: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// `userData` and `userDataBase64` are both set.
    #[error("{path}: userData and userDataBase64 are mutually exclusive")]
    CloudInitUserDataConflict {
        /// Field path.
        path: String,
    },
    /// A `cloudInitNoCloud` source with no data at all.
    #[error("{path}: cloudInitNoCloud needs userData, userDataBase64 or networkData")]
    CloudInitEmpty {
        /// Field path.
        path: String,
    },
    /// `userDataBase64` is not valid base64.
    #[error("{path}: not valid base64: {reason}")]
    InvalidBase64 {
        /// Field path.
        path: String,
        /// The decoder's complaint.
        reason: String,
    },
    /// Cloud-init data larger than the seed disk takes.
    #[error("{path}: {bytes} bytes is larger than the {max}-byte limit for cloud-init data")]
    CloudInitTooLarge {
        /// Field path.
        path: String,
        /// Its size.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// `kernelBoot` without `container`.
    #[error("{path}: kernelBoot needs a container that provides the kernel")]
    KernelBootWithoutContainer {
        /// Field path.
        path: String,
    },
    /// `kernelBoot.container` with neither `kernelPath` nor `initrdPath`.
    #[error("{path}: kernelBoot.container needs kernelPath, initrdPath or both")]
    KernelBootPathsMissing {
        /// Field path.
        path: String,
    },
    /// `kernelArgs` too long or containing control characters.
    #[error("{path}: kernelArgs {reason}")]
    InvalidKernelArgs {
        /// Field path.
        path: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A negative `terminationGracePeriodSeconds`.
    #[error("{path}: must not be negative (got {value})")]
    NegativeGracePeriod {
        /// Field path.
        path: String,
        /// The value.
        value: i64,
    },
    /// A guest architecture other than amd64.
    #[error(
        "{path}: architecture {value:?} is not served: Ironvisor runs amd64 (x86-64) guests only"
    )]
    ArchitectureNotServed {
        /// Field path.
        path: String,
        /// The architecture as written.
        value: String,
    },
    /// A machine type outside the q35 family.
    #[error("{path}: machine type {value:?} is not served: every guest runs on Ironvisor's own microVM machine, which stands in for q35 (KubeVirt's default, \"q35\" or \"pc-q35-*\"); remove the field or use q35")]
    MachineTypeNotServed {
        /// Field path.
        path: String,
        /// The machine type as written.
        value: String,
    },
    /// `firmware.uuid` is not an RFC 4122 UUID.
    #[error("{path}: {value:?} is not a UUID (8-4-4-4-12 hexadecimal digits, e.g. 6a1c7d1e-8b3f-4c5a-9e2d-0123456789ab)")]
    InvalidFirmwareUuid {
        /// Field path.
        path: String,
        /// The UUID as written.
        value: String,
    },
    /// `firmware.serial` cannot be an SMBIOS string.
    #[error("{path}: serial {value:?} must be 1 to 64 printable ASCII characters")]
    InvalidFirmwareSerial {
        /// Field path.
        path: String,
        /// The serial as written.
        value: String,
    },
    /// Both `bootloader.bios` and `bootloader.efi`, or neither.
    #[error("{path}: set exactly one of bios and efi")]
    BootloaderChoice {
        /// Field path.
        path: String,
    },
    /// `bootloader.efi` with Secure Boot on or left to KubeVirt's default (on).
    #[error("{path}: Secure Boot is not served (no SMM and no signed firmware in the microVM); KubeVirt turns it on when secureBoot is left out, so set secureBoot: false")]
    SecureBootNotServed {
        /// Field path.
        path: String,
    },
    /// `bootloader.efi.persistent: true`.
    #[error("{path}: persistent UEFI variables are not served: each boot starts from the firmware's default variable store; remove it or set it to false")]
    PersistentEfiNotServed {
        /// Field path.
        path: String,
    },
    /// `bootloader` together with `kernelBoot.container`.
    #[error("{path}: a bootloader cannot be combined with kernelBoot.container: the VM boots either the kernel image directly or its disk's own bootloader")]
    BootloaderWithKernelBoot {
        /// Field path.
        path: String,
    },
    /// A template field the VM's instance type sets.
    #[error("{path}: the instance type sets it; leave it out of a VM with spec.instancetype")]
    InstancetypeConflict {
        /// Field path.
        path: String,
    },
    /// A preferred CPU topology that is not served.
    #[error("{path}: {value:?} is not served: use sockets, cores or threads")]
    TopologyNotServed {
        /// Field path.
        path: String,
        /// The value written.
        value: String,
    },
    /// An instance type or preference kind that is not served.
    #[error("{path}: kind {value:?} is not served: use {expected} (the namespaced kinds are not served)")]
    InstancetypeKind {
        /// Field path.
        path: String,
        /// The kind written.
        value: String,
        /// The served kind.
        expected: &'static str,
    },
    /// An access credential or propagation method Ironvisor does not serve.
    #[error("{path}: not served: {reason}")]
    AccessCredentialNotServed {
        /// Field path.
        path: String,
        /// Why, and what to use instead.
        reason: &'static str,
    },
    /// An SSH key to propagate by noCloud without a cloud-config userData to add it to.
    #[error("{path}: noCloud propagation adds the keys to a cloudInitNoCloud volume's userData, so the VM needs one whose userData is #cloud-config YAML (or none); {found}")]
    AccessCredentialNeedsCloudConfig {
        /// Field path.
        path: String,
        /// What the VM has instead.
        found: &'static str,
    },
    /// A FAT volume label that is too long or has characters FAT does not allow.
    #[error("{path}: volume label {value:?} must be 1 to 11 printable ASCII characters without spaces or any of \"*+,./:;<=>?[\\]|")]
    InvalidVolumeLabel {
        /// Field path.
        path: String,
        /// The label as written.
        value: String,
    },
    /// A downwardAPI file path that is absolute, empty or climbs out with `..`.
    #[error("{path}: {value:?} must be a relative path without '..' components")]
    InvalidRelativePath {
        /// Field path.
        path: String,
        /// The path as written.
        value: String,
    },
    /// A downwardAPI file without a field or with more than one source.
    #[error("{path}: set exactly one of fieldRef and resourceFieldRef")]
    DownwardApiFieldChoice {
        /// Field path.
        path: String,
    },
    /// A NIC model other than virtio.
    #[error("{path}: NIC model {value:?} is not served: the microVM's NICs are virtio (every Linux guest has the driver); use virtio or leave it out")]
    NicModelNotServed {
        /// Field path.
        path: String,
        /// The model as written.
        value: String,
    },
    /// `ports` on a bridge interface.
    #[error("{path}: ports are forwarded by the masquerade binding only (with bridge the guest has the pod's address and every port)")]
    PortsNeedMasquerade {
        /// Field path.
        path: String,
    },
    /// A port number outside 1..=65535.
    #[error("{path}: port {value} is not between 1 and 65535")]
    InvalidPort {
        /// Field path.
        path: String,
        /// The number.
        value: i32,
    },
    /// A protocol other than TCP or UDP.
    #[error("{path}: protocol {value:?} is not served: use TCP or UDP")]
    InvalidPortProtocol {
        /// Field path.
        path: String,
        /// The protocol as written.
        value: String,
    },
    /// The same port and protocol twice.
    #[error("{path}: {protocol} port {port} is listed twice (first at {first})")]
    DuplicatePort {
        /// Field path.
        path: String,
        /// The port.
        port: i32,
        /// The protocol.
        protocol: String,
        /// Where it was first listed.
        first: String,
    },
    /// A `lun` disk.
    #[error("{path}: lun disks (SCSI passthrough) are not served: the microVM has no SCSI bus; use disk")]
    LunNotServed {
        /// Field path.
        path: String,
    },
    /// A named CPU model.
    #[error("{path}: CPU model {value:?} is not served: use host-passthrough or host-model (the guest gets the host CPU's features that KVM passes on)")]
    CpuModelNotServed {
        /// Field path.
        path: String,
        /// The model as written.
        value: String,
    },
    /// `autoattachSerialConsole: false`.
    #[error("{path}: the serial console cannot be left out: it is how the node agent and virtctl console reach the guest")]
    SerialConsoleRequired {
        /// Field path.
        path: String,
    },
    /// ACPI or the APIC switched off.
    #[error("{path}: {feature} cannot be disabled: the microVM always has it")]
    FeatureAlwaysOn {
        /// Field path.
        path: String,
        /// "acpi" or "apic".
        feature: &'static str,
    },
    /// SMM asked for.
    #[error("{path}: SMM is not emulated by the microVM (KubeVirt uses it for EFI secure boot, which is not served); remove it or set enabled: false")]
    SmmNotServed {
        /// Field path.
        path: String,
    },
    /// Both `clock.utc` and `clock.timezone`.
    #[error("{path}: utc and timezone are both set; a clock keeps either UTC (with offsetSeconds) or a time zone's local time")]
    ClockOffsetConflict {
        /// Field path.
        path: String,
    },
    /// A `clock.timezone` that no time zone database knows or that is malformed.
    #[error("{path}: {reason}")]
    InvalidTimezone {
        /// Field path.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A timer setting the microVM cannot honour.
    #[error("{path}: {reason}")]
    TimerNotServed {
        /// Field path.
        path: String,
        /// Why, and what to write instead.
        reason: String,
    },
    /// The `ironvisor.io/hardware-isolation` annotation is used instead of the field.
    #[error("{path}: the {HARDWARE_ISOLATION_ANNOTATION} annotation is not used; set spec.domain.features.hardwareIsolation (Required or Preferred) instead")]
    HardwareIsolationAnnotation {
        /// Field path.
        path: String,
    },
}

impl ValidationError {
    /// The path of the offending field.
    pub fn path(&self) -> &str {
        match self {
            Self::Required { path }
            | Self::InvalidName { path, .. }
            | Self::InvalidLabel { path, .. }
            | Self::RunningAndRunStrategy { path }
            | Self::DuplicateName { path, .. }
            | Self::DiskWithoutVolume { path, .. }
            | Self::VolumeWithoutDisk { path, .. }
            | Self::InterfaceWithoutNetwork { path, .. }
            | Self::NetworkWithoutInterface { path, .. }
            | Self::MemoryMissing { path }
            | Self::MemoryZero { path }
            | Self::MemoryTooLarge { path, .. }
            | Self::MemoryAboveLimit { path, .. }
            | Self::RequestAboveLimit { path, .. }
            | Self::InvalidQuantity { path, .. }
            | Self::CapacityZero { path }
            | Self::CpuZero { path }
            | Self::TooManyVcpus { path, .. }
            | Self::TooManyDevices { path, .. }
            | Self::VolumeSourceCount { path, .. }
            | Self::DiskTargetCount { path, .. }
            | Self::InterfaceBindingCount { path, .. }
            | Self::NetworkSourceCount { path, .. }
            | Self::MultiplePodNetworks { path, .. }
            | Self::MasqueradeNeedsPodNetwork { path, .. }
            | Self::UnsupportedBus { path, .. }
            | Self::HostDiskCapacityRequired { path }
            | Self::InvalidPath { path, .. }
            | Self::InvalidMac { path, .. }
            | Self::DuplicateMac { path, .. }
            | Self::BootOrderZero { path }
            | Self::DuplicateBootOrder { path, .. }
            | Self::InvalidSerial { path, .. }
            | Self::RateLimitEmpty { path }
            | Self::RateLimitZero { path }
            | Self::InvalidImage { path, .. }
            | Self::CloudInitUserDataConflict { path }
            | Self::CloudInitEmpty { path }
            | Self::InvalidBase64 { path, .. }
            | Self::CloudInitTooLarge { path, .. }
            | Self::KernelBootWithoutContainer { path }
            | Self::KernelBootPathsMissing { path }
            | Self::InvalidKernelArgs { path, .. }
            | Self::NegativeGracePeriod { path, .. }
            | Self::NicModelNotServed { path, .. }
            | Self::PortsNeedMasquerade { path }
            | Self::InvalidPort { path, .. }
            | Self::InvalidPortProtocol { path, .. }
            | Self::DuplicatePort { path, .. }
            | Self::LunNotServed { path }
            | Self::CpuModelNotServed { path, .. }
            | Self::SerialConsoleRequired { path }
            | Self::FeatureAlwaysOn { path, .. }
            | Self::SmmNotServed { path }
            | Self::ClockOffsetConflict { path }
            | Self::InvalidTimezone { path, .. }
            | Self::TimerNotServed { path, .. }
            | Self::ArchitectureNotServed { path, .. }
            | Self::MachineTypeNotServed { path, .. }
            | Self::InvalidFirmwareUuid { path, .. }
            | Self::InvalidFirmwareSerial { path, .. }
            | Self::BootloaderChoice { path }
            | Self::InvalidVolumeLabel { path, .. }
            | Self::AccessCredentialNotServed { path, .. }
            | Self::InstancetypeConflict { path }
            | Self::TopologyNotServed { path, .. }
            | Self::InstancetypeKind { path, .. }
            | Self::AccessCredentialNeedsCloudConfig { path, .. }
            | Self::InvalidRelativePath { path, .. }
            | Self::DownwardApiFieldChoice { path }
            | Self::SecureBootNotServed { path }
            | Self::PersistentEfiNotServed { path }
            | Self::BootloaderWithKernelBoot { path }
            | Self::HardwareIsolationAnnotation { path } => path,
        }
    }
}

/// Every problem found in one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationErrors {
    object: String,
    errors: Vec<ValidationError>,
}

impl ValidationErrors {
    /// Wraps the problems found in `object` ("VirtualMachine default/name").
    pub(super) fn new(object: String, errors: Vec<ValidationError>) -> Self {
        Self { object, errors }
    }

    /// "VirtualMachine default/name", for messages.
    pub fn object(&self) -> &str {
        &self.object
    }

    /// The problems, in field order.
    pub fn errors(&self) -> &[ValidationError] {
        &self.errors
    }

    /// The paths of all problems.
    pub fn paths(&self) -> Vec<&str> {
        self.errors.iter().map(ValidationError::path).collect()
    }

    /// Number of problems (at least 1).
    pub fn len(&self) -> usize {
        self.errors.len()
    }

    /// Always false: a `ValidationErrors` holds at least one problem.
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// Takes the problems out.
    pub fn into_errors(self) -> Vec<ValidationError> {
        self.errors
    }
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} is invalid ({} problem",
            self.object,
            self.errors.len()
        )?;
        if self.errors.len() != 1 {
            f.write_str("s")?;
        }
        f.write_str("):")?;
        for error in &self.errors {
            write!(f, "\n  - {error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationErrors {}
