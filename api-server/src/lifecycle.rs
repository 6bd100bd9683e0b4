//! `start`, `stop` and `restart` of a `VirtualMachine`: what each means under each run
//! strategy ([`plan`], a pure function) and carrying it out against the cluster
//! ([`carry_out`]). The controller does the rest: a run strategy changed to `Always`
//! creates the instance, `Halted` deletes it, and a deleted instance of an `Always` or
//! `RerunOnFailure` machine is created again.
//!
//! | strategy | start | stop | restart |
//! |---|---|---|---|
//! | `Halted` | → `Always` | deletes a leftover instance, else not running | refused |
//! | `Always` | already running | → `Halted` | deletes the instance |
//! | `RerunOnFailure` | recreates a finished instance | → `Halted` | deletes the instance |
//! | `Manual` | creates the instance | deletes the instance | deletes, then creates |
//! | `Once` | refused | deletes the instance | refused |
//!
//! `running: true|false` machines are switched by `running`, the field their owner uses.

use std::time::Duration;

use ironvisor_controller::vm_controller::instance_for;
use ironvisor_controller::vm_sizing::resolve as resolve_sizing;
use ironvisor_controller::vm_strategy::effective_strategy;
use ironvisor_crds::v1alpha1::{
    RunStrategy, VirtualMachine, VirtualMachineInstance, VirtualMachineInstancePhase as Phase,
};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use tracing::{info, instrument, warn, Instrument};

use crate::reply::Reply;

/// The request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    /// `start`.
    Start,
    /// `stop`, optionally with a grace period for the guest (seconds).
    Stop {
        /// Seconds the guest gets to shut down; the instance's own when None.
        grace_period_seconds: Option<i64>,
    },
    /// `restart`.
    Restart {
        /// As for stop.
        grace_period_seconds: Option<i64>,
    },
}

impl Lifecycle {
    /// The subresource's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Stop { .. } => "stop",
            Self::Restart { .. } => "restart",
        }
    }
}

/// The machine's instance as far as the plan is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Instance {
    /// None exists.
    Absent,
    /// It runs or is on its way to running.
    Live,
    /// It stopped for good (Succeeded or Failed).
    Finished,
    /// It is being deleted.
    Deleting,
}

impl Instance {
    /// From the object, if any.
    pub fn of(vmi: Option<&VirtualMachineInstance>) -> Self {
        match vmi {
            None => Self::Absent,
            Some(vmi) if vmi.metadata.deletion_timestamp.is_some() => Self::Deleting,
            Some(vmi) => match vmi.status.as_ref().and_then(|s| s.phase) {
                Some(phase) if Phase::is_final(phase) => Self::Finished,
                _ => Self::Live,
            },
        }
    }
}

/// One step of carrying a request out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Change the run strategy (or `running`).
    SetStrategy(RunStrategy),
    /// Delete the instance.
    DeleteInstance {
        /// Grace period for the guest.
        grace_period_seconds: Option<i64>,
    },
    /// Wait for the instance to be gone, then create it from the template (in the
    /// background: a graceful stop can take longer than a request may).
    CreateInstanceWhenGone,
}

/// What `request` means for a machine with `strategy` whose instance is `instance`.
pub fn plan(
    request: Lifecycle,
    strategy: RunStrategy,
    instance: Instance,
    what: &str,
) -> Result<Vec<Step>, Reply> {
    use Instance::*;
    use RunStrategy::*;
    let running = || Reply::conflict(format!("{what} is already running"));
    let not_running = |hint: &str| Reply::conflict(format!("{what} is not running{hint}"));
    let unsupported = |strategy: &str| {
        Reply::conflict(format!(
            "{what}: runStrategy {strategy} does not support {} requests",
            request.name()
        ))
    };
    match request {
        Lifecycle::Start => match (strategy, instance) {
            (Halted, _) => Ok(vec![Step::SetStrategy(Always)]),
            (Once, _) => Err(unsupported("Once")),
            (_, Live) => Err(running()),
            (Always, _) => Err(Reply::conflict(format!(
                "{what} is already starting (runStrategy Always keeps it running)"
            ))),
            (RerunOnFailure, Finished) => Ok(vec![Step::DeleteInstance {
                grace_period_seconds: None,
            }]),
            (RerunOnFailure, _) => Err(Reply::conflict(format!("{what} is already starting"))),
            (Manual, Finished) => Ok(vec![
                Step::DeleteInstance {
                    grace_period_seconds: None,
                },
                Step::CreateInstanceWhenGone,
            ]),
            (Manual, Absent | Deleting) => Ok(vec![Step::CreateInstanceWhenGone]),
        },
        Lifecycle::Stop {
            grace_period_seconds,
        } => {
            let delete = Step::DeleteInstance {
                grace_period_seconds,
            };
            match (strategy, instance) {
                (Always | RerunOnFailure, Live) if grace_period_seconds.is_some() => {
                    Ok(vec![Step::SetStrategy(Halted), delete])
                }
                (Always | RerunOnFailure, _) => Ok(vec![Step::SetStrategy(Halted)]),
                (_, Live | Finished) => Ok(vec![delete]),
                (_, Deleting) => Err(not_running(" (it is already stopping)")),
                (_, Absent) => Err(not_running("")),
            }
        }
        Lifecycle::Restart {
            grace_period_seconds,
        } => {
            let delete = Step::DeleteInstance {
                grace_period_seconds,
            };
            match (strategy, instance) {
                (Halted, _) => Err(Reply::conflict(format!(
                    "{what} is stopped (runStrategy Halted): start it instead"
                ))),
                (Once, _) => Err(unsupported("Once")),
                (_, Absent | Deleting) => Err(not_running(" (start it instead)")),
                (Manual, _) => Ok(vec![delete, Step::CreateInstanceWhenGone]),
                (Always | RerunOnFailure, _) => Ok(vec![delete]),
            }
        }
    }
}

/// Why carrying out failed, as the answer to give.
fn kube_reply(action: &str, what: &str, error: kube::Error) -> Reply {
    match error {
        kube::Error::Api(status) if status.code == 404 => {
            Reply::not_found(format!("{what} not found"))
        }
        kube::Error::Api(status) if status.code == 409 => Reply::conflict(format!(
            "{what} changed while {action}; try again ({})",
            status.message
        )),
        kube::Error::Api(status) if status.code == 403 => Reply::internal(format!(
            "the api-server may not {action} {what}: {}",
            status.message
        )),
        other => Reply::unavailable(format!("{action} {what}: {other}")),
    }
}

/// Carries out `request` on `namespace/name`.
#[instrument(skip(client), fields(vm = %format!("{namespace}/{name}"), request = request.name()))]
pub async fn carry_out(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    request: Lifecycle,
) -> Reply {
    let what = format!("VirtualMachine {namespace}/{name}");
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), namespace);
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), namespace);
    // The controller writes the VM too (status, finalizers): a run-strategy change made on
    // a version that changed meanwhile is read, planned and tried again.
    let mut attempt = 1;
    loop {
        match attempt_once(&vms, &vmis, name, request, &what).await {
            Err(Attempt::Conflict(_)) if attempt < CONFLICT_ATTEMPTS => attempt += 1,
            Err(Attempt::Conflict(error)) => return kube_reply(request.name(), &what, error),
            Err(Attempt::Refused(reply)) => return reply,
            Ok(()) => break,
        }
    }
    info!("accepted");
    Reply::accepted(match request {
        Lifecycle::Start => format!("{what} is starting"),
        Lifecycle::Stop { .. } => format!("{what} is stopping"),
        Lifecycle::Restart { .. } => format!("{what} is restarting"),
    })
}

/// How often a request is tried when the VM keeps changing under it.
const CONFLICT_ATTEMPTS: u32 = 5;

/// Why one attempt did not carry the request out.
enum Attempt {
    /// The VM changed between read and write: try again.
    Conflict(kube::Error),
    /// The answer to give.
    Refused(Reply),
}

/// Reads the VM and its instance, plans and carries out the steps.
async fn attempt_once(
    vms: &Api<VirtualMachine>,
    vmis: &Api<VirtualMachineInstance>,
    name: &str,
    request: Lifecycle,
    what: &str,
) -> Result<(), Attempt> {
    let refused = Attempt::Refused;
    let vm = match vms.get_opt(name).await {
        Ok(Some(vm)) => vm,
        Ok(None) => return Err(refused(Reply::not_found(format!("{what} not found")))),
        Err(error) => return Err(refused(kube_reply("reading", what, error))),
    };
    let vmi = vmis
        .get_opt(name)
        .await
        .map_err(|error| refused(kube_reply("reading the instance of", what, error)))?;
    let strategy = effective_strategy(&vm.spec);
    let steps = plan(request, strategy, Instance::of(vmi.as_ref()), what).map_err(refused)?;
    for step in steps {
        let result = match step {
            Step::SetStrategy(target) => match set_strategy(vms, &vm, target).await {
                // 409: a conflict; 422: the patch's test failed, the field changed.
                Err(kube::Error::Api(status)) if matches!(status.code, 409 | 422) => {
                    return Err(Attempt::Conflict(kube::Error::Api(status)))
                }
                other => other,
            },
            Step::DeleteInstance {
                grace_period_seconds,
            } => delete_instance(vmis, name, grace_period_seconds).await,
            Step::CreateInstanceWhenGone => {
                let client = vms.clone().into_client();
                let sized = match resolve_sizing(&client, &vm).await {
                    Ok(sizing) => instance_for(&vm, &sizing),
                    Err(error) => Err(error),
                };
                let instance =
                    sized.map_err(|error| refused(Reply::internal(format!("{what}: {error}"))))?;
                tokio::spawn(
                    create_when_gone(vmis.clone(), instance, what.to_string()).in_current_span(),
                );
                Ok(())
            }
        };
        result.map_err(|error| refused(kube_reply(request.name(), what, error)))?;
    }
    Ok(())
}

/// Sets the run strategy (or `running`, if the machine uses it). A JSON patch whose `test`
/// operation checks the field still holds what was read: a concurrent change of that field
/// fails it (and the request is planned again), while the controller's writes of status
/// and finalizers do not get in the way.
async fn set_strategy(
    vms: &Api<VirtualMachine>,
    vm: &VirtualMachine,
    target: RunStrategy,
) -> Result<(), kube::Error> {
    let name = vm.metadata.name.as_deref().unwrap_or_default();
    let patch: json_patch::Patch =
        serde_json::from_value(strategy_patch(vm, target)).map_err(kube::Error::SerdeError)?;
    vms.patch(name, &PatchParams::default(), &Patch::<()>::Json(patch))
        .await?;
    Ok(())
}

/// The JSON patch operations of [`set_strategy`].
fn strategy_patch(vm: &VirtualMachine, target: RunStrategy) -> serde_json::Value {
    match (vm.spec.run_strategy, vm.spec.running) {
        (Some(current), _) => json!([
            {"op": "test", "path": "/spec/runStrategy", "value": current},
            {"op": "replace", "path": "/spec/runStrategy", "value": target},
        ]),
        (None, Some(running)) if matches!(target, RunStrategy::Always | RunStrategy::Halted) => {
            json!([
                {"op": "test", "path": "/spec/running", "value": running},
                {"op": "replace", "path": "/spec/running", "value": target == RunStrategy::Always},
            ])
        }
        (None, Some(running)) => json!([
            {"op": "test", "path": "/spec/running", "value": running},
            {"op": "remove", "path": "/spec/running"},
            {"op": "add", "path": "/spec/runStrategy", "value": target},
        ]),
        (None, None) => json!([{"op": "add", "path": "/spec/runStrategy", "value": target}]),
    }
}

async fn delete_instance(
    vmis: &Api<VirtualMachineInstance>,
    name: &str,
    grace_period_seconds: Option<i64>,
) -> Result<(), kube::Error> {
    let params = DeleteParams {
        grace_period_seconds: grace_period_seconds.and_then(|s| u32::try_from(s).ok()),
        ..DeleteParams::default()
    };
    match vmis.delete(name, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(error) => Err(error),
    }
}

/// How long a replaced instance may take to go (its guest's grace period and the pod's).
const GONE_TIMEOUT: Duration = Duration::from_secs(600);

async fn create_when_gone(
    vmis: Api<VirtualMachineInstance>,
    instance: VirtualMachineInstance,
    what: String,
) {
    let name = instance.metadata.name.clone().unwrap_or_default();
    let deadline = tokio::time::Instant::now() + GONE_TIMEOUT;
    loop {
        match vmis.get_opt(&name).await {
            Ok(None) => break,
            Ok(Some(_)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Ok(Some(_)) => {
                warn!(%what, "the old instance did not go within {GONE_TIMEOUT:?}; not starting");
                return;
            }
            Err(error) => {
                warn!(%what, %error, "cannot tell whether the old instance is gone; not starting");
                return;
            }
        }
    }
    match vmis.create(&PostParams::default(), &instance).await {
        Ok(_) => info!(%what, "instance created"),
        Err(error) => warn!(%what, %error, "creating the instance failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Instance::*;
    use RunStrategy::*;

    const WHAT: &str = "VirtualMachine default/small";

    fn refused(request: Lifecycle, strategy: RunStrategy, instance: Instance) -> String {
        plan(request, strategy, instance, WHAT).unwrap_err().message
    }

    #[test]
    fn start_follows_the_strategy() {
        assert_eq!(
            plan(Lifecycle::Start, Halted, Absent, WHAT),
            Ok(vec![Step::SetStrategy(Always)])
        );
        assert!(refused(Lifecycle::Start, Always, Live).contains("already running"));
        assert!(refused(Lifecycle::Start, Once, Absent).contains("Once does not support start"));
        assert_eq!(
            plan(Lifecycle::Start, Manual, Absent, WHAT),
            Ok(vec![Step::CreateInstanceWhenGone])
        );
        assert_eq!(
            plan(Lifecycle::Start, RerunOnFailure, Finished, WHAT)
                .unwrap()
                .len(),
            1
        );
        assert!(refused(Lifecycle::Start, Manual, Live).contains("already running"));
    }

    #[test]
    fn stop_follows_the_strategy() {
        let stop = Lifecycle::Stop {
            grace_period_seconds: None,
        };
        assert_eq!(
            plan(stop, Always, Live, WHAT),
            Ok(vec![Step::SetStrategy(Halted)])
        );
        assert!(refused(stop, Halted, Absent).contains("is not running"));
        assert!(refused(stop, Manual, Deleting).contains("already stopping"));
        assert_eq!(
            plan(stop, Manual, Live, WHAT),
            Ok(vec![Step::DeleteInstance {
                grace_period_seconds: None
            }])
        );
        let now = Lifecycle::Stop {
            grace_period_seconds: Some(0),
        };
        assert_eq!(
            plan(now, Always, Live, WHAT),
            Ok(vec![
                Step::SetStrategy(Halted),
                Step::DeleteInstance {
                    grace_period_seconds: Some(0)
                }
            ])
        );
    }

    #[test]
    fn the_strategy_patch_tests_the_field_it_changes() {
        let mut vm = VirtualMachine::new("small", Default::default());
        vm.spec.run_strategy = Some(Halted);
        assert_eq!(
            strategy_patch(&vm, Always),
            json!([
                {"op": "test", "path": "/spec/runStrategy", "value": "Halted"},
                {"op": "replace", "path": "/spec/runStrategy", "value": "Always"},
            ])
        );
        vm.spec.run_strategy = None;
        vm.spec.running = Some(false);
        assert_eq!(strategy_patch(&vm, Always)[1]["value"], json!(true));
        assert_eq!(strategy_patch(&vm, Manual)[2]["value"], json!("Manual"));
        vm.spec.running = None;
        assert_eq!(strategy_patch(&vm, Always)[0]["op"], "add");
        for target in [Always, Halted, Manual] {
            let patch: json_patch::Patch =
                serde_json::from_value(strategy_patch(&vm, target)).unwrap();
            assert!(!patch.0.is_empty());
        }
    }

    #[test]
    fn restart_needs_a_running_machine() {
        let restart = Lifecycle::Restart {
            grace_period_seconds: None,
        };
        assert!(refused(restart, Always, Absent).contains("start it instead"));
        assert!(refused(restart, Halted, Live).contains("start it instead"));
        assert_eq!(plan(restart, Always, Live, WHAT).unwrap().len(), 1);
        assert_eq!(
            plan(restart, Manual, Live, WHAT).unwrap().last(),
            Some(&Step::CreateInstanceWhenGone)
        );
    }
}
