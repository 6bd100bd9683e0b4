//! `VirtualMachineInstance` → launcher Pod: creates the pod, follows it into the instance's
//! status (server-side apply), publishes an Event for every transition, and on deletion
//! deletes the pod and waits until it is gone (the guest gets its grace period) before
//! letting the instance go.

use std::sync::Arc;
use std::time::Duration;

use ironvisor_crds::v1alpha1::{
    VirtualMachineInstance, VirtualMachineInstancePhase as Phase, VirtualMachineInstanceStatus,
};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use tracing::{debug, info, instrument, warn};

use crate::claims::read_claims;
use crate::context::{
    apply_status, ensure_finalizer, key, kube_error, measured, namespace_and_uid, now,
    remove_finalizer, Context, ReconcileError,
};
use crate::launcher_pod::launcher_pod;
use crate::metrics::ControllerKind;
use crate::vmi_status::{next_status, observe, Observation};
use ironvisor_crds::cluster::{
    launcher_pod_name, LABEL_CREATED_BY, LABEL_NODE_NAME, VMI_FINALIZER,
};

/// How often an instance waiting for a PersistentVolumeClaim looks for it again.
const CLAIM_POLL: Duration = Duration::from_secs(5);
/// How often a deleting instance checks whether its pod is gone (pod events also wake it).
const DELETE_POLL: Duration = Duration::from_secs(2);

/// Reconciles one instance (entry point for `kube::runtime::Controller`).
pub async fn reconcile(
    vmi: Arc<VirtualMachineInstance>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    let object = key(vmi.as_ref());
    measured(
        &ctx,
        ControllerKind::VirtualMachineInstance,
        &object,
        reconcile_inner(&vmi, &ctx),
    )
    .await
}

/// Requeue policy after an error.
pub fn error_policy(
    _vmi: Arc<VirtualMachineInstance>,
    error: &ReconcileError,
    _ctx: Arc<Context>,
) -> Action {
    if error.is_expected() {
        debug!(%error, "instance reconcile refused; its namespace is being deleted");
    } else {
        warn!(%error, "instance reconcile failed");
    }
    Action::requeue(error.retry_after())
}

#[instrument(skip_all, fields(vmi = %key(vmi)))]
async fn reconcile_inner(
    vmi: &VirtualMachineInstance,
    ctx: &Context,
) -> Result<Action, ReconcileError> {
    let object = key(vmi);
    if ctx.launcher_pods.wait_until_ready().await.is_err() {
        // Only when the pod watch has stopped (shutdown); the API server still answers.
        debug!("the launcher pod cache is gone");
    }
    let (namespace, uid) = namespace_and_uid(vmi)?;
    if ctx.cached_before_own_write(vmi, &uid) {
        return Ok(Action::await_change());
    }
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(ctx.client.clone(), &namespace);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let pod_name = launcher_pod_name(&vmi.name_any(), &uid);
    let current = vmi.status.as_ref().and_then(|s| s.phase);
    let deleting = vmi.meta().deletion_timestamp.is_some();
    // A pod missing from the cache may just not have reached it yet. Where its absence
    // decides something (the instance is deleted, or one that had a pod would be failed
    // as "gone"), ask the API server; a pending instance creates it (a 409 then reads it).
    let confirm_absence = deleting || current.is_some_and(|p| p != Phase::Pending && !p.is_final());
    let pod = launcher_pod_of(ctx, &pods, &namespace, &pod_name, &uid, confirm_absence)
        .await
        .map_err(kube_error("reading the launcher pod of", &object))?;

    if deleting {
        return finalize(vmi, ctx, &vmis, &pods, pod).await;
    }
    ensure_finalizer(&ctx.own_writes, &vmis, vmi, VMI_FINALIZER).await?;

    let mut pod = pod;
    if pod.is_none() && matches!(current, None | Some(Phase::Pending)) {
        let claims_api: Api<PersistentVolumeClaim> =
            Api::namespaced(ctx.client.clone(), &namespace);
        let claims = match read_claims(&claims_api, &namespace, &vmi.spec)
            .await
            .map_err(kube_error("reading the PersistentVolumeClaims of", &object))?
        {
            Ok(claims) => claims,
            Err(error) => {
                // Not an error of the instance: the claim may be created later.
                let observation = unplaced(Phase::Pending, error.reason(), error.to_string());
                write_status(ctx, vmi, &vmis, &observation).await?;
                return Ok(Action::requeue(CLAIM_POLL));
            }
        };
        match launcher_pod(vmi, &ctx.pod_settings, &claims) {
            Ok(desired) => {
                let created = Arc::new(create_pod(ctx, vmi, &pods, &desired).await?);
                let reference = ObjectRef::new(&pod_name).within(&namespace);
                ctx.own_writes.created_pod(reference, created.clone());
                pod = Some(created);
            }
            Err(error) => {
                let observation = unplaced(Phase::Failed, error.reason(), error.to_string());
                write_status(ctx, vmi, &vmis, &observation).await?;
                return Ok(Action::await_change());
            }
        }
    }
    if current.is_some_and(Phase::is_final) {
        // Written once, with its reason and message; an observation of a finished
        // instance knows neither and would wipe them.
        return Ok(Action::await_change());
    }
    let observation = observe(current, pod.as_deref());
    if let Some(node) = &observation.node_name {
        label_node(ctx, vmi, &vmis, node).await?;
    }
    write_status(ctx, vmi, &vmis, &observation).await?;
    Ok(Action::await_change())
}

/// The instance's launcher pod (the one its UID labels), from the controller's cache, or
/// as this controller created it while the cache does not show it yet; when neither has
/// it and `confirm_absence` is set, from the API server.
async fn launcher_pod_of(
    ctx: &Context,
    pods: &Api<Pod>,
    namespace: &str,
    pod_name: &str,
    uid: &str,
    confirm_absence: bool,
) -> Result<Option<Arc<Pod>>, kube::Error> {
    let ours = |pod: &Pod| pod.labels().get(LABEL_CREATED_BY).map(String::as_str) == Some(uid);
    let reference = ObjectRef::new(pod_name).within(namespace);
    let cached = ctx.launcher_pods.get(&reference).filter(|pod| ours(pod));
    if cached.is_some() {
        return Ok(cached);
    }
    if let Some(created) = ctx
        .own_writes
        .created_pod_not_cached(&reference)
        .filter(|pod| ours(pod))
    {
        return Ok(Some(created));
    }
    if !confirm_absence {
        return Ok(None);
    }
    debug!(pod = pod_name, "not in the cache; asking the API server");
    Ok(pods.get_opt(pod_name).await?.filter(ours).map(Arc::new))
}

/// An instance that has no pod, in `phase` for `reason`.
fn unplaced(phase: Phase, reason: &str, message: String) -> Observation {
    Observation {
        phase,
        reason: Some(reason.into()),
        message: Some(message),
        node_name: None,
        ready: false,
        scheduled: None,
    }
}

/// Labels the instance with its node, so the node's agent can watch just its instances.
async fn label_node(
    ctx: &Context,
    vmi: &VirtualMachineInstance,
    vmis: &Api<VirtualMachineInstance>,
    node: &str,
) -> Result<(), ReconcileError> {
    if vmi.labels().get(LABEL_NODE_NAME).map(String::as_str) == Some(node) {
        return Ok(());
    }
    let patch = serde_json::json!({"metadata": {"labels": {LABEL_NODE_NAME: node}}});
    let written = vmis
        .patch(
            &vmi.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .map_err(kube_error("labelling with its node", &key(vmi)))?;
    ctx.own_writes.wrote_object(&written);
    Ok(())
}

async fn create_pod(
    ctx: &Context,
    vmi: &VirtualMachineInstance,
    pods: &Api<Pod>,
    desired: &Pod,
) -> Result<Pod, ReconcileError> {
    let object = key(vmi);
    let name = desired.name_any();
    match pods.create(&PostParams::default(), desired).await {
        Ok(pod) => {
            info!(pod = %name, "created the launcher pod");
            ctx.event(
                &vmi.object_ref(&()),
                false,
                "SuccessfulCreate",
                format!("Created launcher pod {name}"),
            );
            for mapped in ironvisor_crds::compat::mapped_settings(&vmi.spec) {
                ctx.event(&vmi.object_ref(&()), true, mapped.reason, mapped.message);
            }
            Ok(pod)
        }
        // Made by an earlier reconcile whose result the cache had not shown yet.
        Err(kube::Error::Api(status)) if status.code == 409 => pods
            .get(&name)
            .await
            .map_err(kube_error("reading the launcher pod of", &object)),
        Err(source) => Err(ReconcileError::Kube {
            action: "creating the launcher pod of",
            object,
            source,
        }),
    }
}

/// Writes the status when it changed, with an Event for a new phase or reason.
async fn write_status(
    ctx: &Context,
    vmi: &VirtualMachineInstance,
    vmis: &Api<VirtualMachineInstance>,
    observation: &Observation,
) -> Result<(), ReconcileError> {
    let current = vmi.status.as_ref().map(controller_owned);
    let current = current.as_ref();
    let next = next_status(current, observation, &now());
    if current == Some(&next) {
        return Ok(());
    }
    let old_phase = current.and_then(|s| s.phase);
    let old_reason = current.and_then(|s| s.reason.clone());
    apply_status(&ctx.own_writes, vmis, vmi, &next).await?;
    if old_phase != Some(observation.phase) || old_reason != observation.reason {
        let (warning, reason) = event_reason(observation);
        let mut note = format!("{:?}", observation.phase);
        if let Some(node) = &observation.node_name {
            note.push_str(&format!(" on node {node}"));
        }
        if let Some(message) = &observation.message {
            note.push_str(": ");
            note.push_str(message);
        }
        ctx.event(&vmi.object_ref(&()), warning, &reason, note);
    }
    Ok(())
}

/// The part of an instance's status the controller owns: what the node agent reports
/// (isolation, guest interfaces, guest OS, launcher pid) is left out of the controller's
/// server-side apply so the two field managers never take fields from each other.
fn controller_owned(status: &VirtualMachineInstanceStatus) -> VirtualMachineInstanceStatus {
    VirtualMachineInstanceStatus {
        isolation: None,
        interfaces: Vec::new(),
        guest_os_info: None,
        launcher_pid: None,
        ..status.clone()
    }
}

/// Event type and reason for an observed state.
fn event_reason(observation: &Observation) -> (bool, String) {
    match (observation.phase, observation.reason.as_deref()) {
        (Phase::Failed, reason) => (true, reason.unwrap_or("Failed").to_string()),
        (Phase::Succeeded, _) => (false, "Succeeded".into()),
        (Phase::Running, _) => (false, "Started".into()),
        (_, Some(reason)) => (true, reason.to_string()),
        (phase, None) => (false, format!("{phase:?}")),
    }
}

/// Deletion: stop the guest by deleting the pod (its grace period lets the launcher shut
/// the guest down), then release the instance once the pod is gone.
async fn finalize(
    vmi: &VirtualMachineInstance,
    ctx: &Context,
    vmis: &Api<VirtualMachineInstance>,
    pods: &Api<Pod>,
    pod: Option<Arc<Pod>>,
) -> Result<Action, ReconcileError> {
    let object = key(vmi);
    let Some(pod) = pod else {
        remove_finalizer(&ctx.own_writes, vmis, vmi, VMI_FINALIZER).await?;
        return Ok(Action::await_change());
    };
    if pod.meta().deletion_timestamp.is_none() {
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: pod.uid(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match pods.delete(&pod.name_any(), &params).await {
            Ok(_) => {
                ctx.event(
                    &vmi.object_ref(&()),
                    false,
                    "Stopping",
                    format!("Deleting launcher pod {}", pod.name_any()),
                );
            }
            Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {}
            Err(source) => {
                return Err(ReconcileError::Kube {
                    action: "deleting the launcher pod of",
                    object,
                    source,
                })
            }
        }
    }
    Ok(Action::requeue(DELETE_POLL))
}
