//! `accessCredentials` in the pod: the Secret of each SSH key credential (noCloud) was
//! mounted at `<access-credentials>/<index>/`; every value of it is one or more
//! `authorized_keys` lines, which join the `ssh_authorized_keys` of the instance's
//! cloudInitNoCloud userData before the seed disk is made.

use std::path::{Path, PathBuf};

use ironvisor_crds::cloud_config::{self, CloudConfigError};
use ironvisor_crds::v1alpha1::VirtualMachineInstanceSpec;

/// Why the keys cannot be given to the guest.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// The mounted Secret cannot be read.
    #[error("accessCredentials[{index}]: cannot read the Secret's files in {path}: {source}")]
    Read {
        /// The credential's index.
        index: usize,
        /// The directory or file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The Secret holds no key.
    #[error("accessCredentials[{index}]: Secret {secret} holds no SSH public key")]
    NoKeys {
        /// The credential's index.
        index: usize,
        /// The Secret.
        secret: String,
    },
    /// There is no cloud-init volume to carry the keys.
    #[error("accessCredentials: noCloud propagation needs a cloudInitNoCloud volume")]
    NoSeed,
    /// The userData cannot take the keys.
    #[error("accessCredentials: the cloudInitNoCloud userData: {0}")]
    UserData(#[from] CloudConfigError),
}

impl AccessError {
    /// A CamelCase reason for the termination message.
    pub fn reason(&self) -> &'static str {
        "AccessCredentialsUnusable"
    }
}

/// Adds the keys of every noCloud SSH credential to `spec`'s cloud-init userData;
/// returns how many keys were added.
pub fn add_ssh_keys(
    spec: &mut VirtualMachineInstanceSpec,
    dir: &Path,
) -> Result<usize, AccessError> {
    let mut keys = Vec::new();
    for (index, credential) in spec.access_credentials.iter().enumerate() {
        let Some(secret) = credential.no_cloud_key_secret() else {
            continue;
        };
        let found = secret_keys(&dir.join(index.to_string()), index)?;
        if found.is_empty() {
            return Err(AccessError::NoKeys {
                index,
                secret: secret.to_string(),
            });
        }
        keys.extend(found);
    }
    if keys.is_empty() {
        return Ok(0);
    }
    let seed = spec
        .volumes
        .iter_mut()
        .find_map(|volume| volume.cloud_init_no_cloud.as_mut())
        .ok_or(AccessError::NoSeed)?;
    seed.user_data = Some(cloud_config::with_ssh_keys(
        seed.user_data.as_deref(),
        &keys,
    )?);
    tracing::info!(
        keys = keys.len(),
        "SSH public keys added to the cloud-init userData"
    );
    Ok(keys.len())
}

/// The key lines of every value of the Secret mounted at `dir` (names starting with a
/// dot are the kubelet's own).
fn secret_keys(dir: &Path, index: usize) -> Result<Vec<String>, AccessError> {
    let read_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| AccessError::Read {
            index,
            path,
            source,
        }
    };
    let names = ironvisor_disks::config_disk::visible_names(dir).map_err(read_error(dir))?;
    let mut keys = Vec::new();
    for name in names {
        let path = dir.join(&name);
        let text = std::fs::read_to_string(&path).map_err(read_error(&path))?;
        keys.extend(cloud_config::authorized_key_lines(&text));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ironvisor_crds::v1alpha1::{
        AccessCredential, AccessCredentialSecret, CloudInitNoCloudSource, EmptyObject,
        SshPropagationMethod, SshPublicKeyAccessCredential, SshPublicKeySource, Volume,
    };

    fn spec() -> VirtualMachineInstanceSpec {
        VirtualMachineInstanceSpec {
            access_credentials: vec![AccessCredential {
                ssh_public_key: Some(SshPublicKeyAccessCredential {
                    source: SshPublicKeySource {
                        secret: Some(AccessCredentialSecret {
                            secret_name: "my-keys".into(),
                        }),
                    },
                    propagation_method: SshPropagationMethod {
                        no_cloud: Some(EmptyObject {}),
                        ..SshPropagationMethod::default()
                    },
                }),
                user_password: None,
            }],
            volumes: vec![Volume {
                name: "cloudinit".into(),
                cloud_init_no_cloud: Some(CloudInitNoCloudSource {
                    user_data: Some("#cloud-config\nhostname: web\n".into()),
                    ..CloudInitNoCloudSource::default()
                }),
                ..Volume::default()
            }],
            ..VirtualMachineInstanceSpec::default()
        }
    }

    #[test]
    fn the_secrets_keys_join_the_user_data() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("0/..data")).unwrap();
        std::fs::write(dir.path().join("0/key1"), "ssh-ed25519 AAAA one\n").unwrap();
        std::fs::write(dir.path().join("0/..data/ignored"), "not a key\n").unwrap();
        let mut spec = spec();
        assert_eq!(add_ssh_keys(&mut spec, dir.path()).unwrap(), 1);
        let user_data = spec.volumes[0]
            .cloud_init_no_cloud
            .as_ref()
            .and_then(|seed| seed.user_data.clone())
            .unwrap();
        assert!(user_data.contains("ssh-ed25519 AAAA one"), "{user_data}");
        assert!(user_data.contains("hostname: web"), "{user_data}");
    }

    #[test]
    fn an_empty_or_missing_secret_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let error = add_ssh_keys(&mut spec(), dir.path()).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("accessCredentials[0]: cannot read"),
            "{error}"
        );
        std::fs::create_dir_all(dir.path().join("0")).unwrap();
        let error = add_ssh_keys(&mut spec(), dir.path()).unwrap_err();
        assert_eq!(
            error.to_string(),
            "accessCredentials[0]: Secret my-keys holds no SSH public key"
        );
    }
}
