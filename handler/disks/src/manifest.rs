//! The record of files this crate created for a VM, so cleanup removes only those.
//!
//! `<vm_dir>/disks/owned.json` lists file names (no directories) inside `<vm_dir>/disks/`.
//! A name is recorded *before* its file is created, so after a crash the record may name a
//! file that does not exist (harmless) but never misses one that does.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fsutil::{self, Publish};

/// File name of the record inside the disks directory.
pub const MANIFEST_FILE: &str = "owned.json";
const VERSION: u32 = 1;

/// Errors reading or writing the ownership record.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The record exists but cannot be read.
    #[error("cannot read the disk ownership record {path}: {source}")]
    Read {
        /// The record file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The record is not valid JSON of the expected shape.
    #[error("disk ownership record {path} is corrupt: {source}")]
    Parse {
        /// The record file.
        path: PathBuf,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// The record names something that is not a plain file name.
    #[error("disk ownership record {path} names {name:?}, which is not a plain file name")]
    BadEntry {
        /// The record file.
        path: PathBuf,
        /// The offending entry.
        name: String,
    },
    /// The record has a version this code does not know.
    #[error("disk ownership record {path} has version {found}, expected {VERSION}")]
    Version {
        /// The record file.
        path: PathBuf,
        /// The version found.
        found: u32,
    },
    /// The record cannot be written.
    #[error("cannot write the disk ownership record {path}: {source}")]
    Write {
        /// The record file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The filesystem is full.
    #[error("no space left on the filesystem holding the disk ownership record {path}")]
    NoSpace {
        /// The record file.
        path: PathBuf,
    },
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Record {
    version: u32,
    files: BTreeSet<String>,
}

/// The ownership record of one VM's disks directory.
#[derive(Debug)]
pub struct Manifest {
    path: PathBuf,
    files: BTreeSet<String>,
}

impl Manifest {
    /// Loads the record in `disks_dir` (an absent record is empty).
    pub fn load(disks_dir: &Path) -> Result<Self, ManifestError> {
        let path = disks_dir.join(MANIFEST_FILE);
        let files = match fs::read(&path) {
            Ok(bytes) => {
                let record: Record =
                    serde_json::from_slice(&bytes).map_err(|source| ManifestError::Parse {
                        path: path.clone(),
                        source,
                    })?;
                if record.version != VERSION {
                    return Err(ManifestError::Version {
                        path,
                        found: record.version,
                    });
                }
                if let Some(name) = record.files.iter().find(|n| !is_plain_name(n)) {
                    return Err(ManifestError::BadEntry {
                        path,
                        name: name.clone(),
                    });
                }
                record.files
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeSet::new(),
            Err(source) => return Err(ManifestError::Read { path, source }),
        };
        Ok(Manifest { path, files })
    }

    /// The recorded file names.
    pub fn files(&self) -> impl Iterator<Item = &str> {
        self.files.iter().map(String::as_str)
    }

    /// The record's own path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records `name` (a file in the disks directory) and persists the record if it changed.
    pub fn record(&mut self, name: &str) -> Result<(), ManifestError> {
        if !is_plain_name(name) {
            return Err(ManifestError::BadEntry {
                path: self.path.clone(),
                name: name.to_owned(),
            });
        }
        if self.files.insert(name.to_owned()) {
            if let Err(e) = self.save() {
                self.files.remove(name);
                return Err(e);
            }
        }
        Ok(())
    }

    fn save(&self) -> Result<(), ManifestError> {
        let record = Record {
            version: VERSION,
            files: self.files.clone(),
        };
        let bytes = serde_json::to_vec_pretty(&record).map_err(|e| ManifestError::Write {
            path: self.path.clone(),
            source: io::Error::other(e),
        })?;
        fsutil::create_atomically(&self.path, Publish::Replace, |f| f.write_all(&bytes)).map_err(
            |source| {
                if fsutil::is_no_space(&source) {
                    ManifestError::NoSpace {
                        path: self.path.clone(),
                    }
                } else {
                    ManifestError::Write {
                        path: self.path.clone(),
                        source,
                    }
                }
            },
        )
    }
}

/// A single path component that is not `.`/`..` and not the record itself.
fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name != MANIFEST_FILE
        && !name.contains('/')
        && !name.contains('\0')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_persist_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Manifest::load(dir.path()).unwrap();
        assert_eq!(m.files().count(), 0);
        m.record("a.img").unwrap();
        m.record("b.qcow2").unwrap();
        m.record("a.img").unwrap();
        let again = Manifest::load(dir.path()).unwrap();
        assert_eq!(again.files().collect::<Vec<_>>(), ["a.img", "b.qcow2"]);
    }

    #[test]
    fn refuses_paths_and_corrupt_records() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Manifest::load(dir.path()).unwrap();
        for bad in ["../x", "a/b", "", "..", MANIFEST_FILE] {
            assert!(
                matches!(m.record(bad), Err(ManifestError::BadEntry { .. })),
                "{bad}"
            );
        }
        fs::write(
            dir.path().join(MANIFEST_FILE),
            br#"{"version":1,"files":["../../etc/passwd"]}"#,
        )
        .unwrap();
        assert!(matches!(
            Manifest::load(dir.path()),
            Err(ManifestError::BadEntry { .. })
        ));
        fs::write(dir.path().join(MANIFEST_FILE), b"{nope").unwrap();
        let err = Manifest::load(dir.path()).unwrap_err();
        assert!(err.to_string().contains("owned.json"), "{err}");
        fs::write(
            dir.path().join(MANIFEST_FILE),
            br#"{"version":9,"files":[]}"#,
        )
        .unwrap();
        assert!(matches!(
            Manifest::load(dir.path()),
            Err(ManifestError::Version { found: 9, .. })
        ));
    }
}
