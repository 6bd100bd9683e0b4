//! The `DevicePlugin` gRPC service of one resource, as the kubelet calls it: options,
//! the device list (streamed, following the host device's health) and allocation.
//!
//! Every virtual device of a resource stands for the same host device node, so an
//! allocation of any number of them gives the container that one node, once.

use std::collections::HashSet;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::{debug, info_span, warn, Instrument};

use crate::config::DeviceResource;
use crate::health::Health;
use crate::proto::device_plugin_server::DevicePlugin;
use crate::proto::{
    AllocateRequest, AllocateResponse, ContainerAllocateResponse,
    ContainerPreferredAllocationRequest, ContainerPreferredAllocationResponse, Device,
    DevicePluginOptions, DeviceSpec, Empty, ListAndWatchResponse, PreStartContainerRequest,
    PreStartContainerResponse, PreferredAllocationRequest, PreferredAllocationResponse,
};

/// Cgroup device access granted in the container: read and write, no mknod.
pub const PERMISSIONS: &str = "rw";

/// Why an allocation is refused; turned into a gRPC status for the kubelet.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AllocateError {
    /// The kubelet named a device this plugin never advertised.
    #[error("{resource}: unknown device {id:?}")]
    UnknownDevice {
        /// The resource name.
        resource: String,
        /// The device ID.
        id: String,
    },
    /// The host device cannot be opened right now.
    #[error("{resource}: host device {path} is unhealthy: {reason}")]
    Unhealthy {
        /// The resource name.
        resource: String,
        /// The host device node.
        path: String,
        /// Why the probe failed.
        reason: String,
    },
}

impl From<AllocateError> for Status {
    fn from(error: AllocateError) -> Self {
        match error {
            AllocateError::UnknownDevice { .. } => Status::invalid_argument(error.to_string()),
            AllocateError::Unhealthy { .. } => Status::failed_precondition(error.to_string()),
        }
    }
}

/// The service of one resource.
#[derive(Debug, Clone)]
pub struct DevicePluginService {
    resource: Arc<DeviceResource>,
    health: watch::Receiver<Health>,
    stop: watch::Receiver<bool>,
}

impl DevicePluginService {
    /// Serves `resource` whose host device state is `health`. ListAndWatch streams end
    /// once `stop` turns true, so that a graceful server shutdown does not wait for the
    /// kubelet to hang up.
    pub fn new(
        resource: Arc<DeviceResource>,
        health: watch::Receiver<Health>,
        stop: watch::Receiver<bool>,
    ) -> Self {
        Self {
            resource,
            health,
            stop,
        }
    }

    /// The device list in health state `health`.
    pub fn device_list(resource: &DeviceResource, health: &Health) -> ListAndWatchResponse {
        let state = health.as_kubelet_str();
        ListAndWatchResponse {
            devices: (0..resource.device_count)
                .map(|i| Device {
                    id: resource.device_id(i),
                    health: state.to_owned(),
                    topology: None,
                })
                .collect(),
        }
    }

    /// The answer to `request` when the host device is in state `health`.
    pub fn allocate_response(
        resource: &DeviceResource,
        health: &Health,
        request: &AllocateRequest,
    ) -> Result<AllocateResponse, AllocateError> {
        if let Health::Unhealthy(reason) = health {
            return Err(AllocateError::Unhealthy {
                resource: resource.resource_name.clone(),
                path: resource.host_path.display().to_string(),
                reason: reason.clone(),
            });
        }
        let known: HashSet<String> = (0..resource.device_count)
            .map(|i| resource.device_id(i))
            .collect();
        let mut container_responses = Vec::with_capacity(request.container_requests.len());
        for container in &request.container_requests {
            if let Some(id) = container.devices_ids.iter().find(|id| !known.contains(*id)) {
                return Err(AllocateError::UnknownDevice {
                    resource: resource.resource_name.clone(),
                    id: id.clone(),
                });
            }
            let devices = if container.devices_ids.is_empty() {
                Vec::new()
            } else {
                vec![DeviceSpec {
                    container_path: resource.container_path.display().to_string(),
                    host_path: resource.host_path.display().to_string(),
                    permissions: PERMISSIONS.to_owned(),
                }]
            };
            container_responses.push(ContainerAllocateResponse {
                devices,
                ..Default::default()
            });
        }
        Ok(AllocateResponse {
            container_responses,
        })
    }
}

/// The devices that must be included, then available ones, up to the size asked for.
/// All devices are alike, so any choice is as good; this one is stable.
pub fn preferred(
    request: &ContainerPreferredAllocationRequest,
) -> ContainerPreferredAllocationResponse {
    let size = usize::try_from(request.allocation_size).unwrap_or(0);
    let mut chosen: Vec<String> = request.must_include_device_i_ds.clone();
    for id in &request.available_device_i_ds {
        if chosen.len() >= size {
            break;
        }
        if !chosen.contains(id) {
            chosen.push(id.clone());
        }
    }
    ContainerPreferredAllocationResponse {
        device_i_ds: chosen,
    }
}

/// Sends the list now and after every health change until `stop`, or the kubelet
/// hangs up.
async fn stream_devices(
    resource: Arc<DeviceResource>,
    mut health: watch::Receiver<Health>,
    mut stop: watch::Receiver<bool>,
    tx: mpsc::Sender<Result<ListAndWatchResponse, Status>>,
) {
    loop {
        let list = {
            let current = health.borrow_and_update();
            DevicePluginService::device_list(&resource, &current)
        };
        debug!(devices = list.devices.len(), "sending the device list");
        if tx.send(Ok(list)).await.is_err() {
            debug!("the kubelet closed ListAndWatch");
            return;
        }
        tokio::select! {
            changed = health.changed() => if changed.is_err() { return },
            _ = stop.wait_for(|stop| *stop) => return,
            () = tx.closed() => return,
        }
    }
}

#[tonic::async_trait]
impl DevicePlugin for DevicePluginService {
    async fn get_device_plugin_options(
        &self,
        _request: Request<Empty>,
    ) -> Result<Response<DevicePluginOptions>, Status> {
        Ok(Response::new(options()))
    }

    type ListAndWatchStream = ReceiverStream<Result<ListAndWatchResponse, Status>>;

    async fn list_and_watch(
        &self,
        _request: Request<Empty>,
    ) -> Result<Response<Self::ListAndWatchStream>, Status> {
        let (tx, rx) = mpsc::channel(4);
        let span = info_span!("list_and_watch", resource = %self.resource.resource_name);
        tokio::spawn(
            stream_devices(
                Arc::clone(&self.resource),
                self.health.clone(),
                self.stop.clone(),
                tx,
            )
            .instrument(span),
        );
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_preferred_allocation(
        &self,
        request: Request<PreferredAllocationRequest>,
    ) -> Result<Response<PreferredAllocationResponse>, Status> {
        let container_responses = request
            .get_ref()
            .container_requests
            .iter()
            .map(preferred)
            .collect();
        Ok(Response::new(PreferredAllocationResponse {
            container_responses,
        }))
    }

    async fn allocate(
        &self,
        request: Request<AllocateRequest>,
    ) -> Result<Response<AllocateResponse>, Status> {
        let span = info_span!(
            "allocate",
            resource = %self.resource.resource_name,
            containers = request.get_ref().container_requests.len()
        );
        let _entered = span.enter();
        let health = self.health.borrow().clone();
        match Self::allocate_response(&self.resource, &health, request.get_ref()) {
            Ok(response) => {
                debug!("allocated");
                Ok(Response::new(response))
            }
            Err(error) => {
                warn!(%error, "allocation refused");
                Err(error.into())
            }
        }
    }

    async fn pre_start_container(
        &self,
        _request: Request<PreStartContainerRequest>,
    ) -> Result<Response<PreStartContainerResponse>, Status> {
        // Not requested in the options; nothing to prepare if the kubelet calls anyway.
        Ok(Response::new(PreStartContainerResponse {}))
    }
}

/// No PreStartContainer and no GetPreferredAllocation: every device is alike and needs
/// no preparation.
pub fn options() -> DevicePluginOptions {
    DevicePluginOptions {
        pre_start_required: false,
        get_preferred_allocation_available: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::ContainerAllocateRequest;
    use std::path::PathBuf;

    fn resource() -> DeviceResource {
        DeviceResource {
            device_count: 3,
            host_path: PathBuf::from("/host/kvm"),
            ..DeviceResource::kvm()
        }
    }

    fn request(containers: &[&[&str]]) -> AllocateRequest {
        AllocateRequest {
            container_requests: containers
                .iter()
                .map(|ids| ContainerAllocateRequest {
                    devices_ids: ids.iter().map(|id| (*id).to_owned()).collect(),
                })
                .collect(),
        }
    }

    #[test]
    fn lists_every_device_in_the_current_state() {
        let list = DevicePluginService::device_list(&resource(), &Health::Healthy);
        let ids: Vec<_> = list.devices.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["kvm-0", "kvm-1", "kvm-2"]);
        assert!(list.devices.iter().all(|d| d.health == "Healthy"));
        let list = DevicePluginService::device_list(&resource(), &Health::Unhealthy("x".into()));
        assert!(list.devices.iter().all(|d| d.health == "Unhealthy"));
    }

    #[test]
    fn allocation_gives_each_container_the_host_device_once() {
        let response = DevicePluginService::allocate_response(
            &resource(),
            &Health::Healthy,
            &request(&[&["kvm-0", "kvm-2"], &["kvm-1"], &[]]),
        )
        .unwrap();
        let spec = DeviceSpec {
            container_path: "/dev/kvm".into(),
            host_path: "/host/kvm".into(),
            permissions: "rw".into(),
        };
        let devices: Vec<_> = response
            .container_responses
            .iter()
            .map(|c| c.devices.clone())
            .collect();
        assert_eq!(devices, [vec![spec.clone()], vec![spec], vec![]]);
        let first = &response.container_responses[0];
        assert!(first.mounts.is_empty() && first.envs.is_empty() && first.cdi_devices.is_empty());
    }

    #[test]
    fn allocation_refuses_unknown_devices_and_unhealthy_hosts() {
        let e = DevicePluginService::allocate_response(
            &resource(),
            &Health::Healthy,
            &request(&[&["kvm-3"]]),
        )
        .unwrap_err();
        assert!(matches!(e, AllocateError::UnknownDevice { ref id, .. } if id == "kvm-3"));
        assert_eq!(Status::from(e).code(), tonic::Code::InvalidArgument);
        let e = DevicePluginService::allocate_response(
            &resource(),
            &Health::Unhealthy("gone".into()),
            &request(&[&["kvm-0"]]),
        )
        .unwrap_err();
        assert_eq!(Status::from(e).code(), tonic::Code::FailedPrecondition);
    }

    #[test]
    fn preferred_allocation_keeps_the_required_devices_first() {
        let ids = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let answer = preferred(&ContainerPreferredAllocationRequest {
            available_device_i_ds: ids(&["kvm-0", "kvm-1", "kvm-2"]),
            must_include_device_i_ds: ids(&["kvm-2"]),
            allocation_size: 2,
        });
        assert_eq!(answer.device_i_ds, ids(&["kvm-2", "kvm-0"]));
        let answer = preferred(&ContainerPreferredAllocationRequest {
            available_device_i_ds: ids(&["kvm-0"]),
            must_include_device_i_ds: vec![],
            allocation_size: -1,
        });
        assert!(answer.device_i_ds.is_empty());
    }
}
