//! Controller metrics in the Prometheus text format: reconciles and errors per controller,
//! the queue depth (objects changed in the API and not reconciled since), reconciles in
//! flight, whether this replica leads, reconcile durations, and the Events published,
//! failed and dropped.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// The two reconcilers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ControllerKind {
    /// `VirtualMachine` → instance.
    VirtualMachine,
    /// `VirtualMachineInstance` → launcher pod.
    VirtualMachineInstance,
}

impl ControllerKind {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::VirtualMachine => "virtualmachine",
            Self::VirtualMachineInstance => "virtualmachineinstance",
        }
    }
}

#[derive(Default)]
struct Counters {
    reconciles: BTreeMap<ControllerKind, u64>,
    errors: BTreeMap<(ControllerKind, &'static str), u64>,
    duration_sum: BTreeMap<ControllerKind, f64>,
    dirty: BTreeMap<ControllerKind, BTreeSet<String>>,
    in_flight: BTreeMap<ControllerKind, u64>,
}

/// What became of the Events the reconcilers raised.
#[derive(Default)]
struct EventCounts {
    published: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
}

/// The controller's metrics; shared by the reconcilers and the HTTP server.
#[derive(Default)]
pub struct Metrics {
    counters: Mutex<Counters>,
    leader: AtomicBool,
    api_reachable: AtomicBool,
    events: EventCounts,
}

impl Metrics {
    fn with<T>(&self, f: impl FnOnce(&mut Counters) -> T) -> T {
        // A panic while holding the lock cannot leave the counters inconsistent in a way
        // that matters for metrics: keep counting.
        let mut guard = match self.counters.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }

    /// An object changed in the API: it waits for a reconcile.
    pub fn mark_changed(&self, kind: ControllerKind, key: String) {
        self.with(|c| c.dirty.entry(kind).or_default().insert(key));
    }

    /// A reconcile of `key` started.
    pub fn reconcile_started(&self, kind: ControllerKind, key: &str) {
        self.with(|c| {
            if let Some(set) = c.dirty.get_mut(&kind) {
                set.remove(key);
            }
            *c.in_flight.entry(kind).or_default() += 1;
        });
    }

    /// A reconcile ended; `error` is the error's metric label.
    pub fn reconcile_finished(
        &self,
        kind: ControllerKind,
        took: Duration,
        error: Option<&'static str>,
    ) {
        self.with(|c| {
            let in_flight = c.in_flight.entry(kind).or_default();
            *in_flight = in_flight.saturating_sub(1);
            *c.reconciles.entry(kind).or_default() += 1;
            *c.duration_sum.entry(kind).or_default() += took.as_secs_f64();
            if let Some(label) = error {
                *c.errors.entry((kind, label)).or_default() += 1;
            }
        });
    }

    /// An Event was published.
    pub fn event_published(&self) {
        self.events.published.fetch_add(1, Ordering::Relaxed);
    }

    /// The API server refused or failed an Event.
    pub fn event_failed(&self) {
        self.events.failed.fetch_add(1, Ordering::Relaxed);
    }

    /// An Event was dropped: its queue was full.
    pub fn event_dropped(&self) {
        self.events.dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether this replica holds the leader lease.
    pub fn set_leader(&self, leader: bool) {
        self.leader.store(leader, Ordering::Relaxed);
    }

    /// Whether the last call to the API server succeeded.
    pub fn set_api_reachable(&self, reachable: bool) {
        self.api_reachable.store(reachable, Ordering::Relaxed);
    }

    /// Readiness: the API server answered the last lease call.
    pub fn api_reachable(&self) -> bool {
        self.api_reachable.load(Ordering::Relaxed)
    }

    /// The metrics as Prometheus text.
    pub fn render(&self) -> String {
        let leader = u8::from(self.leader.load(Ordering::Relaxed));
        self.with(|c| {
            let mut out = String::new();
            per_controller(&mut out, "reconciles_total", "counter", "Reconciles run.", |kind| {
                c.reconciles.get(&kind).copied().unwrap_or(0).to_string()
            });
            header(&mut out, "reconcile_errors_total", "counter", "Reconciles that failed, by error.");
            for ((kind, label), n) in &c.errors {
                let _ = writeln!(
                    out,
                    "ironvisor_controller_reconcile_errors_total{{controller=\"{}\",error=\"{label}\"}} {n}",
                    kind.as_str()
                );
            }
            per_controller(&mut out, "reconcile_duration_seconds_sum", "counter", "Time spent reconciling.", |kind| {
                format!("{:.6}", c.duration_sum.get(&kind).copied().unwrap_or(0.0))
            });
            per_controller(&mut out, "queue_depth", "gauge", "Objects changed in the API and not reconciled since.", |kind| {
                c.dirty.get(&kind).map_or(0, BTreeSet::len).to_string()
            });
            per_controller(&mut out, "reconciles_in_flight", "gauge", "Reconciles running now.", |kind| {
                c.in_flight.get(&kind).copied().unwrap_or(0).to_string()
            });
            header(&mut out, "events_total", "counter", "Events raised, by outcome.");
            for (outcome, counter) in [
                ("published", &self.events.published),
                ("failed", &self.events.failed),
                ("dropped", &self.events.dropped),
            ] {
                let n = counter.load(Ordering::Relaxed);
                let _ = writeln!(out, "ironvisor_controller_events_total{{outcome=\"{outcome}\"}} {n}");
            }
            header(&mut out, "leader", "gauge", "1 while this replica holds the leader lease.");
            let _ = writeln!(out, "ironvisor_controller_leader {leader}");
            out
        })
    }
}

/// `# HELP` and `# TYPE` of the metric `ironvisor_controller_<name>`.
fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP ironvisor_controller_{name} {help}");
    let _ = writeln!(out, "# TYPE ironvisor_controller_{name} {kind}");
}

/// A metric with one sample per reconciler.
fn per_controller(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    value: impl Fn(ControllerKind) -> String,
) {
    header(out, name, kind, help);
    for controller in [
        ControllerKind::VirtualMachine,
        ControllerKind::VirtualMachineInstance,
    ] {
        let _ = writeln!(
            out,
            "ironvisor_controller_{name}{{controller=\"{}\"}} {}",
            controller.as_str(),
            value(controller)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_errors_depth_and_leadership() {
        let m = Metrics::default();
        m.mark_changed(ControllerKind::VirtualMachine, "default/a".into());
        m.mark_changed(ControllerKind::VirtualMachine, "default/b".into());
        m.reconcile_started(ControllerKind::VirtualMachine, "default/a");
        m.reconcile_started(ControllerKind::VirtualMachine, "default/c");
        m.reconcile_started(ControllerKind::VirtualMachine, "default/d");
        m.event_published();
        m.event_dropped();
        m.reconcile_finished(
            ControllerKind::VirtualMachine,
            Duration::from_millis(5),
            None,
        );
        m.reconcile_finished(
            ControllerKind::VirtualMachine,
            Duration::from_millis(5),
            Some("Kube"),
        );
        m.set_leader(true);
        let text = m.render();
        assert!(
            text.contains("ironvisor_controller_reconciles_total{controller=\"virtualmachine\"} 2")
        );
        assert!(text.contains("ironvisor_controller_reconcile_errors_total{controller=\"virtualmachine\",error=\"Kube\"} 1"));
        assert!(text.contains("ironvisor_controller_queue_depth{controller=\"virtualmachine\"} 1"));
        assert!(text.contains("ironvisor_controller_leader 1"));
        assert!(text.contains(
            "ironvisor_controller_reconciles_in_flight{controller=\"virtualmachine\"} 1"
        ));
        assert!(text.contains("ironvisor_controller_events_total{outcome=\"published\"} 1"));
        assert!(text.contains("ironvisor_controller_events_total{outcome=\"dropped\"} 1"));
        assert!(text.contains("ironvisor_controller_events_total{outcome=\"failed\"} 0"));
    }
}
