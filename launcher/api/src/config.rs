//! The launcher's one typed configuration: read from a JSON file or built from flags,
//! validated before anything is created.
//!
//! - [`LaunchConfig::from_json_file`] reads the JSON form (unknown fields are refused).
//! - [`LaunchArgs`] is the command line: either `--config FILE` or one flag per field.
//! - [`LaunchConfig::validate`] checks everything that can be checked before the VM is
//!   built, against the host's [`HostLimits`], and reports every problem at once.
//! - [`SystemIdentity`] (module `system`): the SMBIOS system UUID and serial number.
//! - [`RngConfig`] (module `rng`): the rate-limited virtio-rng entropy device.
//! - [`KernelConfig`] and [`FirmwareConfig`] (module `boot`): what the VM boots.

use std::collections::HashMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use clap::Parser;
use ironvisor_arch::layout::{CMDLINE_MAX_SIZE, IOAPIC_PINS, VIRTIO_FIRST_GSI};
use serde::{Deserialize, Serialize};

use crate::cpulist;

mod rate_limit;
pub use rate_limit::RateLimitConfig;

mod rng;
pub use rng::{RngConfig, DEFAULT_RNG_BYTES_PER_SECOND, MAX_RNG_BYTES_PER_SECOND};

mod boot;
pub use boot::{
    cmdline_problem, Boot, FirmwareConfig, FirmwareKind, KernelConfig, DEFAULT_CMDLINE,
};

mod cli;
pub use cli::{
    parse_affinity_spec, parse_disk_spec, parse_net_spec, parse_topology_spec, LaunchArgs,
};

mod machine;
pub use machine::{ClockConfig, CpuTopologyConfig, MAX_RTC_OFFSET_SECONDS};

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
    /// A kernel to boot directly. Exactly one of `kernel` and `firmware` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<KernelConfig>,
    /// Boot what one of the disks boots by itself (its own bootloader's configuration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<FirmwareConfig>,
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
    /// Sockets, cores and threads the vCPUs form (KubeVirt's `cpu.sockets/cores/threads`).
    /// Absent: every vCPU a single-threaded core of one socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_topology: Option<CpuTopologyConfig>,
    /// The guest's real-time clock (default: UTC).
    #[serde(default, skip_serializing_if = "ClockConfig::is_utc")]
    pub clock: ClockConfig,
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
    /// Bytes and requests per second the guest gets served; none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitConfig>,
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
    /// Bytes and frames per second in each direction; none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitConfig>,
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
    /// A flag given without the one it qualifies: `--initrd` or `--cmdline` without
    /// `--kernel` (a `--boot-disk` boot reads both from the disk), `--firmware` without
    /// `--boot-disk`.
    #[error("{flag} goes with {needs}, which is not given")]
    FlagWithout {
        /// The flag given.
        flag: &'static str,
        /// The flag it qualifies.
        needs: &'static str,
    },
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
        self.check_boot(&mut issues);
        self.check_disks(&mut issues);
        self.check_nets(&mut issues);
        self.check_device_ids(&mut issues);
        self.check_sockets(&mut issues);
        self.check_device_count(&mut issues);
        self.system.check(&mut issues);
        if let Some(rng) = &self.rng {
            rng.check(&mut issues);
        }
        if let Some(topology) = &self.cpu_topology {
            topology.check(self.vcpus, &mut issues);
        }
        self.clock.check(&mut issues);
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

    /// How the vCPUs are arranged: the configured topology, or `vcpus` cores of one
    /// socket. Meaningful once [`Self::validate`] passed.
    pub fn topology(&self) -> ironvisor_arch::topology::CpuTopology {
        self.cpu_topology
            .and_then(|t| ironvisor_arch::topology::CpuTopology::new(t.sockets, t.cores, t.threads))
            .unwrap_or_else(|| ironvisor_arch::topology::CpuTopology::flat(self.vcpus))
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

    fn check_disks(&self, issues: &mut Issues) {
        // Canonical image path -> (index, read_only) of the first disk using it.
        let mut images: HashMap<PathBuf, (usize, bool)> = HashMap::new();
        for (i, disk) in self.disks.iter().enumerate() {
            let field = format!("disks[{i}].path");
            if let Some(size) = check_disk_image(issues, &field, &disk.path, !disk.read_only) {
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
            if let Some(limit) = &disk.rate_limit {
                limit.check(&format!("disks[{i}].rate_limit"), issues);
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
            if let Some(limit) = &net.rate_limit {
                limit.check(&format!("nets[{i}].rate_limit"), issues);
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
/// A disk image is a regular file or a block device (a Block-mode volume); its size.
fn check_disk_image(issues: &mut Issues, field: &str, path: &Path, writable: bool) -> Option<u64> {
    let is_block = std::fs::metadata(path)
        .map(|m| std::os::unix::fs::FileTypeExt::is_block_device(&m.file_type()))
        .unwrap_or(false);
    if !is_block {
        return check_regular_file(issues, field, path, writable);
    }
    let opened = OpenOptions::new().read(true).write(writable).open(path);
    // A block device's size is where its end is; its metadata says 0.
    match opened.and_then(|mut f| std::io::Seek::seek(&mut f, io::SeekFrom::End(0))) {
        Ok(size) => Some(size),
        Err(e) => {
            let access = if writable {
                "readable and writable"
            } else {
                "readable"
            };
            issues.push(
                field,
                format!("block device {} is not {access}: {e}", path.display()),
            );
            None
        }
    }
}

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

#[cfg(test)]
mod cli_tests;
#[cfg(test)]
mod tests;
