//! `VirtualMachine` → `VirtualMachineInstance`: applies the run strategy (create, delete or
//! leave the instance), keeps the VM's status and Events, and on deletion stops the
//! instance gracefully before letting the VM go.

use std::sync::Arc;
use std::time::Duration;

use ironvisor_crds::v1alpha1::{VirtualMachine, VirtualMachineInstance};
use ironvisor_crds::{defaults, instancetype};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, PostParams, Preconditions};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use tracing::{debug, info, instrument, warn};

use crate::context::{
    apply_status, ensure_finalizer, key, kube_error, measured, namespace_and_uid, now,
    remove_finalizer, Context, ReconcileError,
};
use crate::metrics::ControllerKind;
use crate::vm_sizing::{resolve as resolve_sizing, Sizing};
use crate::vm_status::{vm_status, VmObservation};
use crate::vm_strategy::{decide, effective_strategy, InstanceView, VmAction};
use ironvisor_crds::cluster::VM_FINALIZER;

/// How often a VM waiting for its instance to go away looks again.
const WAIT_POLL: Duration = Duration::from_secs(2);

/// Reconciles one VM (entry point for `kube::runtime::Controller`).
pub async fn reconcile(
    vm: Arc<VirtualMachine>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    let object = key(vm.as_ref());
    measured(
        &ctx,
        ControllerKind::VirtualMachine,
        &object,
        reconcile_inner(&vm, &ctx),
    )
    .await
}

/// Requeue policy after an error.
pub fn error_policy(
    _vm: Arc<VirtualMachine>,
    error: &ReconcileError,
    _ctx: Arc<Context>,
) -> Action {
    if error.is_expected() {
        debug!(%error, "virtual machine reconcile refused; its namespace is being deleted");
    } else {
        warn!(%error, "virtual machine reconcile failed");
    }
    Action::requeue(error.retry_after())
}

/// The instance a VM creates: its template, sized and completed by `sizing`, defaulted,
/// owned by the VM.
pub fn instance_for(
    vm: &VirtualMachine,
    sizing: &Sizing,
) -> Result<VirtualMachineInstance, ReconcileError> {
    let object = key(vm);
    let name = vm
        .metadata
        .name
        .clone()
        .ok_or_else(|| ReconcileError::Metadata {
            object: object.clone(),
            field: "name",
        })?;
    let uid = vm.uid().ok_or_else(|| ReconcileError::Metadata {
        object,
        field: "uid",
    })?;
    let template = &vm.spec.template;
    let mut spec = template.spec.clone();
    instancetype::expand(
        &mut spec,
        sizing.instancetype.as_ref(),
        sizing
            .preference
            .as_ref()
            .map(|(name, spec)| (name.as_str(), spec)),
    )
    .map_err(|source| ReconcileError::Instancetype {
        object: key(vm),
        source,
    })?;
    defaults::apply_instance_spec(&mut spec);
    let mut vmi = VirtualMachineInstance::new(&name, spec);
    let template_meta = template.metadata.clone().unwrap_or_default();
    vmi.metadata = ObjectMeta {
        name: Some(name.clone()),
        namespace: vm.metadata.namespace.clone(),
        labels: (!template_meta.labels.is_empty()).then_some(template_meta.labels),
        annotations: (!template_meta.annotations.is_empty()).then_some(template_meta.annotations),
        owner_references: Some(vec![OwnerReference {
            api_version: VirtualMachine::api_version(&()).into_owned(),
            kind: VirtualMachine::kind(&()).into_owned(),
            name,
            uid,
            controller: Some(true),
            block_owner_deletion: Some(true),
        }]),
        ..ObjectMeta::default()
    };
    Ok(vmi)
}

fn owned_by(vmi: &VirtualMachineInstance, vm: &VirtualMachine) -> bool {
    let Some(uid) = vm.uid() else {
        return false;
    };
    vmi.owner_references()
        .iter()
        .any(|owner| owner.controller == Some(true) && owner.uid == uid)
}

#[instrument(skip_all, fields(vm = %key(vm)))]
async fn reconcile_inner(vm: &VirtualMachine, ctx: &Context) -> Result<Action, ReconcileError> {
    let object = key(vm);
    let (namespace, uid) = namespace_and_uid(vm)?;
    if ctx.cached_before_own_write(vm, &uid) {
        return Ok(Action::await_change());
    }
    let vms: Api<VirtualMachine> = Api::namespaced(ctx.client.clone(), &namespace);
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(ctx.client.clone(), &namespace);
    let deleting = vm.meta().deletion_timestamp.is_some();
    let found = vmis
        .get_opt(&vm.name_any())
        .await
        .map_err(kube_error("reading the instance of", &object))?;
    let instance = match found {
        Some(vmi) if owned_by(&vmi, vm) => Some(vmi),
        Some(_) => {
            ctx.event(
                &vm.object_ref(&()),
                true,
                "InstanceNotOwned",
                format!(
                    "an instance named {} exists and belongs to something else; it is left alone",
                    vm.name_any()
                ),
            );
            None
        }
        None => None,
    };
    if !deleting {
        ensure_finalizer(&ctx.own_writes, &vms, vm, VM_FINALIZER).await?;
    }

    let now = now();
    let status = vm_status(&VmObservation {
        current: vm.status.as_ref(),
        generation: vm.metadata.generation,
        deleting,
        instance: instance.as_ref(),
        now: &now,
    });
    let retry_after = status
        .start_failure
        .as_ref()
        .and_then(|f| f.retry_after_timestamp.as_ref())
        .map(|t| t.0.as_second());
    let view = instance.as_ref().map(|vmi| InstanceView {
        phase: vmi.status.as_ref().and_then(|s| s.phase),
        deleting: vmi.meta().deletion_timestamp.is_some(),
    });
    let action = decide(
        effective_strategy(&vm.spec),
        deleting,
        view,
        retry_after,
        now.0.as_second(),
    );
    if vm.status.as_ref() != Some(&status) && !matches!(action, VmAction::RemoveFinalizer) {
        apply_status(&ctx.own_writes, &vms, vm, &status).await?;
    }
    match action {
        VmAction::Nothing => Ok(match view {
            Some(InstanceView { deleting: true, .. }) => Action::requeue(WAIT_POLL),
            _ => Action::await_change(),
        }),
        VmAction::CreateInstance => {
            create_instance(ctx, vm, &vmis).await?;
            Ok(Action::await_change())
        }
        VmAction::DeleteInstance(cause) => {
            if let Some(vmi) = &instance {
                delete_instance(ctx, vm, &vmis, vmi, cause.reason()).await?;
            }
            Ok(Action::requeue(WAIT_POLL))
        }
        VmAction::BackOff { until_unix } => {
            let wait = u64::try_from(until_unix - now.0.as_second())
                .unwrap_or(1)
                .max(1);
            Ok(Action::requeue(Duration::from_secs(wait)))
        }
        VmAction::RemoveFinalizer => {
            remove_finalizer(&ctx.own_writes, &vms, vm, VM_FINALIZER).await?;
            Ok(Action::await_change())
        }
    }
}

async fn create_instance(
    ctx: &Context,
    vm: &VirtualMachine,
    vmis: &Api<VirtualMachineInstance>,
) -> Result<(), ReconcileError> {
    let sized = match resolve_sizing(&ctx.client, vm).await {
        Ok(sizing) => instance_for(vm, &sizing),
        Err(error) => Err(error),
    };
    let desired = match sized {
        Ok(desired) => desired,
        Err(error @ ReconcileError::Instancetype { .. }) => {
            ctx.event(
                &vm.object_ref(&()),
                true,
                "InstancetypeNotUsable",
                error.to_string(),
            );
            return Err(error);
        }
        Err(error) => return Err(error),
    };
    match vmis.create(&PostParams::default(), &desired).await {
        Ok(created) => {
            info!(uid = ?created.uid(), "created the instance");
            ctx.event(
                &vm.object_ref(&()),
                false,
                "SuccessfulCreate",
                format!("Created virtual machine instance {}", created.name_any()),
            );
            Ok(())
        }
        // The previous instance is still being deleted, or the cache lagged: look again.
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(source) => {
            ctx.event(
                &vm.object_ref(&()),
                true,
                "FailedCreate",
                format!("Creating the instance failed: {source}"),
            );
            Err(ReconcileError::Kube {
                action: "creating the instance of",
                object: key(vm),
                source,
            })
        }
    }
}

async fn delete_instance(
    ctx: &Context,
    vm: &VirtualMachine,
    vmis: &Api<VirtualMachineInstance>,
    vmi: &VirtualMachineInstance,
    reason: &str,
) -> Result<(), ReconcileError> {
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: vmi.uid(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match vmis.delete(&vmi.name_any(), &params).await {
        Ok(_) => {
            ctx.event(
                &vm.object_ref(&()),
                false,
                reason,
                format!("Deleting virtual machine instance {}", vmi.name_any()),
            );
            Ok(())
        }
        Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => Ok(()),
        Err(source) => Err(ReconcileError::Kube {
            action: "deleting the instance of",
            object: key(vm),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ironvisor_crds::v1alpha1::{
        TemplateMetadata, VirtualMachineInstanceTemplateSpec, VirtualMachineSpec,
    };
    use std::collections::BTreeMap;

    #[test]
    fn instances_copy_the_template_and_are_owned_by_the_vm() {
        let mut vm = VirtualMachine::new(
            "small",
            VirtualMachineSpec {
                template: VirtualMachineInstanceTemplateSpec {
                    metadata: Some(TemplateMetadata {
                        labels: BTreeMap::from([("app".into(), "small".into())]),
                        ..TemplateMetadata::default()
                    }),
                    spec: Default::default(),
                },
                ..VirtualMachineSpec::default()
            },
        );
        vm.metadata.namespace = Some("ns".into());
        vm.metadata.uid = Some("vm-uid".into());
        let vmi = instance_for(&vm, &Sizing::default()).unwrap();
        assert_eq!(vmi.metadata.name.as_deref(), Some("small"));
        assert_eq!(vmi.metadata.namespace.as_deref(), Some("ns"));
        assert_eq!(vmi.labels()["app"], "small");
        assert!(owned_by(&vmi, &vm));
        assert_eq!(
            vmi.spec.termination_grace_period_seconds,
            Some(defaults::DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS),
            "defaults are applied"
        );
        vm.metadata.uid = Some("other".into());
        assert!(!owned_by(&vmi, &vm));
    }
}
