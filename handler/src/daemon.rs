//! `ironvisor-handler serve`: opens the store, probes the host, re-adopts the launchers
//! of an earlier run, starts the reconcile loop and serves the API on a root-only unix
//! socket until SIGTERM/SIGINT. Launchers keep running when the daemon exits.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ironvisor_disks::ImageStore;
use ironvisor_handler_api::proto::handler_server::HandlerServer;
use nix::sys::stat::{umask, Mode};
use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio_stream::wrappers::UnixListenerStream;
use tracing::{info, warn};

use crate::backend::BackendSelector;
use crate::cgroup::{CgroupError, CgroupLayout};
use crate::config::DaemonConfig;
use crate::launcher_proc::{self, Liveness};
use crate::runtime::{Runtime, RuntimeContext};
use crate::service::HandlerService;
use crate::store::{Store, StoreError};
use crate::translate::KernelImages;

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The cgroup layout is unusable.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// The node's CPUs could not be read.
    #[error(transparent)]
    Cpus(#[from] crate::cpus::CpuError),
    /// The socket directory could not be created.
    #[error("cannot create socket directory {path}: {source}")]
    SocketDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Another daemon serves on the socket.
    #[error("another node agent is already serving on {path}")]
    AlreadyServing {
        /// The socket.
        path: PathBuf,
    },
    /// The socket could not be bound or secured.
    #[error("cannot listen on {path}: {source}")]
    Bind {
        /// The socket.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] io::Error),
    /// The gRPC server failed.
    #[error("API server on {path} failed: {source}")]
    Serve {
        /// The socket.
        path: PathBuf,
        /// The transport error.
        #[source]
        source: tonic::transport::Error,
    },
}

/// Builds the runtime context from the settings (opens the store, probes the host).
pub fn context(config: DaemonConfig) -> Result<RuntimeContext, DaemonError> {
    let store = Arc::new(Store::open_with(
        &config.data_dir,
        config.store_min_free_bytes,
    )?);
    let backend = BackendSelector::probe(config.backend);
    let cgroups = CgroupLayout::detect_host(&config.cgroup_parent)?;
    let network = config.network();
    let kernels = KernelImages {
        images_dir: config.images_dir.clone(),
        default_kernel: config.default_kernel.clone(),
        default_initrd: config.default_initrd.clone(),
    };
    let images = ImageStore::new(config.images_dir.clone());
    let cpus = crate::cpus::NodeCpus::of_this_process()?;
    Ok(RuntimeContext {
        store,
        cpus,
        config,
        backend,
        cgroups,
        kernels,
        network,
        images,
    })
}

/// Logs what happened to the launchers of an earlier run; the first reconcile pass then
/// keeps the live ones and finishes the others.
fn report_adoption(ctx: &RuntimeContext) -> Result<(), StoreError> {
    for key in ctx.store.launcher_keys()? {
        let Some(snap) = ctx.store.get(&key)? else {
            continue;
        };
        let Some(launcher) = snap.launcher else {
            continue;
        };
        match launcher_proc::liveness(&key, &launcher) {
            Ok(Liveness::Alive) => info!(
                vm = %key,
                uid = %launcher.vmi_uid,
                monitor_pid = launcher.monitor.map(|m| m.pid),
                "re-adopted a running launcher"
            ),
            Ok(Liveness::Exited(outcome)) => {
                info!(vm = %key, uid = %launcher.vmi_uid, %outcome, "launcher ended while the node agent was down")
            }
            Err(error) => warn!(vm = %key, %error, "cannot check a launcher"),
        }
    }
    Ok(())
}

/// Binds the API socket with mode 0600 (root only), replacing a stale socket file.
fn bind(path: &Path) -> Result<UnixListener, DaemonError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| DaemonError::SocketDir {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(DaemonError::AlreadyServing {
                path: path.to_path_buf(),
            });
        }
        std::fs::remove_file(path).map_err(|source| DaemonError::Bind {
            path: path.to_path_buf(),
            source,
        })?;
    }
    // No window in which the socket is reachable by others.
    let previous = umask(Mode::from_bits_truncate(0o177));
    let listener = UnixListener::bind(path);
    umask(previous);
    let listener = listener.map_err(|source| DaemonError::Bind {
        path: path.to_path_buf(),
        source,
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
        DaemonError::Bind {
            path: path.to_path_buf(),
            source,
        }
    })?;
    Ok(listener)
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn serve(config: DaemonConfig) -> Result<(), DaemonError> {
    let socket = config.socket.clone();
    let ctx = tokio::task::spawn_blocking(move || -> Result<RuntimeContext, DaemonError> {
        let ctx = context(config)?;
        report_adoption(&ctx)?;
        Ok(ctx)
    })
    .await
    .map_err(|e| StoreError::Task(e.to_string()))??;
    info!(
        data_dir = %ctx.config.data_dir.display(),
        node = %ctx.config.node_name,
        hardware_kvm = ctx.backend.hardware_problem().is_none(),
        "node agent starting"
    );
    let runtime = Runtime::new(ctx);
    let listener = bind(&socket)?;
    info!(socket = %socket.display(), "serving the API");

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let loop_handle = tokio::spawn(Arc::clone(&runtime).run(shutdown_rx.clone()));
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(DaemonError::Signals)?;
    let signal_tx = shutdown_tx.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => info!("SIGTERM: shutting down (launchers keep running)"),
            _ = tokio::signal::ctrl_c() => info!("SIGINT: shutting down (launchers keep running)"),
        }
        let _ = signal_tx.send(true);
    });
    let mut server_shutdown = shutdown_rx;
    let result = tonic::transport::Server::builder()
        .add_service(HandlerServer::new(HandlerService::new(Arc::clone(
            &runtime,
        ))))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async move {
            let _ = server_shutdown.wait_for(|stop| *stop).await;
        })
        .await;
    let _ = shutdown_tx.send(true);
    if let Err(error) = loop_handle.await {
        warn!(%error, "reconcile loop ended abnormally");
    }
    if let Err(error) = std::fs::remove_file(&socket) {
        if error.kind() != io::ErrorKind::NotFound {
            warn!(socket = %socket.display(), %error, "cannot remove the API socket");
        }
    }
    result.map_err(|source| DaemonError::Serve {
        path: socket,
        source,
    })
}
