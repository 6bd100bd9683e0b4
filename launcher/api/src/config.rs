//! The launcher's one typed configuration: read from a JSON file or built from flags,
//! validated before anything is created.
//!
//! - [`LaunchConfig::from_json_file`] reads the JSON form (unknown fields are refused).
//! - [`LaunchArgs`] is the command line: either `--config FILE` or one flag per field.
//! - [`LaunchConfig::validate`] checks everything that can be checked before the VM is
//!   built, against the host's [`HostLimits`], and reports every problem at once.
//! - [`SystemIdentity`] (module `system`): the SMBIOS system UUID and serial number.
//! - [`RngConfig`] (module `rng`): the rate-limited virtio-rng entropy device.

use std::collections::HashMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use clap::Parser;
use ironvisor_arch::layout::{CMDLINE_MAX_SIZE, IOAPIC_PINS, VIRTIO_FIRST_GSI};
use serde::{Deserialize, Serialize};

use crate::cpulist;

mod rng;
pub use rng::{RngConfig, DEFAULT_RNG_BYTES_PER_SECOND, MAX_RNG_BYTES_PER_SECOND};

mod system;
pub use system::{
    SystemIdentity, MAX_SYSTEM_SERIAL_BYTES, SYSTEM_MANUFACTURER, SYSTEM_PRODUCT_NAME,
    SYSTEM_VERSION,
};

/// Everything needed to build and run one VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct LaunchConfig {
    /// VM name, used in logs and status.
    pub name: String,
    /// Number of vCPUs (1..=MAX_VCPUS).
    #[serde(default = "default_vcpus")]
    pub vcpus: u32,
    /// Host CPUs each vCPU thread may run on: `vcpu_affinity[i]` lists the Linux CPU
    /// numbers of vCPU `i`. Empty (the default): vCPU threads run wherever the launcher
    /// may run. When set, it has one non-empty entry per vCPU.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vcpu_affinity: Vec<Vec<u32>>,
    /// Guest memory in MiB.
    #[serde(default = "default_memory_mib")]
    pub memory_mib: u64,
    /// What to boot.
    pub kernel: KernelConfig,
    /// virtio-blk disks, in guest order.
    #[serde(default)]
    pub disks: Vec<DiskConfig>,
    /// virtio-net devices, in guest order.
    #[serde(default)]
    pub nets: Vec<NetConfig>,
    /// Serial console exposure.
    #[serde(default)]
    pub console: ConsoleConfig,
    /// virtio-console port for a guest agent, exposed on the host as a unix socket.
    #[serde(default)]
    pub agent_socket: Option<PathBuf>,
    /// gRPC control API socket.
    #[serde(default)]
    pub api_socket: Option<PathBuf>,
    /// How long a graceful shutdown (SIGTERM or API) waits before a hard stop.
    #[serde(default = "default_shutdown_timeout_secs")]
    pub shutdown_timeout_secs: u64,
    /// Which hypervisor backend runs the guest.
    #[serde(default)]
    pub backend: BackendKind,
    /// System UUID and serial number the guest sees in its SMBIOS tables (KubeVirt's
    /// `firmware.uuid` and `firmware.serial`). Absent: neither.
    #[serde(default, skip_serializing_if = "SystemIdentity::is_empty")]
    pub system: SystemIdentity,
    /// virtio-rng entropy device (KubeVirt's `devices.rng: {}`); absent: none. `{}` gives
    /// the default rate ([`DEFAULT_RNG_BYTES_PER_SECOND`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rng: Option<RngConfig>,
}

/// Kernel, initramfs and command line (direct kernel boot).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct KernelConfig {
    /// ELF vmlinux (PVH entry) or bzImage.
    pub path: PathBuf,
    /// Initramfs loaded next to the kernel.
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    /// Kernel command line (at most 4095 bytes).
    #[serde(default = "default_cmdline")]
    pub cmdline: String,
}

/// On-disk format of a disk image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    /// Plain bytes: guest offset == file offset.
    #[default]
    Raw,
    /// QEMU copy-on-write v2/v3, usually an overlay over a read-only base image.
    Qcow2,
}

impl ImageFormat {
    /// `"raw"` or `"qcow2"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
        }
    }
}

/// One virtio-blk disk over a raw image file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct DiskConfig {
    /// Device id, unique among disks and nets.
    pub id: String,
    /// Image file; a raw one's size must be a multiple of 512 bytes.
    pub path: PathBuf,
    /// The image's format, as recorded when the disk was made. Never probed from the
    /// file: a guest can write a qcow2 header into a raw disk.
    #[serde(default)]
    pub format: ImageFormat,
    /// Expose the disk read-only (VIRTIO_BLK_F_RO) and open the image read-only.
    #[serde(default)]
    pub read_only: bool,
    /// Serial number reported by VIRTIO_BLK_T_GET_ID (at most 20 bytes); defaults to the id.
    #[serde(default)]
    pub serial: Option<String>,
}

/// One virtio-net device over a tap device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct NetConfig {
    /// Device id, unique among disks and nets.
    pub id: String,
    /// Name of the tap device; created if missing (and then removed on exit).
    pub tap: String,
    /// Guest MAC, "52:54:00:12:34:56"; generated from the VM name and id when absent.
    #[serde(default)]
    pub mac: Option<String>,
}

/// Serial console exposure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct ConsoleConfig {
    /// Unix socket where console clients attach (many at once).
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// Bytes of console output kept for late attachers.
    #[serde(default = "default_ring_bytes")]
    pub ring_bytes: usize,
    /// Foreground mode: copy console output to stdout and stdin to the guest.
    #[serde(default)]
    pub stdio: bool,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            socket: None,
            ring_bytes: default_ring_bytes(),
            stdio: false,
        }
    }
}

/// The hypervisor backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendKind {
    /// Our own KVM microVMM.
    #[default]
    Kvm,
}

/// Most vCPUs one VM may have, whatever the host offers.
pub const MAX_VCPUS: u32 = 64;

fn default_vcpus() -> u32 {
    1
}
fn default_memory_mib() -> u64 {
    256
}
fn default_cmdline() -> String {
    "console=ttyS0 reboot=k panic=1".to_string()
}
fn default_ring_bytes() -> usize {
    256 * 1024
}
fn default_shutdown_timeout_secs() -> u64 {
    30
}

/// Longest tap device name the kernel accepts (`IFNAMSIZ` - 1).
pub const MAX_TAP_NAME_BYTES: usize = 15;
/// Longest virtio-blk serial (`VIRTIO_BLK_ID_BYTES`).
pub const MAX_DISK_SERIAL_BYTES: usize = 20;
/// Longest kernel command line, without its terminating NUL.
pub const MAX_CMDLINE_BYTES: usize = CMDLINE_MAX_SIZE - 1;
/// Most virtio devices one VM can have: each takes one I/O APIC pin, from
/// `VIRTIO_FIRST_GSI` to the last pin.
pub const MAX_VIRTIO_DEVICES: usize = (IOAPIC_PINS - VIRTIO_FIRST_GSI) as usize;
/// Disk images must be a whole number of these sectors.
pub const DISK_SECTOR_SIZE: u64 = 512;
/// Longest unix socket path (`sun_path` holds 108 bytes with the NUL).
pub const MAX_SOCKET_PATH_BYTES: usize = 107;
/// Longest VM name (a DNS-1123 subdomain).
pub const MAX_NAME_BYTES: usize = 253;
/// Longest label (dot-separated part) of a VM name.
pub const MAX_NAME_LABEL_BYTES: usize = 63;
/// Longest device id.
pub const MAX_DEVICE_ID_BYTES: usize = 63;
/// Largest console ring buffer.
pub const MAX_CONSOLE_RING_BYTES: usize = 64 * 1024 * 1024;
/// First three bytes of generated MACs (a locally administered, unicast prefix).
pub const GENERATED_MAC_PREFIX: [u8; 3] = [0x52, 0x54, 0x00];

const MIB: u64 = 1024 * 1024;

/// What the host can give a VM; [`LaunchConfig::validate`] checks the config against it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostLimits {
    /// Memory the host can hand to this guest, in bytes.
    pub available_memory_bytes: u64,
    /// Most vCPUs the host allows for this guest.
    pub max_vcpus: u32,
}

/// One problem found by [`LaunchConfig::validate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// The offending field, as a path: `"disks[1].path"`, `"nets[0].mac"`, `"vcpus"`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Why a launch configuration could not be read, built or accepted.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The config file is not valid JSON for a [`LaunchConfig`] (including unknown fields).
    #[error("config file {path}, line {line}, column {column}: {message}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
        /// What the JSON decoder objected to.
        message: String,
    },
    /// The configuration was read but fails validation; every problem is listed.
    #[error("invalid launch configuration ({} problem{}):{}", .0.len(), if .0.len() == 1 { "" } else { "s" }, IssueList(.0))]
    Invalid(Vec<ConfigIssue>),
    /// A `--disk`, `--net` or `--vcpu-affinity` value could not be parsed.
    #[error("invalid --{flag} value {value:?}: {message}")]
    BadSpec {
        /// "disk", "net" or "vcpu-affinity".
        flag: &'static str,
        /// The value given.
        value: String,
        /// What is wrong with it.
        message: String,
    },
    /// A MAC address could not be parsed.
    #[error("invalid MAC address {value:?}: {message}")]
    BadMac {
        /// The text given.
        value: String,
        /// What is wrong with it.
        message: String,
    },
    /// `--config` was combined with flags that set configuration fields.
    #[error("--config cannot be combined with {}", .flags.join(", "))]
    ConfigWithFlags {
        /// The conflicting flags.
        flags: Vec<&'static str>,
    },
    /// A flag needed to build a configuration without `--config` is missing.
    #[error("{flag} is required when --config is not given")]
    MissingFlag {
        /// The missing flag.
        flag: &'static str,
    },
    /// The configuration could not be written as JSON.
    #[error("cannot serialize the launch configuration to JSON: {0}")]
    Serialize(#[source] serde_json::Error),
}

/// Displays issues one per line, indented under the summary.
struct IssueList<'a>(&'a [ConfigIssue]);

impl fmt::Display for IssueList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for issue in self.0 {
            write!(f, "\n  - {issue}")?;
        }
        Ok(())
    }
}

/// Collects validation problems.
#[derive(Default)]
struct Issues(Vec<ConfigIssue>);

impl Issues {
    fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigIssue {
            field: field.into(),
            message: message.into(),
        });
    }

    fn into_result(self) -> Result<(), ConfigError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(self.0))
        }
    }

    /// The issues one check finds on its own (for the config modules' tests).
    #[cfg(test)]
    fn found_by(check: impl FnOnce(&mut Issues)) -> Vec<ConfigIssue> {
        let mut issues = Issues::default();
        check(&mut issues);
        issues.0
    }
}

impl LaunchConfig {
    /// Reads a configuration from a JSON file. Unknown fields are refused; errors name
    /// the file, the line and the column.
    pub fn from_json_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let config = Self::from_json_str(&text, path)?;
        tracing::debug!(file = %path.display(), vm = %config.name, "launch configuration read");
        Ok(config)
    }

    /// Parses a configuration from JSON text; `origin` names the source in errors.
    pub fn from_json_str(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        serde_json::from_str(text).map_err(|e| {
            let (line, column) = (e.line(), e.column());
            let full = e.to_string();
            // serde_json appends the position, which the error already carries.
            let suffix = format!(" at line {line} column {column}");
            let message = full.strip_suffix(&suffix).unwrap_or(&full).to_string();
            ConfigError::Parse {
                path: origin.to_path_buf(),
                line,
                column,
                message,
            }
        })
    }

    /// The configuration as pretty-printed JSON, in the form [`Self::from_json_file`] reads.
    pub fn to_json(&self) -> Result<String, ConfigError> {
        serde_json::to_string_pretty(self).map_err(ConfigError::Serialize)
    }

    /// Checks everything that can be checked before the VM is built, against `limits`.
    /// Returns [`ConfigError::Invalid`] with every problem found, each naming its field.
    pub fn validate(&self, limits: &HostLimits) -> Result<(), ConfigError> {
        let mut issues = Issues::default();
        if let Some(problem) = dns_name_problem(&self.name) {
            issues.push("name", problem);
        }
        self.check_sizing(limits, &mut issues);
        self.check_affinity(&mut issues);
        self.check_kernel(&mut issues);
        self.check_disks(&mut issues);
        self.check_nets(&mut issues);
        self.check_device_ids(&mut issues);
        self.check_sockets(&mut issues);
        self.check_device_count(&mut issues);
        self.system.check(&mut issues);
        if let Some(rng) = &self.rng {
            rng.check(&mut issues);
        }
        if self.console.ring_bytes == 0 {
            issues.push("console.ring_bytes", "must be greater than 0");
        } else if self.console.ring_bytes > MAX_CONSOLE_RING_BYTES {
            issues.push(
                "console.ring_bytes",
                format!(
                    "is {} bytes; at most {MAX_CONSOLE_RING_BYTES} are allowed",
                    self.console.ring_bytes
                ),
            );
        }
        if self.shutdown_timeout_secs == 0 {
            issues.push(
                "shutdown_timeout_secs",
                "must be at least 1 (a graceful shutdown needs a grace period)",
            );
        }
        issues.into_result()
    }

    /// The guest MAC of `net`: the configured one, or a stable locally administered
    /// address derived from the VM name and the device id (see [`generated_mac`]).
    pub fn mac_for(&self, net: &NetConfig) -> [u8; 6] {
        net.mac
            .as_deref()
            .and_then(|text| parse_mac(text).ok())
            .unwrap_or_else(|| generated_mac(&self.name, &net.id))
    }

    fn check_sizing(&self, limits: &HostLimits, issues: &mut Issues) {
        let max_vcpus = MAX_VCPUS.min(limits.max_vcpus);
        if self.vcpus == 0 {
            issues.push("vcpus", "must be at least 1");
        } else if self.vcpus > max_vcpus {
            issues.push(
                "vcpus",
                format!(
                    "is {} but at most {max_vcpus} are allowed (launcher limit {MAX_VCPUS}, \
                     host limit {})",
                    self.vcpus, limits.max_vcpus
                ),
            );
        }
        if self.memory_mib == 0 {
            issues.push("memory_mib", "must be greater than 0");
        } else {
            let available = limits.available_memory_bytes;
            match self.memory_mib.checked_mul(MIB) {
                Some(bytes) if bytes <= available => {}
                requested => issues.push(
                    "memory_mib",
                    format!(
                        "{} MiB ({}) exceeds the host's available memory of {available} bytes \
                         ({} MiB)",
                        self.memory_mib,
                        requested.map_or_else(
                            || "more than 2^64 bytes".to_string(),
                            |b| format!("{b} bytes")
                        ),
                        available / MIB
                    ),
                ),
            }
        }
    }

    fn check_kernel(&self, issues: &mut Issues) {
        if let Some(size) = check_regular_file(issues, "kernel.path", &self.kernel.path, false) {
            if size == 0 {
                issues.push(
                    "kernel.path",
                    format!("{} is empty", self.kernel.path.display()),
                );
            }
        }
        if let Some(initrd) = &self.kernel.initrd {
            check_regular_file(issues, "kernel.initrd", initrd, false);
        }
        let cmdline = &self.kernel.cmdline;
        if cmdline.len() > MAX_CMDLINE_BYTES {
            issues.push(
                "kernel.cmdline",
                format!(
                    "is {} bytes long; at most {MAX_CMDLINE_BYTES} are allowed",
                    cmdline.len()
                ),
            );
        }
        if cmdline.contains('\0') {
            issues.push("kernel.cmdline", "must not contain NUL bytes");
        }
    }

    fn check_disks(&self, issues: &mut Issues) {
        // Canonical image path -> (index, read_only) of the first disk using it.
        let mut images: HashMap<PathBuf, (usize, bool)> = HashMap::new();
        for (i, disk) in self.disks.iter().enumerate() {
            let field = format!("disks[{i}].path");
            if let Some(size) = check_regular_file(issues, &field, &disk.path, !disk.read_only) {
                if size == 0 {
                    issues.push(&field, format!("{} is empty", disk.path.display()));
                } else if disk.format == ImageFormat::Raw && size % DISK_SECTOR_SIZE != 0 {
                    issues.push(
                        &field,
                        format!(
                            "{} is {size} bytes, not a multiple of {DISK_SECTOR_SIZE}",
                            disk.path.display()
                        ),
                    );
                }
                if let Ok(canonical) = disk.path.canonicalize() {
                    match images.get(&canonical) {
                        Some(&(first, first_ro)) if !(first_ro && disk.read_only) => issues.push(
                            &field,
                            format!(
                                "{} is also the image of disks[{first}]; an image can only be \
                                 shared by read-only disks",
                                disk.path.display()
                            ),
                        ),
                        Some(_) => {}
                        None => {
                            images.insert(canonical, (i, disk.read_only));
                        }
                    }
                }
            }
            match &disk.serial {
                Some(serial) if serial.len() > MAX_DISK_SERIAL_BYTES => issues.push(
                    format!("disks[{i}].serial"),
                    format!(
                        "{serial:?} is {} bytes long; at most {MAX_DISK_SERIAL_BYTES} are allowed",
                        serial.len()
                    ),
                ),
                Some(_) => {}
                None if disk.id.len() > MAX_DISK_SERIAL_BYTES => issues.push(
                    format!("disks[{i}].id"),
                    format!(
                        "{:?} is {} bytes long and serves as the serial, which allows at most \
                         {MAX_DISK_SERIAL_BYTES}; set a shorter serial",
                        disk.id,
                        disk.id.len()
                    ),
                ),
                None => {}
            }
        }
    }

    fn check_nets(&self, issues: &mut Issues) {
        let mut taps: HashMap<&str, usize> = HashMap::new();
        let mut macs: HashMap<[u8; 6], usize> = HashMap::new();
        for (i, net) in self.nets.iter().enumerate() {
            let field = format!("nets[{i}].tap");
            if let Some(problem) = tap_name_problem(&net.tap) {
                issues.push(&field, problem);
            } else if let Some(first) = taps.insert(net.tap.as_str(), i) {
                issues.push(
                    &field,
                    format!("{:?} is also the tap of nets[{first}]", net.tap),
                );
            }
            let mac = match &net.mac {
                Some(text) => match parse_mac(text) {
                    Ok(mac) => {
                        if let Some(problem) = nic_mac_problem(&mac) {
                            issues.push(format!("nets[{i}].mac"), format!("{text}: {problem}"));
                        }
                        mac
                    }
                    Err(e) => {
                        let message = match e {
                            ConfigError::BadMac { message, .. } => format!("{text:?}: {message}"),
                            other => other.to_string(),
                        };
                        issues.push(format!("nets[{i}].mac"), message);
                        continue;
                    }
                },
                None => generated_mac(&self.name, &net.id),
            };
            if let Some(first) = macs.insert(mac, i) {
                issues.push(
                    format!("nets[{i}].mac"),
                    format!("{} is also the MAC of nets[{first}]", format_mac(&mac)),
                );
            }
        }
    }

    fn check_device_ids(&self, issues: &mut Issues) {
        let ids = self
            .disks
            .iter()
            .enumerate()
            .map(|(i, d)| (format!("disks[{i}]"), d.id.as_str()))
            .chain(
                self.nets
                    .iter()
                    .enumerate()
                    .map(|(i, n)| (format!("nets[{i}]"), n.id.as_str())),
            );
        let mut seen: HashMap<&str, String> = HashMap::new();
        for (device, id) in ids {
            let field = format!("{device}.id");
            if let Some(problem) = device_id_problem(id) {
                issues.push(field, problem);
            } else if let Some(first) = seen.get(id) {
                issues.push(field, format!("{id:?} is also the id of {first}"));
            } else {
                seen.insert(id, device);
            }
        }
    }

    fn check_sockets(&self, issues: &mut Issues) {
        let sockets = [
            ("console.socket", self.console.socket.as_deref()),
            ("agent_socket", self.agent_socket.as_deref()),
            ("api_socket", self.api_socket.as_deref()),
        ];
        let mut owners: Vec<(&Path, &str)> = Vec::new();
        for (field, path) in sockets {
            let Some(path) = path else { continue };
            if path.as_os_str().is_empty() {
                issues.push(field, "must not be empty");
                continue;
            }
            let len = path.as_os_str().len();
            if len > MAX_SOCKET_PATH_BYTES {
                issues.push(
                    field,
                    format!(
                        "{} is {len} bytes long; unix socket paths allow at most \
                         {MAX_SOCKET_PATH_BYTES}",
                        path.display()
                    ),
                );
            }
            let dir = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            if !dir.is_dir() {
                issues.push(
                    field,
                    format!(
                        "directory {} of {} does not exist",
                        dir.display(),
                        path.display()
                    ),
                );
            }
            match owners.iter().find(|(p, _)| *p == path) {
                Some((_, first)) => {
                    issues.push(field, format!("{} is also used by {first}", path.display()))
                }
                None => owners.push((path, field)),
            }
        }
    }

    fn check_affinity(&self, issues: &mut Issues) {
        if self.vcpu_affinity.is_empty() {
            return;
        }
        let entries = self.vcpu_affinity.len();
        if u32::try_from(entries) != Ok(self.vcpus) {
            issues.push(
                "vcpu_affinity",
                format!(
                    "has {entries} entries but the VM has {} vCPUs: give one CPU list per vCPU \
                     (or none at all)",
                    self.vcpus
                ),
            );
        }
        for (index, cpus) in self.vcpu_affinity.iter().enumerate() {
            let field = format!("vcpu_affinity[{index}]");
            if cpus.is_empty() {
                issues.push(
                    field,
                    "is empty: a vCPU needs at least one host CPU to run on",
                );
            } else if let Some(cpu) = cpus.iter().find(|&&c| c >= cpulist::MAX_CPUS) {
                issues.push(
                    field,
                    format!(
                        "names CPU {cpu}; host CPUs are numbered 0 to {}",
                        cpulist::MAX_CPUS - 1
                    ),
                );
            }
        }
    }

    fn check_device_count(&self, issues: &mut Issues) {
        let agent = usize::from(self.agent_socket.is_some());
        let rng = usize::from(self.rng.is_some());
        let count = self.disks.len() + self.nets.len() + agent + rng;
        if count > MAX_VIRTIO_DEVICES {
            let (field, rng_part) = if rng == 0 {
                ("disks/nets/agent_socket", String::new())
            } else {
                ("disks/nets/agent_socket/rng", ", 1 rng".to_string())
            };
            issues.push(
                field,
                format!(
                    "{count} virtio devices ({} disks, {} nets, {agent} agent console{rng_part}) \
                     but at most {MAX_VIRTIO_DEVICES} fit (one I/O APIC pin each, GSI \
                     {VIRTIO_FIRST_GSI} to {})",
                    self.disks.len(),
                    self.nets.len(),
                    IOAPIC_PINS - 1
                ),
            );
        }
    }
}

/// Checks that `path` is an existing, regular, openable file (writable too when asked).
/// Returns its size when it is, after recording an issue under `field` when it is not.
fn check_regular_file(
    issues: &mut Issues,
    field: &str,
    path: &Path,
    writable: bool,
) -> Option<u64> {
    if path.as_os_str().is_empty() {
        issues.push(field, "must not be empty");
        return None;
    }
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            issues.push(field, format!("{} does not exist", path.display()));
            return None;
        }
        Err(e) => {
            issues.push(field, format!("cannot inspect {}: {e}", path.display()));
            return None;
        }
    };
    if !meta.is_file() {
        let kind = if meta.is_dir() {
            "a directory"
        } else {
            "a special file"
        };
        issues.push(
            field,
            format!("{} is {kind}, not a regular file", path.display()),
        );
        return None;
    }
    let opened = if writable {
        OpenOptions::new().read(true).write(true).open(path)
    } else {
        File::open(path)
    };
    if let Err(e) = opened {
        let access = if writable {
            "readable and writable"
        } else {
            "readable"
        };
        issues.push(field, format!("{} is not {access}: {e}", path.display()));
        return None;
    }
    Some(meta.len())
}

/// Why `name` is not a DNS-1123 subdomain (lowercase letters, digits, '-', and dots
/// between labels), if it is not.
fn dns_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("must not be empty".to_string());
    }
    if name.len() > MAX_NAME_BYTES {
        return Some(format!(
            "is {} bytes long; at most {MAX_NAME_BYTES} are allowed",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '.'))
    {
        return Some(format!(
            "{name:?} contains {c:?}; only lowercase letters, digits, '-' and '.' are allowed"
        ));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Some(format!(
                "{name:?} has an empty part (leading, trailing or doubled '.')"
            ));
        }
        if label.len() > MAX_NAME_LABEL_BYTES {
            return Some(format!(
                "part {label:?} is {} bytes long; at most {MAX_NAME_LABEL_BYTES} are allowed",
                label.len()
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Some(format!(
                "{name:?} must start and end with a letter or digit around each '.'"
            ));
        }
    }
    None
}

/// Why `id` is not a usable device id, if it is not.
fn device_id_problem(id: &str) -> Option<String> {
    if id.is_empty() {
        return Some("must not be empty".to_string());
    }
    if id.len() > MAX_DEVICE_ID_BYTES {
        return Some(format!(
            "{id:?} is {} bytes long; at most {MAX_DEVICE_ID_BYTES} are allowed",
            id.len()
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Some(format!(
            "{id:?} contains {c:?}; only letters, digits, '-', '_' and '.' are allowed"
        ));
    }
    None
}

/// Why `tap` is not a valid Linux interface name, if it is not.
fn tap_name_problem(tap: &str) -> Option<String> {
    if tap.is_empty() {
        return Some("must not be empty".to_string());
    }
    if tap.len() > MAX_TAP_NAME_BYTES {
        return Some(format!(
            "tap name {tap:?} is {} bytes long; at most {MAX_TAP_NAME_BYTES} are allowed",
            tap.len()
        ));
    }
    if tap == "." || tap == ".." {
        return Some(format!("{tap:?} is not a valid interface name"));
    }
    if let Some(c) = tap
        .chars()
        .find(|c| *c == '/' || *c == ':' || c.is_whitespace() || c.is_control())
    {
        return Some(format!(
            "tap name {tap:?} contains {c:?}, which interface names cannot"
        ));
    }
    None
}

/// Why `mac` cannot be a NIC's own address, if it cannot.
fn nic_mac_problem(mac: &[u8; 6]) -> Option<&'static str> {
    if mac[0] & 0x01 != 0 {
        Some("is a multicast address; a NIC needs a unicast MAC")
    } else if mac.iter().all(|b| *b == 0) {
        Some("is the all-zero address")
    } else {
        None
    }
}

/// Parses a MAC address written as six two-digit hex bytes separated by ':'
/// ("52:54:00:12:34:56"; either case).
pub fn parse_mac(text: &str) -> Result<[u8; 6], ConfigError> {
    let bad = |message: String| ConfigError::BadMac {
        value: text.to_string(),
        message,
    };
    let parts: Vec<&str> = text.split(':').collect();
    if parts.len() != 6 {
        return Err(bad(format!(
            "expected 6 bytes separated by ':', found {}",
            parts.len()
        )));
    }
    let mut mac = [0u8; 6];
    for (i, (slot, part)) in mac.iter_mut().zip(&parts).enumerate() {
        if part.len() != 2 || !part.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(bad(format!(
                "byte {} is {part:?}, not two hex digits",
                i + 1
            )));
        }
        *slot = u8::from_str_radix(part, 16)
            .map_err(|e| bad(format!("byte {} is {part:?}: {e}", i + 1)))?;
    }
    Ok(mac)
}

/// Formats a MAC address as "52:54:00:12:34:56".
pub fn format_mac(mac: &[u8; 6]) -> String {
    let parts: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
    parts.join(":")
}

/// A stable MAC for device `id` of VM `name`: [`GENERATED_MAC_PREFIX`] followed by three
/// bytes of a 64-bit FNV-1a hash of the name and the id. Same inputs, same MAC, on every
/// host and build.
pub fn generated_mac(name: &str, id: &str) -> [u8; 6] {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    // 0xff never occurs in UTF-8, so ("ab", "c") and ("a", "bc") hash differently.
    let bytes = name.bytes().chain([0xff]).chain(id.bytes());
    let hash = bytes.fold(FNV_OFFSET, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(FNV_PRIME)
    });
    let h = hash.to_be_bytes();
    let [a, b, c] = GENERATED_MAC_PREFIX;
    // Fold the high half in so all 64 bits matter.
    [a, b, c, h[5] ^ h[0], h[6] ^ h[1], h[7] ^ h[2]]
}

/// Splits "k1=v1,k2=v2" into pairs; a bare key is returned with an empty value marker.
fn split_spec<'a>(
    flag: &'static str,
    spec: &'a str,
    allowed: &[&str],
) -> Result<HashMap<&'a str, Option<&'a str>>, ConfigError> {
    let bad = |message: String| ConfigError::BadSpec {
        flag,
        value: spec.to_string(),
        message,
    };
    let mut pairs = HashMap::new();
    for item in spec.split(',') {
        let (key, value) = match item.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (item, None),
        };
        if key.is_empty() {
            return Err(bad("empty key (stray ',' or '=')".to_string()));
        }
        if !allowed.contains(&key) {
            return Err(bad(format!(
                "unknown key {key:?}; expected one of {}",
                allowed.join(", ")
            )));
        }
        if value == Some("") {
            return Err(bad(format!("{key}= has an empty value")));
        }
        if pairs.insert(key, value).is_some() {
            return Err(bad(format!("{key} is given twice")));
        }
    }
    Ok(pairs)
}

/// Takes an optional `key=value` from a split spec; a bare `key` is an error.
fn optional<'a>(
    flag: &'static str,
    spec: &str,
    pairs: &mut HashMap<&str, Option<&'a str>>,
    key: &str,
) -> Result<Option<&'a str>, ConfigError> {
    match pairs.remove(key) {
        None => Ok(None),
        Some(Some(value)) => Ok(Some(value)),
        Some(None) => Err(ConfigError::BadSpec {
            flag,
            value: spec.to_string(),
            message: format!("{key} needs a value ({key}=...)"),
        }),
    }
}

/// Takes a required `key=value` from a split spec.
fn required<'a>(
    flag: &'static str,
    spec: &str,
    pairs: &mut HashMap<&str, Option<&'a str>>,
    key: &str,
) -> Result<&'a str, ConfigError> {
    optional(flag, spec, pairs, key)?.ok_or_else(|| ConfigError::BadSpec {
        flag,
        value: spec.to_string(),
        message: format!("missing {key}=..."),
    })
}

/// Parses a `--disk` value: `id=ID,path=PATH[,ro=on|off][,serial=S][,format=raw|qcow2]` (a bare `ro` means
/// `ro=on`). Paths cannot contain ','.
pub fn parse_disk_spec(spec: &str) -> Result<DiskConfig, ConfigError> {
    const FLAG: &str = "disk";
    let mut pairs = split_spec(FLAG, spec, &["id", "path", "ro", "serial", "format"])?;
    let id = required(FLAG, spec, &mut pairs, "id")?.to_string();
    let path = PathBuf::from(required(FLAG, spec, &mut pairs, "path")?);
    let read_only = match pairs.remove("ro") {
        None => false,
        Some(None | Some("on" | "true" | "yes" | "1")) => true,
        Some(Some("off" | "false" | "no" | "0")) => false,
        Some(Some(other)) => {
            return Err(ConfigError::BadSpec {
                flag: FLAG,
                value: spec.to_string(),
                message: format!("ro={other} is not one of on, off, true, false"),
            })
        }
    };
    let serial = optional(FLAG, spec, &mut pairs, "serial")?.map(str::to_string);
    let format = match optional(FLAG, spec, &mut pairs, "format")? {
        None | Some("raw") => ImageFormat::Raw,
        Some("qcow2") => ImageFormat::Qcow2,
        Some(other) => {
            return Err(ConfigError::BadSpec {
                flag: FLAG,
                value: spec.to_string(),
                message: format!("format={other} is not one of raw, qcow2"),
            })
        }
    };
    Ok(DiskConfig {
        id,
        path,
        format,
        read_only,
        serial,
    })
}

/// Parses a `--net` value: `id=ID,tap=TAP[,mac=MAC]`. The MAC is checked for syntax here.
pub fn parse_net_spec(spec: &str) -> Result<NetConfig, ConfigError> {
    const FLAG: &str = "net";
    let mut pairs = split_spec(FLAG, spec, &["id", "tap", "mac"])?;
    let id = required(FLAG, spec, &mut pairs, "id")?.to_string();
    let tap = required(FLAG, spec, &mut pairs, "tap")?.to_string();
    let mac = optional(FLAG, spec, &mut pairs, "mac")?;
    if let Some(text) = mac {
        parse_mac(text).map_err(|e| ConfigError::BadSpec {
            flag: FLAG,
            value: spec.to_string(),
            message: e.to_string(),
        })?;
    }
    Ok(NetConfig {
        id,
        tap,
        mac: mac.map(str::to_string),
    })
}

/// Parses a `--vcpu-affinity` value: `VCPU=CPUS`, CPUS a CPU list ("1", "2-3,5").
pub fn parse_affinity_spec(spec: &str) -> Result<(u32, Vec<u32>), ConfigError> {
    let bad = |message: String| ConfigError::BadSpec {
        flag: "vcpu-affinity",
        value: spec.to_string(),
        message,
    };
    let (vcpu, cpus) = spec
        .split_once('=')
        .ok_or_else(|| bad("expected VCPU=CPUS, e.g. 0=1 or 1=2-3".into()))?;
    let vcpu = vcpu
        .trim()
        .parse::<u32>()
        .map_err(|_| bad(format!("{vcpu:?} is not a vCPU index")))?;
    let cpus = cpulist::parse(cpus).map_err(|e| bad(e.to_string()))?;
    Ok((vcpu, cpus))
}

/// The `vcpu_affinity` table of repeated `--vcpu-affinity` flags: entry `i` for vCPU
/// `i`, vCPUs without a flag left empty (which validation reports).
fn affinity_table(pins: &[(u32, Vec<u32>)]) -> Result<Vec<Vec<u32>>, ConfigError> {
    let mut table: Vec<Vec<u32>> = Vec::new();
    for (vcpu, cpus) in pins {
        let index = usize::try_from(*vcpu).unwrap_or(usize::MAX);
        if index >= MAX_VCPUS as usize {
            return Err(ConfigError::BadSpec {
                flag: "vcpu-affinity",
                value: format!("{vcpu}={}", cpulist::format(cpus)),
                message: format!("vCPU {vcpu} is out of range (at most {MAX_VCPUS} vCPUs)"),
            });
        }
        if table.len() <= index {
            table.resize(index + 1, Vec::new());
        }
        if !table[index].is_empty() {
            return Err(ConfigError::BadSpec {
                flag: "vcpu-affinity",
                value: format!("{vcpu}={}", cpulist::format(cpus)),
                message: format!("vCPU {vcpu} is pinned twice"),
            });
        }
        table[index].clone_from(cpus);
    }
    Ok(table)
}

/// clap value parser for `--vcpu-affinity`.
fn affinity_arg(spec: &str) -> Result<(u32, Vec<u32>), String> {
    parse_affinity_spec(spec).map_err(spec_message)
}

/// clap value parser for `--disk`: clap already names the flag and the value.
fn disk_arg(spec: &str) -> Result<DiskConfig, String> {
    parse_disk_spec(spec).map_err(spec_message)
}

/// clap value parser for `--net`.
fn net_arg(spec: &str) -> Result<NetConfig, String> {
    parse_net_spec(spec).map_err(spec_message)
}

fn spec_message(error: ConfigError) -> String {
    match error {
        ConfigError::BadSpec { message, .. } => message,
        other => other.to_string(),
    }
}

/// Ids of the flags that set configuration fields (all conflict with `--config`).
const CONFIG_FLAG_IDS: [&str; 15] = [
    "name",
    "kernel",
    "initrd",
    "cmdline",
    "vcpus",
    "vcpu_affinity",
    "memory_mib",
    "disks",
    "nets",
    "console_socket",
    "stdio",
    "agent_socket",
    "api_socket",
    "shutdown_timeout_secs",
    "rng_bytes_per_second",
];

/// Command line of the launcher: the configuration comes either from `--config FILE`
/// or from the other flags, never from both.
#[derive(Debug, Clone, Default, PartialEq, Parser)]
#[command(
    name = "ironvisor-launcher",
    version,
    about = "Runs one VM: a KVM microVMM with virtio-mmio devices and a gRPC control API"
)]
pub struct LaunchArgs {
    /// Read the whole configuration from this JSON file (exclusive with the other
    /// configuration flags).
    #[arg(long, value_name = "FILE", conflicts_with_all = CONFIG_FLAG_IDS)]
    pub config: Option<PathBuf>,
    /// VM name (DNS-1123: lowercase letters, digits, '-', '.').
    #[arg(long, required_unless_present = "config")]
    pub name: Option<String>,
    /// Kernel image (ELF vmlinux or bzImage).
    #[arg(long, value_name = "PATH", required_unless_present = "config")]
    pub kernel: Option<PathBuf>,
    /// Initramfs image.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line [default: "console=ttyS0 reboot=k panic=1"].
    #[arg(long)]
    pub cmdline: Option<String>,
    /// Number of vCPUs [default: 1].
    #[arg(long)]
    pub vcpus: Option<u32>,
    /// Pin vCPU VCPU's thread to the host CPUs of a CPU list ("1", "2-3", "0,4");
    /// repeat once per vCPU.
    #[arg(long = "vcpu-affinity", value_name = "VCPU=CPUS", value_parser = affinity_arg)]
    pub vcpu_affinity: Vec<(u32, Vec<u32>)>,
    /// Guest memory in MiB [default: 256].
    #[arg(long)]
    pub memory_mib: Option<u64>,
    /// A virtio-blk disk; repeat for more.
    #[arg(long = "disk", value_name = "id=ID,path=PATH[,ro=on][,serial=S]", value_parser = disk_arg)]
    pub disks: Vec<DiskConfig>,
    /// A virtio-net device on a tap; repeat for more.
    #[arg(long = "net", value_name = "id=ID,tap=TAP[,mac=MAC]", value_parser = net_arg)]
    pub nets: Vec<NetConfig>,
    /// Unix socket where serial console clients attach.
    #[arg(long, value_name = "PATH")]
    pub console_socket: Option<PathBuf>,
    /// Copy the serial console to stdout and stdin to the guest.
    #[arg(long)]
    pub stdio: bool,
    /// Unix socket of the guest agent's virtio-console port.
    #[arg(long, value_name = "PATH")]
    pub agent_socket: Option<PathBuf>,
    /// Unix socket of the gRPC control API.
    #[arg(long, value_name = "PATH")]
    pub api_socket: Option<PathBuf>,
    /// Grace period of a graceful shutdown before the VM is stopped hard [default: 30].
    #[arg(long, value_name = "SECS")]
    pub shutdown_timeout_secs: Option<u64>,
    /// Give the guest a virtio-rng entropy device serving at most N bytes per second
    /// (1 MiB/s = 1048576 is the JSON form's default for `"rng": {}`).
    #[arg(long, value_name = "N")]
    pub rng_bytes_per_second: Option<u64>,
    /// Print the resolved configuration as JSON and exit.
    #[arg(long)]
    pub print_config: bool,
}

impl LaunchArgs {
    /// Builds the configuration: read from `--config`, or assembled from the flags with
    /// the defaults of the JSON form. Does not validate it (see
    /// [`LaunchConfig::validate`]); `--print-config` is left for the caller to act on.
    pub fn into_config(self) -> Result<LaunchConfig, ConfigError> {
        if let Some(path) = &self.config {
            let flags = self.config_flags_in_use();
            if !flags.is_empty() {
                return Err(ConfigError::ConfigWithFlags { flags });
            }
            return LaunchConfig::from_json_file(path);
        }
        let name = self
            .name
            .ok_or(ConfigError::MissingFlag { flag: "--name" })?;
        let kernel = self
            .kernel
            .ok_or(ConfigError::MissingFlag { flag: "--kernel" })?;
        Ok(LaunchConfig {
            name,
            vcpus: self.vcpus.unwrap_or_else(default_vcpus),
            vcpu_affinity: affinity_table(&self.vcpu_affinity)?,
            memory_mib: self.memory_mib.unwrap_or_else(default_memory_mib),
            kernel: KernelConfig {
                path: kernel,
                initrd: self.initrd,
                cmdline: self.cmdline.unwrap_or_else(default_cmdline),
            },
            disks: self.disks,
            nets: self.nets,
            console: ConsoleConfig {
                socket: self.console_socket,
                stdio: self.stdio,
                ..ConsoleConfig::default()
            },
            agent_socket: self.agent_socket,
            api_socket: self.api_socket,
            shutdown_timeout_secs: self
                .shutdown_timeout_secs
                .unwrap_or_else(default_shutdown_timeout_secs),
            backend: BackendKind::default(),
            system: SystemIdentity::default(),
            rng: self.rng_bytes_per_second.map(RngConfig::with_rate),
        })
    }

    /// The configuration flags that are set, as written on the command line.
    fn config_flags_in_use(&self) -> Vec<&'static str> {
        let set = [
            ("--name", self.name.is_some()),
            ("--kernel", self.kernel.is_some()),
            ("--initrd", self.initrd.is_some()),
            ("--cmdline", self.cmdline.is_some()),
            ("--vcpus", self.vcpus.is_some()),
            ("--vcpu-affinity", !self.vcpu_affinity.is_empty()),
            ("--memory-mib", self.memory_mib.is_some()),
            ("--disk", !self.disks.is_empty()),
            ("--net", !self.nets.is_empty()),
            ("--console-socket", self.console_socket.is_some()),
            ("--stdio", self.stdio),
            ("--agent-socket", self.agent_socket.is_some()),
            ("--api-socket", self.api_socket.is_some()),
            (
                "--shutdown-timeout-secs",
                self.shutdown_timeout_secs.is_some(),
            ),
            (
                "--rng-bytes-per-second",
                self.rng_bytes_per_second.is_some(),
            ),
        ];
        set.into_iter()
            .filter_map(|(flag, on)| on.then_some(flag))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1024 * MIB;

    fn limits() -> HostLimits {
        HostLimits {
            available_memory_bytes: 8 * GIB,
            max_vcpus: 8,
        }
    }

    /// A directory with a kernel, an initrd and a 1 MiB disk image, and a valid config
    /// using them.
    struct Fixture {
        dir: tempfile::TempDir,
        config: LaunchConfig,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let kernel = dir.path().join("vmlinux");
            std::fs::write(&kernel, b"\x7fELF kernel").unwrap();
            let initrd = dir.path().join("initrd.img");
            std::fs::write(&initrd, b"initrd").unwrap();
            let disk = dir.path().join("root.img");
            std::fs::write(&disk, vec![0u8; 1024 * 1024]).unwrap();
            let config = LaunchConfig {
                name: "vm-1".into(),
                vcpus: 2,
                vcpu_affinity: Vec::new(),
                memory_mib: 512,
                kernel: KernelConfig {
                    path: kernel,
                    initrd: Some(initrd),
                    cmdline: default_cmdline(),
                },
                disks: vec![DiskConfig {
                    id: "rootdisk".into(),
                    path: disk,
                    format: ImageFormat::Raw,
                    read_only: false,
                    serial: None,
                }],
                nets: vec![NetConfig {
                    id: "net0".into(),
                    tap: "tap-vm1-0".into(),
                    mac: None,
                }],
                console: ConsoleConfig {
                    socket: Some(dir.path().join("console.sock")),
                    ..ConsoleConfig::default()
                },
                agent_socket: Some(dir.path().join("agent.sock")),
                api_socket: Some(dir.path().join("api.sock")),
                shutdown_timeout_secs: 30,
                backend: BackendKind::Kvm,
                system: SystemIdentity::default(),
                rng: Some(RngConfig::default()),
            };
            Self { dir, config }
        }

        fn file(&self, name: &str, len: usize) -> PathBuf {
            let path = self.dir.path().join(name);
            std::fs::write(&path, vec![0u8; len]).unwrap();
            path
        }
    }

    /// Validation issues of `config`, or none.
    fn issues(config: &LaunchConfig) -> Vec<ConfigIssue> {
        match config.validate(&limits()) {
            Ok(()) => Vec::new(),
            Err(ConfigError::Invalid(issues)) => issues,
            Err(other) => panic!("unexpected error {other:?}"),
        }
    }

    /// Asserts exactly one issue, on `field`, whose message contains every `needle`.
    fn assert_one_issue(config: &LaunchConfig, field: &str, needles: &[&str]) {
        let found = issues(config);
        assert_eq!(found.len(), 1, "expected one issue, got {found:#?}");
        assert_eq!(found[0].field, field, "{found:#?}");
        for needle in needles {
            assert!(
                found[0].message.contains(needle),
                "{:?} does not contain {needle:?}",
                found[0].message
            );
        }
    }

    fn write_json(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("vm.json");
        std::fs::write(&path, text).unwrap();
        path
    }

    // ---- JSON -------------------------------------------------------------------

    #[test]
    fn minimal_json_gets_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_json(
            dir.path(),
            r#"{"name": "vm", "kernel": {"path": "/boot/vmlinux"}}"#,
        );
        let config = LaunchConfig::from_json_file(&path).unwrap();
        assert_eq!(config.name, "vm");
        assert_eq!(config.vcpus, 1);
        assert_eq!(config.memory_mib, 256);
        assert_eq!(config.kernel.cmdline, "console=ttyS0 reboot=k panic=1");
        assert_eq!(config.kernel.initrd, None);
        assert!(config.disks.is_empty() && config.nets.is_empty());
        assert_eq!(config.console, ConsoleConfig::default());
        assert_eq!(config.shutdown_timeout_secs, 30);
        assert_eq!(config.backend, BackendKind::Kvm);
        assert_eq!(config.rng, None);
    }

    #[test]
    fn json_round_trips_through_to_json() {
        let fx = Fixture::new();
        let text = fx.config.to_json().unwrap();
        let back = LaunchConfig::from_json_str(&text, Path::new("x.json")).unwrap();
        assert_eq!(back, fx.config);
    }

    #[test]
    fn unknown_field_is_refused_naming_it_file_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_json(
            dir.path(),
            "{\n  \"name\": \"vm\",\n  \"kernel\": {\"path\": \"/k\"},\n  \"memory\": 512\n}",
        );
        let err = LaunchConfig::from_json_file(&path).unwrap_err();
        match &err {
            ConfigError::Parse {
                path: p,
                line,
                column,
                message,
            } => {
                assert_eq!(p, &path);
                assert_eq!(*line, 4);
                assert!(*column > 0);
                assert!(message.contains("unknown field `memory`"), "{message}");
                assert!(!message.contains(" at line "), "{message}");
            }
            other => panic!("unexpected error {other:?}"),
        }
        let text = err.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains("line 4"), "{text}");
    }

    #[test]
    fn unknown_nested_field_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_json(
            dir.path(),
            r#"{"name": "vm", "kernel": {"path": "/k"},
                "disks": [{"id": "d", "path": "/d", "rw": true}]}"#,
        );
        let err = LaunchConfig::from_json_file(&path).unwrap_err();
        assert!(
            matches!(&err, ConfigError::Parse { line: 2, message, .. } if message.contains("unknown field `rw`")),
            "{err:?}"
        );
    }

    #[test]
    fn syntax_and_type_errors_carry_the_position() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_json(dir.path(), "{\"name\": \"vm\",\n\"vcpus\": \"two\"}");
        let err = LaunchConfig::from_json_file(&path).unwrap_err();
        assert!(
            matches!(&err, ConfigError::Parse { line: 2, message, .. } if message.contains("invalid type")),
            "{err:?}"
        );
        let path = write_json(dir.path(), "{\"name\": \"vm\",,}");
        let err = LaunchConfig::from_json_file(&path).unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::Parse {
                    line: 1,
                    column: 15,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn missing_required_field_is_reported() {
        let err =
            LaunchConfig::from_json_str(r#"{"name": "vm"}"#, Path::new("vm.json")).unwrap_err();
        assert!(
            matches!(&err, ConfigError::Parse { message, .. } if message.contains("missing field `kernel`")),
            "{err:?}"
        );
    }

    #[test]
    fn unreadable_config_file_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.json");
        let err = LaunchConfig::from_json_file(&path).unwrap_err();
        assert!(matches!(&err, ConfigError::Read { path: p, .. } if p == &path));
        assert!(err.to_string().contains(&path.display().to_string()));
    }

    // ---- validation -------------------------------------------------------------

    #[test]
    fn fixture_config_is_valid() {
        let fx = Fixture::new();
        assert_eq!(issues(&fx.config), Vec::new());
    }

    #[test]
    fn name_must_be_dns_1123() {
        let mut fx = Fixture::new();
        for good in ["a", "vm-1", "ns.vm-1", "0abc"] {
            fx.config.name = good.into();
            assert_eq!(issues(&fx.config), Vec::new(), "{good}");
        }
        let cases: [(String, &str); 7] = [
            (String::new(), "must not be empty"),
            ("VM1".into(), "contains 'V'"),
            ("vm_1".into(), "contains '_'"),
            ("-vm".into(), "start and end"),
            ("vm-".into(), "start and end"),
            ("a..b".into(), "empty part"),
            ("x".repeat(64), "at most 63"),
        ];
        for (name, needle) in cases {
            fx.config.name = name;
            assert_one_issue(&fx.config, "name", &[needle]);
        }
        fx.config.name = ["a"; 130].join(".");
        assert_one_issue(&fx.config, "name", &["at most 253"]);
    }

    #[test]
    fn vcpus_must_be_in_range() {
        let mut fx = Fixture::new();
        fx.config.vcpus = 0;
        assert_one_issue(&fx.config, "vcpus", &["at least 1"]);
        fx.config.vcpus = 8;
        assert_eq!(issues(&fx.config), Vec::new());
        fx.config.vcpus = 9;
        assert_one_issue(&fx.config, "vcpus", &["is 9", "at most 8"]);
        let big_host = HostLimits {
            max_vcpus: 1000,
            ..limits()
        };
        fx.config.vcpus = MAX_VCPUS;
        assert!(fx.config.validate(&big_host).is_ok());
        fx.config.vcpus = MAX_VCPUS + 1;
        let err = fx.config.validate(&big_host).unwrap_err().to_string();
        assert!(err.contains("at most 64"), "{err}");
    }

    #[test]
    fn vcpu_affinity_needs_one_non_empty_list_per_vcpu() {
        let mut fx = Fixture::new();
        fx.config.vcpu_affinity = vec![vec![1], vec![0, 2]];
        assert_eq!(issues(&fx.config), Vec::new());
        fx.config.vcpu_affinity = vec![vec![1]];
        assert_one_issue(&fx.config, "vcpu_affinity", &["1 entries", "2 vCPUs"]);
        fx.config.vcpu_affinity = vec![vec![1], vec![]];
        assert_one_issue(&fx.config, "vcpu_affinity[1]", &["is empty"]);
        fx.config.vcpu_affinity = vec![vec![1], vec![4096]];
        assert_one_issue(&fx.config, "vcpu_affinity[1]", &["CPU 4096", "0 to 1023"]);
    }

    #[test]
    fn vcpu_affinity_flags_build_the_table_and_bad_ones_are_named() {
        /// `ironvisor-launcher --name vm --kernel /k` followed by `extra`.
        fn parse(extra: &[&str]) -> Result<LaunchArgs, clap::Error> {
            let base = ["ironvisor-launcher", "--name", "vm", "--kernel", "/k"];
            LaunchArgs::try_parse_from(base.iter().chain(extra))
        }
        let pins = [
            "--vcpus",
            "2",
            "--vcpu-affinity",
            "1=2-3",
            "--vcpu-affinity",
            "0=1",
        ];
        assert_eq!(
            parse(&pins).unwrap().into_config().unwrap().vcpu_affinity,
            vec![vec![1], vec![2, 3]]
        );
        for (value, needle) in [
            ("1", "expected VCPU=CPUS"),
            ("x=1", "not a vCPU index"),
            ("0=3-1", "runs backwards"),
            ("0=", "empty"),
        ] {
            let err = parse(&["--vcpu-affinity", value]).unwrap_err().to_string();
            assert!(err.contains(needle), "{value}: {err}");
        }
        let twice = parse(&["--vcpu-affinity", "0=1", "--vcpu-affinity", "0=2"])
            .unwrap()
            .into_config()
            .unwrap_err()
            .to_string();
        assert!(twice.contains("pinned twice"), "{twice}");
    }

    #[test]
    fn memory_must_be_positive_and_fit_the_host() {
        let mut fx = Fixture::new();
        fx.config.memory_mib = 0;
        assert_one_issue(&fx.config, "memory_mib", &["greater than 0"]);
        fx.config.memory_mib = 8 * 1024;
        assert_eq!(issues(&fx.config), Vec::new());
        fx.config.memory_mib = 8 * 1024 + 1;
        assert_one_issue(
            &fx.config,
            "memory_mib",
            &[
                "8193 MiB",
                "8590983168 bytes",
                "8589934592 bytes",
                "8192 MiB",
            ],
        );
        fx.config.memory_mib = u64::MAX;
        assert_one_issue(&fx.config, "memory_mib", &["more than 2^64 bytes"]);
    }

    #[test]
    fn kernel_and_initrd_must_be_readable_regular_files() {
        let mut fx = Fixture::new();
        let missing = fx.dir.path().join("nope");
        fx.config.kernel.path = missing.clone();
        assert_one_issue(
            &fx.config,
            "kernel.path",
            &[&missing.display().to_string(), "does not exist"],
        );
        fx.config.kernel.path = fx.dir.path().to_path_buf();
        assert_one_issue(
            &fx.config,
            "kernel.path",
            &["a directory", "not a regular file"],
        );
        fx.config.kernel.path = PathBuf::new();
        assert_one_issue(&fx.config, "kernel.path", &["must not be empty"]);
        fx.config.kernel.path = fx.file("empty-kernel", 0);
        assert_one_issue(&fx.config, "kernel.path", &["is empty"]);

        let mut fx = Fixture::new();
        fx.config.kernel.initrd = Some(missing.clone());
        assert_one_issue(&fx.config, "kernel.initrd", &["nope", "does not exist"]);
        fx.config.kernel.initrd = Some(PathBuf::from("/dev/null"));
        assert_one_issue(&fx.config, "kernel.initrd", &["a special file"]);
    }

    #[test]
    fn cmdline_is_limited_to_4095_bytes_without_nul() {
        let mut fx = Fixture::new();
        fx.config.kernel.cmdline = "x".repeat(4095);
        assert_eq!(issues(&fx.config), Vec::new());
        fx.config.kernel.cmdline = "x".repeat(4096);
        assert_one_issue(
            &fx.config,
            "kernel.cmdline",
            &["4096 bytes", "at most 4095"],
        );
        fx.config.kernel.cmdline = "console=ttyS0\0evil".into();
        assert_one_issue(&fx.config, "kernel.cmdline", &["NUL"]);
    }

    #[test]
    fn disk_images_must_exist_and_be_whole_sectors() {
        let mut fx = Fixture::new();
        let missing = fx.dir.path().join("missing.img");
        fx.config.disks[0].path = missing;
        assert_one_issue(
            &fx.config,
            "disks[0].path",
            &["missing.img", "does not exist"],
        );
        fx.config.disks[0].path = fx.file("odd.img", 1000);
        assert_one_issue(
            &fx.config,
            "disks[0].path",
            &["odd.img", "1000 bytes", "multiple of 512"],
        );
        fx.config.disks[0].path = fx.file("empty.img", 0);
        assert_one_issue(&fx.config, "disks[0].path", &["is empty"]);
        fx.config.disks[0].path = fx.dir.path().to_path_buf();
        assert_one_issue(&fx.config, "disks[0].path", &["not a regular file"]);
        fx.config.disks[0].path = fx.file("ok.img", 4096);
        assert_eq!(issues(&fx.config), Vec::new());
    }

    #[test]
    fn an_image_is_shared_only_read_only() {
        let mut fx = Fixture::new();
        let mut second = fx.config.disks[0].clone();
        second.id = "data".into();
        fx.config.disks.push(second);
        assert_one_issue(&fx.config, "disks[1].path", &["disks[0]", "read-only"]);
        fx.config.disks[0].read_only = true;
        fx.config.disks[1].read_only = true;
        assert_eq!(issues(&fx.config), Vec::new());
    }

    #[test]
    fn disk_serial_is_at_most_20_bytes() {
        let mut fx = Fixture::new();
        fx.config.disks[0].serial = Some("s".repeat(20));
        assert_eq!(issues(&fx.config), Vec::new());
        fx.config.disks[0].serial = Some("s".repeat(21));
        assert_one_issue(&fx.config, "disks[0].serial", &["21 bytes", "at most 20"]);
        // Without a serial the id serves as one.
        fx.config.disks[0].serial = None;
        fx.config.disks[0].id = "d".repeat(21);
        assert_one_issue(&fx.config, "disks[0].id", &["serial", "at most 20"]);
    }

    #[test]
    fn device_ids_are_unique_across_disks_and_nets() {
        let mut fx = Fixture::new();
        fx.config.nets[0].id = "rootdisk".into();
        assert_one_issue(&fx.config, "nets[0].id", &["\"rootdisk\"", "disks[0]"]);
        fx.config.nets[0].id = String::new();
        assert_one_issue(&fx.config, "nets[0].id", &["must not be empty"]);
        fx.config.nets[0].id = "net 0".into();
        assert_one_issue(&fx.config, "nets[0].id", &["contains ' '"]);
    }

    #[test]
    fn tap_names_fit_ifnamsiz_and_are_unique() {
        let mut fx = Fixture::new();
        fx.config.nets[0].tap = "t".repeat(15);
        assert_eq!(issues(&fx.config), Vec::new());
        fx.config.nets[0].tap = "t".repeat(16);
        assert_one_issue(&fx.config, "nets[0].tap", &["16 bytes", "at most 15"]);
        fx.config.nets[0].tap = "tap/0".into();
        assert_one_issue(&fx.config, "nets[0].tap", &["'/'"]);
        fx.config.nets[0].tap = String::new();
        assert_one_issue(&fx.config, "nets[0].tap", &["must not be empty"]);
        fx.config.nets[0].tap = "tap0".into();
        fx.config.nets.push(NetConfig {
            id: "net1".into(),
            tap: "tap0".into(),
            mac: None,
        });
        assert_one_issue(&fx.config, "nets[1].tap", &["nets[0]"]);
    }

    #[test]
    fn macs_must_parse_be_unicast_and_unique() {
        let mut fx = Fixture::new();
        fx.config.nets[0].mac = Some("52:54:00:AB:cd:01".into());
        assert_eq!(issues(&fx.config), Vec::new());
        fx.config.nets[0].mac = Some("52:54:00:ab:cd".into());
        assert_one_issue(&fx.config, "nets[0].mac", &["expected 6 bytes"]);
        fx.config.nets[0].mac = Some("52:54:00:ab:cd:zz".into());
        assert_one_issue(&fx.config, "nets[0].mac", &["byte 6", "\"zz\""]);
        fx.config.nets[0].mac = Some("01:00:5e:00:00:01".into());
        assert_one_issue(&fx.config, "nets[0].mac", &["multicast"]);
        fx.config.nets[0].mac = Some("00:00:00:00:00:00".into());
        assert_one_issue(&fx.config, "nets[0].mac", &["all-zero"]);
        fx.config.nets[0].mac = Some("52:54:00:00:00:01".into());
        fx.config.nets.push(NetConfig {
            id: "net1".into(),
            tap: "tap1".into(),
            mac: Some("52:54:00:00:00:01".into()),
        });
        assert_one_issue(&fx.config, "nets[1].mac", &["52:54:00:00:00:01", "nets[0]"]);
    }

    #[test]
    fn socket_directories_must_exist_and_sockets_differ() {
        let mut fx = Fixture::new();
        let bad = fx.dir.path().join("no-such-dir/api.sock");
        fx.config.api_socket = Some(bad);
        assert_one_issue(&fx.config, "api_socket", &["no-such-dir", "does not exist"]);
        fx.config.api_socket = Some(fx.dir.path().join("x".repeat(120)));
        assert_one_issue(&fx.config, "api_socket", &["at most 107"]);
        fx.config.api_socket = fx.config.console.socket.clone();
        assert_one_issue(&fx.config, "api_socket", &["console.socket"]);
        fx.config.api_socket = None;
        fx.config.agent_socket = Some(PathBuf::from("/nonexistent-dir/agent.sock"));
        assert_one_issue(&fx.config, "agent_socket", &["/nonexistent-dir"]);
        fx.config.agent_socket = None;
        fx.config.console.socket = Some(PathBuf::from("/nonexistent-dir/c.sock"));
        assert_one_issue(&fx.config, "console.socket", &["does not exist"]);
        // A bare file name lives in the current directory, which exists.
        fx.config.console.socket = Some(PathBuf::from("console.sock"));
        assert_eq!(issues(&fx.config), Vec::new());
    }

    #[test]
    fn at_most_19_virtio_devices() {
        let mut fx = Fixture::new();
        fx.config.rng = None;
        // 1 disk + 1 net + agent = 3; add read-only disks sharing one image.
        let image = fx.file("shared.img", 512);
        let add = |config: &mut LaunchConfig, n: usize| {
            for _ in 0..n {
                config.disks.push(DiskConfig {
                    id: format!("ro{}", config.disks.len()),
                    path: image.clone(),
                    format: ImageFormat::Raw,
                    read_only: true,
                    serial: None,
                });
            }
        };
        add(&mut fx.config, 16);
        assert_eq!(fx.config.disks.len() + fx.config.nets.len() + 1, 19);
        assert_eq!(issues(&fx.config), Vec::new());
        add(&mut fx.config, 1);
        assert_one_issue(
            &fx.config,
            "disks/nets/agent_socket",
            &[
                "20 virtio devices",
                "18 disks",
                "1 nets",
                "1 agent",
                "at most 19",
            ],
        );
        fx.config.agent_socket = None;
        assert_eq!(issues(&fx.config), Vec::new());
        // The rng device takes a pin too.
        fx.config.rng = Some(RngConfig::default());
        assert_one_issue(
            &fx.config,
            "disks/nets/agent_socket/rng",
            &["20 virtio devices", "0 agent console, 1 rng", "at most 19"],
        );
    }

    #[test]
    fn console_ring_and_shutdown_timeout_are_checked() {
        let mut fx = Fixture::new();
        fx.config.console.ring_bytes = 0;
        assert_one_issue(&fx.config, "console.ring_bytes", &["greater than 0"]);
        fx.config.console.ring_bytes = MAX_CONSOLE_RING_BYTES + 1;
        assert_one_issue(&fx.config, "console.ring_bytes", &["at most"]);
        fx.config.console.ring_bytes = 4096;
        fx.config.shutdown_timeout_secs = 0;
        assert_one_issue(&fx.config, "shutdown_timeout_secs", &["at least 1"]);
    }

    #[test]
    fn all_problems_are_reported_at_once() {
        let mut fx = Fixture::new();
        fx.config.name = String::new();
        fx.config.vcpus = 0;
        fx.config.memory_mib = 0;
        fx.config.nets[0].tap = "a-very-long-tap-name".into();
        let err = fx.config.validate(&limits()).unwrap_err();
        let ConfigError::Invalid(found) = &err else {
            panic!("unexpected error {err:?}");
        };
        let fields: Vec<&str> = found.iter().map(|i| i.field.as_str()).collect();
        assert_eq!(fields, ["name", "vcpus", "memory_mib", "nets[0].tap"]);
        let text = err.to_string();
        assert!(
            text.starts_with("invalid launch configuration (4 problems):"),
            "{text}"
        );
        assert!(text.contains("\n  - vcpus: must be at least 1"), "{text}");
    }

    // ---- MACs -------------------------------------------------------------------

    #[test]
    fn parse_and_format_mac() {
        assert_eq!(
            parse_mac("52:54:00:0A:bC:ff").unwrap(),
            [0x52, 0x54, 0x00, 0x0a, 0xbc, 0xff]
        );
        assert_eq!(
            format_mac(&[0x52, 0x54, 0x00, 0x0a, 0xbc, 0xff]),
            "52:54:00:0a:bc:ff"
        );
        for bad in [
            "",
            "52:54:00:0a:bc",
            "52:54:00:0a:bc:ff:00",
            "52-54-00-0a-bc-ff",
            "52:54:00:0a:bc:f",
            "52:54:00:0a:bc:+f",
            "52:54:00:0a:bc:fff",
        ] {
            let err = parse_mac(bad).unwrap_err();
            assert!(
                matches!(&err, ConfigError::BadMac { value, .. } if value == bad),
                "{bad}: {err:?}"
            );
        }
    }

    #[test]
    fn mac_for_uses_the_configured_mac() {
        let fx = Fixture::new();
        let net = NetConfig {
            id: "net0".into(),
            tap: "tap0".into(),
            mac: Some("02:00:00:00:00:07".into()),
        };
        assert_eq!(fx.config.mac_for(&net), [2, 0, 0, 0, 0, 7]);
    }

    #[test]
    fn generated_macs_are_stable_local_unicast_and_distinct() {
        let fx = Fixture::new();
        let net = &fx.config.nets[0];
        let mac = fx.config.mac_for(net);
        assert_eq!(mac, fx.config.mac_for(net));
        assert_eq!(mac, generated_mac("vm-1", "net0"));
        assert_eq!(mac[..3], GENERATED_MAC_PREFIX);
        assert_eq!(mac[0] & 0x01, 0, "unicast");
        assert_eq!(mac[0] & 0x02, 0x02, "locally administered");
        // Pinned: the MAC must not change between builds, or guests see new NICs.
        assert_eq!(format_mac(&mac), "52:54:00:5c:df:6b");
        assert_eq!(generated_mac("vm-1", "net0"), generated_mac("vm-1", "net0"));
        assert_ne!(generated_mac("vm-1", "net0"), generated_mac("vm-1", "net1"));
        assert_ne!(generated_mac("vm-1", "net0"), generated_mac("vm-2", "net0"));
        assert_ne!(generated_mac("ab", "c"), generated_mac("a", "bc"));
    }

    // ---- --disk / --net -----------------------------------------------------------

    #[test]
    fn disk_spec_parses() {
        assert_eq!(
            parse_disk_spec("id=root,path=/img/root.raw").unwrap(),
            DiskConfig {
                id: "root".into(),
                path: "/img/root.raw".into(),
                format: ImageFormat::Raw,
                read_only: false,
                serial: None,
            }
        );
        assert_eq!(
            parse_disk_spec("path=/d.img,serial=SN1,ro=on,id=d").unwrap(),
            DiskConfig {
                id: "d".into(),
                path: "/d.img".into(),
                format: ImageFormat::Raw,
                read_only: true,
                serial: Some("SN1".into()),
            }
        );
        for (spec, ro) in [
            ("id=d,path=/p,ro", true),
            ("id=d,path=/p,ro=true", true),
            ("id=d,path=/p,ro=off", false),
            ("id=d,path=/p,ro=false", false),
        ] {
            assert_eq!(parse_disk_spec(spec).unwrap().read_only, ro, "{spec}");
        }
    }

    #[test]
    fn bad_disk_specs_say_why() {
        let cases = [
            ("path=/p", "missing id="),
            ("id=d", "missing path="),
            ("id=d,path=/p,size=1G", "unknown key \"size\""),
            ("id=d,id=e,path=/p", "id is given twice"),
            ("id=,path=/p", "id= has an empty value"),
            ("id=d,path=/p,ro=maybe", "ro=maybe"),
            ("id=d,path=/p,serial", "serial needs a value"),
            ("id=d,,path=/p", "empty key"),
            ("id,path=/p", "id needs a value"),
        ];
        for (spec, needle) in cases {
            let err = parse_disk_spec(spec).unwrap_err();
            match &err {
                ConfigError::BadSpec {
                    flag,
                    value,
                    message,
                } => {
                    assert_eq!(*flag, "disk");
                    assert_eq!(value, spec);
                    assert!(message.contains(needle), "{spec}: {message}");
                }
                other => panic!("{spec}: unexpected error {other:?}"),
            }
            assert!(err.to_string().starts_with("invalid --disk value"));
        }
    }

    #[test]
    fn net_spec_parses() {
        assert_eq!(
            parse_net_spec("id=net0,tap=tap0").unwrap(),
            NetConfig {
                id: "net0".into(),
                tap: "tap0".into(),
                mac: None,
            }
        );
        assert_eq!(
            parse_net_spec("id=net0,tap=tap0,mac=52:54:00:01:02:03")
                .unwrap()
                .mac
                .as_deref(),
            Some("52:54:00:01:02:03")
        );
        let cases = [
            ("tap=tap0", "missing id="),
            ("id=n", "missing tap="),
            ("id=n,tap=t,mac=52:54", "expected 6 bytes"),
            ("id=n,tap=t,model=e1000", "unknown key"),
        ];
        for (spec, needle) in cases {
            let err = parse_net_spec(spec).unwrap_err();
            assert!(
                matches!(&err, ConfigError::BadSpec { flag: "net", message, .. } if message.contains(needle)),
                "{spec}: {err:?}"
            );
        }
    }

    // ---- command line -------------------------------------------------------------

    fn parse_args(args: &[&str]) -> Result<LaunchArgs, clap::Error> {
        LaunchArgs::try_parse_from(
            std::iter::once("ironvisor-launcher").chain(args.iter().copied()),
        )
    }

    #[test]
    fn flags_build_a_config() {
        let args = parse_args(&[
            "--name",
            "vm",
            "--kernel",
            "/k",
            "--initrd",
            "/i",
            "--cmdline",
            "console=ttyS0 quiet",
            "--vcpus",
            "4",
            "--memory-mib",
            "2048",
            "--disk",
            "id=root,path=/r.img",
            "--disk",
            "id=data,path=/d.img,ro=on,serial=D1",
            "--net",
            "id=net0,tap=tap0,mac=52:54:00:00:00:01",
            "--console-socket",
            "/run/c.sock",
            "--stdio",
            "--agent-socket",
            "/run/a.sock",
            "--api-socket",
            "/run/api.sock",
            "--shutdown-timeout-secs",
            "5",
            "--rng-bytes-per-second",
            "65536",
        ])
        .unwrap();
        assert!(!args.print_config);
        let config = args.into_config().unwrap();
        let expected = LaunchConfig {
            name: "vm".into(),
            vcpus: 4,
            vcpu_affinity: Vec::new(),
            memory_mib: 2048,
            kernel: KernelConfig {
                path: "/k".into(),
                initrd: Some("/i".into()),
                cmdline: "console=ttyS0 quiet".into(),
            },
            disks: vec![
                DiskConfig {
                    id: "root".into(),
                    path: "/r.img".into(),
                    format: ImageFormat::Raw,
                    read_only: false,
                    serial: None,
                },
                DiskConfig {
                    id: "data".into(),
                    path: "/d.img".into(),
                    format: ImageFormat::Raw,
                    read_only: true,
                    serial: Some("D1".into()),
                },
            ],
            nets: vec![NetConfig {
                id: "net0".into(),
                tap: "tap0".into(),
                mac: Some("52:54:00:00:00:01".into()),
            }],
            console: ConsoleConfig {
                socket: Some("/run/c.sock".into()),
                ring_bytes: default_ring_bytes(),
                stdio: true,
            },
            agent_socket: Some("/run/a.sock".into()),
            api_socket: Some("/run/api.sock".into()),
            shutdown_timeout_secs: 5,
            backend: BackendKind::Kvm,
            system: SystemIdentity::default(),
            rng: Some(RngConfig::with_rate(65536)),
        };
        assert_eq!(config, expected);
    }

    #[test]
    fn minimal_flags_get_the_json_defaults() {
        let config = parse_args(&["--name", "vm", "--kernel", "/k"])
            .unwrap()
            .into_config()
            .unwrap();
        let json = LaunchConfig::from_json_str(
            r#"{"name": "vm", "kernel": {"path": "/k"}}"#,
            Path::new("inline"),
        )
        .unwrap();
        assert_eq!(config, json);
    }

    #[test]
    fn config_file_is_read_and_print_config_may_accompany_it() {
        let fx = Fixture::new();
        let path = write_json(fx.dir.path(), &fx.config.to_json().unwrap());
        let path_text = path.to_str().unwrap();
        let args = parse_args(&["--config", path_text, "--print-config"]).unwrap();
        assert!(args.print_config);
        assert_eq!(args.into_config().unwrap(), fx.config);
    }

    #[test]
    fn config_file_conflicts_with_config_flags() {
        for extra in [
            &["--name", "vm"][..],
            &["--stdio"][..],
            &["--disk", "id=d,path=/p"][..],
            &["--memory-mib", "1"][..],
            &["--rng-bytes-per-second", "1"][..],
        ] {
            let mut argv = vec!["--config", "/vm.json"];
            argv.extend_from_slice(extra);
            let err = parse_args(&argv).unwrap_err();
            assert_eq!(
                err.kind(),
                clap::error::ErrorKind::ArgumentConflict,
                "{extra:?}"
            );
        }
        // Built by hand (not through clap), into_config refuses it too.
        let args = LaunchArgs {
            config: Some("/vm.json".into()),
            name: Some("vm".into()),
            stdio: true,
            ..LaunchArgs::default()
        };
        let err = args.into_config().unwrap_err();
        assert!(
            matches!(&err, ConfigError::ConfigWithFlags { flags } if flags == &["--name", "--stdio"]),
            "{err:?}"
        );
    }

    #[test]
    fn name_and_kernel_are_required_without_config() {
        let err = parse_args(&["--kernel", "/k"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        let err = parse_args(&["--name", "vm"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        let err = LaunchArgs {
            name: Some("vm".into()),
            ..LaunchArgs::default()
        }
        .into_config()
        .unwrap_err();
        assert!(matches!(err, ConfigError::MissingFlag { flag: "--kernel" }));
    }

    #[test]
    fn disk_flag_takes_a_format_and_refuses_unknown_ones() {
        let disk = parse_disk_spec("id=root,path=/d.qcow2,format=qcow2").unwrap();
        assert_eq!(disk.format, ImageFormat::Qcow2);
        assert_eq!(
            parse_disk_spec("id=r,path=/d").unwrap().format,
            ImageFormat::Raw
        );
        let err = parse_disk_spec("id=r,path=/d,format=vmdk").unwrap_err();
        assert!(
            err.to_string()
                .contains("format=vmdk is not one of raw, qcow2"),
            "{err}"
        );
    }

    #[test]
    fn bad_disk_flag_is_a_clap_value_error_naming_the_problem() {
        let err = parse_args(&["--name", "vm", "--kernel", "/k", "--disk", "id=d"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
        let text = err.to_string();
        assert!(text.contains("--disk"), "{text}");
        assert!(text.contains("missing path="), "{text}");
    }

    #[test]
    fn command_definition_is_consistent() {
        use clap::CommandFactory;
        LaunchArgs::command().debug_assert();
    }
}
