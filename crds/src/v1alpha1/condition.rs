//! Status conditions shared by `VirtualMachine` and `VirtualMachineInstance`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One observed aspect of an object's state, as in every Kubernetes status.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    /// Which aspect this condition describes.
    #[serde(rename = "type")]
    pub type_: ConditionType,
    /// Whether the condition holds.
    pub status: ConditionStatus,
    /// Machine-readable CamelCase reason for the last transition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When `status` last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    /// When the condition was last checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_probe_time: Option<Time>,
}

/// Condition types used by Ironvisor (the KubeVirt ones it implements).
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConditionType {
    /// The instance is running and its guest is reachable (VM and VMI).
    Ready,
    /// The instance's vCPUs are paused.
    Paused,
    /// Creating or starting the instance failed (VM).
    Failure,
    /// Resources for the instance are being prepared.
    Provisioning,
    /// The guest agent is connected.
    AgentConnected,
    /// A node with hardware-assisted virtualization runs the instance (Ironvisor).
    HardwareIsolated,
    /// The instance's launcher pod was placed on a node (cluster mode; False with the
    /// scheduler's reason while it cannot be).
    PodScheduled,
}

/// Truth value of a condition.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConditionStatus {
    /// The condition holds.
    True,
    /// The condition does not hold.
    False,
    /// It is not known whether the condition holds.
    Unknown,
}

/// Returns the condition of the given type, if present.
pub fn find(conditions: &[Condition], type_: ConditionType) -> Option<&Condition> {
    conditions.iter().find(|condition| condition.type_ == type_)
}

/// Inserts or replaces the condition of `new.type_`. The transition time of an existing
/// condition is kept when its status does not change. Returns true if anything changed.
pub fn set(conditions: &mut Vec<Condition>, new: Condition) -> bool {
    match conditions
        .iter_mut()
        .find(|existing| existing.type_ == new.type_)
    {
        Some(existing) => {
            let mut new = new;
            if existing.status == new.status && existing.last_transition_time.is_some() {
                new.last_transition_time = existing.last_transition_time.clone();
            }
            if *existing == new {
                return false;
            }
            *existing = new;
            true
        }
        None => {
            conditions.push(new);
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn condition(status: ConditionStatus, reason: &str, seconds: i64) -> Condition {
        Condition {
            type_: ConditionType::Ready,
            status,
            reason: Some(reason.into()),
            message: None,
            last_transition_time: Some(Time(
                k8s_openapi::jiff::Timestamp::from_second(seconds).unwrap(),
            )),
            last_probe_time: None,
        }
    }

    #[test]
    fn set_keeps_transition_time_when_status_is_unchanged() {
        let mut conditions = vec![condition(ConditionStatus::True, "Booted", 10)];
        assert!(set(
            &mut conditions,
            condition(ConditionStatus::True, "AgentUp", 20)
        ));
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].reason.as_deref(), Some("AgentUp"));
        assert_eq!(
            conditions[0].last_transition_time,
            condition(ConditionStatus::True, "x", 10).last_transition_time
        );
        assert!(!set(
            &mut conditions,
            condition(ConditionStatus::True, "AgentUp", 30)
        ));
        assert!(set(
            &mut conditions,
            condition(ConditionStatus::False, "Crashed", 40)
        ));
        assert_eq!(
            find(&conditions, ConditionType::Ready).map(|c| c.status),
            Some(ConditionStatus::False)
        );
        assert_eq!(
            conditions[0].last_transition_time,
            condition(ConditionStatus::False, "x", 40).last_transition_time
        );
        assert!(find(&conditions, ConditionType::Paused).is_none());
    }

    #[test]
    fn serializes_like_kubernetes() {
        let json = serde_json::to_value(condition(ConditionStatus::True, "Booted", 0)).unwrap();
        assert_eq!(json["type"], "Ready");
        assert_eq!(json["status"], "True");
        assert_eq!(json["lastTransitionTime"], "1970-01-01T00:00:00Z");
    }
}
