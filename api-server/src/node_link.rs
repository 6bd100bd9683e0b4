//! The api-server's side of the node link: finds the node agent that runs an instance,
//! connects to its pod over mutual TLS (both certificates from the api-server's CA, the
//! agent's checked for [`NODE_LINK_SERVER_NAME`]), sends the request line and reads the
//! reply line. For a console the connection is then handed to the caller.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use ironvisor_crds::cluster::{HANDLER_POD_LABEL, NODE_LINK_PORT, NODE_LINK_SERVER_NAME};
use ironvisor_crds::node_link::{encode_line, LinkOp, LinkReply, LinkRequest, MAX_LINE_BYTES};
use ironvisor_crds::v1alpha1::VirtualMachineInstance;
use ironvisor_tls::TlsError;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tracing::{debug, instrument};

use crate::certs::Certificates;
use crate::reply::Reply;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the agent may take to answer (it waits up to a minute for a console socket of
/// a launcher that is starting).
const REPLY_TIMEOUT: Duration = Duration::from_secs(75);

/// A connection to a node agent, past its reply line (buffered bytes included).
pub type LinkStream = BufReader<TlsStream<TcpStream>>;

/// The link's client side.
pub struct NodeLink {
    client: kube::Client,
    namespace: String,
    tls: RwLock<(String, Arc<ClientConfig>)>,
}

impl NodeLink {
    /// For the agents in `namespace`, with the link certificates of `certificates`.
    pub fn new(
        client: kube::Client,
        namespace: &str,
        certificates: &Certificates,
    ) -> Result<Self, TlsError> {
        Ok(Self {
            client,
            namespace: namespace.to_string(),
            tls: RwLock::new((
                certificates.node_client_pem.clone(),
                Arc::new(tls_config(certificates)?),
            )),
        })
    }

    /// Uses renewed certificates from now on.
    pub fn update(&self, certificates: &Certificates) -> Result<(), TlsError> {
        let unchanged = self
            .tls
            .read()
            .map(|current| current.0 == certificates.node_client_pem)
            .unwrap_or(false);
        if unchanged {
            return Ok(());
        }
        let config = Arc::new(tls_config(certificates)?);
        if let Ok(mut current) = self.tls.write() {
            *current = (certificates.node_client_pem.clone(), config);
        }
        Ok(())
    }

    fn config(&self) -> Option<Arc<ClientConfig>> {
        self.tls.read().ok().map(|current| current.1.clone())
    }

    /// Asks the agent running `namespace/name` to do `op`; on success returns the open
    /// connection (for a console, the console's bytes follow).
    #[instrument(skip(self), fields(op = op.name()))]
    pub async fn open(
        &self,
        namespace: &str,
        name: &str,
        op: LinkOp,
        port: Option<u16>,
    ) -> Result<LinkStream, Reply> {
        let what = format!("VirtualMachineInstance {namespace}/{name}");
        let vmi = Api::<VirtualMachineInstance>::namespaced(self.client.clone(), namespace)
            .get_opt(name)
            .await
            .map_err(|error| Reply::unavailable(format!("reading {what}: {error}")))?
            .ok_or_else(|| Reply::not_found(format!("{what} not found")))?;
        let node = vmi
            .status
            .as_ref()
            .and_then(|status| status.node_name.clone())
            .filter(|node| !node.is_empty())
            .ok_or_else(|| {
                Reply::conflict(format!("{what} is not running (it has no node yet)"))
            })?;
        let address = self.agent_address(&node).await?;
        debug!(%node, %address, "connecting to the node agent");
        let stream = self.connect(&address, &node).await?;
        let mut stream = BufReader::new(stream);
        let request = LinkRequest {
            op,
            namespace: namespace.to_string(),
            name: name.to_string(),
            port,
        };
        let exchange = async {
            stream.get_mut().write_all(&encode_line(&request)).await?;
            stream.get_mut().flush().await?;
            let mut line = Vec::new();
            let mut limited = (&mut stream).take(MAX_LINE_BYTES as u64);
            limited.read_until(b'\n', &mut line).await?;
            Ok::<_, std::io::Error>(line)
        };
        let line = match tokio::time::timeout(REPLY_TIMEOUT, exchange).await {
            Ok(Ok(line)) => line,
            Ok(Err(error)) => {
                return Err(Reply::unavailable(format!(
                    "the node agent on {node} broke off: {error}"
                )))
            }
            Err(_) => {
                return Err(Reply::unavailable(format!(
                    "the node agent on {node} did not answer within {REPLY_TIMEOUT:?}"
                )))
            }
        };
        let reply: LinkReply = serde_json::from_slice(&line).map_err(|error| {
            Reply::internal(format!(
                "the node agent on {node} answered nonsense: {error}"
            ))
        })?;
        match reply.code {
            200 => Ok(stream),
            400 => Err(Reply::bad_request(reply.message)),
            404 => Err(Reply::not_found(reply.message)),
            409 => Err(Reply::conflict(reply.message)),
            502 => Err(Reply::bad_gateway(reply.message)),
            _ => Err(Reply::internal(reply.message)),
        }
    }

    /// The pod IP of the node agent on `node`.
    async fn agent_address(&self, node: &str) -> Result<String, Reply> {
        let pods = Api::<Pod>::namespaced(self.client.clone(), &self.namespace)
            .list(
                &ListParams::default()
                    .labels(&format!("{}={}", HANDLER_POD_LABEL.0, HANDLER_POD_LABEL.1))
                    .fields(&format!("spec.nodeName={node}")),
            )
            .await
            .map_err(|error| {
                Reply::unavailable(format!("finding the node agent on {node}: {error}"))
            })?;
        pods.items
            .iter()
            .filter(|pod| pod.metadata.deletion_timestamp.is_none())
            .find_map(|pod| pod.status.as_ref().and_then(|status| status.pod_ip.clone()))
            .ok_or_else(|| {
                Reply::unavailable(format!(
                    "no running node agent (ironvisor-handler) on node {node}"
                ))
            })
    }

    async fn connect(&self, address: &str, node: &str) -> Result<TlsStream<TcpStream>, Reply> {
        let config = self
            .config()
            .ok_or_else(|| Reply::internal("the node link has no TLS configuration"))?;
        let server_name = ServerName::try_from(NODE_LINK_SERVER_NAME)
            .map_err(|error| Reply::internal(format!("node link server name: {error}")))?;
        let connecting = async {
            let tcp = TcpStream::connect((address, NODE_LINK_PORT)).await?;
            tcp.set_nodelay(true)?;
            TlsConnector::from(config).connect(server_name, tcp).await
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(error)) => Err(Reply::unavailable(format!(
                "connecting to the node agent on {node} ({address}:{NODE_LINK_PORT}): {error}"
            ))),
            Err(_) => Err(Reply::unavailable(format!(
                "connecting to the node agent on {node} ({address}:{NODE_LINK_PORT}) timed out"
            ))),
        }
    }
}

fn tls_config(certificates: &Certificates) -> Result<ClientConfig, TlsError> {
    ironvisor_tls::client_config(
        &certificates.bundle_pem(),
        &certificates.node_client_pem,
        &certificates.node_client_key_pem,
    )
}
