//! `configMap`, `secret`, `serviceAccount` and `downwardAPI` volumes: the object they name
//! is a valid name, the disk's FAT volume label fits FAT, and each downwardAPI file has a
//! relative path and one field.

use super::{formats, FieldPath, ValidationError};
use crate::v1alpha1::Volume;

/// Characters a FAT volume label may not hold (besides control characters and space).
const FAT_LABEL_FORBIDDEN: &str = "\"*+,./:;<=>?[\\]|";

/// Checks the cluster-object volume sources of `volume` (at `path`).
pub(super) fn check(volume: &Volume, path: &FieldPath, errors: &mut Vec<ValidationError>) {
    if let Some(source) = &volume.config_map {
        let at = path.child("configMap");
        object_name(&source.name, &at.child("name"), errors);
        label(source.volume_label.as_deref(), &at, errors);
    }
    if let Some(source) = &volume.secret {
        let at = path.child("secret");
        object_name(&source.secret_name, &at.child("secretName"), errors);
        label(source.volume_label.as_deref(), &at, errors);
    }
    if let Some(source) = &volume.service_account {
        object_name(
            &source.service_account_name,
            &path.child("serviceAccount.serviceAccountName"),
            errors,
        );
    }
    if let Some(source) = &volume.downward_api {
        let at = path.child("downwardAPI");
        label(source.volume_label.as_deref(), &at, errors);
        if source.fields.is_empty() {
            errors.push(ValidationError::Required {
                path: at.child("fields").into(),
            });
        }
        for (index, file) in source.fields.iter().enumerate() {
            let file_path = at.child("fields").index(index);
            if !relative_path(&file.path) {
                errors.push(ValidationError::InvalidRelativePath {
                    path: file_path.child("path").into(),
                    value: file.path.clone(),
                });
            }
            if file.field_ref.is_some() == file.resource_field_ref.is_some() {
                errors.push(ValidationError::DownwardApiFieldChoice {
                    path: file_path.into(),
                });
            }
        }
    }
}

fn object_name(name: &str, path: &FieldPath, errors: &mut Vec<ValidationError>) {
    if name.is_empty() {
        errors.push(ValidationError::Required {
            path: path.clone().into(),
        });
    } else if let Err(reason) = formats::dns_subdomain(name) {
        errors.push(ValidationError::InvalidName {
            path: path.clone().into(),
            value: name.to_string(),
            reason,
        });
    }
}

fn label(value: Option<&str>, source: &FieldPath, errors: &mut Vec<ValidationError>) {
    let Some(value) = value else {
        return;
    };
    let fits = !value.is_empty()
        && value.len() <= 11
        && value
            .chars()
            .all(|c| c.is_ascii_graphic() && !FAT_LABEL_FORBIDDEN.contains(c));
    if !fits {
        errors.push(ValidationError::InvalidVolumeLabel {
            path: source.child("volumeLabel").into(),
            value: value.to_string(),
        });
    }
}

/// A path inside the disk: relative, not empty, no `..` component.
fn relative_path(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && path.split('/').all(|part| part != ".." && !part.is_empty())
}
