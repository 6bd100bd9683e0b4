//! The run-strategy decision: given what the user asked for and what the VM's instance is
//! doing, should an instance be started, stopped, or left alone? A pure function
//! ([`plan`]) so every rule is unit-tested without processes.
//!
//! The rules follow KubeVirt:
//!
//! | strategy | starts an instance when | after the instance ends by itself |
//! |---|---|---|
//! | `Always` | always | a new one starts (backing off after repeated failures) |
//! | `RerunOnFailure` | the VM is created (or switched to it), or on `start` | a new one starts only after a failure |
//! | `Once` | the VM is created (or switched to it), or on `restart` | never restarted |
//! | `Manual` | on `start` | never restarted |
//! | `Halted` | never (a running instance is stopped) | — |
//!
//! A guest reboot (launcher exit 3) replaces the instance under every strategy but
//! `Halted`: the microVM cannot reset in place, but the guest did not ask to stop.
//! A stop request stops the instance and, once it is gone, also cancels a pending
//! failure restart.

use ironvisor_crds::v1alpha1::RunStrategy;

use crate::records::{LastExit, StateChangeRequest, StopCause, StopState};

/// The VM's instance, as far as the decision is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Instance<'a> {
    /// No instance.
    None,
    /// A launcher runs (or is being stopped).
    Active {
        /// The instance's UID.
        uid: &'a str,
        /// A stop in progress.
        stopping: Option<StopState>,
    },
    /// The instance ended (Succeeded or Failed) and was kept for inspection.
    Final {
        /// The instance's UID.
        uid: &'a str,
    },
}

/// Everything the decision looks at.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// The VM's run strategy.
    pub strategy: RunStrategy,
    /// The strategy the runtime last acted on (`None` for a new VM).
    pub observed_strategy: Option<RunStrategy>,
    /// The VM is being deleted.
    pub deleting: bool,
    /// Pending start/stop requests, oldest first.
    pub requests: &'a [StateChangeRequest],
    /// The instance.
    pub instance: Instance<'a>,
    /// How the last instance ended.
    pub last_exit: Option<&'a LastExit>,
    /// No failure restart before this time.
    pub retry_after_unix_ms: Option<i64>,
    /// Now.
    pub now_unix_ms: i64,
}

/// Why an instance is started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartReason {
    /// A `start` (or the start half of a `restart`) request.
    Requested,
    /// The VM is new, or its strategy just changed to one that starts it.
    StrategyChanged,
    /// `Always` keeps an instance running.
    AlwaysRunning,
    /// The last instance failed and the strategy restarts failed instances.
    RestartAfterFailure,
    /// The guest rebooted.
    Reboot,
}

/// What to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Nothing.
    Nothing,
    /// Start a new instance (replacing a final one).
    Start(StartReason),
    /// Stop the active instance.
    Stop {
        /// Why.
        cause: StopCause,
        /// Hard stop.
        forced: bool,
        /// Grace period override.
        grace_period_seconds: Option<u64>,
    },
    /// A failure restart is due but backing off until this time.
    BackOff {
        /// When the restart may happen (Unix milliseconds).
        until_unix_ms: i64,
    },
    /// The VM is being deleted and nothing runs any more: remove it.
    Remove,
}

/// The decision and the bookkeeping that goes with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// What to do.
    pub decision: Decision,
    /// Requests to drop from the front of the queue now (done or moot).
    pub drop_requests: usize,
    /// Further leading `Start` requests to drop once the instance is really created.
    pub consume_on_start: usize,
    /// A stop request arrived while nothing ran: the last exit no longer restarts the VM.
    pub cancel_restart: bool,
}

/// Decides what to do for one VM.
pub fn plan(inputs: &Inputs<'_>) -> Plan {
    match inputs.instance {
        Instance::Active { uid, stopping } => plan_active(inputs, uid, stopping),
        Instance::None | Instance::Final { .. } => plan_idle(inputs),
    }
}

fn plan_active(inputs: &Inputs<'_>, uid: &str, stopping: Option<StopState>) -> Plan {
    let mut out = Plan {
        decision: Decision::Nothing,
        drop_requests: 0,
        consume_on_start: 0,
        cancel_restart: false,
    };
    let stop = |cause, forced, grace_period_seconds| Decision::Stop {
        cause,
        forced,
        grace_period_seconds,
    };
    if inputs.deleting {
        if stopping.is_none() {
            out.decision = stop(StopCause::Delete, false, None);
        }
        return out;
    }
    // Drop requests that cannot apply to this instance: starts (it runs already) and
    // stops aimed at an earlier instance.
    let mut requests = inputs.requests.iter();
    let mut front = requests.next();
    while let Some(request) = front {
        let moot = match request {
            StateChangeRequest::Start => true,
            StateChangeRequest::Stop {
                uid: Some(target), ..
            } => target != uid,
            StateChangeRequest::Stop { uid: None, .. } => false,
        };
        if !moot {
            break;
        }
        out.drop_requests += 1;
        front = requests.next();
    }
    if let Some(StateChangeRequest::Stop {
        force,
        grace_period_seconds,
        ..
    }) = front
    {
        out.decision = match stopping {
            None => stop(StopCause::Request, *force, *grace_period_seconds),
            Some(current) if *force && !current.forced => {
                stop(current.cause, true, *grace_period_seconds)
            }
            Some(_) => Decision::Nothing,
        };
        return out;
    }
    if inputs.strategy == RunStrategy::Halted && stopping.is_none() {
        out.decision = stop(StopCause::RunStrategy, false, None);
    }
    out
}

fn plan_idle(inputs: &Inputs<'_>) -> Plan {
    let mut out = Plan {
        decision: Decision::Nothing,
        drop_requests: 0,
        consume_on_start: 0,
        cancel_restart: false,
    };
    // Stop requests are done once nothing runs; one arriving now cancels a restart.
    let mut rest = inputs.requests;
    while let Some((StateChangeRequest::Stop { .. }, tail)) = rest.split_first() {
        out.drop_requests += 1;
        out.cancel_restart = true;
        rest = tail;
    }
    if inputs.deleting {
        out.decision = Decision::Remove;
        return out;
    }
    let start_requests = rest
        .iter()
        .take_while(|r| **r == StateChangeRequest::Start)
        .count();
    let start_requested = start_requests > 0;
    let changed = inputs.observed_strategy != Some(inputs.strategy);
    // The last exit counts only while its instance is the one kept as final.
    let last = inputs.last_exit.filter(|exit| {
        !exit.requested
            && !out.cancel_restart
            && match inputs.instance {
                Instance::Final { uid } => uid == exit.vmi_uid,
                _ => false,
            }
    });
    let rebooted = last.is_some_and(|e| e.outcome.is_reboot());
    let failed = last.is_some_and(|e| e.outcome.is_failure());

    use RunStrategy::*;
    let reason = match inputs.strategy {
        Halted => None,
        _ if start_requested => Some(StartReason::Requested),
        _ if rebooted => Some(StartReason::Reboot),
        Always if failed => Some(StartReason::RestartAfterFailure),
        Always => Some(StartReason::AlwaysRunning),
        RerunOnFailure if failed => Some(StartReason::RestartAfterFailure),
        RerunOnFailure | Once if changed => Some(StartReason::StrategyChanged),
        RerunOnFailure | Once | Manual => None,
    };
    // A Halted VM ignores start requests (the API turns `start` on Halted into Always).
    if inputs.strategy == Halted {
        out.drop_requests += start_requests;
    }
    out.decision = match reason {
        None => Decision::Nothing,
        Some(StartReason::RestartAfterFailure) => match inputs.retry_after_unix_ms {
            Some(until) if until > inputs.now_unix_ms => Decision::BackOff {
                until_unix_ms: until,
            },
            _ => Decision::Start(StartReason::RestartAfterFailure),
        },
        Some(reason) => Decision::Start(reason),
    };
    if matches!(out.decision, Decision::Start(_)) {
        out.consume_on_start = start_requests;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::ExitOutcome;

    const NOW: i64 = 1_000_000;

    struct Case {
        strategy: RunStrategy,
        observed: Option<RunStrategy>,
        requests: Vec<StateChangeRequest>,
        last_exit: Option<LastExit>,
        retry_after: Option<i64>,
        deleting: bool,
    }

    impl Case {
        fn new(strategy: RunStrategy) -> Self {
            Self {
                strategy,
                observed: Some(strategy),
                requests: vec![],
                last_exit: None,
                retry_after: None,
                deleting: false,
            }
        }

        fn exited(mut self, outcome: ExitOutcome, requested: bool) -> Self {
            self.last_exit = Some(LastExit {
                vmi_uid: "u1".into(),
                outcome,
                requested,
                at_unix_ms: NOW,
            });
            self
        }

        fn plan(&self, instance: Instance<'_>) -> Plan {
            plan(&Inputs {
                strategy: self.strategy,
                observed_strategy: self.observed,
                deleting: self.deleting,
                requests: &self.requests,
                instance,
                last_exit: self.last_exit.as_ref(),
                retry_after_unix_ms: self.retry_after,
                now_unix_ms: NOW,
            })
        }
    }

    const FINAL: Instance<'static> = Instance::Final { uid: "u1" };
    const RUNNING: Instance<'static> = Instance::Active {
        uid: "u1",
        stopping: None,
    };

    fn stop_request(uid: Option<&str>, force: bool) -> StateChangeRequest {
        StateChangeRequest::Stop {
            uid: uid.map(str::to_string),
            force,
            grace_period_seconds: None,
        }
    }

    fn starts(plan: Plan) -> Option<StartReason> {
        match plan.decision {
            Decision::Start(reason) => Some(reason),
            _ => None,
        }
    }

    #[test]
    fn new_vms_start_for_always_rerun_and_once_only() {
        use RunStrategy::*;
        for (strategy, expected) in [
            (Always, Some(StartReason::AlwaysRunning)),
            (RerunOnFailure, Some(StartReason::StrategyChanged)),
            (Once, Some(StartReason::StrategyChanged)),
            (Manual, None),
            (Halted, None),
        ] {
            let mut case = Case::new(strategy);
            case.observed = None;
            assert_eq!(starts(case.plan(Instance::None)), expected, "{strategy:?}");
        }
    }

    #[test]
    fn restart_after_each_exit_code_follows_the_strategy() {
        use RunStrategy::*;
        // (strategy, outcome, restarts?)
        let table = [
            (Always, ExitOutcome::Code(0), true),
            (Always, ExitOutcome::Code(1), true),
            (Always, ExitOutcome::Code(4), true),
            (Always, ExitOutcome::Code(5), true),
            (Always, ExitOutcome::Signal(9), true),
            (RerunOnFailure, ExitOutcome::Code(0), false),
            (RerunOnFailure, ExitOutcome::Code(5), false),
            (RerunOnFailure, ExitOutcome::Code(1), true),
            (RerunOnFailure, ExitOutcome::Code(4), true),
            (RerunOnFailure, ExitOutcome::Signal(9), true),
            (RerunOnFailure, ExitOutcome::Vanished, true),
            (Once, ExitOutcome::Code(0), false),
            (Once, ExitOutcome::Code(1), false),
            (Once, ExitOutcome::Signal(9), false),
            (Manual, ExitOutcome::Code(0), false),
            (Manual, ExitOutcome::Code(4), false),
            (Manual, ExitOutcome::Signal(9), false),
            (Halted, ExitOutcome::Code(1), false),
        ];
        for (strategy, outcome, restarts) in table {
            let case = Case::new(strategy).exited(outcome, false);
            assert_eq!(
                starts(case.plan(FINAL)).is_some(),
                restarts,
                "{strategy:?} after {outcome:?}"
            );
        }
    }

    #[test]
    fn reboot_replaces_the_instance_except_when_halted() {
        for strategy in [
            RunStrategy::Manual,
            RunStrategy::Once,
            RunStrategy::RerunOnFailure,
        ] {
            let case = Case::new(strategy).exited(ExitOutcome::Code(3), false);
            assert_eq!(starts(case.plan(FINAL)), Some(StartReason::Reboot));
        }
        let case = Case::new(RunStrategy::Halted).exited(ExitOutcome::Code(3), false);
        assert_eq!(starts(case.plan(FINAL)), None);
    }

    #[test]
    fn failure_restarts_back_off_but_explicit_starts_do_not() {
        let mut case = Case::new(RunStrategy::Always).exited(ExitOutcome::Code(1), false);
        case.retry_after = Some(NOW + 5000);
        assert_eq!(
            case.plan(FINAL).decision,
            Decision::BackOff {
                until_unix_ms: NOW + 5000
            }
        );
        case.retry_after = Some(NOW - 1);
        assert_eq!(
            starts(case.plan(FINAL)),
            Some(StartReason::RestartAfterFailure)
        );
        let mut manual = Case::new(RunStrategy::RerunOnFailure).exited(ExitOutcome::Code(4), false);
        manual.retry_after = Some(NOW + 5000);
        manual.requests = vec![StateChangeRequest::Start];
        let plan = manual.plan(FINAL);
        assert_eq!(starts(plan), Some(StartReason::Requested));
        assert_eq!(plan.consume_on_start, 1);
    }

    #[test]
    fn manual_runs_between_start_and_stop() {
        let mut case = Case::new(RunStrategy::Manual);
        assert_eq!(case.plan(Instance::None).decision, Decision::Nothing);
        case.requests = vec![StateChangeRequest::Start];
        let plan = case.plan(Instance::None);
        assert_eq!(starts(plan), Some(StartReason::Requested));
        assert_eq!((plan.drop_requests, plan.consume_on_start), (0, 1));

        case.requests = vec![stop_request(Some("u1"), false)];
        let plan = case.plan(RUNNING);
        assert_eq!(
            plan.decision,
            Decision::Stop {
                cause: StopCause::Request,
                forced: false,
                grace_period_seconds: None
            }
        );
        // Once the instance is gone the request is dropped and nothing restarts.
        let case = Case {
            requests: vec![stop_request(Some("u1"), false)],
            ..Case::new(RunStrategy::RerunOnFailure).exited(ExitOutcome::Signal(9), true)
        };
        let plan = case.plan(FINAL);
        assert_eq!(plan.decision, Decision::Nothing);
        assert_eq!(plan.drop_requests, 1);
    }

    #[test]
    fn stop_request_while_backing_off_cancels_the_restart() {
        let mut case = Case::new(RunStrategy::RerunOnFailure).exited(ExitOutcome::Code(1), false);
        case.retry_after = Some(NOW + 10_000);
        case.requests = vec![stop_request(None, false)];
        let plan = case.plan(FINAL);
        assert_eq!(plan.decision, Decision::Nothing);
        assert!(plan.cancel_restart);
        assert_eq!(plan.drop_requests, 1);
    }

    #[test]
    fn restart_request_stops_then_starts() {
        let mut case = Case::new(RunStrategy::Manual);
        case.requests = vec![stop_request(Some("u1"), false), StateChangeRequest::Start];
        assert!(matches!(
            case.plan(RUNNING).decision,
            Decision::Stop {
                cause: StopCause::Request,
                ..
            }
        ));
        // The stop finished (requested exit), the start follows.
        let case = Case {
            requests: case.requests.clone(),
            ..Case::new(RunStrategy::Manual).exited(ExitOutcome::Code(5), true)
        };
        let plan = case.plan(FINAL);
        assert_eq!(starts(plan), Some(StartReason::Requested));
        assert_eq!((plan.drop_requests, plan.consume_on_start), (1, 1));
    }

    #[test]
    fn halted_stops_a_running_instance_and_forced_stops_escalate() {
        let case = Case::new(RunStrategy::Halted);
        assert!(matches!(
            case.plan(RUNNING).decision,
            Decision::Stop {
                cause: StopCause::RunStrategy,
                forced: false,
                ..
            }
        ));
        let graceful = StopState {
            cause: StopCause::Request,
            forced: false,
            started_unix_ms: NOW,
            kill_after_unix_ms: NOW + 1000,
        };
        let stopping = Instance::Active {
            uid: "u1",
            stopping: Some(graceful),
        };
        assert_eq!(case.plan(stopping).decision, Decision::Nothing);
        let mut forced = Case::new(RunStrategy::Manual);
        forced.requests = vec![stop_request(None, true)];
        assert!(matches!(
            forced.plan(stopping).decision,
            Decision::Stop { forced: true, .. }
        ));
    }

    #[test]
    fn stale_requests_are_dropped_while_running() {
        let mut case = Case::new(RunStrategy::Always);
        case.requests = vec![StateChangeRequest::Start, stop_request(Some("old"), false)];
        let plan = case.plan(RUNNING);
        assert_eq!(plan.decision, Decision::Nothing);
        assert_eq!(plan.drop_requests, 2);
    }

    #[test]
    fn deletion_stops_then_removes() {
        let mut case = Case::new(RunStrategy::Always);
        case.deleting = true;
        assert!(matches!(
            case.plan(RUNNING).decision,
            Decision::Stop {
                cause: StopCause::Delete,
                ..
            }
        ));
        assert_eq!(case.plan(FINAL).decision, Decision::Remove);
        assert_eq!(case.plan(Instance::None).decision, Decision::Remove);
    }
}
