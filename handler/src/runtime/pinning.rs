//! The event that says whether a VM's vCPUs really run on the dedicated host CPUs the node
//! agent gave it: recorded once the launcher reports the pinning it applied (its status),
//! not when the CPUs are picked, so the event states a fact about the running VM.

use ironvisor_launcher_api::cpulist;

use super::event;
use crate::records::{EventRecord, EventType};

/// Reason of the event when the launcher pinned each vCPU to one of the VM's CPUs.
pub const PINNED_REASON: &str = "DedicatedCpus";
/// Reason of the warning when the launcher's pinning is not the one asked for.
pub const NOT_PINNED_REASON: &str = "DedicatedCpusNotApplied";

/// The event for a VM given the dedicated host CPUs `allocated` (one per vCPU, in vCPU
/// order) whose launcher reports `applied` (per vCPU, the host CPUs its thread is pinned
/// to).
pub fn pinning_event(allocated: &[u32], applied: &[Vec<u32>]) -> EventRecord {
    let expected: Vec<Vec<u32>> = allocated.iter().map(|&cpu| vec![cpu]).collect();
    if applied == expected.as_slice() {
        return event(
            EventType::Normal,
            PINNED_REASON,
            format!(
                "vCPUs pinned to dedicated host CPUs {}",
                cpulist::format(allocated)
            ),
        );
    }
    let reported = if applied.iter().all(Vec::is_empty) {
        "no pinning".to_string()
    } else {
        applied
            .iter()
            .enumerate()
            .map(|(vcpu, cpus)| match cpus.as_slice() {
                [] => format!("vCPU {vcpu} unpinned"),
                cpus => format!("vCPU {vcpu} on {}", cpulist::format(cpus)),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    event(
        EventType::Warning,
        NOT_PINNED_REASON,
        format!(
            "dedicated host CPUs {} were given to the vCPUs, but the launcher reports {reported}",
            cpulist::format(allocated)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_cpu_per_vcpu_as_given_is_a_normal_event_with_the_list() {
        let event = pinning_event(&[2, 3], &[vec![2], vec![3]]);
        assert_eq!(event.type_, EventType::Normal);
        assert_eq!(event.reason, PINNED_REASON);
        assert_eq!(event.message, "vCPUs pinned to dedicated host CPUs 2-3");
    }

    #[test]
    fn no_reported_pinning_is_a_warning() {
        let event = pinning_event(&[2], &[]);
        assert_eq!(event.type_, EventType::Warning);
        assert_eq!(event.reason, NOT_PINNED_REASON);
        assert_eq!(
            event.message,
            "dedicated host CPUs 2 were given to the vCPUs, but the launcher reports no pinning"
        );
    }

    #[test]
    fn a_different_or_partial_pinning_is_a_warning_naming_each_vcpu() {
        let event = pinning_event(&[2, 3], &[vec![3], vec![]]);
        assert_eq!(event.type_, EventType::Warning);
        assert!(
            event
                .message
                .ends_with("launcher reports vCPU 0 on 3, vCPU 1 unpinned"),
            "{}",
            event.message
        );
        let wider = pinning_event(&[2], &[vec![2, 3]]);
        assert_eq!(wider.reason, NOT_PINNED_REASON);
    }
}
