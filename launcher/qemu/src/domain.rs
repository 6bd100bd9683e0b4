//! The libvirt domain of one VM: a [`DomainPlan`] resolved from the launch configuration
//! (absolute paths, disk formats, MACs, device names), and its XML.
//!
//! The domain is a QEMU TCG guest (`type='qemu'`) on the `pc` machine with direct kernel
//! boot or, for a configuration with `firmware`, SeaBIOS (`bios`) or OVMF (`efi`) booting
//! the boot disk's own bootloader; virtio-pci disks and NICs, the first UART on a unix socket that the launcher
//! reads, and lifecycle actions chosen so the launcher can tell how the guest ended:
//! poweroff and crash destroy the domain, while a reboot resets it in place and raises a
//! libvirt reboot event, on which the launcher destroys it (libvirt reports a reset under
//! `on_reboot=destroy` exactly like a poweroff, so that setting would lose the
//! distinction).
//!
//! The guest's SMBIOS system information names the same manufacturer, product and version
//! as under the KVM launcher (`<sysinfo type='smbios'>` with `<smbios mode='sysinfo'/>`),
//! with the configured serial number and UUID; the UUID is also the domain's `<uuid>`,
//! which libvirt requires to match. Without a configured UUID libvirt picks a random one,
//! so unlike the KVM launcher's all-zero UUID the guest sees some UUID.
//!
//! An entropy device (`rng` in the configuration) is a virtio-rng-pci device reading the
//! host's `/dev/urandom` (`<backend model='random'>`; libvirt accepts any path since
//! 1.3.4), rate-limited by QEMU to the configured bytes per second (`<rate bytes=N
//! period='1000'/>`, period in milliseconds), the rate the KVM launcher enforces.
//!
//! A disk's rate limit is libvirt's `<iotune>` (`total_bytes_sec`, `total_iops_sec`);
//! a NIC's is applied by the launcher's own frame relay (see [`crate::relay`]), with the
//! same token buckets as the KVM launcher's virtio-net.
//!
//! NICs are not libvirt `<interface>`s: libvirtd opens those in its own network namespace.
//! Each NIC is a `-netdev dgram` + `virtio-net-pci` pair passed through with
//! `<qemu:commandline>` ([`crate::qemu_args`]), talking to the launcher's frame relay
//! over unix sockets in the runtime directory ([`crate::relay`]).

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};

use ironvisor_arch::topology::CpuTopology;
use ironvisor_launcher::config::{
    format_mac, Boot, ConfigError, FirmwareKind, ImageFormat, LaunchConfig, RateLimitConfig,
    SYSTEM_MANUFACTURER, SYSTEM_PRODUCT_NAME, SYSTEM_VERSION,
};
use ironvisor_launcher_api::control::DeviceStatus;

use crate::qemu_args::{self, QEMU_NAMESPACE, QEMU_PREFIX};

/// Prefix of every domain the launcher creates: the domain of VM `x` is `ironvisor-x`.
pub const DOMAIN_PREFIX: &str = "ironvisor-";
/// XML namespace of the launcher's domain metadata.
pub const METADATA_NAMESPACE: &str = "https://ironvisor.io/libvirt/launcher/v1";
/// Prefix used for [`METADATA_NAMESPACE`] in the domain XML.
pub const METADATA_PREFIX: &str = "ironvisor";
/// QEMU machine type: i440fx, legacy PCI (virtio-pci needs no PCIe root ports there).
pub const MACHINE_TYPE: &str = "pc";
/// Size of QEMU's TCG translation-block cache: its default (1 GiB on hosts with memory to
/// spare) grows the QEMU process beyond guest memory by that much during a long boot, and
/// the memory limit of the launcher pod killed it; 128 MiB holds a Linux guest's hot code.
pub const TCG_TB_CACHE_MIB: u32 = 128;
/// First bytes of a qcow2 image ("QFI\xfb").
pub const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";

/// Why the domain could not be planned. Each variant names the device and the file.
#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    /// The configuration does not say what to boot.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The firmware the boot disk needs is not installed.
    #[error("firmware {kind}: {path} is not installed (Debian package ovmf)")]
    NoFirmware {
        /// "efi".
        kind: &'static str,
        /// The missing file.
        path: PathBuf,
    },
    /// A file the domain refers to could not be resolved to an absolute path.
    #[error("{what} {path}: cannot resolve the absolute path: {source}")]
    Resolve {
        /// "kernel", "initrd", "disks[0]", ...
        what: String,
        /// The path from the configuration.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The current directory is needed to make a socket path absolute and is unknown.
    #[error("{what} {path} is relative and the current directory is unknown: {source}")]
    CurrentDir {
        /// "agent_socket".
        what: &'static str,
        /// The relative path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

/// On-disk format of a disk image, as QEMU's block driver names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    /// Plain raw image.
    Raw,
    /// QEMU copy-on-write v2/v3.
    Qcow2,
}

impl DiskFormat {
    /// The `type` attribute of the disk's `<driver>`.
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
    }
}

/// The libvirt domain name of VM `vm`.
pub fn domain_name(vm: &str) -> String {
    format!("{DOMAIN_PREFIX}{vm}")
}

/// Guest device name of the `index`-th virtio disk: vda, vdb, ..., vdz, vdaa, vdab, ...
pub fn disk_target(index: usize) -> String {
    let mut letters = Vec::new();
    let mut n = index + 1;
    while n > 0 {
        n -= 1;
        letters.push(b'a' + (n % 26) as u8);
        n /= 26;
    }
    letters.reverse();
    format!("vd{}", String::from_utf8_lossy(&letters))
}

/// One disk as the domain sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedDisk {
    /// Device id from the configuration.
    pub id: String,
    /// Absolute path of the image.
    pub path: PathBuf,
    /// Detected image format.
    pub format: DiskFormat,
    /// Attach read-only.
    pub read_only: bool,
    /// Serial reported to the guest (the id when none is configured).
    pub serial: String,
    /// Guest device name ("vda").
    pub target: String,
    /// The path is a host block device (a Block-mode volume), given to QEMU as one.
    pub block_device: bool,
    /// Most bytes and requests per second (libvirt `<iotune>`); `None`: unlimited.
    pub rate_limit: Option<RateLimitConfig>,
}

/// One NIC as the domain sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedNet {
    /// Device id from the configuration.
    pub id: String,
    /// Host tap device (opened by the launcher, in the launcher's network namespace).
    pub tap: String,
    /// Guest MAC, "52:54:00:12:34:56".
    pub mac: String,
    /// The launcher's relay socket (QEMU's `remote.path`).
    pub relay_socket: PathBuf,
    /// QEMU's socket (its `local.path`), which QEMU binds at start-up.
    pub qemu_socket: PathBuf,
    /// Most bytes and frames per second in each direction, applied by the launcher's frame
    /// relay; `None`: unlimited.
    pub rate_limit: Option<RateLimitConfig>,
}

/// Host entropy source of the guest's virtio-rng device under QEMU.
pub const RNG_BACKEND: &str = "/dev/urandom";

/// Name of the serial socket in the runtime directory.
pub const SERIAL_SOCKET: &str = "serial.sock";

/// The relay's and QEMU's socket paths of the `index`-th NIC in `runtime_dir`. Named by
/// index, so any NIC id fits a unix socket address.
pub fn nic_socket_paths(runtime_dir: &Path, index: usize) -> (PathBuf, PathBuf) {
    (
        runtime_dir.join(format!("nic{index}.sock")),
        runtime_dir.join(format!("nic{index}-qemu.sock")),
    )
}

/// What the guest boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlannedBoot {
    /// Direct kernel boot.
    Kernel {
        /// Absolute kernel path.
        kernel: PathBuf,
        /// Absolute initrd path.
        initrd: Option<PathBuf>,
        /// Kernel command line.
        cmdline: String,
    },
    /// SeaBIOS (`bios`) or OVMF (`efi`) boots the disk with this index in `disks`.
    Firmware {
        /// Which firmware.
        kind: FirmwareKind,
        /// The boot disk's index in [`DomainPlan::disks`].
        disk: usize,
        /// Where the guest's UEFI variables live (`efi` only): a copy of
        /// [`OVMF_VARS`] in the runtime directory.
        nvram: PathBuf,
    },
}

/// Debian's OVMF (package `ovmf`) without Secure Boot, 4 MiB flash layout.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
/// The variable store template matching [`OVMF_CODE`].
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// Name of the guest's UEFI variable store in the runtime directory.
pub const NVRAM_FILE: &str = "efivars.fd";

/// Everything the domain XML needs, resolved from a validated [`LaunchConfig`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainPlan {
    /// libvirt domain name (`ironvisor-<vm>`).
    pub domain_name: String,
    /// VM name from the configuration.
    pub vm_name: String,
    /// Process id of the launcher that owns the domain (recorded in the metadata, so a
    /// later launcher can tell a live owner from a leftover).
    pub launcher_pid: u32,
    /// Number of vCPUs.
    pub vcpus: u32,
    /// Host CPUs of each vCPU thread (empty: unpinned), as in the configuration.
    pub vcpu_affinity: Vec<Vec<u32>>,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// What the guest boots.
    pub boot: PlannedBoot,
    /// Disks in guest order.
    pub disks: Vec<PlannedDisk>,
    /// NICs in guest order.
    pub nets: Vec<PlannedNet>,
    /// Unix socket QEMU listens on for the first UART (ttyS0).
    pub serial_socket: PathBuf,
    /// Unix socket QEMU listens on for the guest agent's virtio-serial port.
    pub agent_socket: Option<PathBuf>,
    /// System UUID (lowercase RFC 4122 text): the domain's `<uuid>` and the SMBIOS system
    /// UUID. `None`: libvirt generates the domain's UUID.
    pub system_uuid: Option<String>,
    /// SMBIOS system serial number (`None` when not configured or empty).
    pub system_serial: Option<String>,
    /// Rate of the virtio-rng device in bytes per second (`None`: no entropy device).
    pub rng_bytes_per_second: Option<u64>,
    /// Sockets, cores per socket and threads per core of the vCPUs.
    pub cpu_topology: CpuTopology,
    /// Seconds the guest's RTC runs ahead of UTC (0: UTC).
    pub rtc_offset_seconds: i64,
}

impl DomainPlan {
    /// Resolves `config` (already validated) into a plan: absolute paths, detected disk
    /// formats, MACs (generated ones included), guest device names, and the sockets in
    /// the launcher's `runtime_dir` (serial console, one pair per NIC).
    pub fn from_config(
        config: &LaunchConfig,
        runtime_dir: &Path,
        launcher_pid: u32,
    ) -> Result<Self, DomainError> {
        let serial_socket = runtime_dir.join(SERIAL_SOCKET);
        let boot = match config.boot()? {
            Boot::Kernel(kernel) => PlannedBoot::Kernel {
                kernel: absolute_file("kernel", &kernel.path)?,
                initrd: kernel
                    .initrd
                    .as_deref()
                    .map(|path| absolute_file("initrd", path))
                    .transpose()?,
                cmdline: emulation_cmdline(&kernel.cmdline),
            },
            Boot::Firmware { kind, disk } => {
                if kind == FirmwareKind::Efi && !Path::new(OVMF_CODE).is_file() {
                    return Err(DomainError::NoFirmware {
                        kind: kind.as_str(),
                        path: OVMF_CODE.into(),
                    });
                }
                PlannedBoot::Firmware {
                    kind,
                    disk: config
                        .disks
                        .iter()
                        .position(|d| d.id == disk.id)
                        .unwrap_or(0),
                    nvram: runtime_dir.join(NVRAM_FILE),
                }
            }
        };
        let mut disks = Vec::with_capacity(config.disks.len());
        for (index, disk) in config.disks.iter().enumerate() {
            let path = absolute_file(&format!("disks[{index}] ({})", disk.id), &disk.path)?;
            // The format the disk was made with; never probed (a guest can write a qcow2
            // header into a raw disk).
            let format = match disk.format {
                ImageFormat::Raw => DiskFormat::Raw,
                ImageFormat::Qcow2 => DiskFormat::Qcow2,
            };
            let block_device = std::fs::metadata(&path)
                .map(|m| std::os::unix::fs::FileTypeExt::is_block_device(&m.file_type()))
                .unwrap_or(false);
            disks.push(PlannedDisk {
                id: disk.id.clone(),
                block_device,
                path,
                format,
                read_only: disk.read_only,
                serial: disk.serial.clone().unwrap_or_else(|| disk.id.clone()),
                target: disk_target(index),
                rate_limit: disk.rate_limit,
            });
        }
        let nets = config
            .nets
            .iter()
            .enumerate()
            .map(|(index, net)| {
                let (relay_socket, qemu_socket) = nic_socket_paths(runtime_dir, index);
                PlannedNet {
                    id: net.id.clone(),
                    tap: net.tap.clone(),
                    mac: format_mac(&config.mac_for(net)),
                    relay_socket,
                    qemu_socket,
                    rate_limit: net.rate_limit,
                }
            })
            .collect();
        let agent_socket = config
            .agent_socket
            .as_deref()
            .map(|path| absolute_socket("agent_socket", path))
            .transpose()?;
        Ok(Self {
            domain_name: domain_name(&config.name),
            vm_name: config.name.clone(),
            launcher_pid,
            vcpus: config.vcpus,
            vcpu_affinity: config.vcpu_affinity.clone(),
            memory_mib: config.memory_mib,
            boot,
            disks,
            nets,
            serial_socket,
            agent_socket,
            system_uuid: config.system.uuid.as_ref().map(|u| u.to_ascii_lowercase()),
            system_serial: config.system.serial.clone().filter(|s| !s.is_empty()),
            rng_bytes_per_second: config.rng.map(|rng| rng.bytes_per_second),
            cpu_topology: config.topology(),
            rtc_offset_seconds: config.clock.rtc_offset_seconds,
        })
    }

    /// Every socket in the runtime directory (serial, then the NICs' pairs), for the
    /// unix-socket path length check.
    pub fn runtime_sockets(&self) -> Vec<&Path> {
        let mut sockets = vec![self.serial_socket.as_path()];
        for net in &self.nets {
            sockets.push(&net.relay_socket);
            sockets.push(&net.qemu_socket);
        }
        sockets
    }

    /// The devices as the control API reports them (same kinds and ids as the KVM
    /// launcher; backends are the host files, taps and sockets).
    pub fn devices(&self, console_socket: Option<&Path>) -> Vec<DeviceStatus> {
        let mut devices = vec![DeviceStatus {
            kind: "serial".into(),
            id: "ttyS0".into(),
            mac: None,
            backend: console_socket
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| self.serial_socket.display().to_string()),
            read_only: false,
        }];
        devices.extend(self.disks.iter().map(|disk| DeviceStatus {
            kind: "virtio-blk".into(),
            id: disk.id.clone(),
            mac: None,
            backend: disk.path.display().to_string(),
            read_only: disk.read_only,
        }));
        devices.extend(self.nets.iter().map(|net| DeviceStatus {
            kind: "virtio-net".into(),
            id: net.id.clone(),
            mac: Some(net.mac.clone()),
            backend: net.tap.clone(),
            read_only: false,
        }));
        if let Some(path) = &self.agent_socket {
            devices.push(DeviceStatus {
                kind: "virtio-console".into(),
                id: "agent".into(),
                mac: None,
                backend: path.display().to_string(),
                read_only: false,
            });
        }
        if let Some(rate) = self.rng_bytes_per_second {
            devices.push(DeviceStatus {
                kind: "virtio-rng".into(),
                id: "rng".into(),
                mac: None,
                backend: format!("{RNG_BACKEND} ({rate} bytes/s)"),
                read_only: false,
            });
        }
        devices
    }

    /// The libvirt domain XML.
    pub fn to_xml(&self) -> String {
        let mut xml = String::with_capacity(4096);
        let x = &mut xml;
        line(
            x,
            0,
            &format!(
                "<domain type='qemu' xmlns:{METADATA_PREFIX}='{}' xmlns:{QEMU_PREFIX}='{}'>",
                escape(METADATA_NAMESPACE),
                escape(QEMU_NAMESPACE)
            ),
        );
        line(x, 1, &format!("<name>{}</name>", escape(&self.domain_name)));
        if let Some(uuid) = &self.system_uuid {
            line(x, 1, &format!("<uuid>{}</uuid>", escape(uuid)));
        }
        line(
            x,
            1,
            &format!(
                "<title>Ironvisor VM {} (software emulation)</title>",
                escape(&self.vm_name)
            ),
        );
        line(x, 1, "<metadata>");
        line(
            x,
            2,
            &format!(
                "<{METADATA_PREFIX}:launcher vm='{}' pid='{}'/>",
                escape(&self.vm_name),
                self.launcher_pid
            ),
        );
        line(x, 1, "</metadata>");
        line(
            x,
            1,
            &format!("<memory unit='MiB'>{}</memory>", self.memory_mib),
        );
        line(
            x,
            1,
            &format!(
                "<currentMemory unit='MiB'>{}</currentMemory>",
                self.memory_mib
            ),
        );
        line(
            x,
            1,
            &format!("<vcpu placement='static'>{}</vcpu>", self.vcpus),
        );
        if !self.vcpu_affinity.is_empty() {
            line(x, 1, "<cputune>");
            for (vcpu, cpus) in self.vcpu_affinity.iter().enumerate() {
                line(
                    x,
                    2,
                    &format!(
                        "<vcpupin vcpu='{vcpu}' cpuset='{}'/>",
                        ironvisor_launcher_api::cpulist::format(cpus)
                    ),
                );
            }
            line(x, 1, "</cputune>");
        }
        self.sysinfo_xml(x);
        line(x, 1, "<os>");
        line(
            x,
            2,
            &format!("<type arch='x86_64' machine='{MACHINE_TYPE}'>hvm</type>"),
        );
        // SMBIOS type 1 from <sysinfo> rather than QEMU's defaults.
        line(x, 2, "<smbios mode='sysinfo'/>");
        self.boot_xml(x);
        line(x, 1, "</os>");
        // TCG's translation cache is 1 GiB by default on a large host, which a long boot
        // fills; bounded, QEMU stays within the pod's or cgroup's memory overhead.
        line(
            x,
            1,
            &format!(
                "<features><acpi/><apic/><tcg><tb-cache unit='MiB'>{TCG_TB_CACHE_MIB}</tb-cache></tcg></features>"
            ),
        );
        let topology = &self.cpu_topology;
        line(
            x,
            1,
            &format!(
                "<cpu><topology sockets='{}' dies='1' cores='{}' threads='{}'/></cpu>",
                topology.sockets(),
                topology.cores(),
                topology.threads()
            ),
        );
        if self.rtc_offset_seconds == 0 {
            line(x, 1, "<clock offset='utc'/>");
        } else {
            // The RTC starts this far from UTC and then runs with the host's clock.
            line(
                x,
                1,
                &format!(
                    "<clock offset='variable' adjustment='{}' basis='utc'/>",
                    self.rtc_offset_seconds
                ),
            );
        }
        line(x, 1, "<on_poweroff>destroy</on_poweroff>");
        // Reset in place and report it (reboot event); the launcher then destroys the
        // domain and exits with the reboot code. See the module documentation.
        line(x, 1, "<on_reboot>restart</on_reboot>");
        line(x, 1, "<on_crash>destroy</on_crash>");
        line(x, 1, "<devices>");
        for (index, disk) in self.disks.iter().enumerate() {
            self.disk_xml(x, index, disk);
        }
        line(x, 2, "<serial type='unix'>");
        line(
            x,
            3,
            &format!(
                "<source mode='bind' path='{}'/>",
                escape_path(&self.serial_socket)
            ),
        );
        line(x, 3, "<target port='0'/>");
        line(x, 2, "</serial>");
        if let Some(agent) = &self.agent_socket {
            // A virtio console port, /dev/hvc0 in the guest, as with the KVM launcher.
            line(x, 2, "<console type='unix'>");
            line(
                x,
                3,
                &format!("<source mode='bind' path='{}'/>", escape_path(agent)),
            );
            line(x, 3, "<target type='virtio' port='0'/>");
            line(x, 2, "</console>");
        }
        if let Some(rate) = self.rng_bytes_per_second {
            // bytes per period (ms): the same rate, and a one-second burst, as under KVM.
            line(x, 2, "<rng model='virtio'>");
            line(x, 3, &format!("<rate bytes='{rate}' period='1000'/>"));
            line(
                x,
                3,
                &format!("<backend model='random'>{}</backend>", escape(RNG_BACKEND)),
            );
            line(x, 2, "</rng>");
        }
        // A guest that loads pvpanic reports kernel panics, which on_crash turns into a
        // crash; without it, panic=N reboots and the launcher reports a reboot.
        line(x, 2, "<panic model='isa'/>");
        line(x, 2, "<controller type='usb' model='none'/>");
        line(x, 2, "<memballoon model='none'/>");
        line(x, 2, "<video><model type='none'/></video>");
        line(x, 1, "</devices>");
        if !self.nets.is_empty() {
            line(x, 1, &format!("<{QEMU_PREFIX}:commandline>"));
            for (index, net) in self.nets.iter().enumerate() {
                for arg in qemu_args::nic_args(index, &net.mac, &net.qemu_socket, &net.relay_socket)
                {
                    line(
                        x,
                        2,
                        &format!("<{QEMU_PREFIX}:arg value='{}'/>", escape(&arg)),
                    );
                }
            }
            line(x, 1, &format!("</{QEMU_PREFIX}:commandline>"));
        }
        line(x, 0, "</domain>");
        xml
    }

    /// `<sysinfo type='smbios'>`: the SMBIOS system information (type 1) entries.
    fn sysinfo_xml(&self, x: &mut String) {
        let entry = |x: &mut String, name: &str, value: &str| {
            line(
                x,
                3,
                &format!("<entry name='{name}'>{}</entry>", escape(value)),
            );
        };
        line(x, 1, "<sysinfo type='smbios'>");
        line(x, 2, "<system>");
        entry(x, "manufacturer", SYSTEM_MANUFACTURER);
        entry(x, "product", SYSTEM_PRODUCT_NAME);
        entry(x, "version", SYSTEM_VERSION);
        if let Some(serial) = &self.system_serial {
            entry(x, "serial", serial);
        }
        if let Some(uuid) = &self.system_uuid {
            entry(x, "uuid", uuid);
        }
        line(x, 2, "</system>");
        line(x, 1, "</sysinfo>");
    }

    /// The `<os>` elements that say what boots: the kernel, or the firmware (SeaBIOS is
    /// QEMU's default; OVMF is a read-only flash with a per-VM variable store).
    fn boot_xml(&self, x: &mut String) {
        match &self.boot {
            PlannedBoot::Kernel {
                kernel,
                initrd,
                cmdline,
            } => {
                line(x, 2, &format!("<kernel>{}</kernel>", escape_path(kernel)));
                if let Some(initrd) = initrd {
                    line(x, 2, &format!("<initrd>{}</initrd>", escape_path(initrd)));
                }
                line(x, 2, &format!("<cmdline>{}</cmdline>", escape(cmdline)));
            }
            PlannedBoot::Firmware {
                kind: FirmwareKind::Bios,
                ..
            } => {}
            PlannedBoot::Firmware {
                kind: FirmwareKind::Efi,
                nvram,
                ..
            } => {
                line(
                    x,
                    2,
                    &format!(
                        "<loader readonly='yes' secure='no' type='pflash'>{OVMF_CODE}</loader>"
                    ),
                );
                line(
                    x,
                    2,
                    &format!(
                        "<nvram template='{OVMF_VARS}'>{}</nvram>",
                        escape_path(nvram)
                    ),
                );
            }
        }
    }

    /// Whether the disk at `index` is the one the firmware boots.
    fn boots_from(&self, index: usize) -> bool {
        matches!(self.boot, PlannedBoot::Firmware { disk, .. } if disk == index)
    }

    fn disk_xml(&self, x: &mut String, index: usize, disk: &PlannedDisk) {
        // libvirt opens a block device with QEMU's host_device driver only as a
        // type='block' disk; its 'file' driver refuses anything but a regular file.
        let (kind, attribute) = if disk.block_device {
            ("block", "dev")
        } else {
            ("file", "file")
        };
        line(x, 2, &format!("<disk type='{kind}' device='disk'>"));
        line(
            x,
            3,
            &format!("<driver name='qemu' type='{}'/>", disk.format.as_str()),
        );
        line(
            x,
            3,
            &format!("<source {attribute}='{}'/>", escape_path(&disk.path)),
        );
        line(
            x,
            3,
            &format!("<target dev='{}' bus='virtio'/>", disk.target),
        );
        line(x, 3, &format!("<serial>{}</serial>", escape(&disk.serial)));
        if disk.read_only {
            line(x, 3, "<readonly/>");
        }
        if let Some(limit) = &disk.rate_limit {
            line(x, 3, "<iotune>");
            if let Some(bytes) = limit.bytes_per_second {
                line(x, 4, &format!("<total_bytes_sec>{bytes}</total_bytes_sec>"));
            }
            if let Some(ops) = limit.ops_per_second {
                line(x, 4, &format!("<total_iops_sec>{ops}</total_iops_sec>"));
            }
            line(x, 3, "</iotune>");
        }
        if self.boots_from(index) {
            line(x, 3, "<boot order='1'/>");
        }
        line(
            x,
            3,
            &format!("<alias name='ua-disk-{}'/>", escape(&disk.id)),
        );
        line(x, 2, "</disk>");
    }
}

/// The launcher pid recorded in a domain's metadata element (as returned by
/// `virDomainGetMetadata` for [`METADATA_NAMESPACE`], or the whole domain XML).
pub fn launcher_pid_from_metadata(xml: &str) -> Option<u32> {
    let start = xml.find("launcher ")?;
    let element = &xml[start..];
    let element = &element[..element.find('>')?];
    let at = element.find("pid=")?;
    let rest = &element[at + 4..];
    let quote = rest.chars().next().filter(|c| *c == '\'' || *c == '"')?;
    let rest = &rest[1..];
    let end = rest.find(quote)?;
    rest[..end].parse().ok()
}

fn line(xml: &mut String, depth: usize, text: &str) {
    // Writing to a String cannot fail.
    let _ = writeln!(xml, "{:indent$}{text}", "", indent = depth * 2);
}

/// Escapes text for XML element content and single- or double-quoted attributes.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

fn escape_path(path: &Path) -> String {
    escape(&path.to_string_lossy())
}

fn absolute_file(what: &str, path: &Path) -> Result<PathBuf, DomainError> {
    path.canonicalize().map_err(|source| DomainError::Resolve {
        what: what.to_string(),
        path: path.to_path_buf(),
        source,
    })
}

fn absolute_socket(what: &'static str, path: &Path) -> Result<PathBuf, DomainError> {
    if path.is_absolute() {
        return Ok(path.to_path_buf());
    }
    let cwd = std::env::current_dir().map_err(|source| DomainError::CurrentDir {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    Ok(cwd.join(path))
}

/// The guest kernel's command line under emulation: the VM's own, plus `no_timer_check`.
/// Linux checks at boot that the timer interrupt arrives through the IO-APIC within a few
/// milliseconds and panics ("IO-APIC + timer doesn't work!") when it does not; a TCG vCPU
/// starved of host CPU (many guests booting at once on a small node) misses that window
/// although the timer works. The parameter skips only that check.
fn emulation_cmdline(cmdline: &str) -> String {
    if cmdline.split_whitespace().any(|arg| arg == NO_TIMER_CHECK) {
        return cmdline.to_string();
    }
    if cmdline.trim().is_empty() {
        return NO_TIMER_CHECK.to_string();
    }
    format!("{cmdline} {NO_TIMER_CHECK}")
}

const NO_TIMER_CHECK: &str = "no_timer_check";

#[cfg(test)]
mod tests;
