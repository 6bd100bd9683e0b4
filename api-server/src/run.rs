//! Wiring for the binary: certificates first (from the shared Secret), then the server,
//! and a loop that renews the certificates, reloads the serving one and keeps the CA
//! bundle injected.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::ca_bundle::{self, BundleTargets};
use crate::cert_store::{CertStore, StoreError};
use crate::certs::Lifetimes;
use crate::identity::RequestHeaderAuth;
use crate::node_link::NodeLink;
use crate::server::{self, ServerError, ServerState};
use ironvisor_tls::{ClientAuth, ReloadableCertificate, TlsError};

/// What the binary was told.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Where HTTPS listens.
    pub listen: SocketAddr,
    /// The api-server's namespace (its Service and Secret live there).
    pub namespace: String,
    /// Its Service's name (the serving certificate is for `NAME.NAMESPACE.svc`).
    pub service_name: String,
    /// The Secret holding the certificates.
    pub secret_name: String,
    /// Objects to inject the CA bundle into.
    pub targets: BundleTargets,
    /// Certificate lifetimes.
    pub lifetimes: Lifetimes,
    /// How often certificates and bundles are checked.
    pub refresh: Duration,
}

/// Why the api-server stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// No cluster configuration.
    #[error("cannot reach the cluster: {0}")]
    Client(#[source] kube::Error),
    /// The certificates could not be had.
    #[error(transparent)]
    Certificates(#[from] StoreError),
    /// TLS could not be set up.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The server failed.
    #[error(transparent)]
    Server(#[from] ServerError),
}

/// The DNS names a Service is reached by.
pub fn service_dns_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
        format!("{service}.{namespace}"),
        service.to_string(),
    ]
}

/// Runs until the server fails.
pub async fn run(config: RunConfig) -> Result<(), RunError> {
    let client = kube::Client::try_default()
        .await
        .map_err(RunError::Client)?;
    let store = CertStore::new(
        client.clone(),
        &config.namespace,
        &config.secret_name,
        service_dns_names(&config.service_name, &config.namespace),
        config.lifetimes,
    );
    let certificates = retry("loading the certificates", || store.ensure()).await;
    let serving = Arc::new(ReloadableCertificate::new(
        &certificates.serving_pem,
        &certificates.serving_key_pem,
    )?);
    let node_link = Arc::new(NodeLink::new(
        client.clone(),
        &config.namespace,
        &certificates,
    )?);
    let request_header = match RequestHeaderAuth::load(&client).await {
        Ok(auth) => Some(auth),
        Err(error) => {
            warn!(%error, "subresource requests will be refused as unauthenticated");
            None
        }
    };
    let client_ca = request_header
        .as_ref()
        .and_then(|a| a.client_ca_pem.clone());
    let tls_config = Arc::new(ironvisor_tls::server_config(
        serving.clone(),
        client_ca.as_deref(),
        ClientAuth::Optional,
    )?);
    let state = Arc::new(ServerState {
        client: client.clone(),
        request_header,
        ready: AtomicBool::new(false),
        node_link: node_link.clone(),
    });
    let refresher = {
        let state = state.clone();
        async move {
            loop {
                match store.ensure().await {
                    Ok(certificates) => {
                        match serving
                            .replace(&certificates.serving_pem, &certificates.serving_key_pem)
                        {
                            Ok(true) => info!("serving the renewed certificate"),
                            Ok(false) => {}
                            Err(error) => warn!(%error, "the renewed certificate is unusable"),
                        }
                        if let Err(error) = node_link.update(&certificates) {
                            warn!(%error, "the renewed node link certificate is unusable");
                        }
                        if let Err(error) = store.publish_node_link(&certificates).await {
                            warn!(%error, "node link certificate not published; retrying");
                        }
                        match ca_bundle::inject(
                            &state.client,
                            &config.targets,
                            &certificates.bundle_pem(),
                        )
                        .await
                        {
                            Ok(_) => state.ready.store(true, Ordering::Relaxed),
                            Err(error) => warn!(%error, "CA bundle not injected; retrying"),
                        }
                    }
                    Err(error) => warn!(%error, "certificate check failed; retrying"),
                }
                let pause = if state.ready.load(Ordering::Relaxed) {
                    config.refresh
                } else {
                    Duration::from_secs(2)
                };
                tokio::time::sleep(pause).await;
            }
        }
    };
    tokio::spawn(refresher);
    server::serve(config.listen, tls_config, state).await?;
    Ok(())
}

/// Calls `attempt` until it succeeds, logging each failure, backing off up to 30 s.
async fn retry<T, E, F, Fut>(what: &str, attempt: F) -> T
where
    E: std::fmt::Display,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut pause = Duration::from_millis(500);
    loop {
        match attempt().await {
            Ok(value) => return value,
            Err(error) => {
                warn!(%error, "{what} failed; retrying in {pause:?}");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(30));
            }
        }
    }
}
