//! The CSI Controller service: creating and deleting volumes, as the external
//! provisioner asks for PersistentVolumeClaims.

use std::collections::BTreeMap;
use std::sync::Arc;

use tonic::{Request, Response, Status};
use tracing::{info, instrument};

use crate::blocking::OperationLock;
use crate::capability;
use crate::capacity::CapacityBounds;
use crate::proto::csi::controller_server::Controller;
use crate::proto::csi::controller_service_capability::{self, rpc};
use crate::proto::csi::{
    ControllerGetCapabilitiesRequest, ControllerGetCapabilitiesResponse,
    ControllerServiceCapability, CreateVolumeRequest, CreateVolumeResponse, DeleteVolumeRequest,
    DeleteVolumeResponse, Volume,
};
use crate::store::VolumeStore;
use crate::topology;
use crate::volume_id::VolumeId;

/// Why a controller request is refused before the store is asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControllerError {
    /// A required field is empty.
    #[error("{field} is required")]
    Missing {
        /// The field.
        field: &'static str,
    },
    /// The request asks for a copy of a snapshot or volume.
    #[error("creating a volume from a {source_kind} is not supported by this driver")]
    ContentSource {
        /// "snapshot" or "volume".
        source_kind: &'static str,
    },
}

impl From<ControllerError> for Status {
    fn from(error: ControllerError) -> Self {
        Status::invalid_argument(error.to_string())
    }
}

/// The Controller service.
#[derive(Debug, Clone)]
pub struct ControllerService {
    store: Arc<VolumeStore>,
    lock: OperationLock,
}

impl ControllerService {
    /// The service creating volumes in `store`, one operation at a time under `lock`.
    pub fn new(store: Arc<VolumeStore>, lock: OperationLock) -> Self {
        Self { store, lock }
    }
}

fn check_content_source(request: &CreateVolumeRequest) -> Result<(), ControllerError> {
    use crate::proto::csi::volume_content_source::Type;
    match request.volume_content_source.as_ref().map(|s| &s.r#type) {
        None => Ok(()),
        Some(Some(Type::Volume(_))) => Err(ControllerError::ContentSource {
            source_kind: "volume",
        }),
        Some(_) => Err(ControllerError::ContentSource {
            source_kind: "snapshot",
        }),
    }
}

#[tonic::async_trait]
impl Controller for ControllerService {
    #[instrument(skip_all, err(level = "warn"), fields(name = %request.get_ref().name))]
    async fn create_volume(
        &self,
        request: Request<CreateVolumeRequest>,
    ) -> Result<Response<CreateVolumeResponse>, Status> {
        let request = request.into_inner();
        if request.name.is_empty() {
            return Err(ControllerError::Missing { field: "name" }.into());
        }
        check_content_source(&request)?;
        let kind = capability::kind_of_all(&request.volume_capabilities)?;
        let bounds = CapacityBounds::from_range(request.capacity_range.as_ref())?;
        topology::check(
            request.accessibility_requirements.as_ref(),
            self.store.node(),
        )?;
        if !request.parameters.is_empty() {
            let parameters: BTreeMap<_, _> = request.parameters.iter().collect();
            info!(?parameters, "ignoring parameters: this driver takes none");
        }
        let store = Arc::clone(&self.store);
        let name = request.name;
        let volume = self
            .lock
            .run(move || Ok(store.create(&name, kind, bounds)?))
            .await?;
        Ok(Response::new(CreateVolumeResponse {
            volume: Some(Volume {
                capacity_bytes: i64::try_from(volume.meta.capacity_bytes).unwrap_or(i64::MAX),
                volume_id: volume.id.to_string(),
                accessible_topology: vec![topology::of_node(self.store.node())],
            }),
        }))
    }

    #[instrument(skip_all, err(level = "warn"), fields(volume_id = %request.get_ref().volume_id))]
    async fn delete_volume(
        &self,
        request: Request<DeleteVolumeRequest>,
    ) -> Result<Response<DeleteVolumeResponse>, Status> {
        let request = request.into_inner();
        if request.volume_id.is_empty() {
            return Err(ControllerError::Missing { field: "volume_id" }.into());
        }
        let id = VolumeId::parse(&request.volume_id)?;
        let store = Arc::clone(&self.store);
        let deleted = self.lock.run(move || Ok(store.delete(&id)?)).await?;
        info!(?deleted, "delete done");
        Ok(Response::new(DeleteVolumeResponse {}))
    }

    #[instrument(skip_all)]
    async fn controller_get_capabilities(
        &self,
        _request: Request<ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<ControllerGetCapabilitiesResponse>, Status> {
        Ok(Response::new(ControllerGetCapabilitiesResponse {
            capabilities: vec![ControllerServiceCapability {
                r#type: Some(controller_service_capability::Type::Rpc(
                    controller_service_capability::Rpc {
                        r#type: rpc::Type::CreateDeleteVolume.into(),
                    },
                )),
            }],
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capability::tests::capability;
    use crate::capability::VolumeKind;
    use crate::proto::csi::volume_capability::access_mode::Mode;
    use crate::proto::csi::volume_content_source::{SnapshotSource, Type};
    use crate::proto::csi::{CapacityRange, TopologyRequirement, VolumeContentSource};

    fn service() -> (tempfile::TempDir, ControllerService) {
        let dir = tempfile::tempdir().unwrap();
        let store = VolumeStore::open(&dir.path().join("data"), "node-a").unwrap();
        (
            dir,
            ControllerService::new(Arc::new(store), OperationLock::default()),
        )
    }

    fn request(name: &str, kind: VolumeKind) -> CreateVolumeRequest {
        CreateVolumeRequest {
            name: name.to_owned(),
            capacity_range: Some(CapacityRange {
                required_bytes: 1 << 20,
                limit_bytes: 0,
            }),
            volume_capabilities: vec![capability(kind, Mode::SingleNodeWriter)],
            ..Default::default()
        }
    }

    async fn create(s: &ControllerService, r: CreateVolumeRequest) -> Result<Volume, Status> {
        Ok(s.create_volume(Request::new(r))
            .await?
            .into_inner()
            .volume
            .unwrap())
    }

    #[tokio::test]
    async fn creates_with_the_node_topology() {
        let (_dir, s) = service();
        let v = create(&s, request("pvc-1", VolumeKind::Mount))
            .await
            .unwrap();
        assert_eq!(v.volume_id, "pvc-1");
        assert_eq!(v.capacity_bytes, 1 << 20);
        assert_eq!(v.accessible_topology, [topology::of_node("node-a")]);
    }

    #[tokio::test]
    async fn refuses_bad_requests_with_the_right_codes() {
        let (_dir, s) = service();
        let code = |r| async { create(&s, r).await.unwrap_err().code() };
        assert_eq!(
            code(request("", VolumeKind::Mount)).await,
            tonic::Code::InvalidArgument
        );
        let mut r = request("pvc-1", VolumeKind::Mount);
        r.volume_content_source = Some(VolumeContentSource {
            r#type: Some(Type::Snapshot(SnapshotSource::default())),
        });
        let e = create(&s, r).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("not supported"), "{e:?}");
        let mut r = request("pvc-1", VolumeKind::Mount);
        r.volume_capabilities = vec![capability(VolumeKind::Mount, Mode::MultiNodeMultiWriter)];
        assert_eq!(code(r).await, tonic::Code::InvalidArgument);
        let mut r = request("pvc-1", VolumeKind::Mount);
        r.capacity_range = Some(CapacityRange {
            required_bytes: 10,
            limit_bytes: 5,
        });
        assert_eq!(code(r).await, tonic::Code::OutOfRange);
        let mut r = request("pvc-1", VolumeKind::Mount);
        r.accessibility_requirements = Some(TopologyRequirement {
            requisite: vec![topology::of_node("node-b")],
            preferred: vec![],
        });
        let e = create(&s, r).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(e.message().contains("node-a"), "{e:?}");
    }

    #[tokio::test]
    async fn delete_needs_a_well_formed_id() {
        let (_dir, s) = service();
        let delete = |id: &str| {
            s.delete_volume(Request::new(DeleteVolumeRequest {
                volume_id: id.to_owned(),
            }))
        };
        assert_eq!(
            delete("").await.unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            delete("../etc").await.unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        assert!(delete("pvc-unknown").await.is_ok());
    }
}
