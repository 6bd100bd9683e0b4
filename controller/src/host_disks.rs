//! `hostDisk` volumes in the launcher pod. A hostDisk is a file on the node; the pod gets
//! the file's directory as a hostPath volume (`Directory`, or `DirectoryOrCreate` for
//! `DiskOrCreate`) at `/var/run/ironvisor/host-disks/<volume>/`, and virt-launcher uses
//! (or creates) the file there.
//!
//! A hostPath lets a pod read and write the node's files, so the controller gives launcher
//! pods only directories under one root it is told (`--host-disk-root`); without one,
//! hostDisk volumes are refused (KubeVirt keeps them behind its HostDisk feature gate).

use std::path::{Path, PathBuf};

use ironvisor_crds::v1alpha1::{HostDiskType, VirtualMachineInstanceSpec};
use k8s_openapi::api::core::v1::{HostPathVolumeSource, Volume, VolumeMount};

/// Where the compute container finds each hostDisk's directory: `<dir>/<volume>/`.
pub const HOST_DISKS_DIR: &str = "/var/run/ironvisor/host-disks";

/// Why a hostDisk cannot be given to the pod.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostDiskError {
    /// The controller was started without a host disk root.
    #[error("spec.volumes[{volume}]: hostDisk volumes are not enabled on this cluster (the controller runs without --host-disk-root)")]
    Disabled {
        /// The volume.
        volume: String,
    },
    /// The path is not an absolute, plain path to a file.
    #[error("spec.volumes[{volume}]: hostDisk path {path:?} must be an absolute path to a file, without '..'")]
    BadPath {
        /// The volume.
        volume: String,
        /// The path as given.
        path: String,
    },
    /// The path is outside the root.
    #[error("spec.volumes[{volume}]: hostDisk path {path} is outside {root}, the only node directory launcher pods are given (--host-disk-root)")]
    OutsideRoot {
        /// The volume.
        volume: String,
        /// The path as given.
        path: String,
        /// The allowed root.
        root: PathBuf,
    },
}

/// The pod volumes and the compute container's mounts of the instance's hostDisks.
#[derive(Debug, Default)]
pub struct HostDiskMounts {
    /// One hostPath volume per hostDisk.
    pub volumes: Vec<Volume>,
    /// Where the compute container sees them.
    pub mounts: Vec<VolumeMount>,
}

/// The hostDisks of `spec`, each allowed only under `root`.
pub fn host_disks(
    spec: &VirtualMachineInstanceSpec,
    root: Option<&Path>,
) -> Result<HostDiskMounts, HostDiskError> {
    let mut out = HostDiskMounts::default();
    for volume in &spec.volumes {
        let Some(disk) = &volume.host_disk else {
            continue;
        };
        let directory = allowed_directory(&volume.name, &disk.path, root)?;
        let pod_volume = pod_volume_name(&volume.name);
        let kind = match disk.type_ {
            HostDiskType::Disk => "Directory",
            HostDiskType::DiskOrCreate => "DirectoryOrCreate",
        };
        out.volumes.push(Volume {
            name: pod_volume.clone(),
            host_path: Some(HostPathVolumeSource {
                path: directory.to_string_lossy().into_owned(),
                type_: Some(kind.into()),
            }),
            ..Volume::default()
        });
        out.mounts.push(VolumeMount {
            name: pod_volume,
            mount_path: format!("{HOST_DISKS_DIR}/{}", volume.name),
            ..VolumeMount::default()
        });
    }
    Ok(out)
}

/// The directory of `path` when `path` is an absolute, plain file path under `root`.
fn allowed_directory(
    volume: &str,
    path: &str,
    root: Option<&Path>,
) -> Result<PathBuf, HostDiskError> {
    let root = root.ok_or_else(|| HostDiskError::Disabled {
        volume: volume.into(),
    })?;
    let bad = || HostDiskError::BadPath {
        volume: volume.into(),
        path: path.into(),
    };
    let file = Path::new(path);
    // Textually plain: `Path::components` would drop a `.` or an empty component, so the
    // string itself is checked.
    let plain = path.strip_prefix('/').is_some_and(|rest| {
        rest.split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
    });
    let (Some(directory), Some(_)) = (file.parent(), file.file_name()) else {
        return Err(bad());
    };
    if !plain {
        return Err(bad());
    }
    if !directory.starts_with(root) {
        return Err(HostDiskError::OutsideRoot {
            volume: volume.into(),
            path: path.into(),
            root: root.to_path_buf(),
        });
    }
    Ok(directory.to_path_buf())
}

/// The pod volume of hostDisk `volume` (a DNS label).
fn pod_volume_name(volume: &str) -> String {
    let mut name: String = format!("hostdisk-{volume}").chars().take(63).collect();
    while name.ends_with('-') {
        name.pop();
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;
    use ironvisor_crds::v1alpha1::{HostDisk, Volume as VmVolume};

    fn spec_with(path: &str, type_: HostDiskType) -> VirtualMachineInstanceSpec {
        VirtualMachineInstanceSpec {
            volumes: vec![VmVolume {
                name: "data".into(),
                host_disk: Some(HostDisk {
                    path: path.into(),
                    type_,
                    ..HostDisk::default()
                }),
                ..VmVolume::default()
            }],
            ..VirtualMachineInstanceSpec::default()
        }
    }

    #[test]
    fn a_disk_under_the_root_mounts_its_directory() {
        let root = Path::new("/var/lib/ironvisor");
        let spec = spec_with(
            "/var/lib/ironvisor/disks/data.raw",
            HostDiskType::DiskOrCreate,
        );
        let mounts = host_disks(&spec, Some(root)).unwrap();
        let host_path = mounts.volumes[0].host_path.as_ref().unwrap();
        assert_eq!(host_path.path, "/var/lib/ironvisor/disks");
        assert_eq!(host_path.type_.as_deref(), Some("DirectoryOrCreate"));
        assert_eq!(mounts.mounts[0].name, "hostdisk-data");
        assert_eq!(
            mounts.mounts[0].mount_path,
            "/var/run/ironvisor/host-disks/data"
        );
        let existing = spec_with("/var/lib/ironvisor/a.raw", HostDiskType::Disk);
        let mounts = host_disks(&existing, Some(root)).unwrap();
        let host_path = mounts.volumes[0].host_path.as_ref().unwrap();
        assert_eq!(host_path.type_.as_deref(), Some("Directory"));
    }

    #[test]
    fn paths_outside_the_root_or_not_plain_are_refused_naming_the_volume() {
        let root = Some(Path::new("/var/lib/ironvisor"));
        let outside = host_disks(&spec_with("/etc/shadow", HostDiskType::Disk), root)
            .unwrap_err()
            .to_string();
        assert!(outside.contains("spec.volumes[data]"), "{outside}");
        assert!(outside.contains("outside /var/lib/ironvisor"), "{outside}");
        for bad in [
            "relative.raw",
            "/var/lib/ironvisor/../../etc/shadow",
            "/var/lib/ironvisor/./x.raw",
            "/var/lib/ironvisor//x.raw",
            "/var/lib/ironvisor/disks/",
            "/",
        ] {
            let error = host_disks(&spec_with(bad, HostDiskType::Disk), root).unwrap_err();
            assert!(
                matches!(error, HostDiskError::BadPath { .. }),
                "{bad}: {error}"
            );
        }
        let prefix = host_disks(
            &spec_with("/var/lib/ironvisor-other/x.raw", HostDiskType::Disk),
            root,
        )
        .unwrap_err();
        assert!(
            matches!(prefix, HostDiskError::OutsideRoot { .. }),
            "{prefix}"
        );
    }

    #[test]
    fn without_a_root_host_disks_are_disabled() {
        let error = host_disks(
            &spec_with("/var/lib/ironvisor/x.raw", HostDiskType::Disk),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("--host-disk-root"), "{error}");
    }
}
