//! The volumes in the data directory: creating (idempotently), looking up and deleting.
//!
//! A volume `<id>` is the directory `<id>/` (filesystem) or the sparse file `<id>.img`
//! (block), plus its record `<id>.json`, written last: a create interrupted before the
//! record leaves storage that a retry takes over, and nothing counts as a volume until
//! its record is there.

use std::fs::{DirBuilder, OpenOptions};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use tracing::{info, warn};

use crate::capability::VolumeKind;
use crate::capacity::{CapacityBounds, SECTOR_BYTES};
use crate::loopdev::{self, LoopError};
use crate::metadata::{self, MetadataError, VolumeMeta};
use crate::mountinfo::{MountInfoError, MountTable};
use crate::volume_id::{VolumeId, VolumeIdError};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The name or id cannot be a volume id.
    #[error(transparent)]
    Id(#[from] VolumeIdError),
    /// A volume of that name exists and does not fit the request.
    #[error(
        "volume {name:?} already exists as a {existing_kind} volume of {existing_bytes} bytes, \
         which does not match the request ({kind}, {bounds})"
    )]
    Conflict {
        /// The name.
        name: String,
        /// What it is.
        existing_kind: VolumeKind,
        /// Its size.
        existing_bytes: u64,
        /// What the request asks for.
        kind: VolumeKind,
        /// The requested sizes, as text.
        bounds: String,
    },
    /// The volume is still in use.
    #[error("volume {id} is still in use: {by}")]
    InUse {
        /// The volume.
        id: String,
        /// By what.
        by: String,
    },
    /// A file-system call failed.
    #[error("cannot {action} {path}: {source}", path = path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The record could not be read or written.
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    /// The mount table could not be read.
    #[error(transparent)]
    MountInfo(#[from] MountInfoError),
    /// The loop devices could not be examined.
    #[error(transparent)]
    Loop(#[from] LoopError),
}

impl From<StoreError> for tonic::Status {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Id(e) => e.into(),
            StoreError::Conflict { .. } => tonic::Status::already_exists(error.to_string()),
            StoreError::InUse { .. } => tonic::Status::failed_precondition(error.to_string()),
            _ => tonic::Status::internal(error.to_string()),
        }
    }
}

fn io_error<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// The files of one volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumePaths {
    /// The directory of a filesystem volume.
    pub dir: PathBuf,
    /// The image of a block volume.
    pub image: PathBuf,
    /// The record.
    pub record: PathBuf,
}

impl VolumePaths {
    /// Where a volume of `kind` keeps its data.
    pub fn data(&self, kind: VolumeKind) -> &Path {
        match kind {
            VolumeKind::Mount => &self.dir,
            VolumeKind::Block => &self.image,
        }
    }
}

/// A volume and its record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    /// Its id.
    pub id: VolumeId,
    /// Its record.
    pub meta: VolumeMeta,
}

/// What [`VolumeStore::delete`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleted {
    /// The volume (or what was left of it) was removed.
    Removed,
    /// There was nothing of it.
    NotFound,
}

/// The volumes of one node in one directory.
#[derive(Debug, Clone)]
pub struct VolumeStore {
    data_dir: PathBuf,
    node: String,
}

fn exists(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

impl VolumeStore {
    /// The store in `data_dir` (made if missing; kept with symlinks resolved, as the
    /// mount table shows it) of the node `node`.
    pub fn open(data_dir: &Path, node: &str) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir)
            .map_err(io_error("create the data directory", data_dir))?;
        let data_dir = data_dir
            .canonicalize()
            .map_err(io_error("resolve the data directory", data_dir))?;
        Ok(Self {
            data_dir,
            node: node.to_owned(),
        })
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The node the volumes are on.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The files of volume `id`.
    pub fn paths(&self, id: &VolumeId) -> VolumePaths {
        VolumePaths {
            dir: self.data_dir.join(id.as_str()),
            image: self.data_dir.join(format!("{id}.img")),
            record: self.data_dir.join(format!("{id}.json")),
        }
    }

    /// The record of volume `id`, `None` if it does not exist.
    pub fn lookup(&self, id: &VolumeId) -> Result<Option<VolumeMeta>, StoreError> {
        Ok(metadata::read(&self.paths(id).record)?)
    }

    /// Creates the volume `name` of `kind` sized within `bounds`, or returns the
    /// existing one if it fits them.
    pub fn create(
        &self,
        name: &str,
        kind: VolumeKind,
        bounds: CapacityBounds,
    ) -> Result<Volume, StoreError> {
        let id = VolumeId::from_name(name)?;
        if let Some(meta) = self.lookup(&id)? {
            if meta.name != name || meta.kind != kind || !bounds.accepts(meta.capacity_bytes) {
                return Err(StoreError::Conflict {
                    name: name.to_owned(),
                    existing_kind: meta.kind,
                    existing_bytes: meta.capacity_bytes,
                    kind,
                    bounds: describe(bounds),
                });
            }
            info!(%id, "volume exists already");
            return Ok(Volume { id, meta });
        }
        let paths = self.paths(&id);
        let capacity = match kind {
            VolumeKind::Mount => bounds.size(1),
            VolumeKind::Block => bounds.size(SECTOR_BYTES),
        };
        self.remove_leftover(&paths, kind)?;
        match kind {
            VolumeKind::Mount => DirBuilder::new()
                .mode(0o777)
                .create(&paths.dir)
                .or_else(|e| match e.kind() {
                    io::ErrorKind::AlreadyExists => Ok(()),
                    _ => Err(e),
                })
                .map_err(io_error("create", &paths.dir))?,
            VolumeKind::Block => {
                let image = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(&paths.image)
                    .map_err(io_error("create", &paths.image))?;
                image
                    .set_len(capacity)
                    .and_then(|()| image.sync_all())
                    .map_err(io_error("size", &paths.image))?;
            }
        }
        let meta = VolumeMeta {
            name: name.to_owned(),
            capacity_bytes: capacity,
            kind,
            node: self.node.clone(),
        };
        metadata::write_atomic(&paths.record, &meta)?;
        info!(%id, %kind, capacity, "created volume");
        Ok(Volume { id, meta })
    }

    /// Removes storage of the other kind that an interrupted create (one that never
    /// wrote its record, so was never handed out) left behind.
    fn remove_leftover(&self, paths: &VolumePaths, kind: VolumeKind) -> Result<(), StoreError> {
        match kind {
            VolumeKind::Mount if exists(&paths.image) => {
                warn!(path = %paths.image.display(), "removing the image of an unfinished create");
                std::fs::remove_file(&paths.image).map_err(io_error("remove", &paths.image))
            }
            VolumeKind::Block if exists(&paths.dir) => {
                warn!(path = %paths.dir.display(), "removing the directory of an unfinished create");
                std::fs::remove_dir(&paths.dir).map_err(io_error("remove", &paths.dir))
            }
            _ => Ok(()),
        }
    }

    /// Fails if the storage of `id` is in use: its directory bind-mounted, or its
    /// image's loop device bind-mounted (published) or still open. A loop device left
    /// attached with no mount of it anywhere (an unpublish that could not detach it) is
    /// detached here rather than refusing the delete for ever.
    pub fn ensure_unused(&self, id: &VolumeId) -> Result<(), StoreError> {
        let paths = self.paths(id);
        let in_use = |by: String| StoreError::InUse {
            id: id.to_string(),
            by,
        };
        if let Some(index) = loopdev::find(&paths.image)? {
            let device = loopdev::device_path(index);
            let table = MountTable::read()?;
            if let Some(mount) = table.bind_mounts_of(&device).first() {
                return Err(in_use(format!(
                    "its loop device {} is published at {}",
                    device.display(),
                    mount.mount_point.display()
                )));
            }
            warn!(%id, index, "detaching the leftover loop device of a deleted volume");
            loopdev::detach(index)?;
            if loopdev::find(&paths.image)?.is_some() {
                return Err(in_use(format!(
                    "its loop device {} is still open",
                    device.display()
                )));
            }
        }
        if exists(&paths.dir) {
            let table = MountTable::read()?;
            if let Some(mount) = table.bind_mounts_of(&paths.dir).first() {
                return Err(in_use(format!(
                    "it is bind-mounted at {}",
                    mount.mount_point.display()
                )));
            }
        }
        Ok(())
    }

    /// Deletes volume `id`, refusing while it is in use. Nothing to delete is fine.
    pub fn delete(&self, id: &VolumeId) -> Result<Deleted, StoreError> {
        let paths = self.paths(id);
        let temp = metadata::temp_path(&paths.record);
        if ![&paths.dir, &paths.image, &paths.record, &temp]
            .into_iter()
            .any(|p| exists(p))
        {
            return Ok(Deleted::NotFound);
        }
        self.ensure_unused(id)?;
        if exists(&paths.dir) {
            std::fs::remove_dir_all(&paths.dir).map_err(io_error("remove", &paths.dir))?;
        }
        for file in [&paths.image, &temp] {
            match std::fs::remove_file(file) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(io_error("remove", file)(e))
                }
                _ => {}
            }
        }
        metadata::remove(&paths.record)?;
        info!(%id, "deleted volume");
        Ok(Deleted::Removed)
    }
}

fn describe(bounds: CapacityBounds) -> String {
    match bounds.limit {
        Some(limit) => format!("{} to {limit} bytes", bounds.required),
        None => format!("at least {} bytes", bounds.required),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn bounds(required: u64, limit: Option<u64>) -> CapacityBounds {
        CapacityBounds { required, limit }
    }

    fn store() -> (tempfile::TempDir, VolumeStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = VolumeStore::open(&dir.path().join("data"), "node-a").unwrap();
        (dir, store)
    }

    #[test]
    fn creates_a_directory_or_a_sparse_image_and_the_record() {
        let (_dir, store) = store();
        let mount = store
            .create("pvc-m", VolumeKind::Mount, bounds(1 << 20, None))
            .unwrap();
        let paths = store.paths(&mount.id);
        assert!(paths.dir.is_dir() && !paths.image.exists());
        assert_eq!(store.lookup(&mount.id).unwrap(), Some(mount.meta.clone()));
        assert_eq!(mount.meta.node, "node-a");

        let block = store
            .create("pvc-b", VolumeKind::Block, bounds(1000, None))
            .unwrap();
        let paths = store.paths(&block.id);
        let image = std::fs::metadata(&paths.image).unwrap();
        assert_eq!(image.len(), 1024);
        assert_eq!(block.meta.capacity_bytes, 1024);
        assert_eq!(image.blocks(), 0, "the image is sparse");
        assert!(!paths.dir.exists());
    }

    #[test]
    fn the_same_request_again_returns_the_same_volume() {
        let (_dir, store) = store();
        let first = store
            .create("pvc-1", VolumeKind::Block, bounds(4096, Some(8192)))
            .unwrap();
        let again = store
            .create("pvc-1", VolumeKind::Block, bounds(0, None))
            .unwrap();
        assert_eq!(first, again);
        let within = store
            .create("pvc-1", VolumeKind::Block, bounds(4096, Some(4096)))
            .unwrap();
        assert_eq!(first, within);
    }

    #[test]
    fn another_kind_or_size_is_a_conflict() {
        let (_dir, store) = store();
        store
            .create("pvc-1", VolumeKind::Mount, bounds(4096, None))
            .unwrap();
        let e = store
            .create("pvc-1", VolumeKind::Block, bounds(4096, None))
            .unwrap_err();
        assert!(matches!(e, StoreError::Conflict { .. }), "{e}");
        assert_eq!(tonic::Status::from(e).code(), tonic::Code::AlreadyExists);
        let bigger = store
            .create("pvc-1", VolumeKind::Mount, bounds(8192, None))
            .unwrap_err();
        assert!(bigger.to_string().contains("4096 bytes"), "{bigger}");
        let smaller = store
            .create("pvc-1", VolumeKind::Mount, bounds(0, Some(1024)))
            .unwrap_err();
        assert!(matches!(smaller, StoreError::Conflict { .. }));
    }

    #[test]
    fn an_interrupted_create_is_taken_over() {
        let (_dir, store) = store();
        let id = VolumeId::from_name("pvc-1").unwrap();
        let paths = store.paths(&id);
        // A block create stopped before the record, then retried as a filesystem.
        std::fs::write(&paths.image, b"partial").unwrap();
        std::fs::write(metadata::temp_path(&paths.record), b"{").unwrap();
        assert_eq!(store.lookup(&id).unwrap(), None);
        let volume = store
            .create("pvc-1", VolumeKind::Mount, bounds(0, None))
            .unwrap();
        assert!(paths.dir.is_dir() && !paths.image.exists());
        assert_eq!(volume.meta.capacity_bytes, crate::capacity::DEFAULT_BYTES);
    }

    #[test]
    fn delete_removes_everything_and_is_idempotent() {
        let (_dir, store) = store();
        let mount = store
            .create("pvc-m", VolumeKind::Mount, bounds(0, None))
            .unwrap();
        std::fs::write(store.paths(&mount.id).dir.join("data"), b"x").unwrap();
        let block = store
            .create("pvc-b", VolumeKind::Block, bounds(4096, None))
            .unwrap();
        for id in [&mount.id, &block.id] {
            assert_eq!(store.delete(id).unwrap(), Deleted::Removed);
            assert_eq!(store.delete(id).unwrap(), Deleted::NotFound);
            assert_eq!(store.lookup(id).unwrap(), None);
        }
        assert_eq!(std::fs::read_dir(store.data_dir()).unwrap().count(), 0);
        let unknown = VolumeId::parse("pvc-never").unwrap();
        assert_eq!(store.delete(&unknown).unwrap(), Deleted::NotFound);
    }

    #[test]
    fn names_are_escaped_into_the_data_dir() {
        let (_dir, store) = store();
        let v = store
            .create("../escape", VolumeKind::Mount, bounds(0, None))
            .unwrap();
        assert_eq!(v.id.as_str(), "_2e._2fescape");
        assert_eq!(store.paths(&v.id).dir.parent(), Some(store.data_dir()));
        assert_eq!(v.meta.name, "../escape");
    }
}
