//! The node agent's side of the node link: a mutual-TLS server on
//! [`NODE_LINK_PORT`] of the agent's pod through which the api-server (and only it: its
//! client certificate must chain to the api-server's CA and be named
//! [`NODE_LINK_CLIENT_NAME`]) reaches the instances on this node — their serial console,
//! pause and unpause, and their guests' TCP ports ([`crate::port_forward`]).
//!
//! The certificate, its key and the CA come from the Secret [`NODE_LINK_SECRET`] that the
//! api-server writes; the agent waits for it, and reloads it when it changes.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::future::Shared;
use ironvisor_crds::cluster::{NODE_LINK_CLIENT_NAME, NODE_LINK_PORT, NODE_LINK_SECRET};
use ironvisor_crds::node_link::{encode_line, LinkOp, LinkReply, LinkRequest, MAX_LINE_BYTES};
use ironvisor_launcher_api::{ClientOptions, LauncherClient};
use ironvisor_tls::{ClientAuth, ReloadableCertificate, TlsError};
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};
use rustls::ServerConfig;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::console::{self, ConsoleError};
use crate::instances::InstanceContext;
use crate::pod_volumes::launcher_api_socket;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const REFRESH: Duration = Duration::from_secs(30);
const LAUNCHER_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the link cannot serve.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The port cannot be bound.
    #[error("node link: cannot listen on port {port}: {source}")]
    Bind {
        /// The port.
        port: u16,
        /// The error.
        source: std::io::Error,
    },
    /// The Secret's certificates are unusable.
    #[error("node link: Secret {secret}: {source}")]
    Certificates {
        /// `namespace/name`.
        secret: String,
        /// The error.
        source: TlsError,
    },
    /// The Secret lacks a key.
    #[error("node link: Secret {secret} has no {key}")]
    MissingKey {
        /// `namespace/name`.
        secret: String,
        /// The key.
        key: &'static str,
    },
}

/// The certificate material of the Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Material {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

fn material(secret: &Secret, name: &str) -> Result<Material, LinkError> {
    let data = secret.data.clone().unwrap_or_default();
    let text = |key: &'static str| {
        data.get(key)
            .and_then(|bytes| String::from_utf8(bytes.0.clone()).ok())
            .ok_or_else(|| LinkError::MissingKey {
                secret: name.to_string(),
                key,
            })
    };
    Ok(Material {
        ca_pem: text("ca.crt")?,
        cert_pem: text("tls.crt")?,
        key_pem: text("tls.key")?,
    })
}

/// The TLS configuration, rebuilt when the Secret changes.
struct Tls {
    material: Material,
    config: Arc<ServerConfig>,
}

fn build(material: Material, name: &str) -> Result<Tls, LinkError> {
    let error = |source| LinkError::Certificates {
        secret: name.to_string(),
        source,
    };
    let certificate =
        ReloadableCertificate::new(&material.cert_pem, &material.key_pem).map_err(error)?;
    let config = ironvisor_tls::server_config(
        Arc::new(certificate),
        Some(&material.ca_pem),
        ClientAuth::Required,
    )
    .map_err(error)?;
    Ok(Tls {
        material,
        config: Arc::new(config),
    })
}

/// Serves the link until `shutdown`; waits for the Secret first.
pub async fn serve(
    context: Arc<InstanceContext>,
    namespace: String,
    shutdown: Shared<impl std::future::Future<Output = ()>>,
) -> Result<(), LinkError> {
    let secrets: Api<Secret> = Api::namespaced(context.client.clone(), &namespace);
    let secret_name = format!("{namespace}/{NODE_LINK_SECRET}");
    let tls: Arc<RwLock<Option<Tls>>> = Arc::new(RwLock::new(None));
    let refresh = {
        let tls = tls.clone();
        let secret_name = secret_name.clone();
        async move {
            loop {
                match secrets.get_opt(NODE_LINK_SECRET).await {
                    Ok(Some(secret)) => match material(&secret, &secret_name) {
                        Ok(found) => {
                            let current = tls
                                .read()
                                .ok()
                                .and_then(|t| t.as_ref().map(|t| t.material.clone()));
                            if current.as_ref() != Some(&found) {
                                match build(found, &secret_name) {
                                    Ok(built) => {
                                        info!(secret = %secret_name, "node link certificate loaded");
                                        if let Ok(mut slot) = tls.write() {
                                            *slot = Some(built);
                                        }
                                    }
                                    Err(error) => warn!(%error, "node link certificate unusable"),
                                }
                            }
                        }
                        Err(error) => warn!(%error, "node link certificate unusable"),
                    },
                    Ok(None) => {
                        debug!(secret = %secret_name, "waiting for the api-server to write the node link Secret")
                    }
                    Err(error) => {
                        warn!(%error, secret = %secret_name, "cannot read the node link Secret")
                    }
                }
                tokio::time::sleep(REFRESH).await;
            }
        }
    };
    tokio::spawn(refresh);
    let listener = TcpListener::bind(("0.0.0.0", NODE_LINK_PORT))
        .await
        .map_err(|source| LinkError::Bind {
            port: NODE_LINK_PORT,
            source,
        })?;
    info!(port = NODE_LINK_PORT, "node link listening");
    let accept = async {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    warn!(%error, "node link accept failed");
                    continue;
                }
            };
            let config = tls
                .read()
                .ok()
                .and_then(|t| t.as_ref().map(|t| t.config.clone()));
            let Some(config) = config else {
                debug!(%peer, "node link connection before the certificate is loaded: closed");
                continue;
            };
            let context = context.clone();
            tokio::spawn(
                async move { handle(stream, config, context).await }
                    .instrument(info_span!("node_link", %peer)),
            );
        }
    };
    tokio::select! {
        () = accept => Ok(()),
        () = shutdown => Ok(()),
    }
}

async fn handle(stream: TcpStream, config: Arc<ServerConfig>, context: Arc<InstanceContext>) {
    let _ = stream.set_nodelay(true);
    let tls =
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, TlsAcceptor::from(config).accept(stream))
            .await
        {
            Ok(Ok(tls)) => tls,
            Ok(Err(error)) => {
                info!(%error, "node link handshake refused");
                return;
            }
            Err(_) => {
                info!("node link handshake timed out");
                return;
            }
        };
    let peer_name = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|leaf| ironvisor_tls::common_name(leaf));
    if peer_name.as_deref() != Some(NODE_LINK_CLIENT_NAME) {
        warn!(?peer_name, "node link client is not the api-server: closed");
        return;
    }
    let mut stream = BufReader::new(tls);
    let mut line = Vec::new();
    let read = async {
        let mut limited = (&mut stream).take(MAX_LINE_BYTES as u64);
        limited.read_until(b'\n', &mut line).await
    };
    if !matches!(
        tokio::time::timeout(HANDSHAKE_TIMEOUT, read).await,
        Ok(Ok(_))
    ) {
        return;
    }
    let request: LinkRequest = match serde_json::from_slice(&line) {
        Ok(request) => request,
        Err(error) => {
            let reply = LinkReply {
                code: 400,
                message: format!("bad node link request: {error}"),
            };
            let _ = stream.get_mut().write_all(&encode_line(&reply)).await;
            return;
        }
    };
    let span = info_span!("request", op = request.op.name(), vmi = %format!("{}/{}", request.namespace, request.name));
    async move {
        match request.op {
            LinkOp::Console => console_session(stream, &context, &request).await,
            LinkOp::PortForward => crate::port_forward::session(stream, &context, &request).await,
            LinkOp::Pause | LinkOp::Unpause => {
                let reply = vcpus(&context, &request).await;
                info!(code = reply.code, message = %reply.message, "answered");
                let _ = stream.get_mut().write_all(&encode_line(&reply)).await;
                let _ = stream.get_mut().shutdown().await;
            }
        }
    }
    .instrument(span)
    .await;
}

/// The reply for a console error (also for finding a port forward's instance).
pub(crate) fn console_reply(error: &ConsoleError) -> LinkReply {
    let code = match error {
        ConsoleError::NoInstance(_) => 404,
        ConsoleError::NoPod(_) | ConsoleError::Socket { .. } | ConsoleError::OtherNode { .. } => {
            409
        }
        _ => 500,
    };
    LinkReply {
        code,
        message: error.to_string(),
    }
}

async fn console_session<S>(
    mut stream: BufReader<S>,
    context: &InstanceContext,
    request: &LinkRequest,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let opened = console::open(
        context.client.clone(),
        &context.node_name,
        &context.kubelet_root,
        &request.namespace,
        &request.name,
    )
    .await;
    let mut guest = match opened {
        Ok(guest) => guest,
        Err(error) => {
            let reply = console_reply(&error);
            info!(code = reply.code, message = %reply.message, "console refused");
            let _ = stream.get_mut().write_all(&encode_line(&reply)).await;
            return;
        }
    };
    if stream
        .get_mut()
        .write_all(&encode_line(&LinkReply::ok("console attached")))
        .await
        .is_err()
    {
        return;
    }
    info!("console attached over the node link");
    match tokio::io::copy_bidirectional(&mut stream, &mut guest).await {
        Ok((to_guest, from_guest)) => info!(to_guest, from_guest, "console session ended"),
        Err(error) => info!(%error, "console session ended"),
    }
}

/// Pause or unpause through the launcher's API.
async fn vcpus(context: &InstanceContext, request: &LinkRequest) -> LinkReply {
    let pod = match console::launcher_pod(
        context.client.clone(),
        &context.node_name,
        &request.namespace,
        &request.name,
    )
    .await
    {
        Ok(pod) => pod,
        Err(error) => return console_reply(&error),
    };
    let object = format!("{}/{}", request.namespace, request.name);
    let Some(socket) = pod
        .uid()
        .and_then(|uid| launcher_api_socket(&context.kubelet_root, &uid))
    else {
        return LinkReply {
            code: 409,
            message: format!(
                "virtualmachineinstance {object} has no launcher API socket; is it running?"
            ),
        };
    };
    let options = ClientOptions {
        connect_timeout: LAUNCHER_CALL_TIMEOUT,
        request_timeout: LAUNCHER_CALL_TIMEOUT,
    };
    let launcher = match LauncherClient::connect_with(&socket, options).await {
        Ok(launcher) => launcher,
        Err(error) => {
            return LinkReply {
                code: 409,
                message: format!("the launcher of {object} does not answer: {error}"),
            }
        }
    };
    let (result, done) = match request.op {
        LinkOp::Pause => (launcher.pause().await, "paused"),
        _ => (launcher.resume().await, "running again"),
    };
    match result {
        Ok(()) => LinkReply::ok(format!("virtualmachineinstance {object} is {done}")),
        Err(error) => LinkReply {
            code: 409,
            message: format!("{} of {object}: {error}", request.op.name()),
        },
    }
}
