//! The client side of the control API, used by the node agent to drive one launcher.
//!
//! Every error names the launcher's socket, and nothing waits forever: connecting and
//! each request have a deadline ([`ClientOptions`]).

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ironvisor_grpc_uds::cause::{first_io_error, innermost_cause};
use ironvisor_grpc_uds::channel::{self, ConnectError};
use tonic::transport::Channel;
use tonic::{Code, Status};
use tracing::{debug, info_span, Instrument};

use crate::control::{ControlError, ShutdownMode, VmStatus};
use crate::convert::{self, ConversionError};
use crate::proto;
use crate::proto::launcher_client::LauncherClient as GrpcClient;

/// Default deadline to open the connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default deadline of one request.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Placeholder URI for the HTTP/2 layer; the connector ignores it and dials the socket.
const PLACEHOLDER_URI: &str = "http://launcher.invalid";

/// Why talking to a launcher failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// There is no file at the socket path.
    #[error("launcher socket {path} does not exist")]
    SocketMissing {
        /// The socket path.
        path: PathBuf,
    },
    /// The socket exists but nothing accepts connections: the launcher is gone.
    #[error("no launcher is listening on {path} (connection refused)")]
    NotListening {
        /// The socket path.
        path: PathBuf,
    },
    /// Connecting failed for another reason.
    #[error("cannot connect to launcher socket {path}: {reason}")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The innermost cause, as text.
        reason: String,
    },
    /// The connection was not established in time.
    #[error("timed out after {timeout:?} connecting to launcher socket {path}")]
    ConnectTimeout {
        /// The socket path.
        path: PathBuf,
        /// The deadline that expired.
        timeout: Duration,
    },
    /// The launcher did not answer a request in time.
    #[error("launcher at {path} did not answer {rpc} within {timeout:?}")]
    Timeout {
        /// The socket path.
        path: PathBuf,
        /// The RPC name.
        rpc: &'static str,
        /// The deadline that expired.
        timeout: Duration,
    },
    /// The launcher refused the request; `source` is its own error, rebuilt exactly.
    #[error("launcher at {path} refused {rpc}: {source}")]
    Refused {
        /// The socket path.
        path: PathBuf,
        /// The RPC name.
        rpc: &'static str,
        /// gRPC status code it was sent with (FAILED_PRECONDITION for a wrong state).
        code: Code,
        /// The launcher's reason.
        #[source]
        source: ControlError,
    },
    /// The request failed without a launcher error (transport failure, bad argument).
    #[error("launcher at {path}: {rpc} failed with {code:?}: {message}")]
    Rpc {
        /// The socket path.
        path: PathBuf,
        /// The RPC name.
        rpc: &'static str,
        /// gRPC status code.
        code: Code,
        /// gRPC status message.
        message: String,
    },
    /// The launcher's answer could not be understood.
    #[error("launcher at {path} sent an invalid {rpc} reply: {source}")]
    InvalidReply {
        /// The socket path.
        path: PathBuf,
        /// The RPC name.
        rpc: &'static str,
        /// What was wrong.
        #[source]
        source: ConversionError,
    },
}

/// Deadlines of a [`LauncherClient`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientOptions {
    /// Deadline to open the connection.
    pub connect_timeout: Duration,
    /// Deadline of each request.
    pub request_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

/// What `Ping` reports about the launcher process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LauncherInfo {
    /// Version of the launcher binary.
    pub version: String,
    /// Its process id.
    pub pid: u32,
    /// The API package it serves ("ironvisor.launcher.v1").
    pub api_version: String,
}

/// A connection to one launcher's control API. Cheap to clone; clones share the
/// connection.
#[derive(Debug, Clone)]
pub struct LauncherClient {
    inner: GrpcClient<Channel>,
    socket: PathBuf,
    request_timeout: Duration,
}

impl LauncherClient {
    /// Connects to the launcher listening on `socket`, with [`ClientOptions::default`].
    pub async fn connect(socket: &Path) -> Result<Self, ClientError> {
        Self::connect_with(socket, ClientOptions::default()).await
    }

    /// Connects to the launcher listening on `socket`.
    pub async fn connect_with(socket: &Path, options: ClientOptions) -> Result<Self, ClientError> {
        let path = socket.to_path_buf();
        let span = info_span!("launcher_connect", socket = %path.display());
        async {
            match std::fs::symlink_metadata(&path) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(ClientError::SocketMissing { path });
                }
                Err(e) => {
                    return Err(ClientError::Connect {
                        path,
                        reason: e.to_string(),
                    })
                }
            }
            let channel = channel::connect(&path, PLACEHOLDER_URI, options.connect_timeout)
                .await
                .map_err(connect_error)?;
            debug!("connected");
            Ok(Self {
                inner: GrpcClient::new(channel),
                socket: path,
                request_timeout: options.request_timeout,
            })
        }
        .instrument(span)
        .await
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Asks the launcher for its version and pid.
    pub async fn ping(&self) -> Result<LauncherInfo, ClientError> {
        let reply = self
            .call("Ping", |mut c| async move {
                c.ping(proto::PingRequest {}).await
            })
            .await?;
        Ok(LauncherInfo {
            version: reply.version,
            pid: reply.pid,
            api_version: reply.api_version,
        })
    }

    /// A snapshot of the VM.
    pub async fn status(&self) -> Result<VmStatus, ClientError> {
        let reply = self
            .call("Status", |mut c| async move {
                c.status(proto::StatusRequest {}).await
            })
            .await?;
        convert::status_from_proto(reply).map_err(|source| ClientError::InvalidReply {
            path: self.socket.clone(),
            rpc: "Status",
            source,
        })
    }

    /// Pauses the VM's vCPUs.
    pub async fn pause(&self) -> Result<(), ClientError> {
        self.call("Pause", |mut c| async move {
            c.pause(proto::PauseRequest {}).await
        })
        .await
        .map(drop)
    }

    /// Resumes the VM's vCPUs.
    pub async fn resume(&self) -> Result<(), ClientError> {
        self.call("Resume", |mut c| async move {
            c.resume(proto::ResumeRequest {}).await
        })
        .await
        .map(drop)
    }

    /// Starts a shutdown; returns once the launcher has accepted it, not when the VM is
    /// gone. A graceful timeout is sent in whole seconds, rounded up.
    pub async fn shutdown(&self, mode: ShutdownMode) -> Result<(), ClientError> {
        let request = convert::shutdown_to_proto(mode);
        self.call("Shutdown", |mut c| async move { c.shutdown(request).await })
            .await
            .map(drop)
    }

    /// Runs one RPC with the request deadline, in a span, mapping failures.
    async fn call<T, F, Fut>(&self, rpc: &'static str, f: F) -> Result<T, ClientError>
    where
        F: FnOnce(GrpcClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let span = info_span!("launcher_rpc", rpc, socket = %self.socket.display());
        async {
            let outcome = tokio::time::timeout(self.request_timeout, f(self.inner.clone())).await;
            match outcome {
                Err(_) => Err(ClientError::Timeout {
                    path: self.socket.clone(),
                    rpc,
                    timeout: self.request_timeout,
                }),
                Ok(Ok(response)) => {
                    debug!("ok");
                    Ok(response.into_inner())
                }
                Ok(Err(status)) => {
                    debug!(code = ?status.code(), message = status.message(), "failed");
                    Err(self.status_error(rpc, &status))
                }
            }
        }
        .instrument(span)
        .await
    }

    fn status_error(&self, rpc: &'static str, status: &Status) -> ClientError {
        let path = self.socket.clone();
        if let Some(source) = convert::control_error_from_status(status) {
            return ClientError::Refused {
                path,
                rpc,
                code: status.code(),
                source,
            };
        }
        // The channel redials after losing its connection: say why that failed.
        match io_error_kind(status) {
            Some(io::ErrorKind::ConnectionRefused) => return ClientError::NotListening { path },
            Some(io::ErrorKind::NotFound) => return ClientError::SocketMissing { path },
            _ => {}
        }
        let mut message = status.message().to_string();
        if let Some(cause) = innermost_cause(status) {
            if !message.contains(&cause) {
                message = format!("{message}: {cause}");
            }
        }
        ClientError::Rpc {
            path,
            rpc,
            code: status.code(),
            message,
        }
    }
}

/// Maps a failed connect: connection refused means no launcher, anything else keeps
/// the innermost cause (the transport error's own text is only "transport error").
fn connect_error(error: ConnectError) -> ClientError {
    match error {
        ConnectError::Timeout { path, timeout } => ClientError::ConnectTimeout { path, timeout },
        ConnectError::Transport { path, source } => {
            if io_error_kind(&source) == Some(io::ErrorKind::ConnectionRefused) {
                return ClientError::NotListening { path };
            }
            ClientError::Connect {
                reason: innermost_cause(&source).unwrap_or_else(|| source.to_string()),
                path,
            }
        }
    }
}

/// The kind of the first `io::Error` in the cause chain of `error`.
fn io_error_kind(error: &(dyn std::error::Error + 'static)) -> Option<io::ErrorKind> {
    first_io_error(error).map(io::Error::kind)
}
