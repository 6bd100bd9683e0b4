//! Bad input to the launcher binary: each case exits 1 with a message on stderr that
//! names what is wrong and where, and leaves no socket file behind. None of these needs a
//! working KVM: configuration is validated, and the host is checked, before anything is
//! created. (A corrupt kernel or initrd is only found while loading, after the host
//! check; tests/e2e/test_bad_input.py covers it with real KVM inside nested KVM.)

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const LAUNCHER: &str = env!("CARGO_BIN_EXE_ironvisor-launcher");

struct Case {
    dir: tempfile::TempDir,
    kernel: PathBuf,
}

impl Case {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        // Validation only checks that the kernel is a readable file; its contents are
        // examined when it is loaded.
        let kernel = dir.path().join("vmlinux");
        std::fs::write(&kernel, b"\x7fELF kernel placeholder").unwrap();
        Self { dir, kernel }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs the launcher with a console and API socket in the case's directory.
    fn run(&self, args: &[&str], env: &[(&str, &Path)]) -> Output {
        let mut command = Command::new(LAUNCHER);
        command
            .args(["--name", "bad", "--kernel"])
            .arg(&self.kernel)
            .arg("--console-socket")
            .arg(self.path("console.sock"))
            .arg("--api-socket")
            .arg(self.path("api.sock"))
            .args(args);
        for (key, value) in env {
            command.env(key, value);
        }
        command.output().unwrap()
    }

    fn assert_refused(&self, output: &Output, wants: &[&str]) {
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
        for want in wants {
            assert!(stderr.contains(want), "{want:?} not in stderr: {stderr}");
        }
        for socket in ["console.sock", "api.sock"] {
            assert!(
                !self.path(socket).exists(),
                "{socket} left behind; stderr: {stderr}"
            );
        }
    }
}

#[test]
fn a_missing_kernel_initrd_or_disk_is_named() {
    let case = Case::new();
    let missing = case.path("nope");
    let missing = missing.to_str().unwrap();

    let out = Command::new(LAUNCHER)
        .args(["--name", "bad", "--kernel", missing])
        .output()
        .unwrap();
    case.assert_refused(&out, &["kernel.path", missing, "does not exist"]);

    let out = case.run(&["--initrd", missing], &[]);
    case.assert_refused(&out, &["kernel.initrd", missing, "does not exist"]);

    let disk = format!("id=root,path={missing}");
    let out = case.run(&["--disk", &disk], &[]);
    case.assert_refused(&out, &["disks[0].path", missing, "does not exist"]);
}

#[test]
fn impossible_vcpu_counts_and_memory_are_refused() {
    let case = Case::new();
    let out = case.run(&["--vcpus", "0"], &[]);
    case.assert_refused(&out, &["vcpus", "at least 1"]);

    let out = case.run(&["--vcpus", "100000"], &[]);
    case.assert_refused(&out, &["vcpus", "is 100000 but at most"]);

    let out = case.run(&["--memory-mib", "99999999"], &[]);
    case.assert_refused(&out, &["memory_mib", "exceeds the host's available memory"]);
}

#[test]
fn every_problem_is_reported_at_once() {
    let case = Case::new();
    let missing = case.path("nope");
    let disk = format!("id=root,path={}", missing.display());
    let out = case.run(&["--vcpus", "0", "--disk", &disk], &[]);
    case.assert_refused(&out, &["2 problems", "vcpus", "disks[0].path"]);
}

#[test]
fn a_missing_kvm_device_is_refused_with_what_to_do() {
    let case = Case::new();
    let device = case.path("kvm");
    let out = case.run(&[], &[("IRONVISOR_KVM_DEVICE", &device)]);
    case.assert_refused(
        &out,
        &[
            &format!("KVM device {} does not exist", device.display()),
            "software-emulation backend",
        ],
    );
}

/// Only meaningful where /dev/kvm exists but cannot run stock guests (PVM hosts such as
/// the project's machines); where the CPU has vmx or svm the launcher would go on and
/// boot, so scripts/test-all.sh skips it there, saying so.
#[test]
#[ignore = "needs a /dev/kvm without hardware virtualization (a PVM host)"]
fn a_kvm_device_without_hardware_virtualization_is_refused_up_front() {
    ironvisor_prereq::path("/dev/kvm", "the KVM device");
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let hardware = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    if hardware {
        ironvisor_prereq::missing("a host without vmx/svm: this CPU has hardware virtualization");
    }
    let case = Case::new();
    let out = case.run(&[], &[]);
    case.assert_refused(&out, &["cannot run a stock guest", "neither vmx nor svm"]);
}
