//! The launcher pod's side of `configMap`, `secret`, `serviceAccount` and `downwardAPI`
//! volumes: the kubelet writes the object's files into a pod volume mounted read-only at
//! `<CONFIG_VOLUMES_DIR>/<volume>/`, and `virt-launcher` turns that directory into a FAT
//! disk for the guest (KubeVirt's arrangement, with FAT where KubeVirt makes an ISO).
//!
//! The Secret of each `accessCredentials` SSH key (noCloud) is mounted the same way, at
//! `<ACCESS_CREDENTIALS_DIR>/<index>/`; `virt-launcher` adds its keys to the cloud-init
//! userData.
//!
//! A `serviceAccount` volume makes the pod run as that service account and projects its
//! token (one hour, renewed by the kubelet while the pod runs; the disk has the token of
//! the moment the VM started), the cluster's CA bundle and the namespace, as a pod's
//! automounted token would be.

use ironvisor_crds::v1alpha1::VirtualMachineInstanceSpec;
use k8s_openapi::api::core::v1::{
    ConfigMapProjection, ConfigMapVolumeSource, DownwardAPIProjection, DownwardAPIVolumeFile,
    DownwardAPIVolumeSource, KeyToPath, ObjectFieldSelector, ProjectedVolumeSource,
    SecretVolumeSource, ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};

/// Where the volumes are mounted in the compute container, one directory per volume.
pub const CONFIG_VOLUMES_DIR: &str = "/var/run/ironvisor/config-volumes";
/// Where the Secret of `accessCredentials[i]` is mounted: `<dir>/<i>/`.
pub const ACCESS_CREDENTIALS_DIR: &str = "/var/run/ironvisor/access-credentials";
/// Lifetime asked for the projected service-account token.
const TOKEN_EXPIRATION_SECONDS: i64 = 3600;

/// The pod volumes, the compute container's mounts, and the service account the pod runs
/// as (the last `serviceAccount` volume's), for `spec`'s cluster-object volumes.
#[derive(Debug, Default, PartialEq)]
pub struct ConfigVolumes {
    /// Pod volumes, named `config-<index>` after the VM volume's position.
    pub volumes: Vec<Volume>,
    /// Read-only mounts at `<CONFIG_VOLUMES_DIR>/<volume>`.
    pub mounts: Vec<VolumeMount>,
    /// `serviceAccountName` of the pod.
    pub service_account: Option<String>,
}

/// Maps every cluster-object volume of `spec`.
pub fn config_volumes(spec: &VirtualMachineInstanceSpec) -> ConfigVolumes {
    let mut out = ConfigVolumes::default();
    for (index, volume) in spec.volumes.iter().enumerate() {
        let pod_volume = |name: String| Volume {
            name,
            ..Volume::default()
        };
        let mut pod = pod_volume(format!("config-{index}"));
        if let Some(source) = &volume.config_map {
            pod.config_map = Some(ConfigMapVolumeSource {
                name: source.name.clone(),
                optional: source.optional,
                ..ConfigMapVolumeSource::default()
            });
        } else if let Some(source) = &volume.secret {
            pod.secret = Some(SecretVolumeSource {
                secret_name: Some(source.secret_name.clone()),
                optional: source.optional,
                ..SecretVolumeSource::default()
            });
        } else if let Some(source) = &volume.downward_api {
            pod.downward_api = Some(DownwardAPIVolumeSource {
                items: Some(source.fields.clone()),
                ..DownwardAPIVolumeSource::default()
            });
        } else if let Some(source) = &volume.service_account {
            pod.projected = Some(service_account_projection());
            out.service_account = Some(source.service_account_name.clone());
        } else {
            continue;
        }
        out.mounts.push(VolumeMount {
            name: pod.name.clone(),
            mount_path: format!("{CONFIG_VOLUMES_DIR}/{}", volume.name),
            read_only: Some(true),
            ..VolumeMount::default()
        });
        out.volumes.push(pod);
    }
    for (index, credential) in spec.access_credentials.iter().enumerate() {
        let Some(secret) = credential.no_cloud_key_secret() else {
            continue;
        };
        let name = format!("access-{index}");
        out.mounts.push(VolumeMount {
            name: name.clone(),
            mount_path: format!("{ACCESS_CREDENTIALS_DIR}/{index}"),
            read_only: Some(true),
            ..VolumeMount::default()
        });
        out.volumes.push(Volume {
            name,
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.to_string()),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
    }
    out
}

/// `token`, `ca.crt` and `namespace`, as the kubelet mounts them for a pod's own account.
fn service_account_projection() -> ProjectedVolumeSource {
    ProjectedVolumeSource {
        sources: Some(vec![
            VolumeProjection {
                service_account_token: Some(ServiceAccountTokenProjection {
                    path: "token".into(),
                    expiration_seconds: Some(TOKEN_EXPIRATION_SECONDS),
                    audience: None,
                }),
                ..VolumeProjection::default()
            },
            VolumeProjection {
                config_map: Some(ConfigMapProjection {
                    name: "kube-root-ca.crt".into(),
                    items: Some(vec![KeyToPath {
                        key: "ca.crt".into(),
                        path: "ca.crt".into(),
                        mode: None,
                    }]),
                    optional: None,
                }),
                ..VolumeProjection::default()
            },
            VolumeProjection {
                downward_api: Some(DownwardAPIProjection {
                    items: Some(vec![DownwardAPIVolumeFile {
                        path: "namespace".into(),
                        field_ref: Some(ObjectFieldSelector {
                            api_version: Some("v1".into()),
                            field_path: "metadata.namespace".into(),
                        }),
                        ..DownwardAPIVolumeFile::default()
                    }]),
                }),
                ..VolumeProjection::default()
            },
        ]),
        ..ProjectedVolumeSource::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ironvisor_crds::v1alpha1::{
        ConfigMapVolumeSource as VmConfigMap, ServiceAccountVolumeSource, Volume as VmVolume,
    };

    #[test]
    fn config_maps_and_service_accounts_become_read_only_mounts_by_volume_name() {
        let spec = VirtualMachineInstanceSpec {
            volumes: vec![
                VmVolume {
                    name: "root".into(),
                    ..VmVolume::default()
                },
                VmVolume {
                    name: "app-config".into(),
                    config_map: Some(VmConfigMap {
                        name: "web-config".into(),
                        ..VmConfigMap::default()
                    }),
                    ..VmVolume::default()
                },
                VmVolume {
                    name: "sa".into(),
                    service_account: Some(ServiceAccountVolumeSource {
                        service_account_name: "builder".into(),
                    }),
                    ..VmVolume::default()
                },
            ],
            ..VirtualMachineInstanceSpec::default()
        };
        let mapped = config_volumes(&spec);
        let names: Vec<&str> = mapped.volumes.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["config-1", "config-2"]);
        assert_eq!(
            mapped.volumes[0]
                .config_map
                .as_ref()
                .map(|c| c.name.as_str()),
            Some("web-config")
        );
        let paths: Vec<&str> = mapped
            .mounts
            .iter()
            .map(|m| m.mount_path.as_str())
            .collect();
        assert_eq!(
            paths,
            [
                "/var/run/ironvisor/config-volumes/app-config",
                "/var/run/ironvisor/config-volumes/sa"
            ]
        );
        assert!(mapped.mounts.iter().all(|m| m.read_only == Some(true)));
        assert_eq!(mapped.service_account.as_deref(), Some("builder"));
        let projected = mapped.volumes[1].projected.as_ref().unwrap();
        assert_eq!(projected.sources.as_ref().map(Vec::len), Some(3));
    }
}
