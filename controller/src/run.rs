//! Runs the controller: the HTTP endpoint at once, the leader election, and both
//! reconcilers while this replica leads.

use std::net::SocketAddr;
use std::sync::Arc;

use futures::{FutureExt, StreamExt};
use ironvisor_crds::v1alpha1::{VirtualMachine, VirtualMachineInstance};
use k8s_openapi::api::core::v1::{Pod, PodSpec};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::watcher::{self, watcher};
use kube::runtime::{Controller, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::context::{key, Context};
use crate::launcher_pod::LauncherPodSettings;
use crate::leader::{LeaderElector, LeaderError, Timing};
use crate::metrics::{ControllerKind, Metrics};
use crate::{http, vm_controller, vmi_controller};
use ironvisor_crds::cluster::{COMPONENT_LAUNCHER, LABEL_COMPONENT};

/// Why the controller stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// No API client could be configured.
    #[error("cannot configure the Kubernetes client (in-cluster or KUBECONFIG): {0}")]
    Client(#[source] kube::Error),
    /// The HTTP endpoint failed.
    #[error(transparent)]
    Http(#[from] http::HttpError),
    /// Leadership was lost; the process exits so it restarts as a follower.
    #[error("leader election: {0}")]
    Leadership(#[from] LeaderError),
}

/// The controller's settings.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Where `/metrics`, `/healthz` and `/readyz` listen.
    pub http_addr: SocketAddr,
    /// Namespace of the leader Lease.
    pub lease_namespace: String,
    /// Name of the leader Lease.
    pub lease_name: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    /// Launcher pod settings.
    pub pod_settings: LauncherPodSettings,
}

/// Runs until a signal (Ok) or lost leadership (Err).
pub async fn run(config: RunConfig) -> Result<(), RunError> {
    let client = Client::try_default().await.map_err(RunError::Client)?;
    let metrics = Arc::new(Metrics::default());
    let http_task = tokio::spawn(http::serve(config.http_addr, metrics.clone()));

    let elector = LeaderElector::new(
        client.clone(),
        &config.lease_namespace,
        &config.lease_name,
        &config.identity,
        Timing::default(),
    );
    let (leading_tx, mut leading_rx) = watch::channel(false);
    let election_metrics = metrics.clone();
    let election = elector.run(leading_tx, move |reachable| {
        election_metrics.set_api_reachable(reachable)
    });
    tokio::pin!(election);
    let shutdown = shutdown_signal().shared();

    info!(identity = %config.identity, lease = %config.lease_name, "waiting for leadership");
    tokio::select! {
        error = &mut election => return Err(error.into()),
        _ = shutdown.clone() => return Ok(()),
        changed = leading_rx.wait_for(|leading| *leading) => {
            if changed.is_err() {
                return Ok(());
            }
        }
    }
    info!("leading: starting the reconcilers");
    metrics.set_leader(true);
    let (pod_cache, pod_cache_writer) = reflector::store();
    let context = Arc::new(Context::new(
        client.clone(),
        pod_cache,
        config.pod_settings.clone(),
        metrics.clone(),
        Some(config.identity.clone()),
    ));
    let controllers = run_controllers(client, context, pod_cache_writer, shutdown.clone());
    let result = tokio::select! {
        error = &mut election => Err(RunError::Leadership(error)),
        _ = controllers => Ok(()),
        result = http_task => match result {
            Ok(Err(error)) => Err(error.into()),
            _ => Ok(()),
        },
    };
    metrics.set_leader(false);
    if let Err(error) = elector.release().await {
        warn!(%error, "could not release the leader lease");
    }
    result
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(signal) => signal,
        Err(error) => {
            warn!(%error, "cannot watch SIGTERM; only Ctrl-C stops the controller");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    info!("shutting down");
}

/// What the caches keep of an object: not its managed fields (server-side apply's record
/// of who set what, often the largest part of a status-heavy object) nor kubectl's copy of
/// the last applied manifest; reconcilers read neither.
fn slim<K: Resource>(object: &mut K) {
    object.managed_fields_mut().clear();
    if let Some(annotations) = object.meta_mut().annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
}

/// Reconciles in flight per controller. Unbounded, a restart with thousands of objects
/// starts them all at once, each with its own requests and connection buffers (measured:
/// ~800 MiB for 10,000 instances); bounded, they queue (KubeVirt's controllers run 3-10
/// workers each).
const RECONCILE_CONCURRENCY: u16 = 16;

fn reconcile_config() -> kube::runtime::controller::Config {
    kube::runtime::controller::Config::default().concurrency(RECONCILE_CONCURRENCY)
}

/// What the launcher pod cache keeps of a pod: what [`slim`] keeps, and of its spec only
/// the node it was bound to (the instance reconciler reads metadata, `spec.nodeName` and
/// the status; the spec's containers and volumes are most of a launcher pod's size).
fn trim_launcher_pod(pod: &mut Pod) {
    slim(pod);
    if let Some(spec) = pod.spec.as_mut() {
        *spec = PodSpec {
            node_name: spec.node_name.take(),
            ..PodSpec::default()
        };
    }
}

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

async fn run_controllers(
    client: Client,
    context: Arc<Context>,
    pod_cache_writer: reflector::store::Writer<Pod>,
    shutdown: futures::future::Shared<impl std::future::Future<Output = ()> + Send + 'static>,
) {
    let vms: Api<VirtualMachine> = Api::all(client.clone());
    let vmis: Api<VirtualMachineInstance> = Api::all(client.clone());
    let all_pods: Api<Pod> = Api::all(client.clone());
    let launcher_pods =
        watcher::Config::default().labels(&format!("{LABEL_COMPONENT}={COMPONENT_LAUNCHER}"));

    let (vm_reader, vm_writer) = reflector::store();
    let vm_metrics = context.metrics.clone();
    let vm_watch = watcher(vms, watcher::Config::default()).modify(slim);
    let vm_stream = reflector::reflector(vm_writer, vm_watch)
        .default_backoff()
        .applied_objects()
        .inspect(move |event| {
            if let Ok(vm) = event {
                vm_metrics.mark_changed(ControllerKind::VirtualMachine, key(vm));
            }
        });
    // Owned objects only map to their owner: their metadata is all that is read.
    let vmi_metadata: Api<PartialObjectMeta<VirtualMachineInstance>> = Api::all(client.clone());
    let owned_vmis = watcher(vmi_metadata, watcher::Config::default())
        .default_backoff()
        .touched_objects();
    let vm_controller = Controller::for_stream(vm_stream, vm_reader)
        .owns_stream(owned_vmis)
        .with_config(reconcile_config())
        .graceful_shutdown_on(shutdown.clone())
        .run(
            vm_controller::reconcile,
            vm_controller::error_policy,
            context.clone(),
        )
        .for_each(|result| async move {
            if let Err(error) = result {
                warn!(%error, "virtual machine controller");
            }
        });

    let (vmi_reader, vmi_writer) = reflector::store();
    let vmi_metrics = context.metrics.clone();
    let vmi_watch = watcher(vmis, watcher::Config::default()).modify(slim);
    let vmi_stream = reflector::reflector(vmi_writer, vmi_watch)
        .default_backoff()
        .applied_objects()
        .inspect(move |event| {
            if let Ok(vmi) = event {
                vmi_metrics.mark_changed(ControllerKind::VirtualMachineInstance, key(vmi));
            }
        });
    // Launcher pods fill the cache the instance reconciler reads instead of asking the
    // API server on every reconcile, and wake their instance when they change.
    let pod_watch = watcher(all_pods, launcher_pods).modify(trim_launcher_pod);
    let watched = context.clone();
    let owned_pods = reflector::reflector(pod_cache_writer, pod_watch)
        .default_backoff()
        .touched_objects()
        .inspect(move |event| {
            // The cache has seen this pod now (added, changed or deleted): the record of
            // having created it no longer stands in for it.
            if let Ok(pod) = event {
                watched.own_writes.forget_pod(&ObjectRef::from_obj(pod));
            }
        });
    let vmi_controller = Controller::for_stream(vmi_stream, vmi_reader)
        .owns_stream(owned_pods)
        .with_config(reconcile_config())
        .graceful_shutdown_on(shutdown)
        .run(
            vmi_controller::reconcile,
            vmi_controller::error_policy,
            context,
        )
        .for_each(|result| async move {
            if let Err(error) = result {
                warn!(%error, "instance controller");
            }
        });
    futures::join!(vm_controller, vmi_controller);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmi_status::observe;
    use ironvisor_crds::v1alpha1::VirtualMachineInstancePhase as Phase;
    use k8s_openapi::api::core::v1::{Container, ContainerStatus, PodCondition, PodStatus};
    use kube::api::ObjectMeta;

    fn running_launcher_pod() -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("virt-launcher-vm".into()),
                labels: Some(
                    [(LABEL_COMPONENT.to_string(), COMPONENT_LAUNCHER.to_string())].into(),
                ),
                annotations: Some([(LAST_APPLIED.to_string(), "{}".to_string())].into()),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                node_name: Some("node-1".into()),
                containers: vec![Container {
                    name: "compute".into(),
                    image: Some("ironvisor/launcher".into()),
                    ..Container::default()
                }],
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                conditions: Some(vec![PodCondition {
                    type_: "PodScheduled".into(),
                    status: "True".into(),
                    ..PodCondition::default()
                }]),
                container_statuses: Some(vec![ContainerStatus {
                    name: "compute".into(),
                    ready: true,
                    ..ContainerStatus::default()
                }]),
                ..PodStatus::default()
            }),
        }
    }

    #[test]
    fn the_pod_cache_keeps_what_the_instance_status_is_read_from() {
        let full = running_launcher_pod();
        let mut trimmed = full.clone();
        trim_launcher_pod(&mut trimmed);

        let spec = trimmed.spec.as_ref().expect("spec kept");
        assert!(spec.containers.is_empty(), "containers are dropped");
        assert_eq!(spec.node_name.as_deref(), Some("node-1"));
        assert_eq!(trimmed.labels(), full.labels());
        assert!(trimmed.annotations().get(LAST_APPLIED).is_none());
        for current in [None, Some(Phase::Scheduled), Some(Phase::Running)] {
            assert_eq!(
                observe(current, Some(&trimmed)),
                observe(current, Some(&full)),
                "from phase {current:?}"
            );
        }
    }
}
