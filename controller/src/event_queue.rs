//! Publishes Kubernetes Events (`events.k8s.io/v1`) off the reconcile path: a reconcile
//! hands its event to a queue and goes on; a few workers publish them. Events about one
//! object always go to the same worker, so they are published in the order they were
//! raised, and that worker alone keeps their series: the same event again within
//! [`SERIES_TTL`] raises the count of the first (a patch) instead of creating another.
//!
//! Events are best effort, as with client-go's recorder: when a worker's queue is full the
//! event is dropped and counted, and the reconcile never waits for one.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event as K8sEvent, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::json;
use tokio::sync::mpsc;
use tracing::{debug, warn, Instrument};

use crate::metrics::Metrics;

/// Workers publishing at once. Each publish is one API request.
const WORKERS: usize = 8;
/// Events waiting per worker; beyond that they are dropped.
const QUEUE_PER_WORKER: usize = 1024;
/// How long a repeat of an event counts into its series (kube-runtime and client-go keep
/// theirs for 6 minutes).
const SERIES_TTL: Duration = Duration::from_secs(360);
/// Series remembered per worker; past it the older half is forgotten (a later repeat
/// then starts a new event, which is only less compact).
const SERIES_PER_WORKER: usize = 2048;

/// What is published: type, reason, action, note, about which object.
#[derive(Debug, Clone)]
pub struct Raised {
    /// `Warning` instead of `Normal`.
    pub warning: bool,
    /// CamelCase reason.
    pub reason: String,
    /// What the controller did or saw.
    pub action: String,
    /// Human-readable detail.
    pub note: String,
    /// The object the event is about.
    pub regarding: ObjectReference,
}

/// Who reports the events.
#[derive(Debug, Clone)]
pub struct Reporter {
    /// `reportingController`.
    pub controller: String,
    /// `reportingInstance` (this replica's pod name).
    pub instance: String,
}

/// The sending side.
pub struct EventQueue {
    workers: Vec<mpsc::Sender<Raised>>,
    metrics: Arc<Metrics>,
}

impl EventQueue {
    /// Starts the workers on the current tokio runtime.
    pub fn start(client: Client, reporter: Reporter, metrics: Arc<Metrics>) -> Self {
        let workers = (0..WORKERS)
            .map(|index| {
                let (sender, receiver) = mpsc::channel(QUEUE_PER_WORKER);
                let worker = Worker {
                    client: client.clone(),
                    reporter: reporter.clone(),
                    series: HashMap::new(),
                    metrics: metrics.clone(),
                };
                tokio::spawn(
                    worker
                        .run(receiver)
                        .instrument(tracing::info_span!("event_worker", index)),
                );
                sender
            })
            .collect();
        Self { workers, metrics }
    }

    /// Queues `event`; never waits. A full queue drops it (counted in the metrics).
    pub fn send(&self, event: Raised) {
        let worker = &self.workers[worker_of(&event.regarding, self.workers.len())];
        if let Err(error) = worker.try_send(event) {
            self.metrics.event_dropped();
            let event = match &error {
                mpsc::error::TrySendError::Full(event)
                | mpsc::error::TrySendError::Closed(event) => event,
            };
            debug!(reason = %event.reason, "event queue full or closed; event dropped");
        }
    }
}

/// The worker for an object: the same for every event about it.
fn worker_of(object: &ObjectReference, workers: usize) -> usize {
    let mut hasher = DefaultHasher::new();
    object.namespace.hash(&mut hasher);
    object.kind.hash(&mut hasher);
    object.name.hash(&mut hasher);
    // The modulo keeps the value below `workers`, which is a usize.
    (hasher.finish() % workers.max(1) as u64) as usize
}

/// What makes two events the same (their notes may differ).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SeriesKey {
    uid: Option<String>,
    namespace: Option<String>,
    name: Option<String>,
    kind: Option<String>,
    warning: bool,
    reason: String,
    action: String,
}

impl SeriesKey {
    fn of(event: &Raised) -> Self {
        let object = &event.regarding;
        Self {
            uid: object.uid.clone(),
            namespace: object.namespace.clone(),
            name: object.name.clone(),
            kind: object.kind.clone(),
            warning: event.warning,
            reason: event.reason.clone(),
            action: event.action.clone(),
        }
    }
}

/// The first event of a series and how often it happened.
struct Series {
    name: String,
    namespace: String,
    count: i32,
    last: Instant,
}

struct Worker {
    client: Client,
    reporter: Reporter,
    series: HashMap<SeriesKey, Series>,
    metrics: Arc<Metrics>,
}

impl Worker {
    async fn run(mut self, mut receiver: mpsc::Receiver<Raised>) {
        while let Some(event) = receiver.recv().await {
            match self.publish(&event).await {
                Ok(()) => self.metrics.event_published(),
                Err(error) if in_terminating_namespace(&error) => {
                    debug!(reason = %event.reason, "namespace is being deleted; event dropped");
                }
                Err(error) => {
                    self.metrics.event_failed();
                    warn!(%error, reason = %event.reason, "could not publish an event");
                }
            }
        }
        debug!("event worker stopped");
    }

    async fn publish(&mut self, event: &Raised) -> Result<(), kube::Error> {
        let now = Instant::now();
        let key = SeriesKey::of(event);
        if let Some(series) = self.series.get_mut(&key) {
            if now.duration_since(series.last) < SERIES_TTL {
                let count = series.count.saturating_add(1);
                let events: Api<K8sEvent> = Api::namespaced(self.client.clone(), &series.namespace);
                let patch = json!({"series": EventSeries {
                    count,
                    last_observed_time: MicroTime(k8s_openapi::jiff::Timestamp::now()),
                }});
                match events
                    .patch(&series.name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(_) => {
                        series.count = count;
                        series.last = now;
                        return Ok(());
                    }
                    // Expired in the API (events live an hour): start a new one.
                    Err(kube::Error::Api(status)) if status.code == 404 => {}
                    Err(error) => return Err(error),
                }
            }
            self.series.remove(&key);
        }
        let new = self.new_event(event);
        let namespace = new.metadata.namespace.clone().unwrap_or_default();
        let events: Api<K8sEvent> = Api::namespaced(self.client.clone(), &namespace);
        let created = events.create(&PostParams::default(), &new).await?;
        self.remember(
            key,
            Series {
                name: created.metadata.name.unwrap_or_default(),
                namespace,
                count: 1,
                last: now,
            },
        );
        Ok(())
    }

    fn new_event(&self, event: &Raised) -> K8sEvent {
        let now = k8s_openapi::jiff::Timestamp::now();
        let object = &event.regarding;
        let stem = object.name.as_deref().unwrap_or(&self.reporter.controller);
        K8sEvent {
            metadata: ObjectMeta {
                name: Some(format!("{stem}.{:x}", now.as_nanosecond())),
                namespace: Some(object.namespace.clone().unwrap_or_else(|| "default".into())),
                ..ObjectMeta::default()
            },
            event_time: Some(MicroTime(now)),
            type_: Some(if event.warning { "Warning" } else { "Normal" }.into()),
            reason: Some(event.reason.clone()),
            action: Some(event.action.clone()),
            note: Some(event.note.clone()),
            regarding: Some(object.clone()),
            reporting_controller: Some(self.reporter.controller.clone()),
            reporting_instance: Some(self.reporter.instance.clone()),
            ..K8sEvent::default()
        }
    }

    fn remember(&mut self, key: SeriesKey, series: Series) {
        self.series.insert(key, series);
        if self.series.len() <= SERIES_PER_WORKER {
            return;
        }
        self.series.retain(|_, s| s.last.elapsed() < SERIES_TTL);
        if self.series.len() > SERIES_PER_WORKER {
            forget_older_half(&mut self.series);
        }
    }
}

/// Keeps the newer half of the series.
fn forget_older_half(series: &mut HashMap<SeriesKey, Series>) {
    let mut times: Vec<Instant> = series.values().map(|s| s.last).collect();
    let middle = times.len() / 2;
    let (_, cut, _) = times.select_nth_unstable(middle);
    let cut = *cut;
    series.retain(|_, s| s.last >= cut);
}

/// Creating in a namespace that is being deleted is refused; nobody would read the event.
fn in_terminating_namespace(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status)
        if status.code == 403 && status.message.contains("being terminated"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(namespace: &str, name: &str) -> ObjectReference {
        ObjectReference {
            kind: Some("VirtualMachineInstance".into()),
            namespace: Some(namespace.into()),
            name: Some(name.into()),
            uid: Some(format!("uid-{name}")),
            ..ObjectReference::default()
        }
    }

    fn raised(name: &str, reason: &str, note: &str) -> Raised {
        Raised {
            warning: false,
            reason: reason.into(),
            action: reason.into(),
            note: note.into(),
            regarding: reference("ns", name),
        }
    }

    #[test]
    fn every_event_about_one_object_goes_to_the_same_worker() {
        let object = reference("ns", "vm-1");
        let first = worker_of(&object, WORKERS);
        for _ in 0..10 {
            assert_eq!(worker_of(&object.clone(), WORKERS), first);
        }
        assert!(first < WORKERS);
    }

    #[test]
    fn objects_spread_over_the_workers() {
        let used: std::collections::BTreeSet<usize> = (0..200)
            .map(|i| worker_of(&reference("ns", &format!("vm-{i}")), WORKERS))
            .collect();
        assert_eq!(used.len(), WORKERS);
    }

    #[test]
    fn a_series_is_one_object_reason_and_action_whatever_the_note() {
        let first = SeriesKey::of(&raised("vm-1", "Started", "Running on node a"));
        assert_eq!(
            first,
            SeriesKey::of(&raised("vm-1", "Started", "Running on node b"))
        );
        assert_ne!(
            first,
            SeriesKey::of(&raised("vm-2", "Started", "Running on node a"))
        );
        assert_ne!(
            first,
            SeriesKey::of(&raised("vm-1", "Stopping", "Running on node a"))
        );
    }

    #[test]
    fn forgetting_keeps_the_newer_half() {
        let start = Instant::now();
        let mut series: HashMap<SeriesKey, Series> = (0..10u64)
            .map(|i| {
                let key = SeriesKey::of(&raised(&format!("vm-{i}"), "Started", ""));
                let entry = Series {
                    name: format!("e{i}"),
                    namespace: "ns".into(),
                    count: 1,
                    last: start + Duration::from_secs(i),
                };
                (key, entry)
            })
            .collect();
        forget_older_half(&mut series);
        let mut kept: Vec<&str> = series.values().map(|s| s.name.as_str()).collect();
        kept.sort_unstable();
        assert_eq!(kept, ["e5", "e6", "e7", "e8", "e9"]);
    }

    #[test]
    fn refusals_in_a_terminating_namespace_are_told_apart() {
        let refused = |code: u16, message: &str| {
            kube::Error::Api(
                kube::core::Status::failure(message, "Forbidden")
                    .with_code(code)
                    .boxed(),
            )
        };
        assert!(in_terminating_namespace(&refused(
            403,
            "unable to create new content in namespace ns because it is being terminated"
        )));
        assert!(!in_terminating_namespace(&refused(
            403,
            "forbidden by RBAC"
        )));
    }
}
