//! The kernel in the pod: for `firmware.kernelBoot.container`, the `kernel-boot` init
//! container copied `kernelPath` to `<kernel-dir>/kernel` and `initrdPath` (if given) to
//! `<kernel-dir>/initrd`. The command line is the standalone one
//! ([`translate::cmdline`]). Cluster mode has no node default kernel: an instance
//! without a kernel-boot container boots its first disk's own bootloader
//! (`firmware.bootloader`, BIOS when unset, as in KubeVirt).

use std::path::{Path, PathBuf};

use ironvisor_crds::v1alpha1::VirtualMachineInstanceSpec;

use crate::translate::{self, BootFiles, BootPlan};

/// File name of the kernel in the kernel directory.
pub const KERNEL_FILE: &str = "kernel";
/// File name of the initrd in the kernel directory.
pub const INITRD_FILE: &str = "initrd";

/// Why there is nothing to boot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernelError {
    /// A file the init container should have copied is missing.
    #[error(
        "the {what} {path} is missing (the kernel-boot init container copies {field} of \
         image {image} there)"
    )]
    Missing {
        /// "kernel" or "initrd".
        what: &'static str,
        /// The expected file.
        path: PathBuf,
        /// `kernelPath` or `initrdPath`.
        field: &'static str,
        /// The kernel image.
        image: String,
    },
}

impl KernelError {
    /// A CamelCase reason for the termination message.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing { .. } => "KernelNotFound",
        }
    }
}

/// What the instance boots: the kernel-boot image's files, or its disk's bootloader.
pub fn boot_files(
    kernel_dir: &Path,
    spec: &VirtualMachineInstanceSpec,
) -> Result<BootPlan, KernelError> {
    let Some(container) = translate::kernel_boot(spec).and_then(|k| k.container.as_ref()) else {
        return Ok(BootPlan::Disk(
            translate::bootloader_firmware(spec)
                .unwrap_or(ironvisor_launcher_api::config::FirmwareKind::Bios),
        ));
    };
    let file = |what, name, field| {
        let path = kernel_dir.join(name);
        if path.is_file() {
            Ok(path)
        } else {
            Err(KernelError::Missing {
                what,
                path,
                field,
                image: container.image.clone(),
            })
        }
    };
    let kernel = file("kernel", KERNEL_FILE, "kernelPath")?;
    let initrd = container
        .initrd_path
        .as_ref()
        .map(|_| file("initrd", INITRD_FILE, "initrdPath"))
        .transpose()?;
    Ok(BootPlan::Kernel(BootFiles {
        kernel,
        initrd,
        cmdline: translate::cmdline(spec),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ironvisor_crds::v1alpha1::{Firmware, KernelBoot, KernelBootContainer};

    fn spec(initrd: bool) -> VirtualMachineInstanceSpec {
        let mut spec = VirtualMachineInstanceSpec::default();
        spec.domain.firmware = Some(Firmware {
            kernel_boot: Some(KernelBoot {
                kernel_args: Some("root=/dev/vda".into()),
                container: Some(KernelBootContainer {
                    image: "ironvisor/guest-kernel:6.1".into(),
                    kernel_path: Some("/boot/vmlinuz".into()),
                    initrd_path: initrd.then(|| "/boot/initrd.img".into()),
                }),
            }),
            ..Firmware::default()
        });
        spec
    }

    #[test]
    fn kernel_and_initrd_come_from_the_kernel_dir() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("kernel"), b"k").unwrap();
        let files = kernel_files(dir.path(), &spec(false));
        assert_eq!(files.kernel, dir.path().join("kernel"));
        assert_eq!(files.initrd, None);
        assert_eq!(
            files.cmdline,
            "console=ttyS0 reboot=k panic=1 root=/dev/vda"
        );

        let error = boot_files(dir.path(), &spec(true)).unwrap_err();
        assert_eq!(error.reason(), "KernelNotFound");
        assert!(error.to_string().contains("initrdPath"), "{error}");
        std::fs::write(dir.path().join("initrd"), b"i").unwrap();
        let files = kernel_files(dir.path(), &spec(true));
        assert_eq!(files.initrd, Some(dir.path().join("initrd")));
    }

    #[test]
    fn missing_kernels_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let error = boot_files(dir.path(), &spec(false)).unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains(&dir.path().join("kernel").display().to_string())
                && text.contains("ironvisor/guest-kernel:6.1"),
            "{text}"
        );
    }

    #[test]
    fn without_a_kernel_image_the_disk_boots_itself() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            boot_files(dir.path(), &VirtualMachineInstanceSpec::default()).unwrap(),
            BootPlan::Disk(ironvisor_launcher_api::config::FirmwareKind::Bios)
        );
    }

    fn kernel_files(dir: &Path, spec: &VirtualMachineInstanceSpec) -> BootFiles {
        match boot_files(dir, spec).unwrap() {
            BootPlan::Kernel(files) => files,
            other => panic!("expected a kernel boot, got {other:?}"),
        }
    }
}
