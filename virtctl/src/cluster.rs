//! virtctl against a Kubernetes cluster: the user's own kubeconfig, and Ironvisor's
//! subresource API (`subresources.ironvisor.io/v1alpha1`) through kube-apiserver, so the
//! cluster authenticates the user and RBAC decides what they may do.
//!
//! Cluster mode is used when a kubeconfig is configured (`--kubeconfig`, `KUBECONFIG` or
//! `~/.kube/config`) and `--node` is not given; otherwise virtctl talks to the standalone
//! node daemon's socket.

use std::path::{Path, PathBuf};

use kube::config::{KubeConfigOptions, Kubeconfig};
use tracing::{debug, instrument};

/// A console WebSocket.
pub type ConsoleSocket =
    tokio_tungstenite::WebSocketStream<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>;

/// The group and version of the subresource API.
pub const SUBRESOURCE_API: &str = "/apis/subresources.ironvisor.io/v1alpha1";

/// Why a cluster call failed; each names what failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The kubeconfig could not be read or has no usable context.
    #[error("kubeconfig {where_}: {source}")]
    Kubeconfig {
        /// Which file(s).
        where_: String,
        /// The error.
        source: kube::config::KubeconfigError,
    },
    /// The client could not be built from the kubeconfig.
    #[error("kubeconfig {where_}: cannot build a client: {source}")]
    Client {
        /// Which file(s).
        where_: String,
        /// The error.
        source: Box<kube::Error>,
    },
    /// The API server answered with an error.
    #[error("{what}: {message}")]
    Refused {
        /// What was asked, e.g. "start VirtualMachine default/small".
        what: String,
        /// HTTP status.
        code: u16,
        /// The server's message, with a hint for the common cases.
        message: String,
    },
    /// The API server could not be reached.
    #[error("{what}: the Kubernetes API server at {server} is unreachable: {source}")]
    Unreachable {
        /// What was asked.
        what: String,
        /// Its URL.
        server: String,
        /// The error.
        source: Box<kube::Error>,
    },
}

/// Where the cluster configuration comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterOptions {
    /// `--kubeconfig`.
    pub kubeconfig: Option<PathBuf>,
    /// `--context`.
    pub context: Option<String>,
    /// `--namespace`.
    pub namespace: Option<String>,
}

/// Whether a cluster is configured: `--kubeconfig`, a non-empty `KUBECONFIG`, or
/// `$HOME/.kube/config`.
pub fn configured(kubeconfig: Option<&Path>) -> bool {
    if kubeconfig.is_some() {
        return true;
    }
    if std::env::var_os("KUBECONFIG").is_some_and(|v| !v.is_empty()) {
        return true;
    }
    std::env::var_os("HOME")
        .map(|home| Path::new(&home).join(".kube/config").is_file())
        .unwrap_or(false)
}

/// A client for the cluster and the namespace to act in.
#[derive(Clone)]
pub struct Cluster {
    client: kube::Client,
    server: String,
    /// The namespace: `--namespace`, the context's, or "default".
    pub namespace: String,
}

impl Cluster {
    /// Connects with the user's kubeconfig.
    #[instrument(skip_all)]
    pub async fn connect(options: &ClusterOptions) -> Result<Self, ClusterError> {
        let where_ = match &options.kubeconfig {
            Some(path) => path.display().to_string(),
            None => std::env::var("KUBECONFIG")
                .ok()
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| "~/.kube/config".into()),
        };
        let kubeconfig_error = |source| ClusterError::Kubeconfig {
            where_: where_.clone(),
            source,
        };
        let kubeconfig = match &options.kubeconfig {
            Some(path) => Kubeconfig::read_from(path),
            None => Kubeconfig::read(),
        }
        .map_err(kubeconfig_error)?;
        let selection = KubeConfigOptions {
            context: options.context.clone(),
            ..KubeConfigOptions::default()
        };
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &selection)
            .await
            .map_err(kubeconfig_error)?;
        let namespace = options
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let server = config.cluster_url.to_string();
        let client = kube::Client::try_from(config).map_err(|source| ClusterError::Client {
            where_: where_.clone(),
            source: Box::new(source),
        })?;
        debug!(%server, %namespace, "cluster mode");
        Ok(Self {
            client,
            server,
            namespace,
        })
    }

    /// The path of a VM subresource.
    pub fn vm_subresource(&self, name: &str, action: &str) -> String {
        format!(
            "{SUBRESOURCE_API}/namespaces/{}/virtualmachines/{name}/{action}",
            self.namespace
        )
    }

    /// The path of an instance subresource.
    pub fn vmi_subresource(&self, name: &str, action: &str) -> String {
        format!(
            "{SUBRESOURCE_API}/namespaces/{}/virtualmachineinstances/{name}/{action}",
            self.namespace
        )
    }

    /// PUT `body` on a VM subresource (`start`, `stop`, `restart`); returns the server's
    /// message.
    pub async fn vm_action(
        &self,
        name: &str,
        action: &str,
        body: serde_json::Value,
    ) -> Result<String, ClusterError> {
        let what = format!("{action} VirtualMachine {}/{name}", self.namespace);
        self.put(self.vm_subresource(name, action), what, body)
            .await
    }

    /// PUT on an instance subresource (`pause`, `unpause`); returns the server's message.
    pub async fn vmi_action(&self, name: &str, action: &str) -> Result<String, ClusterError> {
        let what = format!("{action} VirtualMachineInstance {}/{name}", self.namespace);
        self.put(
            self.vmi_subresource(name, action),
            what,
            serde_json::json!({}),
        )
        .await
    }

    /// Opens the serial console of instance `name` (a WebSocket with the channel protocol:
    /// channel 0 to the guest, 1 from it).
    #[instrument(skip(self), fields(namespace = %self.namespace))]
    pub async fn console(&self, name: &str) -> Result<ConsoleSocket, ClusterError> {
        let what = format!(
            "console of VirtualMachineInstance {}/{name}",
            self.namespace
        );
        self.websocket(self.vmi_subresource(name, "console"), what)
            .await
    }

    /// Opens a TCP connection to `port` of instance `name`'s guest (a WebSocket with the
    /// channel protocol, as the console).
    #[instrument(skip(self), fields(namespace = %self.namespace))]
    pub async fn port_forward(&self, name: &str, port: u16) -> Result<ConsoleSocket, ClusterError> {
        let what = format!(
            "port {port} of VirtualMachineInstance {}/{name}",
            self.namespace
        );
        self.websocket(
            self.vmi_subresource(name, &format!("portforward/{port}")),
            what,
        )
        .await
    }

    /// A WebSocket on `path`; errors name `what`.
    async fn websocket(&self, path: String, what: String) -> Result<ConsoleSocket, ClusterError> {
        let request =
            http::Request::get(path)
                .body(Vec::new())
                .map_err(|error| ClusterError::Refused {
                    what: what.clone(),
                    code: 0,
                    message: format!("cannot build the request: {error}"),
                })?;
        match self.client.connect(request).await {
            Ok(connection) => Ok(connection.into_stream()),
            Err(error) => Err(self.failure(what, error)),
        }
    }

    fn failure(&self, what: String, error: kube::Error) -> ClusterError {
        match error {
            kube::Error::Api(status) => ClusterError::Refused {
                what,
                code: status.code,
                message: explain(status.code, &status.message),
            },
            source => ClusterError::Unreachable {
                what,
                server: self.server.clone(),
                source: Box::new(source),
            },
        }
    }

    #[instrument(skip(self, body), fields(namespace = %self.namespace))]
    async fn put(
        &self,
        path: String,
        what: String,
        body: serde_json::Value,
    ) -> Result<String, ClusterError> {
        let request = http::Request::put(path)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body.to_string().into_bytes())
            .map_err(|error| ClusterError::Refused {
                what: what.clone(),
                code: 0,
                message: format!("cannot build the request: {error}"),
            })?;
        match self.client.request_text(request).await {
            Ok(text) => Ok(serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|status| status["message"].as_str().map(str::to_string))
                .unwrap_or_else(|| format!("{what}: done"))),
            Err(error) => Err(self.failure(what, error)),
        }
    }
}

/// The server's message, with what to do about the common refusals.
fn explain(code: u16, message: &str) -> String {
    match code {
        401 => format!("not authenticated: {message} (check the credentials in your kubeconfig)"),
        403 => format!("forbidden: {message}"),
        404 if message.contains("could not find the requested resource") => format!(
            "{message}: the subresource API is not served (is Ironvisor's api-server deployed? \
             kubectl get apiservice v1alpha1.subresources.ironvisor.io)"
        ),
        503 => format!(
            "the Ironvisor api-server is unavailable: {message} \
             (kubectl get apiservice v1alpha1.subresources.ironvisor.io)"
        ),
        _ => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_say_what_to_check() {
        assert!(explain(403, "User \"bob\" cannot").starts_with("forbidden: User"));
        assert!(explain(503, "service unavailable").contains("kubectl get apiservice"));
        assert!(
            explain(404, "the server could not find the requested resource")
                .contains("api-server deployed")
        );
        assert_eq!(
            explain(409, "VirtualMachine d/s is not running"),
            "VirtualMachine d/s is not running"
        );
    }

    #[test]
    fn an_explicit_kubeconfig_configures_a_cluster() {
        assert!(configured(Some(Path::new("/nonexistent"))));
    }
}
