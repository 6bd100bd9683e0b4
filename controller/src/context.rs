//! What every reconcile shares: the API client, the event queue, the cache of launcher
//! pods, the launcher pod settings and the metrics; plus the small API helpers both
//! reconcilers use.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;
use tracing::debug;

use crate::event_queue::{EventQueue, Raised, Reporter};
use crate::launcher_pod::LauncherPodSettings;
use crate::metrics::{ControllerKind, Metrics};
use crate::own_writes::OwnWrites;
use ironvisor_crds::cluster::FIELD_MANAGER;

/// Why a reconcile failed (the variant name is the error's metric label).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// An API call failed.
    #[error("{action} {object}: {source}")]
    Kube {
        /// What was being done.
        action: &'static str,
        /// `namespace/name` of the object.
        object: String,
        /// The client error.
        source: kube::Error,
    },
    /// An object lacks metadata the reconcile needs (name, namespace, UID).
    #[error("{object}: metadata.{field} is missing")]
    Metadata {
        /// Which object.
        object: String,
        /// Which field.
        field: &'static str,
    },
    /// The instance type or preference the VM names is missing or unusable.
    #[error("{object}: {source}")]
    Instancetype {
        /// Which VM.
        object: String,
        /// What is wrong.
        source: ironvisor_crds::instancetype::InstancetypeError,
    },
    /// The reconcile did not finish in time; it is cancelled and retried.
    #[error("{object}: the reconcile took longer than {}s and was cancelled", .after.as_secs())]
    TimedOut {
        /// Which object.
        object: String,
        /// The limit.
        after: Duration,
    },
    /// A value could not be serialized for a patch.
    #[error("{object}: cannot serialize the status: {source}")]
    Serialize {
        /// Which object.
        object: String,
        /// The serializer error.
        source: serde_json::Error,
    },
}

impl ReconcileError {
    /// When to try again. Creating in a namespace that is being deleted is refused until
    /// the namespace controller has deleted the object too: retrying that every few
    /// seconds for thousands of objects would crowd out the deletions themselves.
    pub fn retry_after(&self) -> Duration {
        match self {
            Self::Kube {
                source: kube::Error::Api(status),
                ..
            } if status.code == 403 && status.message.contains("being terminated") => {
                NAMESPACE_TERMINATING_RETRY
            }
            _ => ERROR_RETRY,
        }
    }

    /// Whether the error is worth a warning (not the expected refusal in a namespace that
    /// is being deleted).
    pub fn is_expected(&self) -> bool {
        self.retry_after() == NAMESPACE_TERMINATING_RETRY
    }

    /// Metric label of the error.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube { .. } => "Kube",
            Self::Metadata { .. } => "Metadata",
            Self::Instancetype { .. } => "Instancetype",
            Self::Serialize { .. } => "Serialize",
            Self::TimedOut { .. } => "TimedOut",
        }
    }
}

/// How soon a failed reconcile is retried.
const ERROR_RETRY: Duration = Duration::from_secs(5);
/// How soon a create refused in a terminating namespace is retried.
const NAMESPACE_TERMINATING_RETRY: Duration = Duration::from_secs(60);

/// Shorthand for an API error with context.
pub fn kube_error<'a>(
    action: &'static str,
    object: &'a str,
) -> impl FnOnce(kube::Error) -> ReconcileError + 'a {
    move |source| ReconcileError::Kube {
        action,
        object: object.to_string(),
        source,
    }
}

/// Shared state of the reconcilers.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// Publishes Kubernetes Events off the reconcile path.
    events: EventQueue,
    /// The launcher pods as last seen by the controller's watch (trimmed to what the
    /// reconcilers read: metadata, `spec.nodeName`, status).
    pub launcher_pods: Store<Pod>,
    /// This controller's writes its caches may not show yet.
    pub own_writes: OwnWrites,
    /// How launcher pods are built.
    pub pod_settings: LauncherPodSettings,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
}

impl Context {
    /// A context whose events name `instance` (the pod name) as the reporting instance.
    /// Starts the event workers, so it must be called on the tokio runtime.
    pub fn new(
        client: Client,
        launcher_pods: Store<Pod>,
        pod_settings: LauncherPodSettings,
        metrics: Arc<Metrics>,
        instance: Option<String>,
    ) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: instance.unwrap_or_else(|| FIELD_MANAGER.into()),
        };
        Self {
            events: EventQueue::start(client.clone(), reporter, metrics.clone()),
            launcher_pods,
            own_writes: OwnWrites::default(),
            client,
            pod_settings,
            metrics,
        }
    }

    /// Queues an event about `object` for publishing; never waits, and a failure to
    /// publish is logged and counted, never fatal.
    pub fn event(&self, object: &ObjectReference, warning: bool, reason: &str, note: String) {
        self.events.send(Raised {
            warning,
            reason: reason.into(),
            action: reason.into(),
            note,
            regarding: object.clone(),
        });
    }
}

/// How long one reconcile may take. Each API request has its own timeout too; this bounds
/// the whole, so one object whose reconcile hangs (on anything) cannot hold one of the
/// controller's few reconcile slots for good. Reconciles are level-based, so a cancelled
/// one is simply run again.
const RECONCILE_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs one reconcile of `object`, counting it (and its error, if any) in the metrics;
/// cancels it after [`RECONCILE_TIMEOUT`].
pub async fn measured<T>(
    ctx: &Context,
    kind: ControllerKind,
    object: &str,
    reconcile: impl std::future::Future<Output = Result<T, ReconcileError>>,
) -> Result<T, ReconcileError> {
    let started = std::time::Instant::now();
    ctx.metrics.reconcile_started(kind, object);
    let result = match tokio::time::timeout(RECONCILE_TIMEOUT, reconcile).await {
        Ok(result) => result,
        Err(_) => Err(ReconcileError::TimedOut {
            object: object.to_string(),
            after: RECONCILE_TIMEOUT,
        }),
    };
    ctx.metrics.reconcile_finished(
        kind,
        started.elapsed(),
        result.as_ref().err().map(ReconcileError::metric_label),
    );
    result
}

/// Namespace and UID of a namespaced object: every reconcile needs both.
pub fn namespace_and_uid<K: Resource>(object: &K) -> Result<(String, String), ReconcileError> {
    let missing = |field| ReconcileError::Metadata {
        object: key(object),
        field,
    };
    let namespace = object
        .meta()
        .namespace
        .clone()
        .ok_or_else(|| missing("namespace"))?;
    let uid = object.meta().uid.clone().ok_or_else(|| missing("uid"))?;
    Ok((namespace, uid))
}

impl Context {
    /// Whether the cached `object` (whose UID is `uid`) predates this controller's last
    /// write to it: the reconcile was woken by the echo of an earlier write, and the later
    /// write's event is on its way and will reconcile it again.
    pub fn cached_before_own_write<K: Resource>(&self, object: &K, uid: &str) -> bool {
        let behind = self
            .own_writes
            .cache_is_behind(uid, object.meta().resource_version.as_deref());
        if behind {
            debug!("the cache does not show this controller's last write yet");
        }
        behind
    }
}

/// Now, as a Kubernetes `Time`.
pub fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// `namespace/name` of an object, for messages and metric keys.
pub fn key<K: Resource>(object: &K) -> String {
    format!(
        "{}/{}",
        object.meta().namespace.as_deref().unwrap_or(""),
        object.meta().name.as_deref().unwrap_or("")
    )
}

/// Adds `finalizer` to the object unless present; the write goes on record in `writes`.
pub async fn ensure_finalizer<K>(
    writes: &OwnWrites,
    api: &Api<K>,
    object: &K,
    finalizer: &str,
) -> Result<(), ReconcileError>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let finalizers = object.finalizers();
    if finalizers.iter().any(|f| f == finalizer) {
        return Ok(());
    }
    let mut next = finalizers.to_vec();
    next.push(finalizer.to_string());
    set_finalizers(writes, api, object, next, "adding the finalizer to").await
}

/// Removes `finalizer` from the object; `writes` forgets it (it is on its way out).
pub async fn remove_finalizer<K>(
    writes: &OwnWrites,
    api: &Api<K>,
    object: &K,
    finalizer: &str,
) -> Result<(), ReconcileError>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let finalizers = object.finalizers();
    if !finalizers.iter().any(|f| f == finalizer) {
        return Ok(());
    }
    let next: Vec<String> = finalizers
        .iter()
        .filter(|f| *f != finalizer)
        .cloned()
        .collect();
    set_finalizers(writes, api, object, next, "removing the finalizer from").await?;
    if let Some(uid) = object.uid() {
        writes.forget(&uid);
    }
    Ok(())
}

/// Replaces the finalizer list with a merge patch that carries the `resourceVersion` read,
/// so a concurrent change makes the API server answer 409 instead of being overwritten.
async fn set_finalizers<K>(
    writes: &OwnWrites,
    api: &Api<K>,
    object: &K,
    finalizers: Vec<String>,
    action: &'static str,
) -> Result<(), ReconcileError>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let patch = json!({
        "metadata": {
            "resourceVersion": object.resource_version(),
            "finalizers": finalizers,
        }
    });
    match api
        .patch(
            &object.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(written) => {
            writes.wrote_object(&written);
            Ok(())
        }
        // Already gone: the finalizer was the last thing holding it.
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(source) => Err(ReconcileError::Kube {
            action,
            object: key(object),
            source,
        }),
    }
}

/// Writes `status` with server-side apply under the controller's field manager; the write
/// goes on record in `writes`.
pub async fn apply_status<K, S>(
    writes: &OwnWrites,
    api: &Api<K>,
    object: &K,
    status: &S,
) -> Result<(), ReconcileError>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    S: serde::Serialize,
{
    let status = serde_json::to_value(status).map_err(|source| ReconcileError::Serialize {
        object: key(object),
        source,
    })?;
    let patch = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    let written = api
        .patch_status(
            &object.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(kube_error("writing the status of", &key(object)))?;
    writes.wrote_object(&written);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reconcile_names_the_missing_namespace_or_uid() {
        use k8s_openapi::api::core::v1::ConfigMap;
        use kube::api::ObjectMeta;
        let object = |namespace: Option<&str>, uid: Option<&str>| ConfigMap {
            metadata: ObjectMeta {
                name: Some("vm".into()),
                namespace: namespace.map(Into::into),
                uid: uid.map(Into::into),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        };
        let (namespace, uid) = namespace_and_uid(&object(Some("ns"), Some("u-1"))).unwrap();
        assert_eq!((namespace.as_str(), uid.as_str()), ("ns", "u-1"));
        for (namespace, uid, field) in [(None, Some("u-1"), "namespace"), (Some("ns"), None, "uid")]
        {
            match namespace_and_uid(&object(namespace, uid)) {
                Err(ReconcileError::Metadata { field: missing, .. }) => assert_eq!(missing, field),
                other => panic!("expected a missing {field}, got {other:?}"),
            }
        }
    }

    #[test]
    fn creates_refused_in_a_terminating_namespace_are_retried_slowly_and_quietly() {
        let refused = |code: u16, message: &str| ReconcileError::Kube {
            action: "creating the launcher pod of",
            object: "ns/vm".into(),
            source: kube::Error::Api(
                kube::core::Status::failure(message, "Forbidden")
                    .with_code(code)
                    .boxed(),
            ),
        };
        let terminating = refused(
            403,
            "pods \"p\" is forbidden: unable to create new content in namespace ns because \
             it is being terminated",
        );
        assert_eq!(terminating.retry_after(), NAMESPACE_TERMINATING_RETRY);
        assert!(terminating.is_expected());
        let other = refused(403, "pods \"p\" is forbidden: exceeded quota");
        assert_eq!(other.retry_after(), ERROR_RETRY);
        assert!(!other.is_expected());
    }
}
