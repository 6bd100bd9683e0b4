//! What this controller wrote that its watch caches may not show yet.
//!
//! A reconcile that writes twice (a finalizer, then the status) gets woken by the echo of
//! its first write while the cache still holds that intermediate object, and would write
//! the status (and raise its event) a second time; a reconcile that just created a pod
//! would not find it in the pod cache and would create it again (a 409, then a read).
//! So the controller remembers, per object, the resource version of its last write and the
//! pods it created, until its caches have caught up.
//!
//! Resource versions are compared as numbers. The API conventions call them opaque, but
//! etcd3 storage (the only one Kubernetes has) makes them its revision; a version that does
//! not parse disables the check for that object instead of guessing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::ObjectRef;
use kube::Resource;

/// How long a record is kept at most. The watch delivers an object's change within
/// seconds; a record this old is of an object whose last event never came (it was
/// deleted, or the watch relisted without it) and is only memory.
const RECORD_TTL: Duration = Duration::from_secs(120);
/// Records kept before old ones are pruned.
const PRUNE_ABOVE: usize = 4096;

#[derive(Default)]
struct Records {
    /// Object UID → (when, resource version this controller last wrote).
    versions: HashMap<String, (Instant, u64)>,
    /// The pod → (when, the pod as its create returned it).
    created_pods: HashMap<ObjectRef<Pod>, (Instant, Arc<Pod>)>,
}

/// See the module documentation.
#[derive(Default)]
pub struct OwnWrites {
    records: Mutex<Records>,
}

impl OwnWrites {
    fn lock(&self) -> MutexGuard<'_, Records> {
        // A panic while holding it left plain maps, still usable.
        self.records.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records that this controller wrote the object `uid`, producing `resource_version`.
    pub fn wrote(&self, uid: &str, resource_version: Option<&str>) {
        let Some(version) = resource_version.and_then(|v| v.parse().ok()) else {
            return;
        };
        let mut records = self.lock();
        let now = Instant::now();
        records
            .versions
            .entry(uid.to_string())
            .and_modify(|(when, known)| {
                *when = now;
                *known = (*known).max(version);
            })
            .or_insert((now, version));
        if records.versions.len() > PRUNE_ABOVE {
            records
                .versions
                .retain(|_, (when, _)| now.duration_since(*when) < RECORD_TTL);
        }
    }

    /// Records `written`, an object as a write of this controller returned it.
    pub fn wrote_object<K: Resource>(&self, written: &K) {
        if let Some(uid) = &written.meta().uid {
            self.wrote(uid, written.meta().resource_version.as_deref());
        }
    }

    /// Whether the cached object `uid` at `cached_version` is older than this controller's
    /// last write to it; its watch event is still to come and will reconcile it again.
    /// Forgets the write once the cache has caught up.
    pub fn cache_is_behind(&self, uid: &str, cached_version: Option<&str>) -> bool {
        let mut records = self.lock();
        let Some(&(when, written)) = records.versions.get(uid) else {
            return false;
        };
        let cached = cached_version.and_then(|v| v.parse::<u64>().ok());
        match cached {
            Some(cached) if cached < written && when.elapsed() < RECORD_TTL => true,
            _ => {
                records.versions.remove(uid);
                false
            }
        }
    }

    /// Forgets the object `uid` (it is gone).
    pub fn forget(&self, uid: &str) {
        self.lock().versions.remove(uid);
    }

    /// Records a pod this controller created.
    pub fn created_pod(&self, key: ObjectRef<Pod>, pod: Arc<Pod>) {
        let mut records = self.lock();
        let now = Instant::now();
        records.created_pods.insert(key, (now, pod));
        if records.created_pods.len() > PRUNE_ABOVE {
            records
                .created_pods
                .retain(|_, (when, _)| now.duration_since(*when) < RECORD_TTL);
        }
    }

    /// The pod `key` this controller created and the pod cache does not show yet.
    pub fn created_pod_not_cached(&self, key: &ObjectRef<Pod>) -> Option<Arc<Pod>> {
        let mut records = self.lock();
        match records.created_pods.get(key) {
            Some((when, pod)) if when.elapsed() < RECORD_TTL => Some(pod.clone()),
            Some(_) => {
                records.created_pods.remove(key);
                None
            }
            None => None,
        }
    }

    /// Forgets the created pod `key` (the cache shows it, or it was deleted).
    pub fn forget_pod(&self, key: &ObjectRef<Pod>) {
        self.lock().created_pods.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cache_older_than_the_last_write_is_behind_until_it_catches_up() {
        let writes = OwnWrites::default();
        assert!(
            !writes.cache_is_behind("uid-1", Some("10")),
            "nothing written"
        );
        writes.wrote("uid-1", Some("12"));
        writes.wrote("uid-1", Some("15"));
        assert!(writes.cache_is_behind("uid-1", Some("12")));
        assert!(writes.cache_is_behind("uid-1", Some("14")));
        assert!(!writes.cache_is_behind("uid-1", Some("15")));
        // Caught up once: forgotten, so an older copy is no longer held back.
        assert!(!writes.cache_is_behind("uid-1", Some("12")));
    }

    #[test]
    fn an_older_write_reported_late_does_not_lower_the_version() {
        let writes = OwnWrites::default();
        writes.wrote("uid-1", Some("20"));
        writes.wrote("uid-1", Some("18"));
        assert!(writes.cache_is_behind("uid-1", Some("19")));
    }

    #[test]
    fn versions_that_are_not_numbers_disable_the_check() {
        let writes = OwnWrites::default();
        writes.wrote("uid-1", Some("opaque"));
        assert!(!writes.cache_is_behind("uid-1", Some("1")));
        writes.wrote("uid-2", Some("7"));
        assert!(!writes.cache_is_behind("uid-2", Some("opaque")));
        assert!(!writes.cache_is_behind("uid-2", None));
    }

    #[test]
    fn objects_are_independent_and_forgotten_when_gone() {
        let writes = OwnWrites::default();
        writes.wrote("uid-1", Some("30"));
        writes.wrote("uid-2", Some("40"));
        writes.forget("uid-2");
        assert!(writes.cache_is_behind("uid-1", Some("29")));
        assert!(!writes.cache_is_behind("uid-2", Some("39")));
    }

    #[test]
    fn a_created_pod_stands_in_for_the_cache_until_forgotten() {
        let writes = OwnWrites::default();
        let pod = ObjectRef::<Pod>::new("pod").within("ns");
        assert!(writes.created_pod_not_cached(&pod).is_none());
        writes.created_pod(pod.clone(), Arc::new(Pod::default()));
        assert!(writes.created_pod_not_cached(&pod).is_some());
        let other = ObjectRef::<Pod>::new("pod").within("other-ns");
        assert!(writes.created_pod_not_cached(&other).is_none());
        // The watch names it from the object (with its UID and version): the same key.
        let watched = Pod {
            metadata: kube::api::ObjectMeta {
                name: Some("pod".into()),
                namespace: Some("ns".into()),
                uid: Some("u-1".into()),
                resource_version: Some("9".into()),
                ..kube::api::ObjectMeta::default()
            },
            ..Pod::default()
        };
        writes.forget_pod(&ObjectRef::from_obj(&watched));
        assert!(writes.created_pod_not_cached(&pod).is_none());
    }
}
