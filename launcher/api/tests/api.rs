//! End-to-end tests: a real server on a tempdir unix socket, over a fake `VmControl`,
//! driven by the real client.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ironvisor_launcher_api::client::{ClientError, ClientOptions, LauncherClient};
use ironvisor_launcher_api::control::{
    ControlError, DeviceStatus, ShutdownMode, VmControl, VmState, VmStatus,
};
use ironvisor_launcher_api::server::{self, ServeError, API_VERSION, LAUNCHER_VERSION};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::Code;

/// A VM that only tracks its state and records what it was asked.
struct FakeVm {
    state: Mutex<VmState>,
    shutdowns: Mutex<Vec<ShutdownMode>>,
    /// When set, the next pause fails with this error.
    pause_error: Mutex<Option<ControlError>>,
}

impl FakeVm {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(VmState::Running),
            shutdowns: Mutex::new(Vec::new()),
            pause_error: Mutex::new(None),
        })
    }
    fn state(&self) -> VmState {
        *self.state.lock().unwrap()
    }
}

fn fake_status(state: VmState) -> VmStatus {
    VmStatus {
        name: "testvm".into(),
        state,
        vcpus: 2,
        memory_mib: 512,
        devices: vec![
            DeviceStatus {
                kind: "virtio-blk".into(),
                id: "rootdisk".into(),
                mac: None,
                backend: "/var/lib/images/root.img".into(),
                read_only: true,
            },
            DeviceStatus {
                kind: "virtio-net".into(),
                id: "net0".into(),
                mac: Some("52:54:00:aa:bb:cc".into()),
                backend: "tap-testvm0".into(),
                read_only: false,
            },
        ],
        uptime: Duration::from_millis(4321),
        backend: "kvm".into(),
        vcpu_affinity: vec![vec![1], vec![2, 3]],
    }
}

impl VmControl for FakeVm {
    fn status(&self) -> VmStatus {
        fake_status(self.state())
    }
    fn pause(&self) -> Result<(), ControlError> {
        if let Some(e) = self.pause_error.lock().unwrap().take() {
            return Err(e);
        }
        let mut state = self.state.lock().unwrap();
        if *state != VmState::Running {
            return Err(ControlError::InvalidState(*state));
        }
        *state = VmState::Paused;
        Ok(())
    }
    fn resume(&self) -> Result<(), ControlError> {
        let mut state = self.state.lock().unwrap();
        if *state != VmState::Paused {
            return Err(ControlError::InvalidState(*state));
        }
        *state = VmState::Running;
        Ok(())
    }
    fn shutdown(&self, mode: ShutdownMode) -> Result<(), ControlError> {
        self.shutdowns.lock().unwrap().push(mode);
        *self.state.lock().unwrap() = VmState::ShuttingDown;
        Ok(())
    }
}

struct Harness {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    vm: Arc<FakeVm>,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<Result<(), ServeError>>,
}

impl Harness {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("launcher.sock");
        let vm = FakeVm::new();
        let bound = server::bind(&socket).await.unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let control: Arc<dyn VmControl> = vm.clone();
        let server = tokio::spawn(bound.serve(control, async {
            let _ = stopped.await;
        }));
        Self {
            _dir: dir,
            socket,
            vm,
            stop: Some(stop),
            server,
        }
    }

    async fn client(&self) -> LauncherClient {
        LauncherClient::connect(&self.socket).await.unwrap()
    }

    async fn stop(mut self) -> Result<(), ServeError> {
        if let Some(stop) = self.stop.take() {
            stop.send(()).unwrap();
        }
        tokio::time::timeout(Duration::from_secs(10), &mut self.server)
            .await
            .expect("server did not stop")
            .unwrap()
    }
}

#[tokio::test]
async fn status_fields_round_trip() {
    let h = Harness::start().await;
    let client = h.client().await;
    assert_eq!(
        client.status().await.unwrap(),
        fake_status(VmState::Running)
    );
    h.stop().await.unwrap();
}

#[tokio::test]
async fn ping_reports_version_and_pid() {
    let h = Harness::start().await;
    let info = h.client().await.ping().await.unwrap();
    assert_eq!(info.version, LAUNCHER_VERSION);
    assert_eq!(info.pid, std::process::id());
    assert_eq!(info.api_version, API_VERSION);
    h.stop().await.unwrap();
}

#[tokio::test]
async fn pause_then_resume_changes_state() {
    let h = Harness::start().await;
    let client = h.client().await;
    client.pause().await.unwrap();
    assert_eq!(h.vm.state(), VmState::Paused);
    assert_eq!(client.status().await.unwrap().state, VmState::Paused);
    client.resume().await.unwrap();
    assert_eq!(client.status().await.unwrap().state, VmState::Running);
    h.stop().await.unwrap();
}

#[tokio::test]
async fn pause_while_paused_is_refused_with_the_state() {
    let h = Harness::start().await;
    let client = h.client().await;
    client.pause().await.unwrap();
    let err = client.pause().await.unwrap_err();
    match &err {
        ClientError::Refused {
            path,
            rpc,
            code,
            source,
        } => {
            assert_eq!(path, &h.socket);
            assert_eq!(*code, Code::FailedPrecondition);
            assert_eq!(*rpc, "Pause");
            assert_eq!(source, &ControlError::InvalidState(VmState::Paused));
        }
        other => panic!("unexpected error {other:?}"),
    }
    let text = err.to_string();
    assert!(text.contains(&h.socket.display().to_string()), "{text}");
    assert!(text.contains("refused Pause"), "{text}");
    assert!(text.contains("Paused"), "{text}");
    // Resuming a running VM is refused the same way.
    client.resume().await.unwrap();
    let err = client.resume().await.unwrap_err();
    assert!(matches!(
        err,
        ClientError::Refused {
            source: ControlError::InvalidState(VmState::Running),
            ..
        }
    ));
    h.stop().await.unwrap();
}

#[tokio::test]
async fn other_control_errors_are_rebuilt_exactly() {
    let h = Harness::start().await;
    let client = h.client().await;
    let vcpu = ControlError::VcpuUnresponsive {
        index: 1,
        reason: "no ack within 2s".into(),
    };
    *h.vm.pause_error.lock().unwrap() = Some(vcpu.clone());
    match client.pause().await.unwrap_err() {
        ClientError::Refused { source, code, .. } => {
            assert_eq!(source, vcpu);
            assert_eq!(code, Code::Unavailable);
        }
        other => panic!("unexpected error {other:?}"),
    }
    h.stop().await.unwrap();
}

#[tokio::test]
async fn graceful_and_forced_shutdown_reach_the_vm() {
    let h = Harness::start().await;
    let client = h.client().await;
    client
        .shutdown(ShutdownMode::Graceful {
            timeout: Duration::from_secs(45),
        })
        .await
        .unwrap();
    client.shutdown(ShutdownMode::Forced).await.unwrap();
    assert_eq!(
        *h.vm.shutdowns.lock().unwrap(),
        vec![
            ShutdownMode::Graceful {
                timeout: Duration::from_secs(45)
            },
            ShutdownMode::Forced
        ]
    );
    assert_eq!(h.vm.state(), VmState::ShuttingDown);
    h.stop().await.unwrap();
}

#[tokio::test]
async fn graceful_shutdown_without_grace_period_is_an_invalid_argument() {
    let h = Harness::start().await;
    let client = h.client().await;
    let err = client
        .shutdown(ShutdownMode::Graceful {
            timeout: Duration::ZERO,
        })
        .await
        .unwrap_err();
    match &err {
        ClientError::Rpc {
            code, message, rpc, ..
        } => {
            assert_eq!(*code, Code::InvalidArgument);
            assert_eq!(*rpc, "Shutdown");
            assert!(message.contains("timeout_seconds > 0"), "{message}");
        }
        other => panic!("unexpected error {other:?}"),
    }
    assert!(h.vm.shutdowns.lock().unwrap().is_empty());
    h.stop().await.unwrap();
}

#[tokio::test]
async fn socket_is_private_and_removed_after_shutdown() {
    let h = Harness::start().await;
    let meta = std::fs::symlink_metadata(&h.socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    // A connected client must not keep the server from stopping.
    let client = h.client().await;
    client.ping().await.unwrap();
    let socket = h.socket.clone();
    h.stop().await.unwrap();
    assert!(!socket.exists(), "socket file left behind");
}

#[tokio::test]
async fn serve_binds_serves_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let (stop, stopped) = oneshot::channel::<()>();
    let control: Arc<dyn VmControl> = FakeVm::new();
    let path = socket.clone();
    let task = tokio::spawn(async move {
        server::serve(&path, control, async {
            let _ = stopped.await;
        })
        .await
    });
    // Wait for the socket to appear, then use it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "socket never appeared");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let client = LauncherClient::connect(&socket).await.unwrap();
    assert_eq!(client.status().await.unwrap().name, "testvm");
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
    assert!(!socket.exists());
}

#[tokio::test]
async fn dropping_a_bound_api_removes_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let bound = server::bind(&socket).await.unwrap();
    assert_eq!(bound.path(), socket);
    assert!(socket.exists());
    drop(bound);
    assert!(!socket.exists());
}

#[tokio::test]
async fn client_to_missing_socket_fails_fast_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nobody.sock");
    let start = Instant::now();
    let err = LauncherClient::connect(&socket).await.unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(1));
    assert!(matches!(&err, ClientError::SocketMissing { path } if path == &socket));
    assert!(err.to_string().contains(&socket.display().to_string()));
}

#[tokio::test]
async fn client_to_dead_launcher_fails_fast_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("dead.sock");
    // A socket file whose listener is gone, as a crashed launcher leaves it.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let start = Instant::now();
    let err = LauncherClient::connect(&socket).await.unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(1));
    assert!(
        matches!(&err, ClientError::NotListening { path } if path == &socket),
        "{err:?}"
    );
    assert!(err.to_string().contains(&socket.display().to_string()));
}

#[tokio::test]
async fn hung_launcher_gives_a_timeout_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("hung.sock");
    // Listens (so connect(2) succeeds) but never accepts nor answers.
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let options = ClientOptions {
        connect_timeout: Duration::from_millis(300),
        request_timeout: Duration::from_millis(300),
    };
    let start = Instant::now();
    let err = match LauncherClient::connect_with(&socket, options).await {
        Ok(client) => client.ping().await.unwrap_err(),
        Err(e) => e,
    };
    assert!(start.elapsed() < Duration::from_secs(2), "{err:?}");
    assert!(
        matches!(&err, ClientError::Timeout { path, rpc: "Ping", .. } if path == &socket),
        "{err:?}"
    );
}

#[tokio::test]
async fn client_sees_launcher_going_away() {
    let h = Harness::start().await;
    let client = h.client().await;
    client.ping().await.unwrap();
    let socket = h.socket.clone();
    h.stop().await.unwrap();
    let err = client.ping().await.unwrap_err();
    assert!(
        err.to_string().contains(&socket.display().to_string()),
        "{err}"
    );
    // The server removed its socket on the way out.
    assert!(matches!(err, ClientError::SocketMissing { .. }), "{err:?}");
}

#[tokio::test]
async fn bind_names_a_missing_directory() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("no/such/dir/api.sock");
    let err = server::bind(&socket).await.unwrap_err();
    assert!(
        matches!(&err, ServeError::MissingDirectory { dir: d, .. } if d == &dir.path().join("no/such/dir"))
    );
    let text = err.to_string();
    assert!(text.contains(&socket.display().to_string()), "{text}");
    assert!(text.contains("does not exist"), "{text}");
}

#[tokio::test]
async fn bind_replaces_a_stale_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let bound = server::bind(&socket).await.unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let control: Arc<dyn VmControl> = FakeVm::new();
    let task = tokio::spawn(bound.serve(control, async {
        let _ = stopped.await;
    }));
    LauncherClient::connect(&socket)
        .await
        .unwrap()
        .ping()
        .await
        .unwrap();
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn bind_refuses_a_live_socket_and_other_files() {
    let h = Harness::start().await;
    let err = server::bind(&h.socket).await.unwrap_err();
    assert!(
        matches!(&err, ServeError::InUse { path } if path == &h.socket),
        "{err:?}"
    );
    // The live server is untouched.
    h.client().await.ping().await.unwrap();
    h.stop().await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("precious.txt");
    std::fs::write(&file, b"keep me").unwrap();
    let err = server::bind(&file).await.unwrap_err();
    assert!(
        matches!(&err, ServeError::NotASocket { path } if path == &file),
        "{err:?}"
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
}

#[tokio::test]
async fn bind_refuses_too_long_paths() {
    let long = Path::new("/tmp").join("x".repeat(200));
    let err = server::bind(&long).await.unwrap_err();
    assert!(
        matches!(err, ServeError::PathTooLong { len: 205, .. }),
        "{err:?}"
    );
}
