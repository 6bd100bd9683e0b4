//! VM and VMI status as KubeVirt shows it: `printableStatus`, phases, and the Ready /
//! Paused / Failure conditions. Pure functions of the stored records, so the runtime can
//! recompute status at every pass and write it only when it changed.

use ironvisor_crds::v1alpha1::condition;
use ironvisor_crds::v1alpha1::{
    Condition, ConditionStatus, ConditionType, PhaseTransitionTimestamp, StartFailure,
    VirtualMachineInstance, VirtualMachineInstancePhase, VirtualMachinePrintableStatus,
    VirtualMachineStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::records::{LauncherRecord, VmRecord};
use crate::strategy::Decision;

/// Condition reason of a VM that needs hardware isolation on a node without it.
pub const UNSCHEDULABLE_REASON: &str = "HardwareIsolationUnavailable";
/// Condition reason of a VM that asks for more memory than the node has.
pub const INSUFFICIENT_MEMORY_REASON: &str = "InsufficientMemory";
/// Condition reason of a `dedicatedCpuPlacement` VM with too few free host CPUs.
pub const INSUFFICIENT_CPUS_REASON: &str = "InsufficientDedicatedCpus";
/// Start-error reason of a VM whose instance type or preference does not exist.
pub const INSTANCETYPE_REASON: &str = "InstancetypeNotFound";
/// Start-error reasons that mean no node can run the VM (shown as ErrorUnschedulable).
pub const UNSCHEDULABLE_REASONS: [&str; 3] = [
    UNSCHEDULABLE_REASON,
    INSUFFICIENT_MEMORY_REASON,
    INSUFFICIENT_CPUS_REASON,
];

/// Whether a start-error reason means the VM cannot be scheduled here.
pub fn is_unschedulable(reason: &str) -> bool {
    UNSCHEDULABLE_REASONS.contains(&reason)
}
/// Start-error reasons that mean an image is missing (shown as ErrImagePull).
pub const IMAGE_REASONS: [&str; 2] = ["ImageNotFound", "KernelImageNotFound"];

/// A Kubernetes timestamp for Unix milliseconds.
pub fn time(unix_ms: i64) -> Time {
    let timestamp = k8s_openapi::jiff::Timestamp::from_millisecond(unix_ms)
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
    Time(timestamp)
}

/// Unix seconds of a Kubernetes timestamp.
pub fn unix_seconds(time: &Time) -> i64 {
    time.0.as_second()
}

/// Everything the VM status is computed from.
#[derive(Debug, Clone, Copy)]
pub struct VmObservation<'a> {
    /// The VM record (its current status is the base for transition times).
    pub record: &'a VmRecord,
    /// Its instance.
    pub vmi: Option<&'a VirtualMachineInstance>,
    /// Its launcher.
    pub launcher: Option<&'a LauncherRecord>,
    /// What the strategy decided in this pass.
    pub decision: Decision,
    /// Now.
    pub now_unix_ms: i64,
}

/// The phase of an instance.
pub fn vmi_phase(vmi: &VirtualMachineInstance) -> Option<VirtualMachineInstancePhase> {
    vmi.status.as_ref().and_then(|s| s.phase)
}

/// Whether the instance's Paused condition is true.
pub fn vmi_paused(vmi: &VirtualMachineInstance) -> bool {
    vmi.status.as_ref().is_some_and(|s| {
        condition::find(&s.conditions, ConditionType::Paused)
            .is_some_and(|c| c.status == ConditionStatus::True)
    })
}

/// The one-word VM state.
pub fn printable_status(obs: &VmObservation<'_>) -> VirtualMachinePrintableStatus {
    use VirtualMachinePrintableStatus as P;
    let runtime = &obs.record.runtime;
    if runtime.deleting {
        return P::Terminating;
    }
    if obs.launcher.is_some_and(|l| l.stop.is_some()) {
        return P::Stopping;
    }
    let start_error = runtime
        .start_error
        .as_ref()
        .map(|(reason, _)| reason.as_str());
    if start_error.is_some_and(is_unschedulable) {
        return P::ErrorUnschedulable;
    }
    if obs.launcher.is_some() {
        return match obs.vmi.and_then(vmi_phase) {
            Some(VirtualMachineInstancePhase::Running) if obs.vmi.is_some_and(vmi_paused) => {
                P::Paused
            }
            Some(VirtualMachineInstancePhase::Running) => P::Running,
            _ => P::Starting,
        };
    }
    let image_missing = start_error.is_some_and(|r| IMAGE_REASONS.contains(&r));
    match obs.decision {
        Decision::BackOff { .. } if image_missing => P::ImagePullBackOff,
        Decision::BackOff { .. } => P::CrashLoopBackOff,
        Decision::Start(_) => P::Starting,
        _ if image_missing => P::ErrImagePull,
        _ => P::Stopped,
    }
}

fn condition(
    type_: ConditionType,
    status: ConditionStatus,
    reason: Option<&str>,
    message: Option<String>,
    now_unix_ms: i64,
) -> Condition {
    Condition {
        type_,
        status,
        reason: reason.map(str::to_string),
        message,
        last_transition_time: Some(time(now_unix_ms)),
        last_probe_time: None,
    }
}

/// Sets the conditions of `types` that are `Some` and removes those that are `None`,
/// keeping transition times of unchanged conditions.
fn apply_conditions(
    conditions: &mut Vec<Condition>,
    desired: Vec<(ConditionType, Option<Condition>)>,
) {
    for (type_, wanted) in desired {
        match wanted {
            Some(c) => {
                condition::set(conditions, c);
            }
            None => conditions.retain(|c| c.type_ != type_),
        }
    }
}

/// The VM's status, computed from scratch; conditions keep their transition times when
/// they did not change.
pub fn vm_status(obs: &VmObservation<'_>) -> VirtualMachineStatus {
    let previous = obs.record.vm.status.clone().unwrap_or_default();
    let now = obs.now_unix_ms;
    let printable = printable_status(obs);
    let phase = obs.vmi.and_then(vmi_phase);
    let running = obs.launcher.is_some() && phase == Some(VirtualMachineInstancePhase::Running);
    let paused = running && obs.vmi.is_some_and(vmi_paused);
    let runtime = &obs.record.runtime;

    let ready = if running {
        condition(ConditionType::Ready, ConditionStatus::True, None, None, now)
    } else {
        let (reason, message) = match (obs.vmi, phase) {
            (None, _) => ("VMINotExists", "VMI does not exist".to_string()),
            (Some(_), Some(p)) if p.is_final() => ("VMIFinished", format!("VMI is {p:?}")),
            (Some(_), _) => ("VMINotRunning", "VMI is not running yet".to_string()),
        };
        condition(
            ConditionType::Ready,
            ConditionStatus::False,
            Some(reason),
            Some(message),
            now,
        )
    };
    let paused_condition = paused.then(|| {
        condition(
            ConditionType::Paused,
            ConditionStatus::True,
            Some("PausedByUser"),
            Some("VMI was paused by user".into()),
            now,
        )
    });
    let failure = match (&runtime.start_error, &runtime.last_exit) {
        (Some((reason, message)), _) => Some(condition(
            ConditionType::Failure,
            ConditionStatus::True,
            Some(reason),
            Some(message.clone()),
            now,
        )),
        (None, Some(exit))
            if !running
                && !exit.requested
                && exit.outcome.is_failure()
                && phase == Some(VirtualMachineInstancePhase::Failed) =>
        {
            let message = obs
                .vmi
                .and_then(|v| v.status.as_ref())
                .and_then(|s| {
                    condition::find(&s.conditions, ConditionType::Ready)
                        .and_then(|c| c.message.clone())
                })
                .unwrap_or_else(|| exit.outcome.to_string());
            Some(condition(
                ConditionType::Failure,
                ConditionStatus::True,
                Some(exit.outcome.reason()),
                Some(message),
                now,
            ))
        }
        _ => None,
    };

    let mut conditions = previous.conditions.clone();
    apply_conditions(
        &mut conditions,
        vec![
            (ConditionType::Ready, Some(ready)),
            (ConditionType::Paused, paused_condition),
            (ConditionType::Failure, failure),
        ],
    );
    let start_failure = (runtime.consecutive_failures > 0).then(|| StartFailure {
        consecutive_fail_count: runtime.consecutive_failures,
        last_failed_vmi_uid: runtime.last_exit.as_ref().map(|e| e.vmi_uid.clone()),
        retry_after_timestamp: runtime.retry_after_unix_ms.map(time),
    });
    VirtualMachineStatus {
        printable_status: Some(printable),
        created: Some(obs.vmi.is_some()),
        ready: Some(running),
        conditions,
        observed_generation: obs.record.vm.metadata.generation,
        start_failure,
    }
}

/// Sets the instance's phase (recording the transition time when it changes) and its
/// `reason`.
pub fn set_vmi_phase(
    vmi: &mut VirtualMachineInstance,
    phase: VirtualMachineInstancePhase,
    reason: Option<&str>,
    now_unix_ms: i64,
) {
    let status = vmi.status.get_or_insert_with(Default::default);
    if status.phase != Some(phase) {
        status.phase = Some(phase);
        status
            .phase_transition_timestamps
            .push(PhaseTransitionTimestamp {
                phase,
                phase_transition_timestamp: time(now_unix_ms),
            });
    }
    status.reason = reason.map(str::to_string);
}

/// Sets the instance's Ready and Paused conditions. `ready_detail` is the reason and
/// message of a Ready=False condition.
pub fn set_vmi_conditions(
    vmi: &mut VirtualMachineInstance,
    ready: bool,
    ready_detail: Option<(&str, String)>,
    paused: bool,
    now_unix_ms: i64,
) {
    let status = vmi.status.get_or_insert_with(Default::default);
    let ready = if ready {
        condition(
            ConditionType::Ready,
            ConditionStatus::True,
            None,
            None,
            now_unix_ms,
        )
    } else {
        let (reason, message) = ready_detail.unwrap_or(("NotReady", "VMI is not ready".into()));
        condition(
            ConditionType::Ready,
            ConditionStatus::False,
            Some(reason),
            Some(message),
            now_unix_ms,
        )
    };
    let paused = paused.then(|| {
        condition(
            ConditionType::Paused,
            ConditionStatus::True,
            Some("PausedByUser"),
            Some("VMI was paused by user".into()),
            now_unix_ms,
        )
    });
    apply_conditions(
        &mut status.conditions,
        vec![
            (ConditionType::Ready, Some(ready)),
            (ConditionType::Paused, paused),
        ],
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{
        BackendKind, ExitOutcome, LastExit, LauncherPhase, StopCause, StopState, VmRuntime,
    };
    use crate::strategy::StartReason;
    use ironvisor_crds::v1alpha1::VirtualMachine;

    fn record() -> VmRecord {
        let mut vm = VirtualMachine::new("vm", Default::default());
        vm.metadata.generation = Some(3);
        VmRecord {
            vm,
            runtime: VmRuntime::default(),
        }
    }

    fn launcher() -> LauncherRecord {
        LauncherRecord {
            vmi_uid: "u1".into(),
            phase: LauncherPhase::Spawned,
            monitor: None,
            launcher: None,
            run_dir: "/r".into(),
            api_socket: "/r/api".into(),
            console_socket: "/r/console".into(),
            status_file: "/r/status".into(),
            pid_file: "/r/pid".into(),
            log_file: "/l".into(),
            backend: BackendKind::QemuTcg,
            cgroups: vec![],
            network: None,
            ephemeral_files: vec![],
            started_unix_ms: 0,
            running_since_unix_ms: None,
            stop: None,
            dedicated_cpus: Vec::new(),
        }
    }

    fn vmi(phase: VirtualMachineInstancePhase, paused: bool) -> VirtualMachineInstance {
        let mut vmi = VirtualMachineInstance::new("vm", Default::default());
        set_vmi_phase(&mut vmi, phase, None, 1000);
        set_vmi_conditions(&mut vmi, true, None, paused, 1000);
        vmi
    }

    fn observe<'a>(
        record: &'a VmRecord,
        vmi: Option<&'a VirtualMachineInstance>,
        launcher: Option<&'a LauncherRecord>,
        decision: Decision,
    ) -> VmObservation<'a> {
        VmObservation {
            record,
            vmi,
            launcher,
            decision,
            now_unix_ms: 5000,
        }
    }

    #[test]
    fn printable_status_follows_the_instance() {
        use VirtualMachinePrintableStatus as P;
        let rec = record();
        let l = launcher();
        let running = vmi(VirtualMachineInstancePhase::Running, false);
        let paused = vmi(VirtualMachineInstancePhase::Running, true);
        let scheduled = vmi(VirtualMachineInstancePhase::Scheduled, false);
        let failed = vmi(VirtualMachineInstancePhase::Failed, false);
        let n = Decision::Nothing;
        assert_eq!(printable_status(&observe(&rec, None, None, n)), P::Stopped);
        assert_eq!(
            printable_status(&observe(&rec, Some(&scheduled), Some(&l), n)),
            P::Starting
        );
        assert_eq!(
            printable_status(&observe(&rec, Some(&running), Some(&l), n)),
            P::Running
        );
        assert_eq!(
            printable_status(&observe(&rec, Some(&paused), Some(&l), n)),
            P::Paused
        );
        assert_eq!(
            printable_status(&observe(
                &rec,
                Some(&failed),
                None,
                Decision::BackOff { until_unix_ms: 9 }
            )),
            P::CrashLoopBackOff
        );
        assert_eq!(
            printable_status(&observe(
                &rec,
                Some(&failed),
                None,
                Decision::Start(StartReason::RestartAfterFailure)
            )),
            P::Starting
        );
        let mut stopping = launcher();
        stopping.stop = Some(StopState {
            cause: StopCause::Request,
            forced: false,
            started_unix_ms: 0,
            kill_after_unix_ms: 1,
        });
        assert_eq!(
            printable_status(&observe(&rec, Some(&running), Some(&stopping), n)),
            P::Stopping
        );
        let mut unschedulable = record();
        unschedulable.runtime.start_error = Some((UNSCHEDULABLE_REASON.into(), "no kvm".into()));
        assert_eq!(
            printable_status(&observe(&unschedulable, None, None, n)),
            P::ErrorUnschedulable
        );
        let mut deleting = record();
        deleting.runtime.deleting = true;
        assert_eq!(
            printable_status(&observe(&deleting, Some(&running), Some(&l), n)),
            P::Terminating
        );
    }

    #[test]
    fn vm_conditions_report_ready_paused_and_failure() {
        let mut rec = record();
        let l = launcher();
        let paused = vmi(VirtualMachineInstancePhase::Running, true);
        let status = vm_status(&observe(&rec, Some(&paused), Some(&l), Decision::Nothing));
        assert_eq!(status.ready, Some(true));
        assert_eq!(status.observed_generation, Some(3));
        let find = |s: &VirtualMachineStatus, t| condition::find(&s.conditions, t).cloned();
        assert_eq!(
            find(&status, ConditionType::Paused).map(|c| c.status),
            Some(ConditionStatus::True)
        );
        assert!(find(&status, ConditionType::Failure).is_none());

        rec.vm.status = Some(status);
        rec.runtime.last_exit = Some(LastExit {
            vmi_uid: "u1".into(),
            outcome: ExitOutcome::Signal(9),
            requested: false,
            at_unix_ms: 4000,
        });
        rec.runtime.consecutive_failures = 1;
        let failed = vmi(VirtualMachineInstancePhase::Failed, false);
        let status = vm_status(&observe(&rec, Some(&failed), None, Decision::Nothing));
        assert_eq!(status.ready, Some(false));
        assert!(find(&status, ConditionType::Paused).is_none());
        let failure = find(&status, ConditionType::Failure).unwrap();
        assert_eq!(failure.reason.as_deref(), Some("LauncherKilled"));
        assert_eq!(
            status.start_failure.map(|f| f.consecutive_fail_count),
            Some(1)
        );
    }

    #[test]
    fn phase_transitions_are_recorded_once() {
        let mut vmi = VirtualMachineInstance::new("vm", Default::default());
        set_vmi_phase(&mut vmi, VirtualMachineInstancePhase::Scheduled, None, 1);
        set_vmi_phase(&mut vmi, VirtualMachineInstancePhase::Scheduled, None, 2);
        set_vmi_phase(&mut vmi, VirtualMachineInstancePhase::Running, None, 3);
        let status = vmi.status.unwrap();
        assert_eq!(status.phase_transition_timestamps.len(), 2);
        assert_eq!(status.phase, Some(VirtualMachineInstancePhase::Running));
    }
}
