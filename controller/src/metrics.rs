//! Controller metrics in the Prometheus text format: reconciles and errors per controller,
//! the queue depth (objects changed in the API and not reconciled since), whether this
//! replica leads, and reconcile durations.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
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
}

/// The controller's metrics; shared by the reconcilers and the HTTP server.
#[derive(Default)]
pub struct Metrics {
    counters: Mutex<Counters>,
    leader: AtomicBool,
    api_reachable: AtomicBool,
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
            *c.reconciles.entry(kind).or_default() += 1;
            *c.duration_sum.entry(kind).or_default() += took.as_secs_f64();
            if let Some(label) = error {
                *c.errors.entry((kind, label)).or_default() += 1;
            }
        });
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
            let kinds = [ControllerKind::VirtualMachine, ControllerKind::VirtualMachineInstance];
            let _ = writeln!(out, "# HELP ironvisor_controller_reconciles_total Reconciles run.");
            let _ = writeln!(out, "# TYPE ironvisor_controller_reconciles_total counter");
            for kind in kinds {
                let n = c.reconciles.get(&kind).copied().unwrap_or(0);
                let _ = writeln!(out, "ironvisor_controller_reconciles_total{{controller=\"{}\"}} {n}", kind.as_str());
            }
            let _ = writeln!(out, "# HELP ironvisor_controller_reconcile_errors_total Reconciles that failed, by error.");
            let _ = writeln!(out, "# TYPE ironvisor_controller_reconcile_errors_total counter");
            for ((kind, label), n) in &c.errors {
                let _ = writeln!(
                    out,
                    "ironvisor_controller_reconcile_errors_total{{controller=\"{}\",error=\"{label}\"}} {n}",
                    kind.as_str()
                );
            }
            let _ = writeln!(out, "# HELP ironvisor_controller_reconcile_duration_seconds_sum Time spent reconciling.");
            let _ = writeln!(out, "# TYPE ironvisor_controller_reconcile_duration_seconds_sum counter");
            for kind in kinds {
                let s = c.duration_sum.get(&kind).copied().unwrap_or(0.0);
                let _ = writeln!(out, "ironvisor_controller_reconcile_duration_seconds_sum{{controller=\"{}\"}} {s:.6}", kind.as_str());
            }
            let _ = writeln!(out, "# HELP ironvisor_controller_queue_depth Objects changed in the API and not reconciled since.");
            let _ = writeln!(out, "# TYPE ironvisor_controller_queue_depth gauge");
            for kind in kinds {
                let n = c.dirty.get(&kind).map_or(0, BTreeSet::len);
                let _ = writeln!(out, "ironvisor_controller_queue_depth{{controller=\"{}\"}} {n}", kind.as_str());
            }
            let _ = writeln!(out, "# HELP ironvisor_controller_leader 1 while this replica holds the leader lease.");
            let _ = writeln!(out, "# TYPE ironvisor_controller_leader gauge");
            let _ = writeln!(out, "ironvisor_controller_leader {leader}");
            out
        })
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
    }
}
