//! Test harness: a real `ironvisor-handler serve` process on temporary directories, with
//! the fake launcher (`examples/fake-launcher`, built by `cargo test`) as both backends,
//! and a real gRPC client. Everything it starts is killed when the harness is dropped,
//! also when a test fails.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ironvisor_handler::cgroup::{self, CgroupLayout};
use ironvisor_handler::records::VmKey;
use ironvisor_handler_api::proto::{ObjectRef, VmView};
use ironvisor_handler_api::HandlerClient;

/// Default deadline of a wait.
pub const WAIT: Duration = Duration::from_secs(30);

/// Path of the fake launcher example built next to the test binaries.
pub fn fake_launcher() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let debug_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile directory");
    let path = debug_dir.join("examples").join("fake-launcher");
    if !path.is_file() {
        // `cargo test -p ironvisor-handler` builds it; `--test NAME` alone does not.
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let _ = Command::new(cargo)
            .args([
                "build",
                "-q",
                "-p",
                "ironvisor-handler",
                "--example",
                "fake-launcher",
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status();
    }
    assert!(
        path.is_file(),
        "{} missing: run the tests with `cargo test -p ironvisor-handler` (it builds the example)",
        path.display()
    );
    path
}

/// Options for [`Daemon::start`].
#[derive(Clone, Debug)]
pub struct Options {
    /// `--backend`.
    pub backend: &'static str,
    /// `--launcher` (defaults to the fake launcher).
    pub launcher: Option<PathBuf>,
    /// `--launcher-qemu` (defaults to the fake launcher).
    pub launcher_qemu: Option<PathBuf>,
    /// `--restart-backoff-base-ms`.
    pub backoff_base_ms: u64,
    /// An existing data directory (e.g. a small tmpfs).
    pub data_dir: Option<PathBuf>,
    /// `--default-kernel` (a dummy file by default).
    pub default_kernel: Option<PathBuf>,
    /// `--default-initrd`.
    pub default_initrd: Option<PathBuf>,
    /// `--images-dir`.
    pub images_dir: Option<PathBuf>,
    /// `--store-min-free-bytes` (the daemon's default when `None`).
    pub store_min_free_bytes: Option<u64>,
    /// `--bridge` and `--pod-subnet`.
    pub network: Option<(String, String)>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            backend: "qemu-tcg",
            launcher: None,
            launcher_qemu: None,
            backoff_base_ms: 400,
            data_dir: None,
            default_kernel: None,
            default_initrd: None,
            images_dir: None,
            store_min_free_bytes: None,
            network: None,
        }
    }
}

/// A running node agent.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub data_dir: PathBuf,
    pub run_dir: PathBuf,
    pub socket: PathBuf,
    pub cgroup_parent: String,
    pub options: Options,
    child: Option<Child>,
}

impl Daemon {
    /// Starts a daemon and waits until its socket accepts connections.
    pub fn start(options: Options) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("ivh-")
            .tempdir_in("/tmp")
            .expect("temp dir");
        let data_dir = options
            .data_dir
            .clone()
            .unwrap_or_else(|| dir.path().join("data"));
        let cgroup_parent = format!(
            "ivtest-{}-{}",
            std::process::id(),
            dir.path().file_name().unwrap().to_string_lossy()
        );
        let mut daemon = Self {
            run_dir: dir.path().join("run"),
            socket: dir.path().join("handler.sock"),
            data_dir,
            dir,
            cgroup_parent,
            options,
            child: None,
        };
        daemon.spawn();
        daemon
    }

    fn spawn(&mut self) {
        let kernel = self.dir.path().join("vmlinuz");
        if !kernel.exists() {
            std::fs::write(&kernel, b"not a kernel: the fake launcher never boots it").unwrap();
        }
        // The kernel image the test manifests boot from (`test/kernel:1`).
        let image = self.images_dir().join("test/kernel/1/boot");
        std::fs::create_dir_all(&image).unwrap();
        std::fs::write(image.join("vmlinuz"), b"fake kernel").unwrap();
        let fake = fake_launcher();
        let options = &self.options;
        let mut command = Command::new(env!("CARGO_BIN_EXE_ironvisor-handler"));
        command
            .arg("serve")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--run-dir")
            .arg(&self.run_dir)
            .arg("--images-dir")
            .arg(self.images_dir())
            .arg("--launcher")
            .arg(options.launcher.clone().unwrap_or_else(|| fake.clone()))
            .arg("--launcher-qemu")
            .arg(
                options
                    .launcher_qemu
                    .clone()
                    .unwrap_or_else(|| fake.clone()),
            )
            .arg("--default-kernel")
            .arg(options.default_kernel.clone().unwrap_or(kernel))
            .arg("--node-name")
            .arg("testnode")
            .arg("--backend")
            .arg(options.backend)
            .arg("--cgroup-parent")
            .arg(&self.cgroup_parent)
            .arg("--restart-backoff-base-ms")
            .arg(options.backoff_base_ms.to_string())
            .arg("--resync-ms")
            .arg("200")
            .env("IRONVISOR_LOG", "info,ironvisor_handler=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.dir.path().join("daemon.log"))
                    .unwrap(),
            );
        if let Some((bridge, subnet)) = &options.network {
            command
                .arg("--bridge")
                .arg(bridge)
                .arg("--pod-subnet")
                .arg(subnet);
        }
        if let Some(bytes) = options.store_min_free_bytes {
            command.arg("--store-min-free-bytes").arg(bytes.to_string());
        }
        if let Some(initrd) = &options.default_initrd {
            command.arg("--default-initrd").arg(initrd);
        }
        let child = command.spawn().expect("start ironvisor-handler");
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("daemon exited with {status}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("daemon did not listen within {WAIT:?}:\n{}", self.log());
    }

    /// The images directory.
    pub fn images_dir(&self) -> PathBuf {
        self.options
            .images_dir
            .clone()
            .unwrap_or_else(|| self.dir.path().join("images"))
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// `kill -9` of the daemon (launchers keep running).
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the daemon again on the same directories.
    pub fn restart(&mut self) {
        self.kill9();
        let _ = std::fs::remove_file(&self.socket);
        self.spawn();
    }

    /// A client connected to the daemon.
    pub async fn client(&self) -> HandlerClient {
        HandlerClient::connect(&self.socket)
            .await
            .expect("connect to the daemon")
    }

    /// Where this daemon's VM cgroups go on this host, cgroup v1 or v2, worked out by the
    /// node agent's own cgroup module.
    pub fn cgroup_layout(&self) -> CgroupLayout {
        CgroupLayout::detect_host(&self.cgroup_parent)
            .unwrap_or_else(|error| panic!("this host's cgroup layout: {error}"))
    }

    /// The parents of this daemon's VM cgroups (one per hierarchy used).
    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        self.cgroup_layout().parents().to_vec()
    }

    /// The cgroup directories of the VM `default/name` (existing or not).
    pub fn vm_cgroups(&self, name: &str) -> Vec<PathBuf> {
        self.cgroup_layout().paths_for(&VmKey::new("default", name))
    }

    /// Processes in the VM cgroup of `default/name` (none when it does not exist).
    pub fn vm_processes(&self, name: &str) -> Vec<i32> {
        cgroup::members(&self.vm_cgroups(name))
            .unwrap_or_else(|error| panic!("listing the processes of VM {name}: {error}"))
    }

    /// Asserts that the VM `default/name` runs in its own cgroup right now, so a later
    /// "no process left" check is known to look in the right place.
    pub fn assert_vm_cgroup_in_use(&self, name: &str) {
        let dirs = self.vm_cgroups(name);
        assert!(
            dirs.iter().all(|dir| dir.is_dir()),
            "VM {name}: cgroups {dirs:?} do not all exist while it runs"
        );
        assert!(
            !self.vm_processes(name).is_empty(),
            "VM {name}: no process in its cgroups {dirs:?} while it runs"
        );
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        // Kill every launcher and monitor this daemon started, then remove the cgroups.
        if let Ok(layout) = CgroupLayout::detect_host(&self.cgroup_parent) {
            for dir in layout.parents() {
                let Ok(entries) = std::fs::read_dir(dir) else {
                    continue;
                };
                let vms: Vec<PathBuf> = entries
                    .flatten()
                    .map(|entry| entry.path())
                    .filter(|path| path.is_dir())
                    .collect();
                let _ = cgroup::kill_all(&vms, Duration::from_secs(2));
                let _ = cgroup::remove(&vms);
                let _ = std::fs::remove_dir(dir);
            }
        }
        if std::thread::panicking() {
            eprintln!("---- daemon log ----\n{}", self.log());
        }
    }
}

/// A reference to `default/name`.
pub fn vm(name: &str) -> ObjectRef {
    ObjectRef::new("default", name)
}

/// Polls `get` until `check` accepts the view; panics with the last view on timeout.
pub async fn wait_for(
    client: &HandlerClient,
    name: &str,
    what: &str,
    check: impl Fn(&VmView) -> bool,
) -> VmView {
    wait_for_within(client, name, what, WAIT, check).await
}

/// [`wait_for`] with a deadline.
pub async fn wait_for_within(
    client: &HandlerClient,
    name: &str,
    what: &str,
    timeout: Duration,
    check: impl Fn(&VmView) -> bool,
) -> VmView {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    while Instant::now() < deadline {
        match client.get(vm(name)).await {
            Ok(view) if check(&view) => return view,
            Ok(view) => last = Some(view),
            Err(error) => eprintln!("get {name}: {error}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let summary = last
        .map(|v| summarize(&v))
        .unwrap_or_else(|| "no view".into());
    panic!("VM {name}: timed out waiting for {what}; last view: {summary}");
}

/// A short description of a view, for failure messages.
pub fn summarize(view: &VmView) -> String {
    let events: Vec<String> = view
        .events
        .iter()
        .map(|e| format!("{} {}: {}", e.r#type, e.reason, e.message))
        .collect();
    format!(
        "status={} phase={} ready={} backend={} vmi_uid={:?}\nevents:\n  {}\nvm: {}",
        view.status,
        view.phase,
        view.ready,
        view.backend,
        vmi_uid(view),
        events.join("\n  "),
        view.vm_json
    )
}

/// The UID of the VM's current instance.
pub fn vmi_uid(view: &VmView) -> Option<String> {
    if view.vmi_json.is_empty() {
        return None;
    }
    let vmi: serde_json::Value = serde_json::from_str(&view.vmi_json).ok()?;
    vmi["metadata"]["uid"].as_str().map(str::to_string)
}

/// The VM object of a view as JSON.
pub fn vm_json(view: &VmView) -> serde_json::Value {
    serde_json::from_str(&view.vm_json).expect("vm_json is JSON")
}

/// The VMI object of a view as JSON (Null when there is none).
pub fn vmi_json(view: &VmView) -> serde_json::Value {
    if view.vmi_json.is_empty() {
        return serde_json::Value::Null;
    }
    serde_json::from_str(&view.vmi_json).expect("vmi_json is JSON")
}

/// The status of a VM condition type, with its reason and message.
pub fn condition(view: &VmView, type_: &str) -> Option<(String, String, String)> {
    let vm = vm_json(view);
    vm["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .map(|c| {
            (
                c["status"].as_str().unwrap_or_default().to_string(),
                c["reason"].as_str().unwrap_or_default().to_string(),
                c["message"].as_str().unwrap_or_default().to_string(),
            )
        })
}

/// A VirtualMachine manifest for the fake launcher: no devices, so no network or disks.
pub fn manifest(name: &str, strategy: &str, kernel_args: &str) -> String {
    let kernel_args = if kernel_args.is_empty() {
        String::new()
    } else {
        format!(
            "        firmware:\n          kernelBoot:\n            kernelArgs: \"{kernel_args}\"\n            container:\n              image: test/kernel:1\n              kernelPath: /boot/vmlinuz\n"
        )
    };
    format!(
        "apiVersion: ironvisor.io/v1alpha1
kind: VirtualMachine
metadata:
  name: {name}
spec:
  runStrategy: {strategy}
  template:
    spec:
      terminationGracePeriodSeconds: 5
      domain:
        devices:
          autoattachPodInterface: false
        memory:
          guest: 64Mi
{kernel_args}"
    )
}

/// Whether the current process may mount and use cgroups (root).
pub fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}
