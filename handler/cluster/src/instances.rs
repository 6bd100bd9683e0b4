//! The instances on this node: wire each one's launcher pod network as soon as the pod
//! has a process ([`crate::pod_network`]); once running, ask its launcher (through the API
//! socket in the launcher pod's `sockets` volume) which backend runs the guest; report
//! both as `status.interfaces` and `status.isolation` (server-side apply under the node
//! agent's own field manager); publish a `SoftwareEmulation` warning Event when the guest
//! is emulated; and release the wiring when the instance ends.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use ironvisor_crds::cluster::{
    launcher_pod_name, HANDLER_FIELD_MANAGER, LABEL_CREATED_BY, LABEL_NODE_NAME,
};
use ironvisor_crds::v1alpha1::{
    IsolationMode, VirtualMachineInstance, VirtualMachineInstanceNetworkInterface,
    VirtualMachineInstancePhase as Phase,
};
use ironvisor_launcher_api::{ClientOptions, LauncherClient};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::runtime::Controller;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{info, instrument, warn};

use crate::pod_network::{self, PodNetworkError, PodNetworkSettings, Wiring};
use crate::pod_volumes::launcher_api_socket;

/// How long one launcher status call may take.
const LAUNCHER_CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// How often an instance whose launcher did not answer yet is looked at again.
const RETRY: Duration = Duration::from_secs(3);
/// How often a pod that has no process yet is looked at again for wiring.
const WIRE_RETRY: Duration = Duration::from_millis(500);
/// How often a settled instance is looked at again.
const RESYNC: Duration = Duration::from_secs(60);
/// How often wirings of instances that are gone are looked for.
const SWEEP: Duration = Duration::from_secs(15);

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
    /// The instance's pod network could not be wired.
    #[error("wiring the pod network of {object}: {source}")]
    Network {
        /// `namespace/name`.
        object: String,
        /// What failed.
        source: PodNetworkError,
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
    /// Where and how launcher pods are wired.
    pub network: PodNetworkSettings,
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
            network: PodNetworkSettings::new(kubelet_root.clone()),
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
    let (Some(namespace), Some(uid)) = (vmi.namespace(), vmi.uid()) else {
        return Ok(Action::await_change());
    };
    let object = format!("{namespace}/{}", vmi.name_any());
    let finished = matches!(status.phase, Some(Phase::Succeeded | Phase::Failed));
    if finished || vmi.meta().deletion_timestamp.is_some() {
        release_network(&ctx, &uid, &object).await;
        return Ok(Action::await_change());
    }
    if !matches!(status.phase, Some(Phase::Scheduled | Phase::Running)) {
        return Ok(Action::await_change());
    }
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
    let Some(pod) = pod else {
        return Ok(Action::requeue(RETRY));
    };
    let Some(pod_uid) = pod.uid() else {
        return Ok(Action::requeue(RETRY));
    };
    // The pod IP, once the kubelet reports it: the namespace wired must have it.
    let pod_ip = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.as_deref())
        .and_then(|ip| ip.parse::<std::net::Ipv4Addr>().ok());

    let mut pending = false;
    // The tap is made the compute container's user's, who opens it.
    let tap_owner = pod
        .spec
        .as_ref()
        .and_then(ironvisor_crds::cluster::compute_uid);
    let launcher_pod = LauncherPod {
        uid: &pod_uid,
        ip: pod_ip,
        tap_owner,
    };
    let wired = match wire_network(&ctx, &vmi, &object, &uid, &launcher_pod).await {
        Ok(wired) => wired,
        Err(error) => {
            // Said on the instance too: its launcher waits for the wiring meanwhile.
            publish_warning(&ctx, &vmi, "NetworkSetupFailed", error.to_string()).await;
            return Err(error);
        }
    };
    let interfaces = match wired {
        NetworkOutcome::NoInterface => Vec::new(),
        NetworkOutcome::NotYet => {
            pending = true;
            Vec::new()
        }
        NetworkOutcome::Wired(interface) => vec![interface],
    };
    let mut isolation = status.isolation;
    let mut newly_emulated = false;
    if status.phase == Some(Phase::Running) && isolation.is_none() {
        match launcher_isolation(&ctx, &pod_uid).await {
            Some(found) => {
                newly_emulated = found == IsolationMode::Emulation;
                isolation = Some(found);
            }
            None => pending = true,
        }
    }
    if isolation != status.isolation || interfaces != status.interfaces {
        report_status(
            &ctx,
            &namespace,
            &vmi.name_any(),
            &object,
            isolation,
            &interfaces,
        )
        .await?;
        info!(
            ?isolation,
            interfaces = interfaces.len(),
            "reported the node's view"
        );
    }
    if newly_emulated {
        let note = format!(
            "node {} has no hardware-assisted virtualization for this guest: it runs under \
             software emulation (QEMU TCG), without hardware isolation and much slower",
            ctx.node_name
        );
        publish_warning(&ctx, &vmi, "SoftwareEmulation", note).await;
    }
    Ok(if pending {
        Action::requeue(if status.phase == Some(Phase::Running) {
            RETRY
        } else {
            WIRE_RETRY
        })
    } else {
        // Looked at again now and then: a DHCP server that died is restarted.
        Action::requeue(RESYNC)
    })
}

/// What became of the instance's network on this pass.
enum NetworkOutcome {
    /// The instance has no interface.
    NoInterface,
    /// The pod has no process yet.
    NotYet,
    /// Wired; its status entry.
    Wired(VirtualMachineInstanceNetworkInterface),
}

/// What the wiring needs to know of the launcher pod.
struct LauncherPod<'a> {
    uid: &'a str,
    /// Its IP, once the kubelet reports it.
    ip: Option<std::net::Ipv4Addr>,
    /// Its compute container's user, when not root.
    tap_owner: Option<u32>,
}

async fn wire_network(
    ctx: &InstanceContext,
    vmi: &VirtualMachineInstance,
    object: &str,
    uid: &str,
    pod: &LauncherPod<'_>,
) -> Result<NetworkOutcome, InstanceError> {
    // Defaulted as the controller does for the pod, so both see the same interfaces.
    let mut spec = vmi.spec.clone();
    ironvisor_crds::defaults::apply_instance_spec(&mut spec);
    let request = ironvisor_net::request_for(object, uid, &spec, |interface| {
        ironvisor_launcher_api::config::generated_mac(object, interface)
    })
    .map_err(|e| InstanceError::Network {
        object: object.to_string(),
        source: PodNetworkError::Request(e),
    })?;
    let Some(mut request) = request else {
        return Ok(NetworkOutcome::NoInterface);
    };
    request.tap_owner = pod.tap_owner;
    let Some(pod_ip) = pod.ip else {
        return Ok(NetworkOutcome::NotYet);
    };
    let settings = ctx.network.clone();
    let pod_uid = pod.uid.to_string();
    let wiring = tokio::task::spawn_blocking(move || {
        pod_network::ensure_wired(&settings, &request, &pod_uid, pod_ip)
    })
    .await
    .map_err(|e| PodNetworkError::Task(e.to_string()))
    .and_then(|result| result)
    .map_err(|source| InstanceError::Network {
        object: object.to_string(),
        source,
    })?;
    Ok(match wiring {
        Wiring::NotYet => NetworkOutcome::NotYet,
        Wiring::Done(network) => NetworkOutcome::Wired(pod_network::interface_status(&network)),
    })
}

/// Lets go of the instance's pod network; failures are logged and retried by the sweep.
async fn release_network(ctx: &InstanceContext, uid: &str, object: &str) {
    let settings = ctx.network.clone();
    let vm_uid = uid.to_string();
    match tokio::task::spawn_blocking(move || pod_network::release(&settings, &vm_uid)).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => warn!(vmi = %object, %error, "releasing the pod network"),
        Err(error) => warn!(vmi = %object, %error, "releasing the pod network"),
    }
}

/// Releases the wirings of instances that are no longer running on this node (deleted
/// while the agent was away, or finished), every `SWEEP` until `shutdown`.
pub async fn sweep_networks(
    context: Arc<InstanceContext>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(SWEEP) => {}
        }
        let settings = context.network.clone();
        let wired = match tokio::task::spawn_blocking(move || pod_network::wired(&settings)).await {
            Ok(Ok(wired)) => wired,
            Ok(Err(error)) => {
                warn!(%error, "listing pod networks");
                continue;
            }
            Err(error) => {
                warn!(%error, "listing pod networks");
                continue;
            }
        };
        if wired.is_empty() {
            continue;
        }
        let vmis: Api<VirtualMachineInstance> = Api::all(context.client.clone());
        let selector = format!("{LABEL_NODE_NAME}={}", context.node_name);
        let live: Vec<String> = match vmis.list(&ListParams::default().labels(&selector)).await {
            Ok(list) => list
                .items
                .iter()
                .filter(|v| v.meta().deletion_timestamp.is_none())
                .filter(|v| {
                    let phase = v.status.as_ref().and_then(|s| s.phase);
                    !matches!(phase, Some(Phase::Succeeded | Phase::Failed))
                })
                .filter_map(|v| v.uid())
                .collect(),
            Err(error) => {
                warn!(%error, "listing the instances of this node");
                continue;
            }
        };
        for uid in wired.iter().filter(|uid| !live.contains(uid)) {
            info!(uid = %uid, "releasing the pod network of an instance that is gone");
            release_network(&context, uid, uid).await;
        }
    }
}

/// The isolation of the guest, from its launcher; `None` while it does not answer.
async fn launcher_isolation(ctx: &InstanceContext, pod_uid: &str) -> Option<IsolationMode> {
    let socket = launcher_api_socket(&ctx.kubelet_root, pod_uid)?;
    let options = ClientOptions {
        connect_timeout: LAUNCHER_CALL_TIMEOUT,
        request_timeout: LAUNCHER_CALL_TIMEOUT,
    };
    match LauncherClient::connect_with(&socket, options).await {
        Ok(client) => match client.status().await {
            Ok(status) => Some(isolation_of(&status.backend)),
            Err(error) => {
                warn!(%error, socket = %socket.display(), "launcher status");
                None
            }
        },
        Err(error) => {
            warn!(%error, socket = %socket.display(), "launcher not reachable yet");
            None
        }
    }
}

/// Applies the status fields the node agent owns, under its own field manager.
async fn report_status(
    ctx: &InstanceContext,
    namespace: &str,
    name: &str,
    object: &str,
    isolation: Option<IsolationMode>,
    interfaces: &[VirtualMachineInstanceNetworkInterface],
) -> Result<(), InstanceError> {
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(ctx.client.clone(), namespace);
    let mut status = serde_json::Map::new();
    if let Some(isolation) = isolation {
        status.insert("isolation".into(), json!(isolation));
    }
    if !interfaces.is_empty() {
        status.insert("interfaces".into(), json!(interfaces));
    }
    let patch = json!({
        "apiVersion": ironvisor_crds::v1alpha1::API_VERSION,
        "kind": ironvisor_crds::v1alpha1::VIRTUAL_MACHINE_INSTANCE_KIND,
        "status": status,
    });
    vmis.patch_status(
        name,
        &PatchParams::apply(HANDLER_FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map(drop)
    .map_err(|source| InstanceError::Kube {
        action: "reporting the node's view of",
        object: object.to_string(),
        source,
    })
}

/// A Warning event on the instance (the recorder folds repeats into a series).
async fn publish_warning(
    ctx: &InstanceContext,
    vmi: &VirtualMachineInstance,
    reason: &str,
    note: String,
) {
    let event = Event {
        type_: EventType::Warning,
        reason: reason.into(),
        note: Some(note),
        action: "Start".into(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, &vmi.object_ref(&())).await {
        warn!(%error, reason, "could not publish an event");
    }
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
