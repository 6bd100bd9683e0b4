//! Host capability checks: can this host run a hardware-assisted KVM guest?
//!
//! The launcher probes the host once at start-up ([`probe`]) and refuses up front, with
//! a message that says why, when it cannot run a stock guest: no `/dev/kvm`, a device it
//! cannot open, an unexpected KVM API version, or a `/dev/kvm` without hardware
//! virtualization behind it. The last case is the PVM ("Pagetable-based Virtual Machine")
//! flavour of KVM found on some cloud hosts: it opens and creates VMs fine, but runs only
//! PVM-enabled guest kernels; a stock kernel falls into the instruction emulator and
//! dies or crawls, so the launcher must detect it rather than hang.
//!
//! Everything is read from files under a root directory so tests use fake `/proc` and
//! `/sys` trees ([`probe_at`]):
//!
//! - `proc/cpuinfo`: `vendor_id`, the `vmx` (Intel VT-x) / `svm` (AMD-V) and
//!   `hypervisor` flags, and the processor count as a fallback for the online CPUs;
//! - `proc/meminfo`: `MemAvailable` (or `MemFree` on kernels without it);
//! - `sys/module/`: `kvm_pvm`, `kvm_intel`, `kvm_amd`;
//! - `sys/devices/system/cpu/online`: the online CPU list.

use std::ffi::{CString, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use kvm_ioctls::Kvm;
use tracing::{debug, info, info_span, warn};

use crate::config::HostLimits;

/// Environment variable that overrides the KVM device path used by [`probe`].
pub const KVM_DEVICE_ENV: &str = "IRONVISOR_KVM_DEVICE";

/// Where the KVM device lives on a normal host (relative to the probed root).
pub const DEFAULT_KVM_DEVICE: &str = "/dev/kvm";

/// The only KVM API version there has ever been (`KVM_GET_API_VERSION`).
pub const KVM_API_VERSION: i32 = 12;

/// What the host offers for running VMs, as probed at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCaps {
    /// The KVM device the launcher will open.
    pub kvm_device: PathBuf,
    /// `vendor_id` from cpuinfo ("GenuineIntel", "AuthenticAMD", ...).
    pub cpu_vendor: Option<String>,
    /// The hardware virtualization CPU flag: "vmx" (Intel VT-x) or "svm" (AMD-V).
    pub cpu_flags_virt: Option<&'static str>,
    /// The host is itself a guest (`hypervisor` CPU flag): nested virtualization.
    pub running_under_hypervisor: bool,
    /// The `kvm_pvm` module is loaded: `/dev/kvm` is PVM, not hardware-assisted.
    pub pvm: bool,
    /// The hardware KVM module that is loaded: "kvm_intel" or "kvm_amd".
    pub kvm_vendor_module: Option<&'static str>,
    /// Memory available for new workloads (`MemAvailable`), if it could be read.
    pub available_memory_bytes: Option<u64>,
    /// Online host CPUs (at least 1).
    pub online_cpus: u32,
}

/// Why the host cannot run a hardware-assisted KVM guest.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The KVM device does not exist.
    #[error(
        "KVM device {path} does not exist: load kvm_intel or kvm_amd, pass the device into \
         the container, or use the software-emulation backend (qemu-tcg)"
    )]
    NoKvmDevice {
        /// The device path that was checked.
        path: PathBuf,
    },
    /// The KVM device path could not be inspected.
    #[error("cannot inspect KVM device {path}: {source}")]
    InspectDevice {
        /// The device path.
        path: PathBuf,
        /// The `stat` error.
        source: io::Error,
    },
    /// The KVM device exists but could not be opened (permissions, ...).
    #[error("cannot open KVM device {path} read-write: {source}")]
    OpenDevice {
        /// The device path.
        path: PathBuf,
        /// The `open` error.
        source: io::Error,
    },
    /// The path opened but does not answer `KVM_GET_API_VERSION`.
    #[error("{path} is not a KVM device: KVM_GET_API_VERSION failed: {source}")]
    NotKvmDevice {
        /// The device path.
        path: PathBuf,
        /// The `ioctl` error.
        source: io::Error,
    },
    /// The device reports a KVM API version the launcher does not speak.
    #[error("KVM device {path} reports API version {found}; the launcher needs {KVM_API_VERSION}")]
    ApiVersion {
        /// The device path.
        path: PathBuf,
        /// The version it reported.
        found: i32,
    },
    /// `/dev/kvm` exists but cannot run a stock (non-PVM) guest kernel.
    #[error(
        "KVM device {path} cannot run a stock guest: {detail}. Use the software-emulation \
         backend (qemu-tcg) on this host, or run on a host with hardware virtualization"
    )]
    NoHardwareVirtualization {
        /// The device path.
        path: PathBuf,
        /// What is missing, in words.
        detail: String,
    },
}

/// Probes the real host, with the KVM device taken from `IRONVISOR_KVM_DEVICE` if set.
pub fn probe() -> HostCaps {
    HostCaps::probe()
}

/// Probes the host tree under `root` (`/` on a real host); the KVM device is
/// `<root>/dev/kvm`.
pub fn probe_at(root: &Path) -> HostCaps {
    HostCaps::probe_at(root)
}

/// Opens a KVM device and checks its API version.
pub fn open_kvm_device(path: &Path) -> Result<Kvm, HostError> {
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(|_| HostError::OpenDevice {
        path: path.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"),
    })?;
    let kvm = Kvm::new_with_path(&c_path).map_err(|err| {
        let source = io::Error::from_raw_os_error(err.errno());
        if source.kind() == io::ErrorKind::NotFound {
            HostError::NoKvmDevice {
                path: path.to_path_buf(),
            }
        } else {
            HostError::OpenDevice {
                path: path.to_path_buf(),
                source,
            }
        }
    })?;
    let version = kvm.get_api_version();
    if version < 0 {
        // Read errno right away: nothing ran since the ioctl.
        return Err(HostError::NotKvmDevice {
            path: path.to_path_buf(),
            source: io::Error::last_os_error(),
        });
    }
    if version != KVM_API_VERSION {
        return Err(HostError::ApiVersion {
            path: path.to_path_buf(),
            found: version,
        });
    }
    Ok(kvm)
}

impl HostCaps {
    /// Probes the real host, with the KVM device taken from `IRONVISOR_KVM_DEVICE` if set.
    pub fn probe() -> HostCaps {
        let caps = Self::probe_at(Path::new("/"));
        match kvm_device_override(std::env::var_os(KVM_DEVICE_ENV)) {
            Some(device) => caps.with_kvm_device(device),
            None => caps,
        }
    }

    /// Probes the host tree under `root`; the KVM device is `<root>/dev/kvm`.
    pub fn probe_at(root: &Path) -> HostCaps {
        let _span = info_span!("host_probe", root = %root.display()).entered();
        let cpuinfo = read_text(&root.join("proc/cpuinfo"));
        let cpu = cpuinfo.as_deref().map(parse_cpuinfo).unwrap_or_default();
        let meminfo = read_text(&root.join("proc/meminfo"));
        let available_memory_bytes = meminfo.as_deref().and_then(parse_mem_available);
        let modules = root.join("sys/module");
        let module_loaded = |name: &str| modules.join(name).is_dir();
        let kvm_vendor_module = ["kvm_intel", "kvm_amd"]
            .into_iter()
            .find(|m| module_loaded(m));
        let online_cpus = read_text(&root.join("sys/devices/system/cpu/online"))
            .as_deref()
            .and_then(parse_cpu_list)
            .or((cpu.processors > 0).then_some(cpu.processors))
            .unwrap_or_else(|| {
                warn!("cannot determine the number of online CPUs; assuming 1");
                1
            });
        let caps = HostCaps {
            kvm_device: root.join(DEFAULT_KVM_DEVICE.trim_start_matches('/')),
            cpu_vendor: cpu.vendor,
            cpu_flags_virt: cpu.virt_flag,
            running_under_hypervisor: cpu.hypervisor,
            pvm: module_loaded("kvm_pvm"),
            kvm_vendor_module,
            available_memory_bytes,
            online_cpus,
        };
        debug!(?caps, "host probed");
        caps
    }

    /// The same capabilities with another KVM device path.
    pub fn with_kvm_device(mut self, device: impl Into<PathBuf>) -> HostCaps {
        self.kvm_device = device.into();
        self
    }

    /// Checks the CPU side only: hardware virtualization present and not PVM.
    pub fn check_cpu_virtualization(&self) -> Result<(), HostError> {
        let path = || self.kvm_device.clone();
        if self.pvm {
            let flags = match self.cpu_flags_virt {
                Some(flag) => format!("the CPU flags do list {flag}, but KVM is PVM"),
                None => "and the CPU flags list neither vmx nor svm".to_string(),
            };
            return Err(HostError::NoHardwareVirtualization {
                path: path(),
                detail: format!(
                    "the kvm_pvm module is loaded, so it is PVM (paravirtualized KVM), which \
                     runs only PVM-enabled guest kernels, {flags}"
                ),
            });
        }
        if self.cpu_flags_virt.is_none() {
            let vendor = self.cpu_vendor.as_deref().unwrap_or("unknown vendor");
            let nested = if self.running_under_hypervisor {
                " (this host is itself a VM without nested virtualization)"
            } else {
                ""
            };
            return Err(HostError::NoHardwareVirtualization {
                path: path(),
                detail: format!(
                    "the CPU ({vendor}) lacks VT-x/AMD-V: neither vmx nor svm is in the \
                     cpuinfo flags{nested}"
                ),
            });
        }
        Ok(())
    }

    /// Checks that the launcher can run a hardware-assisted guest here: the device exists,
    /// the CPU has VT-x/AMD-V and KVM is not PVM, and the device opens with API version 12.
    pub fn check_hardware_kvm(&self) -> Result<(), HostError> {
        let _span = info_span!("check_hardware_kvm", device = %self.kvm_device.display()).entered();
        match std::fs::metadata(&self.kvm_device) {
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                return Err(HostError::NoKvmDevice {
                    path: self.kvm_device.clone(),
                })
            }
            Err(source) => {
                return Err(HostError::InspectDevice {
                    path: self.kvm_device.clone(),
                    source,
                })
            }
        }
        self.check_cpu_virtualization()?;
        self.open_kvm()?;
        info!(
            flag = self.cpu_flags_virt,
            module = self.kvm_vendor_module,
            nested = self.running_under_hypervisor,
            "hardware-assisted KVM available"
        );
        Ok(())
    }

    /// Opens the KVM device and checks its API version (no CPU checks).
    pub fn open_kvm(&self) -> Result<Kvm, HostError> {
        open_kvm_device(&self.kvm_device)
    }

    /// The limits a launch configuration is validated against. vCPUs may overcommit the
    /// host's CPUs, as with Firecracker and KubeVirt, up to the launcher's own maximum.
    /// Unknown available memory does not limit anything (`u64::MAX`).
    pub fn limits(&self) -> HostLimits {
        HostLimits {
            available_memory_bytes: self.available_memory_bytes.unwrap_or(u64::MAX),
            max_vcpus: crate::config::MAX_VCPUS,
        }
    }
}

/// The KVM device override from the environment variable's value, if set and non-empty.
fn kvm_device_override(value: Option<OsString>) -> Option<PathBuf> {
    value.filter(|v| !v.is_empty()).map(PathBuf::from)
}

fn read_text(path: &Path) -> Option<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(err) => {
            warn!(path = %path.display(), error = %err, "host probe: cannot read");
            None
        }
    }
}

/// What cpuinfo says about the CPUs.
#[derive(Debug, Default, PartialEq, Eq)]
struct CpuInfo {
    vendor: Option<String>,
    virt_flag: Option<&'static str>,
    hypervisor: bool,
    processors: u32,
}

/// Parses `/proc/cpuinfo`; flags come from the first CPU (all CPUs share them).
fn parse_cpuinfo(text: &str) -> CpuInfo {
    let mut info = CpuInfo::default();
    let mut seen_flags = false;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        match key.trim() {
            "processor" => info.processors += 1,
            "vendor_id" if info.vendor.is_none() => info.vendor = Some(value.trim().to_string()),
            "flags" if !seen_flags => {
                seen_flags = true;
                for flag in value.split_whitespace() {
                    match flag {
                        "vmx" => info.virt_flag = Some("vmx"),
                        "svm" => info.virt_flag = Some("svm"),
                        "hypervisor" => info.hypervisor = true,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    info
}

/// `MemAvailable` in bytes, or `MemFree` on kernels that lack it.
fn parse_mem_available(text: &str) -> Option<u64> {
    let field = |name: &str| {
        text.lines().find_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix(':')?;
            let mut parts = rest.split_whitespace();
            let value: u64 = parts.next()?.parse().ok()?;
            match parts.next() {
                Some("kB") => value.checked_mul(1024),
                None => Some(value),
                Some(_) => None,
            }
        })
    };
    field("MemAvailable").or_else(|| field("MemFree"))
}

/// Counts the CPUs in a kernel CPU list such as "0-3,6,8-9".
fn parse_cpu_list(text: &str) -> Option<u32> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    let mut count: u32 = 0;
    for part in text.split(',') {
        let n = match part.split_once('-') {
            Some((first, last)) => {
                let first: u32 = first.trim().parse().ok()?;
                let last: u32 = last.trim().parse().ok()?;
                last.checked_sub(first)?.checked_add(1)?
            }
            None => {
                part.trim().parse::<u32>().ok()?;
                1
            }
        };
        count = count.checked_add(n)?;
    }
    (count > 0).then_some(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTEL_CPUINFO: &str = "processor\t: 0\nvendor_id\t: GenuineIntel\n\
        flags\t\t: fpu vme de pse msr pae vmx ept lahf_lm\n\n\
        processor\t: 1\nvendor_id\t: GenuineIntel\n\
        flags\t\t: fpu vme de pse msr pae vmx ept lahf_lm\n";
    const AMD_CPUINFO: &str = "processor\t: 0\nvendor_id\t: AuthenticAMD\n\
        flags\t\t: fpu vme de pse svm npt hypervisor\n";
    const PVM_CPUINFO: &str = "processor\t: 0\nvendor_id\t: GenuineIntel\n\
        flags\t\t: fpu vme de pse msr pae hypervisor lahf_lm\n\n\
        processor\t: 1\nvendor_id\t: GenuineIntel\n\
        flags\t\t: fpu vme de pse msr pae hypervisor lahf_lm\n";
    const MEMINFO: &str = "MemTotal:       24576000 kB\nMemFree:         1000000 kB\n\
        MemAvailable:   20000000 kB\nBuffers:          100000 kB\n";

    /// A fake host root: /proc and /sys files written by the test.
    struct FakeHost {
        dir: tempfile::TempDir,
    }

    impl FakeHost {
        fn new(cpuinfo: &str, modules: &[&str], online: Option<&str>) -> FakeHost {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path();
            std::fs::create_dir_all(root.join("proc")).unwrap();
            std::fs::write(root.join("proc/cpuinfo"), cpuinfo).unwrap();
            std::fs::write(root.join("proc/meminfo"), MEMINFO).unwrap();
            for module in modules {
                std::fs::create_dir_all(root.join("sys/module").join(module)).unwrap();
            }
            if let Some(online) = online {
                let cpu = root.join("sys/devices/system/cpu");
                std::fs::create_dir_all(&cpu).unwrap();
                std::fs::write(cpu.join("online"), online).unwrap();
            }
            FakeHost { dir }
        }

        fn root(&self) -> &Path {
            self.dir.path()
        }

        /// Puts a regular file where the KVM device is expected.
        fn with_fake_device(self) -> FakeHost {
            std::fs::create_dir_all(self.root().join("dev")).unwrap();
            std::fs::write(self.root().join("dev/kvm"), b"").unwrap();
            self
        }
    }

    #[test]
    fn intel_host() {
        let host = FakeHost::new(INTEL_CPUINFO, &["kvm", "kvm_intel"], Some("0-3\n"));
        let caps = probe_at(host.root());
        assert_eq!(caps.kvm_device, host.root().join("dev/kvm"));
        assert_eq!(caps.cpu_vendor.as_deref(), Some("GenuineIntel"));
        assert_eq!(caps.cpu_flags_virt, Some("vmx"));
        assert!(!caps.pvm);
        assert!(!caps.running_under_hypervisor);
        assert_eq!(caps.kvm_vendor_module, Some("kvm_intel"));
        assert_eq!(caps.available_memory_bytes, Some(20_000_000 * 1024));
        assert_eq!(caps.online_cpus, 4);
        caps.check_cpu_virtualization().unwrap();
        let limits = caps.limits();
        assert_eq!(limits.available_memory_bytes, 20_000_000 * 1024);
        assert_eq!(limits.max_vcpus, crate::config::MAX_VCPUS);
    }

    #[test]
    fn amd_host_nested() {
        let host = FakeHost::new(AMD_CPUINFO, &["kvm", "kvm_amd"], None);
        let caps = probe_at(host.root());
        assert_eq!(caps.cpu_vendor.as_deref(), Some("AuthenticAMD"));
        assert_eq!(caps.cpu_flags_virt, Some("svm"));
        assert!(caps.running_under_hypervisor);
        assert_eq!(caps.kvm_vendor_module, Some("kvm_amd"));
        // No sys/devices/system/cpu/online: counted from cpuinfo.
        assert_eq!(caps.online_cpus, 1);
        caps.check_cpu_virtualization().unwrap();
    }

    #[test]
    fn pvm_host_is_refused_with_a_clear_message() {
        let host = FakeHost::new(PVM_CPUINFO, &["kvm", "kvm_pvm"], Some("0-1")).with_fake_device();
        let caps = probe_at(host.root());
        assert!(caps.pvm);
        assert_eq!(caps.cpu_flags_virt, None);
        assert_eq!(caps.kvm_vendor_module, None);
        let err = caps.check_hardware_kvm().unwrap_err();
        assert!(
            matches!(err, HostError::NoHardwareVirtualization { .. }),
            "{err:?}"
        );
        let text = err.to_string();
        for needle in [
            "PVM",
            "paravirtualized",
            "stock guest",
            "software-emulation",
            "dev/kvm",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from: {text}");
        }
    }

    #[test]
    fn pvm_module_wins_over_cpu_flags() {
        let host = FakeHost::new(INTEL_CPUINFO, &["kvm", "kvm_pvm"], None).with_fake_device();
        let err = probe_at(host.root()).check_hardware_kvm().unwrap_err();
        assert!(
            matches!(err, HostError::NoHardwareVirtualization { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("do list vmx"), "{err}");
    }

    #[test]
    fn no_virtualization_flags_is_refused() {
        let host = FakeHost::new(PVM_CPUINFO, &["kvm"], None).with_fake_device();
        let err = probe_at(host.root()).check_hardware_kvm().unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, HostError::NoHardwareVirtualization { .. }),
            "{err:?}"
        );
        assert!(
            text.contains("VT-x/AMD-V") && text.contains("GenuineIntel"),
            "{text}"
        );
        assert!(text.contains("itself a VM"), "{text}");
    }

    #[test]
    fn missing_device_is_no_kvm_device() {
        let host = FakeHost::new(INTEL_CPUINFO, &["kvm", "kvm_intel"], None);
        let caps = probe_at(host.root());
        let err = caps.check_hardware_kvm().unwrap_err();
        assert!(
            matches!(&err, HostError::NoKvmDevice { path } if *path == host.root().join("dev/kvm")),
            "{err:?}"
        );
        let err = open_kvm_device(&host.root().join("dev/kvm")).unwrap_err();
        assert!(matches!(err, HostError::NoKvmDevice { .. }), "{err:?}");
    }

    #[test]
    fn unopenable_device_reports_the_os_error() {
        let host = FakeHost::new(INTEL_CPUINFO, &["kvm_intel"], None);
        // A directory cannot be opened read-write: EISDIR.
        let caps = probe_at(host.root()).with_kvm_device(host.root().join("proc"));
        let err = caps.check_hardware_kvm().unwrap_err();
        match &err {
            HostError::OpenDevice { source, .. } => {
                assert_eq!(source.raw_os_error(), Some(libc::EISDIR))
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(err.to_string().contains("cannot open KVM device"), "{err}");
    }

    #[test]
    fn non_kvm_file_fails_the_api_version_check() {
        let host = FakeHost::new(INTEL_CPUINFO, &["kvm_intel"], None).with_fake_device();
        let err = probe_at(host.root()).check_hardware_kvm().unwrap_err();
        match &err {
            HostError::NotKvmDevice { source, .. } => {
                assert_eq!(source.raw_os_error(), Some(libc::ENOTTY))
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    #[ignore = "needs /dev/kvm"]
    fn real_kvm_device_speaks_api_12() {
        let device = ironvisor_prereq::path(DEFAULT_KVM_DEVICE, "the KVM device (kvm module)");
        let device = device.as_path();
        let kvm = open_kvm_device(device).unwrap();
        assert_eq!(kvm.get_api_version(), KVM_API_VERSION);
    }

    #[test]
    fn real_host_probe_is_consistent() {
        let caps = probe();
        assert!(caps.online_cpus >= 1);
        assert!(caps.available_memory_bytes.is_some_and(|m| m > 0));
        if caps.pvm && caps.kvm_device.exists() {
            let err = caps.check_hardware_kvm().unwrap_err();
            assert!(
                matches!(err, HostError::NoHardwareVirtualization { .. }),
                "{err:?}"
            );
        }
    }

    #[test]
    fn device_override_from_environment_value() {
        assert_eq!(kvm_device_override(None), None);
        assert_eq!(kvm_device_override(Some(OsString::new())), None);
        assert_eq!(
            kvm_device_override(Some(OsString::from("/tmp/kvm"))),
            Some(PathBuf::from("/tmp/kvm"))
        );
    }

    #[test]
    fn unreadable_files_degrade_gracefully() {
        let dir = tempfile::tempdir().unwrap();
        let caps = probe_at(dir.path());
        assert_eq!(caps.cpu_flags_virt, None);
        assert_eq!(caps.available_memory_bytes, None);
        assert_eq!(caps.online_cpus, 1);
        assert_eq!(caps.limits().available_memory_bytes, u64::MAX);
    }

    #[test]
    fn parsers() {
        assert_eq!(parse_cpu_list("0-1\n"), Some(2));
        assert_eq!(parse_cpu_list("0-3,6,8-9"), Some(7));
        assert_eq!(parse_cpu_list("0"), Some(1));
        assert_eq!(parse_cpu_list(""), None);
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("x"), None);
        assert_eq!(parse_mem_available("MemFree: 10 kB\n"), Some(10 * 1024));
        assert_eq!(
            parse_mem_available("MemAvailable: 7 kB\nMemFree: 10 kB\n"),
            Some(7 * 1024)
        );
        assert_eq!(parse_mem_available("MemTotal: 7 kB\n"), None);
        let info = parse_cpuinfo(AMD_CPUINFO);
        assert_eq!(info.processors, 1);
        assert_eq!(info.virt_flag, Some("svm"));
    }
}
