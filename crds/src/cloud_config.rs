//! Adding SSH public keys to a cloud-init `#cloud-config` userData, as `accessCredentials`
//! with `propagationMethod.noCloud` asks (KubeVirt does the same to the NoCloud userData).

use serde_norway::{Mapping, Value};

/// The first line cloud-init needs to read userData as cloud-config.
pub const CLOUD_CONFIG_HEADER: &str = "#cloud-config";
/// The cloud-config key of the default user's authorized keys.
pub const SSH_AUTHORIZED_KEYS: &str = "ssh_authorized_keys";

/// Why the keys cannot be added.
#[derive(Debug, thiserror::Error)]
pub enum CloudConfigError {
    /// The userData is another format (a script, a MIME archive, ...).
    #[error("the userData does not start with #cloud-config, so SSH keys cannot be added to it")]
    NotCloudConfig,
    /// The userData is not a YAML mapping.
    #[error("the userData is not a cloud-config YAML mapping: {0}")]
    Yaml(String),
}

/// `user_data` (or an empty cloud-config when `None`) with `keys` appended to its
/// `ssh_authorized_keys` list, which is created when missing.
pub fn with_ssh_keys(user_data: Option<&str>, keys: &[String]) -> Result<String, CloudConfigError> {
    let mut document = match user_data {
        None => Mapping::new(),
        Some(text) => {
            if !text.trim_start().starts_with(CLOUD_CONFIG_HEADER) {
                return Err(CloudConfigError::NotCloudConfig);
            }
            match serde_norway::from_str::<Value>(text) {
                Ok(Value::Mapping(mapping)) => mapping,
                Ok(Value::Null) => Mapping::new(),
                Ok(_) => return Err(CloudConfigError::Yaml("not a mapping".into())),
                Err(error) => return Err(CloudConfigError::Yaml(error.to_string())),
            }
        }
    };
    let entry = document
        .entry(Value::String(SSH_AUTHORIZED_KEYS.into()))
        .or_insert_with(|| Value::Sequence(Vec::new()));
    let Value::Sequence(list) = entry else {
        return Err(CloudConfigError::Yaml(format!(
            "{SSH_AUTHORIZED_KEYS} is not a list"
        )));
    };
    for key in keys {
        let key = Value::String(key.clone());
        if !list.contains(&key) {
            list.push(key);
        }
    }
    let body = serde_norway::to_string(&Value::Mapping(document))
        .map_err(|error| CloudConfigError::Yaml(error.to_string()))?;
    Ok(format!("{CLOUD_CONFIG_HEADER}\n{body}"))
}

/// The public keys in a Secret value: its non-empty lines that are not comments.
pub fn authorized_key_lines(value: &str) -> Vec<String> {
    value
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGq user@host";

    #[test]
    fn keys_join_the_users_own_list_and_the_rest_is_kept() {
        let user_data =
            "#cloud-config\nhostname: web\nssh_authorized_keys:\n  - ssh-rsa AAAA own\n";
        let merged = with_ssh_keys(Some(user_data), &[KEY.to_string()]).unwrap();
        assert!(merged.starts_with("#cloud-config\n"), "{merged}");
        let value: Value = serde_norway::from_str(&merged).unwrap();
        assert_eq!(value["hostname"], Value::String("web".into()));
        let keys = value[SSH_AUTHORIZED_KEYS].as_sequence().unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[1], Value::String(KEY.into()));
    }

    #[test]
    fn without_user_data_the_keys_make_a_cloud_config() {
        let merged = with_ssh_keys(None, &[KEY.to_string(), KEY.to_string()]).unwrap();
        let value: Value = serde_norway::from_str(&merged).unwrap();
        assert_eq!(value[SSH_AUTHORIZED_KEYS].as_sequence().unwrap().len(), 1);
    }

    #[test]
    fn scripts_and_non_mappings_are_refused() {
        assert!(matches!(
            with_ssh_keys(Some("#!/bin/sh\necho hi\n"), &[KEY.into()]),
            Err(CloudConfigError::NotCloudConfig)
        ));
        assert!(matches!(
            with_ssh_keys(Some("#cloud-config\n- a\n"), &[KEY.into()]),
            Err(CloudConfigError::Yaml(_))
        ));
    }

    #[test]
    fn key_lines_skip_blanks_and_comments() {
        assert_eq!(
            authorized_key_lines(&format!("# team keys\n{KEY}\n\n  ssh-rsa B x \n")),
            [KEY.to_string(), "ssh-rsa B x".to_string()]
        );
    }
}
