//! Loop devices for block volumes: finding the one an image is attached to, attaching
//! an image to a free one, and detaching.
//!
//! `/dev/loopN` and `/dev/loop-control` are made with mknod when this process's `/dev`
//! lacks them (a container's own `/dev`); with the host's `/dev` mounted they are there.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use tracing::{debug, info};

use crate::loop_scan::{self, ScanError};

/// Where the device nodes are.
pub const DEV_DIR: &str = "/dev";

const LOOP_MAJOR: u64 = 7;
const LOOP_CONTROL_MAJOR: u64 = 10;
const LOOP_CONTROL_MINOR: u64 = 237;

// Request numbers and structures of <linux/loop.h>.
const LOOP_SET_FD: libc::Ioctl = 0x4C00;
const LOOP_CLR_FD: libc::Ioctl = 0x4C01;
const LOOP_SET_STATUS64: libc::Ioctl = 0x4C04;
const LOOP_GET_STATUS64: libc::Ioctl = 0x4C05;
const LOOP_CONFIGURE: libc::Ioctl = 0x4C0A;
const LOOP_CTL_GET_FREE: libc::Ioctl = 0x4C82;
const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_NAME_SIZE: usize = 64;

/// `struct loop_info64`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; LO_NAME_SIZE],
    lo_crypt_name: [u8; LO_NAME_SIZE],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

impl LoopInfo64 {
    fn zeroed() -> Self {
        Self {
            lo_device: 0,
            lo_inode: 0,
            lo_rdevice: 0,
            lo_offset: 0,
            lo_sizelimit: 0,
            lo_number: 0,
            lo_encrypt_type: 0,
            lo_encrypt_key_size: 0,
            lo_flags: 0,
            lo_file_name: [0; LO_NAME_SIZE],
            lo_crypt_name: [0; LO_NAME_SIZE],
            lo_encrypt_key: [0; 32],
            lo_init: [0; 2],
        }
    }

    fn for_image(image: &Path, read_only: bool) -> Self {
        let mut info = Self::zeroed();
        let name = image.as_os_str().as_encoded_bytes();
        let len = name.len().min(LO_NAME_SIZE - 1);
        info.lo_file_name[..len].copy_from_slice(&name[..len]);
        if read_only {
            info.lo_flags = LO_FLAGS_READ_ONLY;
        }
        info
    }
}

/// Why a loop device operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    /// Listing the attached loops failed.
    #[error(transparent)]
    Scan(#[from] ScanError),
    /// A file or device could not be opened or examined.
    #[error("cannot open {path}: {source}", path = path.display())]
    Open {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A missing device node could not be made.
    #[error("cannot create device node {path}: {errno}", path = path.display())]
    Node {
        /// The node.
        path: PathBuf,
        /// The error.
        errno: Errno,
    },
    /// A loop ioctl failed.
    #[error("{request} on {device} failed: {errno}", device = device.display())]
    Ioctl {
        /// Which request.
        request: &'static str,
        /// The device.
        device: PathBuf,
        /// The error.
        errno: Errno,
    },
    /// Every free loop device was taken by someone else first.
    #[error("no free loop device for {image} after {attempts} attempts", image = image.display())]
    Exhausted {
        /// The image.
        image: PathBuf,
        /// How many devices were tried.
        attempts: u32,
    },
}

impl From<LoopError> for tonic::Status {
    fn from(error: LoopError) -> Self {
        tonic::Status::internal(error.to_string())
    }
}

/// `/dev/loopN`.
pub fn device_path(index: u32) -> PathBuf {
    Path::new(DEV_DIR).join(format!("loop{index}"))
}

fn open_error(path: &Path) -> impl FnOnce(io::Error) -> LoopError + '_ {
    move |source| LoopError::Open {
        path: path.to_path_buf(),
        source,
    }
}

/// Makes the device node `path` if it is missing.
fn ensure_node(path: &Path, kind: SFlag, major: u64, minor: u64) -> Result<(), LoopError> {
    if path.exists() {
        return Ok(());
    }
    match mknod(
        path,
        kind,
        Mode::from_bits_truncate(0o660),
        makedev(major, minor),
    ) {
        Ok(()) | Err(Errno::EEXIST) => Ok(()),
        Err(errno) => Err(LoopError::Node {
            path: path.to_path_buf(),
            errno,
        }),
    }
}

/// The node of loop `index`, made if missing.
pub fn device_node(index: u32) -> Result<PathBuf, LoopError> {
    let path = device_path(index);
    ensure_node(&path, SFlag::S_IFBLK, LOOP_MAJOR, u64::from(index))?;
    Ok(path)
}

fn open_loop(index: u32, writable: bool) -> Result<(File, PathBuf), LoopError> {
    let path = device_node(index)?;
    let file = OpenOptions::new()
        .read(true)
        .write(writable)
        .open(&path)
        .map_err(open_error(&path))?;
    Ok((file, path))
}

/// Calls a loop ioctl whose argument is a plain integer.
fn ioctl_int(file: &File, request: libc::Ioctl, arg: libc::c_ulong) -> Result<i32, Errno> {
    // SAFETY: the descriptor is open for the call's duration; the requests used with
    // this helper (LOOP_SET_FD, LOOP_CLR_FD, LOOP_CTL_GET_FREE) take an integer, not a
    // pointer, so the kernel reads no memory of ours.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), request, arg) };
    Errno::result(rc)
}

/// Calls a loop ioctl whose argument points to a `T`.
fn ioctl_ptr<T>(file: &File, request: libc::Ioctl, arg: &mut T) -> Result<(), Errno> {
    // SAFETY: the descriptor is open; `arg` is a live, exclusively borrowed `T` and the
    // callers pair each request with the `#[repr(C)]` structure the kernel reads or
    // writes for it (LoopInfo64 for *_STATUS64, LoopConfig for LOOP_CONFIGURE).
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), request, std::ptr::from_mut(arg)) };
    Errno::result(rc).map(drop)
}

/// Device and inode of the backing file of attached loop `index`; `None` when its
/// node is missing here (no node is made for a mere look) or cannot be asked.
fn backing_identity(index: u32) -> Option<(u64, u64)> {
    let file = File::open(device_path(index)).ok()?;
    let mut info = LoopInfo64::zeroed();
    ioctl_ptr(&file, LOOP_GET_STATUS64, &mut info).ok()?;
    Some((info.lo_device, info.lo_inode))
}

/// The attached loop device backed by `image`, if any: matched by inode, or by the
/// path sysfs shows when the device cannot be asked.
pub fn find(image: &Path) -> Result<Option<u32>, LoopError> {
    find_in(Path::new(loop_scan::SYS_BLOCK), image)
}

fn find_in(sys_block: &Path, image: &Path) -> Result<Option<u32>, LoopError> {
    let identity = match std::fs::metadata(image) {
        Ok(m) => (m.dev(), m.ino()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(open_error(image)(e)),
    };
    for attached in loop_scan::attached_loops(sys_block)? {
        let same_path = !attached.deleted && attached.backing_file == image;
        let found = match backing_identity(attached.index) {
            Some(backing) => backing == identity,
            None => same_path,
        };
        if found {
            return Ok(Some(attached.index));
        }
    }
    Ok(None)
}

/// Gives `image` a loop device: the one it is attached to, else a free one (read-only
/// if `read_only`). Returns its index.
pub fn attach(image: &Path, read_only: bool) -> Result<u32, LoopError> {
    if let Some(index) = find(image)? {
        debug!(index, image = %image.display(), "reusing the attached loop device");
        return Ok(index);
    }
    let control_path = Path::new(DEV_DIR).join("loop-control");
    ensure_node(
        &control_path,
        SFlag::S_IFCHR,
        LOOP_CONTROL_MAJOR,
        LOOP_CONTROL_MINOR,
    )?;
    let control = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&control_path)
        .map_err(open_error(&control_path))?;
    let backing = OpenOptions::new()
        .read(true)
        .write(!read_only)
        .open(image)
        .map_err(open_error(image))?;
    const ATTEMPTS: u32 = 8;
    for _ in 0..ATTEMPTS {
        let free = ioctl_int(&control, LOOP_CTL_GET_FREE, 0).map_err(|errno| LoopError::Ioctl {
            request: "LOOP_CTL_GET_FREE",
            device: control_path.clone(),
            errno,
        })?;
        let index = u32::try_from(free).unwrap_or_default();
        let (device, path) = open_loop(index, true)?;
        match configure(&device, &backing, image, read_only) {
            Ok(()) => {
                info!(index, image = %image.display(), read_only, "attached loop device");
                return Ok(index);
            }
            // Someone else took it between GET_FREE and our call: take the next.
            Err((_, Errno::EBUSY)) => continue,
            Err((request, errno)) => {
                return Err(LoopError::Ioctl {
                    request,
                    device: path,
                    errno,
                })
            }
        }
    }
    Err(LoopError::Exhausted {
        image: image.to_path_buf(),
        attempts: ATTEMPTS,
    })
}

/// Attaches `backing` to `device`: LOOP_CONFIGURE, or LOOP_SET_FD and
/// LOOP_SET_STATUS64 where the kernel lacks it.
fn configure(
    device: &File,
    backing: &File,
    image: &Path,
    read_only: bool,
) -> Result<(), (&'static str, Errno)> {
    let info = LoopInfo64::for_image(image, read_only);
    let mut config = LoopConfig {
        fd: u32::try_from(backing.as_raw_fd()).unwrap_or_default(),
        block_size: 0,
        info,
        reserved: [0; 8],
    };
    match ioctl_ptr(device, LOOP_CONFIGURE, &mut config) {
        Ok(()) => return Ok(()),
        Err(Errno::ENOTTY | Errno::EINVAL) => {}
        Err(errno) => return Err(("LOOP_CONFIGURE", errno)),
    }
    let fd = libc::c_ulong::try_from(backing.as_raw_fd()).unwrap_or_default();
    ioctl_int(device, LOOP_SET_FD, fd).map_err(|e| ("LOOP_SET_FD", e))?;
    let mut info = info;
    if let Err(errno) = ioctl_ptr(device, LOOP_SET_STATUS64, &mut info) {
        let _ = ioctl_int(device, LOOP_CLR_FD, 0);
        return Err(("LOOP_SET_STATUS64", errno));
    }
    Ok(())
}

/// Detaches loop `index`. The kernel defers it while someone still has the device
/// open; an already detached device is fine. Waits briefly for sysfs to show the
/// device free, so that a following check sees it.
pub fn detach(index: u32) -> Result<(), LoopError> {
    let (device, path) = open_loop(index, false)?;
    match ioctl_int(&device, LOOP_CLR_FD, 0) {
        Ok(_) | Err(Errno::ENXIO) => {}
        Err(errno) => {
            return Err(LoopError::Ioctl {
                request: "LOOP_CLR_FD",
                device: path,
                errno,
            })
        }
    }
    drop(device);
    info!(index, "detached loop device");
    let attribute = Path::new(loop_scan::SYS_BLOCK).join(format!("loop{index}/loop/backing_file"));
    let deadline = Instant::now() + Duration::from_secs(1);
    while attribute.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_structures_have_the_kernel_sizes() {
        assert_eq!(std::mem::size_of::<LoopInfo64>(), 232);
        assert_eq!(std::mem::size_of::<LoopConfig>(), 304);
    }

    #[test]
    fn the_file_name_is_truncated_and_terminated() {
        let long = PathBuf::from(format!("/{}", "x".repeat(100)));
        let info = LoopInfo64::for_image(&long, true);
        assert_eq!(info.lo_file_name[LO_NAME_SIZE - 1], 0);
        assert_eq!(info.lo_file_name[0], b'/');
        assert_eq!(info.lo_flags, LO_FLAGS_READ_ONLY);
        assert_eq!(LoopInfo64::for_image(Path::new("/a"), false).lo_flags, 0);
    }

    #[test]
    fn a_missing_image_has_no_loop_and_a_path_match_counts_without_a_device() {
        let sys = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        let image = data.path().join("v.img");
        assert_eq!(find_in(sys.path(), &image).unwrap(), None);
        std::fs::write(&image, b"").unwrap();
        // A loop index no host has, so the device cannot be asked and the path decides.
        let fake = sys.path().join("loop4000000/loop");
        std::fs::create_dir_all(&fake).unwrap();
        std::fs::write(fake.join("backing_file"), format!("{}\n", image.display())).unwrap();
        assert!(!device_path(4_000_000).exists());
        assert_eq!(find_in(sys.path(), &image).unwrap(), Some(4_000_000));
        let other = data.path().join("w.img");
        std::fs::write(&other, b"").unwrap();
        assert_eq!(find_in(sys.path(), &other).unwrap(), None);
    }

    #[test]
    fn device_paths_are_under_dev() {
        assert_eq!(device_path(3), Path::new("/dev/loop3"));
    }
}
