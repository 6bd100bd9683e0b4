//! The HTTPS server: accepts TLS connections, notes the verified client certificate's
//! name, and answers each request by its [`Route`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::ServerConfig;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, info_span, warn, Instrument};

use ironvisor_crds::node_link::LinkOp;

use crate::admission;
use crate::authz::{self, Access};
use crate::console;
use crate::identity::RequestHeaderAuth;
use crate::lifecycle::{self, Lifecycle};
use crate::node_link::NodeLink;
use crate::reply::{json_response, Reply};
use crate::routes::{route, Route, VmAction};
use ironvisor_tls::common_name;

/// Largest request body read: an admission review of the largest object kube-apiserver
/// accepts (3 MiB) with room to spare.
pub const MAX_BODY_BYTES: usize = 8 << 20;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the server cannot serve.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
}

/// What every request shares.
pub struct ServerState {
    /// The cluster.
    pub client: kube::Client,
    /// Front-proxy settings (None: aggregated requests are refused).
    pub request_header: Option<RequestHeaderAuth>,
    /// Set once the CA bundle is in the webhook configurations and the APIService.
    pub ready: AtomicBool,
    /// The link to the node agents.
    pub node_link: Arc<NodeLink>,
}

/// Binds `addr` and serves until the task is dropped.
pub async fn serve(
    addr: SocketAddr,
    tls: Arc<ServerConfig>,
    state: Arc<ServerState>,
) -> Result<(), ServerError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })?;
    info!(%addr, "serving");
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                warn!(%error, "accept failed");
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let state = state.clone();
        tokio::spawn(
            async move {
                let tls =
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(error)) => {
                            debug!(%error, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            debug!("TLS handshake timed out");
                            return;
                        }
                    };
                let peer_name = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .and_then(|leaf| common_name(leaf));
                let peer_name: Arc<Option<String>> = Arc::new(peer_name);
                let service = service_fn(move |request| {
                    let state = state.clone();
                    let peer_name = peer_name.clone();
                    async move {
                        Ok::<_, Infallible>(respond(request, &state, peer_name.as_deref()).await)
                    }
                });
                if let Err(error) = http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .with_upgrades()
                    .await
                {
                    debug!(%error, "connection ended with an error");
                }
            }
            .instrument(info_span!("connection", %peer)),
        );
    }
}

async fn respond(
    request: Request<Incoming>,
    state: &ServerState,
    peer_name: Option<&str>,
) -> Response<Full<Bytes>> {
    let span = info_span!("request", method = %request.method(), path = %request.uri().path());
    async move {
        let path = request.uri().path().to_string();
        match route(request.method(), &path) {
            Route::Probe { ready: false } => text(StatusCode::OK, "ok\n"),
            Route::Probe { ready: true } if state.ready.load(Ordering::Relaxed) => {
                text(StatusCode::OK, "ok\n")
            }
            Route::Probe { ready: true } => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "the CA bundle is not injected yet\n",
            ),
            Route::Admission(hook) => match read_body(request.into_body()).await {
                Ok(bytes) => json_response(
                    StatusCode::OK,
                    &serde_json::to_value(admission::review(hook, &bytes)).unwrap_or_default(),
                ),
                Err(reply) => reply.into_response(),
            },
            Route::Discovery(document) => match authenticate(state, peer_name, request.headers()) {
                Ok(_) => json_response(StatusCode::OK, &document),
                Err(reply) => reply.into_response(),
            },
            Route::Vm {
                namespace,
                name,
                action,
            } => {
                let (parts, body) = request.into_parts();
                let body = read_body(body).await;
                vm_action(
                    state,
                    peer_name,
                    &parts.headers,
                    &namespace,
                    &name,
                    action,
                    body,
                )
                .await
                .into_response()
            }
            Route::Vmi {
                namespace,
                name,
                op,
                port,
            } => match vmi_action(state, peer_name, request, &namespace, &name, op, port).await {
                Ok(response) => response,
                Err(reply) => reply.into_response(),
            },
            Route::WrongMethod { allowed } => {
                Reply::method_not_allowed(format!("{path} takes {allowed}")).into_response()
            }
            Route::NotFound => {
                Reply::not_found(format!("{path} is not served here")).into_response()
            }
            Route::Invalid(message) => Reply::bad_request(message).into_response(),
        }
    }
    .instrument(span)
    .await
}

/// Authenticates the user and asks RBAC about `access`; `Err` is the answer to give.
async fn authorize(
    state: &ServerState,
    peer_name: Option<&str>,
    headers: &hyper::HeaderMap,
    access: &Access,
) -> Result<(), Reply> {
    let user = authenticate(state, peer_name, headers)?;
    match authz::check(&state.client, &user, access).await {
        Ok(decision) if decision.allowed => Ok(()),
        Ok(decision) => {
            info!(user = %user.name, subresource = access.subresource, "forbidden");
            let because = match decision.reason.is_empty() {
                true => String::new(),
                false => format!(": {}", decision.reason),
            };
            Err(Reply::forbidden(format!(
                "{}.{} \"{}\" is forbidden: User \"{}\" cannot {} resource \"{}/{}\" in API group \"{}\" in the namespace \"{}\"{because}",
                access.resource,
                authz::SUBRESOURCE_GROUP,
                access.name,
                user.name,
                access.verb,
                access.resource,
                access.subresource,
                authz::SUBRESOURCE_GROUP,
                access.namespace,
            )))
        }
        Err(error) => Err(Reply::unavailable(error.to_string())),
    }
}

/// pause, unpause, console and portforward: through the node agent that runs the
/// instance.
async fn vmi_action(
    state: &ServerState,
    peer_name: Option<&str>,
    request: Request<Incoming>,
    namespace: &str,
    name: &str,
    op: LinkOp,
    port: Option<u16>,
) -> Result<Response<Full<Bytes>>, Reply> {
    // A console or port forward that is not a WebSocket upgrade is refused before
    // anything is asked.
    let upgrade = match op {
        LinkOp::Console | LinkOp::PortForward => Some(console::check_upgrade(&request)?),
        LinkOp::Pause | LinkOp::Unpause => None,
    };
    let access = Access {
        verb: match op {
            LinkOp::Console | LinkOp::PortForward => "get",
            LinkOp::Pause | LinkOp::Unpause => "update",
        },
        resource: "virtualmachineinstances",
        subresource: op.name(),
        namespace: namespace.to_string(),
        name: name.to_string(),
    };
    authorize(state, peer_name, request.headers(), &access).await?;
    let link = state.node_link.open(namespace, name, op, port).await?;
    let what = format!("VirtualMachineInstance {namespace}/{name}");
    match upgrade {
        Some((key, framing, protocol)) => Ok(console::upgrade(
            request,
            &key,
            framing,
            protocol,
            link,
            what,
            op == LinkOp::PortForward,
        )),
        None => {
            info!(op = op.name(), "done");
            Ok(Reply::accepted(match op {
                LinkOp::Pause => format!("{what} is paused"),
                _ => format!("{what} is running again"),
            })
            .into_response())
        }
    }
}

fn text(code: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = code;
    response
}

async fn read_body(body: Incoming) -> Result<Bytes, Reply> {
    match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => Err(Reply::too_large(
            format!("the request body is larger than {MAX_BODY_BYTES} bytes"),
        )),
        Err(error) => Err(Reply::bad_request(format!(
            "reading the request body: {error}"
        ))),
    }
}

fn authenticate(
    state: &ServerState,
    peer_name: Option<&str>,
    headers: &hyper::HeaderMap,
) -> Result<crate::identity::User, Reply> {
    let Some(auth) = &state.request_header else {
        return Err(Reply::unauthorized(
            "the api-server could not read kube-apiserver's front-proxy settings",
        ));
    };
    auth.authenticate(peer_name, headers)
        .map_err(|error| Reply::unauthorized(error.to_string()))
}

/// The optional body of stop and restart (KubeVirt's `StopOptions`/`RestartOptions`).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LifecycleOptions {
    #[serde(default)]
    grace_period_seconds: Option<i64>,
    /// KubeVirt's older spelling in StopOptions.
    #[serde(default)]
    grace_period: Option<i64>,
}

fn options(body: &Bytes) -> Result<LifecycleOptions, Reply> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(LifecycleOptions::default());
    }
    let options: LifecycleOptions = serde_json::from_slice(body).map_err(|error| {
        Reply::bad_request(format!("the request body is not valid options: {error}"))
    })?;
    if let Some(seconds) = options.grace_period_seconds.or(options.grace_period) {
        if seconds < 0 {
            return Err(Reply::bad_request(format!(
                "gracePeriodSeconds must not be negative (got {seconds})"
            )));
        }
    }
    Ok(options)
}

async fn vm_action(
    state: &ServerState,
    peer_name: Option<&str>,
    headers: &hyper::HeaderMap,
    namespace: &str,
    name: &str,
    action: VmAction,
    body: Result<Bytes, Reply>,
) -> Reply {
    let access = Access {
        verb: "update",
        resource: "virtualmachines",
        subresource: action.name(),
        namespace: namespace.to_string(),
        name: name.to_string(),
    };
    if let Err(reply) = authorize(state, peer_name, headers, &access).await {
        return reply;
    }
    let options = match body.and_then(|bytes| options(&bytes)) {
        Ok(options) => options,
        Err(reply) => return reply,
    };
    let grace_period_seconds = options.grace_period_seconds.or(options.grace_period);
    let request = match action {
        VmAction::Start => Lifecycle::Start,
        VmAction::Stop => Lifecycle::Stop {
            grace_period_seconds,
        },
        VmAction::Restart => Lifecycle::Restart {
            grace_period_seconds,
        },
    };
    lifecycle::carry_out(&state.client, namespace, name, request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_optional_and_checked() {
        assert_eq!(options(&Bytes::new()).unwrap().grace_period_seconds, None);
        assert_eq!(
            options(&Bytes::from_static(br#"{"gracePeriodSeconds": 0}"#))
                .unwrap()
                .grace_period_seconds,
            Some(0)
        );
        assert_eq!(
            options(&Bytes::from_static(br#"{"gracePeriod": 5}"#))
                .unwrap()
                .grace_period,
            Some(5)
        );
        let err = options(&Bytes::from_static(br#"{"gracePeriodSeconds": -1}"#)).unwrap_err();
        assert_eq!(err.code, StatusCode::BAD_REQUEST);
        assert!(options(&Bytes::from_static(b"[")).is_err());
    }
}
