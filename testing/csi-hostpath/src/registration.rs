//! The kubelet's plugin-registration service: what the kubelet's plugin watcher asks
//! when it finds `<driver>-reg.sock` in its `plugins_registry` directory, and where it
//! reports the outcome.

use tonic::{Request, Response, Status};
use tracing::{error, info, instrument};

use crate::proto::registration::registration_server::Registration;
use crate::proto::registration::{
    InfoRequest, PluginInfo, RegistrationStatus, RegistrationStatusResponse,
};

/// The plugin type of a CSI driver.
pub const CSI_PLUGIN_TYPE: &str = "CSIPlugin";

/// The CSI versions served.
pub const SUPPORTED_VERSIONS: &[&str] = &["1.0.0"];

/// The Registration service.
#[derive(Debug, Clone)]
pub struct RegistrationService {
    driver_name: String,
    kubelet_endpoint: String,
}

impl RegistrationService {
    /// Registers `driver_name`, whose CSI socket the kubelet reaches at
    /// `kubelet_endpoint` (a path in the host's file system).
    pub fn new(driver_name: &str, kubelet_endpoint: &str) -> Self {
        Self {
            driver_name: driver_name.to_owned(),
            kubelet_endpoint: kubelet_endpoint.to_owned(),
        }
    }
}

#[tonic::async_trait]
impl Registration for RegistrationService {
    #[instrument(skip_all)]
    async fn get_info(
        &self,
        _request: Request<InfoRequest>,
    ) -> Result<Response<PluginInfo>, Status> {
        Ok(Response::new(PluginInfo {
            r#type: CSI_PLUGIN_TYPE.to_owned(),
            name: self.driver_name.clone(),
            endpoint: self.kubelet_endpoint.clone(),
            supported_versions: SUPPORTED_VERSIONS.iter().map(|v| (*v).to_owned()).collect(),
        }))
    }

    #[instrument(skip_all)]
    async fn notify_registration_status(
        &self,
        request: Request<RegistrationStatus>,
    ) -> Result<Response<RegistrationStatusResponse>, Status> {
        let status = request.into_inner();
        if status.plugin_registered {
            info!(driver = %self.driver_name, "registered with the kubelet");
        } else {
            error!(driver = %self.driver_name, kubelet_error = %status.error, "the kubelet refused the registration");
        }
        Ok(Response::new(RegistrationStatusResponse {}))
    }
}
