//! Reading OCI image layouts: a directory (`oci:`) or a tar of one (`oci-archive:`).
//!
//! # References
//!
//! Like the `containers-transports(5)` syntax:
//!
//! | reference                          | source                                          |
//! |------------------------------------|-------------------------------------------------|
//! | `oci:/abs/dir`                     | the layout directory; its index holds one image |
//! | `oci:/abs/dir:busybox`             | the image tagged `busybox` in the directory     |
//! | `oci-archive:/abs/image.tar`       | a tar of a layout (gzip-compressed or not)      |
//! | `oci-archive:/abs/image.tar:v1`    | the image tagged `v1` in the archive            |
//!
//! The tag is what follows the last `:` after the last `/`; it is matched against the
//! `org.opencontainers.image.ref.name` annotation of the index's manifests. Without a tag
//! the index must hold exactly one manifest. Paths are absolute and without `..`.
//!
//! # What is checked
//!
//! The `oci-layout` file (version 1.x), the index and manifest media types (OCI image
//! manifest v1 or Docker image manifest v2; nested indexes are refused), that every digest
//! is `sha256:<64 hex>`, and that every blob read — manifest, config, layers — has exactly
//! the size and SHA-256 its descriptor states ([`BlobReader::finish`]). Nothing is trusted
//! before its digest is checked: callers unpack into scratch space and publish only after
//! every blob verified.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, Read, Seek};
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The `oci:` transport prefix (a layout directory).
pub const OCI_DIR_PREFIX: &str = "oci:";
/// The `oci-archive:` transport prefix (a tar of a layout).
pub const OCI_ARCHIVE_PREFIX: &str = "oci-archive:";
/// The annotation naming a manifest's tag in an index.
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// OCI image index.
pub const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image manifest.
pub const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker image manifest, schema 2.
pub const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list (a multi-platform index).
const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI image config.
pub const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Docker image config.
const MEDIA_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Uncompressed OCI layer.
pub const MEDIA_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// Gzip-compressed OCI layer.
pub const MEDIA_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const MEDIA_DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
const MEDIA_DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";

/// Largest `index.json`, manifest or config read (the registry limit for manifests).
const MAX_JSON_BYTES: u64 = 4 << 20;
/// At most this many names are listed in an error.
const MAX_LISTED: usize = 20;
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Why an OCI layout cannot be read or does not hold a usable image.
#[derive(Debug, thiserror::Error)]
pub enum OciLayoutError {
    /// The reference does not follow `oci:/abs/path[:tag]` / `oci-archive:/abs/path[:tag]`.
    #[error("invalid OCI reference: {reason}")]
    InvalidReference {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The layout directory or archive does not exist.
    #[error("{path} does not exist")]
    Missing {
        /// The path.
        path: PathBuf,
    },
    /// A file of the layout cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The path is not an OCI image layout.
    #[error("{path} is not an OCI image layout: {reason}")]
    NotALayout {
        /// The directory or archive.
        path: PathBuf,
        /// What is missing or wrong.
        reason: String,
    },
    /// The archive is not a readable tar (corrupt or truncated).
    #[error("{path} is not a readable tar archive (corrupt or truncated?): {reason}")]
    CorruptArchive {
        /// The archive.
        path: PathBuf,
        /// What the tar reader found.
        reason: String,
    },
    /// A JSON document of the layout does not parse.
    #[error("{what} is not valid JSON of its kind: {source}")]
    Json {
        /// `index.json`, `manifest sha256:…`.
        what: String,
        /// The parse error.
        source: serde_json::Error,
    },
    /// A JSON document is larger than the limit.
    #[error("{what} has {size} bytes, more than the {limit} accepted")]
    TooLarge {
        /// What was read.
        what: String,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The index has no manifest.
    #[error("the index lists no image")]
    EmptyIndex,
    /// No tag was given and the index holds several manifests.
    #[error("the index holds {count} images; name one with :TAG (tags: {})", names_list(.tags))]
    AmbiguousIndex {
        /// How many manifests.
        count: usize,
        /// Their `org.opencontainers.image.ref.name`s.
        tags: Vec<String>,
    },
    /// No manifest carries the tag.
    #[error("no image tagged {tag:?} in the index (tags: {})", names_list(.tags))]
    UnknownTag {
        /// The tag asked for.
        tag: String,
        /// The tags the index has.
        tags: Vec<String>,
    },
    /// Several manifests carry the tag.
    #[error("{count} images are tagged {tag:?} in the index")]
    DuplicateTag {
        /// The tag.
        tag: String,
        /// How many manifests carry it.
        count: usize,
    },
    /// A document or blob has a media type that is not served.
    #[error("{what} has media type {media_type:?}; expected {expected}")]
    MediaType {
        /// The document or blob.
        what: String,
        /// Its media type.
        media_type: String,
        /// What is accepted.
        expected: &'static str,
    },
    /// A manifest or index has a schema version other than 2.
    #[error("{what} has schemaVersion {found:?}; expected 2")]
    SchemaVersion {
        /// The document.
        what: String,
        /// The version found.
        found: Option<u32>,
    },
    /// A digest is not `sha256:<64 lowercase hex>`.
    #[error("digest {digest:?} is not sha256:<64 lowercase hex digits>")]
    Digest {
        /// The digest as written.
        digest: String,
    },
    /// A blob the manifest or index names is not in the layout.
    #[error("blob {digest} is missing from the layout")]
    MissingBlob {
        /// The blob's digest.
        digest: String,
    },
    /// A blob is shorter than its descriptor says (truncated).
    #[error("blob {digest} has {found} bytes but its descriptor says {expected} (truncated?)")]
    BlobShort {
        /// The blob's digest.
        digest: String,
        /// The size in the descriptor.
        expected: u64,
        /// The size read.
        found: u64,
    },
    /// A blob is longer than its descriptor says.
    #[error("blob {digest} has more than the {expected} bytes its descriptor says")]
    BlobLong {
        /// The blob's digest.
        digest: String,
        /// The size in the descriptor.
        expected: u64,
    },
    /// A blob's content does not hash to its digest.
    #[error("blob {digest} does not match its digest: its content hashes to sha256:{found}")]
    DigestMismatch {
        /// The digest the blob is named by.
        digest: String,
        /// The SHA-256 of what was read.
        found: String,
    },
}

fn names_list(names: &[String]) -> String {
    if names.is_empty() {
        return "none".to_owned();
    }
    let mut text = names
        .iter()
        .take(MAX_LISTED)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > MAX_LISTED {
        text.push_str(&format!(" and {} more", names.len() - MAX_LISTED));
    }
    text
}

/// How the layout is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `oci:` — a directory.
    Dir,
    /// `oci-archive:` — a tar file of the directory.
    Archive,
}

/// A parsed `oci:` / `oci-archive:` reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciReference {
    /// Directory or archive.
    pub transport: Transport,
    /// The absolute path of the layout or archive.
    pub path: PathBuf,
    /// The tag to select, if any.
    pub tag: Option<String>,
}

impl OciReference {
    /// True if `reference` uses the `oci:` or `oci-archive:` transport.
    pub fn is_oci(reference: &str) -> bool {
        reference.starts_with(OCI_DIR_PREFIX) || reference.starts_with(OCI_ARCHIVE_PREFIX)
    }

    /// Parses `oci:/path[:tag]` or `oci-archive:/path[:tag]`.
    pub fn parse(reference: &str) -> Result<Self, OciLayoutError> {
        let invalid = |reason| OciLayoutError::InvalidReference { reason };
        let (transport, rest) = if let Some(rest) = reference.strip_prefix(OCI_ARCHIVE_PREFIX) {
            (Transport::Archive, rest)
        } else if let Some(rest) = reference.strip_prefix(OCI_DIR_PREFIX) {
            (Transport::Dir, rest)
        } else {
            return Err(invalid("it must start with oci: or oci-archive:"));
        };
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (path, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let (path, tag) = rest.split_at(last_slash + i);
                (path, Some(&tag[1..]))
            }
            None => (rest, None),
        };
        if let Some(tag) = tag {
            if tag.is_empty()
                || tag.len() > 128
                || !tag
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            {
                return Err(invalid("a tag is 1-128 of [A-Za-z0-9._-]"));
            }
        }
        let path = Path::new(path);
        if !path.is_absolute() {
            return Err(invalid("the path must be absolute"));
        }
        if path.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(invalid("the path must not contain '..'"));
        }
        if path.parent().is_none() {
            return Err(invalid("the path must name a directory or file below /"));
        }
        Ok(OciReference {
            transport,
            path: path.to_path_buf(),
            tag: tag.map(str::to_owned),
        })
    }
}

/// A content descriptor (`mediaType`, `digest`, `size`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Its media type.
    #[serde(default)]
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// Annotations (the tag of an index entry).
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

impl Descriptor {
    /// The 64 hex digits of the SHA-256 digest.
    pub fn sha256_hex(&self) -> Result<&str, OciLayoutError> {
        let hex = self.digest.strip_prefix("sha256:").unwrap_or("");
        if hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(hex)
        } else {
            Err(OciLayoutError::Digest {
                digest: self.digest.clone(),
            })
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LayoutFile {
    image_layout_version: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Index {
    schema_version: Option<u32>,
    media_type: Option<String>,
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ManifestDoc {
    schema_version: Option<u32>,
    media_type: Option<String>,
    config: Descriptor,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// A gzip-compressed tar.
    Gzip,
}

/// A verified image manifest: its digest and its layers in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageManifest {
    /// The manifest's descriptor from the index (its digest keys the unpack cache).
    pub descriptor: Descriptor,
    /// The config blob's descriptor.
    pub config: Descriptor,
    /// The layers, lowest first, with their compression.
    pub layers: Vec<(Descriptor, Compression)>,
}

impl ImageManifest {
    /// The 64 hex digits of the manifest digest.
    pub fn digest_hex(&self) -> &str {
        self.descriptor
            .digest
            .strip_prefix("sha256:")
            .unwrap_or(&self.descriptor.digest)
    }
}

/// A file of the layout opened for reading, and its size.
type Opened<'a> = (Box<dyn Read + 'a>, u64);

/// Where an archive member's data lies.
#[derive(Debug, Clone, Copy)]
struct Member {
    offset: u64,
    size: u64,
}

#[derive(Debug)]
enum Source {
    Dir,
    Archive {
        file: File,
        members: HashMap<String, Member>,
    },
}

/// An opened OCI layout (directory or archive).
#[derive(Debug)]
pub struct OciLayout {
    /// The directory or archive named by the reference.
    path: PathBuf,
    source: Source,
}

impl OciLayout {
    /// Opens the layout of `reference`. A gzip-compressed archive is first decompressed to
    /// `scratch` (a file the caller creates and removes), then read like a plain one.
    pub fn open(reference: &OciReference, scratch: &Path) -> Result<Self, OciLayoutError> {
        let path = reference.path.clone();
        let meta = fs::metadata(&path).map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                OciLayoutError::Missing { path: path.clone() }
            } else {
                OciLayoutError::Read {
                    path: path.clone(),
                    source,
                }
            }
        })?;
        let not_layout = |reason: &str| OciLayoutError::NotALayout {
            path: path.clone(),
            reason: reason.to_owned(),
        };
        let source = match reference.transport {
            Transport::Dir if meta.is_dir() => Source::Dir,
            Transport::Dir => {
                return Err(not_layout("not a directory (use oci-archive: for a tar)"))
            }
            Transport::Archive if meta.is_file() => open_archive(&path, scratch)?,
            Transport::Archive => {
                return Err(not_layout(
                    "not a regular file (use oci: for a layout directory)",
                ))
            }
        };
        let layout = OciLayout { path, source };
        layout.check_layout_file()?;
        Ok(layout)
    }

    /// The directory or archive.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn not_layout(&self, reason: String) -> OciLayoutError {
        OciLayoutError::NotALayout {
            path: self.path.clone(),
            reason,
        }
    }

    /// Opens a file of the layout by its name inside it; `None` if it is not there.
    fn member(&self, name: &str) -> Result<Option<Opened<'_>>, OciLayoutError> {
        match &self.source {
            Source::Dir => {
                let path = self.path.join(name);
                let read_err = |source| OciLayoutError::Read {
                    path: path.clone(),
                    source,
                };
                let file = match File::open(&path) {
                    Ok(file) => file,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(read_err(e)),
                };
                let meta = file.metadata().map_err(read_err)?;
                if !meta.is_file() {
                    return Err(read_err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "not a regular file",
                    )));
                }
                Ok(Some((Box::new(file), meta.len())))
            }
            Source::Archive { file, members } => Ok(members.get(name).map(|m| {
                let reader: Box<dyn Read + '_> = Box::new(AtReader {
                    file,
                    pos: m.offset,
                    end: m.offset + m.size,
                });
                (reader, m.size)
            })),
        }
    }

    /// Reads a small file of the layout (no digest to check: `oci-layout`, `index.json`).
    fn small_file(&self, name: &str) -> Result<Option<Vec<u8>>, OciLayoutError> {
        let Some((reader, size)) = self.member(name)? else {
            return Ok(None);
        };
        if size > MAX_JSON_BYTES {
            return Err(OciLayoutError::TooLarge {
                what: name.to_owned(),
                size,
                limit: MAX_JSON_BYTES,
            });
        }
        let mut data = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        reader
            .take(MAX_JSON_BYTES)
            .read_to_end(&mut data)
            .map_err(|source| OciLayoutError::Read {
                path: self.path.join(name),
                source,
            })?;
        Ok(Some(data))
    }

    fn check_layout_file(&self) -> Result<(), OciLayoutError> {
        let data = self
            .small_file("oci-layout")?
            .ok_or_else(|| self.not_layout("it has no oci-layout file".to_owned()))?;
        let layout: LayoutFile =
            serde_json::from_slice(&data).map_err(|source| OciLayoutError::Json {
                what: "oci-layout".to_owned(),
                source,
            })?;
        if layout.image_layout_version.split('.').next() != Some("1") {
            return Err(self.not_layout(format!(
                "imageLayoutVersion is {:?}, expected 1.x",
                layout.image_layout_version
            )));
        }
        Ok(())
    }

    /// Reads `index.json`, selects the manifest (by `tag`, or the only one) and reads and
    /// verifies it.
    pub fn manifest(&self, tag: Option<&str>) -> Result<ImageManifest, OciLayoutError> {
        let data = self
            .small_file("index.json")?
            .ok_or_else(|| self.not_layout("it has no index.json".to_owned()))?;
        let index: Index =
            serde_json::from_slice(&data).map_err(|source| OciLayoutError::Json {
                what: "index.json".to_owned(),
                source,
            })?;
        if index.schema_version != Some(2) {
            return Err(OciLayoutError::SchemaVersion {
                what: "index.json".to_owned(),
                found: index.schema_version,
            });
        }
        if let Some(media_type) = index.media_type.filter(|m| m != MEDIA_INDEX) {
            return Err(OciLayoutError::MediaType {
                what: "index.json".to_owned(),
                media_type,
                expected: MEDIA_INDEX,
            });
        }
        let descriptor = select(index.manifests, tag)?;
        let what = format!("manifest {}", descriptor.digest);
        if descriptor.media_type == MEDIA_INDEX || descriptor.media_type == MEDIA_DOCKER_LIST {
            return Err(OciLayoutError::MediaType {
                what,
                media_type: descriptor.media_type,
                expected: "an image manifest (nested indexes of several platforms are not served)",
            });
        }
        if descriptor.media_type != MEDIA_MANIFEST && descriptor.media_type != MEDIA_DOCKER_MANIFEST
        {
            return Err(OciLayoutError::MediaType {
                what,
                media_type: descriptor.media_type,
                expected: "application/vnd.oci.image.manifest.v1+json or application/vnd.docker.distribution.manifest.v2+json",
            });
        }
        let data = self.json_blob(&descriptor)?;
        let doc: ManifestDoc =
            serde_json::from_slice(&data).map_err(|source| OciLayoutError::Json {
                what: what.clone(),
                source,
            })?;
        if doc.schema_version != Some(2) {
            return Err(OciLayoutError::SchemaVersion {
                what,
                found: doc.schema_version,
            });
        }
        if let Some(media_type) = doc.media_type.filter(|m| *m != descriptor.media_type) {
            return Err(OciLayoutError::MediaType {
                what: format!("{what} (its own mediaType field)"),
                media_type,
                expected: "the media type its index entry names",
            });
        }
        if doc.config.media_type != MEDIA_CONFIG && doc.config.media_type != MEDIA_DOCKER_CONFIG {
            return Err(OciLayoutError::MediaType {
                what: format!("config {}", doc.config.digest),
                media_type: doc.config.media_type,
                expected: "an OCI or Docker image config (this is not a container image)",
            });
        }
        self.json_blob(&doc.config)?;
        let layers = doc
            .layers
            .into_iter()
            .map(|layer| {
                layer.sha256_hex()?;
                let compression = match layer.media_type.as_str() {
                    MEDIA_LAYER_TAR | MEDIA_DOCKER_LAYER_TAR => Compression::None,
                    MEDIA_LAYER_GZIP | MEDIA_DOCKER_LAYER_GZIP => Compression::Gzip,
                    _ => {
                        return Err(OciLayoutError::MediaType {
                            what: format!("layer {}", layer.digest),
                            media_type: layer.media_type,
                            expected: "a tar or tar+gzip layer (zstd and non-distributable layers are not served)",
                        })
                    }
                };
                Ok((layer, compression))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ImageManifest {
            descriptor,
            config: doc.config,
            layers,
        })
    }

    /// Reads a whole blob of at most [`MAX_JSON_BYTES`] and verifies it.
    fn json_blob(&self, descriptor: &Descriptor) -> Result<Vec<u8>, OciLayoutError> {
        if descriptor.size > MAX_JSON_BYTES {
            return Err(OciLayoutError::TooLarge {
                what: format!("blob {}", descriptor.digest),
                size: descriptor.size,
                limit: MAX_JSON_BYTES,
            });
        }
        let mut blob = self.blob(descriptor)?;
        let mut data = Vec::new();
        blob.read_to_end(&mut data)
            .map_err(|source| OciLayoutError::Read {
                path: self.path.join(blob_name(descriptor).unwrap_or_default()),
                source,
            })?;
        blob.finish()?;
        Ok(data)
    }

    /// Opens a blob for reading; [`BlobReader::finish`] checks its size and digest.
    pub fn blob(&self, descriptor: &Descriptor) -> Result<BlobReader<'_>, OciLayoutError> {
        let name = blob_name(descriptor)?;
        let (reader, _) = self
            .member(&name)?
            .ok_or_else(|| OciLayoutError::MissingBlob {
                digest: descriptor.digest.clone(),
            })?;
        Ok(BlobReader {
            // One byte more than declared, so an overlong blob is noticed.
            inner: reader.take(descriptor.size.saturating_add(1)),
            hasher: Sha256::new(),
            read: 0,
            descriptor: descriptor.clone(),
            path: self.path.join(name),
        })
    }
}

fn blob_name(descriptor: &Descriptor) -> Result<String, OciLayoutError> {
    Ok(format!("blobs/sha256/{}", descriptor.sha256_hex()?))
}

/// The manifest of the index selected by `tag` (or the only one).
fn select(manifests: Vec<Descriptor>, tag: Option<&str>) -> Result<Descriptor, OciLayoutError> {
    let tags: Vec<String> = manifests
        .iter()
        .map(|m| {
            m.annotations
                .get(REF_NAME_ANNOTATION)
                .cloned()
                .unwrap_or_else(|| format!("(untagged {})", m.digest))
        })
        .collect();
    let Some(tag) = tag else {
        return match manifests.len() {
            0 => Err(OciLayoutError::EmptyIndex),
            1 => Ok(manifests
                .into_iter()
                .next()
                .ok_or(OciLayoutError::EmptyIndex)?),
            count => Err(OciLayoutError::AmbiguousIndex { count, tags }),
        };
    };
    let mut matching: Vec<Descriptor> = manifests
        .into_iter()
        .filter(|m| m.annotations.get(REF_NAME_ANNOTATION).map(String::as_str) == Some(tag))
        .collect();
    match matching.len() {
        0 => Err(OciLayoutError::UnknownTag {
            tag: tag.to_owned(),
            tags,
        }),
        1 => Ok(matching.remove(0)),
        count => Err(OciLayoutError::DuplicateTag {
            tag: tag.to_owned(),
            count,
        }),
    }
}

/// Opens an archive: decompresses a gzip one to `scratch`, then indexes its members.
fn open_archive(path: &Path, scratch: &Path) -> Result<Source, OciLayoutError> {
    let read_err = |path: &Path, source| OciLayoutError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(|e| read_err(path, e))?;
    let mut magic = [0u8; 2];
    let gzip =
        file.read_at(&mut magic, 0).map_err(|e| read_err(path, e))? == 2 && magic == GZIP_MAGIC;
    if gzip {
        let _span = tracing::debug_span!("decompress_archive", archive = %path.display()).entered();
        let mut out = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(scratch)
            .map_err(|e| read_err(scratch, e))?;
        io::copy(&mut flate2::read::MultiGzDecoder::new(&mut file), &mut out).map_err(|e| {
            OciLayoutError::CorruptArchive {
                path: path.to_path_buf(),
                reason: format!("gzip: {e}"),
            }
        })?;
        out.seek(io::SeekFrom::Start(0))
            .map_err(|e| read_err(scratch, e))?;
        file = out;
    }
    let len = file.metadata().map_err(|e| read_err(path, e))?.len();
    let corrupt = |reason: String| OciLayoutError::CorruptArchive {
        path: path.to_path_buf(),
        reason,
    };
    let mut members = HashMap::new();
    {
        let mut archive = tar::Archive::new(&file);
        let entries = archive
            .entries_with_seek()
            .map_err(|e| corrupt(e.to_string()))?;
        for entry in entries {
            let entry = entry.map_err(|e| corrupt(e.to_string()))?;
            let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let name = name.trim_start_matches("./").to_owned();
            let kind = entry.header().entry_type();
            if kind.is_dir() {
                continue;
            }
            let size = entry.size();
            let offset = entry.raw_file_position();
            if offset.checked_add(size).is_none_or(|end| end > len) {
                return Err(corrupt(format!(
                    "member {name} ends past the end of the archive ({len} bytes)"
                )));
            }
            if !(kind.is_file() || kind == tar::EntryType::Continuous) {
                // Links and special files are never followed; a layout never needs them.
                if name == "oci-layout" || name == "index.json" || name.starts_with("blobs/") {
                    return Err(corrupt(format!(
                        "member {name} is a link or special file, not a regular file"
                    )));
                }
                continue;
            }
            if members
                .insert(name.clone(), Member { offset, size })
                .is_some()
            {
                return Err(corrupt(format!("member {name} appears more than once")));
            }
        }
    }
    if members.is_empty() {
        return Err(OciLayoutError::NotALayout {
            path: path.to_path_buf(),
            reason: "the archive holds no files".to_owned(),
        });
    }
    Ok(Source::Archive { file, members })
}

/// Reads `pos..end` of a file with positioned reads (no shared cursor).
struct AtReader<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for AtReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.end.saturating_sub(self.pos);
        let want = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the archive ends inside a member (truncated)",
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// A blob being read: counts and hashes what passes through. Reading stops one byte past
/// the declared size; [`Self::finish`] reads what is left and checks size and digest.
pub struct BlobReader<'a> {
    inner: io::Take<Box<dyn Read + 'a>>,
    hasher: Sha256,
    read: u64,
    descriptor: Descriptor,
    path: PathBuf,
}

impl std::fmt::Debug for BlobReader<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobReader")
            .field("digest", &self.descriptor.digest)
            .field("read", &self.read)
            .finish()
    }
}

impl Read for BlobReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        Ok(n)
    }
}

impl BlobReader<'_> {
    /// The digest the blob is named by.
    pub fn digest(&self) -> &str {
        &self.descriptor.digest
    }

    /// Reads the rest of the blob and checks its size and SHA-256 against its descriptor.
    pub fn finish(mut self) -> Result<(), OciLayoutError> {
        io::copy(&mut self, &mut io::sink()).map_err(|source| OciLayoutError::Read {
            path: self.path.clone(),
            source,
        })?;
        if self.read < self.descriptor.size {
            return Err(OciLayoutError::BlobShort {
                digest: self.descriptor.digest.clone(),
                expected: self.descriptor.size,
                found: self.read,
            });
        }
        if self.read > self.descriptor.size {
            return Err(OciLayoutError::BlobLong {
                digest: self.descriptor.digest.clone(),
                expected: self.descriptor.size,
            });
        }
        let found = hex(&self.hasher.finalize());
        if Some(found.as_str()) != self.descriptor.digest.strip_prefix("sha256:") {
            return Err(OciLayoutError::DigestMismatch {
                digest: self.descriptor.digest.clone(),
                found,
            });
        }
        Ok(())
    }
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
