//! The guest's entropy device (KubeVirt's `spec.domain.devices.rng: {}`): a virtio-rng
//! device fed from the host kernel's CSPRNG, rate-limited to `bytes_per_second` with a
//! burst of one second's worth. Under the KVM launcher it is a virtio-mmio device; under
//! the QEMU backend a libvirt `<rng model='virtio'>` with the same rate.

use serde::{Deserialize, Serialize};

use super::Issues;

/// Default entropy rate: 1 MiB/s, far more than a guest's CSPRNG needs to (re)seed, yet
/// small enough that one guest cannot keep a host core busy copying random bytes.
pub const DEFAULT_RNG_BYTES_PER_SECOND: u64 = 1024 * 1024;
/// Highest entropy rate one VM may ask for: 64 MiB/s.
pub const MAX_RNG_BYTES_PER_SECOND: u64 = 64 * 1024 * 1024;

/// A virtio-rng device. `{}` in JSON gives the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct RngConfig {
    /// Most bytes of entropy the guest receives per second (1 to
    /// [`MAX_RNG_BYTES_PER_SECOND`]); up to one second's worth may be taken at once.
    /// Default [`DEFAULT_RNG_BYTES_PER_SECOND`].
    #[serde(default = "default_bytes_per_second")]
    pub bytes_per_second: u64,
}

impl Default for RngConfig {
    fn default() -> Self {
        Self {
            bytes_per_second: DEFAULT_RNG_BYTES_PER_SECOND,
        }
    }
}

fn default_bytes_per_second() -> u64 {
    DEFAULT_RNG_BYTES_PER_SECOND
}

impl RngConfig {
    /// A device of `bytes_per_second` (not validated here; see [`super::LaunchConfig::validate`]).
    pub fn with_rate(bytes_per_second: u64) -> Self {
        Self { bytes_per_second }
    }

    /// Records a problem with the rate under `rng.bytes_per_second`.
    pub(super) fn check(&self, issues: &mut Issues) {
        const FIELD: &str = "rng.bytes_per_second";
        if self.bytes_per_second == 0 {
            issues.push(
                FIELD,
                "must be at least 1 (a rate of 0 would never answer the guest)",
            );
        } else if self.bytes_per_second > MAX_RNG_BYTES_PER_SECOND {
            issues.push(
                FIELD,
                format!(
                    "is {}; at most {MAX_RNG_BYTES_PER_SECOND} bytes per second (64 MiB/s) \
                     are allowed",
                    self.bytes_per_second
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{ConfigError, ConfigIssue, HostLimits, LaunchConfig};

    fn issues_of(rng: &RngConfig) -> Vec<ConfigIssue> {
        Issues::found_by(|issues| rng.check(issues))
    }

    #[test]
    fn rates_in_range_are_accepted() {
        for rate in [1, DEFAULT_RNG_BYTES_PER_SECOND, MAX_RNG_BYTES_PER_SECOND] {
            assert!(issues_of(&RngConfig::with_rate(rate)).is_empty(), "{rate}");
        }
        assert_eq!(
            RngConfig::default().bytes_per_second,
            DEFAULT_RNG_BYTES_PER_SECOND
        );
    }

    #[test]
    fn zero_and_too_fast_are_refused() {
        let found = issues_of(&RngConfig::with_rate(0));
        assert_eq!(found.len(), 1, "{found:#?}");
        assert_eq!(found[0].field, "rng.bytes_per_second");
        assert!(found[0].message.contains("at least 1"), "{}", found[0]);
        let found = issues_of(&RngConfig::with_rate(MAX_RNG_BYTES_PER_SECOND + 1));
        assert_eq!(found[0].field, "rng.bytes_per_second");
        assert!(found[0].message.contains("67108865"), "{}", found[0]);
        assert!(
            found[0].message.contains("at most 67108864"),
            "{}",
            found[0]
        );
    }

    #[test]
    fn json_empty_object_gets_the_default_and_absence_means_no_device() {
        let text = r#"{"name": "vm", "kernel": {"path": "/k"}, "rng": {}}"#;
        let config = LaunchConfig::from_json_str(text, Path::new("vm.json")).unwrap();
        assert_eq!(config.rng, Some(RngConfig::default()));
        let json: serde_json::Value = serde_json::from_str(&config.to_json().unwrap()).unwrap();
        assert_eq!(
            json["rng"],
            serde_json::json!({"bytes_per_second": DEFAULT_RNG_BYTES_PER_SECOND})
        );

        let text = r#"{"name": "vm", "kernel": {"path": "/k"}, "rng": {"bytes_per_second": 4096}}"#;
        let config = LaunchConfig::from_json_str(text, Path::new("vm.json")).unwrap();
        assert_eq!(config.rng, Some(RngConfig::with_rate(4096)));

        let minimal = r#"{"name": "vm", "kernel": {"path": "/k"}}"#;
        let config = LaunchConfig::from_json_str(minimal, Path::new("vm.json")).unwrap();
        assert_eq!(config.rng, None);
        let json: serde_json::Value = serde_json::from_str(&config.to_json().unwrap()).unwrap();
        assert!(json.get("rng").is_none(), "{json}");

        let unknown = r#"{"name": "vm", "kernel": {"path": "/k"}, "rng": {"source": "x"}}"#;
        let err = LaunchConfig::from_json_str(unknown, Path::new("vm.json")).unwrap_err();
        assert!(err.to_string().contains("unknown field `source`"), "{err}");
    }

    #[test]
    fn launch_config_validation_reports_the_rate() {
        let text = r#"{"name": "vm", "kernel": {"path": "/nonexistent/vmlinux"},
            "rng": {"bytes_per_second": 0}}"#;
        let config = LaunchConfig::from_json_str(text, Path::new("vm.json")).unwrap();
        let limits = HostLimits {
            available_memory_bytes: 1 << 30,
            max_vcpus: 1,
        };
        let Err(ConfigError::Invalid(found)) = config.validate(&limits) else {
            panic!("validation passed");
        };
        assert!(
            found.iter().any(|i| i.field == "rng.bytes_per_second"),
            "{found:#?}"
        );
    }
}
