//! Rate limits of a disk or a NIC: token buckets of bytes and of operations (block
//! requests, frames) per second, each holding one second's worth as its burst. A NIC's
//! limit applies to each direction separately. Under the KVM launcher the virtio devices
//! enforce them; under the QEMU backend libvirt's `<iotune>` and `<bandwidth>` do.

use serde::{Deserialize, Serialize};

use super::Issues;

/// How much a device may move per second; an absent field leaves that dimension
/// unlimited, and at least one must be set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct RateLimitConfig {
    /// Bytes per second: a block request's data, a whole frame (per direction).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_per_second: Option<u64>,
    /// Operations per second: block requests, frames (per direction).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops_per_second: Option<u64>,
}

impl RateLimitConfig {
    /// Records problems under `field` (`"disks[0].rate_limit"`).
    pub(super) fn check(&self, field: &str, issues: &mut Issues) {
        if self.bytes_per_second.is_none() && self.ops_per_second.is_none() {
            issues.push(
                field,
                "sets neither bytes_per_second nor ops_per_second; leave it out for no limit",
            );
        }
        for (name, value) in [
            ("bytes_per_second", self.bytes_per_second),
            ("ops_per_second", self.ops_per_second),
        ] {
            if value == Some(0) {
                issues.push(
                    format!("{field}.{name}"),
                    "must be at least 1 (a rate of 0 would stall the device for good)",
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigIssue;

    fn issues_of(limit: &RateLimitConfig) -> Vec<ConfigIssue> {
        Issues::found_by(|issues| limit.check("disks[0].rate_limit", issues))
    }

    #[test]
    fn either_rate_alone_or_both_are_accepted() {
        for (bytes, ops) in [(Some(1), None), (None, Some(1)), (Some(1 << 20), Some(100))] {
            let limit = RateLimitConfig {
                bytes_per_second: bytes,
                ops_per_second: ops,
            };
            assert!(issues_of(&limit).is_empty(), "{limit:?}");
        }
    }

    #[test]
    fn an_empty_limit_and_zero_rates_are_refused_by_field() {
        let found = issues_of(&RateLimitConfig::default());
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].field, "disks[0].rate_limit");
        assert!(found[0].message.contains("neither"), "{}", found[0].message);
        let found = issues_of(&RateLimitConfig {
            bytes_per_second: Some(0),
            ops_per_second: Some(0),
        });
        let fields: Vec<&str> = found.iter().map(|i| i.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "disks[0].rate_limit.bytes_per_second",
                "disks[0].rate_limit.ops_per_second"
            ]
        );
    }

    #[test]
    fn json_names_the_fields_in_snake_case_and_refuses_others() {
        let limit: RateLimitConfig =
            serde_json::from_str(r#"{"bytes_per_second": 4096}"#).expect("decodes");
        assert_eq!(limit.bytes_per_second, Some(4096));
        assert_eq!(limit.ops_per_second, None);
        assert!(serde_json::from_str::<RateLimitConfig>(r#"{"iops": 1}"#).is_err());
    }
}
