//! Node capability labels: whether this node's KVM runs stock guests (hardware-assisted
//! virtualization) or only software emulation is possible. Instances with
//! `hardwareIsolation: Required` select `ironvisor.io/hardware-kvm=true`, so the
//! scheduler never places them on an emulation-only node and says why. Likewise whether
//! the kubelet runs the static CPU manager policy: instances with `dedicatedCpuPlacement`
//! select `ironvisor.io/cpumanager=true`.

use std::collections::BTreeMap;

use std::path::{Path, PathBuf};

use ironvisor_crds::cluster::{NODE_LABEL_CPU_MANAGER, NODE_LABEL_HARDWARE_KVM};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::Client;
use tracing::{info, instrument};

/// Node label: the node can run guests at all (hardware KVM or emulation).
pub const NODE_LABEL_SCHEDULABLE: &str = "ironvisor.io/schedulable";
/// Node label: how guests run here, `hardware` or `emulation`.
pub const NODE_LABEL_ISOLATION: &str = "ironvisor.io/isolation";

/// Why the node could not be labelled.
#[derive(Debug, thiserror::Error)]
pub enum CapabilityError {
    /// The API server refused the patch.
    #[error("labelling node {node}: {source}")]
    Patch {
        /// Node name.
        node: String,
        /// The client error.
        source: kube::Error,
    },
}

/// What the node can run, as its labels say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// KVM runs stock guests (hardware-assisted virtualization).
    pub hardware_kvm: bool,
    /// The kubelet's CPU manager runs the static policy.
    pub static_cpu_manager: bool,
}

/// The kubelet's CPU manager checkpoint under its root directory. The DaemonSet mounts
/// the host's kubelet root (a directory, so the kubelet's atomic rewrites of the file are
/// seen; a bind-mounted file would keep showing the first one).
pub fn cpu_manager_checkpoint(kubelet_root: &Path) -> PathBuf {
    kubelet_root.join("cpu_manager_state")
}

/// Whether the checkpoint at `path` was written under the static policy. A missing or
/// unreadable checkpoint means no (the kubelet writes it when it starts).
pub fn static_cpu_manager(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|state| state.get("policyName")?.as_str().map(|p| p == "static"))
        .unwrap_or(false)
}

/// The labels that describe a node with (or without) hardware KVM.
pub fn labels(capabilities: Capabilities) -> BTreeMap<String, String> {
    let hardware_kvm = capabilities.hardware_kvm;
    BTreeMap::from([
        (
            NODE_LABEL_CPU_MANAGER.to_string(),
            capabilities.static_cpu_manager.to_string(),
        ),
        (
            NODE_LABEL_HARDWARE_KVM.to_string(),
            hardware_kvm.to_string(),
        ),
        (
            NODE_LABEL_ISOLATION.to_string(),
            if hardware_kvm {
                "hardware"
            } else {
                "emulation"
            }
            .to_string(),
        ),
        (NODE_LABEL_SCHEDULABLE.to_string(), "true".to_string()),
    ])
}

/// Sets the capability labels on `node` (a merge patch: other labels are untouched).
#[instrument(skip(client))]
pub async fn label_node(
    client: Client,
    node: &str,
    capabilities: Capabilities,
) -> Result<(), CapabilityError> {
    let nodes: Api<Node> = Api::all(client);
    let patch = serde_json::json!({"metadata": {"labels": labels(capabilities)}});
    nodes
        .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|source| CapabilityError::Patch {
            node: node.into(),
            source,
        })?;
    info!(
        hardware_kvm = capabilities.hardware_kvm,
        static_cpu_manager = capabilities.static_cpu_manager,
        "labelled the node"
    );
    Ok(())
}

/// How often the CPU manager checkpoint is read again (a kubelet restarted with another
/// policy changes it while the agent runs).
const RECHECK: std::time::Duration = std::time::Duration::from_secs(30);

/// Re-reads the kubelet's CPU manager policy every [`RECHECK`] and relabels the node when
/// it changed, until `shutdown` completes. A failed patch is logged and tried again.
pub async fn keep_labelled(
    client: Client,
    node: String,
    mut labelled: Capabilities,
    checkpoint: PathBuf,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(RECHECK) => {}
        }
        let now = Capabilities {
            static_cpu_manager: static_cpu_manager(&checkpoint),
            ..labelled
        };
        if now == labelled {
            continue;
        }
        match label_node(client.clone(), &node, now).await {
            Ok(()) => labelled = now,
            Err(error) => tracing::warn!(%error, "cannot relabel the node; trying again"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_say_hardware_or_emulation() {
        let hw = labels(Capabilities {
            hardware_kvm: true,
            static_cpu_manager: false,
        });
        assert_eq!(hw[NODE_LABEL_HARDWARE_KVM], "true");
        assert_eq!(hw[NODE_LABEL_ISOLATION], "hardware");
        assert_eq!(hw[NODE_LABEL_CPU_MANAGER], "false");
        let emu = labels(Capabilities {
            hardware_kvm: false,
            static_cpu_manager: true,
        });
        assert_eq!(emu[NODE_LABEL_HARDWARE_KVM], "false");
        assert_eq!(emu[NODE_LABEL_ISOLATION], "emulation");
        assert_eq!(emu[NODE_LABEL_CPU_MANAGER], "true");
    }

    #[test]
    fn only_a_checkpoint_of_the_static_policy_counts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cpu_manager_state");
        assert!(!static_cpu_manager(&path), "missing");
        std::fs::write(
            &path,
            r#"{"policyName":"none","defaultCpuSet":"","checksum":1}"#,
        )
        .unwrap();
        assert!(!static_cpu_manager(&path), "none");
        std::fs::write(
            &path,
            r#"{"policyName":"static","defaultCpuSet":"0-1","checksum":2}"#,
        )
        .unwrap();
        assert!(static_cpu_manager(&path), "static");
        std::fs::write(&path, "garbage").unwrap();
        assert!(!static_cpu_manager(&path), "garbage");
    }

    #[test]
    fn the_checkpoint_is_in_the_kubelet_root() {
        assert_eq!(
            cpu_manager_checkpoint(Path::new("/var/lib/kubelet")),
            Path::new("/var/lib/kubelet/cpu_manager_state")
        );
    }
}
