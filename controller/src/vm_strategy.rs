//! The cluster's run-strategy decision for one `VirtualMachine`: create its instance,
//! delete it, or leave it. A pure function, unit tested rule by rule.
//!
//! | strategy | no instance | instance Failed | instance Succeeded |
//! |---|---|---|---|
//! | `Always` | create | delete (then create, backing off) | delete (then create) |
//! | `RerunOnFailure` | create | delete (then create, backing off) | keep: the VM stays stopped |
//! | `Once` | create | keep | keep |
//! | `Manual` | nothing (start is a request) | keep | keep |
//! | `Halted` | nothing | delete | delete |
//!
//! A live instance is deleted under `Halted` and when the VM is deleted (the instance's
//! own finalizer stops its guest gracefully first). `running: true|false` is `Always` /
//! `Halted`.

use ironvisor_crds::v1alpha1::{
    RunStrategy, VirtualMachineInstancePhase as Phase, VirtualMachineSpec,
};

/// The VM's instance, as far as the decision is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstanceView {
    /// The instance's phase (None before its first status).
    pub phase: Option<Phase>,
    /// The instance is being deleted.
    pub deleting: bool,
}

/// What to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmAction {
    /// Nothing.
    Nothing,
    /// Create the instance from the template.
    CreateInstance,
    /// Delete the instance (gracefully).
    DeleteInstance(DeleteCause),
    /// A restart is due but backs off until this Unix time (seconds).
    BackOff {
        /// When the restart may happen.
        until_unix: i64,
    },
    /// The VM is being deleted and no instance is left: drop the finalizer.
    RemoveFinalizer,
}

/// Why an instance is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteCause {
    /// The VM is being deleted.
    VmDeleted,
    /// The run strategy says the VM is stopped.
    Halted,
    /// The instance ended and the strategy starts a new one.
    Restart,
}

impl DeleteCause {
    /// Event reason.
    pub fn reason(self) -> &'static str {
        match self {
            Self::VmDeleted => "DeletingInstance",
            Self::Halted => "Stopping",
            Self::Restart => "Restarting",
        }
    }
}

/// The run strategy a spec asks for (`running` is the deprecated shorthand; default Halted).
pub fn effective_strategy(spec: &VirtualMachineSpec) -> RunStrategy {
    match (spec.run_strategy, spec.running) {
        (Some(strategy), _) => strategy,
        (None, Some(true)) => RunStrategy::Always,
        (None, Some(false) | None) => RunStrategy::Halted,
    }
}

/// Decides what to do for one VM.
pub fn decide(
    strategy: RunStrategy,
    vm_deleting: bool,
    instance: Option<InstanceView>,
    retry_after_unix: Option<i64>,
    now_unix: i64,
) -> VmAction {
    let Some(instance) = instance else {
        if vm_deleting {
            return VmAction::RemoveFinalizer;
        }
        return match strategy {
            RunStrategy::Always | RunStrategy::RerunOnFailure | RunStrategy::Once => {
                match retry_after_unix {
                    Some(until) if until > now_unix => VmAction::BackOff { until_unix: until },
                    _ => VmAction::CreateInstance,
                }
            }
            RunStrategy::Manual | RunStrategy::Halted => VmAction::Nothing,
        };
    };
    if instance.deleting {
        return VmAction::Nothing;
    }
    if vm_deleting {
        return VmAction::DeleteInstance(DeleteCause::VmDeleted);
    }
    let restart = VmAction::DeleteInstance(DeleteCause::Restart);
    match (strategy, instance.phase) {
        (RunStrategy::Halted, _) => VmAction::DeleteInstance(DeleteCause::Halted),
        (RunStrategy::Always, Some(Phase::Failed | Phase::Succeeded)) => restart,
        (RunStrategy::RerunOnFailure, Some(Phase::Failed)) => restart,
        _ => VmAction::Nothing,
    }
}

/// Seconds to wait before starting again after `consecutive_failures` failed instances
/// (the first restart is immediate, then 10 s doubling up to 5 minutes).
pub fn backoff_seconds(consecutive_failures: u32) -> i64 {
    match consecutive_failures {
        0 | 1 => 0,
        n => (10_i64 << (n - 2).min(5)).min(300),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(phase: Phase) -> Option<InstanceView> {
        Some(InstanceView {
            phase: Some(phase),
            deleting: false,
        })
    }

    #[test]
    fn running_shorthand_maps_to_strategies() {
        let mut spec = VirtualMachineSpec::default();
        assert_eq!(effective_strategy(&spec), RunStrategy::Halted);
        spec.running = Some(true);
        assert_eq!(effective_strategy(&spec), RunStrategy::Always);
        spec.running = Some(false);
        assert_eq!(effective_strategy(&spec), RunStrategy::Halted);
        spec.running = None;
        spec.run_strategy = Some(RunStrategy::Manual);
        assert_eq!(effective_strategy(&spec), RunStrategy::Manual);
    }

    #[test]
    fn strategies_that_run_create_a_missing_instance() {
        for strategy in [
            RunStrategy::Always,
            RunStrategy::RerunOnFailure,
            RunStrategy::Once,
        ] {
            assert_eq!(
                decide(strategy, false, None, None, 0),
                VmAction::CreateInstance
            );
        }
        for strategy in [RunStrategy::Manual, RunStrategy::Halted] {
            assert_eq!(decide(strategy, false, None, None, 0), VmAction::Nothing);
        }
    }

    #[test]
    fn endings_follow_the_strategy() {
        let restart = VmAction::DeleteInstance(DeleteCause::Restart);
        assert_eq!(
            decide(RunStrategy::Always, false, live(Phase::Succeeded), None, 0),
            restart
        );
        assert_eq!(
            decide(RunStrategy::Always, false, live(Phase::Failed), None, 0),
            restart
        );
        assert_eq!(
            decide(
                RunStrategy::RerunOnFailure,
                false,
                live(Phase::Failed),
                None,
                0
            ),
            restart
        );
        assert_eq!(
            decide(
                RunStrategy::RerunOnFailure,
                false,
                live(Phase::Succeeded),
                None,
                0
            ),
            VmAction::Nothing
        );
        for phase in [Phase::Failed, Phase::Succeeded] {
            assert_eq!(
                decide(RunStrategy::Once, false, live(phase), None, 0),
                VmAction::Nothing
            );
            assert_eq!(
                decide(RunStrategy::Manual, false, live(phase), None, 0),
                VmAction::Nothing
            );
        }
        assert_eq!(
            decide(RunStrategy::Always, false, live(Phase::Running), None, 0),
            VmAction::Nothing
        );
    }

    #[test]
    fn halted_and_deleted_vms_stop_their_instance_once() {
        assert_eq!(
            decide(RunStrategy::Halted, false, live(Phase::Running), None, 0),
            VmAction::DeleteInstance(DeleteCause::Halted)
        );
        assert_eq!(
            decide(RunStrategy::Always, true, live(Phase::Running), None, 0),
            VmAction::DeleteInstance(DeleteCause::VmDeleted)
        );
        let deleting = Some(InstanceView {
            phase: Some(Phase::Running),
            deleting: true,
        });
        assert_eq!(
            decide(RunStrategy::Halted, false, deleting, None, 0),
            VmAction::Nothing
        );
        assert_eq!(
            decide(RunStrategy::Always, true, None, None, 0),
            VmAction::RemoveFinalizer
        );
    }

    #[test]
    fn restarts_back_off_after_repeated_failures() {
        assert_eq!(
            decide(RunStrategy::Always, false, None, Some(110), 100),
            VmAction::BackOff { until_unix: 110 }
        );
        assert_eq!(
            decide(RunStrategy::Always, false, None, Some(100), 100),
            VmAction::CreateInstance
        );
        assert_eq!(backoff_seconds(1), 0);
        assert_eq!(backoff_seconds(2), 10);
        assert_eq!(backoff_seconds(3), 20);
        assert_eq!(backoff_seconds(30), 300);
    }
}
