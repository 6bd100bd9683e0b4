//! The client side of the node daemon's API, used by `virtctl`.
//!
//! Every error names the daemon's socket; a missing socket or a refused connection says
//! how to start the daemon. Nothing waits forever: connecting, reads and lifecycle
//! actions each have a deadline ([`ClientOptions`]); streams (console, logs) only have
//! one for opening.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ironvisor_grpc_uds::cause::{first_io_error, innermost_cause};
use ironvisor_grpc_uds::channel::{self, ConnectError};
use tokio_stream::{Stream, StreamExt};
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};
use tracing::{debug, info_span, Instrument};

use crate::proto;
use crate::proto::handler_client::HandlerClient as GrpcClient;

/// Where the node daemon listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/ironvisor/handler.sock";
/// Environment variable that overrides [`DEFAULT_SOCKET`] for clients.
pub const SOCKET_ENV: &str = "IRONVISOR_SOCKET";

/// Default deadline to open the connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Default deadline of a read (get, list), a quick action (pause, unpause), or of
/// opening a stream (console, logs).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Default deadline of an apply or a lifecycle action (start, stop, restart, delete),
/// which may wait for a guest to shut down.
pub const DEFAULT_ACTION_TIMEOUT: Duration = Duration::from_secs(300);

/// Placeholder URI for the HTTP/2 layer; the connector ignores it and dials the socket.
const PLACEHOLDER_URI: &str = "http://ironvisor-handler.invalid";

/// Why talking to the node daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// There is no file at the socket path.
    #[error(
        "the Ironvisor node daemon is not running (no socket at {path}); start it with `ironvisor-handler serve`",
        path = path.display()
    )]
    DaemonNotRunning {
        /// The socket path.
        path: PathBuf,
    },
    /// The socket file exists but nothing accepts connections (a stale socket).
    #[error(
        "the Ironvisor node daemon is not running (nothing listens on {path}: connection refused); start it with `ironvisor-handler serve`",
        path = path.display()
    )]
    NotListening {
        /// The socket path.
        path: PathBuf,
    },
    /// The socket is there but this user may not open it (it is root-only).
    #[error(
        "permission denied opening the Ironvisor node daemon socket {path}; it is root-only, run as root",
        path = path.display()
    )]
    PermissionDenied {
        /// The socket path.
        path: PathBuf,
    },
    /// Connecting failed for another reason.
    #[error("cannot connect to the Ironvisor node daemon at {path}: {reason}", path = path.display())]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The innermost cause, as text.
        reason: String,
    },
    /// The connection was not established in time.
    #[error(
        "timed out after {timeout:?} connecting to the Ironvisor node daemon at {path}",
        path = path.display()
    )]
    ConnectTimeout {
        /// The socket path.
        path: PathBuf,
        /// The deadline that expired.
        timeout: Duration,
    },
    /// The daemon did not answer a request in time.
    #[error(
        "the Ironvisor node daemon at {path} did not answer {rpc} within {timeout:?}",
        path = path.display()
    )]
    Timeout {
        /// The socket path.
        path: PathBuf,
        /// The RPC name.
        rpc: &'static str,
        /// The deadline that expired.
        timeout: Duration,
    },
    /// The daemon answered with an error status. `message` is the daemon's own text
    /// (YAML line and column, unknown field paths, validation lists), unchanged.
    #[error("the node daemon refused {rpc} ({code:?}): {message}")]
    Rejected {
        /// The socket path.
        path: PathBuf,
        /// The RPC name.
        rpc: &'static str,
        /// gRPC status code (NOT_FOUND, INVALID_ARGUMENT, FAILED_PRECONDITION, ...).
        code: Code,
        /// The daemon's message, verbatim.
        message: String,
    },
}

impl ClientError {
    /// The gRPC status code of a [`ClientError::Rejected`] error.
    pub fn code(&self) -> Option<Code> {
        match self {
            Self::Rejected { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// True when the daemon could not be reached at all (as opposed to refusing).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            Self::DaemonNotRunning { .. }
                | Self::NotListening { .. }
                | Self::PermissionDenied { .. }
                | Self::Connect { .. }
                | Self::ConnectTimeout { .. }
        )
    }
}

/// Deadlines of a [`HandlerClient`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientOptions {
    /// Deadline to open the connection.
    pub connect_timeout: Duration,
    /// Deadline of get, list, pause and unpause, and to open a console or log stream.
    pub request_timeout: Duration,
    /// Deadline of apply, start, stop, restart and delete (a stop adds its grace period).
    pub action_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            action_timeout: DEFAULT_ACTION_TIMEOUT,
        }
    }
}

/// A connection to the node daemon. Cheap to clone; clones share the connection.
#[derive(Debug, Clone)]
pub struct HandlerClient {
    inner: GrpcClient<Channel>,
    socket: PathBuf,
    options: ClientOptions,
}

impl HandlerClient {
    /// Connects to the node daemon listening on `socket`, with [`ClientOptions::default`].
    pub async fn connect(socket: &Path) -> Result<Self, ClientError> {
        Self::connect_with(socket, ClientOptions::default()).await
    }

    /// Connects to the node daemon listening on `socket`.
    pub async fn connect_with(socket: &Path, options: ClientOptions) -> Result<Self, ClientError> {
        let path = socket.to_path_buf();
        let span = info_span!("handler_connect", socket = %path.display());
        async {
            if let Err(e) = std::fs::symlink_metadata(&path) {
                return Err(io_connect_error(&path, &e));
            }
            let channel = channel::connect(&path, PLACEHOLDER_URI, options.connect_timeout)
                .await
                .map_err(connect_error)?;
            debug!("connected");
            Ok(Self {
                inner: GrpcClient::new(channel),
                socket: path,
                options,
            })
        }
        .instrument(span)
        .await
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Creates or updates the objects of a YAML stream; `source` names it in errors
    /// (a file name, or "STDIN").
    pub async fn apply(
        &self,
        yaml: String,
        source: String,
    ) -> Result<Vec<proto::AppliedObject>, ClientError> {
        let request = proto::ApplyRequest { yaml, source };
        let reply = self
            .call("Apply", self.options.action_timeout, |mut c| async move {
                c.apply(request).await
            })
            .await?;
        Ok(reply.objects)
    }

    /// One VM, with its VMI and events.
    pub async fn get(&self, vm: proto::ObjectRef) -> Result<proto::VmView, ClientError> {
        self.call("Get", self.options.request_timeout, |mut c| async move {
            c.get(vm).await
        })
        .await
    }

    /// The VMs of `namespace`, or of all namespaces when it is `None`.
    pub async fn list(&self, namespace: Option<&str>) -> Result<Vec<proto::VmView>, ClientError> {
        let request = proto::ListRequest {
            namespace: namespace.unwrap_or_default().to_string(),
        };
        let reply = self
            .call("List", self.options.request_timeout, |mut c| async move {
                c.list(request).await
            })
            .await?;
        Ok(reply.vms)
    }

    /// Deletes the VM (stopping it first). Returns the daemon's message.
    pub async fn delete(&self, vm: proto::ObjectRef) -> Result<String, ClientError> {
        self.action("Delete", self.options.action_timeout, |mut c| async move {
            c.delete(vm).await
        })
        .await
    }

    /// Starts the VM. Returns the daemon's message.
    pub async fn start(&self, vm: proto::ObjectRef) -> Result<String, ClientError> {
        self.action("Start", self.options.action_timeout, |mut c| async move {
            c.start(vm).await
        })
        .await
    }

    /// Stops the VM: hard now when `force`, otherwise gracefully within
    /// `grace_period_seconds` (0: the VM's `terminationGracePeriodSeconds`).
    pub async fn stop(
        &self,
        vm: proto::ObjectRef,
        force: bool,
        grace_period_seconds: u32,
    ) -> Result<String, ClientError> {
        let request = proto::StopRequest {
            vm: Some(vm),
            force,
            grace_period_seconds,
        };
        let timeout =
            self.options.action_timeout + Duration::from_secs(u64::from(grace_period_seconds));
        self.action(
            "Stop",
            timeout,
            |mut c| async move { c.stop(request).await },
        )
        .await
    }

    /// Restarts the VM. Returns the daemon's message.
    pub async fn restart(&self, vm: proto::ObjectRef) -> Result<String, ClientError> {
        self.action("Restart", self.options.action_timeout, |mut c| async move {
            c.restart(vm).await
        })
        .await
    }

    /// Pauses the VM's vCPUs. Returns the daemon's message.
    pub async fn pause(&self, vm: proto::ObjectRef) -> Result<String, ClientError> {
        self.action("Pause", self.options.request_timeout, |mut c| async move {
            c.pause(vm).await
        })
        .await
    }

    /// Resumes a paused VM. Returns the daemon's message.
    pub async fn unpause(&self, vm: proto::ObjectRef) -> Result<String, ClientError> {
        self.action(
            "Unpause",
            self.options.request_timeout,
            |mut c| async move { c.unpause(vm).await },
        )
        .await
    }

    /// Opens the VM's serial console. `input` carries keyboard input (its end closes the
    /// sending side); the returned stream yields console output until the VM stops.
    pub async fn console<S>(
        &self,
        vm: proto::ObjectRef,
        input: S,
    ) -> Result<ConsoleStream, ClientError>
    where
        S: Stream<Item = Vec<u8>> + Send + 'static,
    {
        let first = proto::ConsoleRequest {
            vm: Some(vm),
            input: Vec::new(),
        };
        let requests = tokio_stream::once(first).chain(input.map(|bytes| proto::ConsoleRequest {
            vm: None,
            input: bytes,
        }));
        let inner = self
            .call(
                "Console",
                self.options.request_timeout,
                |mut c| async move { c.console(requests).await },
            )
            .await?;
        Ok(ConsoleStream {
            inner,
            socket: self.socket.clone(),
        })
    }

    /// A TCP connection to `port` of the VM's guest. `input` carries the bytes for the
    /// guest; an empty item ends the sending side (half-close) and nothing after it is
    /// sent. Fails, naming the port, when nothing accepts on it.
    pub async fn port_forward<S>(
        &self,
        vm: proto::ObjectRef,
        port: u16,
        input: S,
    ) -> Result<PortForwardStream, ClientError>
    where
        S: Stream<Item = Vec<u8>> + Send + 'static,
    {
        let first = proto::PortForwardRequest {
            vm: Some(vm),
            port: u32::from(port),
            data: Vec::new(),
            eof: false,
        };
        let requests =
            tokio_stream::once(first).chain(input.map(|data| proto::PortForwardRequest {
                vm: None,
                port: 0,
                eof: data.is_empty(),
                data,
            }));
        let inner = self
            .call(
                "PortForward",
                self.options.request_timeout,
                |mut c| async move { c.port_forward(requests).await },
            )
            .await?;
        Ok(PortForwardStream {
            inner,
            socket: self.socket.clone(),
        })
    }

    /// The launcher log of the VM's current (or last) run; with `follow`, the stream
    /// stays open and yields new lines as they are written.
    pub async fn logs(&self, vm: proto::ObjectRef, follow: bool) -> Result<LogStream, ClientError> {
        let request = proto::LogsRequest {
            vm: Some(vm),
            follow,
        };
        let inner = self
            .call("Logs", self.options.request_timeout, |mut c| async move {
                c.logs(request).await
            })
            .await?;
        Ok(LogStream {
            inner,
            socket: self.socket.clone(),
        })
    }

    /// Runs an action RPC and returns the message of its [`proto::ActionResponse`].
    async fn action<F, Fut>(
        &self,
        rpc: &'static str,
        timeout: Duration,
        f: F,
    ) -> Result<String, ClientError>
    where
        F: FnOnce(GrpcClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<proto::ActionResponse>, Status>>,
    {
        self.call(rpc, timeout, f).await.map(|r| r.message)
    }

    /// Runs one RPC with a deadline, in a span, mapping failures.
    async fn call<T, F, Fut>(
        &self,
        rpc: &'static str,
        timeout: Duration,
        f: F,
    ) -> Result<T, ClientError>
    where
        F: FnOnce(GrpcClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let span = info_span!("handler_rpc", rpc, socket = %self.socket.display());
        async {
            match tokio::time::timeout(timeout, f(self.inner.clone())).await {
                Err(_) => Err(ClientError::Timeout {
                    path: self.socket.clone(),
                    rpc,
                    timeout,
                }),
                Ok(Ok(response)) => {
                    debug!("ok");
                    Ok(response.into_inner())
                }
                Ok(Err(status)) => {
                    debug!(code = ?status.code(), message = status.message(), "failed");
                    Err(status_error(&self.socket, rpc, &status))
                }
            }
        }
        .instrument(span)
        .await
    }
}

/// The output side of an open console.
#[derive(Debug)]
pub struct ConsoleStream {
    inner: Streaming<proto::ConsoleChunk>,
    socket: PathBuf,
}

impl ConsoleStream {
    /// The next output bytes; `Ok(None)` when the console closed (the VM stopped).
    pub async fn next(&mut self) -> Result<Option<Vec<u8>>, ClientError> {
        match self.inner.message().await {
            Ok(chunk) => Ok(chunk.map(|c| c.output)),
            Err(status) => Err(status_error(&self.socket, "Console", &status)),
        }
    }
}

/// What comes back from a guest port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardedBytes {
    /// Bytes from the guest.
    Data(Vec<u8>),
    /// The guest ended its sending side.
    Eof,
}

/// The guest's side of a port forward.
#[derive(Debug)]
pub struct PortForwardStream {
    inner: Streaming<proto::PortForwardChunk>,
    socket: PathBuf,
}

impl PortForwardStream {
    /// What the guest sent next; `Ok(None)` once the connection ended both ways.
    pub async fn next(&mut self) -> Result<Option<ForwardedBytes>, ClientError> {
        match self.inner.message().await {
            Ok(Some(chunk)) if chunk.eof => Ok(Some(ForwardedBytes::Eof)),
            Ok(chunk) => Ok(chunk.map(|c| ForwardedBytes::Data(c.data))),
            Err(status) => Err(status_error(&self.socket, "PortForward", &status)),
        }
    }
}

/// An open log stream.
#[derive(Debug)]
pub struct LogStream {
    inner: Streaming<proto::LogChunk>,
    socket: PathBuf,
}

impl LogStream {
    /// The next log bytes; `Ok(None)` at the end of the log (or when the VM stops while
    /// following).
    pub async fn next(&mut self) -> Result<Option<Vec<u8>>, ClientError> {
        match self.inner.message().await {
            Ok(chunk) => Ok(chunk.map(|c| c.data)),
            Err(status) => Err(status_error(&self.socket, "Logs", &status)),
        }
    }
}

/// Maps an error status. The channel redials after losing its connection, so a
/// transport failure is reported as the reason the daemon cannot be reached.
fn status_error(path: &Path, rpc: &'static str, status: &Status) -> ClientError {
    if let Some(e) = first_io_error(status) {
        match e.kind() {
            io::ErrorKind::NotFound
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::PermissionDenied => return io_connect_error(path, e),
            _ => {}
        }
    }
    let mut message = status.message().to_string();
    if let Some(cause) = innermost_cause(status) {
        if !message.contains(&cause) {
            message = format!("{message}: {cause}");
        }
    }
    ClientError::Rejected {
        path: path.to_path_buf(),
        rpc,
        code: status.code(),
        message,
    }
}

/// Maps an I/O error met while opening the socket.
fn io_connect_error(path: &Path, error: &io::Error) -> ClientError {
    let path = path.to_path_buf();
    match error.kind() {
        io::ErrorKind::NotFound => ClientError::DaemonNotRunning { path },
        io::ErrorKind::ConnectionRefused => ClientError::NotListening { path },
        io::ErrorKind::PermissionDenied => ClientError::PermissionDenied { path },
        _ => ClientError::Connect {
            path,
            reason: error.to_string(),
        },
    }
}

/// Maps a failed connect, keeping the innermost cause (the transport error's own text is
/// only "transport error").
fn connect_error(error: ConnectError) -> ClientError {
    match error {
        ConnectError::Timeout { path, timeout } => ClientError::ConnectTimeout { path, timeout },
        ConnectError::Transport { path, source } => {
            if let Some(e) = first_io_error(&source) {
                return io_connect_error(&path, e);
            }
            ClientError::Connect {
                reason: innermost_cause(&source).unwrap_or_else(|| source.to_string()),
                path,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_socket_says_how_to_start_the_daemon() {
        let e = io_connect_error(
            Path::new("/run/x.sock"),
            &io::Error::from(io::ErrorKind::NotFound),
        );
        assert_eq!(
            e.to_string(),
            "the Ironvisor node daemon is not running (no socket at /run/x.sock); \
             start it with `ironvisor-handler serve`"
        );
        assert!(e.is_unreachable());
    }

    #[test]
    fn refused_and_denied_connections_are_named() {
        let refused = io_connect_error(
            Path::new("/s"),
            &io::Error::from(io::ErrorKind::ConnectionRefused),
        );
        assert!(matches!(refused, ClientError::NotListening { .. }));
        let denied = io_connect_error(
            Path::new("/s"),
            &io::Error::from(io::ErrorKind::PermissionDenied),
        );
        assert!(denied.to_string().contains("root-only"));
    }

    #[test]
    fn rejected_status_keeps_the_daemon_message_verbatim() {
        let status = Status::invalid_argument("vm.yaml:12:3: unknown field `spec.foo`");
        let e = status_error(Path::new("/s"), "Apply", &status);
        assert_eq!(e.code(), Some(Code::InvalidArgument));
        match e {
            ClientError::Rejected { message, rpc, .. } => {
                assert_eq!(message, "vm.yaml:12:3: unknown field `spec.foo`");
                assert_eq!(rpc, "Apply");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn connect_to_missing_socket_fails_fast() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("handler.sock");
        let e = HandlerClient::connect(&path).await.unwrap_err();
        assert!(matches!(e, ClientError::DaemonNotRunning { .. }), "{e:?}");
        assert!(e.to_string().contains(&path.display().to_string()));
    }

    #[tokio::test]
    async fn connect_to_stale_socket_reports_not_listening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("handler.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let e = HandlerClient::connect(&path).await.unwrap_err();
        assert!(matches!(e, ClientError::NotListening { .. }), "{e:?}");
    }
}
