//! Serving the driver until shutdown: the CSI services on the CSI socket and, when
//! configured, the kubelet registration service on `<registration-dir>/<driver>-reg.sock`.
//! Both socket files are removed when serving stops.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::server::Router;
use tonic::transport::Server;
use tracing::{info, warn};

use crate::blocking::OperationLock;
use crate::controller::ControllerService;
use crate::identity::IdentityService;
use crate::node::NodeService;
use crate::proto::csi::controller_server::ControllerServer;
use crate::proto::csi::identity_server::IdentityServer;
use crate::proto::csi::node_server::NodeServer;
use crate::proto::registration::registration_server::RegistrationServer;
use crate::registration::RegistrationService;
use crate::socket::{self, SocketError};
use crate::store::{StoreError, VolumeStore};

/// How long the servers may take to finish their calls once shutdown is asked.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Where and how the kubelet registration is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationConfig {
    /// The kubelet's `plugins_registry` directory (as this process sees it).
    pub dir: PathBuf,
    /// The CSI socket path as the kubelet sees it.
    pub kubelet_endpoint: String,
}

impl RegistrationConfig {
    /// The registration socket of `driver_name`.
    pub fn socket_path(&self, driver_name: &str) -> PathBuf {
        self.dir.join(format!("{driver_name}-reg.sock"))
    }
}

/// What the driver serves, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// The CSI socket.
    pub endpoint: PathBuf,
    /// This node's name.
    pub node_id: String,
    /// The directory holding the volumes.
    pub data_dir: PathBuf,
    /// The CSI driver name.
    pub driver_name: String,
    /// The kubelet registration, if served.
    pub registration: Option<RegistrationConfig>,
}

/// Why the driver could not start or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The data directory cannot be used.
    #[error(transparent)]
    DataDir(StoreError),
    /// A socket cannot be bound.
    #[error(transparent)]
    Socket(#[from] SocketError),
    /// A server stopped with an error.
    #[error("serving on {socket} failed: {source}", socket = socket.display())]
    Serve {
        /// Its socket.
        socket: PathBuf,
        /// What tonic reported.
        #[source]
        source: tonic::transport::Error,
    },
    /// A server stopped on its own, or its task ended abnormally.
    #[error("the server on {socket} stopped unexpectedly{reason}", socket = socket.display())]
    Stopped {
        /// Its socket.
        socket: PathBuf,
        /// Why, if known (with a leading separator).
        reason: String,
    },
}

type ServerTask = JoinHandle<Result<(), tonic::transport::Error>>;

/// One running server and its socket.
struct Running {
    socket: PathBuf,
    task: ServerTask,
}

fn spawn(listener: UnixListener, router: Router, mut stop: watch::Receiver<bool>) -> ServerTask {
    // Relayed: the kubelet names sockets by path in `:authority` ([`authority`]).
    tokio::spawn(router.serve_with_incoming_shutdown(
        crate::authority::relayed_incoming(listener),
        async move {
            let _ = stop.wait_for(|stop| *stop).await;
        },
    ))
}

fn ended(
    socket: PathBuf,
    result: Result<Result<(), tonic::transport::Error>, tokio::task::JoinError>,
) -> ServerError {
    match result {
        Ok(Err(source)) => ServerError::Serve { socket, source },
        Ok(Ok(())) => ServerError::Stopped {
            socket,
            reason: String::new(),
        },
        Err(e) => ServerError::Stopped {
            socket,
            reason: format!(": {e}"),
        },
    }
}

/// Waits for `running`'s server to end; never, if there is none.
async fn wait_ended(running: &mut Option<Running>) -> ServerError {
    match running {
        Some(r) => {
            let result = (&mut r.task).await;
            ended(r.socket.clone(), result)
        }
        None => std::future::pending().await,
    }
}

/// Asks a server to stop (through the shared watch) and waits for it, aborting it
/// after [`STOP_GRACE`].
async fn finish(running: Option<Running>) {
    let Some(mut r) = running else { return };
    if tokio::time::timeout(STOP_GRACE, &mut r.task).await.is_err() {
        warn!(socket = %r.socket.display(), "server did not stop in time; aborting it");
        r.task.abort();
    }
}

/// The CSI services of the driver `driver_name` over `store`.
fn csi_router(driver_name: &str, store: &Arc<VolumeStore>) -> Router {
    let lock = OperationLock::default();
    Server::builder()
        .add_service(IdentityServer::new(IdentityService::new(driver_name)))
        .add_service(ControllerServer::new(ControllerService::new(
            Arc::clone(store),
            lock.clone(),
        )))
        .add_service(NodeServer::new(NodeService::new(Arc::clone(store), lock)))
}

/// The kubelet registration service of the driver `driver_name`.
fn registration_router(driver_name: &str, registration: &RegistrationConfig) -> Router {
    Server::builder().add_service(RegistrationServer::new(RegistrationService::new(
        driver_name,
        &registration.kubelet_endpoint,
    )))
}

/// Serves the driver described by `config` until `shutdown` completes; then stops
/// serving and removes the socket files. An error when starting names what failed.
pub async fn run(
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let store = Arc::new(
        VolumeStore::open(&config.data_dir, &config.node_id).map_err(ServerError::DataDir)?,
    );
    let (csi_listener, csi_file) = socket::bind(&config.endpoint)?;
    let registration = match &config.registration {
        Some(r) => Some((socket::bind(&r.socket_path(&config.driver_name))?, r)),
        None => None,
    };

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut csi = Some(Running {
        socket: csi_file.path().to_path_buf(),
        task: spawn(
            csi_listener,
            csi_router(&config.driver_name, &store),
            stop_rx.clone(),
        ),
    });
    let (mut reg, reg_file) = match registration {
        Some(((listener, file), r)) => {
            let router = registration_router(&config.driver_name, r);
            let running = Running {
                socket: file.path().to_path_buf(),
                task: spawn(listener, router, stop_rx),
            };
            (Some(running), Some(file))
        }
        None => (None, None),
    };
    info!(
        driver = %config.driver_name,
        node = %config.node_id,
        endpoint = %config.endpoint.display(),
        data_dir = %store.data_dir().display(),
        registration = ?reg_file.as_ref().map(|f| f.path().display().to_string()),
        "serving"
    );

    let outcome = tokio::select! {
        () = shutdown => {
            info!("shutting down");
            Ok(())
        }
        error = wait_ended(&mut csi) => Err((error, &mut csi)),
        error = wait_ended(&mut reg) => Err((error, &mut reg)),
    };
    // A server that ended is not waited for again.
    let outcome = outcome.map_err(|(error, ended)| {
        *ended = None;
        error
    });
    let _ = stop_tx.send(true);
    finish(csi).await;
    finish(reg).await;
    drop(csi_file);
    drop(reg_file);
    outcome
}
