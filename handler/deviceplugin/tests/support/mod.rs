//! A stand-in kubelet for the plugin tests: the `Registration` service on a temporary
//! `kubelet.sock`, recording every request, and the client side the kubelet uses to
//! talk to a plugin.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use ironvisor_deviceplugin::proto::device_plugin_client::DevicePluginClient;
use ironvisor_deviceplugin::proto::registration_server::{Registration, RegistrationServer};
use ironvisor_deviceplugin::proto::{Empty, RegisterRequest};
use ironvisor_deviceplugin::{DevicePluginConfig, DeviceResource};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

/// Long enough for a loaded 2-core machine, short enough to fail a hang.
pub const WAIT: Duration = Duration::from_secs(20);

struct Recorder(mpsc::UnboundedSender<RegisterRequest>);

#[tonic::async_trait]
impl Registration for Recorder {
    async fn register(&self, request: Request<RegisterRequest>) -> Result<Response<Empty>, Status> {
        let _ = self.0.send(request.into_inner());
        Ok(Response::new(Empty {}))
    }
}

/// A running fake kubelet.
pub struct FakeKubelet {
    pub socket: PathBuf,
    registrations: mpsc::UnboundedReceiver<RegisterRequest>,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<()>,
}

impl FakeKubelet {
    /// Serves `Registration` on `dir/kubelet.sock`.
    pub fn start(dir: &Path) -> Self {
        let socket = dir.join("kubelet.sock");
        let listener = UnixListener::bind(&socket).expect("bind kubelet.sock");
        let (tx, registrations) = mpsc::unbounded_channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(RegistrationServer::new(Recorder(tx)))
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
                    let _ = stopped.await;
                })
                .await
                .expect("fake kubelet serves");
        });
        Self {
            socket,
            registrations,
            stop: Some(stop),
            server,
        }
    }

    /// The next registration, failing the test after [`WAIT`].
    pub async fn next_registration(&mut self) -> RegisterRequest {
        tokio::time::timeout(WAIT, self.registrations.recv())
            .await
            .expect("a registration within the deadline")
            .expect("the fake kubelet is running")
    }

    /// The next `n` registrations, sorted by endpoint.
    pub async fn registrations(&mut self, n: usize) -> Vec<RegisterRequest> {
        let mut all = Vec::new();
        for _ in 0..n {
            all.push(self.next_registration().await);
        }
        all.sort_by(|a, b| a.endpoint.cmp(&b.endpoint));
        all
    }

    /// No registration arrives within `within`.
    pub async fn assert_no_registration(&mut self, within: Duration) {
        if let Ok(Some(r)) = tokio::time::timeout(within, self.registrations.recv()).await {
            panic!("unexpected registration {r:?}");
        }
    }

    /// Stops serving and removes `kubelet.sock`.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(WAIT, &mut self.server).await;
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Connects to a plugin's socket as the kubelet does.
pub async fn plugin_client(socket: &Path) -> DevicePluginClient<Channel> {
    let channel = ironvisor_grpc_uds::channel::connect(socket, "http://plugin.invalid", WAIT)
        .await
        .expect("connect to the plugin");
    DevicePluginClient::new(channel)
}

/// A plugin directory and stand-in device nodes (plain files that open read-write).
pub struct Node {
    pub dir: tempfile::TempDir,
    pub kvm: PathBuf,
    pub tun: PathBuf,
}

impl Node {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let kvm = dir.path().join("dev-kvm");
        let tun = dir.path().join("dev-net-tun");
        std::fs::write(&kvm, b"").expect("stand-in kvm");
        std::fs::write(&tun, b"").expect("stand-in tun");
        Self { dir, kvm, tun }
    }

    /// Both resources with `count` devices on the stand-ins, with short timings.
    pub fn config(&self, count: usize) -> DevicePluginConfig {
        let resource = |base: DeviceResource, host: &Path| DeviceResource {
            host_path: host.to_path_buf(),
            device_count: count,
            ..base
        };
        DevicePluginConfig {
            plugin_dir: self.dir.path().to_path_buf(),
            resources: vec![
                resource(DeviceResource::kvm(), &self.kvm),
                resource(DeviceResource::tun(), &self.tun),
            ],
            health_interval: Duration::from_millis(50),
            socket_check_interval: Duration::from_millis(50),
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(200),
            kubelet_timeout: Duration::from_secs(5),
        }
    }

    pub fn socket(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("ironvisor-{name}.sock"))
    }
}

/// Waits until `check` holds, failing the test after [`WAIT`].
pub async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
