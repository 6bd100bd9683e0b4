//! Starting an instance: pick the backend, create the VMI, prepare kernel, disks and
//! network, write the launch configuration and start the launcher. Whatever fails undoes
//! what was done, and the instance ends as Failed with a reason the VM status shows.

use std::path::PathBuf;

use ironvisor_crds::quantity;
use ironvisor_crds::v1alpha1::{
    IsolationMode, VirtualMachine, VirtualMachineInstance, VirtualMachineInstanceNetworkInterface,
    VirtualMachineInstancePhase, VirtualMachineInstanceSpec,
};
use ironvisor_disks::{DiskContext, OciCache, VolumeSource};
use ironvisor_launcher_api::config::{DiskConfig, NetConfig};
use ironvisor_net::VmNetwork;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use tracing::{info, warn};

use super::{event, new_uid, now_unix_ms, pending_status, Runtime, RuntimeContext, RuntimeError};
use crate::jailer;
use crate::launcher_proc::{self, Confinement, InstancePaths, SpawnRequest};
use crate::records::{
    BackendKind, EventType, ExitOutcome, LastExit, LauncherPhase, LauncherRecord, ProcessIdentity,
    VmKey,
};
use crate::status::{
    set_vmi_conditions, set_vmi_phase, time, INSTANCETYPE_REASON, INSUFFICIENT_CPUS_REASON,
    INSUFFICIENT_MEMORY_REASON, UNSCHEDULABLE_REASON,
};
use crate::store::{StoreError, VmSnapshot};
use crate::strategy::StartReason;
use crate::translate::{self, LaunchPlan};
use crate::volumes;

/// A start that failed before the launcher ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartFailure {
    /// CamelCase reason ("ImageNotFound", "NetworkSetupFailed", ...).
    pub reason: &'static str,
    /// What went wrong, naming the VM.
    pub message: String,
}

/// What the transaction that creates an instance decided.
enum Created {
    /// Nothing to do (the VM is gone, being deleted, or already has an instance).
    No,
    /// Not enough free dedicated CPUs; the message says how many.
    NoCpus(String),
    /// Created, with these dedicated CPUs (empty for shared CPUs).
    Yes(Vec<u32>),
}

/// What a successful start produced.
#[derive(Debug, Clone)]
struct Started {
    monitor: ProcessIdentity,
    network: Option<VmNetwork>,
    ephemeral_files: Vec<PathBuf>,
}

impl Runtime {
    /// Starts a new instance of the VM (replacing a final one).
    pub(super) async fn start_instance(
        &self,
        key: &VmKey,
        snap: &VmSnapshot,
        reason: StartReason,
        consume_requests: usize,
    ) -> Result<(), RuntimeError> {
        let spec = {
            let vm = snap.record.vm.clone();
            self.ctx
                .store
                .call(move |store| store.transact(|t| crate::sizing::instance_spec(t, &vm)))
                .await?
        };
        let spec = match spec {
            Ok(spec) => spec,
            Err(missing) => {
                let message = format!("VM {key}: {missing}");
                return self
                    .mark_unschedulable(key, INSTANCETYPE_REASON, message)
                    .await;
            }
        };
        if let Some(message) = memory_problem(key, &spec, &self.ctx.config.node_name) {
            return self
                .mark_unschedulable(key, INSUFFICIENT_MEMORY_REASON, message)
                .await;
        }
        let selection = match self.ctx.backend.select(spec.hardware_isolation()) {
            Ok(selection) => selection,
            Err(unschedulable) => {
                return self
                    .mark_unschedulable(key, UNSCHEDULABLE_REASON, unschedulable.to_string())
                    .await;
            }
        };
        let now = now_unix_ms();
        let uid = new_uid();
        let paths = InstancePaths::new(&self.ctx.config, key, &uid);
        let cgroups = self.ctx.cgroups.paths_for(key);
        let vmi = new_vmi(&snap.record.vm, &spec, key, &uid, now);
        let record = LauncherRecord {
            vmi_uid: uid.clone(),
            phase: LauncherPhase::Preparing,
            monitor: None,
            launcher: None,
            run_dir: paths.run_dir.clone(),
            api_socket: paths.api_socket.clone(),
            console_socket: paths.console_socket.clone(),
            status_file: paths.status_file.clone(),
            pid_file: paths.pid_file.clone(),
            log_file: paths.log_file.clone(),
            backend: selection.kind,
            cgroups: cgroups.clone(),
            network: None,
            ephemeral_files: Vec::new(),
            started_unix_ms: now,
            running_since_unix_ms: None,
            stop: None,
            dedicated_cpus: Vec::new(),
        };
        let strategy = super::run_strategy(snap);
        let emulation = selection.emulation_reason.clone();
        let dedicated_vcpus = spec.dedicated_cpu_placement().then(|| spec.vcpus());
        let mapped_settings = ironvisor_crds::compat::mapped_settings(&spec);
        let created = {
            let key = key.clone();
            let uid = uid.clone();
            let mut record = record.clone();
            let ctx = self.ctx.clone();
            self.ctx
                .store
                .call(move |store| {
                    store.transact(|t| -> Result<Created, StoreError> {
                        let Some(mut rec) = t.vm(&key)? else {
                            return Ok(Created::No);
                        };
                        if rec.runtime.deleting || t.launcher(&key)?.is_some() {
                            return Ok(Created::No);
                        }
                        if let Some(vcpus) = dedicated_vcpus {
                            let taken = t
                                .launchers()?
                                .into_iter()
                                .flat_map(|(_, l)| l.dedicated_cpus)
                                .collect();
                            match ctx.cpus.pick(vcpus, &taken) {
                                Ok(cpus) => record.dedicated_cpus = cpus,
                                Err(err) => return Ok(Created::NoCpus(err.to_string())),
                            }
                        }
                        let rt = &mut rec.runtime;
                        let consume = consume_requests.min(rt.requests.len());
                        rt.requests.drain(..consume);
                        rt.observed_run_strategy = Some(strategy);
                        t.put_vm(&key, &rec)?;
                        t.put_vmi(&key, &vmi)?;
                        t.put_launcher(&key, &record)?;
                        t.push_event(
                            &key,
                            event(
                                EventType::Normal,
                                "SuccessfulCreate",
                                format!(
                                    "Created VirtualMachineInstance {uid} ({})",
                                    describe(reason)
                                ),
                            ),
                        )?;
                        for mapped in &mapped_settings {
                            t.push_event(
                                &key,
                                event(EventType::Warning, mapped.reason, mapped.message.clone()),
                            )?;
                        }
                        if let Some(why) = &emulation {
                            t.push_event(
                                &key,
                                event(
                                    EventType::Warning,
                                    "SoftwareEmulation",
                                    format!(
                                        "no hardware-assisted KVM on this node, the VM runs \
                                         under software emulation (QEMU TCG): {why}"
                                    ),
                                ),
                            )?;
                        }
                        Ok(Created::Yes(record.dedicated_cpus.clone()))
                    })
                })
                .await?
        };
        let dedicated_cpus = match created {
            Created::No => return Ok(()),
            Created::NoCpus(message) => {
                return self
                    .mark_unschedulable(
                        key,
                        INSUFFICIENT_CPUS_REASON,
                        format!("VM {key}: {message}"),
                    )
                    .await;
            }
            Created::Yes(cpus) => cpus,
        };
        if let Some(why) = &selection.emulation_reason {
            warn!(vm = %key, reason = %why, "running under software emulation");
        }

        let backend = selection.kind;
        let job = StartJob {
            key: key.clone(),
            spec: spec.clone(),
            uid: uid.clone(),
            paths,
            backend,
            cgroups,
            dedicated_cpus,
        };
        let outcome = self
            .blocking(key, move |ctx| prepare_and_spawn(ctx, &job))
            .await?;
        match outcome {
            Ok(started) => self.record_started(key, &uid, backend, started).await,
            Err(failure) => self.record_start_failure(key, &uid, failure).await,
        }
    }

    async fn mark_unschedulable(
        &self,
        key: &VmKey,
        reason: &'static str,
        message: String,
    ) -> Result<(), RuntimeError> {
        let key = key.clone();
        self.ctx
            .store
            .call(move |store| {
                store.transact(|t| -> Result<(), StoreError> {
                    let Some(mut rec) = t.vm(&key)? else {
                        return Ok(());
                    };
                    let wanted = Some((reason.to_string(), message.clone()));
                    if rec.runtime.start_error == wanted {
                        return Ok(());
                    }
                    rec.runtime.start_error = wanted;
                    t.put_vm(&key, &rec)?;
                    warn!(vm = %key, reason, %message, "not started: unschedulable");
                    t.push_event(&key, event(EventType::Warning, reason, message.clone()))
                })
            })
            .await?;
        Ok(())
    }

    async fn record_started(
        &self,
        key: &VmKey,
        uid: &str,
        backend: BackendKind,
        started: Started,
    ) -> Result<(), RuntimeError> {
        let key = key.clone();
        let uid = uid.to_string();
        let node = self.ctx.config.node_name.clone();
        let network_json = started
            .network
            .as_ref()
            .and_then(|n| serde_json::to_value(n).ok());
        let interfaces: Vec<VirtualMachineInstanceNetworkInterface> = started
            .network
            .iter()
            .map(|n| VirtualMachineInstanceNetworkInterface {
                name: Some(n.interface.clone()),
                ip_address: Some(n.reported_ip().to_string()),
                ip_addresses: vec![n.reported_ip().to_string()],
                mac: Some(n.mac_string()),
                interface_name: Some("eth0".into()),
            })
            .collect();
        let monitor_pid = started.monitor.pid;
        self.ctx
            .store
            .call(move |store| {
                store.transact(|t| -> Result<(), StoreError> {
                    let now = now_unix_ms();
                    if let Some(mut l) = t.launcher(&key)? {
                        if l.vmi_uid == uid {
                            l.phase = LauncherPhase::Spawned;
                            l.monitor = Some(started.monitor);
                            l.network = network_json.clone();
                            l.ephemeral_files = started.ephemeral_files.clone();
                            t.put_launcher(&key, &l)?;
                        }
                    }
                    if let Some(mut vmi) = t.vmi(&key)? {
                        set_vmi_phase(&mut vmi, VirtualMachineInstancePhase::Scheduled, None, now);
                        set_vmi_conditions(
                            &mut vmi,
                            false,
                            Some(("GuestNotRunning", "the launcher is starting".into())),
                            false,
                            now,
                        );
                        let status = vmi.status.get_or_insert_with(Default::default);
                        status.node_name = Some(node.clone());
                        status.interfaces = interfaces.clone();
                        status.isolation = Some(match backend {
                            BackendKind::Kvm => IsolationMode::Hardware,
                            BackendKind::QemuTcg => IsolationMode::Emulation,
                        });
                        t.put_vmi(&key, &vmi)?;
                    }
                    if let Some(mut rec) = t.vm(&key)? {
                        rec.runtime.start_error = None;
                        t.put_vm(&key, &rec)?;
                    }
                    t.push_event(
                        &key,
                        event(
                            EventType::Normal,
                            "Scheduled",
                            format!(
                                "VirtualMachineInstance {uid} placed on node {node}: launcher \
                                 {} started (monitor pid {monitor_pid})",
                                backend.as_str()
                            ),
                        ),
                    )
                })
            })
            .await?;
        Ok(())
    }

    async fn record_start_failure(
        &self,
        key: &VmKey,
        uid: &str,
        failure: StartFailure,
    ) -> Result<(), RuntimeError> {
        warn!(vm = %key, reason = failure.reason, message = %failure.message, "instance could not be started");
        let key = key.clone();
        let uid = uid.to_string();
        let backoff = self.ctx.config.backoff;
        self.ctx
            .store
            .call(move |store| {
                store.transact(|t| -> Result<(), StoreError> {
                    let now = now_unix_ms();
                    t.delete_launcher(&key)?;
                    if let Some(mut vmi) = t.vmi(&key)? {
                        set_vmi_phase(
                            &mut vmi,
                            VirtualMachineInstancePhase::Failed,
                            Some(failure.reason),
                            now,
                        );
                        set_vmi_conditions(
                            &mut vmi,
                            false,
                            Some((failure.reason, failure.message.clone())),
                            false,
                            now,
                        );
                        t.put_vmi(&key, &vmi)?;
                    }
                    if let Some(mut rec) = t.vm(&key)? {
                        let rt = &mut rec.runtime;
                        rt.start_error =
                            Some((failure.reason.to_string(), failure.message.clone()));
                        rt.last_exit = Some(LastExit {
                            vmi_uid: uid.clone(),
                            outcome: ExitOutcome::NotStarted,
                            requested: false,
                            at_unix_ms: now,
                        });
                        rt.consecutive_failures = rt.consecutive_failures.saturating_add(1);
                        let delay = backoff.delay(rt.consecutive_failures);
                        rt.retry_after_unix_ms = (!delay.is_zero()).then(|| {
                            now.saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX))
                        });
                        t.put_vm(&key, &rec)?;
                    }
                    t.push_event(
                        &key,
                        event(EventType::Warning, "FailedCreate", failure.message.clone()),
                    )
                })
            })
            .await?;
        Ok(())
    }
}

/// Why the node can never give the VM its memory, if it cannot: the guest memory is
/// more than the node's total memory (the launcher checks what is available at start).
fn memory_problem(key: &VmKey, spec: &VirtualMachineInstanceSpec, node: &str) -> Option<String> {
    let guest = spec.domain.memory.as_ref()?;
    let bytes = quantity::to_bytes(&guest.guest).ok()?;
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let total_kib: u64 = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let total = total_kib.saturating_mul(1024);
    (bytes > total).then(|| {
        format!(
            "VM {key} requests {} of guest memory but node {node} has only {} MiB in total",
            guest.guest.0,
            total / (1024 * 1024)
        )
    })
}

fn describe(reason: StartReason) -> &'static str {
    match reason {
        StartReason::Requested => "start requested",
        StartReason::StrategyChanged => "run strategy starts the VM",
        StartReason::AlwaysRunning => "runStrategy Always",
        StartReason::RestartAfterFailure => "restart after a failure",
        StartReason::Reboot => "the guest rebooted",
    }
}

/// The instance object of a VM: `spec` (its template, sized by its instance type), owned by
/// the VM, in phase Pending.
fn new_vmi(
    vm: &VirtualMachine,
    spec: &VirtualMachineInstanceSpec,
    key: &VmKey,
    uid: &str,
    now: i64,
) -> VirtualMachineInstance {
    let template_meta = vm.spec.template.metadata.clone().unwrap_or_default();
    let owner = OwnerReference {
        api_version: ironvisor_crds::v1alpha1::API_VERSION.to_string(),
        kind: ironvisor_crds::v1alpha1::VIRTUAL_MACHINE_KIND.to_string(),
        name: key.name.clone(),
        uid: vm.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    let mut vmi = VirtualMachineInstance::new(&key.name, spec.clone());
    vmi.metadata = ObjectMeta {
        name: Some(key.name.clone()),
        namespace: Some(key.namespace.clone()),
        uid: Some(uid.to_string()),
        generation: Some(1),
        creation_timestamp: Some(time(now)),
        labels: (!template_meta.labels.is_empty()).then_some(template_meta.labels),
        annotations: (!template_meta.annotations.is_empty()).then_some(template_meta.annotations),
        owner_references: Some(vec![owner]),
        ..ObjectMeta::default()
    };
    vmi.status = Some(pending_status(now));
    vmi
}

/// What was set up so far, to undo on failure.
#[derive(Default)]
struct Rollback {
    run_dir: Option<PathBuf>,
    cgroups: Vec<PathBuf>,
    network: bool,
    ephemeral_files: Vec<PathBuf>,
}

impl Rollback {
    fn undo(&self, ctx: &RuntimeContext, key: &VmKey) {
        if self.network {
            if let Err(error) = ironvisor_net::teardown(&ctx.network, &key.to_string()) {
                warn!(vm = %key, %error, "rollback: network teardown failed");
            }
        }
        for file in &self.ephemeral_files {
            if let Err(error) = std::fs::remove_file(file) {
                if error.kind() != std::io::ErrorKind::NotFound {
                    warn!(vm = %key, file = %file.display(), %error, "rollback: cannot remove disk");
                }
            }
        }
        if !self.cgroups.is_empty() {
            if let Err(error) = launcher_proc::kill_and_remove_cgroups(key, &self.cgroups) {
                warn!(vm = %key, %error, "rollback: cgroup cleanup failed");
            }
        }
        if let Some(dir) = &self.run_dir {
            if let Err(error) = launcher_proc::remove_run_dir(key, dir) {
                warn!(vm = %key, %error, "rollback: cannot remove the runtime directory");
            }
        }
    }
}

/// One instance to start.
struct StartJob {
    key: VmKey,
    spec: VirtualMachineInstanceSpec,
    uid: String,
    paths: InstancePaths,
    backend: BackendKind,
    cgroups: Vec<PathBuf>,
    dedicated_cpus: Vec<u32>,
}

/// Prepares everything and starts the launcher (blocking). On failure, undoes it all.
fn prepare_and_spawn(ctx: &RuntimeContext, job: &StartJob) -> Result<Started, StartFailure> {
    let mut rollback = Rollback::default();
    let result = try_prepare_and_spawn(ctx, job, &mut rollback);
    if result.is_err() {
        rollback.undo(ctx, &job.key);
    }
    result
}

fn try_prepare_and_spawn(
    ctx: &RuntimeContext,
    job: &StartJob,
    rollback: &mut Rollback,
) -> Result<Started, StartFailure> {
    let StartJob {
        key,
        spec,
        uid,
        paths,
        backend,
        cgroups,
        dedicated_cpus,
    } = job;
    let (uid, backend) = (uid.as_str(), *backend);
    let fail = |reason: &'static str| {
        move |e: &dyn std::fmt::Display| StartFailure {
            reason,
            message: e.to_string(),
        }
    };
    if !spec.access_credentials.is_empty() {
        return Err(StartFailure {
            reason: "ClusterOnlyVolume",
            message: format!(
                "VM {key}: spec.template.spec.accessCredentials: SSH keys from Secrets need \
                 cluster mode (the standalone node has no Secrets); put the keys in the \
                 cloudInitNoCloud userData's ssh_authorized_keys instead"
            ),
        });
    }
    let boot = ctx.kernels.resolve(key, spec).map_err(|e| StartFailure {
        reason: e.reason(),
        message: e.to_string(),
    })?;

    rollback.run_dir = Some(paths.run_dir.clone());
    launcher_proc::prepare_files(key, paths).map_err(|e| fail("FailedCreate")(&e))?;

    ctx.cgroups
        .create(key)
        .map_err(|e| fail("CgroupFailed")(&format!("VM {key}: {e}")))?;
    rollback.cgroups = cgroups.to_vec();
    // Anything left in the VM's cgroup is from an earlier, interrupted instance.
    let leftovers = crate::cgroup::members(cgroups).unwrap_or_default();
    if !leftovers.is_empty() {
        warn!(vm = %key, ?leftovers, "killing processes left from an earlier instance");
        crate::cgroup::kill_all(cgroups, launcher_proc::KILL_TIMEOUT)
            .map_err(|e| fail("CgroupFailed")(&format!("VM {key}: {e}")))?;
    }

    let (disks, ephemeral) = prepare_disks(ctx, key, spec, uid)?;
    rollback.ephemeral_files = ephemeral.clone();

    // Only the KVM launcher runs as its own user; the emulation launcher talks to libvirtd.
    let launcher_user = match backend {
        BackendKind::Kvm => ctx
            .config
            .launcher_uid_base
            .map(|base| crate::config::launcher_identity(base, uid)),
        BackendKind::QemuTcg => None,
    };
    let network = setup_network(ctx, key, spec, uid, launcher_user, rollback)?;
    let nets = network
        .iter()
        .map(|n| NetConfig {
            id: n.interface.clone(),
            tap: n.tap.clone(),
            mac: Some(n.mac_string()),
            rate_limit: None,
        })
        .collect();

    let config = translate::launch_config(
        key,
        spec,
        LaunchPlan {
            boot,
            disks,
            nets,
            console_socket: paths.console_socket.clone(),
            api_socket: paths.api_socket.clone(),
            vcpu_affinity: crate::cpus::one_to_one(dedicated_cpus),
        },
    )
    .map_err(|e| StartFailure {
        reason: e.reason(),
        message: e.to_string(),
    })?;
    launcher_proc::write_config(key, paths, &config).map_err(|e| fail("FailedCreate")(&e))?;
    // The launcher is held to its guest memory and vCPUs plus a bounded overhead.
    let limits = crate::cgroup::CgroupLimits::for_vm(config.vcpus, config.memory_mib);
    ctx.cgroups
        .set_limits(key, limits)
        .map_err(|e| fail("CgroupFailed")(&format!("VM {key}: {e}")))?;

    let launcher_exe = ctx.config.launcher_for(backend);
    // A KVM launcher with its own user is started jailed by the monitor and is never root;
    // without a user (`--launcher-uid-base 0`) it stays root and at most jails itself.
    let jail_plan = match launcher_user {
        Some(id) if ctx.config.launcher_jail => Some(
            jailer::plan_for(
                &config,
                launcher_exe,
                &paths.config_file,
                (id, id),
                &paths.run_dir.join("jail"),
            )
            .map_err(|e| fail("JailFailed")(&format!("VM {key}: {e}")))?,
        ),
        _ => None,
    };
    let confinement = match (&jail_plan, backend) {
        (Some(plan), _) => Confinement::Jailed(plan),
        (None, BackendKind::Kvm) => Confinement::SelfConfined {
            run_as: launcher_user,
            jail: ctx.config.launcher_jail,
        },
        (None, BackendKind::QemuTcg) => Confinement::None,
    };
    let monitor = launcher_proc::spawn(&SpawnRequest {
        key,
        paths,
        monitor_exe: &ctx.config.monitor_exe,
        launcher_exe,
        netns: network.as_ref().map(|n| n.netns_path.as_path()),
        cgroups,
        confinement,
    })
    .map_err(|e| fail("LauncherStartFailed")(&e))?;
    info!(vm = %key, uid, pid = monitor.pid, "instance started");
    Ok(Started {
        monitor,
        network,
        ephemeral_files: ephemeral,
    })
}

/// The VM's disks in boot order (see [`crate::volumes`]), each backed by its volume.
fn prepare_disks(
    ctx: &RuntimeContext,
    key: &VmKey,
    spec: &VirtualMachineInstanceSpec,
    uid: &str,
) -> Result<(Vec<DiskConfig>, Vec<PathBuf>), StartFailure> {
    let requests = volumes::disk_requests(key, spec).map_err(|e| StartFailure {
        reason: e.reason(),
        message: e.to_string(),
    })?;
    if requests.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let context = DiskContext {
        vm_dir: ctx.config.vm_dir(key),
        vm_name: key.name.clone(),
        vm_uid: uid.to_string(),
        images: ctx.images.clone(),
        oci_cache: OciCache::new(ctx.config.oci_disks_dir()),
        volumes_dir: ctx.config.volumes_dir(),
    };
    let prepared = ironvisor_disks::prepare(&context, &requests).map_err(|e| StartFailure {
        reason: volumes::disk_error_reason(&e),
        message: format!("VM {key}: {e}"),
    })?;
    let ephemeral = prepared
        .iter()
        .zip(&requests)
        .filter(|(_, r)| matches!(r.source, VolumeSource::EmptyDisk { .. }))
        .map(|(d, _)| d.path.clone())
        .collect();
    Ok((
        prepared.into_iter().map(volumes::disk_config).collect(),
        ephemeral,
    ))
}

/// Sets up the pod network of the VM's one interface, if it has one.
fn setup_network(
    ctx: &RuntimeContext,
    key: &VmKey,
    spec: &VirtualMachineInstanceSpec,
    uid: &str,
    tap_owner: Option<u32>,
    rollback: &mut Rollback,
) -> Result<Option<VmNetwork>, StartFailure> {
    let request = ironvisor_net::request_for(&key.to_string(), uid, spec, |interface| {
        ironvisor_launcher_api::config::generated_mac(&key.to_string(), interface)
    })
    .map_err(|e| StartFailure {
        reason: e.reason(),
        message: e.to_string(),
    })?;
    let Some(mut request) = request else {
        return Ok(None);
    };
    // The launcher's user attaches to the tap without CAP_NET_ADMIN.
    request.tap_owner = tap_owner;
    // A network left by an earlier instance (a crash before its teardown) goes first.
    if let Err(error) = ironvisor_net::teardown(&ctx.network, &key.to_string()) {
        warn!(vm = %key, %error, "cannot remove a leftover network");
    }
    rollback.network = true;
    ironvisor_net::setup(&ctx.network, &request)
        .map(Some)
        .map_err(|e| StartFailure {
            reason: "NetworkSetupFailed",
            message: e.to_string(),
        })
}
