//! `accessCredentials`: SSH public keys from a Secret propagated by `noCloud`, which needs
//! a cloudInitNoCloud volume whose userData is cloud-config (or absent); passwords and the
//! other propagation methods need KubeVirt's guest agent or a config drive and are refused.

use super::{formats, FieldPath, ValidationError};
use crate::v1alpha1::VirtualMachineInstanceSpec;

/// Checks `spec.accessCredentials` (under `root`).
pub(super) fn check(
    spec: &VirtualMachineInstanceSpec,
    root: &FieldPath,
    errors: &mut Vec<ValidationError>,
) {
    for (index, credential) in spec.access_credentials.iter().enumerate() {
        let at = root.child("accessCredentials").index(index);
        if credential.user_password.is_some() {
            errors.push(ValidationError::AccessCredentialNotServed {
                path: at.child("userPassword").into(),
                reason: "passwords are set by KubeVirt's guest agent, which Ironvisor guests do \
                         not run; give a password or key in the cloudInitNoCloud userData",
            });
        }
        let Some(key) = &credential.ssh_public_key else {
            if credential.user_password.is_none() {
                errors.push(ValidationError::Required {
                    path: at.child("sshPublicKey").into(),
                });
            }
            continue;
        };
        let key_at = at.child("sshPublicKey");
        match &key.source.secret {
            None => errors.push(ValidationError::Required {
                path: key_at.child("source.secret").into(),
            }),
            Some(secret) => {
                if let Err(reason) = formats::dns_subdomain(&secret.secret_name) {
                    errors.push(ValidationError::InvalidName {
                        path: key_at.child("source.secret.secretName").into(),
                        value: secret.secret_name.clone(),
                        reason,
                    });
                }
            }
        }
        let method = &key.propagation_method;
        let method_at = key_at.child("propagationMethod");
        if method.config_drive.is_some() {
            errors.push(ValidationError::AccessCredentialNotServed {
                path: method_at.child("configDrive").into(),
                reason: "Ironvisor's cloud-init seeds are NoCloud; use noCloud: {}",
            });
        }
        if method.qemu_guest_agent.is_some() {
            errors.push(ValidationError::AccessCredentialNotServed {
                path: method_at.child("qemuGuestAgent").into(),
                reason: "Ironvisor guests do not run KubeVirt's guest agent; use noCloud: {}",
            });
        }
        match (
            &method.no_cloud,
            &method.config_drive,
            &method.qemu_guest_agent,
        ) {
            (Some(_), _, _) => no_cloud_target(spec, &method_at.child("noCloud"), errors),
            (None, None, None) => errors.push(ValidationError::Required {
                path: method_at.child("noCloud").into(),
            }),
            _ => {}
        }
    }
}

/// The cloud-init volume the keys are added to exists and takes them.
fn no_cloud_target(
    spec: &VirtualMachineInstanceSpec,
    path: &FieldPath,
    errors: &mut Vec<ValidationError>,
) {
    let seed = spec
        .volumes
        .iter()
        .find_map(|volume| volume.cloud_init_no_cloud.as_ref());
    let found = match seed {
        None => Some("it has no cloudInitNoCloud volume"),
        Some(seed) if seed.user_data_base64.is_some() => {
            Some("its userData is given as userDataBase64")
        }
        Some(seed) => match seed.user_data.as_deref() {
            Some(text) if !text.trim_start().starts_with("#cloud-config") => {
                Some("its userData is not #cloud-config")
            }
            _ => None,
        },
    };
    if let Some(found) = found {
        errors.push(ValidationError::AccessCredentialNeedsCloudConfig {
            path: path.clone().into(),
            found,
        });
    }
}
