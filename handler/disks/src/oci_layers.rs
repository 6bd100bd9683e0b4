//! Applying an image's layers to find its one disk file under `/disk/` (KubeVirt's
//! containerDisk convention).
//!
//! Layers are applied lowest first, as a container runtime would, but only the `disk/`
//! directory is materialised: each regular file directly in `disk/` is written (sparse:
//! all-zero 64 KiB blocks become holes) to a scratch directory, and OCI whiteouts of later
//! layers remove it again (`.wh.NAME` removes `NAME` and all below it, `.wh..wh..opq`
//! empties its directory; both act on lower layers only). A later layer's file of the same
//! name replaces a lower one.
//!
//! Refused anywhere in a layer: absolute names and `..` components. Refused under `disk/`:
//! anything but directories and regular files (symlinks, hard links, devices), so the
//! result never depends on where a link points. Files deeper than `disk/*` are ignored.
//! After the last layer exactly one file must remain; none or several is an error that
//! names them. Each layer's blob is checked against its digest and size once read
//! ([`crate::oci_layout::BlobReader::finish`]).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::oci_layout::{Compression, ImageManifest, OciLayout, OciLayoutError};

/// The directory of a containerDisk image that holds its disk.
const DISK_DIR: &str = "disk";
const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";
/// Copy block; all-zero blocks are left as holes.
const BLOCK: usize = 64 << 10;

/// Why the image's layers do not yield one disk file.
#[derive(Debug, thiserror::Error)]
pub enum OciLayerError {
    /// A layer blob cannot be read or fails its size or digest check.
    #[error(transparent)]
    Blob(#[from] OciLayoutError),
    /// A layer is not a readable tar (or not gzip data for a gzip layer).
    #[error("layer {layer}: cannot read it as a {kind}: {source}")]
    Tar {
        /// The layer digest.
        layer: String,
        /// `tar` or `gzip-compressed tar`.
        kind: &'static str,
        /// The reader's error.
        source: io::Error,
    },
    /// An entry name escapes the image root.
    #[error("layer {layer}: entry {name:?} is refused: {reason}")]
    UnsafePath {
        /// The layer digest.
        layer: String,
        /// The entry name.
        name: String,
        /// Absolute, or with `..`.
        reason: &'static str,
    },
    /// An entry under `/disk/` is not a directory or regular file.
    #[error("layer {layer}: /{name} is a {kind}; only regular files are accepted under /disk/")]
    NotRegular {
        /// The layer digest.
        layer: String,
        /// The entry name.
        name: String,
        /// What it is.
        kind: String,
    },
    /// Writing the disk file to scratch space failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The scratch file.
        path: PathBuf,
        /// The OS error (ENOSPC included; callers check).
        source: io::Error,
    },
    /// No file is left under `/disk/`.
    #[error("no disk file under /disk/ in its {layers} layer(s); a containerDisk image holds exactly one file in /disk/")]
    NoDisk {
        /// How many layers were applied.
        layers: usize,
    },
    /// Several files are left under `/disk/`.
    #[error("{} files under /disk/ ({}); a containerDisk image holds exactly one", .names.len(), .names.join(", "))]
    SeveralDisks {
        /// The files, as `/disk/NAME`.
        names: Vec<String>,
    },
}

/// The disk file of an image, written to scratch space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtractedDisk {
    /// Its name in the image (`/disk/rootfs.ext4`).
    pub name: String,
    /// The scratch file holding it.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
}

/// Applies the manifest's layers in order and returns the one file left in `/disk/`,
/// written under `work` (an empty scratch directory the caller removes).
pub fn extract_disk(
    layout: &OciLayout,
    manifest: &ImageManifest,
    work: &Path,
) -> Result<ExtractedDisk, OciLayerError> {
    let mut tree = DiskTree {
        work,
        files: BTreeMap::new(),
        next: 0,
    };
    for (descriptor, compression) in &manifest.layers {
        let _span = tracing::debug_span!("layer", digest = %descriptor.digest).entered();
        let mut blob = layout.blob(descriptor)?;
        let applied = {
            let reader: Box<dyn Read + '_> = match compression {
                Compression::None => Box::new(&mut blob),
                Compression::Gzip => Box::new(flate2::read::GzDecoder::new(&mut blob)),
            };
            tree.apply(reader, &descriptor.digest, *compression)
        };
        match applied {
            Ok(()) => blob.finish()?,
            // Bytes that do not match the digest explain a broken tar best.
            Err(error) => {
                blob.finish()?;
                return Err(error);
            }
        }
    }
    let mut files = std::mem::take(&mut tree.files);
    match files.len() {
        0 => Err(OciLayerError::NoDisk {
            layers: manifest.layers.len(),
        }),
        1 => {
            let (name, file) = files.pop_first().ok_or(OciLayerError::NoDisk {
                layers: manifest.layers.len(),
            })?;
            Ok(ExtractedDisk {
                name: format!("/{name}"),
                path: file.path,
                size: file.size,
            })
        }
        _ => Err(OciLayerError::SeveralDisks {
            names: files.keys().map(|name| format!("/{name}")).collect(),
        }),
    }
}

#[derive(Debug)]
struct ScratchFile {
    path: PathBuf,
    size: u64,
}

/// The files of `disk/` so far, by normalised name (`disk/x.img`).
struct DiskTree<'a> {
    work: &'a Path,
    files: BTreeMap<String, ScratchFile>,
    next: u64,
}

impl DiskTree<'_> {
    fn apply(
        &mut self,
        reader: Box<dyn Read + '_>,
        layer: &str,
        compression: Compression,
    ) -> Result<(), OciLayerError> {
        let tar_err = |source| OciLayerError::Tar {
            layer: layer.to_owned(),
            kind: match compression {
                Compression::None => "tar",
                Compression::Gzip => "gzip-compressed tar",
            },
            source,
        };
        // What this layer does to lower layers, applied after reading it whole.
        let mut removed_trees: Vec<String> = Vec::new();
        let mut emptied_dirs: Vec<String> = Vec::new();
        let mut replaced: Vec<String> = Vec::new();
        let mut added: BTreeMap<String, ScratchFile> = BTreeMap::new();
        let mut archive = tar::Archive::new(reader);
        for entry in archive.entries().map_err(tar_err)? {
            let mut entry = entry.map_err(tar_err)?;
            let name =
                normalise(&entry.path_bytes()).map_err(|reason| OciLayerError::UnsafePath {
                    layer: layer.to_owned(),
                    name: String::from_utf8_lossy(&entry.path_bytes()).into_owned(),
                    reason,
                })?;
            if name.is_empty() {
                continue;
            }
            let (parent, base) = name.rsplit_once('/').unwrap_or(("", name.as_str()));
            if base == OPAQUE_WHITEOUT {
                emptied_dirs.push(parent.to_owned());
                continue;
            }
            if let Some(target) = base.strip_prefix(WHITEOUT_PREFIX) {
                removed_trees.push(join(parent, target));
                continue;
            }
            let kind = entry.header().entry_type();
            let in_disk = name == DISK_DIR || name.starts_with("disk/");
            if kind.is_dir() {
                // A directory replaces a lower file of the same name (not its children).
                if in_disk {
                    replaced.push(name);
                }
                continue;
            }
            let regular =
                kind.is_file() || kind.is_gnu_sparse() || kind == tar::EntryType::Continuous;
            if !in_disk {
                continue;
            }
            if !regular {
                return Err(OciLayerError::NotRegular {
                    layer: layer.to_owned(),
                    name,
                    kind: kind_name(kind),
                });
            }
            if name == DISK_DIR {
                // A file named /disk hides the lower layers' directory.
                removed_trees.push(name);
                continue;
            }
            if parent != DISK_DIR {
                tracing::debug!(entry = %name, "ignored: not directly in /disk/");
                continue;
            }
            let path = self.work.join(format!("layer-file-{}", self.next));
            self.next += 1;
            let size = write_sparse(&mut entry, &path).map_err(|source| {
                if source.kind() == io::ErrorKind::UnexpectedEof
                    || source.kind() == io::ErrorKind::InvalidData
                {
                    tar_err(source)
                } else {
                    OciLayerError::Write {
                        path: path.clone(),
                        source,
                    }
                }
            })?;
            tracing::debug!(entry = %name, size, "disk file candidate");
            if let Some(old) = added.insert(name, ScratchFile { path, size }) {
                self.discard(old);
            }
        }
        let doomed: Vec<String> = self
            .files
            .keys()
            .filter(|key| {
                removed_trees.iter().any(|t| within(key, t))
                    || emptied_dirs
                        .iter()
                        .any(|d| d.is_empty() || key.starts_with(&format!("{d}/")))
                    || replaced.iter().any(|r| r == *key)
            })
            .cloned()
            .collect();
        for key in doomed {
            if let Some(old) = self.files.remove(&key) {
                tracing::debug!(entry = %key, "removed by a later layer");
                self.discard(old);
            }
        }
        for (name, file) in added {
            if let Some(old) = self.files.insert(name, file) {
                self.discard(old);
            }
        }
        Ok(())
    }

    fn discard(&self, file: ScratchFile) {
        if let Err(error) = fs::remove_file(&file.path) {
            tracing::warn!(path = %file.path.display(), %error, "cannot remove a scratch file");
        }
    }
}

/// `name` is `tree` or below it.
fn within(name: &str, tree: &str) -> bool {
    name == tree
        || name
            .strip_prefix(tree)
            .is_some_and(|rest| rest.starts_with('/'))
}

fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_owned()
    } else {
        format!("{parent}/{name}")
    }
}

/// An entry name relative to the image root without `.` and empty components; refuses
/// absolute names and `..`.
fn normalise(raw: &[u8]) -> Result<String, &'static str> {
    let text = String::from_utf8_lossy(raw);
    if text.starts_with('/') {
        return Err("absolute names are not accepted in a layer");
    }
    let mut parts = Vec::new();
    for part in text.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err("'..' components are not accepted in a layer"),
            part => parts.push(part),
        }
    }
    Ok(parts.join("/"))
}

fn kind_name(kind: tar::EntryType) -> String {
    match kind {
        tar::EntryType::Symlink => "symbolic link".to_owned(),
        tar::EntryType::Link => "hard link".to_owned(),
        tar::EntryType::Char => "character device".to_owned(),
        tar::EntryType::Block => "block device".to_owned(),
        tar::EntryType::Fifo => "fifo".to_owned(),
        other => format!("tar entry of type {:?}", other.as_byte() as char),
    }
}

/// Copies `reader` to a new file at `path`, leaving all-zero blocks as holes.
fn write_sparse(reader: &mut impl Read, path: &Path) -> io::Result<u64> {
    let file: File = OpenOptions::new().write(true).create_new(true).open(path)?;
    let mut buf = vec![0u8; BLOCK];
    let mut offset = 0u64;
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            match reader.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if filled == 0 {
            break;
        }
        let block = &buf[..filled];
        if block.iter().any(|&b| b != 0) {
            file.write_all_at(block, offset)?;
        }
        offset += filled as u64;
    }
    file.set_len(offset)?;
    Ok(offset)
}
