//! The launcher Pod of a `VirtualMachineInstance`: a pure function from the instance to
//! the Pod the controller creates.
//!
//! Layout (the pod's `virt-launcher`, `ironvisor-handler virt-launcher`, relies on it):
//!
//! | path in the pod | volume | filled by |
//! |---|---|---|
//! | `/var/run/ironvisor/vmi/vmi.json` | downward API | the [`ANNOTATION_VMI`] annotation |
//! | `/var/run/ironvisor/tools/busybox` | emptyDir | init container `tools` (launcher image) |
//! | `/var/run/ironvisor/container-disks/<volume>/` | emptyDir | init container `volume-<volume>`: the containerDisk image's `/disk` |
//! | `/var/run/ironvisor/kernel/{kernel,initrd}` | emptyDir | init container `kernel-boot` |
//! | `/var/run/ironvisor/sockets/` | emptyDir | the launcher's API and console sockets |
//! | `/var/run/ironvisor/libvirt/` | emptyDir | `HOME` and `XDG_RUNTIME_DIR` of the compute container: a per-user libvirt's state |
//! | `/var/run/ironvisor/config-volumes/<volume>/` | configMap, secret, projected, downward API | the kubelet ([`crate::config_volumes`]) |
//! | `/var/run/ironvisor/claims/<volume>/`, `/var/run/ironvisor/claim-devices/<volume>` | persistentVolumeClaim (Filesystem, Block) | the claim's CSI driver ([`crate::claims`]) |
//!
//! Images are copied out by running them as init containers with the launcher image's
//! static busybox (KubeVirt's containerDisk convention: a disk image is an OCI image with
//! one file under `/disk/`); nothing is read from a host path.
//!
//! Who the containers run as: [`crate::pod_security`].

use std::collections::BTreeMap;

use ironvisor_crds::pod_claims::PodClaim;
use ironvisor_crds::quantity;
use ironvisor_crds::v1alpha1::{HardwareIsolation, VirtualMachineInstance};
use k8s_openapi::api::core::v1::{
    Container, DownwardAPIVolumeFile, DownwardAPIVolumeSource, EmptyDirVolumeSource, EnvVar,
    ExecAction, ObjectFieldSelector, Pod, PodSpec, Probe, ResourceRequirements, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;
use serde_json::json;

use crate::pod_security::LauncherIdentity;

pub use ironvisor_crds::cluster::KVM_RESOURCE;
use ironvisor_crds::cluster::{
    launcher_pod_name, ANNOTATION_VMI, COMPONENT_LAUNCHER, COMPUTE_CONTAINER, LABEL_COMPONENT,
    LABEL_CREATED_BY, LABEL_VMI_NAME, NODE_LABEL_CPU_MANAGER, NODE_LABEL_HARDWARE_KVM,
    TUN_RESOURCE,
};

const VMI_DIR: &str = "/var/run/ironvisor/vmi";
const VMI_FILE: &str = "vmi.json";
const TOOLS_DIR: &str = "/var/run/ironvisor/tools";
const BUSYBOX: &str = "/var/run/ironvisor/tools/busybox";
const CONTAINER_DISKS_DIR: &str = "/var/run/ironvisor/container-disks";
const KERNEL_DIR: &str = "/var/run/ironvisor/kernel";
const SOCKETS_DIR: &str = "/var/run/ironvisor/sockets";
/// The compute container's home: libvirt's per-user state (software emulation).
const LIBVIRT_HOME: &str = "/var/run/ironvisor/libvirt";
/// Seconds the launcher gets beyond the guest's grace period to hard-stop and clean up.
const LAUNCHER_EXTRA_GRACE_SECONDS: i64 = 15;

/// Why no pod can be made for an instance (the instance fails with this reason).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LauncherPodError {
    /// The instance has no name or UID yet.
    #[error("the instance has no {0} yet")]
    Metadata(&'static str),
    /// Guest memory is missing or not a valid quantity.
    #[error("spec.domain.memory.guest: {0}")]
    Memory(String),
    /// The instance could not be serialized for the pod.
    #[error("the instance cannot be serialized: {0}")]
    Serialize(String),
    /// A hostDisk the pod may not be given.
    #[error(transparent)]
    HostDisk(#[from] crate::host_disks::HostDiskError),
    /// A persistentVolumeClaim volume whose claim was not read first.
    #[error("spec.volumes[{0}]: its PersistentVolumeClaim was not read")]
    UnreadClaim(String),
}

impl LauncherPodError {
    /// CamelCase reason for the instance's status and events.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Metadata(_) | Self::Serialize(_) => "InvalidInstance",
            Self::Memory(_) => "InvalidMemory",
            Self::HostDisk(_) => "HostDiskNotAllowed",
            Self::UnreadClaim(_) => "PersistentVolumeClaimUnusable",
        }
    }
}

/// Settings of the launcher pods, from the controller's command line.
#[derive(Debug, Clone, PartialEq)]
pub struct LauncherPodSettings {
    /// The launcher image (`docker.io/ironvisor/launcher:<version>`).
    pub launcher_image: String,
    /// Pull policy of the launcher image and of disk and kernel images.
    pub image_pull_policy: String,
    /// Memory the launcher needs beyond guest memory (bytes).
    pub memory_overhead_bytes: u64,
    /// CPU request per vCPU in millicores when vCPUs are not dedicated.
    pub cpu_request_millis_per_vcpu: u32,
    /// The node directory hostDisk volumes must be under; `None` refuses them.
    pub host_disk_root: Option<std::path::PathBuf>,
}

/// The launcher pod of `vmi`, whose persistentVolumeClaim volumes are `claims`
/// ([`crate::claims::read_claims`]).
pub fn launcher_pod(
    vmi: &VirtualMachineInstance,
    settings: &LauncherPodSettings,
    claims: &[PodClaim],
) -> Result<Pod, LauncherPodError> {
    let name = vmi
        .metadata
        .name
        .clone()
        .ok_or(LauncherPodError::Metadata("name"))?;
    let uid = vmi
        .metadata
        .uid
        .clone()
        .ok_or(LauncherPodError::Metadata("uid"))?;
    // A bare instance created with kubectl has not been defaulted (there is no mutating
    // webhook yet): default it here, so the pod and its launcher see the same spec.
    let mut defaulted = vmi.spec.clone();
    ironvisor_crds::defaults::apply_instance_spec(&mut defaulted);
    let spec = &defaulted;
    let guest = spec
        .domain
        .memory
        .as_ref()
        .ok_or_else(|| LauncherPodError::Memory("is not set".into()))?;
    let guest_bytes =
        quantity::to_bytes(&guest.guest).map_err(|e| LauncherPodError::Memory(e.to_string()))?;

    let mut volumes = vec![
        downward_vmi_volume(),
        empty_dir("tools"),
        empty_dir("container-disks"),
        empty_dir("kernel"),
        empty_dir("sockets"),
        empty_dir("libvirt"),
    ];
    let config = crate::config_volumes::config_volumes(spec);
    volumes.extend(config.volumes);
    let host_disks = crate::host_disks::host_disks(spec, settings.host_disk_root.as_deref())?;
    let identity = LauncherIdentity::for_pod(!host_disks.volumes.is_empty());
    volumes.extend(host_disks.volumes);
    let claim_mounts = crate::claims::claim_mounts(spec, claims);
    volumes.extend(claim_mounts.volumes);
    volumes.sort_by(|a, b| a.name.cmp(&b.name));
    let mut init_containers = vec![tools_container(settings)];
    for volume in &spec.volumes {
        if let Some(disk) = &volume.container_disk {
            init_containers.push(container_disk_copier(&volume.name, &disk.image, settings));
        } else if volume.persistent_volume_claim.is_some()
            && !claims.iter().any(|c| c.volume == volume.name)
        {
            return Err(LauncherPodError::UnreadClaim(volume.name.clone()));
        }
    }
    if let Some(boot) = spec
        .domain
        .firmware
        .as_ref()
        .and_then(|f| f.kernel_boot.as_ref())
        .and_then(|k| k.container.as_ref())
    {
        init_containers.push(kernel_copier(
            &boot.image,
            boot.kernel_path.as_deref().unwrap_or("/boot/vmlinuz"),
            boot.initrd_path.as_deref(),
            settings,
        ));
    }

    let mut node_selector = spec.node_selector.clone();
    if spec.hardware_isolation() == HardwareIsolation::Required {
        node_selector.insert(NODE_LABEL_HARDWARE_KVM.into(), "true".into());
    }
    if spec.dedicated_cpu_placement() {
        // CPUs of its own come from the kubelet's static CPU manager policy, and only to
        // Guaranteed pods: every container, init containers too, with limits equal to
        // its requests (the compute container asks for whole CPUs).
        node_selector.insert(NODE_LABEL_CPU_MANAGER.into(), "true".into());
        for container in &mut init_containers {
            container.resources = Some(guaranteed_copier_resources());
        }
    }
    let grace = spec
        .termination_grace_period_seconds
        .unwrap_or(ironvisor_crds::defaults::DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS);

    let mut labels: BTreeMap<String, String> = vmi.metadata.labels.clone().unwrap_or_default();
    labels.insert(LABEL_COMPONENT.into(), COMPONENT_LAUNCHER.into());
    labels.insert(LABEL_CREATED_BY.into(), uid.clone());
    labels.insert(LABEL_VMI_NAME.into(), truncate_label_value(&name));

    let mut compute = compute_container(
        settings,
        guest_bytes,
        spec.vcpus(),
        spec.dedicated_cpu_placement(),
        !spec.domain.devices.interfaces.is_empty(),
    );
    compute.volume_mounts.get_or_insert_with(Vec::new).extend(
        config
            .mounts
            .into_iter()
            .chain(host_disks.mounts)
            .chain(claim_mounts.mounts),
    );
    if !claim_mounts.devices.is_empty() {
        compute.volume_devices = Some(claim_mounts.devices);
    }
    compute
        .command
        .get_or_insert_with(Vec::new)
        .extend(claim_mounts.args);
    for container in init_containers.iter_mut().chain([&mut compute]) {
        container.security_context = Some(identity.container_context());
    }

    let pod = Pod {
        metadata: ObjectMeta {
            name: Some(launcher_pod_name(&name, &uid)),
            namespace: vmi.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([(
                ANNOTATION_VMI.to_string(),
                vmi_document(vmi, spec)?,
            )])),
            owner_references: Some(vec![owner_reference(&name, &uid)]),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            init_containers: Some(init_containers),
            containers: vec![compute],
            volumes: Some(volumes),
            security_context: Some(identity.pod_context()),
            restart_policy: Some("Never".into()),
            automount_service_account_token: Some(false),
            service_account_name: config.service_account,
            enable_service_links: Some(false),
            hostname: hostname(&name),
            termination_grace_period_seconds: Some(grace.max(0) + LAUNCHER_EXTRA_GRACE_SECONDS),
            node_selector: (!node_selector.is_empty()).then_some(node_selector),
            affinity: spec.affinity.clone(),
            tolerations: (!spec.tolerations.is_empty()).then(|| spec.tolerations.clone()),
            ..PodSpec::default()
        }),
        status: None,
    };
    Ok(pod)
}

/// The instance as the pod's downward-API file carries it: identity and spec only.
fn vmi_document(
    vmi: &VirtualMachineInstance,
    spec: &ironvisor_crds::v1alpha1::VirtualMachineInstanceSpec,
) -> Result<String, LauncherPodError> {
    let document = json!({
        "apiVersion": ironvisor_crds::v1alpha1::API_VERSION,
        "kind": ironvisor_crds::v1alpha1::VIRTUAL_MACHINE_INSTANCE_KIND,
        "metadata": {
            "name": vmi.metadata.name,
            "namespace": vmi.metadata.namespace,
            "uid": vmi.metadata.uid,
        },
        "spec": spec,
    });
    serde_json::to_string(&document).map_err(|e| LauncherPodError::Serialize(e.to_string()))
}

fn owner_reference(name: &str, uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: VirtualMachineInstance::api_version(&()).into_owned(),
        kind: VirtualMachineInstance::kind(&()).into_owned(),
        name: name.into(),
        uid: uid.into(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Pod host name: the instance name when it is a valid DNS label.
fn hostname(name: &str) -> Option<String> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    valid.then(|| name.to_string())
}

fn truncate_label_value(value: &str) -> String {
    let mut out: String = value.chars().take(63).collect();
    while out.ends_with(['-', '.', '_']) {
        out.pop();
    }
    out
}

fn empty_dir(name: &str) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }
}

fn downward_vmi_volume() -> Volume {
    Volume {
        name: "vmi".into(),
        downward_api: Some(DownwardAPIVolumeSource {
            items: Some(vec![DownwardAPIVolumeFile {
                path: VMI_FILE.into(),
                field_ref: Some(ObjectFieldSelector {
                    field_path: format!("metadata.annotations['{ANNOTATION_VMI}']"),
                    api_version: None,
                }),
                ..DownwardAPIVolumeFile::default()
            }]),
            default_mode: Some(0o444),
        }),
        ..Volume::default()
    }
}

fn env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    }
}

/// Small fixed resources of the copy-out init containers.
fn copier_resources() -> ResourceRequirements {
    let quantities = BTreeMap::from([
        ("cpu".to_string(), Quantity("10m".into())),
        ("memory".to_string(), Quantity("64Mi".into())),
    ]);
    ResourceRequirements {
        requests: Some(quantities.clone()),
        limits: Some(BTreeMap::from([(
            "memory".to_string(),
            Quantity("256Mi".into()),
        )])),
        ..ResourceRequirements::default()
    }
}

/// The copiers' resources in a Guaranteed pod: requests equal limits. More CPU than in a
/// Burstable pod, where the copy may use idle CPU beyond its request; here it is capped.
fn guaranteed_copier_resources() -> ResourceRequirements {
    let quantities = BTreeMap::from([
        ("cpu".to_string(), Quantity("200m".into())),
        ("memory".to_string(), Quantity("256Mi".into())),
    ]);
    ResourceRequirements {
        requests: Some(quantities.clone()),
        limits: Some(quantities),
        ..ResourceRequirements::default()
    }
}

fn tools_container(settings: &LauncherPodSettings) -> Container {
    Container {
        name: "tools".into(),
        image: Some(settings.launcher_image.clone()),
        image_pull_policy: Some(settings.image_pull_policy.clone()),
        command: Some(vec!["cp".into(), "/bin/busybox".into(), BUSYBOX.into()]),
        volume_mounts: Some(vec![mount("tools", TOOLS_DIR, false)]),
        resources: Some(copier_resources()),
        ..Container::default()
    }
}

/// Init container name of a containerDisk volume (container names are DNS labels).
fn volume_container_name(volume: &str) -> String {
    truncate_label_value(&format!("volume-{volume}"))
}

fn container_disk_copier(volume: &str, image: &str, settings: &LauncherPodSettings) -> Container {
    Container {
        name: volume_container_name(volume),
        image: Some(image.into()),
        image_pull_policy: Some(settings.image_pull_policy.clone()),
        command: Some(vec![
            BUSYBOX.into(),
            "cp".into(),
            "-r".into(),
            "/disk".into(),
            format!("{CONTAINER_DISKS_DIR}/{volume}"),
        ]),
        volume_mounts: Some(vec![
            mount("tools", TOOLS_DIR, true),
            mount("container-disks", CONTAINER_DISKS_DIR, false),
        ]),
        resources: Some(copier_resources()),
        ..Container::default()
    }
}

fn kernel_copier(
    image: &str,
    kernel_path: &str,
    initrd_path: Option<&str>,
    settings: &LauncherPodSettings,
) -> Container {
    // `sh -c SCRIPT KERNEL INITRD`: the paths travel as arguments, never inside the script.
    let script = format!(
        "cp \"$0\" {KERNEL_DIR}/kernel && if [ -n \"$1\" ]; then cp \"$1\" {KERNEL_DIR}/initrd; fi"
    );
    Container {
        name: "kernel-boot".into(),
        image: Some(image.into()),
        image_pull_policy: Some(settings.image_pull_policy.clone()),
        command: Some(vec![
            BUSYBOX.into(),
            "sh".into(),
            "-c".into(),
            script,
            kernel_path.into(),
            initrd_path.unwrap_or("").into(),
        ]),
        volume_mounts: Some(vec![
            mount("tools", TOOLS_DIR, true),
            mount("kernel", KERNEL_DIR, false),
        ]),
        resources: Some(copier_resources()),
        ..Container::default()
    }
}

/// How often the kubelet asks whether the guest runs yet.
const STARTUP_PROBE_PERIOD_SECONDS: i32 = 1;
/// How long a launcher may take to get its guest running before the kubelet gives up on
/// it: beyond the launcher's own bound on waiting for its network (five minutes).
const STARTUP_PROBE_FAILURES: i32 = 600;

/// The compute container is started (and, having no readiness probe, ready) once its
/// launcher answers and the guest runs. A startup probe is checked every second until then
/// and never again: a readiness probe would exec a process in every launcher pod for as
/// long as it runs, and its first success would wait for its period after the start.
/// Afterwards the container lives as long as its launcher (`virt-launcher` supervises it and
/// exits with it), so the pod's status tells the rest.
fn startup_probe() -> Probe {
    Probe {
        exec: Some(ExecAction {
            command: Some(vec![
                "ironvisor-handler".into(),
                "virt-launcher-ready".into(),
                "--run-dir".into(),
                SOCKETS_DIR.into(),
            ]),
        }),
        initial_delay_seconds: Some(0),
        period_seconds: Some(STARTUP_PROBE_PERIOD_SECONDS),
        timeout_seconds: Some(2),
        failure_threshold: Some(STARTUP_PROBE_FAILURES),
        ..Probe::default()
    }
}

fn compute_container(
    settings: &LauncherPodSettings,
    guest_bytes: u64,
    vcpus: u32,
    dedicated: bool,
    with_interfaces: bool,
) -> Container {
    let memory = Quantity(
        (guest_bytes + settings.memory_overhead_bytes)
            .div_ceil(1 << 20)
            .to_string()
            + "Mi",
    );
    let cpu = if dedicated {
        Quantity(vcpus.to_string())
    } else {
        Quantity(format!(
            "{}m",
            u64::from(vcpus) * u64::from(settings.cpu_request_millis_per_vcpu)
        ))
    };
    // /dev/kvm comes from the node agent's device plugin, so the pod needs no privilege
    // and is only placed on nodes whose agent serves it. (Extended resources are requested
    // and limited alike.)
    let one = Quantity("1".into());
    let mut devices = vec![KVM_RESOURCE];
    // The guest's tap is made by the node agent; the launcher opens it through
    // /dev/net/tun, which the agent's other device plugin grants.
    if with_interfaces {
        devices.push(TUN_RESOURCE);
    }
    let mut limits = BTreeMap::from([("memory".to_string(), memory.clone())]);
    let mut requests = BTreeMap::from([
        ("cpu".to_string(), cpu.clone()),
        ("memory".to_string(), memory),
    ]);
    for device in devices {
        limits.insert(device.to_string(), one.clone());
        requests.insert(device.to_string(), one.clone());
    }
    if dedicated {
        limits.insert("cpu".into(), cpu.clone());
    }
    Container {
        name: COMPUTE_CONTAINER.into(),
        image: Some(settings.launcher_image.clone()),
        image_pull_policy: Some(settings.image_pull_policy.clone()),
        command: Some(vec![
            "ironvisor-handler".into(),
            "virt-launcher".into(),
            "--vmi".into(),
            format!("{VMI_DIR}/{VMI_FILE}"),
            "--container-disks".into(),
            CONTAINER_DISKS_DIR.into(),
            "--config-volumes".into(),
            crate::config_volumes::CONFIG_VOLUMES_DIR.into(),
            "--access-credentials".into(),
            crate::config_volumes::ACCESS_CREDENTIALS_DIR.into(),
            "--host-disks".into(),
            crate::host_disks::HOST_DISKS_DIR.into(),
            "--kernel-dir".into(),
            KERNEL_DIR.into(),
            "--run-dir".into(),
            SOCKETS_DIR.into(),
        ]),
        resources: Some(ResourceRequirements {
            requests: Some(requests),
            limits: Some(limits),
            ..ResourceRequirements::default()
        }),
        startup_probe: Some(startup_probe()),
        volume_mounts: Some(vec![
            mount("vmi", VMI_DIR, true),
            mount("container-disks", CONTAINER_DISKS_DIR, false),
            mount("kernel", KERNEL_DIR, true),
            mount("sockets", SOCKETS_DIR, false),
            mount("libvirt", LIBVIRT_HOME, false),
        ]),
        // A per-user libvirt (software emulation as the launcher user) keeps its sockets,
        // configuration and logs under these.
        env: Some(vec![
            env("HOME", LIBVIRT_HOME),
            env("XDG_RUNTIME_DIR", &format!("{LIBVIRT_HOME}/run")),
        ]),
        termination_message_path: Some("/dev/termination-log".into()),
        termination_message_policy: Some("File".into()),
        ..Container::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ironvisor_crds::v1alpha1::{
        ContainerDiskSource, Cpu, Features, Firmware, KernelBoot, KernelBootContainer, Memory,
        VirtualMachineInstanceSpec, Volume as VmVolume,
    };

    fn settings() -> LauncherPodSettings {
        LauncherPodSettings {
            launcher_image: "docker.io/ironvisor/launcher:0.1.0".into(),
            image_pull_policy: "IfNotPresent".into(),
            memory_overhead_bytes: 200 << 20,
            cpu_request_millis_per_vcpu: 100,
            host_disk_root: Some("/var/lib/ironvisor".into()),
        }
    }

    fn vmi() -> VirtualMachineInstance {
        let mut spec = VirtualMachineInstanceSpec::default();
        spec.domain.memory = Some(Memory {
            guest: Quantity("256Mi".into()),
        });
        spec.domain.cpu = Some(Cpu {
            cores: Some(2),
            sockets: None,
            threads: None,
            dedicated_cpu_placement: None,
            model: None,
        });
        spec.domain.firmware = Some(Firmware {
            kernel_boot: Some(KernelBoot {
                kernel_args: Some("root=/dev/vda".into()),
                container: Some(KernelBootContainer {
                    image: "ironvisor/guest-kernel:debian-6.1".into(),
                    kernel_path: Some("/boot/vmlinuz".into()),
                    initrd_path: Some("/boot/initrd.img".into()),
                }),
            }),
            ..Firmware::default()
        });
        spec.volumes = vec![VmVolume {
            name: "rootdisk".into(),
            container_disk: Some(ContainerDiskSource {
                image: "ironvisor/rootfs:busybox".into(),
            }),
            ..VmVolume::default()
        }];
        spec.termination_grace_period_seconds = Some(30);
        let mut vmi = VirtualMachineInstance::new("small", spec);
        vmi.metadata.namespace = Some("default".into());
        vmi.metadata.uid = Some("abcde123-0000".into());
        vmi.metadata.labels = Some(BTreeMap::from([("app".into(), "small".into())]));
        vmi
    }

    fn compute(pod: &Pod) -> &Container {
        &pod.spec.as_ref().unwrap().containers[0]
    }

    #[test]
    fn pod_requests_guest_memory_plus_overhead_and_shares_cpu() {
        let pod = launcher_pod(&vmi(), &settings(), &[]).unwrap();
        let resources = compute(&pod).resources.as_ref().unwrap();
        let requests = resources.requests.as_ref().unwrap();
        assert_eq!(requests["memory"], Quantity("456Mi".into()));
        assert_eq!(requests["cpu"], Quantity("200m".into()));
        let limits = resources.limits.as_ref().unwrap();
        assert_eq!(limits["memory"], Quantity("456Mi".into()));
        assert!(!limits.contains_key("cpu"));
        assert_eq!(requests[KVM_RESOURCE], Quantity("1".into()));
        assert_eq!(limits[KVM_RESOURCE], Quantity("1".into()));
    }

    #[test]
    fn an_interface_asks_for_the_tun_device() {
        let mut vmi = vmi();
        vmi.spec.domain.devices.interfaces.clear();
        vmi.spec.domain.devices.autoattach_pod_interface = Some(false);
        let pod = launcher_pod(&vmi, &settings(), &[]).unwrap();
        let requests = compute(&pod).resources.as_ref().unwrap().requests.clone();
        assert!(
            !requests.unwrap().contains_key(TUN_RESOURCE),
            "no interface, no tap"
        );
        vmi.spec.domain.devices.interfaces =
            serde_json::from_str(r#"[{"name": "default", "masquerade": {}}]"#).unwrap();
        let pod = launcher_pod(&vmi, &settings(), &[]).unwrap();
        let resources = compute(&pod).resources.as_ref().unwrap();
        let one = Quantity("1".into());
        assert_eq!(resources.requests.as_ref().unwrap()[TUN_RESOURCE], one);
        assert_eq!(resources.limits.as_ref().unwrap()[TUN_RESOURCE], one);
    }

    #[test]
    fn dedicated_cpus_get_whole_cores_requested_and_limited() {
        let mut vmi = vmi();
        vmi.spec
            .domain
            .cpu
            .as_mut()
            .unwrap()
            .dedicated_cpu_placement = Some(true);
        let pod = launcher_pod(&vmi, &settings(), &[]).unwrap();
        let resources = compute(&pod).resources.as_ref().unwrap();
        assert_eq!(
            resources.requests.as_ref().unwrap()["cpu"],
            Quantity("2".into())
        );
        assert_eq!(
            resources.limits.as_ref().unwrap()["cpu"],
            Quantity("2".into())
        );
        // Guaranteed: every container's requests equal its limits, init containers too.
        let spec = pod.spec.as_ref().unwrap();
        for container in spec
            .init_containers
            .iter()
            .flatten()
            .chain(&spec.containers)
        {
            let resources = container.resources.as_ref().unwrap();
            for resource in ["cpu", "memory"] {
                assert_eq!(
                    resources.requests.as_ref().unwrap()[resource],
                    resources.limits.as_ref().unwrap()[resource],
                    "{} {resource}",
                    container.name
                );
            }
        }
        let selector = spec.node_selector.as_ref().unwrap();
        assert_eq!(selector[NODE_LABEL_CPU_MANAGER], "true");
    }

    #[test]
    fn the_guest_running_is_checked_until_it_first_runs_and_never_after() {
        let pod = launcher_pod(&vmi(), &settings(), &[]).unwrap();
        let compute = compute(&pod);
        assert!(compute.readiness_probe.is_none());
        assert!(compute.liveness_probe.is_none());
        let probe = compute.startup_probe.as_ref().unwrap();
        let command = probe.exec.as_ref().unwrap().command.as_ref().unwrap();
        assert_eq!(command[..2], ["ironvisor-handler", "virt-launcher-ready"]);
        assert_eq!(probe.period_seconds, Some(1));
        // Longer than the launcher waits for its network (300 s) before it gives up itself.
        let bound = probe.period_seconds.unwrap() * probe.failure_threshold.unwrap();
        assert!(bound > 300, "{bound}");
    }

    #[test]
    fn shared_cpus_leave_the_pod_burstable_on_any_node() {
        let pod = launcher_pod(&vmi(), &settings(), &[]).unwrap();
        let spec = pod.spec.as_ref().unwrap();
        assert!(spec.node_selector.is_none());
        let resources = compute(&pod).resources.as_ref().unwrap();
        assert!(!resources.limits.as_ref().unwrap().contains_key("cpu"));
    }

    #[test]
    fn pod_is_named_labelled_and_owned_by_the_instance() {
        let pod = launcher_pod(&vmi(), &settings(), &[]).unwrap();
        assert_eq!(
            pod.metadata.name.as_deref(),
            Some("virt-launcher-small-abcde")
        );
        assert_eq!(pod.metadata.namespace.as_deref(), Some("default"));
        let labels = pod.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[LABEL_CREATED_BY], "abcde123-0000");
        assert_eq!(labels[LABEL_VMI_NAME], "small");
        assert_eq!(labels["app"], "small");
        let owner = &pod.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(owner.kind, "VirtualMachineInstance");
        assert_eq!(owner.uid, "abcde123-0000");
        assert_eq!(owner.controller, Some(true));
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        assert_eq!(spec.termination_grace_period_seconds, Some(45));
        assert_eq!(spec.hostname.as_deref(), Some("small"));
        assert_eq!(spec.automount_service_account_token, Some(false));
    }

    #[test]
    fn pod_is_not_privileged() {
        let pod = launcher_pod(&vmi(), &settings(), &[]).unwrap();
        let spec = pod.spec.as_ref().unwrap();
        for container in spec
            .containers
            .iter()
            .chain(spec.init_containers.as_ref().unwrap())
        {
            let context = container.security_context.as_ref().unwrap();
            assert_eq!(context.privileged, Some(false), "{}", container.name);
            assert_eq!(context.allow_privilege_escalation, Some(false));
            let dropped = context
                .capabilities
                .as_ref()
                .unwrap()
                .drop
                .as_ref()
                .unwrap();
            assert_eq!(dropped, &["ALL"], "{}", container.name);
        }
        let pod_context = spec.security_context.as_ref().unwrap();
        assert_eq!(pod_context.run_as_non_root, Some(true));
        assert_eq!(
            pod_context.run_as_user,
            Some(i64::from(ironvisor_crds::cluster::LAUNCHER_UID))
        );
        assert_eq!(
            ironvisor_crds::cluster::compute_uid(spec),
            Some(ironvisor_crds::cluster::LAUNCHER_UID)
        );
        assert!(spec.host_network.is_none() && spec.host_pid.is_none());
        assert!(spec
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .all(|v| v.host_path.is_none()));
    }

    #[test]
    fn images_are_copied_out_by_init_containers() {
        let pod = launcher_pod(&vmi(), &settings(), &[]).unwrap();
        let inits = pod.spec.as_ref().unwrap().init_containers.clone().unwrap();
        let names: Vec<_> = inits.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["tools", "volume-rootdisk", "kernel-boot"]);
        assert_eq!(inits[1].image.as_deref(), Some("ironvisor/rootfs:busybox"));
        assert_eq!(
            inits[1].command.as_ref().unwrap()[1..],
            [
                "cp",
                "-r",
                "/disk",
                "/var/run/ironvisor/container-disks/rootdisk"
            ]
        );
        let kernel = inits[2].command.as_ref().unwrap();
        assert_eq!(kernel[4..], ["/boot/vmlinuz", "/boot/initrd.img"]);
    }

    #[test]
    fn the_instance_travels_in_an_annotation_read_through_the_downward_api() {
        let pod = launcher_pod(&vmi(), &settings(), &[]).unwrap();
        let document: serde_json::Value =
            serde_json::from_str(&pod.metadata.annotations.as_ref().unwrap()[ANNOTATION_VMI])
                .unwrap();
        assert_eq!(document["metadata"]["uid"], "abcde123-0000");
        assert_eq!(document["spec"]["domain"]["memory"]["guest"], "256Mi");
        let volumes = pod.spec.as_ref().unwrap().volumes.clone().unwrap();
        let downward = volumes.iter().find(|v| v.name == "vmi").unwrap();
        let item = &downward
            .downward_api
            .as_ref()
            .unwrap()
            .items
            .as_ref()
            .unwrap()[0];
        assert_eq!(
            item.field_ref.as_ref().unwrap().field_path,
            "metadata.annotations['ironvisor.io/vmi']"
        );
    }

    #[test]
    fn hardware_isolation_required_selects_hardware_kvm_nodes() {
        let mut vmi = vmi();
        vmi.spec.domain.features = Some(Features {
            hardware_isolation: Some(HardwareIsolation::Required),
            ..Features::default()
        });
        let pod = launcher_pod(&vmi, &settings(), &[]).unwrap();
        let selector = pod.spec.unwrap().node_selector.unwrap();
        assert_eq!(selector[NODE_LABEL_HARDWARE_KVM], "true");
    }

    #[test]
    fn claims_reach_the_compute_container_as_mounts_devices_and_arguments() {
        use ironvisor_crds::pod_claims::ClaimMode;
        let mut vmi = vmi();
        for name in ["data", "raw"] {
            vmi.spec.volumes.push(VmVolume {
                name: name.into(),
                persistent_volume_claim: Some(
                    ironvisor_crds::v1alpha1::PersistentVolumeClaimSource {
                        claim_name: format!("{name}-claim"),
                        read_only: None,
                    },
                ),
                ..VmVolume::default()
            });
        }
        let error = launcher_pod(&vmi, &settings(), &[]).unwrap_err();
        assert_eq!(error.reason(), "PersistentVolumeClaimUnusable");
        assert!(error.to_string().contains("spec.volumes[data]"), "{error}");
        let claims = [
            PodClaim {
                volume: "data".into(),
                mode: ClaimMode::Filesystem {
                    capacity_bytes: 1 << 30,
                },
            },
            PodClaim {
                volume: "raw".into(),
                mode: ClaimMode::Block,
            },
        ];
        let pod = launcher_pod(&vmi, &settings(), &claims).unwrap();
        let compute = compute(&pod);
        assert!(compute
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .any(|m| m.name == "claim-data" && m.mount_path == "/var/run/ironvisor/claims/data"));
        assert_eq!(
            compute.volume_devices.as_ref().unwrap()[0].device_path,
            "/var/run/ironvisor/claim-devices/raw"
        );
        let command = compute.command.as_ref().unwrap();
        assert!(
            command.ends_with(&[
                "--claim".to_string(),
                format!("data=filesystem:{}", 1u64 << 30),
                "--claim".to_string(),
                "raw=block".to_string(),
            ]),
            "{command:?}"
        );
        let volumes = pod.spec.as_ref().unwrap().volumes.as_ref().unwrap();
        assert!(volumes.iter().any(|v| v
            .persistent_volume_claim
            .as_ref()
            .is_some_and(|c| c.claim_name == "raw-claim")));
    }

    #[test]
    fn host_disks_mount_their_directory_into_the_compute_container_only_under_the_root() {
        let mut vmi = vmi();
        vmi.spec.volumes.push(VmVolume {
            name: "data".into(),
            host_disk: Some(ironvisor_crds::v1alpha1::HostDisk {
                path: "/var/lib/ironvisor/disks/data.raw".into(),
                ..Default::default()
            }),
            ..VmVolume::default()
        });
        let pod = launcher_pod(&vmi, &settings(), &[]).unwrap();
        let mounts = compute(&pod).volume_mounts.clone().unwrap();
        assert!(mounts
            .iter()
            .any(|m| m.mount_path == "/var/run/ironvisor/host-disks/data"));
        // The node's directory is root's: this pod's containers run as root.
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(ironvisor_crds::cluster::compute_uid(spec), None);
        assert_eq!(
            compute(&pod).security_context.as_ref().unwrap().privileged,
            Some(false)
        );
        let mut elsewhere = vmi.clone();
        elsewhere.spec.volumes.last_mut().unwrap().host_disk =
            Some(ironvisor_crds::v1alpha1::HostDisk {
                path: "/etc/data.raw".into(),
                ..Default::default()
            });
        let error = launcher_pod(&elsewhere, &settings(), &[]).unwrap_err();
        assert_eq!(error.reason(), "HostDiskNotAllowed");
        assert!(error
            .to_string()
            .starts_with("spec.volumes[data]: hostDisk path /etc/data.raw is outside"));
    }

    #[test]
    fn missing_memory_is_an_error() {
        let mut vmi = vmi();
        vmi.spec.domain.memory = None;
        assert_eq!(
            launcher_pod(&vmi, &settings(), &[]).unwrap_err().reason(),
            "InvalidMemory"
        );
    }
}
