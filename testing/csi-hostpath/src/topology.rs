//! Topology: every volume is reachable from the node that made it, and only from it.

use std::collections::HashMap;

use crate::proto::csi::{Topology, TopologyRequirement};

/// The topology key naming the node a volume is on.
pub const NODE_KEY: &str = "topology.hostpath.csi.ironvisor.io/node";

/// Why a volume cannot be made here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopologyError {
    /// The request's topology names other nodes only.
    #[error(
        "the accessibility requirements do not include node {node} ({NODE_KEY}={node}); \
         volumes of this driver are created on the node that serves the request"
    )]
    NotAccessible {
        /// This node.
        node: String,
    },
}

impl From<TopologyError> for tonic::Status {
    fn from(error: TopologyError) -> Self {
        tonic::Status::resource_exhausted(error.to_string())
    }
}

/// The topology of volumes on `node`.
pub fn of_node(node: &str) -> Topology {
    Topology {
        segments: HashMap::from([(NODE_KEY.to_owned(), node.to_owned())]),
    }
}

/// Checks that a volume on `node` satisfies `requirement`: no requirement, an empty
/// one, or one whose requisite or preferred topologies include `node`.
pub fn check(requirement: Option<&TopologyRequirement>, node: &str) -> Result<(), TopologyError> {
    let Some(requirement) = requirement else {
        return Ok(());
    };
    let mut all = requirement.requisite.iter().chain(&requirement.preferred);
    if requirement.requisite.is_empty() && requirement.preferred.is_empty() {
        return Ok(());
    }
    if all.any(|t| t.segments.get(NODE_KEY).map(String::as_str) == Some(node)) {
        Ok(())
    } else {
        Err(TopologyError::NotAccessible {
            node: node.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn requirement(requisite: &[&str], preferred: &[&str]) -> TopologyRequirement {
        TopologyRequirement {
            requisite: requisite.iter().map(|n| of_node(n)).collect(),
            preferred: preferred.iter().map(|n| of_node(n)).collect(),
        }
    }

    #[test]
    fn no_or_empty_requirement_is_fine() {
        assert_eq!(check(None, "n1"), Ok(()));
        assert_eq!(check(Some(&requirement(&[], &[])), "n1"), Ok(()));
    }

    #[test]
    fn this_node_in_requisite_or_preferred_is_fine() {
        assert_eq!(check(Some(&requirement(&["n0", "n1"], &[])), "n1"), Ok(()));
        assert_eq!(check(Some(&requirement(&["n0"], &["n1"])), "n1"), Ok(()));
    }

    #[test]
    fn other_nodes_only_is_resource_exhausted_naming_the_node() {
        let e = check(Some(&requirement(&["n0"], &["n2"])), "n1").unwrap_err();
        assert!(e.to_string().contains("node n1"), "{e}");
        assert_eq!(
            tonic::Status::from(e).code(),
            tonic::Code::ResourceExhausted
        );
        let other_key = TopologyRequirement {
            requisite: vec![Topology {
                segments: HashMap::from([("zone".to_owned(), "n1".to_owned())]),
            }],
            preferred: vec![],
        };
        assert!(check(Some(&other_key), "n1").is_err());
    }

    #[test]
    fn the_node_topology_has_one_segment() {
        let t = of_node("n1");
        assert_eq!(t.segments.len(), 1);
        assert_eq!(t.segments[NODE_KEY], "n1");
    }
}
