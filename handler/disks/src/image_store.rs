//! The local image store that stands in for a container registry in standalone mode.
//!
//! # Layout
//!
//! An image reference `REPOSITORY[:TAG]` or `REPOSITORY@ALGO:HEX` names one file under the
//! store directory:
//!
//! | reference                        | file (either extension)                        |
//! |----------------------------------|------------------------------------------------|
//! | `ironvisor/rootfs:busybox`       | `<dir>/ironvisor/rootfs/busybox.img`           |
//! | `ironvisor/rootfs` (no tag)      | `<dir>/ironvisor/rootfs/latest.img`            |
//! | `debian:12`                      | `<dir>/debian/12.qcow2`                        |
//! | `ironvisor/rootfs@sha256:ab12…`  | `<dir>/ironvisor/rootfs/sha256-ab12….img`      |
//!
//! `.img` files are raw images and `.qcow2` files are qcow2 images; the file's magic must
//! agree with its extension (a mismatch is an error rather than a guess). Having both
//! extensions for one reference is ambiguous and also an error. Repository components use
//! `[A-Za-z0-9._-]` and may not start with a dot; registry hosts (`host:port/…`) are not
//! part of a standalone store.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use ironvisor_diskimage::DiskFormat;

/// Longest tag accepted (the OCI distribution limit).
const MAX_TAG_LEN: usize = 128;
/// How deep [`ImageStore::list`] descends into repository directories.
const MAX_DEPTH: usize = 16;
/// At most this many available images are named in a not-found error.
const MAX_LISTED: usize = 40;

/// Errors from parsing image references and looking them up in the store.
#[derive(Debug, thiserror::Error)]
pub enum ImageStoreError {
    /// The reference does not follow `REPOSITORY[:TAG]` / `REPOSITORY@ALGO:HEX`.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference {
        /// The reference as given.
        reference: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// No file exists for the reference.
    #[error("image {reference} not found in image store {dir}: looked for {} and {}; {available}", .looked_for[0].display(), .looked_for[1].display())]
    NotFound {
        /// The reference as given.
        reference: String,
        /// The store directory.
        dir: PathBuf,
        /// The files that were looked for (`.img`, `.qcow2`).
        looked_for: Box<[PathBuf; 2]>,
        /// What the store does hold.
        available: Box<Available>,
    },
    /// Both `.img` and `.qcow2` exist for the reference.
    #[error("image {reference} is ambiguous: both {} and {} exist; remove one", .paths[0].display(), .paths[1].display())]
    Ambiguous {
        /// The reference as given.
        reference: String,
        /// Both files.
        paths: Box<[PathBuf; 2]>,
    },
    /// The file's magic does not match its extension.
    #[error("image {reference}: {path} is named as {named} but its contents are {found}; rename it to match")]
    FormatMismatch {
        /// The reference as given.
        reference: String,
        /// The image file.
        path: PathBuf,
        /// Format implied by the extension.
        named: DiskFormat,
        /// Format found by its magic.
        found: DiskFormat,
    },
    /// The image file exists but cannot be read or is not a regular file.
    #[error("image {reference}: cannot use {path}: {source}")]
    Unreadable {
        /// The reference as given.
        reference: String,
        /// The image file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The store directory cannot be listed.
    #[error("cannot list image store {dir}: {source}")]
    List {
        /// The directory that failed.
        dir: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

/// The images a store holds, for a not-found message.
#[derive(Debug)]
pub enum Available {
    /// These references exist (the first 40 shown, `total` counted).
    Images {
        /// Sorted references, truncated.
        shown: Vec<String>,
        /// How many exist in all.
        total: usize,
    },
    /// The store could not be listed.
    Unlistable(String),
}

impl fmt::Display for Available {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Available::Images { shown, total: 0 } if shown.is_empty() => {
                f.write_str("the store holds no images")
            }
            Available::Images { shown, total } => {
                write!(f, "available images: {}", shown.join(", "))?;
                if *total > shown.len() {
                    write!(f, " (and {} more)", total - shown.len())?;
                }
                Ok(())
            }
            Available::Unlistable(why) => write!(f, "the store cannot be listed: {why}"),
        }
    }
}

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// `ironvisor/rootfs`.
    pub repository: String,
    /// The file stem under the repository directory: the tag (`busybox`, default `latest`)
    /// or `ALGO-HEX` for a digest.
    pub version: String,
}

impl ImageRef {
    /// Parses `REPOSITORY[:TAG]` or `REPOSITORY@ALGO:HEX`.
    pub fn parse(reference: &str) -> Result<Self, ImageStoreError> {
        let invalid = |reason| ImageStoreError::InvalidReference {
            reference: reference.to_owned(),
            reason,
        };
        let (repository, version) = if let Some((repo, digest)) = reference.split_once('@') {
            let (algo, hex) = digest
                .split_once(':')
                .ok_or_else(|| invalid("a digest must look like sha256:<hex>"))?;
            if algo.is_empty()
                || !algo
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            {
                return Err(invalid(
                    "the digest algorithm must be lowercase letters and digits",
                ));
            }
            if hex.len() < 32
                || !hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return Err(invalid(
                    "the digest must be at least 32 lowercase hex digits",
                ));
            }
            (repo, format!("{algo}-{hex}"))
        } else {
            let last_slash = reference.rfind('/').map_or(0, |i| i + 1);
            match reference[last_slash..].rfind(':') {
                Some(i) => {
                    let split = last_slash + i;
                    let tag = &reference[split + 1..];
                    if tag.is_empty()
                        || tag.len() > MAX_TAG_LEN
                        || tag.starts_with(['.', '-'])
                        || !tag
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
                    {
                        return Err(invalid(
                            "a tag is 1-128 of [A-Za-z0-9._-] and does not start with '.' or '-'",
                        ));
                    }
                    (&reference[..split], tag.to_owned())
                }
                None => (reference, "latest".to_owned()),
            }
        };
        if repository.is_empty() {
            return Err(invalid("the repository name is empty"));
        }
        for component in repository.split('/') {
            if component.is_empty()
                || component.starts_with('.')
                || !component
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            {
                return Err(invalid(
                    "repository components are non-empty [A-Za-z0-9._-] not starting with '.' \
                     (registry hosts are not supported by the local store)",
                ));
            }
        }
        Ok(ImageRef {
            repository: repository.to_owned(),
            version,
        })
    }

    /// The reference in canonical form (`repo:tag` or `repo@algo:hex`).
    pub fn canonical(&self) -> String {
        reference_for(&self.repository, &self.version)
    }
}

/// Builds the reference for a repository path and a file stem.
fn reference_for(repository: &str, version: &str) -> String {
    match version.split_once('-') {
        Some((algo, hex))
            if hex.len() >= 32
                && hex.bytes().all(|b| b.is_ascii_hexdigit())
                && !algo.is_empty() =>
        {
            format!("{repository}@{algo}:{hex}")
        }
        _ => format!("{repository}:{version}"),
    }
}

/// An image found in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedImage {
    /// The reference as requested.
    pub reference: String,
    /// The image file.
    pub path: PathBuf,
    /// Its format.
    pub format: DiskFormat,
}

/// A directory of base disk images, addressed by image reference (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageStore {
    dir: PathBuf,
}

impl ImageStore {
    /// A store rooted at `dir` (which need not exist yet).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        ImageStore { dir: dir.into() }
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The two files that may hold `image` (`.img`, `.qcow2`).
    pub fn candidates(&self, image: &ImageRef) -> [PathBuf; 2] {
        let stem = self.dir.join(&image.repository).join(&image.version);
        [stem.with_extension("img"), stem.with_extension("qcow2")]
    }

    /// Finds the file for `reference` and checks its format.
    pub fn resolve(&self, reference: &str) -> Result<ResolvedImage, ImageStoreError> {
        let _span =
            tracing::debug_span!("resolve_image", reference, store = %self.dir.display()).entered();
        let image = ImageRef::parse(reference)?;
        let candidates = self.candidates(&image);
        let unreadable = |path: &Path, source| ImageStoreError::Unreadable {
            reference: reference.to_owned(),
            path: path.to_path_buf(),
            source,
        };
        let mut found = Vec::with_capacity(2);
        for (path, named) in candidates.iter().zip([DiskFormat::Raw, DiskFormat::Qcow2]) {
            match fs::metadata(path) {
                Ok(meta) if meta.is_file() => found.push((path.clone(), named)),
                Ok(_) => {
                    return Err(unreadable(
                        path,
                        io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"),
                    ))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(unreadable(path, e)),
            }
        }
        let (path, named) = match found.len() {
            0 => {
                return Err(ImageStoreError::NotFound {
                    reference: reference.to_owned(),
                    dir: self.dir.clone(),
                    looked_for: Box::new(candidates),
                    available: Box::new(self.available()),
                })
            }
            1 => found.remove(0),
            _ => {
                return Err(ImageStoreError::Ambiguous {
                    reference: reference.to_owned(),
                    paths: Box::new(candidates),
                })
            }
        };
        let magic = ironvisor_diskimage::probe(&path)
            .map_err(|e| unreadable(&path, io::Error::other(e.to_string())))?;
        if magic != named {
            return Err(ImageStoreError::FormatMismatch {
                reference: reference.to_owned(),
                path,
                named,
                found: magic,
            });
        }
        tracing::debug!(path = %path.display(), format = %named, "image resolved");
        Ok(ResolvedImage {
            reference: reference.to_owned(),
            path,
            format: named,
        })
    }

    /// All references the store holds, sorted. A missing store directory holds none.
    pub fn list(&self) -> Result<Vec<String>, ImageStoreError> {
        let mut out = Vec::new();
        match fs::metadata(&self.dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(source) => {
                return Err(ImageStoreError::List {
                    dir: self.dir.clone(),
                    source,
                })
            }
            Ok(_) => {}
        }
        self.walk(&self.dir, "", 0, &mut out)?;
        out.sort();
        // `x.img` next to `x.qcow2` is one (ambiguous) reference.
        out.dedup();
        Ok(out)
    }

    fn walk(
        &self,
        dir: &Path,
        repo: &str,
        depth: usize,
        out: &mut Vec<String>,
    ) -> Result<(), ImageStoreError> {
        let list_err = |source| ImageStoreError::List {
            dir: dir.to_path_buf(),
            source,
        };
        for entry in fs::read_dir(dir).map_err(list_err)? {
            let entry = entry.map_err(list_err)?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with('.') {
                continue;
            }
            // file_type() does not follow symlinks, so linked directories cannot loop.
            let file_type = entry.file_type().map_err(list_err)?;
            if file_type.is_dir() {
                if depth < MAX_DEPTH {
                    let sub = if repo.is_empty() {
                        name.to_owned()
                    } else {
                        format!("{repo}/{name}")
                    };
                    self.walk(&entry.path(), &sub, depth + 1, out)?;
                }
            } else if !repo.is_empty() {
                let stem = name
                    .strip_suffix(".img")
                    .or_else(|| name.strip_suffix(".qcow2"));
                if let Some(stem) = stem {
                    out.push(reference_for(repo, stem));
                }
            }
        }
        Ok(())
    }

    fn available(&self) -> Available {
        match self.list() {
            Ok(mut all) => {
                let total = all.len();
                all.truncate(MAX_LISTED);
                Available::Images { shown: all, total }
            }
            Err(e) => Available::Unlistable(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with(files: &[(&str, &[u8])]) -> (tempfile::TempDir, ImageStore) {
        let dir = tempfile::tempdir().unwrap();
        for (rel, data) in files {
            let path = dir.path().join(rel);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, data).unwrap();
        }
        let store = ImageStore::new(dir.path());
        (dir, store)
    }

    const QCOW2_HEAD: &[u8] = &[b'Q', b'F', b'I', 0xfb, 0, 0, 0, 3];

    #[test]
    fn parses_tags_defaults_and_digests() {
        let r = ImageRef::parse("ironvisor/rootfs:busybox").unwrap();
        assert_eq!(
            (r.repository.as_str(), r.version.as_str()),
            ("ironvisor/rootfs", "busybox")
        );
        let r = ImageRef::parse("debian").unwrap();
        assert_eq!(r.version, "latest");
        assert_eq!(r.canonical(), "debian:latest");
        let hex = "0123456789abcdef0123456789abcdef";
        let r = ImageRef::parse(&format!("a/b@sha256:{hex}")).unwrap();
        assert_eq!(r.version, format!("sha256-{hex}"));
        assert_eq!(r.canonical(), format!("a/b@sha256:{hex}"));
    }

    #[test]
    fn rejects_traversal_and_registry_hosts() {
        for bad in [
            "",
            "../etc:passwd",
            "a/../b:c",
            "a//b",
            "/abs:x",
            "a:",
            "a:.hidden",
            "localhost:5000/a/b:c",
            "a@sha256:xyz",
            "a@sha256",
            "a:b/c",
        ] {
            let err = ImageRef::parse(bad).unwrap_err();
            assert!(
                matches!(err, ImageStoreError::InvalidReference { .. }),
                "{bad:?} gave {err}"
            );
        }
    }

    #[test]
    fn resolves_raw_and_qcow2_by_extension() {
        let (_d, store) = store_with(&[
            ("ironvisor/rootfs/busybox.img", b"raw bytes"),
            ("debian/12.qcow2", QCOW2_HEAD),
        ]);
        let img = store.resolve("ironvisor/rootfs:busybox").unwrap();
        assert_eq!(img.format, DiskFormat::Raw);
        assert!(img.path.ends_with("ironvisor/rootfs/busybox.img"));
        let img = store.resolve("debian:12").unwrap();
        assert_eq!(img.format, DiskFormat::Qcow2);
    }

    #[test]
    fn not_found_names_reference_files_and_available_images() {
        let (_d, store) = store_with(&[
            ("ironvisor/rootfs/busybox.img", b"x"),
            ("debian/12.qcow2", QCOW2_HEAD),
            ("ironvisor/rootfs/.partial.img", b"x"),
            ("README", b"not an image"),
        ]);
        let err = store.resolve("ironvisor/rootfs:alpine").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("ironvisor/rootfs:alpine"), "{msg}");
        assert!(msg.contains("ironvisor/rootfs/alpine.img"), "{msg}");
        assert!(msg.contains("ironvisor/rootfs/alpine.qcow2"), "{msg}");
        assert!(
            msg.contains("available images: debian:12, ironvisor/rootfs:busybox"),
            "{msg}"
        );
        assert!(!msg.contains("partial"), "{msg}");
    }

    #[test]
    fn empty_or_missing_store_says_so() {
        let store = ImageStore::new("/nonexistent/ironvisor-images");
        let msg = store.resolve("a:b").unwrap_err().to_string();
        assert!(msg.contains("the store holds no images"), "{msg}");
    }

    #[test]
    fn both_extensions_are_ambiguous() {
        let (_d, store) = store_with(&[("a/b.img", b"x"), ("a/b.qcow2", QCOW2_HEAD)]);
        let err = store.resolve("a:b").unwrap_err();
        assert!(matches!(err, ImageStoreError::Ambiguous { .. }), "{err}");
    }

    #[test]
    fn magic_must_match_extension() {
        let (_d, store) = store_with(&[("a/b.img", QCOW2_HEAD), ("a/c.qcow2", b"plain")]);
        let err = store.resolve("a:b").unwrap_err();
        assert!(
            err.to_string()
                .contains("named as raw but its contents are qcow2"),
            "{err}"
        );
        let err = store.resolve("a:c").unwrap_err();
        assert!(
            matches!(err, ImageStoreError::FormatMismatch { .. }),
            "{err}"
        );
    }

    #[test]
    fn list_renders_digests_as_references() {
        let hex = "0123456789abcdef0123456789abcdef";
        let (_d, store) = store_with(&[(&format!("a/sha256-{hex}.img"), b"x")]);
        assert_eq!(store.list().unwrap(), vec![format!("a@sha256:{hex}")]);
        assert_eq!(
            store.resolve(&format!("a@sha256:{hex}")).unwrap().format,
            DiskFormat::Raw
        );
    }
}
