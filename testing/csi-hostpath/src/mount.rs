//! Bind mounts: making one (read-only if asked) and taking one down.

use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// Why a mount or unmount failed.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// mount(2) failed.
    #[error("cannot bind-mount {source_path} onto {target}: {errno}", source_path = source_path.display(), target = target.display())]
    Bind {
        /// What was to be mounted.
        source_path: PathBuf,
        /// Where.
        target: PathBuf,
        /// The error.
        errno: Errno,
    },
    /// The read-only remount failed (the bind mount was taken down again).
    #[error("cannot make the bind mount at {target} read-only: {errno}", target = target.display())]
    ReadOnly {
        /// The mount point.
        target: PathBuf,
        /// The error.
        errno: Errno,
    },
    /// umount2(2) failed.
    #[error("cannot unmount {target}: {errno}", target = target.display())]
    Unmount {
        /// The mount point.
        target: PathBuf,
        /// The error.
        errno: Errno,
    },
}

impl From<MountError> for tonic::Status {
    fn from(error: MountError) -> Self {
        tonic::Status::internal(error.to_string())
    }
}

/// Bind-mounts `source` onto `target`, then makes that mount read-only if `read_only`
/// (a bind mount ignores `MS_RDONLY` until remounted).
pub fn bind(source: &Path, target: &Path, read_only: bool) -> Result<(), MountError> {
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|errno| MountError::Bind {
        source_path: source.to_path_buf(),
        target: target.to_path_buf(),
        errno,
    })?;
    if read_only {
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        if let Err(errno) = mount(None::<&str>, target, None::<&str>, flags, None::<&str>) {
            let _ = umount2(target, MntFlags::MNT_DETACH);
            return Err(MountError::ReadOnly {
                target: target.to_path_buf(),
                errno,
            });
        }
    }
    Ok(())
}

/// What [`unmount`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmounted {
    /// The mount is gone.
    Now,
    /// It was busy: detached, and goes away once its last user lets go.
    Lazily,
    /// Nothing was mounted there.
    NotMounted,
}

/// Unmounts the topmost mount at `target`; a busy one is detached lazily.
pub fn unmount(target: &Path) -> Result<Unmounted, MountError> {
    let err = |errno| MountError::Unmount {
        target: target.to_path_buf(),
        errno,
    };
    match umount2(target, MntFlags::empty()) {
        Ok(()) => Ok(Unmounted::Now),
        Err(Errno::EINVAL) => Ok(Unmounted::NotMounted),
        Err(Errno::EBUSY) => umount2(target, MntFlags::MNT_DETACH)
            .map(|()| Unmounted::Lazily)
            .map_err(err),
        Err(errno) => Err(err(errno)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unmounting_a_plain_directory_is_not_mounted_for_root_and_an_error_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        match unmount(dir.path()) {
            Ok(u) => assert_eq!(u, Unmounted::NotMounted),
            Err(e) => assert!(e.to_string().contains("cannot unmount"), "{e}"),
        }
    }
}
