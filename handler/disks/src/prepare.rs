//! [`prepare`] and [`cleanup`]: the per-volume work and its errors.

use std::fs;
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use ironvisor_diskimage::{create_overlay, inspect, DiskImageError};

use crate::cloudinit::{self, CloudInitError, NoCloudSeed};
use crate::fsutil;
use crate::image_store::{ImageStoreError, ResolvedImage};
use crate::manifest::{Manifest, ManifestError};
use crate::oci_cache::OciCacheError;
use crate::oci_layout::OciReference;
use crate::{DiskContext, DiskFormat, PreparedDisk, VolumeRequest, VolumeSource};

/// Name of the directory inside the VM directory that holds the disks this crate creates.
pub const DISKS_DIR: &str = "disks";
/// Volume names become file names; KubeVirt limits them to DNS labels.
const MAX_VOLUME_NAME: usize = 63;
/// Claim names are Kubernetes object names.
const MAX_CLAIM_NAME: usize = 253;
const SECTOR: u64 = 512;

/// `<vm_dir>/disks`.
pub fn disks_dir(vm_dir: &Path) -> PathBuf {
    vm_dir.join(DISKS_DIR)
}

/// Why a volume could not be turned into a disk file, or a VM's disks not cleaned up.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The volume name is not usable as part of a file name.
    #[error("volume {volume:?}: invalid name: {reason}")]
    InvalidVolumeName {
        /// The name as given.
        volume: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Two volumes have the same name.
    #[error("volume {volume:?} is listed more than once")]
    DuplicateVolume {
        /// The repeated name.
        volume: String,
    },
    /// The VM's disks directory cannot be created.
    #[error("cannot create the disks directory {path}: {source}")]
    DisksDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The ownership record cannot be read.
    #[error(transparent)]
    Manifest(ManifestError),
    /// The ownership record cannot be updated for a volume.
    #[error("volume {volume}: {source}")]
    Record {
        /// The volume being prepared.
        volume: String,
        /// The record error (names the record file).
        source: ManifestError,
    },
    /// A containerDisk image cannot be found or used.
    #[error("volume {volume}: containerDisk: {source}")]
    Image {
        /// The volume.
        volume: String,
        /// The store error (names the reference and the files).
        source: ImageStoreError,
    },
    /// An `oci:` / `oci-archive:` containerDisk cannot be read or unpacked.
    #[error("volume {volume}: containerDisk: {source}")]
    OciImage {
        /// The volume.
        volume: String,
        /// The layout or cache error (names the image and what is wrong).
        source: Box<OciCacheError>,
    },
    /// The copy-on-write overlay cannot be created or read.
    #[error("volume {volume}: containerDisk overlay {path}: {source}")]
    Overlay {
        /// The volume.
        volume: String,
        /// The overlay file.
        path: PathBuf,
        /// The image-layer error.
        source: DiskImageError,
    },
    /// An existing overlay is backed by a different file than the one the image resolves to.
    #[error(
        "volume {volume}: existing overlay {path} is backed by {found} but image resolves to \
         {}; clean up the VM's disks to start from the new image", .expected.display()
    )]
    OverlayMismatch {
        /// The volume.
        volume: String,
        /// The overlay file.
        path: PathBuf,
        /// Backing file named in the overlay.
        found: String,
        /// The resolved base image.
        expected: PathBuf,
    },
    /// The filesystem is full (or over quota); nothing half-made was left behind.
    #[error("volume {volume}: no space left on the filesystem holding {path}")]
    NoSpace {
        /// The volume.
        volume: String,
        /// The file being written.
        path: PathBuf,
    },
    /// Creating a disk file failed.
    #[error("volume {volume}: cannot create {path}: {source}")]
    Create {
        /// The volume.
        volume: String,
        /// The file being created.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Looking at an existing disk file failed.
    #[error("volume {volume}: cannot inspect {path}: {source}")]
    Inspect {
        /// The volume.
        volume: String,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The path exists but is neither a regular file nor a block device.
    #[error("volume {volume}: {path} is {what}, not a disk image file or block device")]
    NotADisk {
        /// The volume.
        volume: String,
        /// The path.
        path: PathBuf,
        /// What it is instead ("a directory", ...).
        what: &'static str,
    },
    /// A capacity is zero or too large.
    #[error(
        "volume {volume}: capacity {capacity} bytes is not usable (must be 1..=2^64-512 bytes)"
    )]
    InvalidCapacity {
        /// The volume.
        volume: String,
        /// The requested capacity.
        capacity: u64,
    },
    /// An existing emptyDisk has a different size than requested.
    #[error("volume {volume}: existing emptyDisk {path} has {found} bytes but {expected} are requested; clean up the VM's disks to recreate it")]
    SizeMismatch {
        /// The volume.
        volume: String,
        /// The file.
        path: PathBuf,
        /// Its size.
        found: u64,
        /// The requested size.
        expected: u64,
    },
    /// A hostDisk path is relative.
    #[error("volume {volume}: hostDisk path {path} must be absolute")]
    HostDiskNotAbsolute {
        /// The volume.
        volume: String,
        /// The path as given.
        path: PathBuf,
    },
    /// A `Disk`-type hostDisk does not exist.
    #[error("volume {volume}: hostDisk {path} does not exist (type Disk needs an existing file; use type DiskOrCreate with a capacity to create it)")]
    HostDiskMissing {
        /// The volume.
        volume: String,
        /// The path.
        path: PathBuf,
    },
    /// A `DiskOrCreate` hostDisk is missing and has no capacity.
    #[error("volume {volume}: hostDisk {path} does not exist and type DiskOrCreate has no capacity to create it with")]
    HostDiskNoCapacity {
        /// The volume.
        volume: String,
        /// The path.
        path: PathBuf,
    },
    /// The claim name cannot be a file name.
    #[error("volume {volume}: invalid persistentVolumeClaim name {claim:?}: {reason}")]
    InvalidClaimName {
        /// The volume.
        volume: String,
        /// The claim name.
        claim: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A volume of a cluster object on the standalone node.
    #[error("volume {volume}: {kind} volumes need cluster mode: the standalone node has no ConfigMaps, Secrets or service accounts")]
    ClusterOnly {
        /// The volume.
        volume: String,
        /// The source kind.
        kind: &'static str,
    },
    /// The standalone PVC image does not exist.
    #[error("volume {volume}: persistentVolumeClaim {claim}: {path} does not exist; in standalone mode a claim is a raw image file, create it first, e.g. `truncate -s 10G {path}`")]
    PvcMissing {
        /// The volume.
        volume: String,
        /// The claim name.
        claim: String,
        /// The expected image file.
        path: PathBuf,
    },
    /// The cloud-init seed cannot be built.
    #[error("volume {volume}: cloudInitNoCloud seed {path}: {source}")]
    CloudInit {
        /// The volume.
        volume: String,
        /// The seed file.
        path: PathBuf,
        /// The cause.
        source: CloudInitError,
    },
    /// Removing a file during cleanup failed.
    #[error("cannot remove {path} while cleaning up VM disks: {source}")]
    Cleanup {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

/// Turns each volume into a disk file and returns them in the same order.
///
/// Idempotent: calling it again for the same VM (e.g. after a node-agent restart) reuses the
/// overlays and empty disks already there, with their data. On error, files created so far
/// stay recorded in the VM's ownership record, so a retry reuses them and [`cleanup`]
/// removes them.
pub fn prepare(
    ctx: &DiskContext,
    volumes: &[VolumeRequest],
) -> Result<Vec<PreparedDisk>, DiskError> {
    let _span = tracing::info_span!(
        "prepare_disks",
        vm = %ctx.vm_name,
        uid = %ctx.vm_uid,
        volumes = volumes.len()
    )
    .entered();
    for (i, v) in volumes.iter().enumerate() {
        check_volume_name(&v.name)?;
        if volumes[..i].iter().any(|o| o.name == v.name) {
            return Err(DiskError::DuplicateVolume {
                volume: v.name.clone(),
            });
        }
    }
    let dir = disks_dir(&ctx.vm_dir);
    fs::create_dir_all(&dir).map_err(|source| DiskError::DisksDir {
        path: dir.clone(),
        source,
    })?;
    let mut manifest = Manifest::load(&dir).map_err(DiskError::Manifest)?;
    let mut prepared = Vec::with_capacity(volumes.len());
    for volume in volumes {
        let disk = Volume {
            ctx,
            dir: &dir,
            req: volume,
        }
        .prepare(&mut manifest)?;
        tracing::info!(
            volume = %disk.name,
            path = %disk.path.display(),
            format = %disk.format,
            read_only = disk.read_only,
            owned = disk.owned,
            "disk ready"
        );
        prepared.push(disk);
    }
    Ok(prepared)
}

/// Removes the disks [`prepare`] created for the VM (and only those: host disks and PVC
/// images are never touched), then the disks directory if nothing else is in it.
/// A VM without disks, or cleaned up already, is fine.
pub fn cleanup(vm_dir: &Path) -> Result<(), DiskError> {
    let dir = disks_dir(vm_dir);
    let _span = tracing::info_span!("cleanup_disks", dir = %dir.display()).entered();
    match fs::symlink_metadata(&dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(DiskError::Cleanup { path: dir, source }),
        Ok(_) => {}
    }
    let manifest = Manifest::load(&dir).map_err(DiskError::Manifest)?;
    let remove = |path: PathBuf| {
        fsutil::remove_if_exists(&path).map_err(|source| DiskError::Cleanup { path, source })
    };
    for name in manifest.files() {
        let path = dir.join(name);
        remove(fsutil::temp_path(&path))?;
        remove(path)?;
        tracing::debug!(file = name, "removed");
    }
    remove(fsutil::temp_path(manifest.path()))?;
    remove(manifest.path().to_path_buf())?;
    match fs::remove_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => {
            tracing::warn!(dir = %dir.display(), "disks directory holds files not created by us; left in place");
        }
        Err(source) => return Err(DiskError::Cleanup { path: dir, source }),
    }
    tracing::info!("VM disks removed");
    Ok(())
}

fn check_volume_name(name: &str) -> Result<(), DiskError> {
    let invalid = |reason| DiskError::InvalidVolumeName {
        volume: name.to_owned(),
        reason,
    };
    if name.is_empty() || name.len() > MAX_VOLUME_NAME {
        return Err(invalid("must be 1 to 63 characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        || name.starts_with('-')
        || name.ends_with('-')
    {
        return Err(invalid(
            "must be a DNS label: lowercase letters, digits and '-', starting and ending with a letter or digit",
        ));
    }
    Ok(())
}

/// One volume being prepared.
struct Volume<'a> {
    ctx: &'a DiskContext,
    dir: &'a Path,
    req: &'a VolumeRequest,
}

impl Volume<'_> {
    fn prepare(&self, manifest: &mut Manifest) -> Result<PreparedDisk, DiskError> {
        let kind = match &self.req.source {
            VolumeSource::ContainerDisk { .. } => "containerDisk",
            VolumeSource::EmptyDisk { .. } => "emptyDisk",
            VolumeSource::HostDisk { .. } => "hostDisk",
            VolumeSource::Pvc { .. } => "persistentVolumeClaim",
            VolumeSource::CloudInitNoCloud { .. } => "cloudInitNoCloud",
            VolumeSource::ClusterFiles { kind, .. } => kind,
        };
        let _span = tracing::info_span!("volume", name = %self.req.name, kind).entered();
        match &self.req.source {
            VolumeSource::ContainerDisk { image } => self.container_disk(manifest, image),
            VolumeSource::EmptyDisk { capacity_bytes } => {
                self.empty_disk(manifest, *capacity_bytes)
            }
            VolumeSource::HostDisk {
                path,
                create,
                capacity_bytes,
            } => self.host_disk(path, *create, *capacity_bytes),
            VolumeSource::Pvc { claim, read_only } => self.pvc(claim, *read_only),
            VolumeSource::ClusterFiles { kind, .. } => Err(DiskError::ClusterOnly {
                volume: self.name(),
                kind,
            }),
            VolumeSource::CloudInitNoCloud {
                user_data,
                user_data_base64,
                network_data,
            } => self.cloud_init(
                manifest,
                user_data.as_deref(),
                user_data_base64.as_deref(),
                network_data.as_deref(),
            ),
        }
    }

    fn name(&self) -> String {
        self.req.name.clone()
    }

    fn disk(&self, path: PathBuf, format: DiskFormat, owned: bool) -> PreparedDisk {
        PreparedDisk {
            name: self.name(),
            path,
            format,
            read_only: self.req.read_only,
            serial: self.req.serial.clone(),
            owned,
        }
    }

    /// Records `<volume><suffix>` as ours and returns its path.
    fn owned_file(&self, manifest: &mut Manifest, suffix: &str) -> Result<PathBuf, DiskError> {
        let file = format!("{}{suffix}", self.req.name);
        manifest.record(&file).map_err(|source| match source {
            ManifestError::NoSpace { path } => DiskError::NoSpace {
                volume: self.name(),
                path,
            },
            source => DiskError::Record {
                volume: self.name(),
                source,
            },
        })?;
        Ok(self.dir.join(file))
    }

    fn io_error(&self, path: &Path, source: io::Error) -> DiskError {
        if fsutil::is_no_space(&source) {
            DiskError::NoSpace {
                volume: self.name(),
                path: path.to_path_buf(),
            }
        } else {
            DiskError::Create {
                volume: self.name(),
                path: path.to_path_buf(),
                source,
            }
        }
    }

    fn sectors(&self, capacity: u64) -> Result<u64, DiskError> {
        match capacity.checked_next_multiple_of(SECTOR) {
            Some(size) if size > 0 => Ok(size),
            _ => Err(DiskError::InvalidCapacity {
                volume: self.name(),
                capacity,
            }),
        }
    }

    /// Stats `path`: `Ok(None)` if missing, an error unless it is a file or block device.
    fn existing_disk(&self, path: &Path) -> Result<Option<fs::Metadata>, DiskError> {
        match fs::metadata(path) {
            Ok(meta) if meta.is_file() || meta.file_type().is_block_device() => Ok(Some(meta)),
            Ok(meta) => Err(DiskError::NotADisk {
                volume: self.name(),
                path: path.to_path_buf(),
                what: if meta.is_dir() {
                    "a directory"
                } else {
                    "a special file"
                },
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(DiskError::Inspect {
                volume: self.name(),
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    fn container_disk(
        &self,
        manifest: &mut Manifest,
        image: &str,
    ) -> Result<PreparedDisk, DiskError> {
        let base = self.base_image(image)?;
        let path = self.owned_file(manifest, ".overlay.qcow2")?;
        let overlay_err = |source| match source {
            DiskImageError::NoSpace { .. } => DiskError::NoSpace {
                volume: self.name(),
                path: path.clone(),
            },
            source => DiskError::Overlay {
                volume: self.name(),
                path: path.clone(),
                source,
            },
        };
        if fs::symlink_metadata(&path).is_ok() {
            let info = inspect(&path).map_err(overlay_err)?;
            let expected = fs::canonicalize(&base.path).map_err(|source| DiskError::Inspect {
                volume: self.name(),
                path: base.path.clone(),
                source,
            })?;
            let found = info.backing_file.unwrap_or_else(|| "nothing".to_owned());
            if info.format != DiskFormat::Qcow2 || Path::new(&found) != expected {
                return Err(DiskError::OverlayMismatch {
                    volume: self.name(),
                    path,
                    found,
                    expected,
                });
            }
            tracing::info!(overlay = %path.display(), "reusing existing overlay");
        } else {
            create_overlay(&path, &base.path, base.format).map_err(overlay_err)?;
        }
        Ok(self.disk(path, DiskFormat::Qcow2, true))
    }

    /// The base file of a containerDisk: from the OCI cache for `oci:` / `oci-archive:`
    /// references, else from the image store.
    fn base_image(&self, image: &str) -> Result<ResolvedImage, DiskError> {
        if OciReference::is_oci(image) {
            let disk = self
                .ctx
                .oci_cache
                .resolve(image)
                .map_err(|source| match source {
                    OciCacheError::NoSpace { path, .. } => DiskError::NoSpace {
                        volume: self.name(),
                        path,
                    },
                    source => DiskError::OciImage {
                        volume: self.name(),
                        source: Box::new(source),
                    },
                })?;
            return Ok(ResolvedImage {
                reference: image.to_owned(),
                path: disk.path,
                format: disk.format,
            });
        }
        self.ctx
            .images
            .resolve(image)
            .map_err(|source| DiskError::Image {
                volume: self.name(),
                source,
            })
    }

    fn empty_disk(
        &self,
        manifest: &mut Manifest,
        capacity: u64,
    ) -> Result<PreparedDisk, DiskError> {
        let size = self.sectors(capacity)?;
        let path = self.owned_file(manifest, ".empty.img")?;
        match self.existing_disk(&path)? {
            Some(meta) if meta.len() != size => {
                return Err(DiskError::SizeMismatch {
                    volume: self.name(),
                    path,
                    found: meta.len(),
                    expected: size,
                })
            }
            Some(_) => tracing::info!(path = %path.display(), "reusing existing emptyDisk"),
            None => fsutil::create_sparse(&path, size).map_err(|e| self.io_error(&path, e))?,
        }
        Ok(self.disk(path, DiskFormat::Raw, true))
    }

    fn host_disk(
        &self,
        path: &Path,
        create: bool,
        capacity: Option<u64>,
    ) -> Result<PreparedDisk, DiskError> {
        if !path.is_absolute() {
            return Err(DiskError::HostDiskNotAbsolute {
                volume: self.name(),
                path: path.to_path_buf(),
            });
        }
        if self.existing_disk(path)?.is_none() {
            if !create {
                return Err(DiskError::HostDiskMissing {
                    volume: self.name(),
                    path: path.to_path_buf(),
                });
            }
            let capacity = capacity.ok_or_else(|| DiskError::HostDiskNoCapacity {
                volume: self.name(),
                path: path.to_path_buf(),
            })?;
            let size = self.sectors(capacity)?;
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).map_err(|e| self.io_error(parent, e))?;
            }
            match fsutil::create_sparse(path, size) {
                Ok(()) => tracing::info!(path = %path.display(), size, "created hostDisk"),
                // Someone created it in the meantime: use theirs, as with an existing file.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(self.io_error(path, e)),
            }
        }
        Ok(self.disk(path.to_path_buf(), DiskFormat::Raw, false))
    }

    fn pvc(&self, claim: &str, claim_read_only: bool) -> Result<PreparedDisk, DiskError> {
        let invalid = |reason| DiskError::InvalidClaimName {
            volume: self.name(),
            claim: claim.to_owned(),
            reason,
        };
        if claim.is_empty() || claim.len() > MAX_CLAIM_NAME {
            return Err(invalid("must be 1 to 253 characters"));
        }
        if claim.starts_with('.')
            || !claim
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
        {
            return Err(invalid(
                "must be letters, digits, '-', '.' or '_' and not start with '.'",
            ));
        }
        let path = self.ctx.volumes_dir.join(format!("{claim}.img"));
        if self.existing_disk(&path)?.is_none() {
            return Err(DiskError::PvcMissing {
                volume: self.name(),
                claim: claim.to_owned(),
                path,
            });
        }
        let mut disk = self.disk(path, DiskFormat::Raw, false);
        disk.read_only |= claim_read_only;
        Ok(disk)
    }

    fn cloud_init(
        &self,
        manifest: &mut Manifest,
        user_data: Option<&str>,
        user_data_base64: Option<&str>,
        network_data: Option<&str>,
    ) -> Result<PreparedDisk, DiskError> {
        let path = self.dir.join(format!("{}.cidata.img", self.req.name));
        let cloud_err = |source| match source {
            CloudInitError::NoSpace => DiskError::NoSpace {
                volume: self.name(),
                path: path.clone(),
            },
            source => DiskError::CloudInit {
                volume: self.name(),
                path: path.clone(),
                source,
            },
        };
        let seed = NoCloudSeed::new(
            &self.ctx.vm_uid,
            &self.ctx.vm_name,
            user_data,
            user_data_base64,
            network_data,
        )
        .map_err(cloud_err)?;
        // Same name as `path`; recorded only once the inputs are known to be valid.
        self.owned_file(manifest, ".cidata.img")?;
        if !cloudinit::write_seed(&path, &seed).map_err(cloud_err)? {
            tracing::info!(path = %path.display(), "reusing identical cloud-init seed");
        }
        Ok(self.disk(path, DiskFormat::Raw, true))
    }
}
