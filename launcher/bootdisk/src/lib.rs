//! The kernel a guest disk boots by itself, found without running its bootloader.
//!
//! A disk that holds its own bootloader (a cloud image with GRUB) names what it boots in
//! its boot configuration. This crate reads that configuration from the disk image in
//! user space — the partition table ([`partition`]), the ext2/3/4 file system (the
//! `ext4-view` crate; nothing is mounted) and the configuration text ([`config`]) — and
//! returns the kernel, the initrd and the command line, so that a launcher without
//! firmware can boot them directly, as Xen's pygrub does.
//!
//! Looked for on each partition in turn (or the whole disk when it has no partition
//! table), first match wins:
//!
//! 1. GRUB: `/boot/grub/grub.cfg`, `/grub/grub.cfg` (a separate `/boot`), `/boot/grub2/…`;
//! 2. Boot Loader Specification entries: `/boot/loader/entries/*.conf`,
//!    `/loader/entries/*.conf` (the last by name is the newest);
//! 3. extlinux: `/boot/extlinux/extlinux.conf`, `/extlinux/extlinux.conf`;
//! 4. Debian's symlinks: `/vmlinuz` with `/initrd.img`, or the same under `/boot`.
//!
//! The disk is untrusted (a guest or an image author wrote it): every size read from it
//! is bounded ([`MAX_KERNEL_BYTES`], [`MAX_INITRD_BYTES`], [`MAX_CONFIG_BYTES`]), and a
//! malformed table or file system is an error naming what was wrong, never a panic.

pub mod config;
pub mod partition;

use std::io;
use std::path::Path;

use ext4_view::{Ext4, Ext4Read};
use ironvisor_diskimage::{DiskFormat, DiskImage};

use config::ConfigEntry;
use partition::Partition;

/// Largest kernel image read from a disk.
pub const MAX_KERNEL_BYTES: u64 = 128 << 20;
/// Largest total of initrds read from a disk.
pub const MAX_INITRD_BYTES: u64 = 1 << 30;
/// Largest boot configuration file read.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

const GRUB_CONFIGS: [&str; 4] = [
    "/boot/grub/grub.cfg",
    "/grub/grub.cfg",
    "/boot/grub2/grub.cfg",
    "/grub2/grub.cfg",
];
const BLS_DIRS: [&str; 2] = ["/boot/loader/entries", "/loader/entries"];
const EXTLINUX_CONFIGS: [&str; 2] = ["/boot/extlinux/extlinux.conf", "/extlinux/extlinux.conf"];
const SYMLINKS: [(&str, &str); 2] = [
    ("/vmlinuz", "/initrd.img"),
    ("/boot/vmlinuz", "/boot/initrd.img"),
];

/// Why no boot entry could be read.
#[derive(Debug, thiserror::Error)]
pub enum BootDiskError {
    /// The image could not be opened.
    #[error("opening the disk image: {0}")]
    Open(#[from] ironvisor_diskimage::DiskImageError),
    /// A read from the image failed.
    #[error("reading the disk at byte {offset}: {source}")]
    Read {
        /// Where.
        offset: u64,
        /// The I/O error.
        source: io::Error,
    },
    /// The partition table is malformed.
    #[error("partition table: {0}")]
    Table(&'static str),
    /// A file the configuration names cannot be read.
    #[error("partition {partition}: {path}: {reason}")]
    File {
        /// Partition number (0: the whole disk).
        partition: u32,
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// No partition holds a boot configuration or the kernel symlinks.
    #[error(
        "no boot configuration on the disk ({partitions}): looked for GRUB's grub.cfg, Boot \
         Loader Specification entries, extlinux.conf and /vmlinuz on every ext2/3/4 file system"
    )]
    NotFound {
        /// What was looked at.
        partitions: String,
    },
}

/// What the disk boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootEntry {
    /// The partition it was found on (0: a disk without a partition table).
    pub partition: u32,
    /// The configuration file it came from (or `/vmlinuz` for the symlinks).
    pub source: String,
    /// The kernel image (bzImage).
    pub kernel: Vec<u8>,
    /// The initrds, concatenated (each padded to 4 bytes, as the kernel requires between
    /// archives); empty without one.
    pub initrd: Vec<u8>,
    /// The kernel command line.
    pub cmdline: String,
}

/// A window of a disk image, read by the file system reader.
struct PartitionReader {
    disk: Box<dyn DiskImage>,
    offset: u64,
    len: u64,
}

impl Ext4Read for PartitionReader {
    fn read(
        &mut self,
        start_byte: u64,
        dst: &mut [u8],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        start_byte
            .checked_add(dst.len() as u64)
            .filter(|&end| end <= self.len)
            .ok_or("read past the end of the partition")?;
        self.disk.read_at(dst, self.offset + start_byte)?;
        Ok(())
    }
}

/// Finds what the disk image at `path` (in `format`) boots.
pub fn find_boot_entry(path: &Path, format: DiskFormat) -> Result<BootEntry, BootDiskError> {
    let _span = tracing::info_span!("find_boot_entry", path = %path.display(), %format).entered();
    let mut disk = ironvisor_diskimage::open_as(path, format, true)?;
    let mut windows = partition::partitions(disk.as_mut())?;
    if windows.is_empty() {
        windows.push(Partition {
            number: 0,
            offset: 0,
            len: disk.size(),
        });
    }
    let mut looked = Vec::new();
    for window in windows {
        let reader = PartitionReader {
            disk: ironvisor_diskimage::open_as(path, format, true)?,
            offset: window.offset,
            len: window.len,
        };
        let fs = match Ext4::load(Box::new(reader)) {
            Ok(fs) => fs,
            Err(error) => {
                tracing::debug!(partition = window.number, %error, "not an ext2/3/4 file system");
                looked.push(format!("partition {}: not ext2/3/4", window.number));
                continue;
            }
        };
        if let Some(entry) = entry_on(&fs, window.number)? {
            tracing::info!(
                partition = entry.partition,
                source = %entry.source,
                kernel_bytes = entry.kernel.len(),
                initrd_bytes = entry.initrd.len(),
                "boot entry found"
            );
            return Ok(entry);
        }
        looked.push(format!(
            "partition {}: no boot configuration",
            window.number
        ));
    }
    Err(BootDiskError::NotFound {
        partitions: looked.join(", "),
    })
}

/// The boot entry of one file system, if it has a configuration.
fn entry_on(fs: &Ext4, partition: u32) -> Result<Option<BootEntry>, BootDiskError> {
    let text = |path: &str| -> Result<Option<String>, BootDiskError> {
        read_bounded(fs, partition, path, MAX_CONFIG_BYTES)
            .map(|bytes| bytes.map(|b| String::from_utf8_lossy(&b).into_owned()))
    };
    for path in GRUB_CONFIGS {
        if let Some(entry) = text(path)?.as_deref().and_then(config::grub) {
            return load(fs, partition, path, entry).map(Some);
        }
    }
    for dir in BLS_DIRS {
        let Ok(entries) = fs.read_dir(dir) else {
            continue;
        };
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .filter_map(|entry| entry.file_name().as_str().ok().map(str::to_string))
            .filter(|name| name.ends_with(".conf"))
            .collect();
        names.sort();
        if let Some(name) = names.last() {
            let path = format!("{dir}/{name}");
            if let Some(entry) = text(&path)?.as_deref().and_then(config::bls) {
                return load(fs, partition, &path, entry).map(Some);
            }
        }
    }
    for path in EXTLINUX_CONFIGS {
        if let Some(entry) = text(path)?.as_deref().and_then(config::extlinux) {
            return load(fs, partition, path, entry).map(Some);
        }
    }
    for (kernel, initrd) in SYMLINKS {
        if fs.exists(kernel).unwrap_or(false) {
            let entry = ConfigEntry {
                kernel: kernel.to_string(),
                initrds: vec![initrd.to_string()],
                cmdline: String::new(),
            };
            return load(fs, partition, kernel, entry).map(Some);
        }
    }
    Ok(None)
}

/// Reads the kernel and initrds `entry` names (an initrd that is missing is skipped, as
/// the symlinks fallback may name one that does not exist).
fn load(
    fs: &Ext4,
    partition: u32,
    source: &str,
    entry: ConfigEntry,
) -> Result<BootEntry, BootDiskError> {
    let missing = |path: &str| BootDiskError::File {
        partition,
        path: path.to_string(),
        reason: format!("named by {source} but not on the file system"),
    };
    let kernel = read_on_boot_fs(fs, partition, &entry.kernel, MAX_KERNEL_BYTES)?
        .ok_or_else(|| missing(&entry.kernel))?;
    let mut initrd = Vec::new();
    for path in &entry.initrds {
        let budget = MAX_INITRD_BYTES.saturating_sub(initrd.len() as u64);
        match read_on_boot_fs(fs, partition, path, budget)? {
            Some(bytes) => {
                initrd.extend_from_slice(&bytes);
                initrd.resize(initrd.len().div_ceil(4) * 4, 0);
            }
            None if source == entry.kernel => {}
            None => return Err(missing(path)),
        }
    }
    Ok(BootEntry {
        partition,
        source: source.to_string(),
        kernel,
        initrd,
        cmdline: entry.cmdline,
    })
}

/// A file named by a configuration: as written, or without its `/boot` prefix when the
/// configuration sits on a separate boot file system.
fn read_on_boot_fs(
    fs: &Ext4,
    partition: u32,
    path: &str,
    limit: u64,
) -> Result<Option<Vec<u8>>, BootDiskError> {
    if let Some(bytes) = read_bounded(fs, partition, path, limit)? {
        return Ok(Some(bytes));
    }
    match path.strip_prefix("/boot/") {
        Some(rest) => read_bounded(fs, partition, &format!("/{rest}"), limit),
        None => Ok(None),
    }
}

/// The file at `path` if it exists (following symlinks), refusing one over `limit` bytes.
fn read_bounded(
    fs: &Ext4,
    partition: u32,
    path: &str,
    limit: u64,
) -> Result<Option<Vec<u8>>, BootDiskError> {
    let fail = |reason: String| BootDiskError::File {
        partition,
        path: path.to_string(),
        reason,
    };
    let Ok(metadata) = fs.metadata(path) else {
        return Ok(None);
    };
    if metadata.is_dir() {
        return Ok(None);
    }
    if metadata.len() > limit {
        return Err(fail(format!(
            "{} bytes, more than the {limit} read from a guest disk",
            metadata.len()
        )));
    }
    fs.read(path)
        .map(Some)
        .map_err(|error| fail(error.to_string()))
}
