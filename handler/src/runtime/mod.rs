//! The reconcile loop. On every change (a [`Runtime::wake`]) and every second it looks at
//! each VM and
//!
//! 1. **observes** its launcher: still running (then asks its API whether the guest runs
//!    or is paused), or gone (then reads how it ended and tears the instance down);
//! 2. **decides** with the run strategy ([`crate::strategy::plan`]) whether to start a new
//!    instance ([`start`]), stop the running one ([`stop`]), or remove a deleted VM;
//! 3. **writes status**: VM `printableStatus` and conditions ([`crate::status`]).
//!
//! VMs are handled one after the other by a single task, so no two passes ever act on
//! the same VM at once; API requests only write their intent (spec, start/stop requests,
//! deletion) to the store and wake the loop.

mod pinning;
mod start;
mod stop;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ironvisor_crds::v1alpha1::{
    RunStrategy, VirtualMachineInstancePhase, VirtualMachineInstanceStatus,
};
use ironvisor_disks::ImageStore;
use ironvisor_launcher_api::control::{VmState, VmStatus};
use ironvisor_launcher_api::LauncherClient;
use ironvisor_net::NetworkConfig;
use tokio::sync::{watch, Notify};
use tracing::{debug, info, info_span, warn, Instrument};

use crate::backend::BackendSelector;
use crate::cgroup::{CgroupError, CgroupLayout};
use crate::config::DaemonConfig;
use crate::launcher_proc::{self, Liveness};
use crate::records::{EventRecord, EventType, ExitOutcome, LauncherPhase, LauncherRecord, VmKey};
use crate::status::{self, set_vmi_conditions, set_vmi_phase, VmObservation};
use crate::store::{Store, StoreError, VmSnapshot};
use crate::strategy::{self, Decision, Inputs, Instance};
use crate::translate::KernelImages;

/// Why a reconcile pass failed for a VM.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The VM cgroup layout could not be determined.
    #[error("cannot set up VM cgroups: {0}")]
    Cgroup(#[from] CgroupError),
    /// A launcher operation failed.
    #[error(transparent)]
    Launcher(#[from] launcher_proc::LauncherError),
    /// A blocking task failed.
    #[error("VM {vm}: background task failed: {reason}")]
    Task {
        /// The VM.
        vm: String,
        /// Why.
        reason: String,
    },
}

/// Current time in Unix milliseconds.
pub fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// An event stamped now.
pub fn event(type_: EventType, reason: &str, message: impl Into<String>) -> EventRecord {
    EventRecord {
        time_unix: now_unix_ms() / 1000,
        type_,
        reason: reason.to_string(),
        message: message.into(),
    }
}

/// A fresh UID (RFC 4122 version 4, from the kernel's generator).
pub fn new_uid() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| {
            // Without procfs: time and pid are unique enough for one node.
            format!("{:x}-{:x}", now_unix_ms(), std::process::id())
        })
}

/// What the reconcile loop works with.
#[derive(Debug)]
pub struct RuntimeContext {
    /// The store.
    pub store: Arc<Store>,
    /// Daemon settings.
    pub config: DaemonConfig,
    /// KVM or emulation.
    pub backend: BackendSelector,
    /// Where VM cgroups go.
    pub cgroups: CgroupLayout,
    /// Kernel images and defaults.
    pub kernels: KernelImages,
    /// The node network settings.
    pub network: NetworkConfig,
    /// Base disk images.
    pub images: ImageStore,
    /// The host CPUs dedicated-CPU VMs are pinned to.
    pub cpus: crate::cpus::NodeCpus,
}

/// The reconcile loop and its trigger.
#[derive(Debug)]
pub struct Runtime {
    ctx: Arc<RuntimeContext>,
    wake: Notify,
    /// Launcher API connections, by instance UID.
    clients: Mutex<HashMap<String, LauncherClient>>,
}

impl Runtime {
    /// A runtime over `ctx`.
    pub fn new(ctx: RuntimeContext) -> Arc<Self> {
        Arc::new(Self {
            ctx: Arc::new(ctx),
            wake: Notify::new(),
            clients: Mutex::new(HashMap::new()),
        })
    }

    /// The shared context.
    pub fn context(&self) -> &Arc<RuntimeContext> {
        &self.ctx
    }

    /// Asks for a reconcile pass as soon as possible.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Runs passes until `shutdown` turns true. Launchers keep running afterwards.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        info!(resync = ?self.ctx.config.resync, "reconcile loop started");
        loop {
            self.reconcile_all().await;
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.ctx.config.resync) => {}
                _ = shutdown.changed() => break,
            }
            if *shutdown.borrow() {
                break;
            }
        }
        info!("reconcile loop stopped");
    }

    /// One pass over every VM.
    pub async fn reconcile_all(&self) {
        let keys = match self.ctx.store.call(|s| s.keys()).await {
            Ok(keys) => keys,
            Err(error) => {
                warn!(%error, "cannot list VMs");
                return;
            }
        };
        for key in keys {
            if let Err(error) = self.reconcile_vm(&key).await {
                warn!(vm = %key, %error, "reconcile failed; retrying on the next pass");
            }
        }
    }

    async fn snapshot(&self, key: &VmKey) -> Result<Option<VmSnapshot>, RuntimeError> {
        let key = key.clone();
        Ok(self.ctx.store.call(move |s| s.get(&key)).await?)
    }

    /// Reconciles one VM.
    pub async fn reconcile_vm(&self, key: &VmKey) -> Result<(), RuntimeError> {
        let span = info_span!("reconcile", vm = %key);
        async {
            let now = now_unix_ms();
            let Some(snap) = self.snapshot(key).await? else {
                return Ok(());
            };
            if let Some(launcher) = &snap.launcher {
                match launcher.phase {
                    LauncherPhase::Preparing => {
                        // Starts run to completion inside one pass, so a record still
                        // preparing was left by a daemon that died mid-start.
                        self.finish_instance(
                            key,
                            launcher.clone(),
                            ExitOutcome::Vanished,
                            Some("the node agent stopped while starting this instance"),
                        )
                        .await?;
                    }
                    LauncherPhase::Spawned => {
                        let liveness = launcher_proc::liveness(key, launcher)?;
                        match liveness {
                            Liveness::Alive => {
                                self.observe_running(key, &snap, launcher, now).await?
                            }
                            Liveness::Exited(outcome) => {
                                self.finish_instance(key, launcher.clone(), outcome, None)
                                    .await?
                            }
                        }
                    }
                }
            }

            let Some(snap) = self.snapshot(key).await? else {
                return Ok(());
            };
            let strategy = run_strategy(&snap);
            let plan = strategy::plan(&Inputs {
                strategy,
                observed_strategy: snap.record.runtime.observed_run_strategy,
                deleting: snap.record.runtime.deleting,
                requests: &snap.record.runtime.requests,
                instance: instance_of(&snap),
                last_exit: snap.record.runtime.last_exit.as_ref(),
                retry_after_unix_ms: snap.record.runtime.retry_after_unix_ms,
                now_unix_ms: now,
            });
            debug!(?plan, "decided");
            self.bookkeeping(key, &snap, &plan, strategy).await?;
            match plan.decision {
                Decision::Start(reason) => {
                    self.start_instance(key, &snap, reason, plan.consume_on_start)
                        .await?;
                }
                Decision::Stop {
                    cause,
                    forced,
                    grace_period_seconds,
                } => {
                    self.begin_stop(key, &snap, cause, forced, grace_period_seconds, now)
                        .await?;
                }
                Decision::Remove => {
                    self.remove_vm(key, &snap).await?;
                    return Ok(());
                }
                Decision::BackOff { .. } | Decision::Nothing => {}
            }
            self.write_status(key, plan.decision).await
        }
        .instrument(span)
        .await
    }

    /// Applies the plan's request-queue bookkeeping and records the strategy acted on.
    async fn bookkeeping(
        &self,
        key: &VmKey,
        snap: &VmSnapshot,
        plan: &strategy::Plan,
        strategy: RunStrategy,
    ) -> Result<(), RuntimeError> {
        let starting = matches!(plan.decision, Decision::Start(_));
        let idle = snap.launcher.is_none();
        let runtime = &snap.record.runtime;
        let clear_unschedulable = !starting
            && idle
            && runtime
                .start_error
                .as_ref()
                .is_some_and(|(reason, _)| status::is_unschedulable(reason));
        let needs_write = plan.drop_requests > 0
            || plan.cancel_restart
            || clear_unschedulable
            || (!starting && runtime.observed_run_strategy != Some(strategy));
        if !needs_write {
            return Ok(());
        }
        let key = key.clone();
        let plan = *plan;
        self.ctx
            .store
            .call(move |store| {
                store.transact(|t| -> Result<(), StoreError> {
                    let Some(mut rec) = t.vm(&key)? else {
                        return Ok(());
                    };
                    let rt = &mut rec.runtime;
                    let drop = plan.drop_requests.min(rt.requests.len());
                    rt.requests.drain(..drop);
                    if plan.cancel_restart {
                        if let Some(exit) = rt.last_exit.as_mut() {
                            exit.requested = true;
                        }
                        rt.retry_after_unix_ms = None;
                        rt.start_error = None;
                    }
                    if clear_unschedulable {
                        rt.start_error = None;
                    }
                    if !starting {
                        rt.observed_run_strategy = Some(strategy);
                    }
                    t.put_vm(&key, &rec)
                })
            })
            .await?;
        Ok(())
    }

    /// Follows a running launcher: its pid, whether the guest runs or is paused, the
    /// stop deadline, and the failure counter reset after a stable run.
    async fn observe_running(
        &self,
        key: &VmKey,
        snap: &VmSnapshot,
        launcher: &LauncherRecord,
        now: i64,
    ) -> Result<(), RuntimeError> {
        if let Some(stop) = launcher.stop {
            if now >= stop.kill_after_unix_ms {
                self.enforce_stop_deadline(key, launcher, stop, now).await?;
            }
        }
        let status = self.launcher_status(launcher).await;
        let state = status.as_ref().map(|status| status.state);
        let pinning = (!launcher.dedicated_cpus.is_empty()).then(|| {
            let applied = status
                .as_ref()
                .map(|status| status.vcpu_affinity.clone())
                .unwrap_or_default();
            pinning::pinning_event(&launcher.dedicated_cpus, &applied)
        });
        let launcher_identity = launcher
            .launcher
            .or_else(|| launcher_proc::launcher_identity(launcher));
        let stable_after =
            i64::try_from(self.ctx.config.backoff.stable_after.as_millis()).unwrap_or(i64::MAX);
        let uid = launcher.vmi_uid.clone();
        let key_owned = key.clone();
        let node = self.ctx.config.node_name.clone();
        let backend = launcher.backend;
        let was_running = snap
            .vmi
            .as_ref()
            .and_then(status::vmi_phase)
            .is_some_and(|p| p == VirtualMachineInstancePhase::Running);
        let becomes_running =
            !was_running && matches!(state, Some(VmState::Running | VmState::Paused));
        self.ctx
            .store
            .call(move |store| {
                store.transact(|t| -> Result<(), StoreError> {
                    let key = &key_owned;
                    let Some(mut l) = t.launcher(key)? else {
                        return Ok(());
                    };
                    if l.vmi_uid != uid {
                        return Ok(());
                    }
                    let mut l_changed = false;
                    if l.launcher.is_none() && launcher_identity.is_some() {
                        l.launcher = launcher_identity;
                        l_changed = true;
                    }
                    let running = matches!(state, Some(VmState::Running | VmState::Paused));
                    if running && l.running_since_unix_ms.is_none() {
                        l.running_since_unix_ms = Some(now);
                        l_changed = true;
                    }
                    if l_changed {
                        t.put_launcher(key, &l)?;
                    }
                    if let Some(mut vmi) = t.vmi(key)? {
                        let before = vmi.status.clone();
                        if let Some(state) = state {
                            apply_launcher_state(&mut vmi, state, now);
                        }
                        if let Some(identity) = l.launcher {
                            let status = vmi.status.get_or_insert_with(Default::default);
                            status.launcher_pid = u32::try_from(identity.pid).ok();
                        }
                        if vmi.status != before {
                            t.put_vmi(key, &vmi)?;
                        }
                    }
                    if let Some(mut rec) = t.vm(key)? {
                        let stable = l
                            .running_since_unix_ms
                            .is_some_and(|since| now.saturating_sub(since) >= stable_after);
                        if stable && rec.runtime.consecutive_failures > 0 {
                            rec.runtime.consecutive_failures = 0;
                            rec.runtime.retry_after_unix_ms = None;
                            t.put_vm(key, &rec)?;
                        }
                    }
                    if becomes_running {
                        if let Some(pinning) = pinning {
                            t.push_event(key, pinning)?;
                        }
                        t.push_event(
                            key,
                            event(
                                EventType::Normal,
                                "Started",
                                format!(
                                    "VirtualMachineInstance {uid} is running on node {node} ({})",
                                    backend.as_str()
                                ),
                            ),
                        )?;
                    }
                    Ok(())
                })
            })
            .await?;
        if becomes_running {
            info!(vm = %key, uid = %launcher.vmi_uid, "guest running");
        }
        Ok(())
    }

    /// The guest's status from the launcher's API, or `None` if it does not answer (yet).
    async fn launcher_status(&self, launcher: &LauncherRecord) -> Option<VmStatus> {
        let cached = self
            .clients
            .lock()
            .ok()
            .and_then(|clients| clients.get(&launcher.vmi_uid).cloned());
        let client = match cached {
            Some(client) => client,
            None => {
                let client = launcher_proc::connect(launcher).await.ok()?;
                if let Ok(mut clients) = self.clients.lock() {
                    clients.insert(launcher.vmi_uid.clone(), client.clone());
                }
                client
            }
        };
        match client.status().await {
            Ok(status) => Some(status),
            Err(error) => {
                debug!(%error, "launcher status unavailable");
                self.forget_client(&launcher.vmi_uid);
                None
            }
        }
    }

    fn forget_client(&self, uid: &str) {
        if let Ok(mut clients) = self.clients.lock() {
            clients.remove(uid);
        }
    }

    /// Writes the VM status when it changed.
    async fn write_status(&self, key: &VmKey, decision: Decision) -> Result<(), RuntimeError> {
        let key = key.clone();
        self.ctx
            .store
            .call(move |store| {
                store.transact(|t| -> Result<(), StoreError> {
                    let Some(mut rec) = t.vm(&key)? else {
                        return Ok(());
                    };
                    let vmi = t.vmi(&key)?;
                    let launcher = t.launcher(&key)?;
                    let status = status::vm_status(&VmObservation {
                        record: &rec,
                        vmi: vmi.as_ref(),
                        launcher: launcher.as_ref(),
                        decision,
                        now_unix_ms: now_unix_ms(),
                    });
                    if rec.vm.status.as_ref() != Some(&status) {
                        rec.vm.status = Some(status);
                        t.put_vm(&key, &rec)?;
                    }
                    Ok(())
                })
            })
            .await?;
        Ok(())
    }

    async fn blocking<T, F>(&self, key: &VmKey, f: F) -> Result<T, RuntimeError>
    where
        T: Send + 'static,
        F: FnOnce(&RuntimeContext) -> T + Send + 'static,
    {
        let ctx = Arc::clone(&self.ctx);
        tokio::task::spawn_blocking(move || f(&ctx))
            .await
            .map_err(|e| RuntimeError::Task {
                vm: key.to_string(),
                reason: e.to_string(),
            })
    }
}

/// The VM's run strategy (Halted when unset, as defaulting would make it).
pub fn run_strategy(snap: &VmSnapshot) -> RunStrategy {
    snap.record
        .vm
        .spec
        .run_strategy
        .unwrap_or(RunStrategy::Halted)
}

/// The instance as the strategy sees it.
fn instance_of(snap: &VmSnapshot) -> Instance<'_> {
    match (&snap.launcher, &snap.vmi) {
        (Some(launcher), _) => Instance::Active {
            uid: &launcher.vmi_uid,
            stopping: launcher.stop,
        },
        (None, Some(vmi)) => Instance::Final {
            uid: vmi.metadata.uid.as_deref().unwrap_or(""),
        },
        (None, None) => Instance::None,
    }
}

/// Updates the instance's phase and conditions from what its launcher reports.
fn apply_launcher_state(
    vmi: &mut ironvisor_crds::v1alpha1::VirtualMachineInstance,
    state: VmState,
    now: i64,
) {
    match state {
        VmState::Running | VmState::Paused => {
            set_vmi_phase(vmi, VirtualMachineInstancePhase::Running, None, now);
            set_vmi_conditions(vmi, true, None, state == VmState::Paused, now);
        }
        VmState::Starting => {
            set_vmi_conditions(
                vmi,
                false,
                Some(("GuestNotRunning", "the launcher is building the VM".into())),
                false,
                now,
            );
        }
        VmState::ShuttingDown | VmState::Stopped => {
            set_vmi_conditions(
                vmi,
                false,
                Some(("GuestShuttingDown", "the guest is shutting down".into())),
                false,
                now,
            );
        }
    }
}

/// A fresh instance status in phase Pending.
fn pending_status(now: i64) -> VirtualMachineInstanceStatus {
    let mut vmi = ironvisor_crds::v1alpha1::VirtualMachineInstance::new("", Default::default());
    set_vmi_phase(&mut vmi, VirtualMachineInstancePhase::Pending, None, now);
    vmi.status.unwrap_or_default()
}

/// How long to wait after the grace period before killing the cgroup.
pub const STOP_MARGIN: Duration = Duration::from_secs(10);
