//! What the VM boots: a kernel given directly ([`KernelConfig`]), or what one of its
//! disks boots by itself ([`FirmwareConfig`], KubeVirt's `firmware.bootloader`).
//!
//! With `firmware`, the KVM launcher (which has no firmware) reads the boot disk's own
//! boot configuration — GRUB, Boot Loader Specification entries, extlinux or Debian's
//! `/vmlinuz` symlinks, with the `ironvisor-bootdisk` crate — and boots that kernel,
//! initrd and command line directly, as Xen's pygrub does. The software-emulation
//! backend runs a real firmware instead: SeaBIOS for `bios`, OVMF for `efi`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{check_regular_file, ConfigError, DiskConfig, Issues, LaunchConfig, MAX_CMDLINE_BYTES};

/// The command line of a direct kernel boot when none is given.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1";

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

fn default_cmdline() -> String {
    DEFAULT_CMDLINE.to_string()
}

/// The firmware a guest disk was made for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum FirmwareKind {
    /// A PC BIOS (KubeVirt's `bootloader.bios`, and its default).
    Bios,
    /// UEFI without Secure Boot (KubeVirt's `bootloader.efi`).
    Efi,
}

impl FirmwareKind {
    /// `"bios"` or `"efi"`.
    pub fn as_str(self) -> &'static str {
        match self {
            FirmwareKind::Bios => "bios",
            FirmwareKind::Efi => "efi",
        }
    }
}

/// Boot from a disk that holds its own bootloader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct FirmwareConfig {
    /// The firmware the disk was made for.
    pub kind: FirmwareKind,
    /// The id of the disk (one of `disks`) to boot.
    pub boot_disk: String,
}

/// What a validated configuration boots.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Boot<'a> {
    /// A kernel given directly.
    Kernel(&'a KernelConfig),
    /// What `disk` boots by itself.
    Firmware {
        /// The firmware asked for.
        kind: FirmwareKind,
        /// The boot disk.
        disk: &'a DiskConfig,
    },
}

impl LaunchConfig {
    /// What the VM boots. An error when the configuration sets neither or both of
    /// `kernel` and `firmware`, or names a boot disk it does not have (which
    /// [`Self::validate`] reports too).
    pub fn boot(&self) -> Result<Boot<'_>, ConfigError> {
        let mut issues = Issues::default();
        let boot = self.boot_checked(&mut issues);
        issues.into_result()?;
        boot.ok_or_else(|| ConfigError::Invalid(Vec::new()))
    }

    /// Records every problem with what the VM boots.
    pub(super) fn check_boot(&self, issues: &mut Issues) {
        if let Some(Boot::Kernel(kernel)) = self.boot_checked(issues) {
            kernel.check(issues);
        }
    }

    fn boot_checked(&self, issues: &mut Issues) -> Option<Boot<'_>> {
        match (&self.kernel, &self.firmware) {
            (Some(kernel), None) => Some(Boot::Kernel(kernel)),
            (None, Some(firmware)) => {
                let disk = self.disks.iter().find(|disk| disk.id == firmware.boot_disk);
                if disk.is_none() {
                    issues.push(
                        "firmware.boot_disk",
                        format!(
                            "names disk {:?}, which is not one of the configured disks",
                            firmware.boot_disk
                        ),
                    );
                }
                disk.map(|disk| Boot::Firmware {
                    kind: firmware.kind,
                    disk,
                })
            }
            (None, None) => {
                issues.push(
                    "kernel",
                    "nothing to boot: set kernel (direct kernel boot) or firmware (boot a \
                     disk's own bootloader)",
                );
                None
            }
            (Some(_), Some(_)) => {
                issues.push(
                    "firmware",
                    "cannot be combined with kernel: a VM boots either a kernel directly or \
                     what its disk boots",
                );
                None
            }
        }
    }
}

impl KernelConfig {
    fn check(&self, issues: &mut Issues) {
        if let Some(size) = check_regular_file(issues, "kernel.path", &self.path, false) {
            if size == 0 {
                issues.push("kernel.path", format!("{} is empty", self.path.display()));
            }
        }
        if let Some(initrd) = &self.initrd {
            check_regular_file(issues, "kernel.initrd", initrd, false);
        }
        if let Some(problem) = cmdline_problem(&self.cmdline) {
            issues.push("kernel.cmdline", problem);
        }
    }
}

/// Why `cmdline` cannot be given to a kernel, if it cannot (also used for the command
/// line a boot disk's configuration names).
pub fn cmdline_problem(cmdline: &str) -> Option<String> {
    if cmdline.len() > MAX_CMDLINE_BYTES {
        Some(format!(
            "is {} bytes long; at most {MAX_CMDLINE_BYTES} are allowed",
            cmdline.len()
        ))
    } else if cmdline.contains('\0') {
        Some("must not contain NUL bytes".to_string())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(id: &str) -> DiskConfig {
        DiskConfig {
            id: id.into(),
            path: "/dev/null".into(),
            format: Default::default(),
            read_only: false,
            serial: None,
            rate_limit: None,
        }
    }

    fn config(kernel: Option<KernelConfig>, firmware: Option<FirmwareConfig>) -> LaunchConfig {
        let mut config: LaunchConfig =
            serde_json::from_str(r#"{"name":"vm","kernel":{"path":"/k"}}"#).expect("config");
        config.kernel = kernel;
        config.firmware = firmware;
        config.disks = vec![disk("root")];
        config
    }

    fn kernel() -> KernelConfig {
        KernelConfig {
            path: "/k".into(),
            initrd: None,
            cmdline: DEFAULT_CMDLINE.into(),
        }
    }

    fn firmware(disk: &str) -> FirmwareConfig {
        FirmwareConfig {
            kind: FirmwareKind::Bios,
            boot_disk: disk.into(),
        }
    }

    #[test]
    fn a_kernel_or_a_boot_disk_is_what_boots() {
        let direct = config(Some(kernel()), None);
        assert!(matches!(direct.boot(), Ok(Boot::Kernel(k)) if k.path.as_os_str() == "/k"));
        let from_disk = config(None, Some(firmware("root")));
        assert!(matches!(
            from_disk.boot(),
            Ok(Boot::Firmware { kind: FirmwareKind::Bios, disk }) if disk.id == "root"
        ));
    }

    #[test]
    fn neither_both_or_an_unknown_disk_is_refused_naming_the_field() {
        let fields = |config: &LaunchConfig| -> Vec<String> {
            Issues::found_by(|issues| config.check_boot(issues))
                .into_iter()
                .map(|issue| issue.field)
                .collect()
        };
        assert_eq!(fields(&config(None, None)), ["kernel"]);
        assert!(fields(&config(Some(kernel()), Some(firmware("root"))))
            .contains(&"firmware".to_string()));
        let unknown = config(None, Some(firmware("data")));
        assert_eq!(fields(&unknown), ["firmware.boot_disk"]);
        let message = unknown.boot().expect_err("unknown disk").to_string();
        assert!(message.contains("\"data\""), "{message}");
    }

    #[test]
    fn the_firmware_form_round_trips_through_json() {
        let json = r#"{"name":"vm","disks":[{"id":"root","path":"/d"}],
            "firmware":{"kind":"efi","boot_disk":"root"}}"#;
        let config: LaunchConfig = serde_json::from_str(json).expect("parses");
        assert_eq!(config.kernel, None);
        assert_eq!(
            config.firmware,
            Some(FirmwareConfig {
                kind: FirmwareKind::Efi,
                boot_disk: "root".into()
            })
        );
        let again: LaunchConfig =
            serde_json::from_str(&config.to_json().expect("json")).expect("reparses");
        assert_eq!(again, config);
    }

    #[test]
    fn command_lines_that_a_kernel_cannot_take_are_named() {
        assert_eq!(cmdline_problem("console=ttyS0"), None);
        assert!(cmdline_problem(&"x".repeat(MAX_CMDLINE_BYTES + 1)).is_some());
        assert!(cmdline_problem("a\0b").is_some());
    }
}
