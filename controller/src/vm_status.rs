//! A `VirtualMachine`'s status from its instance: the printable status `kubectl get vm`
//! shows, `created`/`ready`, the Ready condition and the restart back-off bookkeeping.

use ironvisor_crds::v1alpha1::{
    condition, ConditionStatus, ConditionType, StartFailure, VirtualMachineInstance,
    VirtualMachineInstancePhase as Phase, VirtualMachinePrintableStatus as Printable,
    VirtualMachineStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::vm_strategy::backoff_seconds;
use crate::vmi_status::{is_image_problem, set_condition};

/// Everything the VM's status is computed from.
#[derive(Debug, Clone, Copy)]
pub struct VmObservation<'a> {
    /// The current status.
    pub current: Option<&'a VirtualMachineStatus>,
    /// The VM's `metadata.generation`.
    pub generation: Option<i64>,
    /// The VM is being deleted.
    pub deleting: bool,
    /// The VM's instance, if any.
    pub instance: Option<&'a VirtualMachineInstance>,
    /// Now.
    pub now: &'a Time,
}

/// Counts a failed instance once (by UID) and resets the count when one runs.
pub fn next_start_failure(
    current: Option<&StartFailure>,
    instance: Option<&VirtualMachineInstance>,
    now: &Time,
) -> Option<StartFailure> {
    let Some(instance) = instance else {
        return current.cloned();
    };
    let phase = instance.status.as_ref().and_then(|s| s.phase);
    match phase {
        Some(Phase::Running) => None,
        Some(Phase::Failed) => {
            let uid = instance.metadata.uid.clone();
            if current.is_some_and(|c| c.last_failed_vmi_uid == uid) {
                return current.cloned();
            }
            let count = current.map_or(0, |c| c.consecutive_fail_count) + 1;
            let retry = now.0.as_second() + backoff_seconds(count);
            Some(StartFailure {
                consecutive_fail_count: count,
                last_failed_vmi_uid: uid,
                retry_after_timestamp: k8s_openapi::jiff::Timestamp::from_second(retry)
                    .ok()
                    .map(Time),
            })
        }
        _ => current.cloned(),
    }
}

/// The status to write.
pub fn vm_status(obs: &VmObservation<'_>) -> VirtualMachineStatus {
    let mut next = obs.current.cloned().unwrap_or_default();
    let instance_status = obs.instance.and_then(|i| i.status.as_ref());
    let phase = instance_status.and_then(|s| s.phase);
    let ready = instance_status
        .and_then(|s| condition::find(&s.conditions, ConditionType::Ready))
        .is_some_and(|c| c.status == ConditionStatus::True);
    next.start_failure = next_start_failure(next.start_failure.as_ref(), obs.instance, obs.now);
    let backing_off = next
        .start_failure
        .as_ref()
        .and_then(|f| f.retry_after_timestamp.as_ref())
        .is_some_and(|t| t.0 > obs.now.0);
    next.created = Some(obs.instance.is_some());
    next.ready = Some(ready);
    next.observed_generation = obs.generation;
    next.printable_status = Some(printable(obs, phase, backing_off));
    let (status, reason, message) = if ready {
        (ConditionStatus::True, None, None)
    } else if let Some(instance) = obs.instance {
        let ready_condition =
            instance_status.and_then(|s| condition::find(&s.conditions, ConditionType::Ready));
        (
            ConditionStatus::False,
            ready_condition
                .and_then(|c| c.reason.clone())
                .or_else(|| Some("InstanceNotReady".into())),
            ready_condition.and_then(|c| c.message.clone()).or_else(|| {
                instance
                    .metadata
                    .name
                    .clone()
                    .map(|n| format!("instance {n} is not ready"))
            }),
        )
    } else {
        (
            ConditionStatus::False,
            Some("InstanceNotFound".into()),
            Some("no instance of this machine exists".into()),
        )
    };
    set_condition(
        &mut next.conditions,
        ConditionType::Ready,
        status,
        reason,
        message,
        obs.now,
    );
    next
}

fn printable(obs: &VmObservation<'_>, phase: Option<Phase>, backing_off: bool) -> Printable {
    if obs.deleting {
        return Printable::Terminating;
    }
    let Some(instance) = obs.instance else {
        return if backing_off {
            Printable::CrashLoopBackOff
        } else {
            Printable::Stopped
        };
    };
    if instance.metadata.deletion_timestamp.is_some() {
        return Printable::Stopping;
    }
    let status = instance.status.as_ref();
    let reason = status.and_then(|s| s.reason.as_deref()).unwrap_or("");
    let unschedulable = status
        .and_then(|s| condition::find(&s.conditions, ConditionType::PodScheduled))
        .is_some_and(|c| {
            c.status == ConditionStatus::False && c.reason.as_deref() == Some("Unschedulable")
        });
    match phase {
        None | Some(Phase::Pending | Phase::Scheduling | Phase::Scheduled) => {
            if unschedulable {
                Printable::ErrorUnschedulable
            } else if reason == "ImagePullBackOff" {
                Printable::ImagePullBackOff
            } else if is_image_problem(reason) {
                Printable::ErrImagePull
            } else {
                Printable::Starting
            }
        }
        Some(Phase::Running) => {
            let paused = status
                .and_then(|s| condition::find(&s.conditions, ConditionType::Paused))
                .is_some_and(|c| c.status == ConditionStatus::True);
            if paused {
                Printable::Paused
            } else {
                Printable::Running
            }
        }
        Some(Phase::Succeeded | Phase::Failed) if backing_off => Printable::CrashLoopBackOff,
        Some(Phase::Succeeded | Phase::Failed) => Printable::Stopped,
        Some(Phase::Unknown) => Printable::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ironvisor_crds::v1alpha1::{
        Condition, VirtualMachineInstanceSpec, VirtualMachineInstanceStatus,
    };

    fn at(second: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(second).unwrap())
    }

    fn instance(uid: &str, phase: Phase, conditions: Vec<Condition>) -> VirtualMachineInstance {
        let mut vmi = VirtualMachineInstance::new("vm", VirtualMachineInstanceSpec::default());
        vmi.metadata.uid = Some(uid.into());
        vmi.status = Some(VirtualMachineInstanceStatus {
            phase: Some(phase),
            conditions,
            ..VirtualMachineInstanceStatus::default()
        });
        vmi
    }

    fn condition(type_: ConditionType, status: ConditionStatus, reason: &str) -> Condition {
        Condition {
            type_,
            status,
            reason: Some(reason.into()),
            message: None,
            last_transition_time: None,
            last_probe_time: None,
        }
    }

    fn observe(instance: Option<&VirtualMachineInstance>, now: &Time) -> VirtualMachineStatus {
        vm_status(&VmObservation {
            current: None,
            generation: Some(3),
            deleting: false,
            instance,
            now,
        })
    }

    #[test]
    fn stopped_starting_running() {
        let now = at(1000);
        let stopped = observe(None, &now);
        assert_eq!(stopped.printable_status, Some(Printable::Stopped));
        assert_eq!(stopped.created, Some(false));
        assert_eq!(stopped.observed_generation, Some(3));

        let starting = instance("u1", Phase::Scheduled, vec![]);
        assert_eq!(
            observe(Some(&starting), &now).printable_status,
            Some(Printable::Starting)
        );

        let running = instance(
            "u1",
            Phase::Running,
            vec![condition(ConditionType::Ready, ConditionStatus::True, "")],
        );
        let status = observe(Some(&running), &now);
        assert_eq!(status.printable_status, Some(Printable::Running));
        assert_eq!(status.ready, Some(true));
        let ready = condition::find(&status.conditions, ConditionType::Ready).unwrap();
        assert_eq!(ready.status, ConditionStatus::True);
    }

    #[test]
    fn unschedulable_and_image_errors_are_shown() {
        let now = at(1000);
        let unschedulable = instance(
            "u1",
            Phase::Scheduling,
            vec![condition(
                ConditionType::PodScheduled,
                ConditionStatus::False,
                "Unschedulable",
            )],
        );
        assert_eq!(
            observe(Some(&unschedulable), &now).printable_status,
            Some(Printable::ErrorUnschedulable)
        );
        let mut pulling = instance("u1", Phase::Scheduled, vec![]);
        pulling.status.as_mut().unwrap().reason = Some("ErrImageNeverPull".into());
        assert_eq!(
            observe(Some(&pulling), &now).printable_status,
            Some(Printable::ErrImagePull)
        );
    }

    #[test]
    fn failures_are_counted_once_per_instance_and_back_off() {
        let t = at(1000);
        let failed = instance("u1", Phase::Failed, vec![]);
        let first = next_start_failure(None, Some(&failed), &t).unwrap();
        assert_eq!(first.consecutive_fail_count, 1);
        let again = next_start_failure(Some(&first), Some(&failed), &t).unwrap();
        assert_eq!(again.consecutive_fail_count, 1);
        let second_instance = instance("u2", Phase::Failed, vec![]);
        let second = next_start_failure(Some(&first), Some(&second_instance), &t).unwrap();
        assert_eq!(second.consecutive_fail_count, 2);
        assert_eq!(second.retry_after_timestamp, Some(at(1010)));
        let running = instance("u3", Phase::Running, vec![]);
        assert_eq!(next_start_failure(Some(&second), Some(&running), &t), None);

        let status = vm_status(&VmObservation {
            current: Some(&VirtualMachineStatus {
                start_failure: Some(second),
                ..VirtualMachineStatus::default()
            }),
            generation: None,
            deleting: false,
            instance: None,
            now: &t,
        });
        assert_eq!(status.printable_status, Some(Printable::CrashLoopBackOff));
    }

    #[test]
    fn deleting_vms_terminate() {
        let now = at(1);
        let status = vm_status(&VmObservation {
            current: None,
            generation: None,
            deleting: true,
            instance: None,
            now: &now,
        });
        assert_eq!(status.printable_status, Some(Printable::Terminating));
    }
}
