//! Node capability labels: whether this node's KVM runs stock guests (hardware-assisted
//! virtualization) or only software emulation is possible. Instances with
//! `hardwareIsolation: Required` select `ironvisor.io/hardware-kvm=true`, so the
//! scheduler never places them on an emulation-only node and says why.

use std::collections::BTreeMap;

use ironvisor_crds::cluster::NODE_LABEL_HARDWARE_KVM;
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

/// The labels that describe a node with (or without) hardware KVM.
pub fn labels(hardware_kvm: bool) -> BTreeMap<String, String> {
    BTreeMap::from([
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
    hardware_kvm: bool,
) -> Result<(), CapabilityError> {
    let nodes: Api<Node> = Api::all(client);
    let patch = serde_json::json!({"metadata": {"labels": labels(hardware_kvm)}});
    nodes
        .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|source| CapabilityError::Patch {
            node: node.into(),
            source,
        })?;
    info!(hardware_kvm, "labelled the node");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_say_hardware_or_emulation() {
        let hw = labels(true);
        assert_eq!(hw[NODE_LABEL_HARDWARE_KVM], "true");
        assert_eq!(hw[NODE_LABEL_ISOLATION], "hardware");
        let emu = labels(false);
        assert_eq!(emu[NODE_LABEL_HARDWARE_KVM], "false");
        assert_eq!(emu[NODE_LABEL_ISOLATION], "emulation");
    }
}
