//! Validation of `VirtualMachine` and `VirtualMachineInstance` objects.
//!
//! [`vm`] and [`vmi`] return every problem at once, each with the path of the offending
//! field (`spec.template.spec.domain.devices.disks[1].name`), like a validating admission
//! webhook. Run [`crate::defaults`] first: validation accepts what defaulting fills in
//! (a disk without `disk`/`cdrom`, an interface without binding) but reports everything
//! that defaulting cannot fix.

mod access;
mod clock;
mod config_volumes;
mod error;
mod firmware;
mod formats;
mod sizing;
pub use rate_limits::{rates, Rates};
pub use sizing::{instancetype, preference};
mod interface_ports;
mod rate_limits;

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use base64::Engine as _;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use tracing::{debug, instrument};

pub use error::{ValidationError, ValidationErrors};
pub use formats::{dns_label_check, dns_subdomain, parse_mac};

use crate::quantity::{ParsedQuantity, QuantityError};
use crate::v1alpha1::{
    DiskBus, FeatureState, HostDiskType, KernelBoot, Network, TemplateMetadata, VirtualMachine,
    VirtualMachineInstance, VirtualMachineInstanceSpec, Volume,
};
use formats::{label_value, qualified_name};

/// The CPU models served: both give the guest the host CPU's features that KVM passes on.
pub const SERVED_CPU_MODELS: [&str; 2] = ["host-passthrough", "host-model"];
/// The one guest architecture served, as KubeVirt writes it.
pub const SERVED_ARCHITECTURE: &str = "amd64";
/// Largest guest memory accepted (1 TiB).
pub const MAX_GUEST_MEMORY_BYTES: u64 = 1 << 40;
/// Largest number of vCPUs the launcher creates.
pub const MAX_VCPUS: u32 = 64;
/// Largest number of disks plus interfaces. The launcher gives each virtio-mmio device its
/// own I/O APIC pin: 19 pins (GSI 5 to 23) of which one is kept for the guest-agent console.
pub const MAX_VIRTIO_DEVICES: usize = 18;
/// Longest `kernelArgs`, leaving room for the launcher's own arguments in the 4 KiB
/// kernel command line.
pub const MAX_KERNEL_ARGS_BYTES: usize = 2048;
/// Longest disk serial number (virtio-blk `GET_ID` returns 20 bytes).
pub const MAX_SERIAL_BYTES: usize = 20;
/// Largest `userData`, `userDataBase64` or `networkData` of a `cloudInitNoCloud` volume
/// (each, as written in the manifest). Real cloud-configs are kilobytes; the limit keeps a
/// hostile megabyte out of the node's seed disk and well under the API's object limit.
pub const MAX_CLOUD_INIT_BYTES: usize = 256 * 1024;
/// The annotation Ironvisor does *not* use for hardware isolation (the field
/// `domain.features.hardwareIsolation` does); setting it is reported so it is not
/// silently ignored.
pub const HARDWARE_ISOLATION_ANNOTATION: &str = "ironvisor.io/hardware-isolation";

/// Validates a `VirtualMachine` (run [`crate::defaults::apply`] first).
#[instrument(level = "debug", skip_all, fields(name = vm.metadata.name.as_deref().unwrap_or("")))]
pub fn vm(vm: &VirtualMachine) -> Result<(), ValidationErrors> {
    let mut errors = Vec::new();
    object_meta(&vm.metadata, &mut errors);
    if vm.spec.running.is_some() && vm.spec.run_strategy.is_some() {
        errors.push(ValidationError::RunningAndRunStrategy {
            path: "spec.running".into(),
        });
    }
    if let Some(metadata) = &vm.spec.template.metadata {
        template_meta(metadata, "spec.template.metadata", &mut errors);
    }
    let template_errors = instance_spec(&vm.spec.template.spec, "spec.template.spec");
    // An instance type gives the memory the template leaves out.
    let sized = vm.spec.instancetype.is_some();
    errors.extend(
        template_errors
            .into_iter()
            .filter(|error| !(sized && matches!(error, ValidationError::MemoryMissing { .. }))),
    );
    sizing::references(vm, &mut errors);
    finish("VirtualMachine", &vm.metadata, errors)
}

/// Validates a `VirtualMachineInstance` (run [`crate::defaults::apply_vmi`] first).
#[instrument(level = "debug", skip_all, fields(name = vmi.metadata.name.as_deref().unwrap_or("")))]
pub fn vmi(vmi: &VirtualMachineInstance) -> Result<(), ValidationErrors> {
    let mut errors = Vec::new();
    object_meta(&vmi.metadata, &mut errors);
    errors.extend(instance_spec(&vmi.spec, "spec"));
    finish("VirtualMachineInstance", &vmi.metadata, errors)
}

fn finish(
    kind: &str,
    metadata: &ObjectMeta,
    errors: Vec<ValidationError>,
) -> Result<(), ValidationErrors> {
    let name = metadata
        .name
        .as_deref()
        .or(metadata.generate_name.as_deref())
        .unwrap_or("<unnamed>");
    let object = match metadata.namespace.as_deref() {
        Some(namespace) => format!("{kind} {namespace}/{name}"),
        None => format!("{kind} {name}"),
    };
    debug!(%object, problems = errors.len(), "validated");
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ValidationErrors::new(object, errors))
    }
}

/// Validates an instance spec whose path is `prefix` ("spec" for a VMI,
/// "spec.template.spec" for a VM) and returns every problem.
pub fn instance_spec(spec: &VirtualMachineInstanceSpec, prefix: &str) -> Vec<ValidationError> {
    let root = FieldPath::new(prefix);
    let mut errors = Vec::new();
    cpu(spec, &root, &mut errors);
    memory(spec, &root, &mut errors);
    resources(spec, &root, &mut errors);
    disks(spec, &root, &mut errors);
    volumes(spec, &root, &mut errors);
    interfaces(spec, &root, &mut errors);
    networks(spec, &root, &mut errors);
    if let Some(kernel_boot) = spec
        .domain
        .firmware
        .as_ref()
        .and_then(|firmware| firmware.kernel_boot.as_ref())
    {
        kernel(
            kernel_boot,
            &root.child("domain.firmware.kernelBoot"),
            &mut errors,
        );
    }
    kubevirt_fields(spec, &root, &mut errors);
    access::check(spec, &root, &mut errors);
    if let Some(seconds) = spec.termination_grace_period_seconds.filter(|s| *s < 0) {
        errors.push(ValidationError::NegativeGracePeriod {
            path: root.child("terminationGracePeriodSeconds").into(),
            value: seconds,
        });
    }
    label_map(
        &spec.node_selector,
        &root.child("nodeSelector"),
        true,
        &mut errors,
    );
    errors
}

/// A field path under construction.
#[derive(Debug, Clone)]
struct FieldPath(String);

impl FieldPath {
    fn new(root: &str) -> Self {
        Self(root.to_string())
    }

    fn child(&self, name: &str) -> Self {
        Self(format!("{}.{name}", self.0))
    }

    fn index(&self, index: usize) -> Self {
        Self(format!("{}[{index}]", self.0))
    }

    fn key(&self, key: &str) -> Self {
        Self(format!("{}[{key}]", self.0))
    }
}

impl From<FieldPath> for String {
    fn from(path: FieldPath) -> Self {
        path.0
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn object_meta(metadata: &ObjectMeta, errors: &mut Vec<ValidationError>) {
    let path = FieldPath::new("metadata");
    match (&metadata.name, &metadata.generate_name) {
        (Some(name), _) => dns_label(name, &path.child("name"), errors),
        (None, Some(prefix)) => {
            // generateName gets a 5-character suffix.
            let sample = format!("{prefix}abcde");
            dns_label(&sample, &path.child("generateName"), errors);
        }
        (None, None) => errors.push(ValidationError::Required {
            path: path.child("name").into(),
        }),
    }
    if let Some(namespace) = &metadata.namespace {
        dns_label(namespace, &path.child("namespace"), errors);
    }
    if let Some(labels) = &metadata.labels {
        label_map(labels, &path.child("labels"), true, errors);
    }
    if let Some(annotations) = &metadata.annotations {
        annotation_map(annotations, &path.child("annotations"), errors);
    }
}

fn template_meta(metadata: &TemplateMetadata, prefix: &str, errors: &mut Vec<ValidationError>) {
    let path = FieldPath::new(prefix);
    label_map(&metadata.labels, &path.child("labels"), true, errors);
    annotation_map(&metadata.annotations, &path.child("annotations"), errors);
}

fn annotation_map(
    annotations: &BTreeMap<String, String>,
    path: &FieldPath,
    errors: &mut Vec<ValidationError>,
) {
    label_map(annotations, path, false, errors);
    if annotations.contains_key(HARDWARE_ISOLATION_ANNOTATION) {
        errors.push(ValidationError::HardwareIsolationAnnotation {
            path: path.key(HARDWARE_ISOLATION_ANNOTATION).into(),
        });
    }
}

/// Checks label (or annotation, with `check_values` false) keys and values.
fn label_map(
    map: &BTreeMap<String, String>,
    path: &FieldPath,
    check_values: bool,
    errors: &mut Vec<ValidationError>,
) {
    for (key, value) in map {
        if let Err(reason) = qualified_name(key) {
            errors.push(ValidationError::InvalidLabel {
                path: path.key(key).into(),
                value: key.clone(),
                part: "key",
                reason,
            });
        }
        if !check_values {
            continue;
        }
        if let Err(reason) = label_value(value) {
            errors.push(ValidationError::InvalidLabel {
                path: path.key(key).into(),
                value: value.clone(),
                part: "value",
                reason,
            });
        }
    }
}

fn cpu(spec: &VirtualMachineInstanceSpec, root: &FieldPath, errors: &mut Vec<ValidationError>) {
    let Some(cpu) = &spec.domain.cpu else {
        return;
    };
    let path = root.child("domain.cpu");
    for (name, factor) in [
        ("cores", cpu.cores),
        ("sockets", cpu.sockets),
        ("threads", cpu.threads),
    ] {
        if factor == Some(0) {
            errors.push(ValidationError::CpuZero {
                path: path.child(name).into(),
            });
        }
    }
    let count = cpu.vcpus();
    if count > MAX_VCPUS {
        errors.push(ValidationError::TooManyVcpus {
            path: path.into(),
            count,
            max: MAX_VCPUS,
        });
    }
}

/// Parses a quantity into bytes, reporting problems at `path`.
fn bytes_at(
    quantity: &Quantity,
    path: &FieldPath,
    errors: &mut Vec<ValidationError>,
) -> Option<u64> {
    match crate::quantity::to_bytes(quantity) {
        Ok(bytes) => Some(bytes),
        Err(source) => {
            errors.push(ValidationError::InvalidQuantity {
                path: path.clone().into(),
                source,
            });
            None
        }
    }
}

fn memory(spec: &VirtualMachineInstanceSpec, root: &FieldPath, errors: &mut Vec<ValidationError>) {
    let domain = &spec.domain;
    let requested = domain.resources.as_ref().and_then(|resources| {
        match (
            resources.requests.get("memory"),
            resources.limits.get("memory"),
        ) {
            (Some(request), _) => Some((request, "domain.resources.requests")),
            (None, Some(limit)) => Some((limit, "domain.resources.limits")),
            (None, None) => None,
        }
    });
    let (quantity, path) = match (&domain.memory, requested) {
        (Some(memory), _) => (&memory.guest, root.child("domain.memory.guest")),
        (None, Some((quantity, field))) => (quantity, root.child(field).key("memory")),
        (None, None) => {
            errors.push(ValidationError::MemoryMissing {
                path: root.child("domain.memory.guest").into(),
            });
            return;
        }
    };
    let Some(bytes) = bytes_at(quantity, &path, errors) else {
        return;
    };
    // An unparsable limit is reported by `resources`.
    let limit = domain
        .resources
        .as_ref()
        .and_then(|resources| resources.limits.get("memory"))
        .and_then(|limit| Some((limit, crate::quantity::to_bytes(limit).ok()?)));
    if bytes == 0 {
        errors.push(ValidationError::MemoryZero { path: path.into() });
    } else if bytes > MAX_GUEST_MEMORY_BYTES {
        errors.push(ValidationError::MemoryTooLarge {
            path: path.into(),
            value: quantity.0.clone(),
            bytes,
        });
    } else if let Some((limit, limit_bytes)) = limit {
        if bytes > limit_bytes {
            errors.push(ValidationError::MemoryAboveLimit {
                path: path.into(),
                guest: quantity.0.clone(),
                limit: limit.0.clone(),
            });
        }
    }
}

/// Value used to compare requests and limits: millicores for cpu, rounded-up units
/// otherwise.
fn resource_amount(resource: &str, quantity: &Quantity) -> Result<i64, QuantityError> {
    let parsed = ParsedQuantity::parse(&quantity.0)?;
    if parsed.is_negative() {
        return Err(QuantityError::Negative {
            input: quantity.0.clone(),
        });
    }
    if resource == "cpu" {
        parsed.milli_value()
    } else {
        parsed.value()
    }
}

fn resources(
    spec: &VirtualMachineInstanceSpec,
    root: &FieldPath,
    errors: &mut Vec<ValidationError>,
) {
    let Some(resources) = &spec.domain.resources else {
        return;
    };
    let path = root.child("domain.resources");
    let requests = amounts(&resources.requests, &path.child("requests"), errors);
    let limits = amounts(&resources.limits, &path.child("limits"), errors);
    for (resource, (request, request_text)) in &requests {
        let Some((limit, limit_text)) = limits.get(resource) else {
            continue;
        };
        if request > limit {
            errors.push(ValidationError::RequestAboveLimit {
                path: path.child("requests").key(resource).into(),
                request: request_text.0.clone(),
                limit: limit_text.0.clone(),
            });
        }
    }
}

/// Parses every quantity of a requests/limits map; reports the unparsable ones.
fn amounts<'a>(
    map: &'a BTreeMap<String, Quantity>,
    path: &FieldPath,
    errors: &mut Vec<ValidationError>,
) -> BTreeMap<&'a str, (i64, &'a Quantity)> {
    let mut amounts = BTreeMap::new();
    for (resource, quantity) in map {
        match resource_amount(resource, quantity) {
            Ok(amount) => {
                amounts.insert(resource.as_str(), (amount, quantity));
            }
            Err(source) => errors.push(ValidationError::InvalidQuantity {
                path: path.key(resource).into(),
                source,
            }),
        }
    }
    amounts
}

/// Reports names that are not DNS labels and names used twice; returns name → path.
fn unique_names<'a>(
    names: impl Iterator<Item = &'a str>,
    list: &FieldPath,
    errors: &mut Vec<ValidationError>,
) -> HashMap<&'a str, FieldPath> {
    let mut seen: HashMap<&str, FieldPath> = HashMap::new();
    for (index, name) in names.enumerate() {
        let path = list.index(index).child("name");
        if name.is_empty() {
            errors.push(ValidationError::Required { path: path.into() });
            continue;
        }
        dns_label(name, &path, errors);
        match seen.get(name) {
            Some(first) => errors.push(ValidationError::DuplicateName {
                path: path.into(),
                name: name.to_string(),
                first: first.to_string(),
            }),
            None => {
                seen.insert(name, path);
            }
        }
    }
    seen
}

fn disks(spec: &VirtualMachineInstanceSpec, root: &FieldPath, errors: &mut Vec<ValidationError>) {
    let devices = &spec.domain.devices;
    let list = root.child("domain.devices.disks");
    unique_names(devices.disks.iter().map(|d| d.name.as_str()), &list, errors);
    let mut boot_orders: HashMap<u32, FieldPath> = HashMap::new();
    for (index, disk) in devices.disks.iter().enumerate() {
        let path = list.index(index);
        if disk.disk.is_some() && disk.cdrom.is_some() {
            errors.push(ValidationError::DiskTargetCount {
                path: path.clone().into(),
                name: disk.name.clone(),
            });
        }
        let buses = [
            (disk.disk.as_ref().and_then(|d| d.bus), "disk.bus"),
            (disk.cdrom.as_ref().and_then(|c| c.bus), "cdrom.bus"),
        ];
        if disk.lun.is_some() {
            errors.push(ValidationError::LunNotServed {
                path: path.child("lun").into(),
            });
        }
        for (bus, field) in buses {
            // SATA is KubeVirt's default on amd64: served as virtio-blk, with a warning.
            if let Some(bus) = bus.filter(|bus| !matches!(bus, DiskBus::Virtio | DiskBus::Sata)) {
                errors.push(ValidationError::UnsupportedBus {
                    path: path.child(field).into(),
                    bus: bus.as_str(),
                });
            }
        }
        if let Some(limit) = &disk.rate_limit {
            rate_limits::check(limit, &path.child("rateLimit"), errors);
        }
        if let Some(serial) = disk.serial.as_ref().filter(|s| !formats::serial(s)) {
            errors.push(ValidationError::InvalidSerial {
                path: path.child("serial").into(),
                value: serial.clone(),
            });
        }
        if let Some(order) = disk.boot_order {
            let order_path = path.child("bootOrder");
            if order == 0 {
                errors.push(ValidationError::BootOrderZero {
                    path: order_path.into(),
                });
            } else if let Some(first) = boot_orders.get(&order) {
                errors.push(ValidationError::DuplicateBootOrder {
                    path: order_path.into(),
                    value: order,
                    first: first.to_string(),
                });
            } else {
                boot_orders.insert(order, order_path);
            }
        }
        if !disk.name.is_empty() && !spec.volumes.iter().any(|v| v.name == disk.name) {
            errors.push(ValidationError::DiskWithoutVolume {
                path: path.child("name").into(),
                name: disk.name.clone(),
            });
        }
    }
    let count = devices.disks.len() + devices.interfaces.len();
    if count > MAX_VIRTIO_DEVICES {
        errors.push(ValidationError::TooManyDevices {
            path: root.child("domain.devices").into(),
            count,
            max: MAX_VIRTIO_DEVICES,
        });
    }
}

fn volumes(spec: &VirtualMachineInstanceSpec, root: &FieldPath, errors: &mut Vec<ValidationError>) {
    let list = root.child("volumes");
    unique_names(spec.volumes.iter().map(|v| v.name.as_str()), &list, errors);
    for (index, volume) in spec.volumes.iter().enumerate() {
        let path = list.index(index);
        let sources = volume.sources();
        if sources.len() != 1 {
            let found = if sources.is_empty() {
                "none".to_string()
            } else {
                sources
                    .iter()
                    .map(|kind| kind.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            errors.push(ValidationError::VolumeSourceCount {
                path: path.clone().into(),
                name: volume.name.clone(),
                found,
            });
        }
        volume_source(volume, &path, errors);
        let used = spec
            .domain
            .devices
            .disks
            .iter()
            .any(|disk| disk.name == volume.name);
        if !volume.name.is_empty() && !used {
            errors.push(ValidationError::VolumeWithoutDisk {
                path: path.child("name").into(),
                name: volume.name.clone(),
            });
        }
    }
}

fn volume_source(volume: &Volume, path: &FieldPath, errors: &mut Vec<ValidationError>) {
    config_volumes::check(volume, path, errors);
    if let Some(source) = &volume.container_disk {
        image(&source.image, &path.child("containerDisk.image"), errors);
    }
    if let Some(source) = &volume.persistent_volume_claim {
        let claim = path.child("persistentVolumeClaim.claimName");
        if source.claim_name.is_empty() {
            errors.push(ValidationError::Required { path: claim.into() });
        } else if let Err(reason) = dns_subdomain(&source.claim_name) {
            errors.push(ValidationError::InvalidName {
                path: claim.into(),
                value: source.claim_name.clone(),
                reason,
            });
        }
    }
    if let Some(host_disk) = &volume.host_disk {
        let host_path = path.child("hostDisk");
        absolute_path(&host_disk.path, &host_path.child("path"), errors);
        match &host_disk.capacity {
            Some(capacity) => capacity_at(capacity, &host_path.child("capacity"), errors),
            None if host_disk.type_ == HostDiskType::DiskOrCreate => {
                errors.push(ValidationError::HostDiskCapacityRequired {
                    path: host_path.child("capacity").into(),
                });
            }
            None => {}
        }
    }
    if let Some(empty_disk) = &volume.empty_disk {
        capacity_at(
            &empty_disk.capacity,
            &path.child("emptyDisk.capacity"),
            errors,
        );
    }
    if let Some(cloud_init) = &volume.cloud_init_no_cloud {
        let cloud_path = path.child("cloudInitNoCloud");
        match (&cloud_init.user_data, &cloud_init.user_data_base64) {
            (Some(_), Some(_)) => errors.push(ValidationError::CloudInitUserDataConflict {
                path: cloud_path.child("userDataBase64").into(),
            }),
            (None, None) if cloud_init.network_data.is_none() => {
                errors.push(ValidationError::CloudInitEmpty {
                    path: cloud_path.clone().into(),
                });
            }
            _ => {}
        }
        for (field, data) in [
            ("userData", &cloud_init.user_data),
            ("userDataBase64", &cloud_init.user_data_base64),
            ("networkData", &cloud_init.network_data),
        ] {
            if let Some(bytes) = data
                .as_ref()
                .map(String::len)
                .filter(|n| *n > MAX_CLOUD_INIT_BYTES)
            {
                errors.push(ValidationError::CloudInitTooLarge {
                    path: cloud_path.child(field).into(),
                    bytes,
                    max: MAX_CLOUD_INIT_BYTES,
                });
            }
        }
        if let Some(encoded) = &cloud_init.user_data_base64 {
            // YAML block scalars wrap long base64 text over lines.
            let compact: String = encoded.split_whitespace().collect();
            if let Err(error) = base64::engine::general_purpose::STANDARD.decode(compact) {
                errors.push(ValidationError::InvalidBase64 {
                    path: cloud_path.child("userDataBase64").into(),
                    reason: error.to_string(),
                });
            }
        }
    }
}

fn capacity_at(capacity: &Quantity, path: &FieldPath, errors: &mut Vec<ValidationError>) {
    if bytes_at(capacity, path, errors) == Some(0) {
        errors.push(ValidationError::CapacityZero {
            path: path.clone().into(),
        });
    }
}

fn interfaces(
    spec: &VirtualMachineInstanceSpec,
    root: &FieldPath,
    errors: &mut Vec<ValidationError>,
) {
    let list = root.child("domain.devices.interfaces");
    let interfaces = &spec.domain.devices.interfaces;
    unique_names(interfaces.iter().map(|i| i.name.as_str()), &list, errors);
    let mut macs: HashMap<[u8; 6], FieldPath> = HashMap::new();
    for (index, interface) in interfaces.iter().enumerate() {
        let path = list.index(index);
        if let Some(limit) = &interface.rate_limit {
            rate_limits::check(limit, &path.child("rateLimit"), errors);
        }
        if interface.masquerade.is_some() && interface.bridge.is_some() {
            errors.push(ValidationError::InterfaceBindingCount {
                path: path.clone().into(),
                name: interface.name.clone(),
            });
        }
        let network = spec.networks.iter().find(|n| n.name == interface.name);
        match network {
            None if !interface.name.is_empty() => {
                errors.push(ValidationError::InterfaceWithoutNetwork {
                    path: path.child("name").into(),
                    name: interface.name.clone(),
                });
            }
            Some(network) if interface.masquerade.is_some() && network.pod.is_none() => {
                errors.push(ValidationError::MasqueradeNeedsPodNetwork {
                    path: path.child("masquerade").into(),
                    network: network.name.clone(),
                });
            }
            _ => {}
        }
        interface_ports::check(interface, &path, errors);
        if let Some(mac) = &interface.mac_address {
            let mac_path = path.child("macAddress");
            match parse_mac(mac) {
                Ok(octets) => match macs.get(&octets) {
                    Some(first) => errors.push(ValidationError::DuplicateMac {
                        path: mac_path.into(),
                        value: mac.clone(),
                        first: first.to_string(),
                    }),
                    None => {
                        macs.insert(octets, mac_path);
                    }
                },
                Err(reason) => errors.push(ValidationError::InvalidMac {
                    path: mac_path.into(),
                    value: mac.clone(),
                    reason,
                }),
            }
        }
    }
}

fn networks(
    spec: &VirtualMachineInstanceSpec,
    root: &FieldPath,
    errors: &mut Vec<ValidationError>,
) {
    let list = root.child("networks");
    unique_names(spec.networks.iter().map(|n| n.name.as_str()), &list, errors);
    let mut first_pod: Option<FieldPath> = None;
    for (index, network) in spec.networks.iter().enumerate() {
        let path = list.index(index);
        network_source(network, &path, &mut first_pod, errors);
        let used = spec
            .domain
            .devices
            .interfaces
            .iter()
            .any(|interface| interface.name == network.name);
        if !network.name.is_empty() && !used {
            errors.push(ValidationError::NetworkWithoutInterface {
                path: path.child("name").into(),
                name: network.name.clone(),
            });
        }
    }
}

fn network_source(
    network: &Network,
    path: &FieldPath,
    first_pod: &mut Option<FieldPath>,
    errors: &mut Vec<ValidationError>,
) {
    if network.pod.is_some() == network.multus.is_some() {
        errors.push(ValidationError::NetworkSourceCount {
            path: path.clone().into(),
            name: network.name.clone(),
        });
    }
    if network.pod.is_some() {
        let pod_path = path.child("pod");
        match first_pod {
            Some(first) => errors.push(ValidationError::MultiplePodNetworks {
                path: pod_path.into(),
                first: first.to_string(),
            }),
            None => *first_pod = Some(pod_path),
        }
    }
    if let Some(multus) = &network.multus {
        let name_path = path.child("multus.networkName");
        let mut parts = multus.network_name.splitn(2, '/');
        let (namespace, name) = match (parts.next(), parts.next()) {
            (Some(namespace), Some(name)) => (Some(namespace), name),
            (Some(name), None) => (None, name),
            _ => (None, ""),
        };
        if multus.network_name.is_empty() {
            errors.push(ValidationError::Required {
                path: name_path.into(),
            });
        } else if let Err(reason) = namespace
            .map_or(Ok(()), dns_label_check)
            .and_then(|()| dns_subdomain(name))
        {
            errors.push(ValidationError::InvalidName {
                path: name_path.into(),
                value: multus.network_name.clone(),
                reason,
            });
        }
    }
}

fn kernel(kernel_boot: &KernelBoot, path: &FieldPath, errors: &mut Vec<ValidationError>) {
    match &kernel_boot.container {
        None => errors.push(ValidationError::KernelBootWithoutContainer {
            path: path.child("container").into(),
        }),
        Some(container) => {
            let container_path = path.child("container");
            image(&container.image, &container_path.child("image"), errors);
            if container.kernel_path.is_none() && container.initrd_path.is_none() {
                errors.push(ValidationError::KernelBootPathsMissing {
                    path: container_path.clone().into(),
                });
            }
            for (value, field) in [
                (&container.kernel_path, "kernelPath"),
                (&container.initrd_path, "initrdPath"),
            ] {
                if let Some(value) = value {
                    absolute_path(value, &container_path.child(field), errors);
                }
            }
        }
    }
    if let Some(args) = &kernel_boot.kernel_args {
        let reason = if args.len() > MAX_KERNEL_ARGS_BYTES {
            Some("is longer than 2048 bytes")
        } else if args.chars().any(char::is_control) {
            Some("must not contain control characters (newlines, tabs, NUL)")
        } else {
            None
        };
        if let Some(reason) = reason {
            errors.push(ValidationError::InvalidKernelArgs {
                path: path.child("kernelArgs").into(),
                reason,
            });
        }
    }
}

fn absolute_path(value: &str, path: &FieldPath, errors: &mut Vec<ValidationError>) {
    if !formats::absolute_path(value) {
        errors.push(ValidationError::InvalidPath {
            path: path.clone().into(),
            value: value.to_string(),
        });
    }
}

fn image(value: &str, path: &FieldPath, errors: &mut Vec<ValidationError>) {
    if value.is_empty() {
        errors.push(ValidationError::Required {
            path: path.clone().into(),
        });
    } else if let Err(reason) = formats::image_reference(value) {
        errors.push(ValidationError::InvalidImage {
            path: path.clone().into(),
            value: value.to_string(),
            reason,
        });
    }
}

fn dns_label(value: &str, path: &FieldPath, errors: &mut Vec<ValidationError>) {
    if let Err(reason) = dns_label_check(value) {
        errors.push(ValidationError::InvalidName {
            path: path.clone().into(),
            value: value.to_string(),
            reason,
        });
    }
}

/// The fields KubeVirt's webhook writes into every VM: served where Ironvisor can serve
/// them, refused by name where it cannot.
fn kubevirt_fields(
    spec: &VirtualMachineInstanceSpec,
    root: &FieldPath,
    errors: &mut Vec<ValidationError>,
) {
    if let Some(architecture) = spec.architecture.as_deref() {
        if architecture != SERVED_ARCHITECTURE {
            errors.push(ValidationError::ArchitectureNotServed {
                path: root.child("architecture").into(),
                value: architecture.to_string(),
            });
        }
    }
    let machine_type = spec
        .domain
        .machine
        .as_ref()
        .and_then(|machine| machine.machine_type.as_deref());
    if let Some(machine_type) = machine_type {
        if !formats::q35_machine(machine_type) {
            errors.push(ValidationError::MachineTypeNotServed {
                path: root.child("domain.machine.type").into(),
                value: machine_type.to_string(),
            });
        }
    }
    let model = spec
        .domain
        .cpu
        .as_ref()
        .and_then(|cpu| cpu.model.as_deref());
    if let Some(model) = model.filter(|model| !SERVED_CPU_MODELS.contains(model)) {
        errors.push(ValidationError::CpuModelNotServed {
            path: root.child("domain.cpu.model").into(),
            value: model.to_string(),
        });
    }
    if spec.domain.devices.autoattach_serial_console == Some(false) {
        errors.push(ValidationError::SerialConsoleRequired {
            path: root.child("domain.devices.autoattachSerialConsole").into(),
        });
    }
    if let Some(clock_spec) = &spec.domain.clock {
        clock::check(clock_spec, &root.child("domain.clock"), errors);
    }
    if let Some(features) = &spec.domain.features {
        for (state, name) in [(&features.acpi, "acpi"), (&features.apic, "apic")] {
            if state.as_ref().is_some_and(|state| !state.is_enabled()) {
                errors.push(ValidationError::FeatureAlwaysOn {
                    path: root
                        .child("domain.features")
                        .child(name)
                        .child("enabled")
                        .into(),
                    feature: name,
                });
            }
        }
        if features.smm.as_ref().is_some_and(FeatureState::is_enabled) {
            errors.push(ValidationError::SmmNotServed {
                path: root.child("domain.features.smm").into(),
            });
        }
    }
    if let Some(firmware) = &spec.domain.firmware {
        firmware::check(firmware, &root.child("domain.firmware"), errors);
    }
}
