//! The instances on this node: for each running one, ask its launcher (through the API
//! socket in the launcher pod's `sockets` volume) which backend runs the guest, report it
//! as `status.isolation` (server-side apply under the node agent's own field manager) and
//! publish a `SoftwareEmulation` warning Event when the guest is emulated.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use ironvisor_crds::cluster::{
    launcher_pod_name, HANDLER_FIELD_MANAGER, LABEL_CREATED_BY, LABEL_NODE_NAME,
};
use ironvisor_crds::v1alpha1::{
    IsolationMode, VirtualMachineInstance, VirtualMachineInstancePhase as Phase,
};
use ironvisor_launcher_api::{ClientOptions, LauncherClient};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::runtime::Controller;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{info, instrument, warn};

use crate::pod_volumes::launcher_api_socket;

/// How long one launcher status call may take.
const LAUNCHER_CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// How often an instance whose launcher did not answer yet is looked at again.
const RETRY: Duration = Duration::from_secs(3);

/// Why an instance could not be reconciled.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    /// An API call failed.
    #[error("{action} {object}: {source}")]
    Kube {
        /// What was being done.
        action: &'static str,
        /// `namespace/name`.
        object: String,
        /// The client error.
        source: kube::Error,
    },
}

/// What the instance reconciler shares.
pub struct InstanceContext {
    /// API client.
    pub client: Client,
    /// This node.
    pub node_name: String,
    /// The kubelet's root directory as seen by this process.
    pub kubelet_root: PathBuf,
    /// Publishes Events.
    pub recorder: Recorder,
}

impl InstanceContext {
    /// A context for `node_name`.
    pub fn new(client: Client, node_name: String, kubelet_root: PathBuf) -> Self {
        let reporter = Reporter {
            controller: HANDLER_FIELD_MANAGER.into(),
            instance: Some(node_name.clone()),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            node_name,
            kubelet_root,
        }
    }
}

/// The isolation a launcher backend name stands for.
pub fn isolation_of(backend: &str) -> IsolationMode {
    if backend == "kvm" {
        IsolationMode::Hardware
    } else {
        IsolationMode::Emulation
    }
}

/// Follows the instances on this node until `shutdown` resolves.
pub async fn run(
    context: Arc<InstanceContext>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let vmis: Api<VirtualMachineInstance> = Api::all(context.client.clone());
    let selector = format!("{LABEL_NODE_NAME}={}", context.node_name);
    Controller::new(vmis, watcher::Config::default().labels(&selector))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            if let Err(error) = result {
                warn!(%error, "instance reconcile");
            }
        })
        .await;
}

fn error_policy(
    _vmi: Arc<VirtualMachineInstance>,
    error: &InstanceError,
    _ctx: Arc<InstanceContext>,
) -> Action {
    warn!(%error, "instance reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

#[instrument(skip_all, fields(vmi = %vmi.name_any(), ns = ?vmi.namespace()))]
async fn reconcile(
    vmi: Arc<VirtualMachineInstance>,
    ctx: Arc<InstanceContext>,
) -> Result<Action, InstanceError> {
    let status = vmi.status.clone().unwrap_or_default();
    if status.phase != Some(Phase::Running) || status.isolation.is_some() {
        return Ok(Action::await_change());
    }
    let (Some(namespace), Some(uid)) = (vmi.namespace(), vmi.uid()) else {
        return Ok(Action::await_change());
    };
    let object = format!("{namespace}/{}", vmi.name_any());
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let pod = pods
        .get_opt(&launcher_pod_name(&vmi.name_any(), &uid))
        .await
        .map_err(|source| InstanceError::Kube {
            action: "reading the launcher pod of",
            object: object.clone(),
            source,
        })?
        .filter(|p| p.labels().get(LABEL_CREATED_BY) == Some(&uid))
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(&ctx.node_name));
    let Some(pod_uid) = pod.and_then(|p| p.uid()) else {
        return Ok(Action::requeue(RETRY));
    };
    let Some(socket) = launcher_api_socket(&ctx.kubelet_root, &pod_uid) else {
        return Ok(Action::await_change());
    };
    let options = ClientOptions {
        connect_timeout: LAUNCHER_CALL_TIMEOUT,
        request_timeout: LAUNCHER_CALL_TIMEOUT,
    };
    let backend = match LauncherClient::connect_with(&socket, options).await {
        Ok(client) => match client.status().await {
            Ok(status) => status.backend,
            Err(error) => {
                warn!(%error, socket = %socket.display(), "launcher status");
                return Ok(Action::requeue(RETRY));
            }
        },
        Err(error) => {
            warn!(%error, socket = %socket.display(), "launcher not reachable yet");
            return Ok(Action::requeue(RETRY));
        }
    };
    let isolation = isolation_of(&backend);
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(ctx.client.clone(), &namespace);
    let patch = json!({
        "apiVersion": ironvisor_crds::v1alpha1::API_VERSION,
        "kind": ironvisor_crds::v1alpha1::VIRTUAL_MACHINE_INSTANCE_KIND,
        "status": {"isolation": isolation},
    });
    vmis.patch_status(
        &vmi.name_any(),
        &PatchParams::apply(HANDLER_FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(|source| InstanceError::Kube {
        action: "reporting the isolation of",
        object: object.clone(),
        source,
    })?;
    info!(?isolation, %backend, "reported the isolation");
    if isolation == IsolationMode::Emulation {
        let event = Event {
            type_: EventType::Warning,
            reason: "SoftwareEmulation".into(),
            note: Some(format!(
                "node {} has no hardware-assisted virtualization for this guest: it runs under \
                 software emulation (QEMU TCG), without hardware isolation and much slower",
                ctx.node_name
            )),
            action: "Start".into(),
            secondary: None,
        };
        if let Err(error) = ctx.recorder.publish(&event, &vmi.object_ref(&())).await {
            warn!(%error, "could not publish the SoftwareEmulation event");
        }
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_map_to_isolation_modes() {
        assert_eq!(isolation_of("kvm"), IsolationMode::Hardware);
        assert_eq!(isolation_of("qemu-tcg"), IsolationMode::Emulation);
    }
}
