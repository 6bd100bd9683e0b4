//! `persistentVolumeClaim` volumes in the launcher pod. The controller reads each claim
//! for its `volumeMode` and size: a Filesystem claim is mounted into the compute container
//! (the disk is its `disk.img`), a Block claim becomes a raw device there
//! (`volumeDevices`). Both are told to `virt-launcher` with one `--claim` argument each
//! ([`ironvisor_crds::pod_claims`]).
//!
//! A claim that does not exist (yet) keeps the instance Pending with a condition naming
//! it; the controller looks again until it appears (KubeVirt does the same).

use ironvisor_crds::pod_claims::{ClaimMode, PodClaim, CLAIM_DEVICES_DIR, CLAIM_MOUNTS_DIR};
use ironvisor_crds::quantity;
use ironvisor_crds::v1alpha1::VirtualMachineInstanceSpec;
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Volume, VolumeDevice, VolumeMount,
};
use kube::api::Api;

/// Why a claim cannot be given to the pod (yet).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    /// No such claim in the instance's namespace.
    #[error("spec.volumes[{volume}]: PersistentVolumeClaim {claim:?} not found in namespace {namespace}")]
    NotFound {
        /// The volume.
        volume: String,
        /// The claim name.
        claim: String,
        /// The instance's namespace.
        namespace: String,
    },
    /// The claim is being deleted.
    #[error("spec.volumes[{volume}]: PersistentVolumeClaim {claim:?} is being deleted")]
    Deleting {
        /// The volume.
        volume: String,
        /// The claim name.
        claim: String,
    },
    /// The claim lost its volume.
    #[error("spec.volumes[{volume}]: PersistentVolumeClaim {claim:?} is Lost (its PersistentVolume is gone)")]
    Lost {
        /// The volume.
        volume: String,
        /// The claim name.
        claim: String,
    },
    /// The claim has no usable size.
    #[error(
        "spec.volumes[{volume}]: PersistentVolumeClaim {claim:?} has no usable size: {problem}"
    )]
    Size {
        /// The volume.
        volume: String,
        /// The claim name.
        claim: String,
        /// What is wrong.
        problem: String,
    },
    /// A volumeMode Kubernetes does not have.
    #[error("spec.volumes[{volume}]: PersistentVolumeClaim {claim:?} has volumeMode {mode:?}; Filesystem or Block expected")]
    Mode {
        /// The volume.
        volume: String,
        /// The claim name.
        claim: String,
        /// The mode found.
        mode: String,
    },
}

impl ClaimError {
    /// CamelCase reason for the instance's condition and events.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotFound { .. } => "PersistentVolumeClaimNotFound",
            Self::Deleting { .. } => "PersistentVolumeClaimDeleting",
            Self::Lost { .. } => "PersistentVolumeClaimLost",
            Self::Size { .. } | Self::Mode { .. } => "PersistentVolumeClaimUnusable",
        }
    }
}

/// The claim of `volume` as the pod gets it. The size is the bound capacity, or the
/// request while the claim waits for its first consumer (the pod) to be bound.
pub fn pod_claim(volume: &str, pvc: &PersistentVolumeClaim) -> Result<PodClaim, ClaimError> {
    let claim = pvc.metadata.name.clone().unwrap_or_default();
    if pvc.metadata.deletion_timestamp.is_some() {
        return Err(ClaimError::Deleting {
            volume: volume.into(),
            claim,
        });
    }
    let status = pvc.status.as_ref();
    if status.and_then(|s| s.phase.as_deref()) == Some("Lost") {
        return Err(ClaimError::Lost {
            volume: volume.into(),
            claim,
        });
    }
    let spec = pvc.spec.as_ref();
    let mode = match spec
        .and_then(|s| s.volume_mode.as_deref())
        .unwrap_or("Filesystem")
    {
        "Block" => ClaimMode::Block,
        "Filesystem" => {
            let size = status
                .and_then(|s| s.capacity.as_ref())
                .and_then(|c| c.get("storage"))
                .or_else(|| {
                    spec.and_then(|s| s.resources.as_ref())
                        .and_then(|r| r.requests.as_ref())
                        .and_then(|r| r.get("storage"))
                });
            let size_error = |problem: String| ClaimError::Size {
                volume: volume.into(),
                claim: claim.clone(),
                problem,
            };
            let size = size.ok_or_else(|| size_error("no storage capacity or request".into()))?;
            let capacity_bytes = quantity::to_bytes(size)
                .map_err(|e| size_error(format!("storage {:?}: {e}", size.0)))?;
            if capacity_bytes == 0 {
                return Err(size_error("storage is 0".into()));
            }
            ClaimMode::Filesystem { capacity_bytes }
        }
        other => {
            return Err(ClaimError::Mode {
                volume: volume.into(),
                claim,
                mode: other.into(),
            })
        }
    };
    Ok(PodClaim {
        volume: volume.into(),
        mode,
    })
}

/// Reads the claim of every persistentVolumeClaim volume of `spec`. The outer error is the
/// API's; the inner one a claim that cannot be used yet.
pub async fn read_claims(
    claims: &Api<PersistentVolumeClaim>,
    namespace: &str,
    spec: &VirtualMachineInstanceSpec,
) -> Result<Result<Vec<PodClaim>, ClaimError>, kube::Error> {
    let mut out = Vec::new();
    for volume in &spec.volumes {
        let Some(source) = &volume.persistent_volume_claim else {
            continue;
        };
        let Some(pvc) = claims.get_opt(&source.claim_name).await? else {
            return Ok(Err(ClaimError::NotFound {
                volume: volume.name.clone(),
                claim: source.claim_name.clone(),
                namespace: namespace.into(),
            }));
        };
        match pod_claim(&volume.name, &pvc) {
            Ok(claim) => out.push(claim),
            Err(error) => return Ok(Err(error)),
        }
    }
    Ok(Ok(out))
}

/// The pod volumes, the compute container's mounts and devices, and `virt-launcher`'s
/// arguments of the instance's claims.
#[derive(Debug, Default)]
pub struct ClaimMounts {
    /// One persistentVolumeClaim volume per claim.
    pub volumes: Vec<Volume>,
    /// Filesystem claims in the compute container.
    pub mounts: Vec<VolumeMount>,
    /// Block claims in the compute container.
    pub devices: Vec<VolumeDevice>,
    /// `--claim` arguments.
    pub args: Vec<String>,
}

/// Pod volume name of a claim volume.
fn pod_volume_name(volume: &str) -> String {
    format!("claim-{volume}")
}

/// Pod pieces of the claims of `spec`; `claims` are those [`read_claims`] found. A claim
/// volume without an entry there is left out (the caller checks completeness).
pub fn claim_mounts(spec: &VirtualMachineInstanceSpec, claims: &[PodClaim]) -> ClaimMounts {
    let mut out = ClaimMounts::default();
    for volume in &spec.volumes {
        let Some(source) = &volume.persistent_volume_claim else {
            continue;
        };
        let Some(claim) = claims.iter().find(|c| c.volume == volume.name) else {
            continue;
        };
        let read_only = source.read_only.unwrap_or(false);
        let name = pod_volume_name(&volume.name);
        out.volumes.push(Volume {
            name: name.clone(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: source.claim_name.clone(),
                read_only: read_only.then_some(true),
            }),
            ..Volume::default()
        });
        match claim.mode {
            ClaimMode::Filesystem { .. } => out.mounts.push(VolumeMount {
                name,
                mount_path: format!("{CLAIM_MOUNTS_DIR}/{}", volume.name),
                read_only: read_only.then_some(true),
                ..VolumeMount::default()
            }),
            ClaimMode::Block => out.devices.push(VolumeDevice {
                name,
                device_path: format!("{CLAIM_DEVICES_DIR}/{}", volume.name),
            }),
        }
        out.args.push("--claim".into());
        out.args.push(claim.to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ironvisor_crds::v1alpha1::{PersistentVolumeClaimSource, Volume as VmVolume};
    use k8s_openapi::api::core::v1::{
        PersistentVolumeClaimSpec, PersistentVolumeClaimStatus, VolumeResourceRequirements,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use std::collections::BTreeMap;

    fn pvc(
        mode: Option<&str>,
        request: Option<&str>,
        capacity: Option<&str>,
    ) -> PersistentVolumeClaim {
        let mut pvc = PersistentVolumeClaim::default();
        pvc.metadata.name = Some("data-claim".into());
        pvc.spec = Some(PersistentVolumeClaimSpec {
            volume_mode: mode.map(String::from),
            resources: request.map(|r| VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".into(), Quantity(r.into()))])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        });
        pvc.status = capacity.map(|c| PersistentVolumeClaimStatus {
            phase: Some("Bound".into()),
            capacity: Some(BTreeMap::from([("storage".into(), Quantity(c.into()))])),
            ..PersistentVolumeClaimStatus::default()
        });
        pvc
    }

    #[test]
    fn filesystem_claims_take_the_bound_capacity_or_else_the_request() {
        let unbound = pod_claim("data", &pvc(None, Some("1Gi"), None)).unwrap();
        assert_eq!(
            unbound.mode,
            ClaimMode::Filesystem {
                capacity_bytes: 1 << 30
            }
        );
        let bound = pod_claim("data", &pvc(Some("Filesystem"), Some("1Gi"), Some("2Gi"))).unwrap();
        assert_eq!(
            bound.mode,
            ClaimMode::Filesystem {
                capacity_bytes: 2 << 30
            }
        );
        let block = pod_claim("raw", &pvc(Some("Block"), Some("1Gi"), None)).unwrap();
        assert_eq!(block.mode, ClaimMode::Block);
    }

    #[test]
    fn unusable_claims_are_named_with_a_reason() {
        let error = pod_claim("data", &pvc(None, None, None)).unwrap_err();
        assert_eq!(error.reason(), "PersistentVolumeClaimUnusable");
        assert!(error.to_string().contains("spec.volumes[data]"), "{error}");
        let error = pod_claim("data", &pvc(Some("Tape"), Some("1Gi"), None)).unwrap_err();
        assert!(error.to_string().contains("\"Tape\""), "{error}");
        let mut lost = pvc(None, Some("1Gi"), Some("1Gi"));
        lost.status.as_mut().unwrap().phase = Some("Lost".into());
        assert_eq!(
            pod_claim("data", &lost).unwrap_err().reason(),
            "PersistentVolumeClaimLost"
        );
        let mut deleting = pvc(None, Some("1Gi"), None);
        deleting.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        assert_eq!(
            pod_claim("data", &deleting).unwrap_err().reason(),
            "PersistentVolumeClaimDeleting"
        );
    }

    #[test]
    fn filesystem_claims_are_mounted_and_block_claims_are_devices() {
        let mut spec = VirtualMachineInstanceSpec::default();
        for (name, claim, read_only) in [
            ("data", "data-claim", None),
            ("raw", "raw-claim", Some(true)),
        ] {
            spec.volumes.push(VmVolume {
                name: name.into(),
                persistent_volume_claim: Some(PersistentVolumeClaimSource {
                    claim_name: claim.into(),
                    read_only,
                }),
                ..VmVolume::default()
            });
        }
        let claims = [
            PodClaim {
                volume: "data".into(),
                mode: ClaimMode::Filesystem { capacity_bytes: 7 },
            },
            PodClaim {
                volume: "raw".into(),
                mode: ClaimMode::Block,
            },
        ];
        let out = claim_mounts(&spec, &claims);
        let names: Vec<_> = out.volumes.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["claim-data", "claim-raw"]);
        let raw = out.volumes[1].persistent_volume_claim.as_ref().unwrap();
        assert_eq!(raw.claim_name, "raw-claim");
        assert_eq!(raw.read_only, Some(true));
        assert_eq!(out.mounts.len(), 1);
        assert_eq!(out.mounts[0].mount_path, "/var/run/ironvisor/claims/data");
        assert_eq!(out.devices.len(), 1);
        assert_eq!(
            out.devices[0].device_path,
            "/var/run/ironvisor/claim-devices/raw"
        );
        assert_eq!(
            out.args,
            ["--claim", "data=filesystem:7", "--claim", "raw=block"]
        );
    }
}
