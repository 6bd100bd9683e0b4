//! The gRPC server: serves any [`VmControl`] on a unix socket.
//!
//! [`bind`] prepares the socket (checks its directory, clears a stale socket left by a
//! dead launcher, refuses to steal one a live process still listens on, restricts it to
//! the owner) and returns a [`BoundApi`]; from then on clients can connect. Serving
//! happens in [`BoundApi::serve`], which removes the socket file when it returns.
//! [`serve`] does both in one call.

use std::future::Future;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{UnixListener, UnixStream};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};
use tracing::{debug, info, info_span, warn, Instrument};

use crate::control::{ControlError, VmControl};
use crate::convert;
use crate::proto;
use crate::proto::launcher_server::{Launcher, LauncherServer};

/// The API package served, reported by `Ping`.
pub const API_VERSION: &str = "ironvisor.launcher.v1";

/// Version reported by `Ping`: the workspace version shared by all launcher crates.
pub const LAUNCHER_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Longest unix socket path the kernel accepts (`sun_path` is 108 bytes with the NUL).
pub const MAX_SOCKET_PATH_BYTES: usize = 107;

/// How long [`bind`] waits for an existing socket to answer before calling it live.
const STALE_PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// Why the control API could not be started or stopped cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The directory that should hold the socket does not exist.
    #[error("cannot create API socket {socket}: directory {dir} does not exist")]
    MissingDirectory {
        /// The socket path asked for.
        socket: PathBuf,
        /// Its parent directory.
        dir: PathBuf,
    },
    /// The path does not fit in a `sockaddr_un`.
    #[error("API socket path {path} is {len} bytes long; unix sockets allow at most {MAX_SOCKET_PATH_BYTES}")]
    PathTooLong {
        /// The socket path asked for.
        path: PathBuf,
        /// Its length in bytes.
        len: usize,
    },
    /// Something other than a socket is in the way; it is left alone.
    #[error("cannot create API socket {path}: a file that is not a socket already exists there")]
    NotASocket {
        /// The socket path asked for.
        path: PathBuf,
    },
    /// Another process still accepts connections on the socket.
    #[error("API socket {path} is in use: another process is listening on it")]
    InUse {
        /// The socket path asked for.
        path: PathBuf,
    },
    /// Inspecting or removing an existing (stale) socket failed.
    #[error("cannot remove stale API socket {path}: {source}")]
    RemoveStale {
        /// The socket path asked for.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// `bind(2)` failed.
    #[error("cannot bind API socket {path}: {source}")]
    Bind {
        /// The socket path asked for.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Restricting the socket to its owner failed.
    #[error("cannot set mode 0600 on API socket {path}: {source}")]
    Permissions {
        /// The socket path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The gRPC server stopped with an error.
    #[error("control API on {path} failed: {source}")]
    Serve {
        /// The socket path.
        path: PathBuf,
        /// The transport error.
        #[source]
        source: tonic::transport::Error,
    },
}

/// Binds `socket`, serves `control` on it until `shutdown` resolves, then removes the
/// socket file.
pub async fn serve(
    socket: &Path,
    control: Arc<dyn VmControl>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    bind(socket).await?.serve(control, shutdown).await
}

/// Creates the API socket (mode 0600) and returns once clients can connect to it.
///
/// A socket file left behind by a dead launcher is replaced; a socket some process still
/// listens on, or a path that is not a socket, is refused.
pub async fn bind(socket: &Path) -> Result<BoundApi, ServeError> {
    let path = socket.to_path_buf();
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH_BYTES {
        return Err(ServeError::PathTooLong { path, len });
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(ServeError::MissingDirectory { socket: path, dir });
    }
    remove_stale_socket(&path).await?;

    let listener = UnixListener::bind(&path).map_err(|source| ServeError::Bind {
        path: path.clone(),
        source,
    })?;
    // From here on the guard removes the file on every exit path.
    let file = SocketFile::new(path.clone()).map_err(|source| ServeError::Bind {
        path: path.clone(),
        source,
    })?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
        ServeError::Permissions {
            path: path.clone(),
            source,
        }
    })?;
    info!(socket = %path.display(), "control API socket bound");
    Ok(BoundApi { listener, file })
}

/// Clears `path` for a new socket: nothing there is fine, a dead socket is removed.
async fn remove_stale_socket(path: &Path) -> Result<(), ServeError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ServeError::RemoveStale {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(ServeError::NotASocket {
            path: path.to_path_buf(),
        });
    }
    match tokio::time::timeout(STALE_PROBE_TIMEOUT, UnixStream::connect(path)).await {
        // Someone accepted (or queued) the connection, or is too busy to: live.
        Ok(Ok(_)) | Err(_) => {
            return Err(ServeError::InUse {
                path: path.to_path_buf(),
            })
        }
        Ok(Err(e)) => debug!(socket = %path.display(), error = %e, "removing stale API socket"),
    }
    std::fs::remove_file(path).map_err(|source| ServeError::RemoveStale {
        path: path.to_path_buf(),
        source,
    })
}

/// Removes the socket file on drop, unless another process has replaced it meanwhile.
#[derive(Debug)]
struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    fn new(path: PathBuf) -> io::Result<Self> {
        let meta = std::fs::symlink_metadata(&path)?;
        Ok(Self {
            path,
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        match std::fs::symlink_metadata(&self.path) {
            Ok(meta) if meta.dev() == self.dev && meta.ino() == self.ino => {
                match std::fs::remove_file(&self.path) {
                    Ok(()) => debug!(socket = %self.path.display(), "API socket removed"),
                    // A launcher that dropped root (--run-as): its socket guardian removes it.
                    Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                        debug!(socket = %self.path.display(), "API socket left to the socket guardian");
                    }
                    Err(e) => {
                        warn!(socket = %self.path.display(), error = %e, "cannot remove API socket")
                    }
                }
            }
            Ok(_) => warn!(
                socket = %self.path.display(),
                "API socket was replaced by another file; leaving it"
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => warn!(socket = %self.path.display(), error = %e, "cannot inspect API socket"),
        }
    }
}

/// A bound, not yet served, control API socket. Dropping it removes the socket file.
#[derive(Debug)]
pub struct BoundApi {
    listener: UnixListener,
    file: SocketFile,
}

impl BoundApi {
    /// The socket path clients connect to.
    pub fn path(&self) -> &Path {
        &self.file.path
    }

    /// Serves `control` until `shutdown` resolves, then removes the socket file.
    pub async fn serve(
        self,
        control: Arc<dyn VmControl>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServeError> {
        let Self { listener, file } = self;
        let span = info_span!("control_api", socket = %file.path.display());
        let service = LauncherService {
            control,
            socket: Arc::from(file.path.as_path()),
        };
        let result = tonic::transport::Server::builder()
            .add_service(LauncherServer::new(service))
            .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
            .instrument(span)
            .await;
        info!(socket = %file.path.display(), "control API stopped");
        let path = file.path.clone();
        drop(file);
        result.map_err(|source| ServeError::Serve { path, source })
    }
}

/// The `Launcher` gRPC service over a [`VmControl`].
struct LauncherService {
    control: Arc<dyn VmControl>,
    socket: Arc<Path>,
}

impl LauncherService {
    /// Runs a (possibly blocking) control operation off the async executor and turns its
    /// error into a gRPC status.
    async fn call<T, F>(&self, rpc: &'static str, op: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&dyn VmControl) -> Result<T, ControlError> + Send + 'static,
    {
        let control = Arc::clone(&self.control);
        let joined = tokio::task::spawn_blocking(move || op(control.as_ref())).await;
        match joined {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => {
                warn!(%error, "request refused");
                Err(convert::control_error_to_status(rpc, &error))
            }
            Err(join) => {
                warn!(error = %join, "control operation panicked");
                Err(Status::internal(format!(
                    "{rpc}: the launcher's control operation failed: {join}"
                )))
            }
        }
    }

    fn span(&self, rpc: &'static str) -> tracing::Span {
        info_span!("rpc", rpc, socket = %self.socket.display())
    }
}

#[tonic::async_trait]
impl Launcher for LauncherService {
    async fn ping(
        &self,
        _request: Request<proto::PingRequest>,
    ) -> Result<Response<proto::PingReply>, Status> {
        let span = self.span("Ping");
        async {
            debug!("ping");
            Ok(Response::new(proto::PingReply {
                version: LAUNCHER_VERSION.to_string(),
                pid: std::process::id(),
                api_version: API_VERSION.to_string(),
            }))
        }
        .instrument(span)
        .await
    }

    async fn status(
        &self,
        _request: Request<proto::StatusRequest>,
    ) -> Result<Response<proto::StatusReply>, Status> {
        let span = self.span("Status");
        async {
            let status = self.call("Status", |c| Ok(c.status())).await?;
            debug!(state = ?status.state, "status");
            Ok(Response::new(convert::status_to_proto(&status)))
        }
        .instrument(span)
        .await
    }

    async fn pause(
        &self,
        _request: Request<proto::PauseRequest>,
    ) -> Result<Response<proto::PauseReply>, Status> {
        let span = self.span("Pause");
        async {
            self.call("Pause", |c| c.pause()).await?;
            info!("VM paused");
            Ok(Response::new(proto::PauseReply {}))
        }
        .instrument(span)
        .await
    }

    async fn resume(
        &self,
        _request: Request<proto::ResumeRequest>,
    ) -> Result<Response<proto::ResumeReply>, Status> {
        let span = self.span("Resume");
        async {
            self.call("Resume", |c| c.resume()).await?;
            info!("VM resumed");
            Ok(Response::new(proto::ResumeReply {}))
        }
        .instrument(span)
        .await
    }

    async fn shutdown(
        &self,
        request: Request<proto::ShutdownRequest>,
    ) -> Result<Response<proto::ShutdownReply>, Status> {
        let span = self.span("Shutdown");
        async {
            let mode = convert::shutdown_from_proto(request.get_ref())
                .map_err(|e| Status::invalid_argument(format!("Shutdown: {e}")))?;
            self.call("Shutdown", move |c| c.shutdown(mode)).await?;
            info!(?mode, "shutdown started");
            Ok(Response::new(proto::ShutdownReply {}))
        }
        .instrument(span)
        .await
    }
}
