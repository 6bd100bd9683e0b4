//! The driver binary as a child process in a temporary directory (CSI socket, data
//! directory, registration directory, log), and the clients the kubelet and the
//! provisioner would use to call it.

#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use ironvisor_csi_hostpath::proto::csi::controller_client::ControllerClient;
use ironvisor_csi_hostpath::proto::csi::identity_client::IdentityClient;
use ironvisor_csi_hostpath::proto::csi::node_client::NodeClient;
use ironvisor_csi_hostpath::proto::registration::registration_client::RegistrationClient;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tonic::transport::Channel;

/// Long enough for a loaded 2-core machine, short enough to fail a hang.
pub const WAIT: Duration = Duration::from_secs(20);

/// The node name the driver runs with.
pub const NODE: &str = "node-under-test";

/// The driver name it runs with.
pub const DRIVER: &str = "hostpath.csi.ironvisor.io";

/// The kubelet endpoint it is told.
pub const KUBELET_ENDPOINT: &str = "/var/lib/kubelet/plugins/hostpath.csi.ironvisor.io/csi.sock";

/// A running driver process.
pub struct Driver {
    pub dir: tempfile::TempDir,
    pub csi_socket: PathBuf,
    pub reg_socket: PathBuf,
    pub data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_ironvisor-csi-hostpath")
}

impl Driver {
    /// Starts the driver with registration and waits for both sockets to answer.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let csi_socket = dir.path().join("plugin/csi.sock");
        let registry = dir.path().join("plugins_registry");
        let reg_socket = registry.join(format!("{DRIVER}-reg.sock"));
        let data_dir = dir.path().join("data");
        let log = dir.path().join("driver.log");
        let child = Command::new(binary())
            .arg("--endpoint")
            .arg(format!("unix://{}", csi_socket.display()))
            .arg("--node-id")
            .arg(NODE)
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--registration-dir")
            .arg(&registry)
            .arg("--kubelet-endpoint")
            .arg(KUBELET_ENDPOINT)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("log file"))
            .spawn()
            .expect("start the driver");
        let mut driver = Self {
            dir,
            csi_socket,
            reg_socket,
            data_dir,
            log,
            child: Some(child),
        };
        driver.wait_for_sockets();
        driver
    }

    fn wait_for_sockets(&mut self) {
        let deadline = Instant::now() + WAIT;
        loop {
            let up = [&self.csi_socket, &self.reg_socket]
                .iter()
                .all(|s| std::os::unix::net::UnixStream::connect(s).is_ok());
            if up {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("the driver exited with {status}:\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "sockets not up:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What the driver logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A directory for targets, beside the data directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    async fn channel(socket: &Path) -> Channel {
        ironvisor_grpc_uds::channel::connect(socket, "http://csi.invalid", WAIT)
            .await
            .expect("connect")
    }

    pub async fn identity(&self) -> IdentityClient<Channel> {
        IdentityClient::new(Self::channel(&self.csi_socket).await)
    }

    pub async fn controller(&self) -> ControllerClient<Channel> {
        ControllerClient::new(Self::channel(&self.csi_socket).await)
    }

    pub async fn node(&self) -> NodeClient<Channel> {
        NodeClient::new(Self::channel(&self.csi_socket).await)
    }

    pub async fn registration(&self) -> RegistrationClient<Channel> {
        RegistrationClient::new(Self::channel(&self.reg_socket).await)
    }

    pub async fn raw_channel(&self) -> Channel {
        Self::channel(&self.csi_socket).await
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid"));
        kill(pid, Signal::SIGTERM).expect("SIGTERM");
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("the driver ignored SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- driver log ---\n{}", self.log());
        }
    }
}

/// Runs the driver binary with `args` to its exit, returning the status and stderr.
pub fn run_to_exit(args: &[&str]) -> (ExitStatus, String) {
    let out = Command::new(binary())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run the driver");
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Lazily unmounts the paths it holds when dropped, so a failing test leaves no mount
/// behind.
#[derive(Default)]
pub struct MountGuard(pub Vec<PathBuf>);

impl Drop for MountGuard {
    fn drop(&mut self) {
        for path in &self.0 {
            while nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH).is_ok() {}
        }
    }
}

/// Detaches the loop device of the image it holds when dropped, so a failing test
/// leaves no loop device behind.
pub struct LoopGuard(pub PathBuf);

impl Drop for LoopGuard {
    fn drop(&mut self) {
        if let Ok(Some(index)) = ironvisor_csi_hostpath::loopdev::find(&self.0) {
            let _ = ironvisor_csi_hostpath::loopdev::detach(index);
        }
    }
}
