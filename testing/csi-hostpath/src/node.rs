//! The CSI Node service: publishing volumes at the targets the kubelet names, and
//! describing the node.

use std::path::PathBuf;
use std::sync::Arc;

use tonic::{Request, Response, Status};
use tracing::instrument;

use crate::blocking::OperationLock;
use crate::capability::{self, VolumeKind};
use crate::proto::csi::node_server::Node;
use crate::proto::csi::{
    NodeGetCapabilitiesRequest, NodeGetCapabilitiesResponse, NodeGetInfoRequest,
    NodeGetInfoResponse, NodePublishVolumeRequest, NodePublishVolumeResponse,
    NodeUnpublishVolumeRequest, NodeUnpublishVolumeResponse,
};
use crate::publish;
use crate::store::VolumeStore;
use crate::topology;
use crate::volume_id::VolumeId;

/// Why a node request is refused before anything is mounted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    /// A required field is empty.
    #[error("{field} is required")]
    Missing {
        /// The field.
        field: &'static str,
    },
    /// The volume does not exist here.
    #[error("volume {id} does not exist on node {node}")]
    NotFound {
        /// The volume.
        id: String,
        /// This node.
        node: String,
    },
    /// The capability asks for the other kind of volume.
    #[error("volume {id} is a {kind} volume and cannot be published as {asked}{hint}")]
    KindMismatch {
        /// The volume.
        id: String,
        /// What it is.
        kind: VolumeKind,
        /// What was asked.
        asked: VolumeKind,
        /// What probably went wrong, for the person reading the pod's events.
        hint: &'static str,
    },
}

impl From<NodeError> for Status {
    fn from(error: NodeError) -> Self {
        match error {
            NodeError::NotFound { .. } => Status::not_found(error.to_string()),
            NodeError::Missing { .. } | NodeError::KindMismatch { .. } => {
                Status::invalid_argument(error.to_string())
            }
        }
    }
}

/// The error for publishing a volume of `kind` as `asked`.
pub fn kind_mismatch(id: &VolumeId, kind: VolumeKind, asked: VolumeKind) -> NodeError {
    NodeError::KindMismatch {
        id: id.to_string(),
        kind,
        asked,
        hint: match kind {
            VolumeKind::Block => {
                ": its claim has volumeMode Block, so a pod must use it under volumeDevices, \
                 not mount it under volumeMounts"
            }
            VolumeKind::Mount => {
                ": its claim has volumeMode Filesystem, so a pod must mount it under \
                 volumeMounts, not use it under volumeDevices"
            }
        },
    }
}

fn required(value: &str, field: &'static str) -> Result<(), NodeError> {
    if value.is_empty() {
        Err(NodeError::Missing { field })
    } else {
        Ok(())
    }
}

/// The Node service.
#[derive(Debug, Clone)]
pub struct NodeService {
    store: Arc<VolumeStore>,
    lock: OperationLock,
}

impl NodeService {
    /// The service publishing volumes of `store`, one operation at a time under `lock`.
    pub fn new(store: Arc<VolumeStore>, lock: OperationLock) -> Self {
        Self { store, lock }
    }
}

#[tonic::async_trait]
impl Node for NodeService {
    #[instrument(skip_all, err(level = "warn"), fields(
        volume_id = %request.get_ref().volume_id,
        target = %request.get_ref().target_path,
    ))]
    async fn node_publish_volume(
        &self,
        request: Request<NodePublishVolumeRequest>,
    ) -> Result<Response<NodePublishVolumeResponse>, Status> {
        let request = request.into_inner();
        required(&request.volume_id, "volume_id")?;
        required(&request.target_path, "target_path")?;
        let capability = request
            .volume_capability
            .as_ref()
            .ok_or(NodeError::Missing {
                field: "volume_capability",
            })?;
        let id = VolumeId::parse(&request.volume_id)?;
        let asked = capability::kind_of(0, capability)?;
        let store = Arc::clone(&self.store);
        let target = PathBuf::from(request.target_path);
        let read_only = request.readonly;
        self.lock
            .run(move || {
                let meta = store.lookup(&id)?.ok_or_else(|| NodeError::NotFound {
                    id: id.to_string(),
                    node: store.node().to_owned(),
                })?;
                if meta.kind != asked {
                    return Err(kind_mismatch(&id, meta.kind, asked).into());
                }
                let paths = store.paths(&id);
                publish::publish(id.as_str(), meta.kind, &paths, &target, read_only)?;
                Ok(())
            })
            .await?;
        Ok(Response::new(NodePublishVolumeResponse {}))
    }

    #[instrument(skip_all, err(level = "warn"), fields(
        volume_id = %request.get_ref().volume_id,
        target = %request.get_ref().target_path,
    ))]
    async fn node_unpublish_volume(
        &self,
        request: Request<NodeUnpublishVolumeRequest>,
    ) -> Result<Response<NodeUnpublishVolumeResponse>, Status> {
        let request = request.into_inner();
        required(&request.volume_id, "volume_id")?;
        required(&request.target_path, "target_path")?;
        let id = VolumeId::parse(&request.volume_id)?;
        let store = Arc::clone(&self.store);
        let target = PathBuf::from(request.target_path);
        self.lock
            .run(move || Ok(publish::unpublish(id.as_str(), &store.paths(&id), &target)?))
            .await?;
        Ok(Response::new(NodeUnpublishVolumeResponse {}))
    }

    #[instrument(skip_all)]
    async fn node_get_capabilities(
        &self,
        _request: Request<NodeGetCapabilitiesRequest>,
    ) -> Result<Response<NodeGetCapabilitiesResponse>, Status> {
        Ok(Response::new(NodeGetCapabilitiesResponse {
            capabilities: vec![],
        }))
    }

    #[instrument(skip_all)]
    async fn node_get_info(
        &self,
        _request: Request<NodeGetInfoRequest>,
    ) -> Result<Response<NodeGetInfoResponse>, Status> {
        Ok(Response::new(NodeGetInfoResponse {
            node_id: self.store.node().to_owned(),
            max_volumes_per_node: 0,
            accessible_topology: Some(topology::of_node(self.store.node())),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capability::tests::capability;
    use crate::capacity::CapacityBounds;
    use crate::proto::csi::volume_capability::access_mode::Mode;

    fn service() -> (tempfile::TempDir, NodeService) {
        let dir = tempfile::tempdir().unwrap();
        let store = VolumeStore::open(&dir.path().join("data"), "node-a").unwrap();
        (
            dir,
            NodeService::new(Arc::new(store), OperationLock::default()),
        )
    }

    fn publish_request(id: &str, target: &str, kind: VolumeKind) -> NodePublishVolumeRequest {
        NodePublishVolumeRequest {
            volume_id: id.to_owned(),
            target_path: target.to_owned(),
            volume_capability: Some(capability(kind, Mode::SingleNodeWriter)),
            readonly: false,
        }
    }

    async fn publish_error(s: &NodeService, r: NodePublishVolumeRequest) -> Status {
        s.node_publish_volume(Request::new(r)).await.unwrap_err()
    }

    #[tokio::test]
    async fn missing_fields_are_named() {
        let (_dir, s) = service();
        let e = publish_error(&s, publish_request("", "/t", VolumeKind::Mount)).await;
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("volume_id"), "{e:?}");
        let e = publish_error(&s, publish_request("v", "", VolumeKind::Mount)).await;
        assert!(e.message().contains("target_path"), "{e:?}");
        let mut r = publish_request("v", "/t", VolumeKind::Mount);
        r.volume_capability = None;
        let e = publish_error(&s, r).await;
        assert!(e.message().contains("volume_capability"), "{e:?}");
    }

    #[tokio::test]
    async fn an_unknown_volume_is_not_found() {
        let (dir, s) = service();
        let target = dir.path().join("t").display().to_string();
        let e = publish_error(&s, publish_request("pvc-x", &target, VolumeKind::Mount)).await;
        assert_eq!(e.code(), tonic::Code::NotFound);
    }

    #[tokio::test]
    async fn a_block_volume_used_as_a_filesystem_is_invalid_naming_both_kinds() {
        let (dir, s) = service();
        let bounds = CapacityBounds {
            required: 4096,
            limit: None,
        };
        s.store.create("pvc-b", VolumeKind::Block, bounds).unwrap();
        let target = dir.path().join("t").display().to_string();
        let e = publish_error(&s, publish_request("pvc-b", &target, VolumeKind::Mount)).await;
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("pvc-b is a raw block volume"), "{e:?}");
        assert!(e.message().contains("as filesystem (mount)"), "{e:?}");
        assert!(e.message().contains("volumeDevices"), "{e:?}");
        assert!(!dir.path().join("t").exists());
    }

    #[tokio::test]
    async fn info_names_the_node_and_its_topology() {
        let (_dir, s) = service();
        let info = s
            .node_get_info(Request::new(NodeGetInfoRequest {}))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(info.node_id, "node-a");
        assert_eq!(info.max_volumes_per_node, 0);
        assert_eq!(info.accessible_topology, Some(topology::of_node("node-a")));
    }
}
