//! Cluster-mode conventions: the finalizers, labels, annotations and names the
//! controller and the node agent (handler DaemonSet) write and read. One place, so both
//! agree.

/// Field manager of every server-side apply the controller makes.
pub const FIELD_MANAGER: &str = "ironvisor-controller";

/// Field manager of the node agent's status writes.
pub const HANDLER_FIELD_MANAGER: &str = "ironvisor-handler";

/// The node agent's device-plugin resource that grants `/dev/kvm`.
pub const KVM_RESOURCE: &str = "devices.ironvisor.io/kvm";

/// The node agent's device-plugin resource that grants `/dev/net/tun` (the guest's tap).
pub const TUN_RESOURCE: &str = "devices.ironvisor.io/tun";

/// Instance label: the node that runs it (set by the controller once the launcher pod is
/// placed, so each node agent watches only its own instances).
pub const LABEL_NODE_NAME: &str = "ironvisor.io/node-name";

/// On a `VirtualMachine`: its instance is stopped gracefully before the VM goes away.
pub const VM_FINALIZER: &str = "ironvisor.io/vm-graceful-stop";

/// On a `VirtualMachineInstance`: its launcher pod is deleted (and gone) first.
pub const VMI_FINALIZER: &str = "ironvisor.io/vmi-launcher-pod";

/// Launcher pod label: the UID of the instance the pod runs.
pub const LABEL_CREATED_BY: &str = "ironvisor.io/created-by";

/// Launcher pod label: the name of the instance the pod runs.
pub const LABEL_VMI_NAME: &str = "ironvisor.io/vmi";

/// Launcher pod label key for its role (as KubeVirt's `kubevirt.io: virt-launcher`).
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";

/// Value of [`LABEL_COMPONENT`] on launcher pods.
pub const COMPONENT_LAUNCHER: &str = "virt-launcher";

/// Launcher pod annotation holding the instance as JSON (read by the pod's
/// `virt-launcher` through a downward-API file, so the pod needs no API access).
pub const ANNOTATION_VMI: &str = "ironvisor.io/vmi";

/// Node label set by the node agent on nodes whose KVM can run stock guests.
pub const NODE_LABEL_HARDWARE_KVM: &str = "ironvisor.io/hardware-kvm";

/// Node label set by the node agent: `true` where the kubelet runs the static CPU
/// manager policy, so Guaranteed pods with whole CPUs get CPUs of their own. Instances
/// with `dedicatedCpuPlacement` select it.
pub const NODE_LABEL_CPU_MANAGER: &str = "ironvisor.io/cpumanager";

/// Name of the launcher pod's main container.
pub const COMPUTE_CONTAINER: &str = "compute";

/// The node link: the api-server reaches the node agent on this TCP port of the agent's
/// pod (consoles, pause), over mutual TLS with certificates from the api-server's CA.
pub const NODE_LINK_PORT: u16 = 8186;

/// The name the node agents' link certificate is issued for (and checked under).
pub const NODE_LINK_SERVER_NAME: &str = "ironvisor-handler";

/// The common name of the api-server's client certificate on the node link.
pub const NODE_LINK_CLIENT_NAME: &str = "ironvisor-apiserver";

/// The Secret (in the Ironvisor namespace) holding the node agents' link certificate, its
/// key and the CA bundle, written by the api-server.
pub const NODE_LINK_SECRET: &str = "ironvisor-handler-certs";

/// Label of the node agent's pods (the api-server finds the agent of a node by it).
pub const HANDLER_POD_LABEL: (&str, &str) = ("app.kubernetes.io/name", "ironvisor-handler");

/// The UID and GID of the launcher pods' processes: the `ironvisor` user of the launcher
/// image (KubeVirt's non-root `virt-launcher` uses the same number).
pub const LAUNCHER_UID: u32 = 107;

/// The UID a launcher pod's `compute` container runs as: its own `runAsUser`, else the
/// pod's; `None` when that is root or unset (the image's user, root).
pub fn compute_uid(spec: &k8s_openapi::api::core::v1::PodSpec) -> Option<u32> {
    let container = spec
        .containers
        .iter()
        .find(|c| c.name == COMPUTE_CONTAINER)?;
    let uid = container
        .security_context
        .as_ref()
        .and_then(|c| c.run_as_user)
        .or_else(|| spec.security_context.as_ref().and_then(|c| c.run_as_user))?;
    u32::try_from(uid).ok().filter(|uid| *uid != 0)
}

/// Launcher pod name of an instance: `virt-launcher-<vmi>-<5 chars of its UID>`.
///
/// Deterministic, so a create retried after a crash (or from a stale cache) finds the
/// pod it made instead of making a second one.
pub fn launcher_pod_name(vmi_name: &str, vmi_uid: &str) -> String {
    let suffix: String = vmi_uid
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(5)
        .collect::<String>()
        .to_ascii_lowercase();
    // Pod names are DNS subdomains (253); keep room for the prefix and the suffix.
    let stem: String = vmi_name.chars().take(200).collect();
    format!("virt-launcher-{stem}-{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodSecurityContext, PodSpec, SecurityContext};

    #[test]
    fn the_compute_uid_comes_from_the_container_then_the_pod() {
        let mut spec = PodSpec {
            containers: vec![Container {
                name: COMPUTE_CONTAINER.into(),
                ..Container::default()
            }],
            security_context: Some(PodSecurityContext {
                run_as_user: Some(107),
                ..PodSecurityContext::default()
            }),
            ..PodSpec::default()
        };
        assert_eq!(compute_uid(&spec), Some(107));
        spec.containers[0].security_context = Some(SecurityContext {
            run_as_user: Some(0),
            ..SecurityContext::default()
        });
        assert_eq!(compute_uid(&spec), None);
        spec.containers[0].name = "other".into();
        assert_eq!(compute_uid(&spec), None);
        spec.containers[0].name = COMPUTE_CONTAINER.into();
        spec.security_context = None;
        spec.containers[0].security_context = None;
        assert_eq!(compute_uid(&spec), None);
    }

    #[test]
    fn launcher_pod_names_are_deterministic_and_bounded() {
        let uid = "3F2A9c1d-0000-4000-8000-000000000000";
        assert_eq!(launcher_pod_name("small", uid), "virt-launcher-small-3f2a9");
        assert_eq!(
            launcher_pod_name("small", uid),
            launcher_pod_name("small", uid)
        );
        let long = "a".repeat(253);
        assert!(launcher_pod_name(&long, uid).len() <= 253);
    }
}
