//! The shape of the virtual machine beyond its size: how the vCPUs are arranged into
//! sockets, cores and threads (KubeVirt's `cpu.sockets/cores/threads`; the guest sees it
//! in its CPUID topology leaves and ACPI MADT), and where its real-time clock stands
//! relative to UTC (KubeVirt's `clock.utc.offsetSeconds` or `clock.timezone`, resolved to
//! an offset by whoever writes the configuration).

use ironvisor_arch::topology::{CpuTopology, MAX_XAPIC_ID};
use serde::{Deserialize, Serialize};

use super::Issues;

/// Largest RTC offset either way: 100 years (the RTC keeps a four-digit year).
pub const MAX_RTC_OFFSET_SECONDS: i64 = 100 * 365 * 86_400;

/// Sockets × cores per socket × threads per core; the product must equal `vcpus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct CpuTopologyConfig {
    /// Sockets (packages).
    pub sockets: u32,
    /// Cores per socket.
    pub cores: u32,
    /// Threads per core.
    pub threads: u32,
}

impl CpuTopologyConfig {
    /// Number of vCPUs it describes (saturating).
    pub fn vcpus(&self) -> u32 {
        self.sockets
            .saturating_mul(self.cores)
            .saturating_mul(self.threads)
    }

    /// Records what is wrong with it for a VM of `vcpus` vCPUs, under `cpu_topology`.
    pub(super) fn check(&self, vcpus: u32, issues: &mut Issues) {
        const FIELD: &str = "cpu_topology";
        let mut counts_valid = true;
        for (name, count) in [
            ("sockets", self.sockets),
            ("cores", self.cores),
            ("threads", self.threads),
        ] {
            if count == 0 {
                issues.push(format!("{FIELD}.{name}"), "must be at least 1");
                counts_valid = false;
            }
        }
        if !counts_valid {
            return;
        }
        if self.vcpus() != vcpus {
            issues.push(
                FIELD,
                format!(
                    "{} sockets x {} cores x {} threads = {} vCPUs, but vcpus is {vcpus}",
                    self.sockets,
                    self.cores,
                    self.threads,
                    self.vcpus()
                ),
            );
            return;
        }
        if let Some(topology) = CpuTopology::new(self.sockets, self.cores, self.threads) {
            let highest = topology.max_apic_id();
            if highest > MAX_XAPIC_ID {
                issues.push(
                    FIELD,
                    format!(
                        "numbers the last vCPU with APIC id {highest} (each of sockets, cores \
                         and threads takes a power-of-two share of the id), but at most \
                         {MAX_XAPIC_ID} fit: use counts that are powers of two, or fewer"
                    ),
                );
            }
        }
    }
}

/// The guest's real-time clock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct ClockConfig {
    /// Seconds the RTC runs ahead of UTC at start (negative: behind); 0 is UTC.
    #[serde(default)]
    pub rtc_offset_seconds: i64,
}

impl ClockConfig {
    /// True for the default, a UTC clock.
    pub fn is_utc(&self) -> bool {
        self.rtc_offset_seconds == 0
    }

    /// Records an offset out of range under `clock.rtc_offset_seconds`.
    pub(super) fn check(&self, issues: &mut Issues) {
        if self.rtc_offset_seconds.unsigned_abs() > MAX_RTC_OFFSET_SECONDS.unsigned_abs() {
            issues.push(
                "clock.rtc_offset_seconds",
                format!(
                    "is {}; at most {MAX_RTC_OFFSET_SECONDS} seconds (100 years) either way \
                     are allowed",
                    self.rtc_offset_seconds
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigIssue;

    fn topology(sockets: u32, cores: u32, threads: u32) -> CpuTopologyConfig {
        CpuTopologyConfig {
            sockets,
            cores,
            threads,
        }
    }

    fn issues_of(config: &CpuTopologyConfig, vcpus: u32) -> Vec<ConfigIssue> {
        Issues::found_by(|issues| config.check(vcpus, issues))
    }

    #[test]
    fn a_topology_matching_the_vcpus_is_accepted() {
        assert!(issues_of(&topology(2, 2, 2), 8).is_empty());
        assert!(issues_of(&topology(2, 3, 1), 6).is_empty());
        assert!(issues_of(&topology(1, 64, 1), 64).is_empty());
    }

    #[test]
    fn a_zero_count_is_named() {
        let issues = issues_of(&topology(2, 0, 0), 2);
        let fields: Vec<_> = issues.iter().map(|i| i.field.as_str()).collect();
        assert_eq!(fields, ["cpu_topology.cores", "cpu_topology.threads"]);
    }

    #[test]
    fn a_product_other_than_vcpus_is_refused() {
        let issues = issues_of(&topology(2, 2, 1), 2);
        assert_eq!(issues.len(), 1);
        assert_eq!(issues[0].field, "cpu_topology");
        assert_eq!(
            issues[0].message,
            "2 sockets x 2 cores x 1 threads = 4 vCPUs, but vcpus is 2"
        );
    }

    #[test]
    fn apic_ids_past_the_xapic_range_are_refused() {
        // 5 sockets x 33 cores: cores take 6 bits, socket 4 starts at id 256.
        let issues = issues_of(&topology(5, 33, 1), 165);
        assert_eq!(issues.len(), 1, "{issues:?}");
        assert!(issues[0].message.contains("APIC id 288"), "{issues:?}");
    }

    #[test]
    fn rtc_offsets_beyond_a_century_are_refused() {
        let ok = ClockConfig {
            rtc_offset_seconds: -MAX_RTC_OFFSET_SECONDS,
        };
        assert!(Issues::found_by(|issues| ok.check(issues)).is_empty());
        let far = ClockConfig {
            rtc_offset_seconds: MAX_RTC_OFFSET_SECONDS + 1,
        };
        let issues = Issues::found_by(|issues| far.check(issues));
        assert_eq!(issues[0].field, "clock.rtc_offset_seconds");
    }
}
