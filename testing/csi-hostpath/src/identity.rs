//! The CSI Identity service: who the driver is, what it offers, whether it is ready.

use tonic::{Request, Response, Status};
use tracing::instrument;

use crate::proto::csi::identity_server::Identity;
use crate::proto::csi::plugin_capability::{self, service};
use crate::proto::csi::{
    GetPluginCapabilitiesRequest, GetPluginCapabilitiesResponse, GetPluginInfoRequest,
    GetPluginInfoResponse, PluginCapability, ProbeRequest, ProbeResponse,
};

/// The Identity service.
#[derive(Debug, Clone)]
pub struct IdentityService {
    driver_name: String,
}

impl IdentityService {
    /// The service of the driver called `driver_name`.
    pub fn new(driver_name: &str) -> Self {
        Self {
            driver_name: driver_name.to_owned(),
        }
    }
}

fn service_capability(kind: service::Type) -> PluginCapability {
    PluginCapability {
        r#type: Some(plugin_capability::Type::Service(
            plugin_capability::Service {
                r#type: kind.into(),
            },
        )),
    }
}

#[tonic::async_trait]
impl Identity for IdentityService {
    #[instrument(skip_all)]
    async fn get_plugin_info(
        &self,
        _request: Request<GetPluginInfoRequest>,
    ) -> Result<Response<GetPluginInfoResponse>, Status> {
        Ok(Response::new(GetPluginInfoResponse {
            name: self.driver_name.clone(),
            vendor_version: crate::VERSION.to_owned(),
        }))
    }

    #[instrument(skip_all)]
    async fn get_plugin_capabilities(
        &self,
        _request: Request<GetPluginCapabilitiesRequest>,
    ) -> Result<Response<GetPluginCapabilitiesResponse>, Status> {
        Ok(Response::new(GetPluginCapabilitiesResponse {
            capabilities: vec![
                service_capability(service::Type::ControllerService),
                service_capability(service::Type::VolumeAccessibilityConstraints),
            ],
        }))
    }

    #[instrument(skip_all)]
    async fn probe(
        &self,
        _request: Request<ProbeRequest>,
    ) -> Result<Response<ProbeResponse>, Status> {
        Ok(Response::new(ProbeResponse { ready: Some(true) }))
    }
}
