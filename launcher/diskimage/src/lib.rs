//! Disk image access for the launcher's virtio-blk device.
//!
//! A VM disk is a host file in one of two formats:
//!
//! - **raw**: guest sector `n` is host byte `n * 512`; served with `pread`/`pwrite`.
//! - **qcow2**: a copy-on-write image, typically an overlay whose backing file is a read-only
//!   base image. Reads of unallocated clusters fall through to the backing chain; writes
//!   allocate clusters in the overlay. The qcow2 work (L1/L2 tables, refcounts, backing
//!   chain) is done by the [`imago`] crate, built with its `sync` feature so every call is a
//!   plain blocking call that fits the launcher's I/O thread. imago keeps the refcounts
//!   consistent, so `qemu-img check` finds no leaks or corruptions in images it wrote.
//!
//! [`open`] detects the format from the file's magic; [`open_as`] takes it from the caller,
//! which is the safe choice for guest-writable raw images (a guest could write a qcow2 header
//! into a raw disk and, if it were probed on the next boot, make the host read other files as
//! its backing file). [`create_overlay`] makes a new qcow2 overlay over a base image, and
//! [`inspect`] reports a file's format, virtual size and backing file.

#![deny(missing_docs)]

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod overlay;
mod qcow2;
mod qcow2_guard;
mod raw;

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

pub use overlay::create_overlay;

/// The first four bytes of every qcow2 file: `QFI\xfb`.
pub const QCOW2_MAGIC: [u8; 4] = [b'Q', b'F', b'I', 0xfb];

/// The on-disk format of a disk image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DiskFormat {
    /// Plain bytes, guest offset == file offset.
    Raw,
    /// QEMU copy-on-write v2/v3, possibly with a backing file.
    Qcow2,
}

impl DiskFormat {
    /// The name QEMU uses for this format (`"raw"`, `"qcow2"`), as written into a qcow2
    /// header's backing-format extension.
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
    }
}

impl fmt::Display for DiskFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Errors from opening, probing, inspecting and creating disk images.
#[derive(Debug, thiserror::Error)]
pub enum DiskImageError {
    /// The file could not be opened.
    #[error("cannot open disk image {path} ({mode}): {source}")]
    Open {
        /// The image file.
        path: PathBuf,
        /// `"read-only"` or `"read-write"`.
        mode: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// The first bytes of the file could not be read to detect its format.
    #[error("cannot read the header of disk image {path} to detect its format: {source}")]
    Probe {
        /// The image file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The size of the file (or block device) could not be determined.
    #[error("cannot determine the size of disk image {path}: {source}")]
    Size {
        /// The image file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// imago refused or failed to open a qcow2 image (bad header, unsupported feature,
    /// missing backing file, ...).
    #[error("cannot open qcow2 image {path}: {source}")]
    Qcow2 {
        /// The qcow2 file.
        path: PathBuf,
        /// imago's error, which names the failing part (e.g. "Backing file: ...").
        source: io::Error,
    },
    /// The base image of a new overlay does not exist or is not a file.
    #[error("base image {path} for overlay {overlay} is not usable: {source}")]
    Base {
        /// The base image.
        path: PathBuf,
        /// The overlay that was to be created.
        overlay: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The overlay file already exists; it is never replaced.
    #[error("overlay {path} already exists; remove it first to make a fresh copy-on-write layer")]
    OverlayExists {
        /// The overlay path.
        path: PathBuf,
    },
    /// The filesystem holding a new image is full (or over quota).
    #[error("no space left on the filesystem holding {path} while creating a disk image")]
    NoSpace {
        /// The file being created.
        path: PathBuf,
    },
    /// Writing a new image failed.
    #[error("cannot create disk image {path}: {source}")]
    Create {
        /// The file being created.
        path: PathBuf,
        /// The OS (or imago) error.
        source: io::Error,
    },
}

/// Random access to a VM disk image, whatever its on-disk format.
///
/// All offsets and lengths are in bytes of the guest-visible disk. Requests that go past
/// [`DiskImage::size`] fail with [`io::ErrorKind::InvalidInput`]; writes to an image opened
/// read-only fail with [`io::ErrorKind::PermissionDenied`].
pub trait DiskImage: Send {
    /// Guest-visible size in bytes.
    fn size(&self) -> u64;
    /// Fills `buf` with the disk contents at `offset` (no short reads).
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset` (no short writes).
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes every completed write durable (metadata caches written out, then `fdatasync`).
    fn flush(&mut self) -> io::Result<()>;
    /// The on-disk format being served.
    fn format(&self) -> DiskFormat;
}

/// What [`inspect`] learns about an image file without opening its backing chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// Detected format.
    pub format: DiskFormat,
    /// Guest-visible size in bytes.
    pub virtual_size: u64,
    /// The backing file named in a qcow2 header, as written there.
    pub backing_file: Option<String>,
    /// The backing format named in a qcow2 header, if any.
    pub backing_format: Option<String>,
}

/// Opens a disk image, detecting raw vs. qcow2 from the file's first four bytes.
///
/// Only use this for images whose content the guest cannot have written as raw bytes; for
/// those, use [`open_as`] with the format recorded when the disk was prepared.
pub fn open(path: &Path, read_only: bool) -> Result<Box<dyn DiskImage>, DiskImageError> {
    let format = probe(path)?;
    open_as(path, format, read_only)
}

/// Opens a disk image in the given format.
///
/// For qcow2 the backing chain named in the header is opened read-only.
pub fn open_as(
    path: &Path,
    format: DiskFormat,
    read_only: bool,
) -> Result<Box<dyn DiskImage>, DiskImageError> {
    let _span = tracing::debug_span!("open_disk_image", path = %path.display(), %format, read_only)
        .entered();
    let image: Box<dyn DiskImage> = match format {
        DiskFormat::Raw => Box::new(raw::RawImage::open(path, read_only)?),
        DiskFormat::Qcow2 => Box::new(qcow2::Qcow2Image::open(path, read_only)?),
    };
    tracing::debug!(size = image.size(), "disk image opened");
    Ok(image)
}

/// Detects the format of an image file from its magic: qcow2 if it starts with
/// [`QCOW2_MAGIC`], raw otherwise (including files shorter than four bytes).
pub fn probe(path: &Path) -> Result<DiskFormat, DiskImageError> {
    let mut file = File::open(path).map_err(|source| DiskImageError::Open {
        path: path.to_path_buf(),
        mode: "read-only",
        source,
    })?;
    let mut magic = [0u8; 4];
    let mut filled = 0;
    while filled < magic.len() {
        match file.read(&mut magic[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(DiskImageError::Probe {
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
    }
    Ok(if filled == magic.len() && magic == QCOW2_MAGIC {
        DiskFormat::Qcow2
    } else {
        DiskFormat::Raw
    })
}

/// Reports an image's format, virtual size and (for qcow2) backing file, without opening
/// the backing chain.
pub fn inspect(path: &Path) -> Result<ImageInfo, DiskImageError> {
    match probe(path)? {
        DiskFormat::Raw => Ok(ImageInfo {
            format: DiskFormat::Raw,
            virtual_size: raw::file_size(path)?,
            backing_file: None,
            backing_format: None,
        }),
        DiskFormat::Qcow2 => qcow2::inspect(path),
    }
}

/// Checks that `len` bytes at `offset` lie inside a disk of `size` bytes.
fn check_bounds(size: u64, offset: u64, len: usize, path: &Path) -> io::Result<()> {
    let len = u64::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "request of {len} bytes at offset {offset} is beyond the end of disk image {} ({size} bytes)",
                path.display()
            ),
        )),
    }
}

/// The error for a write to an image opened read-only.
fn read_only_error(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!("disk image {} is opened read-only", path.display()),
    )
}

/// True if the error means the filesystem is full or the user is over quota.
fn is_no_space(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
        || err.kind() == io::ErrorKind::StorageFull
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn probe_detects_qcow2_magic_and_defaults_to_raw() {
        let dir = tempfile::tempdir().unwrap();
        let q = dir.path().join("q");
        std::fs::write(&q, [b'Q', b'F', b'I', 0xfb, 0, 0, 0, 3]).unwrap();
        assert_eq!(probe(&q).unwrap(), DiskFormat::Qcow2);

        let r = dir.path().join("r");
        let mut f = File::create(&r).unwrap();
        f.write_all(b"QFI").unwrap();
        assert_eq!(probe(&r).unwrap(), DiskFormat::Raw, "short file is raw");

        let e = dir.path().join("empty");
        File::create(&e).unwrap();
        assert_eq!(probe(&e).unwrap(), DiskFormat::Raw);
    }

    #[test]
    fn probe_of_missing_file_names_the_path() {
        let err = probe(Path::new("/nonexistent/disk.img")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/nonexistent/disk.img"), "{msg}");
        assert!(matches!(err, DiskImageError::Open { .. }));
    }

    #[test]
    fn bounds_are_checked_without_overflow() {
        let p = Path::new("x");
        assert!(check_bounds(1024, 0, 1024, p).is_ok());
        assert!(check_bounds(1024, 512, 512, p).is_ok());
        assert!(check_bounds(1024, 1024, 0, p).is_ok());
        let err = check_bounds(1024, 1023, 2, p).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(check_bounds(1024, u64::MAX, 1, p).is_err());
    }

    #[test]
    fn format_names_match_qemu() {
        assert_eq!(DiskFormat::Raw.to_string(), "raw");
        assert_eq!(DiskFormat::Qcow2.as_str(), "qcow2");
    }
}
