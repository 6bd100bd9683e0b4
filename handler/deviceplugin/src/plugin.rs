//! The life of one plugin: bind its socket, serve the `DevicePlugin` service, register
//! with the kubelet, and start over when the socket file disappears.
//!
//! The kubelet deletes every socket in its device-plugin directory when it starts, and
//! forgets its plugins; a plugin must then serve on a new socket and register again.
//! The socket path is polled (one `lstat` per `socket_check_interval`, 1 s by default)
//! rather than watched with inotify: the poll also notices the whole directory being
//! removed and made again (an inotify watch dies with its directory), works on every
//! filesystem, costs nothing measurable, and the kubelet takes longer than a second to
//! come up and accept registrations anyway.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnixListenerStream;
use tracing::{info, warn};

use crate::config::{DevicePluginConfig, DeviceResource};
use crate::health::Health;
use crate::proto::device_plugin_server::DevicePluginServer;
use crate::registration::{self, Backoff};
use crate::service::DevicePluginService;
use crate::socket::{self, SocketError, SocketIdentity};

/// How long a stopping server may take to close its connections before it is aborted.
const SERVER_STOP_GRACE: Duration = Duration::from_secs(5);

/// Why a plugin stopped for good.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// Another server answers on the plugin's socket: a second instance is running.
    #[error(transparent)]
    SocketInUse(SocketError),
}

/// The timings a plugin needs from [`DevicePluginConfig`].
#[derive(Debug, Clone)]
pub struct PluginSettings {
    /// The plugin's socket.
    pub socket: PathBuf,
    /// The kubelet's registration socket.
    pub kubelet_socket: PathBuf,
    /// How often the socket file is checked.
    pub socket_check_interval: Duration,
    /// Registration (and re-bind) retry timing.
    pub backoff: Backoff,
    /// Deadline of one call to the kubelet.
    pub kubelet_timeout: Duration,
}

impl PluginSettings {
    /// The settings of `resource` under `config`.
    pub fn new(config: &DevicePluginConfig, resource: &DeviceResource) -> Self {
        Self {
            socket: config.socket_path(resource),
            kubelet_socket: config.kubelet_socket(),
            socket_check_interval: config.socket_check_interval,
            backoff: Backoff {
                initial: config.initial_backoff,
                max: config.max_backoff,
            },
            kubelet_timeout: config.kubelet_timeout,
        }
    }
}

/// Why one serving generation ended.
enum GenerationEnd {
    /// Shutdown was asked for.
    Shutdown,
    /// The socket file vanished or was replaced: serve anew and register again.
    SocketGone,
    /// The server stopped on its own (an error in accepting connections).
    ServerEnded,
}

/// Runs the plugin of `resource` until `shutdown` turns true, then removes its socket.
pub async fn run_plugin(
    resource: Arc<DeviceResource>,
    settings: PluginSettings,
    health: watch::Receiver<Health>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), PluginError> {
    let mut bind_wait = settings.backoff.initial;
    let mut generation: u64 = 0;
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        let bound = match socket::bind(&settings.socket) {
            Ok(bound) => bound,
            Err(error @ SocketError::InUse { .. }) => return Err(PluginError::SocketInUse(error)),
            Err(error) => {
                warn!(%error, retry_in = ?bind_wait, "cannot bind the plugin socket");
                tokio::select! {
                    () = tokio::time::sleep(bind_wait) => {}
                    _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
                }
                bind_wait = settings.backoff.next(bind_wait);
                continue;
            }
        };
        bind_wait = settings.backoff.initial;
        generation += 1;
        info!(generation, socket = %settings.socket.display(), "serving");
        let identity = bound.identity;
        let (stop_tx, stop_rx) = watch::channel(false);
        let service = DevicePluginService::new(Arc::clone(&resource), health.clone(), stop_rx);
        let mut server = spawn_server(bound, service, stop_tx.subscribe());

        let end =
            serve_and_register(&resource, &settings, identity, &mut server, &mut shutdown).await;
        let _ = stop_tx.send(true);
        stop_server(server).await;
        match end {
            GenerationEnd::Shutdown => {
                remove_socket(&settings.socket, identity);
                info!("stopped");
                return Ok(());
            }
            GenerationEnd::SocketGone => {
                info!("the socket was removed (kubelet restart?): serving anew")
            }
            GenerationEnd::ServerEnded => {
                remove_socket(&settings.socket, identity);
                tokio::select! {
                    () = tokio::time::sleep(settings.backoff.initial) => {}
                    _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
                }
            }
        }
    }
}

/// Registers (retrying), then waits, until shutdown, the socket vanishing or the server
/// ending. The socket is watched during registration too: a kubelet that starts while
/// we retry deletes it.
async fn serve_and_register(
    resource: &DeviceResource,
    settings: &PluginSettings,
    identity: SocketIdentity,
    server: &mut JoinHandle<Result<(), tonic::transport::Error>>,
    shutdown: &mut watch::Receiver<bool>,
) -> GenerationEnd {
    let endpoint = resource.socket_name();
    let register = registration::register_with_backoff(
        &settings.kubelet_socket,
        registration::request(&resource.resource_name, &endpoint),
        settings.kubelet_timeout,
        settings.backoff,
    );
    let gone = socket_gone(&settings.socket, identity, settings.socket_check_interval);
    tokio::pin!(gone);
    tokio::select! {
        () = register => {}
        () = &mut gone => return GenerationEnd::SocketGone,
        _ = shutdown.wait_for(|stop| *stop) => return GenerationEnd::Shutdown,
        result = &mut *server => return server_ended(result),
    }
    tokio::select! {
        () = &mut gone => GenerationEnd::SocketGone,
        _ = shutdown.wait_for(|stop| *stop) => GenerationEnd::Shutdown,
        result = &mut *server => server_ended(result),
    }
}

fn server_ended(
    result: Result<Result<(), tonic::transport::Error>, tokio::task::JoinError>,
) -> GenerationEnd {
    match result {
        Ok(Ok(())) => warn!("the plugin server stopped by itself"),
        Ok(Err(error)) => warn!(%error, "the plugin server failed"),
        Err(error) => warn!(%error, "the plugin server task ended abnormally"),
    }
    GenerationEnd::ServerEnded
}

/// Serves `service` on `bound` until `stop` turns true.
fn spawn_server(
    bound: socket::BoundSocket,
    service: DevicePluginService,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<Result<(), tonic::transport::Error>> {
    let incoming = UnixListenerStream::new(bound.listener);
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(DevicePluginServer::new(service))
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stop.wait_for(|stop| *stop).await;
            })
            .await
    })
}

/// Waits for a stopping server, aborting it after [`SERVER_STOP_GRACE`].
async fn stop_server(mut server: JoinHandle<Result<(), tonic::transport::Error>>) {
    if server.is_finished() {
        return;
    }
    if tokio::time::timeout(SERVER_STOP_GRACE, &mut server)
        .await
        .is_err()
    {
        warn!("the plugin server did not stop in time; aborting it");
        server.abort();
    }
}

/// Resolves once `path` no longer names the file `identity`.
async fn socket_gone(path: &Path, identity: SocketIdentity, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        if !identity.still_at(path) {
            return;
        }
    }
}

fn remove_socket(path: &Path, identity: SocketIdentity) {
    if let Err(error) = socket::remove_if_ours(path, identity) {
        warn!(socket = %path.display(), %error, "cannot remove the plugin socket");
    }
}
