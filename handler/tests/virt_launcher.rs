//! `ironvisor-handler virt-launcher` as a real process on a directory laid out the way
//! the launcher pod is (`vmi/vmi.json`, `container-disks/<volume>/<file>`,
//! `kernel/{kernel,initrd}`, `sockets/`, a termination log):
//!
//! - with the fake launcher (`tests/support/fake_launcher.rs`) as the KVM launcher: the
//!   launcher configuration, readiness, SIGTERM forwarding, exit codes and termination
//!   messages, refusals before anything starts;
//! - with the real `ironvisor-launcher-qemu` (QEMU TCG through libvirt) and the project's
//!   guest images: the boot on stdout, readiness, a graceful stop on SIGTERM. Ignored by
//!   default (needs root, libvirtd, the launcher and `python3 images/build.py`); run it
//!   with `cargo test -p ironvisor-handler --test virt_launcher -- --ignored`, where a
//!   missing prerequisite fails the test with what is missing.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

const HANDLER: &str = env!("CARGO_BIN_EXE_ironvisor-handler");
const VMI_UID: &str = "6a1c0f3e-1111-4222-8333-944455556666";
/// The interface's MAC in the instance (as the controller's defaults would leave a
/// generated one, a fixed one keeps the test independent of the generator).
const MAC: &str = "52:54:00:12:34:56";

/// A pod's directories in a temporary directory.
struct PodDir {
    dir: tempfile::TempDir,
}

impl PodDir {
    fn new(vmi: &Value) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        for sub in ["vmi", "container-disks/rootdisk", "kernel", "sockets"] {
            std::fs::create_dir_all(dir.path().join(sub)).expect("pod dirs");
        }
        let pod = Self { dir };
        pod.write_vmi(&vmi.to_string());
        std::fs::write(pod.path("termination-log"), b"").expect("termination log");
        pod
    }

    /// Plays the node agent: the wiring of the instance's interface, as
    /// `ironvisor_net::wire_pod` leaves it in the run directory (nothing is made on the
    /// host: the fake launcher opens no tap).
    fn wire_network(&self) {
        let network = json!({
            "vm_key": "default/small",
            "vm_uid": VMI_UID,
            "interface": "default",
            "binding": "masquerade",
            "netns_name": "iv-0000000000",
            "netns_path": "/var/run/netns/iv-0000000000",
            "tap": "tap0",
            "pod_ip": "10.244.0.7",
            "pod_gateway": "10.244.0.1",
            "pod_prefix_len": 24,
            "guest_ip": "10.0.2.2",
            "gateway": "10.0.2.1",
            "prefix_len": 24,
            "mac": MAC,
            "mtu": 1500,
            "dns_servers": []
        });
        std::fs::write(self.path("sockets/network.json"), network.to_string())
            .expect("network.json");
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    fn write_vmi(&self, text: &str) {
        std::fs::write(self.path("vmi/vmi.json"), text).expect("vmi.json");
    }

    /// Fake kernel files and a small raw root disk, and the node agent's wiring.
    fn fake_images(&self) {
        self.wire_network();
        std::fs::write(self.path("kernel/kernel"), b"kernel").unwrap();
        std::fs::write(self.path("kernel/initrd"), b"initrd").unwrap();
        std::fs::write(self.path("container-disks/rootdisk/disk.img"), [0u8; 4096]).unwrap();
    }

    fn termination(&self) -> Value {
        let text = std::fs::read_to_string(self.path("termination-log")).unwrap();
        assert!(text.len() <= 4096, "termination message too long: {text}");
        assert!(!text.contains('\n'), "not one line: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"))
    }

    fn launch_config(&self) -> Value {
        let text = std::fs::read_to_string(self.path("sockets/launcher.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }
}

/// The instance as the controller's downward-API file carries it.
fn vmi(kernel_args: &str) -> Value {
    json!({
        "apiVersion": "ironvisor.io/v1alpha1",
        "kind": "VirtualMachineInstance",
        "metadata": {"name": "small", "namespace": "default", "uid": VMI_UID},
        "spec": {
            "domain": {
                "cpu": {"cores": 1, "sockets": 1, "threads": 1},
                "memory": {"guest": "256Mi"},
                "firmware": {"kernelBoot": {
                    "kernelArgs": kernel_args,
                    "container": {
                        "image": "ironvisor/guest-kernel:debian-6.1",
                        "kernelPath": "/boot/vmlinuz",
                        "initrdPath": "/boot/initrd.img"
                    }
                }},
                "devices": {
                    "disks": [
                        {"name": "rootdisk", "disk": {"bus": "virtio"}},
                        {"name": "scratch", "disk": {"bus": "virtio"}},
                        {"name": "cloudinitdisk", "disk": {"bus": "virtio"}}
                    ],
                    "interfaces": [{"name": "default", "masquerade": {}, "macAddress": MAC}]
                }
            },
            "networks": [{"name": "default", "pod": {}}],
            "terminationGracePeriodSeconds": 7,
            "volumes": [
                {"name": "rootdisk", "containerDisk": {"image": "ironvisor/rootfs:busybox"}},
                {"name": "scratch", "emptyDisk": {"capacity": "1Mi"}},
                {"name": "cloudinitdisk", "cloudInitNoCloud": {"userData": "#cloud-config\nhostname: small\n"}}
            ]
        }
    })
}

/// A running `virt-launcher` with its output collected.
struct VirtLauncher {
    child: Child,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    status: Option<ExitStatus>,
}

fn collect(mut from: impl Read + Send + 'static, echo: bool) -> Arc<Mutex<Vec<u8>>> {
    let buffer = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&buffer);
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = from.read(&mut chunk) {
            if n == 0 {
                break;
            }
            if echo {
                eprint!("{}", String::from_utf8_lossy(&chunk[..n]));
            }
            sink.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    buffer
}

impl VirtLauncher {
    fn start(pod: &PodDir, backend: &str, launcher: &Path, launcher_qemu: &Path) -> Self {
        Self::start_with(pod, backend, launcher, launcher_qemu, &[])
    }

    fn start_with(
        pod: &PodDir,
        backend: &str,
        launcher: &Path,
        launcher_qemu: &Path,
        extra: &[&str],
    ) -> Self {
        let mut child = Command::new(HANDLER)
            .arg("virt-launcher")
            .arg("--vmi")
            .arg(pod.path("vmi/vmi.json"))
            .arg("--container-disks")
            .arg(pod.path("container-disks"))
            .arg("--kernel-dir")
            .arg(pod.path("kernel"))
            .arg("--run-dir")
            .arg(pod.path("sockets"))
            .arg("--launcher")
            .arg(launcher)
            .arg("--launcher-qemu")
            .arg(launcher_qemu)
            .arg("--backend")
            .arg(backend)
            .arg("--termination-log")
            .arg(pod.path("termination-log"))
            .args(extra)
            .env_remove("IRONVISOR_BACKEND")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start virt-launcher");
        let stdout = collect(child.stdout.take().unwrap(), false);
        let stderr = collect(child.stderr.take().unwrap(), true);
        Self {
            child,
            stdout,
            stderr,
            status: None,
        }
    }

    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).expect("signal virt-launcher");
    }

    fn wait_stdout(&mut self, needle: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.stdout().contains(needle) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "virt-launcher exited ({status}) before {needle:?}:\n{}",
                    self.stdout()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} on stdout within {within:?}:\n{}",
                self.stdout()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_ready(&mut self, pod: &PodDir, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let (ok, line, took) = ready(pod);
            assert!(
                took < Duration::from_millis(1500),
                "readiness took {took:?}"
            );
            if ok {
                return line;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("virt-launcher exited ({status}) before it was ready: {line}");
            }
            assert!(
                Instant::now() < deadline,
                "not ready within {within:?}: {line}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                self.status = Some(status);
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "virt-launcher still runs after {within:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for VirtLauncher {
    fn drop(&mut self) {
        if self.status.is_some() || matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        // A failed test: stop it the way Kubernetes would, SIGTERM then SIGKILL.
        self.signal(Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the readiness probe: (ready, its one line, how long it took).
fn ready(pod: &PodDir) -> (bool, String, Duration) {
    let started = Instant::now();
    let output = Command::new(HANDLER)
        .arg("virt-launcher-ready")
        .arg("--run-dir")
        .arg(pod.path("sockets"))
        .output()
        .expect("run virt-launcher-ready");
    let took = started.elapsed();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text.trim().to_string(), took)
}

/// Runs `virt-launcher` on the fake launcher until it exits by itself.
fn run_to_exit(pod: &PodDir, backend: &str) -> (ExitStatus, VirtLauncher) {
    let fake = common::fake_launcher();
    let mut run = VirtLauncher::start(pod, backend, &fake, &fake);
    let status = run.wait_exit(Duration::from_secs(30));
    (status, run)
}

#[test]
fn fake_launcher_runs_is_ready_and_stops_gracefully_on_sigterm() {
    let pod = PodDir::new(&vmi("root=/dev/vda rw fake.boot_ms=300"));
    pod.fake_images();
    let fake = common::fake_launcher();
    let mut run = VirtLauncher::start(&pod, "kvm", &fake, Path::new("/nonexistent/qemu"));
    let (ok, line, _) = ready(&pod);
    assert!(!ok, "ready before the launcher started: {line}");
    let line = run.wait_ready(&pod, Duration::from_secs(20));
    assert!(line.starts_with("ready: VM small running"), "{line}");
    run.wait_stdout(
        "fake-launcher: VM small with 1 vCPUs, 256 MiB",
        Duration::from_secs(5),
    );

    // The configuration: sockets in the run dir, console also on stdout, the NIC, the
    // disks in order with the containerDisk used in place, the grace period.
    let config = pod.launch_config();
    let sockets = pod.path("sockets");
    assert_eq!(config["console"]["stdio"], true);
    assert_eq!(
        config["console"]["socket"],
        sockets.join("console.sock").display().to_string()
    );
    assert_eq!(
        config["api_socket"],
        sockets.join("api.sock").display().to_string()
    );
    // The NIC is the tap the node agent wired, with the instance's MAC.
    assert_eq!(
        config["nets"],
        json!([{"id": "default", "tap": "tap0", "mac": MAC}])
    );
    assert_eq!(config["shutdown_timeout_secs"], 7);
    assert_eq!(
        config["kernel"]["cmdline"],
        "console=ttyS0 reboot=k panic=1 root=/dev/vda rw fake.boot_ms=300"
    );
    assert_eq!(
        config["kernel"]["path"],
        pod.path("kernel/kernel").display().to_string()
    );
    let disks = config["disks"].as_array().unwrap();
    let ids: Vec<&str> = disks.iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["rootdisk", "scratch", "cloudinitdisk"]);
    assert_eq!(
        disks[0]["path"],
        pod.path("container-disks/rootdisk/disk.img")
            .display()
            .to_string()
    );
    assert_eq!(disks[0]["format"], "raw");
    for disk in &disks[1..] {
        assert!(disk["path"]
            .as_str()
            .unwrap()
            .starts_with(&sockets.display().to_string()));
    }

    // Pod deletion: SIGTERM is forwarded, the guest stops gracefully (exit 5).
    run.signal(Signal::SIGTERM);
    let status = run.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(5), "{}", run.stderr());
    let message = pod.termination();
    assert_eq!(message["exitCode"], 5);
    assert_eq!(message["reason"], "Stopped");
    assert!(
        message["message"]
            .as_str()
            .unwrap()
            .starts_with("VM default/small: stopped gracefully"),
        "{message}"
    );
    let status_file = std::fs::read_to_string(pod.path("sockets/status.json")).unwrap();
    assert_eq!(status_file, r#"{"code":5}"#);
    let (ok, line, _) = ready(&pod);
    assert!(!ok && line.starts_with("not ready: "), "{line}");
}

#[test]
fn guest_endings_become_exit_codes_and_reasons() {
    for (args, code, reason) in [
        ("fake.exit=4 fake.after_ms=100", 4, "GuestCrashed"),
        ("fake.exit=0 fake.after_ms=100", 0, "GuestPoweredOff"),
        ("fake.exit=3 fake.after_ms=100", 3, "GuestRebooted"),
    ] {
        let pod = PodDir::new(&vmi(args));
        pod.fake_images();
        let (status, run) = run_to_exit(&pod, "kvm");
        assert_eq!(status.code(), Some(code), "{args}: {}", run.stderr());
        let message = pod.termination();
        assert_eq!(
            (message["exitCode"].as_i64(), message["reason"].as_str()),
            (Some(code.into()), Some(reason))
        );
    }
}

#[test]
fn a_launcher_error_carries_the_launchers_message() {
    let pod = PodDir::new(&vmi("fake.mode=fail"));
    pod.fake_images();
    let (status, run) = run_to_exit(&pod, "kvm");
    assert_eq!(status.code(), Some(1), "{}", run.stderr());
    let message = pod.termination();
    assert_eq!(message["reason"], "LauncherError");
    assert!(
        message["message"]
            .as_str()
            .unwrap()
            .contains("fake-launcher: error: VM small failed to build (fake.mode=fail)"),
        "{message}"
    );
}

#[test]
fn without_the_node_agents_wiring_the_guest_does_not_start() {
    let pod = PodDir::new(&vmi(""));
    pod.fake_images();
    std::fs::remove_file(pod.path("sockets/network.json")).unwrap();
    let fake = common::fake_launcher();
    let mut run = VirtLauncher::start_with(
        &pod,
        "kvm",
        &fake,
        Path::new("/nonexistent/qemu"),
        &["--network-wait-secs", "1"],
    );
    let status = run.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(1), "{}", run.stderr());
    let message = pod.termination();
    assert_eq!(message["reason"], "NetworkNotWired");
    let text = message["message"].as_str().unwrap();
    assert!(
        text.contains("interface default") && text.contains("network.json"),
        "{message}"
    );
    assert!(!pod.path("sockets/launcher.json").exists());
}

#[test]
fn bad_instance_files_are_refused_naming_the_file() {
    let pod = PodDir::new(&vmi(""));
    pod.fake_images();
    let mut bad = vmi("");
    bad["spec"]["domain"]["nmae"] = json!(1);
    pod.write_vmi(&bad.to_string());
    let (status, _run) = run_to_exit(&pod, "kvm");
    assert_eq!(status.code(), Some(1));
    let message = pod.termination();
    assert_eq!(message["reason"], "BadSpec");
    let text = message["message"].as_str().unwrap();
    assert!(
        text.contains(&pod.path("vmi/vmi.json").display().to_string())
            && text.contains("spec.domain.nmae"),
        "{message}"
    );
    assert!(!pod.path("sockets/launcher.json").exists());
}

#[test]
fn required_hardware_isolation_without_kvm_is_refused() {
    let mut spec = vmi("");
    spec["spec"]["domain"]["features"] = json!({"hardwareIsolation": "Required"});
    let pod = PodDir::new(&spec);
    pod.fake_images();
    let (status, _run) = run_to_exit(&pod, "qemu-tcg");
    assert_eq!(status.code(), Some(1));
    let message = pod.termination();
    assert_eq!(message["reason"], "HardwareIsolationUnavailable");
    assert!(
        message["message"]
            .as_str()
            .unwrap()
            .contains("hardware isolation is Required"),
        "{message}"
    );
}

#[test]
fn missing_pod_files_are_named() {
    let pod = PodDir::new(&vmi(""));
    // No kernel copied.
    let (status, _run) = run_to_exit(&pod, "kvm");
    assert_eq!(status.code(), Some(1));
    let message = pod.termination();
    assert_eq!(message["reason"], "KernelNotFound");
    assert!(
        message["message"]
            .as_str()
            .unwrap()
            .contains(&pod.path("kernel/kernel").display().to_string()),
        "{message}"
    );

    pod.fake_images();
    std::fs::write(
        pod.path("container-disks/rootdisk/second.qcow2"),
        b"QFI\xfb",
    )
    .unwrap();
    let (status, _run) = run_to_exit(&pod, "kvm");
    assert_eq!(status.code(), Some(1));
    let message = pod.termination();
    assert_eq!(message["reason"], "ContainerDiskUnusable");
    assert!(
        message["message"]
            .as_str()
            .unwrap()
            .contains("holds 2 files (disk.img, second.qcow2)"),
        "{message}"
    );
}

// ---- the real software-emulation launcher -------------------------------------------

#[test]
#[ignore = "needs root, a running libvirtd, ironvisor-launcher-qemu (cargo build -p \
            ironvisor-launcher-qemu) and the guest images (python3 images/build.py)"]
fn the_guest_boots_under_qemu_tcg_and_stops_on_sigterm() {
    ironvisor_prereq::root();
    ironvisor_prereq::libvirtd();
    let launcher =
        ironvisor_prereq::workspace_binary("ironvisor-launcher-qemu", "IRONVISOR_LAUNCHER_QEMU");
    let (kernel, initrd, rootfs) = (
        ironvisor_prereq::guest_image("vmlinuz"),
        ironvisor_prereq::guest_image("initrd"),
        ironvisor_prereq::guest_image("rootfs"),
    );

    let mut spec = vmi("root=/dev/vda rw");
    spec["spec"]["terminationGracePeriodSeconds"] = json!(60);
    // No NIC: a real tap needs the node agent's wiring in a pod network namespace (the
    // cluster e2e tests cover that).
    spec["spec"]["domain"]["devices"]["interfaces"] = json!([]);
    spec["spec"]["domain"]["devices"]["autoattachPodInterface"] = json!(false);
    spec["spec"]["networks"] = json!([]);
    let pod = PodDir::new(&spec);
    std::fs::copy(&kernel, pod.path("kernel/kernel")).unwrap();
    std::fs::copy(&initrd, pod.path("kernel/initrd")).unwrap();
    std::fs::copy(&rootfs, pod.path("container-disks/rootdisk/rootfs.ext4")).unwrap();

    let mut run = VirtLauncher::start(&pod, "qemu-tcg", Path::new("/nonexistent/kvm"), &launcher);
    // The boot goes to stdout (`kubectl logs POD -c compute`).
    run.wait_stdout("Linux version", Duration::from_secs(120));
    run.wait_stdout("IRONVISOR-GUEST-INIT-REACHED", Duration::from_secs(240));
    let line = run.wait_ready(&pod, Duration::from_secs(30));
    assert!(line.contains("running on qemu-tcg"), "{line}");

    run.signal(Signal::SIGTERM);
    let status = run.wait_exit(Duration::from_secs(120));
    eprintln!("guest console on stdout:\n{}", run.stdout());
    assert!(
        run.stdout().contains("IRONVISOR-GUEST-GRACEFUL-SHUTDOWN"),
        "{}",
        run.stdout()
    );
    assert_eq!(status.code(), Some(5), "{}", run.stderr());
    let message = pod.termination();
    assert_eq!(message["exitCode"], 5);
    assert_eq!(message["reason"], "Stopped");
    assert!(
        !pod.path("sockets/api.sock").exists(),
        "the launcher removes its sockets"
    );
}
