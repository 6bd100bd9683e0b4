//! End-to-end tests: real guests booted by `ironvisor-launcher-qemu` under QEMU TCG
//! through libvirt, driven over the console socket, the control API (`ctl`) and signals.
//!
//! Needs root, libvirtd and the guest images, so every test here is `#[ignore]`d with that
//! reason and runs with `--include-ignored` (scripts/test-all.sh). libvirtd is started
//! with `setup-libvirt.sh` when it is not answering; a missing prerequisite fails the test
//! with what is missing. VMs run one at a time: the machine has two cores.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ironvisor-launcher-qemu");
const MARKER: &str = "IRONVISOR-GUEST-INIT-REACHED";
/// Printed by the guest's /init once its Ctrl+Alt+Del trap is installed.
const READY: &str = "IRONVISOR-GUEST-INFO";
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
const EXIT_TIMEOUT: Duration = Duration::from_secs(120);
const URI: &str = "qemu:///system";

/// Serializes the VMs of all tests in this binary.
fn vm_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

struct Images {
    kernel: PathBuf,
    initrd: PathBuf,
}

/// The guest images and a running libvirtd; fails the test when either cannot be had.
fn environment() -> &'static Images {
    static ENV: OnceLock<Images> = OnceLock::new();
    ENV.get_or_init(|| {
        ironvisor_prereq::root();
        if let Err(reason) = ensure_libvirt() {
            ironvisor_prereq::missing(reason);
        }
        Images {
            kernel: ironvisor_prereq::guest_image("vmlinuz"),
            initrd: ironvisor_prereq::guest_image("initrd"),
        }
    })
}

fn libvirt_answers() -> bool {
    Command::new("virsh")
        .args(["-c", URI, "version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn ensure_libvirt() -> Result<(), String> {
    if libvirt_answers() {
        return Ok(());
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("setup-libvirt.sh");
    let output = Command::new("bash")
        .arg(&script)
        .output()
        .map_err(|e| format!("running {}: {e}", script.display()))?;
    if libvirt_answers() {
        Ok(())
    } else {
        Err(format!(
            "libvirtd cannot be started ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

fn domains() -> Vec<String> {
    let out = Command::new("virsh")
        .args(["-c", URI, "list", "--all", "--name"])
        .output()
        .expect("virsh list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

fn virsh(args: &[&str]) -> Output {
    Command::new("virsh")
        .args(["-c", URI])
        .args(args)
        .output()
        .expect("virsh")
}

/// Bytes read from a stream by a background thread.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn spawn_reader(mut source: impl Read + Send + 'static) -> Self {
        let captured = Captured::default();
        let sink = captured.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = source.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.0.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        captured
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// How [`Launcher::spawn_opts`] starts the launcher.
#[derive(Default)]
struct Opts<'a> {
    /// Add `--agent-socket <dir>/agent.sock`.
    agent: bool,
    /// Run the launcher inside this network namespace.
    netns: Option<&'a Netns>,
    /// `IRONVISOR_QEMU_RUNTIME_DIR` for the launcher.
    runtime_dir: Option<&'a Path>,
}

/// A named network namespace (`ip netns add`), deleted on drop, even if the test fails.
struct Netns {
    name: String,
}

impl Netns {
    fn create(name: &str) -> Self {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        run_ok("ip", &["netns", "add", name]);
        let ns = Netns {
            name: name.to_string(),
        };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    fn open(&self) -> std::fs::File {
        std::fs::File::open(Path::new("/run/netns").join(&self.name)).expect("open the netns")
    }

    /// `ip -n NS ARGS`, which must succeed; returns stdout.
    fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run_ok("ip", &all)
    }

    /// Runs `f` on a thread inside the namespace (setns changes only that thread).
    fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let ns = self.open();
        std::thread::spawn(move || {
            // SAFETY: setns on a valid namespace fd; only this thread changes.
            let ret = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(ret, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn run_ok(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().expect(program);
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One launcher process with a console client attached.
struct Launcher {
    name: String,
    child: Child,
    started: Instant,
    dir: tempfile::TempDir,
    stdout: Captured,
    stderr: Captured,
    console: Option<(UnixStream, Captured)>,
    exit: Option<i32>,
}

impl Launcher {
    fn spawn(name: &str, images: &Images, cmdline: &str, extra: &[&str]) -> Self {
        Self::spawn_with(name, images, cmdline, extra, false)
    }

    /// Like [`Launcher::spawn`]; `agent` adds `--agent-socket <dir>/agent.sock`.
    fn spawn_with(name: &str, images: &Images, cmdline: &str, extra: &[&str], agent: bool) -> Self {
        let opts = Opts {
            agent,
            ..Opts::default()
        };
        Self::spawn_opts(name, images, cmdline, extra, &opts)
    }

    fn spawn_opts(name: &str, images: &Images, cmdline: &str, extra: &[&str], opts: &Opts) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let agent_args: Vec<PathBuf> = if opts.agent {
            vec!["--agent-socket".into(), dir.path().join("agent.sock")]
        } else {
            Vec::new()
        };
        let mut command = Command::new(BIN);
        // Join the namespace like the node agent's monitor does: setns(2) only, so the
        // launcher still sees the host's /sys (unlike `ip netns exec`, which remounts it).
        let netns = opts.netns.map(|ns| ns.open());
        if let Some(ns) = &netns {
            let fd = ns.as_raw_fd();
            // SAFETY: setns(2) is async-signal-safe; `fd` stays open until spawn returns.
            unsafe {
                command.pre_exec(move || {
                    if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        if let Some(runtime) = opts.runtime_dir {
            command.env("IRONVISOR_QEMU_RUNTIME_DIR", runtime);
        }
        let mut child = command
            .args(["--name", name, "--cmdline", cmdline, "--memory-mib", "256"])
            .arg("--kernel")
            .arg(&images.kernel)
            .arg("--initrd")
            .arg(&images.initrd)
            .arg("--console-socket")
            .arg(dir.path().join("console.sock"))
            .arg("--api-socket")
            .arg(dir.path().join("api.sock"))
            .args(extra)
            .args(&agent_args)
            .env("IRONVISOR_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn launcher");
        drop(netns);
        let stdout = Captured::spawn_reader(child.stdout.take().unwrap());
        let stderr = Captured::spawn_reader(child.stderr.take().unwrap());
        let mut launcher = Launcher {
            name: name.to_string(),
            child,
            started: Instant::now(),
            dir,
            stdout,
            stderr,
            console: None,
            exit: None,
        };
        launcher.attach_console();
        launcher
    }

    fn attach_console(&mut self) {
        let path = self.dir.path().join("console.sock");
        let deadline = Instant::now() + BOOT_TIMEOUT;
        loop {
            if let Ok(stream) = UnixStream::connect(&path) {
                let output = Captured::spawn_reader(stream.try_clone().unwrap());
                self.console = Some((stream, output));
                return;
            }
            if let Some(code) = self.try_exit() {
                panic!(
                    "launcher exited with {code} before its console socket appeared:\n{}",
                    self.stderr.text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no console socket at {}",
                path.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn console_text(&self) -> String {
        self.console
            .as_ref()
            .map(|(_, out)| out.text())
            .unwrap_or_default()
    }

    fn type_line(&mut self, line: &str) {
        let (stream, _) = self.console.as_mut().expect("console attached");
        stream.write_all(line.as_bytes()).unwrap();
        stream.write_all(b"\r").unwrap();
    }

    /// Waits until the console shows `needle`; returns the time since the launcher started.
    fn wait_console(&mut self, needle: &str) -> Duration {
        let deadline = Instant::now() + BOOT_TIMEOUT;
        loop {
            if self.console_text().contains(needle) {
                return self.started.elapsed();
            }
            if let Some(code) = self.try_exit() {
                panic!(
                    "launcher exited with {code} before the console showed {needle:?}\n\
                     console:\n{}\nlog:\n{}",
                    self.console_text(),
                    self.stderr.text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "console never showed {needle:?}:\n{}",
                self.console_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn try_exit(&mut self) -> Option<i32> {
        if self.exit.is_none() {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.exit = Some(status.code().unwrap_or(-1));
            }
        }
        self.exit
    }

    fn wait_exit(&mut self) -> i32 {
        let deadline = Instant::now() + EXIT_TIMEOUT;
        loop {
            if let Some(code) = self.try_exit() {
                // Let the readers drain what is left.
                std::thread::sleep(Duration::from_millis(100));
                return code;
            }
            assert!(
                Instant::now() < deadline,
                "launcher did not exit; log:\n{}",
                self.stderr.text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn ctl(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("ctl")
            .arg("--api-socket")
            .arg(self.dir.path().join("api.sock"))
            .args(args)
            .env("IRONVISOR_LOG", "warn")
            .output()
            .expect("run ctl")
    }

    fn status(&self) -> serde_json::Value {
        let out = self.ctl(&["status"]);
        assert!(
            out.status.success(),
            "ctl status: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status JSON")
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: plain kill(2) on our own child.
        let ret = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        assert_eq!(ret, 0, "kill({signal})");
    }

    fn domain(&self) -> String {
        format!("ironvisor-{}", self.name)
    }

    fn report(&self) -> String {
        format!(
            "console:\n{}\nlog:\n{}",
            self.console_text(),
            self.stderr.text()
        )
    }
}

impl Drop for Launcher {
    fn drop(&mut self) {
        if self.try_exit().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if domains().contains(&self.domain()) {
            virsh(&["destroy", &self.domain()]);
        }
    }
}

fn assert_no_domain(name: &str) {
    let domain = format!("ironvisor-{name}");
    assert!(
        !domains().contains(&domain),
        "domain {domain} left behind: {:?}",
        domains()
    );
}

#[test]
#[ignore = "needs root, libvirtd (setup-libvirt.sh) and the guest images (python3 images/build.py)"]
fn bench_guest_boots_to_the_marker_powers_off_and_exits_0() {
    let images = environment();
    let _vm = vm_lock();
    let mut vm = Launcher::spawn(
        "tcg-bench",
        images,
        "console=ttyS0 reboot=k panic=1 iv.bench",
        &["--stdio"],
    );
    let boot = vm.wait_console(MARKER);
    let code = vm.wait_exit();
    eprintln!(
        "TCG boot to {MARKER}: {:.2} s (launcher start to marker on the console)",
        boot.as_secs_f64()
    );
    assert_eq!(code, 0, "{}", vm.report());
    assert!(
        vm.console_text().contains("Linux version"),
        "{}",
        vm.report()
    );
    // Foreground mode copies the same console to stdout.
    let stdout = vm.stdout.text();
    assert!(stdout.contains("Linux version"), "{stdout}");
    assert!(stdout.contains(MARKER), "{stdout}");
    let log = vm.stderr.text();
    assert!(
        log.contains("running under software emulation (QEMU TCG): no hardware isolation"),
        "{log}"
    );
    assert!(log.contains("guest powered off"), "{log}");
    assert_no_domain("tcg-bench");
    assert!(
        !vm.dir.path().join("console.sock").exists(),
        "console socket removed"
    );
}

#[test]
#[ignore = "needs root, libvirtd (setup-libvirt.sh) and the guest images (python3 images/build.py)"]
fn api_answers_while_running_and_sigterm_stops_gracefully_with_5() {
    let images = environment();
    let _vm = vm_lock();
    let mut vm = Launcher::spawn(
        "tcg-api",
        images,
        "console=ttyS0 reboot=k panic=1",
        &[
            "--vcpus",
            "2",
            "--vcpu-affinity",
            "0=1",
            "--vcpu-affinity",
            "1=0",
        ],
    );
    vm.wait_console(READY);

    // vcpu_affinity becomes libvirt's <vcpupin>: QEMU's vCPU threads are pinned.
    let pins = virsh(&["vcpupin", &vm.domain()]);
    let pins: Vec<Vec<String>> = String::from_utf8_lossy(&pins.stdout)
        .lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .filter(|cols| cols.len() == 2 && cols[0].parse::<u32>().is_ok())
        .collect();
    assert_eq!(pins, [["0", "1"], ["1", "0"]], "virsh vcpupin");

    let status = vm.status();
    assert_eq!(status["state"], "Running", "{status}");
    assert_eq!(status["backend"], "qemu-tcg");
    assert_eq!(status["vcpus"], 2);
    assert_eq!(status["memory_mib"], 256);
    assert_eq!(status["devices"][0]["kind"], "serial");
    assert_eq!(status["name"], "tcg-api");

    let out = vm.ctl(&["pause"]);
    assert!(
        out.status.success(),
        "pause: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(vm.status()["state"], "Paused");
    let state = virsh(&["domstate", &vm.domain()]);
    assert_eq!(String::from_utf8_lossy(&state.stdout).trim(), "paused");
    // Pausing twice is refused with the state in the message.
    let out = vm.ctl(&["pause"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Paused"),
        "{out:?}"
    );

    let out = vm.ctl(&["resume"]);
    assert!(
        out.status.success(),
        "resume: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(vm.status()["state"], "Running");

    // The guest still runs: the shell answers on the console.
    vm.type_line("echo alive-$((6*7))");
    vm.wait_console("alive-42");

    vm.signal(libc::SIGTERM);
    let code = vm.wait_exit();
    assert_eq!(code, 5, "{}", vm.report());
    assert!(
        vm.console_text()
            .contains("IRONVISOR-GUEST-GRACEFUL-SHUTDOWN"),
        "{}",
        vm.report()
    );
    assert_no_domain("tcg-api");
}

#[test]
#[ignore = "needs root, libvirtd (setup-libvirt.sh) and the guest images (python3 images/build.py)"]
fn forced_shutdown_exits_6_and_leaves_no_domain() {
    let images = environment();
    let _vm = vm_lock();
    let mut vm = Launcher::spawn("tcg-force", images, "console=ttyS0 reboot=k panic=1", &[]);
    vm.wait_console(MARKER);
    let out = vm.ctl(&["shutdown", "--force"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(vm.wait_exit(), 6, "{}", vm.report());
    assert_no_domain("tcg-force");
}

#[test]
#[ignore = "needs root, libvirtd (setup-libvirt.sh) and the guest images (python3 images/build.py)"]
fn guest_reboot_exits_3() {
    let images = environment();
    let _vm = vm_lock();
    let mut vm = Launcher::spawn("tcg-reboot", images, "console=ttyS0 reboot=k panic=1", &[]);
    vm.wait_console(READY);
    vm.type_line("reboot -f");
    assert_eq!(vm.wait_exit(), 3, "{}", vm.report());
    assert!(
        vm.stderr.text().contains("guest rebooted"),
        "{}",
        vm.report()
    );
    assert_no_domain("tcg-reboot");
}

#[test]
#[ignore = "needs root, libvirtd (setup-libvirt.sh) and the guest images (python3 images/build.py)"]
fn graceful_timeout_stops_hard_with_6() {
    let images = environment();
    let _vm = vm_lock();
    let mut vm = Launcher::spawn(
        "tcg-timeout",
        images,
        "console=ttyS0 reboot=k panic=1",
        &["--shutdown-timeout-secs", "2"],
    );
    vm.wait_console(READY);
    // Send the guest's Ctrl+Alt+Del signal to a throwaway process instead of /init, so
    // the guest ignores the graceful request.
    vm.type_line("sleep 600 & echo $! > /proc/sys/kernel/cad_pid; echo cad-moved-$((1+1))");
    vm.wait_console("cad-moved-2");
    vm.signal(libc::SIGTERM);
    let code = vm.wait_exit();
    assert_eq!(code, 6, "{}", vm.report());
    assert!(
        !vm.console_text()
            .contains("IRONVISOR-GUEST-GRACEFUL-SHUTDOWN"),
        "{}",
        vm.report()
    );
    assert!(
        vm.stderr.text().contains("did not shut down in time"),
        "{}",
        vm.report()
    );
    assert_no_domain("tcg-timeout");
}

#[test]
#[ignore = "needs root, libvirtd (setup-libvirt.sh) and the guest images (python3 images/build.py)"]
fn second_launcher_is_refused_and_a_killed_launchers_domain_is_destroyed() {
    let images = environment();
    let _vm = vm_lock();
    let mut first = Launcher::spawn("tcg-stale", images, "console=ttyS0 reboot=k panic=1", &[]);
    first.wait_console(MARKER);

    let out = Command::new(BIN)
        .args(["--name", "tcg-stale", "--cmdline", "console=ttyS0 iv.bench"])
        .arg("--kernel")
        .arg(&images.kernel)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("belongs to the running launcher pid"), "{err}");
    assert!(
        domains().contains(&first.domain()),
        "the first VM must survive"
    );

    // kill -9: libvirt destroys the domain itself once the launcher's connection is gone
    // (the domain is started with AUTODESTROY), so no QEMU outlives its launcher.
    first.signal(libc::SIGKILL);
    first.wait_exit();
    let deadline = Instant::now() + Duration::from_secs(30);
    while domains().contains(&first.domain()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        !domains().contains(&first.domain()),
        "the domain of a killed launcher is still there"
    );
    let mut second = Launcher::spawn(
        "tcg-stale",
        images,
        "console=ttyS0 reboot=k panic=1 iv.bench",
        &[],
    );
    assert_eq!(second.wait_exit(), 0, "{}", second.report());
    assert_no_domain("tcg-stale");
}

/// An extra initramfs archive with the scenarios `(name, script)` (`/scenarios/NAME.sh`),
/// appended to the generic guest initramfs (which loads the virtio-pci modules itself).
fn scenario_overlay(dir: &Path, scenarios: &[(&str, &str)]) -> PathBuf {
    let root = dir.join("overlay");
    std::fs::create_dir_all(root.join("scenarios")).unwrap();
    for (name, script) in scenarios {
        std::fs::write(root.join(format!("scenarios/{name}.sh")), script).unwrap();
    }
    let archive = dir.join("overlay.cpio.gz");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd {} && find . | cpio -o -H newc --quiet | gzip > {}",
            root.display(),
            archive.display()
        ))
        .status()
        .unwrap();
    assert!(status.success());
    let combined = dir.join("initrd-scenarios.cpio.gz");
    let mut bytes = std::fs::read(ironvisor_prereq::guest_image("initrd")).unwrap();
    bytes.extend(std::fs::read(&archive).unwrap());
    std::fs::write(&combined, bytes).unwrap();
    combined
}

#[test]
#[ignore = "needs root, libvirtd (setup-libvirt.sh) and the guest images (python3 images/build.py)"]
fn disks_and_nic_reach_the_guest_over_virtio_pci() {
    let images = environment();
    ironvisor_prereq::tool("qemu-img", "qemu-utils");
    let _vm = vm_lock();
    let work = tempfile::tempdir().unwrap();
    let raw = work.path().join("root.raw");
    let mut content = b"IRONVISOR-RAW".to_vec();
    content.resize(4 << 20, 0);
    std::fs::write(&raw, content).unwrap();
    let qcow = work.path().join("data.qcow2");
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&qcow)
        .arg("8M")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let initrd = scenario_overlay(
        work.path(),
        &[(
            "devices",
            "for d in vda vdb; do\n\
             \techo \"DEV $d serial=$(cat /sys/block/$d/serial) ro=$(cat /sys/block/$d/ro) \
             sectors=$(cat /sys/block/$d/size)\"\n\
             done\n\
             echo \"DATA $(head -c 13 /dev/vda)\"\n\
             echo \"MAC $(cat /sys/class/net/eth0/address)\"\n\
             echo \"RNG $(cat /sys/class/misc/hw_random/rng_current) $(head -c 256 /dev/hwrng | wc -c)\"\n\
             read -r line < /dev/hvc0\n\
             echo \"AGENT got $line\"\n",
        )],
    );
    let overlay = Images {
        kernel: images.kernel.clone(),
        initrd,
    };
    let tap = format!("ivt{}", std::process::id() % 100_000);
    let disk0 = format!("id=root,path={},serial=SER-ROOT", raw.display());
    let disk1 = format!("id=data,path={},ro=on,format=qcow2", qcow.display());
    let net = format!("id=net0,tap={tap},mac=52:54:00:12:34:56");
    let mut vm = Launcher::spawn_with(
        "tcg-devices",
        &overlay,
        "console=ttyS0 reboot=k panic=1 iv.run=devices",
        &[
            "--disk",
            &disk0,
            "--disk",
            &disk1,
            "--net",
            &net,
            "--rng-bytes-per-second",
            "65536",
        ],
        true,
    );
    vm.wait_console(MARKER);
    let status = vm.status();
    let devices = status["devices"].as_array().unwrap();
    let kinds: Vec<&str> = devices
        .iter()
        .map(|d| d["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "serial",
            "virtio-blk",
            "virtio-blk",
            "virtio-net",
            "virtio-console",
            "virtio-rng"
        ]
    );
    assert_eq!(devices[3]["mac"], "52:54:00:12:34:56");
    assert_eq!(devices[3]["backend"], tap.as_str());
    assert_eq!(devices[2]["read_only"], true);
    assert!(
        Path::new("/sys/class/net").join(&tap).exists(),
        "the launcher creates a missing tap"
    );

    // The guest reads one line from its agent console (/dev/hvc0) and echoes it.
    let agent_path = vm.dir.path().join("agent.sock");
    let mut agent = UnixStream::connect(&agent_path).expect("agent socket");
    let deadline = Instant::now() + BOOT_TIMEOUT;
    while !vm.console_text().contains("AGENT got ping") {
        assert!(
            Instant::now() < deadline,
            "agent line never arrived: {}",
            vm.report()
        );
        let _ = agent.write_all(b"ping\n");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(devices[4]["kind"], "virtio-console");

    assert_eq!(vm.wait_exit(), 0, "{}", vm.report());
    assert!(!agent_path.exists(), "agent socket removed on exit");
    let console = vm.console_text();
    assert!(
        console.contains("IRONVISOR-SCENARIO-EXIT=0"),
        "{}",
        vm.report()
    );
    assert!(
        console.contains("DEV vda serial=SER-ROOT ro=0 sectors=8192"),
        "{console}"
    );
    assert!(
        console.contains("DEV vdb serial=data ro=1 sectors=16384"),
        "{console}"
    );
    assert!(console.contains("DATA IRONVISOR-RAW"), "{console}");
    assert!(console.contains("MAC 52:54:00:12:34:56"), "{console}");
    // devices.rng: libvirt's virtio-rng, the guest's hardware RNG, readable.
    assert!(console.contains("RNG virtio_rng.0 256"), "{console}");
    assert!(
        !Path::new("/sys/class/net").join(&tap).exists(),
        "the tap the launcher created is removed on exit"
    );
    assert_no_domain("tcg-devices");
}

/// The guest side of the netns test: configure eth0, ping the tap's address, exchange a
/// TCP line with the listener in the namespace.
const NET_SCENARIO: &str = "\
echo \"MAC $(cat /sys/class/net/eth0/address)\"
ip addr add 10.99.0.2/24 dev eth0
ip link set eth0 up
ok=no
for i in 1 2 3 4 5; do
\tif ping -c 3 -W 2 10.99.0.1 >/tmp/ping.out 2>&1; then ok=yes; break; fi
done
cat /tmp/ping.out
echo \"PING-OK=$ok\"
reply=$(echo guest-hello | nc -w 10 10.99.0.1 5555)
echo \"TCP-REPLY=$reply\"
";

/// Answers one TCP line on 10.99.0.1:5555 inside the namespace: "netns-says-<line>".
fn tcp_echo_in(ns: &Netns) -> std::thread::JoinHandle<Result<String, String>> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = ns.spawn(move || {
        let listener = TcpListener::bind("10.99.0.1:5555").map_err(|e| format!("bind: {e}"));
        let ok = listener.is_ok();
        let _ = ready_tx.send(ok);
        let listener = listener?;
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + BOOT_TIMEOUT;
        let (stream, peer) = loop {
            match listener.accept() {
                Ok(conn) => break conn,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        return Err("no TCP connection from the guest".into());
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(format!("accept: {e}")),
            }
        };
        stream.set_nonblocking(false).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        let mut line = String::new();
        BufReader::new(&stream)
            .read_line(&mut line)
            .map_err(|e| format!("read: {e}"))?;
        (&stream)
            .write_all(format!("netns-says-{}\n", line.trim()).as_bytes())
            .map_err(|e| format!("write: {e}"))?;
        Ok(format!("{peer} sent {}", line.trim()))
    });
    assert_eq!(ready_rx.recv(), Ok(true), "TCP listener in the namespace");
    handle
}

#[test]
#[ignore = "needs root, libvirtd (setup-libvirt.sh) and the guest images (python3 images/build.py)"]
fn tap_inside_a_network_namespace_reaches_the_guest_through_the_relay() {
    let images = environment();
    let _vm = vm_lock();
    let pid = std::process::id() % 100_000;
    let ns = Netns::create(&format!("ivq-e2e{pid}"));
    // What the node agent sets up: a persistent tap inside the VM's namespace, which
    // neither libvirtd nor QEMU (host namespace) can see.
    let tap = format!("ivtap{pid}");
    ns.ip(&["tuntap", "add", "dev", &tap, "mode", "tap"]);
    ns.ip(&["addr", "add", "10.99.0.1/24", "dev", &tap]);
    ns.ip(&["link", "set", &tap, "up"]);
    assert!(!Path::new("/sys/class/net").join(&tap).exists());
    let server = tcp_echo_in(&ns);

    let work = tempfile::tempdir().unwrap();
    let runtime = work.path().join("rt");
    let overlay = Images {
        kernel: images.kernel.clone(),
        initrd: scenario_overlay(work.path(), &[("net", NET_SCENARIO)]),
    };
    let mac = "52:54:00:99:00:02";
    let net = format!("id=net0,tap={tap},mac={mac}");
    let opts = Opts {
        netns: Some(&ns),
        runtime_dir: Some(&runtime),
        ..Opts::default()
    };
    let mut vm = Launcher::spawn_opts(
        "tcg-netns",
        &overlay,
        "console=ttyS0 reboot=k panic=1 iv.run=net",
        &["--net", &net],
        &opts,
    );
    let booted = vm.wait_console(MARKER);
    let status = vm.status();
    let nic = &status["devices"][1];
    assert_eq!(nic["kind"], "virtio-net", "{status}");
    assert_eq!(nic["id"], "net0");
    assert_eq!(nic["mac"], mac);
    assert_eq!(nic["backend"], tap.as_str());

    let code = vm.wait_exit();
    let finished = vm.started.elapsed();
    let served = server.join().unwrap();
    assert_eq!(code, 0, "{}", vm.report());
    let console = vm.console_text();
    assert!(console.contains(&format!("MAC {mac}")), "{}", vm.report());
    assert!(console.contains("PING-OK=yes"), "{}", vm.report());
    assert!(
        console.contains("TCP-REPLY=netns-says-guest-hello"),
        "{}",
        vm.report()
    );
    assert!(
        console.contains("IRONVISOR-SCENARIO-EXIT=0"),
        "{}",
        vm.report()
    );
    let served = served.unwrap_or_else(|e| panic!("{e}\n{}", vm.report()));
    assert!(served.starts_with("10.99.0.2:"), "{served}");
    eprintln!(
        "netns guest: marker after {:.1} s, ping + TCP done after {:.1} s",
        booted.as_secs_f64(),
        finished.as_secs_f64()
    );

    // The existing tap was found inside the namespace (not "created" from the host's
    // sysfs view), used, and left in place; nothing appeared on the host.
    let log = vm.stderr.text();
    assert!(log.contains("attached to the existing tap"), "{log}");
    assert!(!log.contains("created tap"), "{log}");
    assert!(log.contains("frame relay stopped"), "{log}");
    ns.ip(&["link", "show", "dev", &tap]);
    assert!(!Path::new("/sys/class/net").join(&tap).exists());
    assert_no_domain("tcg-netns");
    // The runtime directory (serial and relay sockets) is gone.
    let left: Vec<_> = std::fs::read_dir(&runtime)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "runtime files left: {left:?}");
}
