//! The system identity a guest sees in its firmware tables (SMBIOS system information:
//! `dmidecode -t 1`, `/sys/class/dmi/id/product_uuid` and `product_serial`), from a
//! KubeVirt VM's `spec.domain.firmware.uuid` and `firmware.serial`.

use ironvisor_arch::smbios::{self, SmbiosError};
use serde::{Deserialize, Serialize};

use super::Issues;

/// What every guest's SMBIOS system information names, whatever the backend: the
/// manufacturer, the product name and the version (the launcher's).
pub use ironvisor_arch::smbios::{SYSTEM_MANUFACTURER, SYSTEM_PRODUCT_NAME, SYSTEM_VERSION};

/// Longest system serial number, in bytes.
pub const MAX_SYSTEM_SERIAL_BYTES: usize = smbios::MAX_SERIAL_BYTES;

/// System UUID and serial number. Both optional; without them the guest still sees the
/// Ironvisor manufacturer and product name, no serial number and no UUID (the KVM
/// launcher writes the all-zero UUID, which SMBIOS reserves for "no UUID"; under QEMU,
/// libvirt gives the domain a random UUID instead).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct SystemIdentity {
    /// System UUID in its RFC 4122 text form, `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`
    /// (hex digits, either case); not the nil or all-`f` UUID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// System serial number: printable ASCII, at most [`MAX_SYSTEM_SERIAL_BYTES`] bytes.
    /// Empty is the same as none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
}

impl SystemIdentity {
    /// Whether neither a UUID nor a serial number is set (then `system` is left out of
    /// the JSON form).
    pub fn is_empty(&self) -> bool {
        self.uuid.is_none() && self.serial.is_none()
    }

    /// The UUID's 16 bytes in RFC 4122 (text) order, if one is set. Fails only for a UUID
    /// that validation refuses.
    pub fn uuid_bytes(&self) -> Result<Option<[u8; 16]>, SmbiosError> {
        self.uuid.as_deref().map(smbios::parse_uuid).transpose()
    }

    /// Records a problem with the UUID or the serial number, under `system.uuid` or
    /// `system.serial`.
    pub(super) fn check(&self, issues: &mut Issues) {
        if let Some(uuid) = &self.uuid {
            if let Err(err) = smbios::parse_uuid(uuid) {
                // The error names the value and the problem.
                issues.push("system.uuid", err.to_string());
            }
        }
        if let Some(serial) = &self.serial {
            if let Err(err) = smbios::check_serial(serial) {
                let message = match err {
                    SmbiosError::Serial { reason, .. } => format!("{serial:?} {reason}"),
                    other => other.to_string(),
                };
                issues.push("system.serial", message);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConfigError, ConfigIssue};

    fn issues_of(identity: &SystemIdentity) -> Vec<ConfigIssue> {
        Issues::found_by(|issues| identity.check(issues))
    }

    fn identity(uuid: Option<&str>, serial: Option<&str>) -> SystemIdentity {
        SystemIdentity {
            uuid: uuid.map(str::to_string),
            serial: serial.map(str::to_string),
        }
    }

    #[test]
    fn a_valid_identity_has_no_issues() {
        let valid = identity(
            Some("6a1c7d1e-8b3f-4c5a-9e2d-0123456789AB"),
            Some("SN 42/7"),
        );
        assert!(issues_of(&valid).is_empty());
        assert_eq!(
            valid.uuid_bytes().unwrap().unwrap()[..4],
            [0x6a, 0x1c, 0x7d, 0x1e]
        );
        assert!(issues_of(&SystemIdentity::default()).is_empty());
        assert!(SystemIdentity::default().is_empty());
        assert!(!valid.is_empty());
        assert_eq!(SystemIdentity::default().uuid_bytes().unwrap(), None);
    }

    #[test]
    fn a_bad_uuid_is_an_issue_naming_the_field_and_the_value() {
        let found = issues_of(&identity(Some("6a1c7d1e-8b3f-4c5a-9e2d"), None));
        assert_eq!(found.len(), 1, "{found:#?}");
        assert_eq!(found[0].field, "system.uuid");
        assert!(
            found[0]
                .message
                .contains("\"6a1c7d1e-8b3f-4c5a-9e2d\" is not a UUID"),
            "{}",
            found[0].message
        );
        assert!(found[0].message.contains("23 bytes long"), "{}", found[0]);
        let dashes = issues_of(&identity(
            Some("6a1c7d1e:8b3f-4c5a-9e2d-0123456789ab"),
            None,
        ));
        assert!(dashes[0].message.contains("expected '-'"), "{}", dashes[0]);
    }

    #[test]
    fn a_serial_with_a_non_printable_character_is_refused() {
        let found = issues_of(&identity(None, Some("SN\t42")));
        assert_eq!(found.len(), 1, "{found:#?}");
        assert_eq!(found[0].field, "system.serial");
        assert!(found[0].message.contains("\"SN\\t42\""), "{}", found[0]);
        assert!(found[0].message.contains("printable ASCII"), "{}", found[0]);
        let long = "x".repeat(MAX_SYSTEM_SERIAL_BYTES + 1);
        let found = issues_of(&identity(None, Some(&long)));
        assert_eq!(found[0].field, "system.serial");
        assert!(found[0].message.contains("at most 64"), "{}", found[0]);
    }

    #[test]
    fn json_carries_the_identity_and_leaves_an_empty_one_out() {
        use crate::config::LaunchConfig;
        use std::path::Path;
        let text = r#"{"name": "vm", "kernel": {"path": "/k"},
            "system": {"uuid": "6a1c7d1e-8b3f-4c5a-9e2d-0123456789ab", "serial": "SN-1"}}"#;
        let config = LaunchConfig::from_json_str(text, Path::new("vm.json")).unwrap();
        assert_eq!(
            config.system,
            identity(Some("6a1c7d1e-8b3f-4c5a-9e2d-0123456789ab"), Some("SN-1"))
        );
        let json: serde_json::Value = serde_json::from_str(&config.to_json().unwrap()).unwrap();
        assert_eq!(
            json["system"]["uuid"],
            "6a1c7d1e-8b3f-4c5a-9e2d-0123456789ab"
        );
        assert_eq!(json["system"]["serial"], "SN-1");

        let serial_only = r#"{"name": "vm", "kernel": {"path": "/k"}, "system": {"serial": "S"}}"#;
        let config = LaunchConfig::from_json_str(serial_only, Path::new("vm.json")).unwrap();
        let json: serde_json::Value = serde_json::from_str(&config.to_json().unwrap()).unwrap();
        assert_eq!(json["system"], serde_json::json!({"serial": "S"}));

        let minimal = r#"{"name": "vm", "kernel": {"path": "/k"}}"#;
        let config = LaunchConfig::from_json_str(minimal, Path::new("vm.json")).unwrap();
        assert!(config.system.is_empty());
        let json: serde_json::Value = serde_json::from_str(&config.to_json().unwrap()).unwrap();
        assert!(json.get("system").is_none(), "{json}");

        let unknown = r#"{"name": "vm", "kernel": {"path": "/k"}, "system": {"sku": "x"}}"#;
        let err = LaunchConfig::from_json_str(unknown, Path::new("vm.json")).unwrap_err();
        assert!(err.to_string().contains("unknown field `sku`"), "{err}");
    }

    #[test]
    fn launch_config_validation_reports_the_identity() {
        use crate::config::{HostLimits, LaunchConfig};
        use std::path::Path;
        let text = r#"{"name": "vm", "kernel": {"path": "/nonexistent/vmlinux"},
            "system": {"uuid": "not-a-uuid", "serial": "bell\u0007"}}"#;
        let config = LaunchConfig::from_json_str(text, Path::new("vm.json")).unwrap();
        let limits = HostLimits {
            available_memory_bytes: 1 << 30,
            max_vcpus: 1,
        };
        let Err(ConfigError::Invalid(found)) = config.validate(&limits) else {
            panic!("validation passed");
        };
        let system: Vec<String> = found
            .iter()
            .filter(|issue| issue.field.starts_with("system."))
            .map(ToString::to_string)
            .collect();
        assert_eq!(system.len(), 2, "{found:#?}");
        assert!(
            system[0].starts_with("system.uuid: \"not-a-uuid\""),
            "{}",
            system[0]
        );
        assert!(
            system[1].starts_with("system.serial: \"bell\\u{7}\""),
            "{}",
            system[1]
        );
    }

    #[test]
    fn both_problems_are_reported_at_once() {
        let found = issues_of(&identity(Some("nope"), Some("é")));
        let fields: Vec<&str> = found.iter().map(|i| i.field.as_str()).collect();
        assert_eq!(fields, ["system.uuid", "system.serial"]);
    }
}
