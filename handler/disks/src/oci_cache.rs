//! The node's cache of containerDisks unpacked from OCI layouts and archives.
//!
//! # Layout
//!
//! ```text
//! <cache>/sha256-<manifest hex>/disk.qcow2   or   disk.img   (read-only, mode 0444)
//! <cache>/.tmp-<pid>-<n>-…                       unpacks and decompressed archives in progress
//! ```
//!
//! An entry is keyed by the digest of the image manifest, so the same image reached through
//! another path, tag or archive shares one entry, and a changed image gets a new one. The
//! disk's format comes from its magic (qcow2 or raw), like the image store's. A qcow2 disk
//! that names a backing file is refused: it would make the guest read a host file.
//!
//! # Unpacking once, atomically
//!
//! A miss unpacks into a fresh `.tmp-…` directory (every blob verified), syncs it and
//! renames it to `sha256-<hex>`; a complete-looking entry therefore always is complete. If
//! two unpacks race, the first rename wins and the other uses the winner's entry. A crash
//! leaves only a `.tmp-…` directory, removed by the next unpack once its process is gone.
//! Hits read only `index.json` and the manifest (verified), never the layers.
//!
//! Entries are never removed by the node agent: VMs' overlays name the cached file as
//! their backing file. An operator may delete an entry no VM uses.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use ironvisor_diskimage::{inspect, probe, DiskFormat, DiskImageError};

use crate::fsutil;
use crate::oci_layers::{self, OciLayerError};
use crate::oci_layout::{OciLayout, OciLayoutError, OciReference};

/// Prefix of scratch names in the cache directory.
const TEMP_PREFIX: &str = ".tmp-";

/// Scratch names taken by this process.
static NEXT_TEMP: AtomicU64 = AtomicU64::new(0);

/// Why an `oci:` / `oci-archive:` containerDisk cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum OciCacheError {
    /// The reference, layout, index or manifest is unusable.
    #[error("image {image}: {source}")]
    Layout {
        /// The reference as given.
        image: String,
        /// What is wrong.
        source: OciLayoutError,
    },
    /// The layers do not yield one disk file.
    #[error("image {image}: {source}")]
    Layers {
        /// The reference as given.
        image: String,
        /// What is wrong.
        source: OciLayerError,
    },
    /// The disk file is a qcow2 image with a backing file.
    #[error("image {image}: its disk {name} is a qcow2 image backed by {backing}; a containerDisk must be self-contained")]
    BackingFile {
        /// The reference as given.
        image: String,
        /// The disk's name in the image.
        name: String,
        /// The backing file it names.
        backing: String,
    },
    /// The disk's format cannot be read.
    #[error("image {image}: cannot read the format of {path}: {source}")]
    Probe {
        /// The reference as given.
        image: String,
        /// The file.
        path: PathBuf,
        /// The image-layer error.
        source: DiskImageError,
    },
    /// A cache entry exists but does not hold one disk file of the right format.
    #[error("image {image}: cache entry {path} is damaged ({reason}); remove it to unpack the image again")]
    Damaged {
        /// The reference as given.
        image: String,
        /// The entry directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The filesystem of the cache is full; nothing half-made was left behind.
    #[error("image {image}: no space left on the filesystem of the OCI disk cache {path}")]
    NoSpace {
        /// The reference as given.
        image: String,
        /// The file or directory being written.
        path: PathBuf,
    },
    /// The cache directory or an entry cannot be written or read.
    #[error("image {image}: OCI disk cache {path}: {source}")]
    Cache {
        /// The reference as given.
        image: String,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

impl OciCacheError {
    /// True when the image is not there (missing path, unknown tag, malformed reference)
    /// rather than there but unusable.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            OciCacheError::Layout {
                source: OciLayoutError::Missing { .. }
                    | OciLayoutError::UnknownTag { .. }
                    | OciLayoutError::InvalidReference { .. },
                ..
            }
        )
    }
}

/// A containerDisk ready in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedDisk {
    /// The cached disk file (a base image: never written).
    pub path: PathBuf,
    /// Its format.
    pub format: DiskFormat,
    /// The manifest digest (`sha256:…`) keying the entry.
    pub digest: String,
    /// True if this call unpacked it; false if it was cached already.
    pub unpacked: bool,
}

/// The unpack cache rooted at a directory (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciCache {
    dir: PathBuf,
}

impl OciCache {
    /// A cache in `dir` (created when first needed).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        OciCache { dir: dir.into() }
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The disk of `image` (an `oci:` or `oci-archive:` reference), unpacked on first use.
    pub fn resolve(&self, image: &str) -> Result<CachedDisk, OciCacheError> {
        let _span = tracing::info_span!("oci_disk", image, cache = %self.dir.display()).entered();
        let layout_err = |source| OciCacheError::Layout {
            image: image.to_owned(),
            source,
        };
        let reference = OciReference::parse(image).map_err(layout_err)?;
        fs::create_dir_all(&self.dir).map_err(|e| self.io_error(image, &self.dir, e))?;
        let scratch = Scratch(self.temp_path("archive.tar"));
        let layout = OciLayout::open(&reference, &scratch.0).map_err(layout_err)?;
        let manifest = layout
            .manifest(reference.tag.as_deref())
            .map_err(layout_err)?;
        let entry = self.dir.join(format!("sha256-{}", manifest.digest_hex()));
        if let Some((path, format)) = self.lookup(image, &entry)? {
            tracing::info!(digest = %manifest.descriptor.digest, path = %path.display(), "containerDisk already unpacked");
            return Ok(CachedDisk {
                path,
                format,
                digest: manifest.descriptor.digest.clone(),
                unpacked: false,
            });
        }
        self.remove_stale();
        let started = Instant::now();
        let work = Scratch(self.temp_path(&format!("sha256-{}", manifest.digest_hex())));
        fs::create_dir(&work.0).map_err(|e| self.io_error(image, &work.0, e))?;
        let disk =
            oci_layers::extract_disk(&layout, &manifest, &work.0).map_err(
                |source| match source {
                    OciLayerError::Write { path, source } if fsutil::is_no_space(&source) => {
                        OciCacheError::NoSpace {
                            image: image.to_owned(),
                            path,
                        }
                    }
                    source => OciCacheError::Layers {
                        image: image.to_owned(),
                        source,
                    },
                },
            )?;
        drop(scratch);
        let format = self.check_disk(image, &disk.name, &disk.path)?;
        let final_file = work.0.join(file_name(format));
        fs::rename(&disk.path, &final_file).map_err(|e| self.io_error(image, &final_file, e))?;
        seal(&final_file).map_err(|e| self.io_error(image, &final_file, e))?;
        fs::File::open(&work.0)
            .and_then(|dir| dir.sync_all())
            .map_err(|e| self.io_error(image, &work.0, e))?;
        match fs::rename(&work.0, &entry) {
            Ok(()) => {
                fsutil::sync_parent(&entry).map_err(|e| self.io_error(image, &entry, e))?;
            }
            // Another unpack of the same image finished first: use its entry.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTEMPTY) | Some(libc::EEXIST)) => {
                tracing::info!(entry = %entry.display(), "another unpack finished first");
            }
            Err(e) => return Err(self.io_error(image, &entry, e)),
        }
        let (path, format) = self
            .lookup(image, &entry)?
            .ok_or_else(|| OciCacheError::Damaged {
                image: image.to_owned(),
                path: entry.clone(),
                reason: "it vanished right after unpacking".to_owned(),
            })?;
        tracing::info!(
            digest = %manifest.descriptor.digest,
            disk = %disk.name,
            size = disk.size,
            %format,
            elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            path = %path.display(),
            "containerDisk unpacked into the cache"
        );
        Ok(CachedDisk {
            path,
            format,
            digest: manifest.descriptor.digest.clone(),
            unpacked: true,
        })
    }

    /// The disk of a complete entry, `None` if there is no entry.
    fn lookup(
        &self,
        image: &str,
        entry: &Path,
    ) -> Result<Option<(PathBuf, DiskFormat)>, OciCacheError> {
        let damaged = |reason: String| OciCacheError::Damaged {
            image: image.to_owned(),
            path: entry.to_path_buf(),
            reason,
        };
        match fs::symlink_metadata(entry) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io_error(image, entry, e)),
            Ok(meta) if !meta.is_dir() => return Err(damaged("not a directory".to_owned())),
            Ok(_) => {}
        }
        let mut found = Vec::new();
        for format in [DiskFormat::Qcow2, DiskFormat::Raw] {
            let path = entry.join(file_name(format));
            match fs::symlink_metadata(&path) {
                Ok(meta) if meta.is_file() => found.push((path, format)),
                Ok(_) => return Err(damaged(format!("{} is not a regular file", path.display()))),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(self.io_error(image, &path, e)),
            }
        }
        let (path, named) = match found.len() {
            1 => found.remove(0),
            0 => return Err(damaged("it holds no disk.qcow2 or disk.img".to_owned())),
            _ => return Err(damaged("it holds both disk.qcow2 and disk.img".to_owned())),
        };
        let magic = probe(&path).map_err(|source| OciCacheError::Probe {
            image: image.to_owned(),
            path: path.clone(),
            source,
        })?;
        if magic != named {
            return Err(damaged(format!("{} holds a {magic} image", path.display())));
        }
        Ok(Some((path, named)))
    }

    /// Detects the unpacked disk's format; refuses a qcow2 image with a backing file.
    fn check_disk(
        &self,
        image: &str,
        name: &str,
        path: &Path,
    ) -> Result<DiskFormat, OciCacheError> {
        let info = inspect(path).map_err(|source| OciCacheError::Probe {
            image: image.to_owned(),
            path: path.to_path_buf(),
            source,
        })?;
        if let Some(backing) = info.backing_file {
            return Err(OciCacheError::BackingFile {
                image: image.to_owned(),
                name: name.to_owned(),
                backing,
            });
        }
        Ok(info.format)
    }

    fn temp_path(&self, what: &str) -> PathBuf {
        let n = NEXT_TEMP.fetch_add(1, Ordering::Relaxed);
        self.dir
            .join(format!("{TEMP_PREFIX}{}-{n}-{what}", std::process::id()))
    }

    /// Removes scratch left by processes that are gone (a crash mid-unpack).
    fn remove_stale(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .and_then(|n| n.strip_prefix(TEMP_PREFIX))
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok())
            else {
                continue;
            };
            if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
                continue;
            }
            let path = entry.path();
            tracing::info!(path = %path.display(), "removing scratch of an interrupted unpack");
            remove_any(&path);
        }
    }

    fn io_error(&self, image: &str, path: &Path, source: io::Error) -> OciCacheError {
        if fsutil::is_no_space(&source) {
            OciCacheError::NoSpace {
                image: image.to_owned(),
                path: path.to_path_buf(),
            }
        } else {
            OciCacheError::Cache {
                image: image.to_owned(),
                path: path.to_path_buf(),
                source,
            }
        }
    }
}

/// The cached file's name for a format.
fn file_name(format: DiskFormat) -> &'static str {
    match format {
        DiskFormat::Qcow2 => "disk.qcow2",
        DiskFormat::Raw => "disk.img",
    }
}

/// Makes the base file read-only and durable.
fn seal(path: &Path) -> io::Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(0o444))?;
    fs::File::open(path)?.sync_all()
}

fn remove_any(path: &Path) {
    let result = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    if let Err(error) = result {
        tracing::warn!(path = %path.display(), %error, "cannot remove OCI cache scratch");
    }
}

/// A scratch file or directory, removed when dropped (after a successful rename there is
/// nothing left to remove).
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        remove_any(&self.0);
    }
}
