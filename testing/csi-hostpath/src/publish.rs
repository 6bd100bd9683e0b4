//! Putting a volume at a pod's target path and taking it away again.
//!
//! A filesystem volume's directory is bind-mounted onto the target directory. A block
//! volume's image is attached to a loop device, whose node is bind-mounted onto the
//! target file; the loop device is detached when its last such mount goes. Both steps
//! are idempotent: a target that already shows the volume is left as it is, a target
//! that is gone is fine.

use std::fs::OpenOptions;
use std::io;
use std::path::{Path, PathBuf};

use tracing::{info, warn};

use crate::capability::VolumeKind;
use crate::loopdev::{self, LoopError};
use crate::mount::{self, MountError, Unmounted};
use crate::mountinfo::{MountInfoError, MountTable};
use crate::store::VolumePaths;

/// How many mounts stacked on one target an unpublish takes down at most.
const MAX_STACKED_MOUNTS: usize = 16;

/// Why a publish or unpublish failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The target path is not absolute.
    #[error("target path {path} is not absolute", path = path.display())]
    RelativeTarget {
        /// The path.
        path: PathBuf,
    },
    /// Creating, examining or removing the target failed.
    #[error("cannot {action} target {path}: {source}", path = path.display())]
    Target {
        /// What was being done.
        action: &'static str,
        /// The target.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A block volume's target is a directory.
    #[error("target {path} of block volume {id} is a directory, not a file", path = path.display())]
    TargetIsDirectory {
        /// The volume.
        id: String,
        /// The target.
        path: PathBuf,
    },
    /// Something other than the volume (or the volume with other access) is mounted at
    /// the target.
    #[error("target {path} already has a mount that is not volume {id} {how}", path = path.display())]
    Occupied {
        /// The volume.
        id: String,
        /// The target.
        path: PathBuf,
        /// What differs.
        how: &'static str,
    },
    /// Mounts were still there after unmounting repeatedly.
    #[error("target {path} is still mounted after {MAX_STACKED_MOUNTS} unmounts", path = path.display())]
    StillMounted {
        /// The target.
        path: PathBuf,
    },
    /// A mount or unmount failed.
    #[error(transparent)]
    Mount(#[from] MountError),
    /// The mount table could not be read.
    #[error(transparent)]
    MountInfo(#[from] MountInfoError),
    /// A loop device operation failed.
    #[error(transparent)]
    Loop(#[from] LoopError),
}

impl From<PublishError> for tonic::Status {
    fn from(error: PublishError) -> Self {
        match error {
            PublishError::RelativeTarget { .. } => {
                tonic::Status::invalid_argument(error.to_string())
            }
            PublishError::TargetIsDirectory { .. } => {
                tonic::Status::failed_precondition(error.to_string())
            }
            PublishError::Occupied { .. } => tonic::Status::already_exists(error.to_string()),
            _ => tonic::Status::internal(error.to_string()),
        }
    }
}

/// What [`publish`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// The volume is now mounted at the target.
    Now,
    /// It was there already.
    Already,
}

fn target_error<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> PublishError + 'a {
    move |source| PublishError::Target {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// `target` with its parent's symlinks resolved, as the mount table shows it; the
/// target itself is not examined (it may be a mount of something unreachable).
fn resolve(target: &Path) -> Result<PathBuf, PublishError> {
    if !target.is_absolute() {
        return Err(PublishError::RelativeTarget {
            path: target.to_path_buf(),
        });
    }
    match (target.parent(), target.file_name()) {
        (Some(parent), Some(name)) => Ok(parent
            .canonicalize()
            .map_err(target_error("resolve the parent of", target))?
            .join(name)),
        _ => Ok(target.to_path_buf()),
    }
}

/// Mounts `source` at `target` unless the topmost mount there already shows it.
fn bind_once(
    id: &str,
    source: &Path,
    target: &Path,
    read_only: bool,
) -> Result<Published, PublishError> {
    let table = MountTable::read()?;
    if table.top_at(target).is_some() {
        let Some(top) = table.is_bind_of(target, source) else {
            return Err(PublishError::Occupied {
                id: id.to_owned(),
                path: target.to_path_buf(),
                how: "(another source)",
            });
        };
        if top.read_only() != read_only {
            return Err(PublishError::Occupied {
                id: id.to_owned(),
                path: target.to_path_buf(),
                how: if read_only {
                    "read-only (it is mounted read-write)"
                } else {
                    "read-write (it is mounted read-only)"
                },
            });
        }
        return Ok(Published::Already);
    }
    mount::bind(source, target, read_only)?;
    Ok(Published::Now)
}

/// Publishes volume `id` (of `kind`, stored at `paths`) at `target`.
pub fn publish(
    id: &str,
    kind: VolumeKind,
    paths: &VolumePaths,
    target: &Path,
    read_only: bool,
) -> Result<Published, PublishError> {
    let resolved = resolve_or_create_parent(target)?;
    let published = match kind {
        VolumeKind::Mount => {
            std::fs::create_dir_all(&resolved).map_err(target_error("create", target))?;
            bind_once(id, &paths.dir, &resolved, read_only)?
        }
        VolumeKind::Block => publish_block(id, &paths.image, &resolved, read_only)?,
    };
    info!(%id, target = %target.display(), read_only, ?published, "published");
    Ok(published)
}

fn resolve_or_create_parent(target: &Path) -> Result<PathBuf, PublishError> {
    if let Some(parent) = target.parent().filter(|_| target.is_absolute()) {
        std::fs::create_dir_all(parent).map_err(target_error("create the parent of", target))?;
    }
    resolve(target)
}

fn publish_block(
    id: &str,
    image: &Path,
    target: &Path,
    read_only: bool,
) -> Result<Published, PublishError> {
    match std::fs::symlink_metadata(target) {
        Ok(m) if m.is_dir() => {
            return Err(PublishError::TargetIsDirectory {
                id: id.to_owned(),
                path: target.to_path_buf(),
            })
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(target)
                .map_err(target_error("create", target))?;
        }
        Err(e) => return Err(target_error("examine", target)(e)),
    }
    let index = loopdev::attach(image, read_only)?;
    let device = loopdev::device_node(index)?;
    let result = bind_once(id, &device, target, read_only);
    if result.is_err() {
        detach_if_unused(index);
    }
    result
}

/// Detaches loop `index` unless one of its nodes is still bind-mounted somewhere.
/// Failures are logged: a leftover loop device only keeps DeleteVolume refusing.
fn detach_if_unused(index: u32) {
    let device = loopdev::device_path(index);
    match MountTable::read() {
        Ok(table) if table.bind_mounts_of(&device).is_empty() => {
            if let Err(error) = loopdev::detach(index) {
                warn!(%error, index, "cannot detach the loop device");
            }
        }
        Ok(_) => info!(index, "loop device still published elsewhere; kept"),
        Err(error) => warn!(%error, index, "cannot tell whether the loop device is still used"),
    }
}

/// Takes volume `id` (stored at `paths`) away from `target`: unmounts whatever is
/// mounted there, removes the target, and detaches the volume's loop device once no
/// mount of it is left. A missing target is fine.
pub fn unpublish(id: &str, paths: &VolumePaths, target: &Path) -> Result<(), PublishError> {
    let resolved = match resolve(target) {
        Ok(resolved) => Some(resolved),
        // The parent is gone, so is the target.
        Err(PublishError::Target { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            None
        }
        Err(e) => return Err(e),
    };
    if let Some(resolved) = resolved {
        unmount_all(&resolved)?;
        remove_target(&resolved)?;
    }
    if let Some(index) = loopdev::find(&paths.image)? {
        detach_if_unused(index);
    }
    info!(%id, target = %target.display(), "unpublished");
    Ok(())
}

fn unmount_all(target: &Path) -> Result<(), PublishError> {
    for _ in 0..MAX_STACKED_MOUNTS {
        if MountTable::read()?.top_at(target).is_none() {
            return Ok(());
        }
        if mount::unmount(target)? == Unmounted::Lazily {
            warn!(target = %target.display(), "target was busy; detached lazily");
        }
    }
    if MountTable::read()?.top_at(target).is_none() {
        return Ok(());
    }
    Err(PublishError::StillMounted {
        path: target.to_path_buf(),
    })
}

/// Removes the (unmounted) target: an empty directory or a file. A non-empty directory
/// is an error rather than something to delete recursively.
fn remove_target(target: &Path) -> Result<(), PublishError> {
    let removed = match std::fs::symlink_metadata(target) {
        Ok(m) if m.is_dir() => std::fs::remove_dir(target),
        Ok(_) => std::fs::remove_file(target),
        Err(e) => Err(e),
    };
    match removed {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(target_error("remove", target)(e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(dir: &Path) -> VolumePaths {
        VolumePaths {
            dir: dir.join("v"),
            image: dir.join("v.img"),
            record: dir.join("v.json"),
        }
    }

    #[test]
    fn a_relative_target_is_invalid() {
        let e = resolve(Path::new("relative/target")).unwrap_err();
        assert_eq!(tonic::Status::from(e).code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn unpublishing_a_missing_target_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        let p = paths(dir.path());
        unpublish("v", &p, &dir.path().join("gone")).unwrap();
        unpublish("v", &p, &dir.path().join("no/parent/either")).unwrap();
    }

    #[test]
    fn an_unmounted_target_is_removed_but_a_full_directory_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let p = paths(dir.path());
        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        unpublish("v", &p, &empty).unwrap();
        assert!(!empty.exists());
        let file = dir.path().join("file");
        std::fs::write(&file, b"").unwrap();
        unpublish("v", &p, &file).unwrap();
        assert!(!file.exists());
        let full = dir.path().join("full");
        std::fs::create_dir(&full).unwrap();
        std::fs::write(full.join("data"), b"x").unwrap();
        assert!(unpublish("v", &p, &full).is_err());
        assert!(full.join("data").exists());
    }

    #[test]
    fn a_directory_target_for_a_block_volume_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = paths(dir.path());
        let target = dir.path().join("target");
        std::fs::create_dir(&target).unwrap();
        let e = publish("v", VolumeKind::Block, &p, &target, false).unwrap_err();
        assert!(matches!(e, PublishError::TargetIsDirectory { .. }), "{e}");
    }
}
