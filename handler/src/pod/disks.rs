//! The instance's disks in the pod, in guest order ([`crate::volumes`]):
//!
//! | volume | disk |
//! |---|---|
//! | `containerDisk` | the one file in `<container-disks>/<volume>/` ([`super::container_disk`]), used in place |
//! | `emptyDisk` | `<run-dir>/disks/<volume>.empty.img`, sparse raw (`ironvisor-disks`) |
//! | `cloudInitNoCloud` | `<run-dir>/disks/<volume>.cidata.img` (`ironvisor-disks`) |
//! | `configMap`, `secret`, `serviceAccount`, `downwardAPI` | `<run-dir>/disks/<volume>.files.img`: a FAT image of `<config-volumes>/<volume>/`, which the kubelet fills ([`ironvisor_disks::config_disk`]) |
//! | `hostDisk` | `<host-disks>/<volume>/<file name>`: the node directory of its file, mounted by the controller (created at `capacity` for `DiskOrCreate`, by `ironvisor-disks`) |
//! | `persistentVolumeClaim`, Filesystem | `<claim-mounts>/<volume>/disk.img` on the claim's volume, created sparse at the claim's size (at most the free space) when absent |
//! | `persistentVolumeClaim`, Block | `<claim-devices>/<volume>`: the claim's device itself |

use std::path::{Path, PathBuf};

use ironvisor_crds::v1alpha1::VirtualMachineInstanceSpec;
use ironvisor_disks::{DiskContext, DiskError, ImageStore, OciCache, VolumeRequest, VolumeSource};
use ironvisor_launcher_api::config::DiskConfig;

use std::os::unix::fs::FileTypeExt;

use ironvisor_crds::pod_claims::{ClaimMode, PodClaim, CLAIM_DISK_FILE};

use super::container_disk::{self, ContainerDiskError};
use crate::records::VmKey;
use crate::volumes::{self, VolumeError};

/// A Filesystem claim's disk file is a whole number of these (1 MiB).
const CLAIM_DISK_ALIGNMENT: u64 = 1 << 20;

/// Why the disks cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum PodDiskError {
    /// The disks and volumes do not fit together.
    #[error(transparent)]
    Volume(#[from] VolumeError),
    /// A persistentVolumeClaim volume the controller gave the pod no `--claim` for.
    #[error("volume {volume}: persistentVolumeClaim {claim:?} was not given to the pod (no --claim {volume}=...)")]
    ClaimNotGiven {
        /// The volume.
        volume: String,
        /// The claim name.
        claim: String,
    },
    /// A Block claim whose device is not in the pod.
    #[error("volume {volume}: the Block device of its persistentVolumeClaim is not at {path}: {problem}")]
    ClaimDevice {
        /// The volume.
        volume: String,
        /// Where it should be.
        path: PathBuf,
        /// What is there instead.
        problem: String,
    },
    /// A Filesystem claim that is not mounted.
    #[error("volume {volume}: the file system of its persistentVolumeClaim is not mounted at {path}: {source}")]
    ClaimMount {
        /// The volume.
        volume: String,
        /// The mount point.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A hostDisk path that names no file.
    #[error("volume {volume}: hostDisk path {path} names no file")]
    HostDiskPath {
        /// The volume.
        volume: String,
        /// The path as given.
        path: PathBuf,
    },
    /// A containerDisk has no usable file.
    #[error(transparent)]
    ContainerDisk(#[from] ContainerDiskError),
    /// The disk of a configMap, secret, serviceAccount or downwardAPI volume cannot be
    /// made.
    #[error("volume {volume}: {kind}: {source}")]
    ClusterFiles {
        /// The volume.
        volume: String,
        /// The source kind.
        kind: &'static str,
        /// What failed (names the file).
        #[source]
        source: ironvisor_disks::config_disk::ConfigDiskError,
    },
    /// An emptyDisk or cloud-init seed cannot be made.
    #[error("cannot create the disks in {dir}: {source}")]
    Prepare {
        /// Where they are made.
        dir: PathBuf,
        /// The cause (names the volume).
        #[source]
        source: Box<DiskError>,
    },
}

impl PodDiskError {
    /// A CamelCase reason for the termination message.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Volume(e) => e.reason(),
            Self::ClaimNotGiven { .. } | Self::ClaimDevice { .. } | Self::ClaimMount { .. } => {
                "PersistentVolumeClaimUnusable"
            }
            Self::HostDiskPath { .. } => "HostDiskNotFound",
            Self::ContainerDisk(_) => "ContainerDiskUnusable",
            Self::ClusterFiles { .. } => "VolumeFilesUnusable",
            Self::Prepare { source, .. } => volumes::disk_error_reason(source),
        }
    }
}

/// Where the pod's volumes are.
#[derive(Debug, Clone, Copy)]
pub struct PodVolumes<'a> {
    /// `<container-disks>/<volume>/` per containerDisk.
    pub container_disks: &'a Path,
    /// `<config-volumes>/<volume>/` per configMap, secret, serviceAccount or downwardAPI.
    pub config_volumes: &'a Path,
    /// `<host-disks>/<volume>/` per hostDisk: the directory of its file on the node.
    pub host_disks: &'a Path,
    /// The run directory; emptyDisks and seeds go to its `disks/`.
    pub run_dir: &'a Path,
    /// The persistentVolumeClaim volumes.
    pub claims: PodClaims<'a>,
}

/// The persistentVolumeClaim volumes in the pod ([`ironvisor_crds::pod_claims`]).
#[derive(Debug, Clone, Copy)]
pub struct PodClaims<'a> {
    /// What the controller said each claim is (`--claim`).
    pub given: &'a [PodClaim],
    /// `<dir>/<volume>/` per Filesystem claim.
    pub mounts: &'a Path,
    /// `<dir>/<volume>` per Block claim.
    pub devices: &'a Path,
}

/// The launcher's disks of the instance, in guest order.
pub fn prepare(
    dirs: PodVolumes<'_>,
    key: &VmKey,
    uid: &str,
    spec: &VirtualMachineInstanceSpec,
) -> Result<Vec<DiskConfig>, PodDiskError> {
    let requests = volumes::disk_requests(key, spec)?;
    // Disks by guest position; the ones `ironvisor-disks` makes are filled in after.
    let mut disks: Vec<Option<DiskConfig>> = Vec::with_capacity(requests.len());
    let mut made: Vec<(usize, VolumeRequest)> = Vec::new();
    for request in requests {
        match &request.source {
            VolumeSource::ContainerDisk { .. } => {
                let file = container_disk::find(dirs.container_disks, &request.name)?;
                tracing::info!(
                    volume = %request.name,
                    path = %file.path.display(),
                    format = %file.format,
                    "containerDisk used in place"
                );
                disks.push(Some(DiskConfig {
                    id: request.name,
                    path: file.path,
                    format: volumes::image_format(file.format),
                    read_only: request.read_only,
                    serial: request.serial,
                    rate_limit: None,
                }));
            }
            VolumeSource::EmptyDisk { .. } | VolumeSource::CloudInitNoCloud { .. } => {
                made.push((disks.len(), request));
                disks.push(None);
            }
            VolumeSource::HostDisk {
                path,
                create,
                capacity_bytes,
            } => {
                // The same file, seen through the pod's mount of its directory.
                let Some(file_name) = path.file_name() else {
                    return Err(PodDiskError::HostDiskPath {
                        volume: request.name,
                        path: path.clone(),
                    });
                };
                let in_pod = dirs.host_disks.join(&request.name).join(file_name);
                tracing::info!(volume = %request.name, node_path = %path.display(), pod_path = %in_pod.display(), "hostDisk");
                let request = VolumeRequest {
                    source: VolumeSource::HostDisk {
                        path: in_pod,
                        create: *create,
                        capacity_bytes: *capacity_bytes,
                    },
                    ..request.clone()
                };
                made.push((disks.len(), request));
                disks.push(None);
            }
            VolumeSource::ClusterFiles { kind, label } => {
                disks.push(Some(cluster_files_disk(dirs, &request, kind, label)?));
            }
            VolumeSource::Pvc { claim, .. } => {
                let given = dirs
                    .claims
                    .given
                    .iter()
                    .find(|c| c.volume == request.name)
                    .ok_or_else(|| PodDiskError::ClaimNotGiven {
                        volume: request.name.clone(),
                        claim: claim.clone(),
                    })?;
                match given.mode {
                    ClaimMode::Block => disks.push(Some(claim_device(dirs, &request)?)),
                    ClaimMode::Filesystem { capacity_bytes } => {
                        let request = claim_file_request(dirs, &request, capacity_bytes)?;
                        made.push((disks.len(), request));
                        disks.push(None);
                    }
                }
            }
        }
    }
    if !made.is_empty() {
        let context = DiskContext {
            vm_dir: dirs.run_dir.to_path_buf(),
            vm_name: key.name.clone(),
            vm_uid: uid.to_string(),
            // None of these is used for emptyDisks and seeds.
            images: ImageStore::new(dirs.container_disks),
            oci_cache: OciCache::new(dirs.container_disks),
            volumes_dir: dirs.run_dir.to_path_buf(),
        };
        let requests: Vec<VolumeRequest> = made.iter().map(|(_, r)| r.clone()).collect();
        let prepared = ironvisor_disks::prepare(&context, &requests).map_err(|source| {
            PodDiskError::Prepare {
                dir: ironvisor_disks::disks_dir(dirs.run_dir),
                source: Box::new(source),
            }
        })?;
        for ((index, _), disk) in made.iter().zip(prepared) {
            if let Some(slot) = disks.get_mut(*index) {
                *slot = Some(volumes::disk_config(disk));
            }
        }
    }
    Ok(disks.into_iter().flatten().collect())
}

/// The read-only FAT disk of the files the kubelet wrote for a cluster-object volume.
fn cluster_files_disk(
    dirs: PodVolumes<'_>,
    request: &VolumeRequest,
    kind: &'static str,
    label: &str,
) -> Result<DiskConfig, PodDiskError> {
    let fail = |source| PodDiskError::ClusterFiles {
        volume: request.name.clone(),
        kind,
        source,
    };
    let disks_dir = ironvisor_disks::disks_dir(dirs.run_dir);
    std::fs::create_dir_all(&disks_dir).map_err(|source| {
        fail(ironvisor_disks::config_disk::ConfigDiskError::Write {
            path: disks_dir.clone(),
            source,
        })
    })?;
    let path = disks_dir.join(format!("{}.files.img", request.name));
    ironvisor_disks::config_disk::write_directory_disk(
        &dirs.config_volumes.join(&request.name),
        &path,
        label,
    )
    .map_err(fail)?;
    Ok(DiskConfig {
        id: request.name.clone(),
        path,
        format: ironvisor_launcher_api::config::ImageFormat::Raw,
        read_only: true,
        serial: request.serial.clone(),
        rate_limit: None,
    })
}

/// A Block claim: its device, used as a raw disk.
fn claim_device(dirs: PodVolumes<'_>, request: &VolumeRequest) -> Result<DiskConfig, PodDiskError> {
    let path = dirs.claims.devices.join(&request.name);
    let fail = |problem: String| PodDiskError::ClaimDevice {
        volume: request.name.clone(),
        path: path.clone(),
        problem,
    };
    let metadata = std::fs::metadata(&path).map_err(|e| fail(e.to_string()))?;
    if !metadata.file_type().is_block_device() {
        return Err(fail("not a block device".into()));
    }
    tracing::info!(volume = %request.name, path = %path.display(), "Block persistentVolumeClaim");
    Ok(DiskConfig {
        id: request.name.clone(),
        path,
        format: ironvisor_launcher_api::config::ImageFormat::Raw,
        read_only: request.read_only,
        serial: request.serial.clone(),
        rate_limit: None,
    })
}

/// A Filesystem claim: its `disk.img`, made like a `DiskOrCreate` hostDisk at the claim's
/// size or the free space on the claim, whichever is smaller (a file system keeps some of
/// a volume for itself, so a file of the full size could fill it and fail guest writes).
fn claim_file_request(
    dirs: PodVolumes<'_>,
    request: &VolumeRequest,
    capacity_bytes: u64,
) -> Result<VolumeRequest, PodDiskError> {
    let mount = dirs.claims.mounts.join(&request.name);
    let fail = |source| PodDiskError::ClaimMount {
        volume: request.name.clone(),
        path: mount.clone(),
        source,
    };
    let stats = nix::sys::statvfs::statvfs(&mount).map_err(|e| fail(e.into()))?;
    let free = stats
        .blocks_available()
        .saturating_mul(stats.fragment_size());
    let size = capacity_bytes.min(free) / CLAIM_DISK_ALIGNMENT * CLAIM_DISK_ALIGNMENT;
    let path = mount.join(CLAIM_DISK_FILE);
    tracing::info!(volume = %request.name, path = %path.display(), capacity_bytes, free, size, "Filesystem persistentVolumeClaim");
    Ok(VolumeRequest {
        source: VolumeSource::HostDisk {
            path,
            create: true,
            capacity_bytes: Some(size.max(CLAIM_DISK_ALIGNMENT)),
        },
        ..request.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ironvisor_crds::v1alpha1::{
        CloudInitNoCloudSource, ContainerDiskSource, Disk, EmptyDiskSource, HostDisk,
        PersistentVolumeClaimSource, Volume,
    };
    use ironvisor_launcher_api::config::ImageFormat;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn no_claims() -> PodClaims<'static> {
        PodClaims {
            given: &[],
            mounts: Path::new("/nonexistent"),
            devices: Path::new("/nonexistent"),
        }
    }

    fn spec(volumes: Vec<Volume>) -> VirtualMachineInstanceSpec {
        let mut spec = VirtualMachineInstanceSpec::default();
        spec.domain.devices.disks = volumes
            .iter()
            .map(|v| Disk {
                name: v.name.clone(),
                ..Disk::default()
            })
            .collect();
        spec.volumes = volumes;
        spec
    }

    #[test]
    fn container_disks_are_used_in_place_and_the_rest_made_in_the_run_dir() {
        let root = tempfile::tempdir().unwrap();
        let container_disks = root.path().join("container-disks");
        let run_dir = root.path().join("sockets");
        std::fs::create_dir_all(container_disks.join("rootdisk")).unwrap();
        std::fs::create_dir_all(&run_dir).unwrap();
        std::fs::write(container_disks.join("rootdisk/rootfs.ext4"), [0u8; 4096]).unwrap();
        let spec = spec(vec![
            Volume {
                name: "rootdisk".into(),
                container_disk: Some(ContainerDiskSource {
                    image: "ironvisor/rootfs:1".into(),
                }),
                ..Volume::default()
            },
            Volume {
                name: "scratch".into(),
                empty_disk: Some(EmptyDiskSource {
                    capacity: Quantity("1Mi".into()),
                }),
                ..Volume::default()
            },
            Volume {
                name: "cloudinit".into(),
                cloud_init_no_cloud: Some(CloudInitNoCloudSource {
                    user_data: Some("#cloud-config\n".into()),
                    ..CloudInitNoCloudSource::default()
                }),
                ..Volume::default()
            },
        ]);
        let key = VmKey::new("default", "vm");
        let dirs = PodVolumes {
            container_disks: &container_disks,
            config_volumes: &root.path().join("config-volumes"),
            host_disks: root.path(),
            run_dir: &run_dir,
            claims: no_claims(),
        };
        let disks = prepare(dirs, &key, "uid-1", &spec).unwrap();
        let ids: Vec<&str> = disks.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["rootdisk", "scratch", "cloudinit"]);
        assert_eq!(disks[0].path, container_disks.join("rootdisk/rootfs.ext4"));
        assert_eq!(disks[0].format, ImageFormat::Raw);
        assert!(disks[1].path.starts_with(run_dir.join("disks")));
        assert_eq!(std::fs::metadata(&disks[1].path).unwrap().len(), 1 << 20);
        assert!(disks[2].path.starts_with(run_dir.join("disks")));
    }

    #[test]
    fn a_config_map_volume_becomes_a_read_only_fat_disk_of_its_files() {
        let root = tempfile::tempdir().unwrap();
        let config_volumes = root.path().join("config-volumes");
        std::fs::create_dir_all(config_volumes.join("app")).unwrap();
        std::fs::write(config_volumes.join("app/app.conf"), b"mode=vm\n").unwrap();
        let spec = spec(vec![Volume {
            name: "app".into(),
            config_map: Some(ironvisor_crds::v1alpha1::ConfigMapVolumeSource {
                name: "web-config".into(),
                volume_label: Some("cfgdata".into()),
                ..Default::default()
            }),
            ..Volume::default()
        }]);
        let dirs = PodVolumes {
            container_disks: root.path(),
            config_volumes: &config_volumes,
            host_disks: root.path(),
            run_dir: root.path(),
            claims: no_claims(),
        };
        let key = VmKey::new("default", "vm");
        let disks = prepare(dirs, &key, "u", &spec).unwrap();
        assert_eq!(disks.len(), 1);
        assert!(disks[0].read_only);
        assert_eq!(disks[0].format, ImageFormat::Raw);
        assert!(
            disks[0].path.ends_with("disks/app.files.img"),
            "{:?}",
            disks[0].path
        );
        let image = std::fs::read(&disks[0].path).unwrap();
        assert!(image.windows(7).any(|w| w == b"cfgdata"), "volume label");
        assert!(image.windows(8).any(|w| w == b"mode=vm\n"), "file contents");

        std::fs::remove_dir_all(config_volumes.join("app")).unwrap();
        let error = prepare(dirs, &key, "u", &spec).unwrap_err();
        assert_eq!(error.reason(), "VolumeFilesUnusable");
        assert!(
            error
                .to_string()
                .starts_with("volume app: configMap: cannot read"),
            "{error}"
        );
    }

    #[test]
    fn a_host_disk_is_its_file_in_the_pods_mount_and_claims_are_refused_by_name() {
        let root = tempfile::tempdir().unwrap();
        let dirs = PodVolumes {
            container_disks: root.path(),
            config_volumes: root.path(),
            host_disks: &root.path().join("host-disks"),
            run_dir: root.path(),
            claims: no_claims(),
        };
        let key = VmKey::new("default", "vm");
        std::fs::create_dir_all(root.path().join("host-disks/host")).unwrap();
        let host = spec(vec![Volume {
            name: "host".into(),
            host_disk: Some(HostDisk {
                path: "/var/lib/ironvisor/disks/data.raw".into(),
                type_: ironvisor_crds::v1alpha1::HostDiskType::DiskOrCreate,
                capacity: Some(k8s_openapi::apimachinery::pkg::api::resource::Quantity(
                    "1Mi".into(),
                )),
            }),
            ..Volume::default()
        }]);
        let disks = prepare(dirs, &key, "u", &host).unwrap();
        let expected = root.path().join("host-disks/host/data.raw");
        assert_eq!(disks[0].path, expected);
        assert_eq!(std::fs::metadata(&expected).unwrap().len(), 1 << 20);
        let missing = spec(vec![Volume {
            name: "host".into(),
            host_disk: Some(HostDisk {
                path: "/var/lib/ironvisor/disks/missing.raw".into(),
                ..HostDisk::default()
            }),
            ..Volume::default()
        }]);
        let error = prepare(dirs, &key, "u", &missing).unwrap_err();
        assert_eq!(error.reason(), "HostDiskNotFound", "{error}");
        let claim = spec(vec![Volume {
            name: "data".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimSource {
                claim_name: "data".into(),
                read_only: None,
            }),
            ..Volume::default()
        }]);
        let error = prepare(dirs, &key, "u", &claim).unwrap_err();
        assert!(
            error.to_string().contains("persistentVolumeClaim"),
            "{error}"
        );

        let missing = spec(vec![Volume {
            name: "rootdisk".into(),
            container_disk: Some(ContainerDiskSource { image: "x".into() }),
            ..Volume::default()
        }]);
        let error = prepare(dirs, &key, "u", &missing).unwrap_err();
        assert_eq!(error.reason(), "ContainerDiskUnusable");
    }

    #[test]
    fn filesystem_claims_get_a_disk_img_and_block_claims_are_their_device() {
        let root = tempfile::tempdir().unwrap();
        let mounts = root.path().join("claims");
        std::fs::create_dir_all(mounts.join("data")).unwrap();
        let devices = root.path().join("claim-devices");
        std::fs::create_dir_all(&devices).unwrap();
        let claim = |name: &str| Volume {
            name: name.into(),
            persistent_volume_claim: Some(PersistentVolumeClaimSource {
                claim_name: format!("{name}-claim"),
                read_only: None,
            }),
            ..Volume::default()
        };
        let given = [
            PodClaim {
                volume: "data".into(),
                mode: ClaimMode::Filesystem {
                    capacity_bytes: (3 << 20) + 5,
                },
            },
            PodClaim {
                volume: "raw".into(),
                mode: ClaimMode::Block,
            },
        ];
        let dirs = PodVolumes {
            container_disks: root.path(),
            config_volumes: root.path(),
            host_disks: root.path(),
            run_dir: root.path(),
            claims: PodClaims {
                given: &given,
                mounts: &mounts,
                devices: &devices,
            },
        };
        let key = VmKey::new("default", "vm");
        let disks = prepare(dirs, &key, "u", &spec(vec![claim("data")])).unwrap();
        let image = mounts.join("data/disk.img");
        assert_eq!(disks[0].path, image);
        assert_eq!(disks[0].format, ImageFormat::Raw);
        assert_eq!(
            std::fs::metadata(&image).unwrap().len(),
            3 << 20,
            "whole MiB"
        );
        // An existing disk.img is the guest's data: used as it is.
        std::fs::write(&image, b"kept").unwrap();
        prepare(dirs, &key, "u", &spec(vec![claim("data")])).unwrap();
        assert_eq!(std::fs::read(&image).unwrap(), b"kept");

        // A regular file where the device should be is refused naming the path.
        std::fs::write(devices.join("raw"), b"").unwrap();
        let error = prepare(dirs, &key, "u", &spec(vec![claim("raw")])).unwrap_err();
        assert_eq!(error.reason(), "PersistentVolumeClaimUnusable");
        assert!(error.to_string().contains("not a block device"), "{error}");
        // Any block device node stands in for the claim's device.
        let device = std::fs::read_dir("/dev")
            .unwrap()
            .flatten()
            .find(|e| e.file_type().unwrap().is_block_device())
            .expect("a block device node in /dev");
        std::fs::remove_file(devices.join("raw")).unwrap();
        std::os::unix::fs::symlink(device.path(), devices.join("raw")).unwrap();
        let disks = prepare(dirs, &key, "u", &spec(vec![claim("raw")])).unwrap();
        assert_eq!(disks[0].path, devices.join("raw"));

        // A claim the controller did not describe, or a Filesystem claim not mounted.
        let error = prepare(dirs, &key, "u", &spec(vec![claim("other")])).unwrap_err();
        assert!(error.to_string().contains("no --claim other="), "{error}");
        std::fs::remove_dir_all(mounts.join("data")).unwrap();
        let error = prepare(dirs, &key, "u", &spec(vec![claim("data")])).unwrap_err();
        assert!(error.to_string().contains("is not mounted at"), "{error}");
    }
}
