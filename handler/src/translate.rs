//! Turns a VM's instance spec into the launcher's [`LaunchConfig`].
//!
//! # Kernel images (`firmware.kernelBoot.container`)
//!
//! In standalone mode there is no registry: a kernel-boot image is a **directory** in the
//! images directory (`--images-dir`) holding the image's file tree, next to the disk
//! images of the same store (which are files, see `ironvisor-disks`):
//!
//! | reference | directory |
//! |---|---|
//! | `ironvisor/guest-kernel:debian-6.1` | `<images>/ironvisor/guest-kernel/debian-6.1/` |
//! | `ironvisor/guest-kernel` (no tag) | `<images>/ironvisor/guest-kernel/latest/` |
//! | `ironvisor/guest-kernel@sha256:ab12…` | `<images>/ironvisor/guest-kernel/sha256-ab12…/` |
//!
//! `kernelPath` and `initrdPath` are absolute paths inside that tree
//! (`kernelPath: /boot/vmlinuz` → `<dir>/boot/vmlinuz`); `..` is refused. A VM without
//! `kernelBoot` boots its first disk's own bootloader (`firmware.bootloader`, BIOS when
//! unset, as in KubeVirt), unless the node agent was started with `--default-kernel`
//! (then that kernel and `--default-initrd`, when the VM sets no `bootloader`).
//!
//! The kernel command line is `console=ttyS0 reboot=k panic=1` followed by `kernelArgs`.

use std::path::{Component, Path, PathBuf};

use ironvisor_crds::quantity;
use ironvisor_crds::v1alpha1::{
    DeviceRateLimit, KernelBoot, KernelBootContainer, VirtualMachineInstanceSpec,
};
use ironvisor_launcher_api::config::{
    ClockConfig, ConsoleConfig, CpuTopologyConfig, DiskConfig, FirmwareConfig, FirmwareKind,
    KernelConfig, LaunchConfig, NetConfig, RateLimitConfig, RngConfig, SystemIdentity,
};

use crate::records::VmKey;

/// The command line every guest gets, before `kernelArgs`.
pub const BASE_CMDLINE: &str = "console=ttyS0 reboot=k panic=1";
/// Tag used when an image reference has none.
pub const DEFAULT_TAG: &str = "latest";
/// Console bytes the launcher keeps for late attachers (the boot log).
pub const CONSOLE_RING_BYTES: usize = 1024 * 1024;

const MIB: u64 = 1024 * 1024;

/// Why a VM cannot be turned into a launch configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    /// The image reference cannot be mapped to a directory.
    #[error("VM {vm}: kernel image reference {reference:?} is invalid: {reason}")]
    InvalidReference {
        /// The VM.
        vm: String,
        /// The reference.
        reference: String,
        /// What is wrong.
        reason: String,
    },
    /// The kernel image directory does not exist.
    #[error("VM {vm}: kernel image {reference} not found: directory {dir} does not exist")]
    ImageNotFound {
        /// The VM.
        vm: String,
        /// The reference.
        reference: String,
        /// The directory looked for.
        dir: PathBuf,
    },
    /// A path inside the image is not usable.
    #[error("VM {vm}: {field} {path:?} of image {reference}: {reason}")]
    BadImagePath {
        /// The VM.
        vm: String,
        /// "kernelPath" or "initrdPath".
        field: &'static str,
        /// The path as given.
        path: String,
        /// The image.
        reference: String,
        /// What is wrong.
        reason: String,
    },
    /// A VM that boots its disk's own bootloader has no disk.
    #[error(
        "VM {vm}: nothing to boot: without firmware.kernelBoot the VM boots its first disk's \
         own bootloader ({firmware}), but it has no disk"
    )]
    NoBootDisk {
        /// The VM.
        vm: String,
        /// "bios" or "efi".
        firmware: &'static str,
    },
    /// The node's default kernel is missing.
    #[error("VM {vm}: the node's default {what} {path} does not exist")]
    DefaultMissing {
        /// The VM.
        vm: String,
        /// "kernel" or "initrd".
        what: &'static str,
        /// The configured path.
        path: PathBuf,
    },
    /// A `rateLimit.bytesPerSecond` is not a quantity of bytes.
    #[error("VM {vm}: rateLimit.bytesPerSecond {value:?} is not a quantity of bytes")]
    RateLimit {
        /// The VM.
        vm: String,
        /// The quantity as written.
        value: String,
    },
    /// Guest memory is missing or not a valid quantity.
    #[error("VM {vm}: spec.template.spec.domain.memory.guest: {reason}")]
    Memory {
        /// The VM.
        vm: String,
        /// What is wrong.
        reason: String,
    },
    /// The clock's time zone cannot be resolved on this node.
    #[error("VM {vm}: spec.template.spec.domain.clock.timezone: {source}")]
    Clock {
        /// The VM.
        vm: String,
        /// What is wrong.
        source: ironvisor_crds::clock::ClockError,
    },
}

impl TranslateError {
    /// A CamelCase reason for status conditions.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidReference { .. } | Self::ImageNotFound { .. } => "KernelImageNotFound",
            Self::BadImagePath { .. } => "KernelImagePathInvalid",
            Self::DefaultMissing { .. } => "NoKernel",
            Self::NoBootDisk { .. } => "NoBootDisk",
            Self::Memory { .. } => "InvalidMemory",
            Self::Clock { .. } => "InvalidClock",
            Self::RateLimit { .. } => "InvalidRateLimit",
        }
    }
}

/// Kernel, initrd and command line to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootFiles {
    /// The kernel image.
    pub kernel: PathBuf,
    /// The initramfs.
    pub initrd: Option<PathBuf>,
    /// The full kernel command line.
    pub cmdline: String,
}

/// What a VM boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootPlan {
    /// A kernel, directly.
    Kernel(BootFiles),
    /// Its first disk's own bootloader, made for this firmware.
    Disk(FirmwareKind),
}

/// The firmware of `spec`'s `bootloader`, if it names one (`bios` unless `efi` is set).
pub fn bootloader_firmware(spec: &VirtualMachineInstanceSpec) -> Option<FirmwareKind> {
    let bootloader = spec.domain.firmware.as_ref()?.bootloader.as_ref()?;
    Some(if bootloader.efi.is_some() {
        FirmwareKind::Efi
    } else {
        FirmwareKind::Bios
    })
}

/// Where kernels come from: the images directory and the node's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelImages {
    /// The images directory.
    pub images_dir: PathBuf,
    /// Kernel for VMs without `kernelBoot`.
    pub default_kernel: Option<PathBuf>,
    /// Initrd for VMs without `kernelBoot`.
    pub default_initrd: Option<PathBuf>,
}

impl KernelImages {
    /// What a VM boots: its kernel image (`kernelBoot.container`); else the disk's own
    /// bootloader when `bootloader` is set; else the node's `--default-kernel` when the
    /// node agent has one; else, as KubeVirt does, the disk's own bootloader under BIOS.
    pub fn resolve(
        &self,
        key: &VmKey,
        spec: &VirtualMachineInstanceSpec,
    ) -> Result<BootPlan, TranslateError> {
        let vm = key.to_string();
        let cmdline = cmdline(spec);
        match kernel_boot(spec).and_then(|k| k.container.as_ref()) {
            Some(container) => {
                let (kernel, initrd) = self.image_files(&vm, container)?;
                Ok(BootPlan::Kernel(BootFiles {
                    kernel,
                    initrd,
                    cmdline,
                }))
            }
            None => {
                if let Some(firmware) = bootloader_firmware(spec) {
                    return Ok(BootPlan::Disk(firmware));
                }
                let Some(kernel) = self.default_kernel.clone() else {
                    return Ok(BootPlan::Disk(FirmwareKind::Bios));
                };
                if !kernel.is_file() {
                    return Err(TranslateError::DefaultMissing {
                        vm,
                        what: "kernel",
                        path: kernel,
                    });
                }
                if let Some(initrd) = &self.default_initrd {
                    if !initrd.is_file() {
                        return Err(TranslateError::DefaultMissing {
                            vm,
                            what: "initrd",
                            path: initrd.clone(),
                        });
                    }
                }
                Ok(BootPlan::Kernel(BootFiles {
                    kernel,
                    initrd: self.default_initrd.clone(),
                    cmdline,
                }))
            }
        }
    }

    fn image_files(
        &self,
        vm: &str,
        container: &KernelBootContainer,
    ) -> Result<(PathBuf, Option<PathBuf>), TranslateError> {
        let reference = &container.image;
        let relative = image_dir(reference).map_err(|reason| TranslateError::InvalidReference {
            vm: vm.to_string(),
            reference: reference.clone(),
            reason,
        })?;
        let dir = self.images_dir.join(relative);
        if !dir.is_dir() {
            return Err(TranslateError::ImageNotFound {
                vm: vm.to_string(),
                reference: reference.clone(),
                dir,
            });
        }
        let file = |field: &'static str, path: &str| -> Result<PathBuf, TranslateError> {
            let bad = |reason: String| TranslateError::BadImagePath {
                vm: vm.to_string(),
                field,
                path: path.to_string(),
                reference: reference.clone(),
                reason,
            };
            let inside = Path::new(path);
            if !inside.is_absolute() {
                return Err(bad("must be an absolute path inside the image".into()));
            }
            let mut full = dir.clone();
            for component in inside.components() {
                match component {
                    Component::Normal(part) => full.push(part),
                    Component::RootDir | Component::CurDir => {}
                    Component::ParentDir | Component::Prefix(_) => {
                        return Err(bad("must not contain '..'".into()))
                    }
                }
            }
            if !full.is_file() {
                return Err(bad(format!("{} does not exist", full.display())));
            }
            Ok(full)
        };
        let kernel = match &container.kernel_path {
            Some(path) => file("kernelPath", path)?,
            None => {
                return Err(TranslateError::BadImagePath {
                    vm: vm.to_string(),
                    field: "kernelPath",
                    path: String::new(),
                    reference: reference.clone(),
                    reason: "is required to boot from a kernel image".into(),
                })
            }
        };
        let initrd = container
            .initrd_path
            .as_deref()
            .map(|p| file("initrdPath", p))
            .transpose()?;
        Ok((kernel, initrd))
    }
}

/// The VM's `firmware.kernelBoot`, if it has one.
pub fn kernel_boot(spec: &VirtualMachineInstanceSpec) -> Option<&KernelBoot> {
    spec.domain
        .firmware
        .as_ref()
        .and_then(|f| f.kernel_boot.as_ref())
}

/// The kernel command line of a VM: [`BASE_CMDLINE`] followed by `kernelArgs`.
pub fn cmdline(spec: &VirtualMachineInstanceSpec) -> String {
    let mut cmdline = BASE_CMDLINE.to_string();
    if let Some(args) = kernel_boot(spec)
        .and_then(|k| k.kernel_args.as_deref())
        .map(str::trim)
        .filter(|a| !a.is_empty())
    {
        cmdline.push(' ');
        cmdline.push_str(args);
    }
    cmdline
}

/// The directory of an image reference, relative to the images directory (see the
/// module documentation). References are parsed like the disk image store's.
pub fn image_dir(reference: &str) -> Result<PathBuf, String> {
    let image = ironvisor_disks::ImageRef::parse(reference).map_err(|e| match e {
        ironvisor_disks::ImageStoreError::InvalidReference { reason, .. } => reason.to_string(),
        other => other.to_string(),
    })?;
    Ok(PathBuf::from(image.repository).join(image.version))
}

/// Everything a launch configuration is made of besides the spec.
#[derive(Debug, Clone, PartialEq)]
pub struct LaunchPlan {
    /// A kernel, or the first disk's own bootloader.
    pub boot: BootPlan,
    /// The disks, in guest order.
    pub disks: Vec<DiskConfig>,
    /// The NICs, in guest order.
    pub nets: Vec<NetConfig>,
    /// The console socket.
    pub console_socket: PathBuf,
    /// The control API socket.
    pub api_socket: PathBuf,
    /// Host CPUs of each vCPU thread (empty: not pinned).
    pub vcpu_affinity: Vec<Vec<u32>>,
}

/// The guest's SMBIOS system identity: `firmware.uuid` and `firmware.serial`.
fn system_identity(spec: &VirtualMachineInstanceSpec) -> SystemIdentity {
    let firmware = spec.domain.firmware.as_ref();
    SystemIdentity {
        uuid: firmware.and_then(|firmware| firmware.uuid.clone()),
        serial: firmware.and_then(|firmware| firmware.serial.clone()),
    }
}

/// The vCPU topology of `cpu.sockets/cores/threads` (unset counts are 1).
fn cpu_topology(spec: &VirtualMachineInstanceSpec) -> CpuTopologyConfig {
    let cpu = spec.domain.cpu.as_ref();
    let count = |field: Option<u32>| field.unwrap_or(1);
    CpuTopologyConfig {
        sockets: count(cpu.and_then(|cpu| cpu.sockets)),
        cores: count(cpu.and_then(|cpu| cpu.cores)),
        threads: count(cpu.and_then(|cpu| cpu.threads)),
    }
}

/// The RTC of `spec.domain.clock` as it stands now.
fn clock(key: &VmKey, spec: &VirtualMachineInstanceSpec) -> Result<ClockConfig, TranslateError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
        });
    let rtc_offset_seconds =
        ironvisor_crds::clock::rtc_offset_seconds(spec.domain.clock.as_ref(), now).map_err(
            |source| TranslateError::Clock {
                vm: key.to_string(),
                source,
            },
        )?;
    Ok(ClockConfig { rtc_offset_seconds })
}

/// The launcher's rate limit of a disk's or an interface's `rateLimit` (validated on
/// admission; a byte rate that is not a quantity of bytes is refused here too).
fn rate_limit(
    key: &VmKey,
    limit: Option<&DeviceRateLimit>,
) -> Result<Option<RateLimitConfig>, TranslateError> {
    let Some(limit) = limit else {
        return Ok(None);
    };
    let rates =
        ironvisor_crds::validate::rates(limit).ok_or_else(|| TranslateError::RateLimit {
            vm: key.to_string(),
            value: limit
                .bytes_per_second
                .as_ref()
                .map(|q| q.0.clone())
                .unwrap_or_default(),
        })?;
    Ok(Some(RateLimitConfig {
        bytes_per_second: rates.bytes_per_second,
        ops_per_second: rates.ops_per_second,
    }))
}

/// The launcher configuration of `spec` (the VM's template) with `plan`.
pub fn launch_config(
    key: &VmKey,
    spec: &VirtualMachineInstanceSpec,
    plan: LaunchPlan,
) -> Result<LaunchConfig, TranslateError> {
    let memory = spec
        .domain
        .memory
        .as_ref()
        .ok_or_else(|| TranslateError::Memory {
            vm: key.to_string(),
            reason: "is not set".into(),
        })?;
    let bytes = quantity::to_bytes(&memory.guest).map_err(|e| TranslateError::Memory {
        vm: key.to_string(),
        reason: e.to_string(),
    })?;
    let (kernel, firmware) = match plan.boot {
        BootPlan::Kernel(files) => (
            Some(KernelConfig {
                path: files.kernel,
                initrd: files.initrd,
                cmdline: files.cmdline,
            }),
            None,
        ),
        BootPlan::Disk(kind) => {
            // Guest order is boot order (volumes.rs): the first disk is the one to boot.
            let disk = plan
                .disks
                .first()
                .ok_or_else(|| TranslateError::NoBootDisk {
                    vm: key.to_string(),
                    firmware: kind.as_str(),
                })?;
            (
                None,
                Some(FirmwareConfig {
                    kind,
                    boot_disk: disk.id.clone(),
                }),
            )
        }
    };
    let grace = spec
        .termination_grace_period_seconds
        .unwrap_or(ironvisor_crds::defaults::DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS);
    let mut disks = plan.disks;
    for disk in &mut disks {
        let limit = spec.domain.devices.disks.iter().find(|d| d.name == disk.id);
        disk.rate_limit = rate_limit(key, limit.and_then(|d| d.rate_limit.as_ref()))?;
    }
    let mut nets = plan.nets;
    for net in &mut nets {
        let limit = spec
            .domain
            .devices
            .interfaces
            .iter()
            .find(|i| i.name == net.id);
        net.rate_limit = rate_limit(key, limit.and_then(|i| i.rate_limit.as_ref()))?;
    }
    Ok(LaunchConfig {
        name: key.name.clone(),
        vcpus: spec.vcpus(),
        vcpu_affinity: plan.vcpu_affinity,
        memory_mib: bytes.div_ceil(MIB),
        kernel,
        firmware,
        disks,
        nets,
        console: ConsoleConfig {
            socket: Some(plan.console_socket),
            ring_bytes: CONSOLE_RING_BYTES,
            stdio: false,
        },
        agent_socket: None,
        api_socket: Some(plan.api_socket),
        shutdown_timeout_secs: u64::try_from(grace).unwrap_or(0).max(1),
        backend: Default::default(),
        system: system_identity(spec),
        // KubeVirt's `devices.rng: {}` has no settings: the launcher's default rate.
        rng: spec
            .domain
            .devices
            .rng
            .as_ref()
            .map(|_| RngConfig::default()),
        cpu_topology: Some(cpu_topology(spec)),
        clock: clock(key, spec)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ironvisor_crds::v1alpha1::{Cpu, Firmware, Memory};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn spec(kernel_boot: Option<KernelBoot>) -> VirtualMachineInstanceSpec {
        let mut spec = VirtualMachineInstanceSpec::default();
        spec.domain.cpu = Some(Cpu {
            cores: Some(2),
            sockets: Some(2),
            threads: Some(1),
            dedicated_cpu_placement: None,
            model: None,
        });
        spec.domain.memory = Some(Memory {
            guest: Quantity("1500Mi".into()),
        });
        spec.domain.firmware = Some(Firmware {
            kernel_boot,
            ..Firmware::default()
        });
        spec.termination_grace_period_seconds = Some(30);
        spec
    }

    #[test]
    fn image_references_map_to_directories() {
        assert_eq!(
            image_dir("ironvisor/guest-kernel:debian-6.1").unwrap(),
            PathBuf::from("ironvisor/guest-kernel/debian-6.1")
        );
        assert_eq!(
            image_dir("ironvisor/guest-kernel").unwrap(),
            PathBuf::from("ironvisor/guest-kernel/latest")
        );
        let digest = "sha256:0123456789abcdef0123456789abcdef";
        assert_eq!(
            image_dir(&format!("k@{digest}")).unwrap(),
            PathBuf::from("k/sha256-0123456789abcdef0123456789abcdef")
        );
        for bad in [
            "",
            "a/../b:1",
            "a//b",
            "a:",
            ".hidden",
            "a@sha256",
            "a@sha256:xyz",
        ] {
            assert!(image_dir(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn kernel_boot_images_resolve_inside_the_images_dir() {
        let images = tempfile::tempdir().unwrap();
        let dir = images.path().join("ironvisor/guest-kernel/debian-6.1/boot");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("vmlinuz"), b"kernel").unwrap();
        std::fs::write(dir.join("initrd.img"), b"initrd").unwrap();
        let kernels = KernelImages {
            images_dir: images.path().to_path_buf(),
            default_kernel: None,
            default_initrd: None,
        };
        let key = VmKey::new("default", "vm1");
        let boot = KernelBoot {
            kernel_args: Some("root=/dev/vda ro".into()),
            container: Some(KernelBootContainer {
                image: "ironvisor/guest-kernel:debian-6.1".into(),
                kernel_path: Some("/boot/vmlinuz".into()),
                initrd_path: Some("/boot/initrd.img".into()),
            }),
        };
        let BootPlan::Kernel(files) = kernels.resolve(&key, &spec(Some(boot.clone()))).unwrap()
        else {
            panic!("a kernel image boots its kernel");
        };
        assert_eq!(files.kernel, dir.join("vmlinuz"));
        assert_eq!(files.initrd, Some(dir.join("initrd.img")));
        assert_eq!(
            files.cmdline,
            "console=ttyS0 reboot=k panic=1 root=/dev/vda ro"
        );

        let mut escaping = boot.clone();
        escaping.container.as_mut().unwrap().kernel_path = Some("/../../etc/passwd".into());
        let error = kernels.resolve(&key, &spec(Some(escaping))).unwrap_err();
        assert!(
            error.to_string().contains("must not contain '..'"),
            "{error}"
        );

        let mut missing = boot;
        missing.container.as_mut().unwrap().image = "ironvisor/guest-kernel:nope".into();
        let error = kernels.resolve(&key, &spec(Some(missing))).unwrap_err();
        assert_eq!(error.reason(), "KernelImageNotFound");
        assert!(error.to_string().contains("default/vm1"));
    }

    #[test]
    fn without_a_kernel_image_the_disk_boots_itself_unless_the_node_has_a_default_kernel() {
        let images = tempfile::tempdir().unwrap();
        let default_kernel = images.path().join("vmlinux");
        std::fs::write(&default_kernel, b"kernel").unwrap();
        let key = VmKey::new("default", "vm1");
        let mut kernels = KernelImages {
            images_dir: images.path().to_path_buf(),
            default_kernel: None,
            default_initrd: None,
        };
        let mut plain = spec(None);
        plain.domain.firmware = None;
        assert_eq!(
            kernels.resolve(&key, &plain).unwrap(),
            BootPlan::Disk(FirmwareKind::Bios)
        );
        kernels.default_kernel = Some(default_kernel.clone());
        assert!(matches!(
            kernels.resolve(&key, &plain).unwrap(),
            BootPlan::Kernel(files) if files.kernel == default_kernel
        ));
        let mut efi = plain.clone();
        efi.domain.firmware = Some(Firmware {
            bootloader: Some(ironvisor_crds::v1alpha1::Bootloader {
                efi: Some(Default::default()),
                bios: None,
            }),
            ..Default::default()
        });
        assert_eq!(
            kernels.resolve(&key, &efi).unwrap(),
            BootPlan::Disk(FirmwareKind::Efi)
        );
    }

    #[test]
    fn a_disk_boot_names_the_first_disk_and_needs_one() {
        let key = VmKey::new("default", "vm1");
        let plan = |disks: Vec<DiskConfig>| LaunchPlan {
            boot: BootPlan::Disk(FirmwareKind::Bios),
            disks,
            nets: vec![],
            console_socket: "/run/c.sock".into(),
            api_socket: "/run/a.sock".into(),
            vcpu_affinity: vec![],
        };
        let disk = |id: &str| DiskConfig {
            id: id.into(),
            path: format!("/d/{id}").into(),
            format: Default::default(),
            read_only: false,
            serial: None,
            rate_limit: None,
        };
        let mut limited = spec(None);
        limited.domain.devices.disks = vec![
            ironvisor_crds::v1alpha1::Disk {
                name: "root".into(),
                ..Default::default()
            },
            ironvisor_crds::v1alpha1::Disk {
                name: "data".into(),
                rate_limit: Some(DeviceRateLimit {
                    bytes_per_second: Some(Quantity("2Mi".into())),
                    ops_per_second: Some(100),
                }),
                ..Default::default()
            },
        ];
        let config = launch_config(&key, &limited, plan(vec![disk("root"), disk("data")])).unwrap();
        // Each disk gets its own rateLimit, by name.
        assert_eq!(config.disks[0].rate_limit, None);
        assert_eq!(
            config.disks[1].rate_limit,
            Some(RateLimitConfig {
                bytes_per_second: Some(2 << 20),
                ops_per_second: Some(100),
            })
        );
        assert_eq!(config.kernel, None);
        assert_eq!(
            config.firmware,
            Some(FirmwareConfig {
                kind: FirmwareKind::Bios,
                boot_disk: "root".into()
            })
        );
        let error = launch_config(&key, &spec(None), plan(vec![])).unwrap_err();
        assert_eq!(error.reason(), "NoBootDisk");
        assert!(error.to_string().contains("has no disk"), "{error}");
    }

    #[test]
    fn launch_config_takes_topology_memory_and_grace_period() {
        let key = VmKey::new("default", "vm1");
        let config = launch_config(
            &key,
            &spec(None),
            LaunchPlan {
                boot: BootPlan::Kernel(BootFiles {
                    kernel: "/k".into(),
                    initrd: None,
                    cmdline: BASE_CMDLINE.into(),
                }),
                disks: vec![],
                nets: vec![],
                console_socket: "/run/c.sock".into(),
                api_socket: "/run/a.sock".into(),
                vcpu_affinity: vec![vec![1], vec![2], vec![3], vec![4]],
            },
        )
        .unwrap();
        assert_eq!(config.name, "vm1");
        assert_eq!(config.vcpus, 4);
        assert_eq!(config.vcpu_affinity[3], vec![4]);
        assert_eq!(config.memory_mib, 1500);
        assert_eq!(config.shutdown_timeout_secs, 30);
        assert_eq!(
            config.console.socket.as_deref(),
            Some(Path::new("/run/c.sock"))
        );
        assert_eq!(config.api_socket.as_deref(), Some(Path::new("/run/a.sock")));
        assert_eq!(config.system, SystemIdentity::default());
        assert_eq!(config.rng, None);
        // 2 sockets x 2 cores x 1 thread, as the spec says, and a UTC clock.
        assert_eq!(
            config.cpu_topology,
            Some(CpuTopologyConfig {
                sockets: 2,
                cores: 2,
                threads: 1
            })
        );
        assert!(config.clock.is_utc());
    }

    #[test]
    fn the_clock_becomes_the_rtc_offset_and_an_unknown_zone_is_named() {
        let key = VmKey::new("default", "vm1");
        let mut spec = spec(None);
        spec.domain.clock = Some(ironvisor_crds::v1alpha1::Clock {
            utc: Some(ironvisor_crds::v1alpha1::ClockOffsetUtc {
                offset_seconds: Some(-600),
            }),
            ..Default::default()
        });
        assert_eq!(clock(&key, &spec).unwrap().rtc_offset_seconds, -600);
        spec.domain.clock = Some(ironvisor_crds::v1alpha1::Clock {
            timezone: Some("Asia/Kolkata".into()),
            ..Default::default()
        });
        assert_eq!(clock(&key, &spec).unwrap().rtc_offset_seconds, 19_800);
        spec.domain.clock = Some(ironvisor_crds::v1alpha1::Clock {
            timezone: Some("Atlantis/Capital".into()),
            ..Default::default()
        });
        let error = clock(&key, &spec).unwrap_err();
        assert_eq!(error.reason(), "InvalidClock");
        let message = error.to_string();
        assert!(
            message.starts_with(
                "VM default/vm1: spec.template.spec.domain.clock.timezone: unknown time zone"
            ),
            "{message}"
        );
    }

    #[test]
    fn firmware_uuid_and_serial_become_the_guests_smbios_identity() {
        let mut spec = spec(None);
        if let Some(firmware) = spec.domain.firmware.as_mut() {
            firmware.uuid = Some("6a1c7d1e-8b3f-4c5a-9e2d-0123456789ab".into());
            firmware.serial = Some("CRM-0042".into());
        }
        let identity = system_identity(&spec);
        assert_eq!(
            identity.uuid.as_deref(),
            Some("6a1c7d1e-8b3f-4c5a-9e2d-0123456789ab")
        );
        assert_eq!(identity.serial.as_deref(), Some("CRM-0042"));
    }
}
