//! What the vCPUs start in: a kernel and initrd loaded into guest memory, with the
//! command line to give them.
//!
//! A direct kernel boot reads the configured files. A firmware boot has no firmware to
//! run here: the boot disk's own configuration (GRUB, BLS, extlinux or Debian's
//! symlinks) is read with `ironvisor-bootdisk` before the guest runs, and the kernel and
//! initrd it names are loaded as if they had been given directly. Both `bios` and `efi`
//! boot this way; the guest sees no BIOS services and no UEFI runtime, which a Linux
//! guest booted with its own command line does not need.

use std::fs::File;
use std::io::{Seek, Write};
use std::path::PathBuf;

use ironvisor_arch::boot::{self, BootError, InitrdRegion, LoadedKernel};
use ironvisor_bootdisk::BootDiskError;
use ironvisor_diskimage::DiskFormat;

use crate::config::{cmdline_problem, Boot, ConfigError, DiskConfig, ImageFormat, LaunchConfig};
use crate::GuestMemory;

/// Why nothing could be loaded to boot.
#[derive(Debug, thiserror::Error)]
pub enum BootSourceError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("opening {what} {path}: {source}")]
    Open {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("loading kernel {from}: {source}")]
    Kernel { from: String, source: BootError },
    #[error("loading initrd {from}: {source}")]
    Initrd { from: String, source: BootError },
    #[error("boot disk {disk} ({path}): {source}")]
    BootDisk {
        disk: String,
        path: PathBuf,
        source: BootDiskError,
    },
    #[error("boot disk {disk}: the command line of {source_file}: {problem}")]
    Cmdline {
        disk: String,
        source_file: String,
        problem: String,
    },
    #[error("holding the {what} read from boot disk {disk} in memory: {source}")]
    Buffer {
        what: &'static str,
        disk: String,
        source: std::io::Error,
    },
}

/// The kernel and initrd in guest memory, and the command line for them.
pub struct LoadedBoot {
    pub kernel: LoadedKernel,
    pub initrd: Option<InitrdRegion>,
    pub cmdline: String,
}

/// Loads what `config` (already validated) boots into `mem`.
pub fn load(config: &LaunchConfig, mem: &GuestMemory) -> Result<LoadedBoot, BootSourceError> {
    match config.boot()? {
        Boot::Kernel(kernel) => {
            let from = kernel.path.display().to_string();
            let mut kernel_file = open(&kernel.path, "kernel")?;
            let initrd = kernel
                .initrd
                .as_ref()
                .map(|path| {
                    Ok::<_, BootSourceError>((open(path, "initrd")?, path.display().to_string()))
                })
                .transpose()?;
            load_files(mem, &mut kernel_file, &from, initrd, &kernel.cmdline)
        }
        Boot::Firmware { kind, disk } => {
            let _span = tracing::info_span!("boot_disk", disk = %disk.id, firmware = kind.as_str())
                .entered();
            let index = config
                .disks
                .iter()
                .position(|d| d.id == disk.id)
                .unwrap_or(0);
            load_from_disk(mem, disk, index)
        }
    }
}

fn load_from_disk(
    mem: &GuestMemory,
    disk: &DiskConfig,
    index: usize,
) -> Result<LoadedBoot, BootSourceError> {
    let format = match disk.format {
        ImageFormat::Raw => DiskFormat::Raw,
        ImageFormat::Qcow2 => DiskFormat::Qcow2,
    };
    let entry = ironvisor_bootdisk::find_boot_entry(&disk.path, format).map_err(|source| {
        BootSourceError::BootDisk {
            disk: disk.id.clone(),
            path: disk.path.clone(),
            source,
        }
    })?;
    let cmdline = if entry.cmdline.trim().is_empty() {
        default_disk_cmdline(index, entry.partition)
    } else {
        entry.cmdline.clone()
    };
    if let Some(problem) = cmdline_problem(&cmdline) {
        return Err(BootSourceError::Cmdline {
            disk: disk.id.clone(),
            source_file: entry.source,
            problem,
        });
    }
    let buffer = |what: &'static str, bytes: &[u8]| {
        in_memory_file(what, bytes).map_err(|source| BootSourceError::Buffer {
            what,
            disk: disk.id.clone(),
            source,
        })
    };
    let mut kernel = buffer("kernel", &entry.kernel)?;
    let initrd = if entry.initrd.is_empty() {
        None
    } else {
        Some((
            buffer("initrd", &entry.initrd)?,
            format!("{} on disk {}", entry.source, disk.id),
        ))
    };
    tracing::info!(
        source = %entry.source,
        partition = entry.partition,
        %cmdline,
        "booting the disk's own kernel"
    );
    let from = format!("named by {} on disk {}", entry.source, disk.id);
    load_files(mem, &mut kernel, &from, initrd, &cmdline)
}

/// The command line for a disk whose configuration gives none (Debian's symlinks): the
/// root file system where the kernel was found, on the serial console.
fn default_disk_cmdline(disk_index: usize, partition: u32) -> String {
    let letter = (b'a' + u8::try_from(disk_index % 26).unwrap_or(0)) as char;
    let partition = if partition == 0 {
        String::new()
    } else {
        partition.to_string()
    };
    format!("root=/dev/vd{letter}{partition} ro console=ttyS0")
}

fn load_files(
    mem: &GuestMemory,
    kernel_file: &mut File,
    from: &str,
    initrd: Option<(File, String)>,
    cmdline: &str,
) -> Result<LoadedBoot, BootSourceError> {
    let kernel = boot::load_kernel(mem, kernel_file).map_err(|source| BootSourceError::Kernel {
        from: from.to_string(),
        source,
    })?;
    crate::boot_trace::mark("kernel_copied");
    let initrd = initrd
        .map(|(mut file, from)| {
            boot::load_initrd_for_kernel(mem, &mut file, &kernel)
                .map_err(|source| BootSourceError::Initrd { from, source })
        })
        .transpose()?;
    Ok(LoadedBoot {
        kernel,
        initrd,
        cmdline: with_machine_options(cmdline),
    })
}

/// `cmdline` plus what the guest kernel should know about this machine: it has no PCI
/// bus (every device is virtio-mmio), so `pci=off` spares it probing the PCI
/// configuration ports slot by slot (about 225 port exits per boot, each a trip to the
/// VMM). A `pci=` the user gave is kept as it is.
fn with_machine_options(cmdline: &str) -> String {
    let user_set_pci = cmdline.split_whitespace().any(|p| p.starts_with("pci="));
    if user_set_pci {
        cmdline.to_string()
    } else if cmdline.trim().is_empty() {
        "pci=off".to_string()
    } else {
        format!("{} pci=off", cmdline.trim_end())
    }
}

fn open(path: &std::path::Path, what: &'static str) -> Result<File, BootSourceError> {
    File::open(path).map_err(|source| BootSourceError::Open {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// `bytes` as an anonymous in-memory file (memfd), rewound, for the loaders that read
/// files.
fn in_memory_file(name: &str, bytes: &[u8]) -> std::io::Result<File> {
    let name = format!("boot-{name}");
    let fd = nix::sys::memfd::memfd_create(name.as_str(), nix::sys::memfd::MFdFlags::MFD_CLOEXEC)?;
    let mut file = File::from(fd);
    file.write_all(bytes)?;
    file.rewind()?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_is_told_there_is_no_pci_unless_the_user_said_otherwise() {
        assert_eq!(
            with_machine_options("console=ttyS0 quiet "),
            "console=ttyS0 quiet pci=off"
        );
        assert_eq!(with_machine_options(""), "pci=off");
        assert_eq!(
            with_machine_options("pci=noacpi console=ttyS0"),
            "pci=noacpi console=ttyS0"
        );
        assert_eq!(with_machine_options("xpci=1"), "xpci=1 pci=off");
    }

    #[test]
    fn a_disk_without_a_command_line_boots_its_root_on_the_serial_console() {
        assert_eq!(
            default_disk_cmdline(0, 1),
            "root=/dev/vda1 ro console=ttyS0"
        );
        assert_eq!(default_disk_cmdline(2, 0), "root=/dev/vdc ro console=ttyS0");
    }

    #[test]
    fn bytes_come_back_from_the_in_memory_file() {
        use std::io::Read;
        let mut file = in_memory_file("kernel", b"bzImage bytes").unwrap();
        let mut back = Vec::new();
        file.read_to_end(&mut back).unwrap();
        assert_eq!(back, b"bzImage bytes");
        assert_eq!(file.metadata().unwrap().len(), 13);
    }
}
