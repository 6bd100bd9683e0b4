//! A VM's disks as volume requests for `ironvisor-disks`, in guest order: one
//! implementation for standalone mode (`runtime`) and the launcher pod (`pod`).
//!
//! Guest order is boot order: disks with `bootOrder` first, by value, then the rest in
//! listed order. Each disk is backed by the volume of the same name; volumes no disk uses
//! are not attached.

use std::path::PathBuf;

use ironvisor_crds::quantity;
use ironvisor_crds::v1alpha1::{HostDiskType, VirtualMachineInstanceSpec, Volume};
use ironvisor_disks::{
    DiskError, DiskFormat, ImageStoreError, PreparedDisk, VolumeRequest, VolumeSource,
};
use ironvisor_launcher_api::config::{DiskConfig, ImageFormat};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::records::VmKey;

/// Why a VM's disks cannot be turned into volume requests.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VolumeError {
    /// A disk names a volume that does not exist.
    #[error("VM {vm}: disk {disk:?} has no volume")]
    Missing {
        /// The VM.
        vm: String,
        /// The disk.
        disk: String,
    },
    /// A volume has no source.
    #[error("VM {vm}: volume {volume} has no source")]
    NoSource {
        /// The VM.
        vm: String,
        /// The volume.
        volume: String,
    },
    /// A capacity is not a valid quantity.
    #[error("VM {vm}: volume {volume}: {field}: {reason}")]
    Capacity {
        /// The VM.
        vm: String,
        /// The volume.
        volume: String,
        /// The field (`emptyDisk.capacity`, ...).
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

impl VolumeError {
    /// A CamelCase reason for status conditions.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing { .. } => "VolumeMissing",
            Self::NoSource { .. } => "VolumeInvalid",
            Self::Capacity { .. } => "InvalidCapacity",
        }
    }
}

/// The volume requests of the VM's disks, in guest order.
pub fn disk_requests(
    key: &VmKey,
    spec: &VirtualMachineInstanceSpec,
) -> Result<Vec<VolumeRequest>, VolumeError> {
    let mut disks: Vec<_> = spec.domain.devices.disks.iter().collect();
    disks.sort_by_key(|d| d.boot_order.unwrap_or(u32::MAX));
    let mut requests = Vec::with_capacity(disks.len());
    for disk in disks {
        let volume = spec
            .volumes
            .iter()
            .find(|v| v.name == disk.name)
            .ok_or_else(|| VolumeError::Missing {
                vm: key.to_string(),
                disk: disk.name.clone(),
            })?;
        let cdrom_ro = disk
            .cdrom
            .as_ref()
            .is_some_and(|c| c.readonly.unwrap_or(true));
        let source = volume_source(key, volume)?;
        let pvc_ro = matches!(
            source,
            VolumeSource::Pvc {
                read_only: true,
                ..
            }
        );
        requests.push(VolumeRequest {
            name: volume.name.clone(),
            source,
            read_only: cdrom_ro || pvc_ro,
            serial: disk.serial.clone(),
        });
    }
    Ok(requests)
}

/// Where a volume's data comes from, with quantities in bytes.
pub fn volume_source(key: &VmKey, volume: &Volume) -> Result<VolumeSource, VolumeError> {
    let bytes = |q: &Quantity, field: &'static str| {
        quantity::to_bytes(q).map_err(|e| VolumeError::Capacity {
            vm: key.to_string(),
            volume: volume.name.clone(),
            field,
            reason: e.to_string(),
        })
    };
    if let Some(cd) = &volume.container_disk {
        return Ok(VolumeSource::ContainerDisk {
            image: cd.image.clone(),
        });
    }
    if let Some(empty) = &volume.empty_disk {
        return Ok(VolumeSource::EmptyDisk {
            capacity_bytes: bytes(&empty.capacity, "emptyDisk.capacity")?,
        });
    }
    if let Some(host) = &volume.host_disk {
        return Ok(VolumeSource::HostDisk {
            path: PathBuf::from(&host.path),
            create: host.type_ == HostDiskType::DiskOrCreate,
            capacity_bytes: host
                .capacity
                .as_ref()
                .map(|c| bytes(c, "hostDisk.capacity"))
                .transpose()?,
        });
    }
    if let Some(pvc) = &volume.persistent_volume_claim {
        return Ok(VolumeSource::Pvc {
            claim: pvc.claim_name.clone(),
            read_only: pvc.read_only.unwrap_or(false),
        });
    }
    let cluster_kind = [
        (volume.config_map.is_some(), "configMap"),
        (volume.secret.is_some(), "secret"),
        (volume.service_account.is_some(), "serviceAccount"),
        (volume.downward_api.is_some(), "downwardAPI"),
    ]
    .into_iter()
    .find_map(|(set, kind)| set.then_some(kind));
    if let Some(kind) = cluster_kind {
        return Ok(VolumeSource::ClusterFiles {
            kind,
            label: volume.config_disk_label(),
        });
    }
    if let Some(ci) = &volume.cloud_init_no_cloud {
        return Ok(VolumeSource::CloudInitNoCloud {
            user_data: ci.user_data.clone(),
            user_data_base64: ci.user_data_base64.clone(),
            network_data: ci.network_data.clone(),
        });
    }
    Err(VolumeError::NoSource {
        vm: key.to_string(),
        volume: volume.name.clone(),
    })
}

/// The launcher's disk entry of a prepared disk.
pub fn disk_config(disk: PreparedDisk) -> DiskConfig {
    DiskConfig {
        id: disk.name,
        path: disk.path,
        format: image_format(disk.format),
        read_only: disk.read_only,
        serial: disk.serial,
        rate_limit: None,
    }
}

/// The launcher's name of a disk format.
pub fn image_format(format: DiskFormat) -> ImageFormat {
    match format {
        DiskFormat::Raw => ImageFormat::Raw,
        DiskFormat::Qcow2 => ImageFormat::Qcow2,
    }
}

/// A CamelCase reason for a disk preparation failure.
pub fn disk_error_reason(error: &DiskError) -> &'static str {
    match error {
        DiskError::Image {
            source: ImageStoreError::NotFound { .. } | ImageStoreError::InvalidReference { .. },
            ..
        } => "ImageNotFound",
        DiskError::Image { .. } => "ImageUnusable",
        DiskError::OciImage { source, .. } if source.is_not_found() => "ImageNotFound",
        DiskError::OciImage { .. } => "ImageUnusable",
        DiskError::NoSpace { .. } => "NoSpace",
        DiskError::HostDiskMissing { .. } | DiskError::HostDiskNoCapacity { .. } => {
            "HostDiskNotFound"
        }
        DiskError::PvcMissing { .. } => "PvcNotFound",
        DiskError::ClusterOnly { .. } => "ClusterOnlyVolume",
        _ => "DiskPreparationFailed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ironvisor_crds::v1alpha1::{CdRomTarget, ContainerDiskSource, Disk, EmptyDiskSource};

    fn volume(name: &str) -> Volume {
        Volume {
            name: name.into(),
            ..Volume::default()
        }
    }

    #[test]
    fn disks_come_in_boot_order_with_their_volumes() {
        let key = VmKey::new("default", "vm");
        let mut spec = VirtualMachineInstanceSpec::default();
        let disk = |name: &str, boot_order| Disk {
            name: name.into(),
            boot_order,
            ..Disk::default()
        };
        spec.domain.devices.disks = vec![disk("data", None), disk("root", Some(1))];
        spec.domain.devices.disks[0].cdrom = Some(CdRomTarget::default());
        spec.volumes = vec![
            Volume {
                empty_disk: Some(EmptyDiskSource {
                    capacity: Quantity("1Mi".into()),
                }),
                ..volume("data")
            },
            Volume {
                container_disk: Some(ContainerDiskSource {
                    image: "a/b:c".into(),
                }),
                ..volume("root")
            },
        ];
        let requests = disk_requests(&key, &spec).unwrap();
        assert_eq!(requests[0].name, "root");
        assert!(!requests[0].read_only);
        assert_eq!(
            requests[1].source,
            VolumeSource::EmptyDisk {
                capacity_bytes: 1 << 20
            }
        );
        assert!(requests[1].read_only, "a cdrom is read-only by default");

        spec.volumes.truncate(1);
        let error = disk_requests(&key, &spec).unwrap_err();
        assert_eq!(error.reason(), "VolumeMissing");
        spec.volumes = vec![volume("data"), volume("root")];
        let error = disk_requests(&key, &spec).unwrap_err();
        assert_eq!(
            error.to_string(),
            "VM default/vm: volume root has no source"
        );
    }

    #[test]
    fn oci_image_errors_are_not_found_or_unusable() {
        use ironvisor_disks::oci_layout::OciLayoutError;
        use ironvisor_disks::OciCacheError;
        let oci = |source| DiskError::OciImage {
            volume: "root".into(),
            source: Box::new(OciCacheError::Layout {
                image: "oci-archive:/x.tar".into(),
                source,
            }),
        };
        let missing = oci(OciLayoutError::Missing {
            path: "/x.tar".into(),
        });
        assert_eq!(disk_error_reason(&missing), "ImageNotFound");
        let corrupt = oci(OciLayoutError::DigestMismatch {
            digest: "sha256:00".into(),
            found: "11".into(),
        });
        assert_eq!(disk_error_reason(&corrupt), "ImageUnusable");
        assert_eq!(
            corrupt.to_string(),
            "volume root: containerDisk: image oci-archive:/x.tar: blob sha256:00 does not \
             match its digest: its content hashes to sha256:11"
        );
    }
}
