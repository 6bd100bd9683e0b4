//! Conversions between the wire messages of [`crate::proto`] and the Rust types of
//! [`crate::control`], in both directions, including how a [`ControlError`] travels as a
//! gRPC status (code, text and a machine-readable detail).

use std::time::Duration;

use prost::Message;
use tonic::{Code, Status};

use crate::control::{ControlError, DeviceStatus, ShutdownMode, VmState, VmStatus};
use crate::proto;

/// A message from the other side that cannot be turned into the Rust types.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConversionError {
    /// The VM state field holds a value this build does not know (or "unspecified").
    #[error("field {field}: unknown VM state value {value}")]
    UnknownState {
        /// Which message field held the value.
        field: &'static str,
        /// The raw enum number received.
        value: i32,
    },
    /// A graceful shutdown asked for a zero grace period.
    #[error("shutdown request: graceful shutdown needs timeout_seconds > 0")]
    ZeroGracefulTimeout,
}

/// Wire value of a [`VmState`].
pub fn state_to_proto(state: VmState) -> proto::VmState {
    match state {
        VmState::Starting => proto::VmState::Starting,
        VmState::Running => proto::VmState::Running,
        VmState::Paused => proto::VmState::Paused,
        VmState::ShuttingDown => proto::VmState::ShuttingDown,
        VmState::Stopped => proto::VmState::Stopped,
    }
}

/// [`VmState`] from its raw wire value; `field` names the field for the error.
pub fn state_from_proto(value: i32, field: &'static str) -> Result<VmState, ConversionError> {
    match proto::VmState::try_from(value) {
        Ok(proto::VmState::Starting) => Ok(VmState::Starting),
        Ok(proto::VmState::Running) => Ok(VmState::Running),
        Ok(proto::VmState::Paused) => Ok(VmState::Paused),
        Ok(proto::VmState::ShuttingDown) => Ok(VmState::ShuttingDown),
        Ok(proto::VmState::Stopped) => Ok(VmState::Stopped),
        Ok(proto::VmState::Unspecified) | Err(_) => {
            Err(ConversionError::UnknownState { field, value })
        }
    }
}

/// Wire form of a status snapshot.
pub fn status_to_proto(status: &VmStatus) -> proto::StatusReply {
    proto::StatusReply {
        name: status.name.clone(),
        state: state_to_proto(status.state) as i32,
        vcpus: status.vcpus,
        memory_mib: status.memory_mib,
        devices: status
            .devices
            .iter()
            .map(|d| proto::Device {
                kind: d.kind.clone(),
                id: d.id.clone(),
                mac: d.mac.clone(),
                backend: d.backend.clone(),
                read_only: d.read_only,
            })
            .collect(),
        uptime_ms: u64::try_from(status.uptime.as_millis()).unwrap_or(u64::MAX),
        backend: status.backend.clone(),
        vcpu_affinity: status
            .vcpu_affinity
            .iter()
            .map(|cpus| proto::VcpuAffinity {
                host_cpus: cpus.clone(),
            })
            .collect(),
    }
}

/// Status snapshot from its wire form.
pub fn status_from_proto(reply: proto::StatusReply) -> Result<VmStatus, ConversionError> {
    Ok(VmStatus {
        state: state_from_proto(reply.state, "StatusReply.state")?,
        name: reply.name,
        vcpus: reply.vcpus,
        memory_mib: reply.memory_mib,
        devices: reply
            .devices
            .into_iter()
            .map(|d| DeviceStatus {
                kind: d.kind,
                id: d.id,
                mac: d.mac,
                backend: d.backend,
                read_only: d.read_only,
            })
            .collect(),
        uptime: Duration::from_millis(reply.uptime_ms),
        backend: reply.backend,
        vcpu_affinity: reply
            .vcpu_affinity
            .into_iter()
            .map(|vcpu| vcpu.host_cpus)
            .collect(),
    })
}

/// Wire form of a shutdown mode. A graceful timeout is sent in whole seconds, rounded
/// up (so a sub-second grace period is not turned into zero) and capped at `u32::MAX`.
pub fn shutdown_to_proto(mode: ShutdownMode) -> proto::ShutdownRequest {
    match mode {
        ShutdownMode::Forced => proto::ShutdownRequest {
            graceful: false,
            timeout_seconds: 0,
        },
        ShutdownMode::Graceful { timeout } => {
            let mut secs = timeout.as_secs();
            if timeout.subsec_nanos() > 0 {
                secs = secs.saturating_add(1);
            }
            proto::ShutdownRequest {
                graceful: true,
                timeout_seconds: u32::try_from(secs).unwrap_or(u32::MAX),
            }
        }
    }
}

/// Shutdown mode from its wire form.
pub fn shutdown_from_proto(
    request: &proto::ShutdownRequest,
) -> Result<ShutdownMode, ConversionError> {
    if !request.graceful {
        return Ok(ShutdownMode::Forced);
    }
    if request.timeout_seconds == 0 {
        return Err(ConversionError::ZeroGracefulTimeout);
    }
    Ok(ShutdownMode::Graceful {
        timeout: Duration::from_secs(u64::from(request.timeout_seconds)),
    })
}

/// The gRPC status code a [`ControlError`] is reported with.
pub fn control_error_code(error: &ControlError) -> Code {
    match error {
        ControlError::InvalidState(_) => Code::FailedPrecondition,
        ControlError::VcpuUnresponsive { .. } => Code::Unavailable,
        ControlError::Internal(_) => Code::Internal,
    }
}

/// A gRPC status for a refused request: the code of [`control_error_code`], a message
/// naming the RPC and the cause, and a [`proto::ControlErrorDetail`] in the details so
/// the client can rebuild the exact error.
pub fn control_error_to_status(rpc: &str, error: &ControlError) -> Status {
    use proto::control_error_detail::Kind;
    let kind = match error {
        ControlError::InvalidState(state) => Kind::InvalidState(state_to_proto(*state) as i32),
        ControlError::VcpuUnresponsive { index, reason } => {
            Kind::VcpuUnresponsive(proto::VcpuUnresponsive {
                index: *index,
                reason: reason.clone(),
            })
        }
        ControlError::Internal(text) => Kind::Internal(text.clone()),
    };
    let detail = proto::ControlErrorDetail { kind: Some(kind) };
    Status::with_details(
        control_error_code(error),
        format!("{rpc}: {error}"),
        detail.encode_to_vec().into(),
    )
}

/// The [`ControlError`] carried in a status built by [`control_error_to_status`], or
/// `None` when the status has no (valid) detail, e.g. a transport error.
pub fn control_error_from_status(status: &Status) -> Option<ControlError> {
    use proto::control_error_detail::Kind;
    if status.details().is_empty() {
        return None;
    }
    let detail = proto::ControlErrorDetail::decode(status.details()).ok()?;
    match detail.kind? {
        Kind::InvalidState(value) => state_from_proto(value, "ControlErrorDetail.invalid_state")
            .ok()
            .map(ControlError::InvalidState),
        Kind::VcpuUnresponsive(v) => Some(ControlError::VcpuUnresponsive {
            index: v.index,
            reason: v.reason,
        }),
        Kind::Internal(text) => Some(ControlError::Internal(text)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_STATES: [VmState; 5] = [
        VmState::Starting,
        VmState::Running,
        VmState::Paused,
        VmState::ShuttingDown,
        VmState::Stopped,
    ];

    #[test]
    fn every_state_round_trips() {
        for state in ALL_STATES {
            let wire = state_to_proto(state) as i32;
            assert_eq!(state_from_proto(wire, "f"), Ok(state));
        }
    }

    #[test]
    fn unspecified_and_unknown_states_are_refused_with_the_field() {
        assert_eq!(
            state_from_proto(0, "StatusReply.state"),
            Err(ConversionError::UnknownState {
                field: "StatusReply.state",
                value: 0
            })
        );
        let err = state_from_proto(99, "StatusReply.state").unwrap_err();
        assert_eq!(
            err.to_string(),
            "field StatusReply.state: unknown VM state value 99"
        );
    }

    #[test]
    fn status_round_trips() {
        let status = VmStatus {
            name: "vm1".into(),
            state: VmState::Paused,
            vcpus: 3,
            memory_mib: 1024,
            devices: vec![DeviceStatus {
                kind: "virtio-net".into(),
                id: "net0".into(),
                mac: Some("52:54:00:01:02:03".into()),
                backend: "tap0".into(),
                read_only: false,
            }],
            uptime: Duration::from_millis(12_345),
            backend: "kvm".into(),
            vcpu_affinity: vec![vec![2], vec![], vec![3, 5]],
        };
        assert_eq!(status_from_proto(status_to_proto(&status)), Ok(status));
    }

    #[test]
    fn graceful_timeout_is_rounded_up_to_whole_seconds() {
        let req = shutdown_to_proto(ShutdownMode::Graceful {
            timeout: Duration::from_millis(1500),
        });
        assert!(req.graceful);
        assert_eq!(req.timeout_seconds, 2);
        let req = shutdown_to_proto(ShutdownMode::Graceful {
            timeout: Duration::from_millis(1),
        });
        assert_eq!(req.timeout_seconds, 1);
        let req = shutdown_to_proto(ShutdownMode::Graceful {
            timeout: Duration::from_secs(u64::MAX),
        });
        assert_eq!(req.timeout_seconds, u32::MAX);
    }

    #[test]
    fn shutdown_modes_round_trip_and_zero_grace_is_refused() {
        let graceful = ShutdownMode::Graceful {
            timeout: Duration::from_secs(7),
        };
        assert_eq!(
            shutdown_from_proto(&shutdown_to_proto(graceful)),
            Ok(graceful)
        );
        assert_eq!(
            shutdown_from_proto(&shutdown_to_proto(ShutdownMode::Forced)),
            Ok(ShutdownMode::Forced)
        );
        let zero = proto::ShutdownRequest {
            graceful: true,
            timeout_seconds: 0,
        };
        assert_eq!(
            shutdown_from_proto(&zero),
            Err(ConversionError::ZeroGracefulTimeout)
        );
        let forced_with_timeout = proto::ShutdownRequest {
            graceful: false,
            timeout_seconds: 9,
        };
        assert_eq!(
            shutdown_from_proto(&forced_with_timeout),
            Ok(ShutdownMode::Forced)
        );
    }

    #[test]
    fn control_errors_survive_a_status_round_trip() {
        let errors = [
            ControlError::InvalidState(VmState::Paused),
            ControlError::VcpuUnresponsive {
                index: 2,
                reason: "no ack in 1s".into(),
            },
            ControlError::Internal("event loop gone".into()),
        ];
        let codes = [Code::FailedPrecondition, Code::Unavailable, Code::Internal];
        for (error, code) in errors.into_iter().zip(codes) {
            let status = control_error_to_status("Pause", &error);
            assert_eq!(status.code(), code);
            assert_eq!(status.message(), format!("Pause: {error}"));
            assert_eq!(control_error_from_status(&status), Some(error));
        }
    }

    #[test]
    fn status_without_detail_has_no_control_error() {
        assert_eq!(
            control_error_from_status(&Status::unavailable("gone")),
            None
        );
        let garbage = Status::with_details(Code::Internal, "x", vec![0xff, 0xff].into());
        assert_eq!(control_error_from_status(&garbage), None);
    }
}
