//! The record of one volume, `<data-dir>/<id>.json`: written atomically (a temporary
//! file renamed over it) as the last step of a create, so a volume exists exactly when
//! its record does.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::capability::VolumeKind;

/// What the data directory records about a volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMeta {
    /// The CreateVolume name.
    pub name: String,
    /// The size, in bytes.
    pub capacity_bytes: u64,
    /// Directory or image file.
    pub kind: VolumeKind,
    /// The node it is on.
    pub node: String,
}

/// Why a record could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    /// Reading, writing, syncing or renaming failed.
    #[error("cannot {action} volume record {path}: {source}", path = path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The file is not a record.
    #[error("volume record {path} is not valid: {source}", path = path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
}

impl From<MetadataError> for tonic::Status {
    fn from(error: MetadataError) -> Self {
        tonic::Status::internal(error.to_string())
    }
}

fn io_error<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> MetadataError + 'a {
    move |source| MetadataError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// The temporary file a record at `path` is written to first: hidden, in the same
/// directory (so the rename stays on one filesystem).
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}

/// Writes `meta` to `path` atomically and durably: temporary file, fsync, rename,
/// fsync of the directory.
pub fn write_atomic(path: &Path, meta: &VolumeMeta) -> Result<(), MetadataError> {
    let temp = temp_path(path);
    let text = serde_json::to_vec_pretty(meta).map_err(|source| MetadataError::Invalid {
        path: path.to_path_buf(),
        source,
    })?;
    let mut file = File::create(&temp).map_err(io_error("create", &temp))?;
    file.write_all(&text).map_err(io_error("write", &temp))?;
    file.sync_all().map_err(io_error("sync", &temp))?;
    drop(file);
    std::fs::rename(&temp, path).map_err(io_error("rename into", path))?;
    if let Some(dir) = path.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_error("sync the directory of", path))?;
    }
    Ok(())
}

/// The record at `path`, `None` if there is none.
pub fn read(path: &Path) -> Result<Option<VolumeMeta>, MetadataError> {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error("read", path)(e)),
    };
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|source| MetadataError::Invalid {
            path: path.to_path_buf(),
            source,
        })
}

/// Removes the record at `path`; a missing one is fine.
pub fn remove(path: &Path) -> Result<(), MetadataError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error("remove", path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> VolumeMeta {
        VolumeMeta {
            name: "pvc-1".to_owned(),
            capacity_bytes: 1 << 30,
            kind: VolumeKind::Block,
            node: "node-a".to_owned(),
        }
    }

    #[test]
    fn round_trip_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pvc-1.json");
        write_atomic(&path, &meta()).unwrap();
        assert_eq!(read(&path).unwrap(), Some(meta()));
        assert!(!temp_path(&path).exists());
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn the_file_format_is_plain_json() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.json");
        write_atomic(&path, &meta()).unwrap();
        let value: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "name": "pvc-1", "capacity_bytes": 1073741824u64, "kind": "block", "node": "node-a"
            })
        );
    }

    #[test]
    fn a_missing_record_is_none_and_a_broken_one_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.json");
        assert_eq!(read(&path).unwrap(), None);
        std::fs::write(&path, b"{not json").unwrap();
        let e = read(&path).unwrap_err();
        assert!(matches!(e, MetadataError::Invalid { .. }), "{e}");
        assert!(e.to_string().contains("v.json"), "{e}");
        remove(&path).unwrap();
        remove(&path).unwrap();
    }

    #[test]
    fn the_temporary_file_is_hidden_beside_the_record() {
        assert_eq!(
            temp_path(Path::new("/d/pvc-1.json")),
            Path::new("/d/.pvc-1.json.tmp")
        );
    }
}
