//! What a `VirtualMachineInstance`'s status is, given its launcher pod: a pure function,
//! so every mapping (pending, unschedulable, image errors, running, how it ended) is unit
//! tested without a cluster.
//!
//! | launcher pod | instance phase |
//! |---|---|
//! | not created yet | Pending |
//! | Pending, no node | Scheduling (PodScheduled False with the scheduler's reason) |
//! | Pending on a node, or Running before the launcher answers | Scheduled |
//! | Running, `compute` ready (the launcher's API answers, the guest runs) | Running |
//! | Succeeded (guest powered off) | Succeeded |
//! | Failed | Failed, reason from the launcher's termination message |
//! | gone while the instance was placed | Failed (`LauncherPodGone`) |
//!
//! A final phase is never left.

use ironvisor_crds::v1alpha1::{
    Condition, ConditionStatus, ConditionType, PhaseTransitionTimestamp,
    VirtualMachineInstancePhase as Phase, VirtualMachineInstanceStatus,
};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::Deserialize;

use ironvisor_crds::cluster::COMPUTE_CONTAINER;

/// Container waiting reasons that mean an image cannot be had.
const IMAGE_PROBLEMS: [&str; 5] = [
    "ErrImagePull",
    "ImagePullBackOff",
    "ErrImageNeverPull",
    "InvalidImageName",
    "ErrImageInspect",
];
/// Container waiting reasons that mean the container cannot be created.
const CONTAINER_PROBLEMS: [&str; 3] = [
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// The instance's state as read off its launcher pod.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// Lifecycle phase.
    pub phase: Phase,
    /// CamelCase reason (why it failed, why it waits).
    pub reason: Option<String>,
    /// Human-readable details of `reason`.
    pub message: Option<String>,
    /// The node the pod was placed on.
    pub node_name: Option<String>,
    /// The guest runs and its launcher answers.
    pub ready: bool,
    /// The pod's `PodScheduled` condition: status, reason, message.
    pub scheduled: Option<(ConditionStatus, Option<String>, Option<String>)>,
}

/// The message the pod's `virt-launcher` leaves in `/dev/termination-log`.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
struct TerminationMessage {
    #[serde(default)]
    exit_code: Option<i32>,
    reason: String,
    #[serde(default)]
    message: Option<String>,
}

/// Observes the instance whose phase is `current` through its launcher pod.
pub fn observe(current: Option<Phase>, pod: Option<&Pod>) -> Observation {
    let mut out = Observation {
        phase: current.unwrap_or(Phase::Pending),
        reason: None,
        message: None,
        node_name: None,
        ready: false,
        scheduled: None,
    };
    if current.is_some_and(Phase::is_final) {
        return out;
    }
    let Some(pod) = pod else {
        if matches!(current, None | Some(Phase::Pending)) {
            out.phase = Phase::Pending;
        } else {
            out.phase = Phase::Failed;
            out.reason = Some("LauncherPodGone".into());
            out.message = Some("the launcher pod was deleted while the instance ran".into());
        }
        return out;
    };
    let spec_node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
    let status = pod.status.clone().unwrap_or_default();
    out.node_name = spec_node;
    out.scheduled = status
        .conditions
        .as_ref()
        .and_then(|c| c.iter().find(|c| c.type_ == "PodScheduled"))
        .map(|c| {
            let truth = match c.status.as_str() {
                "True" => ConditionStatus::True,
                "False" => ConditionStatus::False,
                _ => ConditionStatus::Unknown,
            };
            (truth, c.reason.clone(), c.message.clone())
        });
    let compute = status
        .container_statuses
        .as_ref()
        .and_then(|s| s.iter().find(|c| c.name == COMPUTE_CONTAINER));
    match status.phase.as_deref() {
        Some("Running") => {
            out.ready = compute.is_some_and(|c| c.ready);
            out.phase = if out.ready || current == Some(Phase::Running) {
                Phase::Running
            } else {
                Phase::Scheduled
            };
        }
        Some("Succeeded") => {
            out.phase = Phase::Succeeded;
            (out.reason, out.message) = ended(compute, "GuestPoweredOff");
        }
        Some("Failed") => {
            out.phase = Phase::Failed;
            (out.reason, out.message) = failed(&status, compute);
        }
        Some("Unknown") => out.phase = Phase::Unknown,
        // Pending (or no status yet).
        _ => {
            out.phase = if out.node_name.is_some() {
                Phase::Scheduled
            } else {
                Phase::Scheduling
            };
            if let Some((ConditionStatus::False, reason, message)) = &out.scheduled {
                out.reason = reason.clone();
                out.message = message.clone();
            }
            if let Some((reason, message)) = waiting_problem(&status) {
                out.reason = Some(reason);
                out.message = Some(message);
            }
        }
    }
    out
}

/// Reason and message of a container that ended, from its termination message.
fn ended(
    container: Option<&ContainerStatus>,
    default_reason: &str,
) -> (Option<String>, Option<String>) {
    let terminated = container
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.terminated.as_ref());
    let Some(terminated) = terminated else {
        return (Some(default_reason.into()), None);
    };
    if let Some(text) = terminated.message.as_deref() {
        if let Ok(message) = serde_json::from_str::<TerminationMessage>(text.trim()) {
            let detail = match (message.message, message.exit_code) {
                (Some(m), Some(code)) => Some(format!("{m} (launcher exit code {code})")),
                (Some(m), None) => Some(m),
                (None, Some(code)) => Some(format!("launcher exit code {code}")),
                (None, None) => None,
            };
            return (Some(message.reason), detail);
        }
    }
    let reason = terminated
        .reason
        .clone()
        .filter(|r| r != "Completed" && r != "Error")
        .unwrap_or_else(|| default_reason.into());
    let message = terminated
        .message
        .clone()
        .filter(|m| !m.trim().is_empty())
        .unwrap_or_else(|| format!("launcher exit code {}", terminated.exit_code));
    (Some(reason), Some(message))
}

fn failed(
    status: &k8s_openapi::api::core::v1::PodStatus,
    compute: Option<&ContainerStatus>,
) -> (Option<String>, Option<String>) {
    let failed_init = status.init_container_statuses.as_ref().and_then(|inits| {
        inits.iter().find(|c| {
            c.state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .is_some_and(|t| t.exit_code != 0)
        })
    });
    if let Some(init) = failed_init {
        let code = init
            .state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .map_or(0, |t| t.exit_code);
        return (
            Some("ImageCopyFailed".into()),
            Some(format!(
                "init container {} (image {}) exited with code {code}",
                init.name, init.image
            )),
        );
    }
    if compute
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.terminated.as_ref())
        .is_some()
    {
        return ended(compute, "LauncherFailed");
    }
    (
        Some(status.reason.clone().unwrap_or_else(|| "PodFailed".into())),
        status.message.clone(),
    )
}

/// The first container that cannot start because of its image or configuration.
fn waiting_problem(status: &k8s_openapi::api::core::v1::PodStatus) -> Option<(String, String)> {
    let all = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten());
    for container in all {
        let Some(waiting) = container.state.as_ref().and_then(|s| s.waiting.as_ref()) else {
            continue;
        };
        let Some(reason) = waiting.reason.as_deref() else {
            continue;
        };
        if IMAGE_PROBLEMS.contains(&reason) || CONTAINER_PROBLEMS.contains(&reason) {
            let message = format!(
                "container {} (image {}): {}",
                container.name,
                container.image,
                waiting.message.as_deref().unwrap_or(reason)
            );
            return Some((reason.to_string(), message));
        }
    }
    None
}

/// True when `reason` says an image cannot be had (for the VM's printable status).
pub fn is_image_problem(reason: &str) -> bool {
    IMAGE_PROBLEMS.contains(&reason)
}

/// Sets or updates a condition, keeping its transition time when the status is unchanged.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: ConditionType,
    status: ConditionStatus,
    reason: Option<String>,
    message: Option<String>,
    now: &Time,
) {
    if let Some(existing) = conditions.iter_mut().find(|c| c.type_ == type_) {
        if existing.status != status {
            existing.last_transition_time = Some(now.clone());
        }
        existing.status = status;
        existing.reason = reason;
        existing.message = message;
        return;
    }
    conditions.push(Condition {
        type_,
        status,
        reason,
        message,
        last_transition_time: Some(now.clone()),
        last_probe_time: None,
    });
}

/// The status to write for `observation`, starting from the current `status`.
pub fn next_status(
    status: Option<&VirtualMachineInstanceStatus>,
    observation: &Observation,
    now: &Time,
) -> VirtualMachineInstanceStatus {
    let mut next = status.cloned().unwrap_or_default();
    if next.phase != Some(observation.phase) {
        next.phase_transition_timestamps
            .push(PhaseTransitionTimestamp {
                phase: observation.phase,
                phase_transition_timestamp: now.clone(),
            });
        next.phase = Some(observation.phase);
    }
    next.reason = observation.reason.clone();
    if observation.node_name.is_some() {
        next.node_name = observation.node_name.clone();
    }
    let (ready_status, ready_reason, ready_message) = if observation.ready {
        (ConditionStatus::True, None, None)
    } else {
        (
            ConditionStatus::False,
            Some(
                observation
                    .reason
                    .clone()
                    .unwrap_or_else(|| format!("{:?}", observation.phase)),
            ),
            observation.message.clone(),
        )
    };
    set_condition(
        &mut next.conditions,
        ConditionType::Ready,
        ready_status,
        ready_reason,
        ready_message,
        now,
    );
    if let Some((status, reason, message)) = &observation.scheduled {
        set_condition(
            &mut next.conditions,
            ConditionType::PodScheduled,
            *status,
            reason.clone(),
            message.clone(),
            now,
        );
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateTerminated, ContainerStateWaiting, PodCondition, PodSpec,
        PodStatus,
    };

    fn pod(phase: &str, node: Option<&str>) -> Pod {
        Pod {
            spec: Some(PodSpec {
                node_name: node.map(Into::into),
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                ..PodStatus::default()
            }),
            ..Pod::default()
        }
    }

    fn compute(ready: bool, state: Option<ContainerState>) -> ContainerStatus {
        ContainerStatus {
            name: COMPUTE_CONTAINER.into(),
            image: "docker.io/ironvisor/launcher:0.1.0".into(),
            ready,
            state,
            ..ContainerStatus::default()
        }
    }

    fn terminated(code: i32, message: Option<&str>) -> Option<ContainerState> {
        Some(ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: code,
                message: message.map(Into::into),
                reason: Some(if code == 0 { "Completed" } else { "Error" }.into()),
                ..ContainerStateTerminated::default()
            }),
            ..ContainerState::default()
        })
    }

    #[test]
    fn no_pod_yet_is_pending_and_a_vanished_pod_fails_the_instance() {
        assert_eq!(observe(None, None).phase, Phase::Pending);
        let gone = observe(Some(Phase::Running), None);
        assert_eq!(gone.phase, Phase::Failed);
        assert_eq!(gone.reason.as_deref(), Some("LauncherPodGone"));
    }

    #[test]
    fn unschedulable_pod_carries_the_schedulers_reason() {
        let mut p = pod("Pending", None);
        p.status.as_mut().unwrap().conditions = Some(vec![PodCondition {
            type_: "PodScheduled".into(),
            status: "False".into(),
            reason: Some("Unschedulable".into()),
            message: Some("0/1 nodes are available: 1 Insufficient memory.".into()),
            ..PodCondition::default()
        }]);
        let seen = observe(Some(Phase::Pending), Some(&p));
        assert_eq!(seen.phase, Phase::Scheduling);
        assert_eq!(seen.reason.as_deref(), Some("Unschedulable"));
        assert!(seen.message.unwrap().contains("Insufficient memory"));
        let status = next_status(None, &observe(None, Some(&p)), &Time(Default::default()));
        let scheduled = status
            .conditions
            .iter()
            .find(|c| c.type_ == ConditionType::PodScheduled)
            .unwrap();
        assert_eq!(scheduled.status, ConditionStatus::False);
    }

    #[test]
    fn image_errors_are_reported_with_the_image() {
        let mut p = pod("Pending", Some("node1"));
        p.status.as_mut().unwrap().init_container_statuses = Some(vec![ContainerStatus {
            name: "volume-rootdisk".into(),
            image: "ironvisor/rootfs:nope".into(),
            state: Some(ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some("ErrImageNeverPull".into()),
                    message: Some("image is not present".into()),
                }),
                ..ContainerState::default()
            }),
            ..ContainerStatus::default()
        }]);
        let seen = observe(Some(Phase::Scheduling), Some(&p));
        assert_eq!(seen.phase, Phase::Scheduled);
        assert_eq!(seen.reason.as_deref(), Some("ErrImageNeverPull"));
        assert!(seen.message.unwrap().contains("ironvisor/rootfs:nope"));
        assert!(is_image_problem("ErrImageNeverPull"));
    }

    #[test]
    fn running_needs_the_launcher_to_answer() {
        let mut p = pod("Running", Some("node1"));
        p.status.as_mut().unwrap().container_statuses = Some(vec![compute(false, None)]);
        assert_eq!(
            observe(Some(Phase::Scheduled), Some(&p)).phase,
            Phase::Scheduled
        );
        p.status.as_mut().unwrap().container_statuses = Some(vec![compute(true, None)]);
        let seen = observe(Some(Phase::Scheduled), Some(&p));
        assert_eq!(seen.phase, Phase::Running);
        assert!(seen.ready);
        assert_eq!(seen.node_name.as_deref(), Some("node1"));
    }

    #[test]
    fn endings_take_the_launchers_termination_message() {
        let mut p = pod("Succeeded", Some("n"));
        p.status.as_mut().unwrap().container_statuses = Some(vec![compute(
            false,
            terminated(
                0,
                Some(
                    r#"{"exitCode":0,"reason":"GuestPoweredOff","message":"the guest powered off"}"#,
                ),
            ),
        )]);
        let seen = observe(Some(Phase::Running), Some(&p));
        assert_eq!(seen.phase, Phase::Succeeded);
        assert_eq!(seen.reason.as_deref(), Some("GuestPoweredOff"));

        let mut p = pod("Failed", Some("n"));
        p.status.as_mut().unwrap().container_statuses = Some(vec![compute(
            false,
            terminated(
                4,
                Some(r#"{"exitCode":4,"reason":"GuestCrashed","message":"triple fault"}"#),
            ),
        )]);
        let seen = observe(Some(Phase::Running), Some(&p));
        assert_eq!(seen.phase, Phase::Failed);
        assert_eq!(seen.reason.as_deref(), Some("GuestCrashed"));
        assert_eq!(
            seen.message.as_deref(),
            Some("triple fault (launcher exit code 4)")
        );

        let mut p = pod("Failed", Some("n"));
        p.status.as_mut().unwrap().container_statuses =
            Some(vec![compute(false, terminated(137, None))]);
        let seen = observe(Some(Phase::Running), Some(&p));
        assert_eq!(seen.reason.as_deref(), Some("LauncherFailed"));
        assert_eq!(seen.message.as_deref(), Some("launcher exit code 137"));
    }

    #[test]
    fn evicted_pods_fail_with_the_pods_reason() {
        let mut p = pod("Failed", Some("n"));
        p.status.as_mut().unwrap().reason = Some("Evicted".into());
        let seen = observe(Some(Phase::Running), Some(&p));
        assert_eq!(seen.reason.as_deref(), Some("Evicted"));
    }

    #[test]
    fn final_phases_are_never_left() {
        let p = pod("Running", Some("n"));
        assert_eq!(observe(Some(Phase::Failed), Some(&p)).phase, Phase::Failed);
        assert_eq!(
            observe(Some(Phase::Succeeded), None).phase,
            Phase::Succeeded
        );
    }

    #[test]
    fn transitions_are_timestamped_once_and_conditions_keep_their_time() {
        let t0 = Time(k8s_openapi::jiff::Timestamp::from_second(100).unwrap());
        let t1 = Time(k8s_openapi::jiff::Timestamp::from_second(200).unwrap());
        let scheduled = observe(None, Some(&pod("Pending", Some("n"))));
        let first = next_status(None, &scheduled, &t0);
        let again = next_status(Some(&first), &scheduled, &t1);
        assert_eq!(again.phase_transition_timestamps.len(), 1);
        let ready = |s: &VirtualMachineInstanceStatus| {
            s.conditions
                .iter()
                .find(|c| c.type_ == ConditionType::Ready)
                .unwrap()
                .last_transition_time
                .clone()
        };
        assert_eq!(ready(&again), Some(t0));
    }
}
