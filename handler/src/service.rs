//! The local gRPC API (`ironvisor.handler.v1.Handler`) that `virtctl` talks to.
//!
//! Requests only record intent in the store, in one transaction each (a new or changed
//! spec, a start/stop request, a deletion), then wake the [runtime](crate::runtime), which
//! does the work. Reads return [`VmView`]s built from one consistent snapshot. Every RPC
//! runs in a tracing span, and every error names the VM and what is wrong.

use std::collections::HashMap;
use std::io::SeekFrom;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ironvisor_crds::decode::{parse_manifests, DecodeError, Manifest};
use ironvisor_crds::v1alpha1::{RunStrategy, VirtualMachine, VirtualMachineInstancePhase};
use ironvisor_crds::{defaults, validate, ValidationErrors};
use ironvisor_handler_api::proto::handler_server::Handler;
use ironvisor_handler_api::proto::{
    ActionResponse, AppliedObject, ApplyRequest, ApplyResponse, ConsoleChunk, ConsoleRequest,
    ListRequest, ListResponse, LogChunk, LogsRequest, ObjectRef, PortForwardChunk,
    PortForwardRequest, StopRequest, VmView,
};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, info_span, warn, Instrument};

use crate::launcher_proc;
use crate::records::{
    EventType, StateChangeRequest, VmKey, VmRecord, VmRuntime, DEFAULT_NAMESPACE,
};
use crate::runtime::{event, new_uid, now_unix_ms, Runtime};
use crate::sizing::{self, Classified};
use crate::status::time;
use crate::store::{Store, StoreError, VmSnapshot};
use crate::vm_view::view;

mod attach;
mod forward;

/// Source name used in error messages when a request does not give one.
const DEFAULT_SOURCE: &str = "<input>";
/// How long a console attach waits for a starting launcher's socket.
const CONSOLE_SOCKET_WAIT: Duration = Duration::from_secs(30);
/// How often a followed log is checked for new output.
const LOG_POLL: Duration = Duration::from_millis(200);
/// Extra time Delete waits beyond the VM's grace period before answering "in progress".
const DELETE_WAIT_MARGIN: Duration = Duration::from_secs(30);

/// Why a request failed. Converted to a gRPC status whose message is the error text.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The YAML could not be decoded (syntax, unknown fields, bad values); the decoder's
    /// message with `file:line:column` is passed on verbatim.
    #[error("{0}")]
    Decode(#[from] DecodeError),
    /// An object failed validation; every problem is listed.
    #[error("{0}")]
    Invalid(#[from] ValidationErrors),
    /// A kind the standalone node agent does not manage.
    #[error(
        "{source_name}: object {index} ({name}) is a VirtualMachineInstance; the standalone \
         node agent manages VirtualMachines: put the spec under spec.template.spec of a \
         VirtualMachine (runStrategy: Once runs it once)"
    )]
    UnsupportedKind {
        /// The input name.
        source_name: String,
        /// 1-based position of the object.
        index: usize,
        /// Its name.
        name: String,
    },
    /// `metadata.name` is missing (generateName cannot be applied).
    #[error("{source_name}: object {index}: metadata.name is required to apply an object")]
    MissingName {
        /// The input name.
        source_name: String,
        /// 1-based position of the object.
        index: usize,
    },
    /// The same VM appears twice in one apply.
    #[error("{source_name}: VirtualMachine {key} is defined more than once (objects {first} and {second}); nothing was applied")]
    Duplicate {
        /// The input name.
        source_name: String,
        /// The VM.
        key: VmKey,
        /// 1-based position of the first definition.
        first: usize,
        /// 1-based position of the repeated one.
        second: usize,
    },
    /// The input holds no object.
    #[error("{source_name}: no objects to apply")]
    Empty {
        /// The input name.
        source_name: String,
    },
    /// No such VM.
    #[error("VirtualMachine {0} not found")]
    NotFound(VmKey),
    /// The VM is being deleted.
    #[error("VirtualMachine {0} is being deleted")]
    Deleting(VmKey),
    /// The VM runs already.
    #[error("VirtualMachine {key} is already running{detail}")]
    AlreadyRunning {
        /// The VM.
        key: VmKey,
        /// More context.
        detail: &'static str,
    },
    /// The VM does not run.
    #[error("VirtualMachine {key} is not running{detail}")]
    NotRunning {
        /// The VM.
        key: VmKey,
        /// More context.
        detail: &'static str,
    },
    /// A request the VM's run strategy does not allow.
    #[error("VirtualMachine {key}: {message}")]
    NotAllowed {
        /// The VM.
        key: VmKey,
        /// Why.
        message: &'static str,
    },
    /// The launcher refused or did not answer.
    #[error("VirtualMachine {key}: {action} failed: {source}")]
    Launcher {
        /// The VM.
        key: VmKey,
        /// What was attempted.
        action: &'static str,
        /// The launcher client's error.
        #[source]
        source: Box<ironvisor_launcher_api::ClientError>,
    },
    /// The console could not be attached.
    #[error("VirtualMachine {key}: cannot attach the console at {path}: {reason}")]
    Console {
        /// The VM.
        key: VmKey,
        /// The console socket.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The log cannot be read.
    #[error("VirtualMachine {key}: {reason}")]
    Logs {
        /// The VM.
        key: VmKey,
        /// Why.
        reason: String,
    },
    /// A console or port-forward request stream without a first message naming the VM.
    #[error("{rpc}: the first request must name the VM")]
    WithoutVm {
        /// The request.
        rpc: &'static str,
    },
    /// A port forward to no valid port.
    #[error("port forward: {port} is not a port number (1-65535)")]
    ForwardPort {
        /// The port asked for.
        port: u32,
    },
    /// The guest's port cannot be reached.
    #[error("port {port} of VirtualMachine {key}: {reason}")]
    Forward {
        /// The VM.
        key: VmKey,
        /// The guest port.
        port: u16,
        /// Why.
        reason: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<ServiceError> for Status {
    fn from(error: ServiceError) -> Self {
        let message = error.to_string();
        match &error {
            ServiceError::Decode(_)
            | ServiceError::Invalid(_)
            | ServiceError::UnsupportedKind { .. }
            | ServiceError::MissingName { .. }
            | ServiceError::Duplicate { .. }
            | ServiceError::Empty { .. }
            | ServiceError::WithoutVm { .. }
            | ServiceError::ForwardPort { .. } => Status::invalid_argument(message),
            ServiceError::Forward { .. } => Status::failed_precondition(message),
            ServiceError::NotFound(_) => Status::not_found(message),
            ServiceError::Deleting(_)
            | ServiceError::AlreadyRunning { .. }
            | ServiceError::NotRunning { .. }
            | ServiceError::NotAllowed { .. } => Status::failed_precondition(message),
            ServiceError::Launcher { source, .. } => match **source {
                ironvisor_launcher_api::ClientError::Refused { .. } => {
                    Status::failed_precondition(message)
                }
                _ => Status::unavailable(message),
            },
            ServiceError::Console { .. } => Status::unavailable(message),
            ServiceError::Logs { .. } => Status::not_found(message),
            ServiceError::Store(StoreError::NoSpace { .. }) => Status::resource_exhausted(message),
            ServiceError::Store(_) => Status::internal(message),
        }
    }
}

/// The gRPC service.
#[derive(Debug, Clone)]
pub struct HandlerService {
    runtime: Arc<Runtime>,
}

fn key_of(object: &ObjectRef) -> VmKey {
    VmKey::new(&object.namespace, &object.name)
}

/// What apply does to one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ApplyAction {
    Created,
    Configured,
    Unchanged,
}

impl ApplyAction {
    fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Configured => "configured",
            Self::Unchanged => "unchanged",
        }
    }
}

impl HandlerService {
    /// A service acting through `runtime`.
    pub fn new(runtime: Arc<Runtime>) -> Self {
        Self { runtime }
    }

    fn store(&self) -> &Arc<Store> {
        &self.runtime.context().store
    }

    async fn snapshot(&self, key: &VmKey) -> Result<VmSnapshot, ServiceError> {
        let owned = key.clone();
        self.store()
            .call(move |s| s.get(&owned))
            .await?
            .ok_or_else(|| ServiceError::NotFound(key.clone()))
    }

    /// Decodes, defaults and validates every object, then creates or updates them all in
    /// one transaction.
    pub async fn apply_yaml(
        &self,
        yaml: &str,
        source_name: &str,
    ) -> Result<Vec<AppliedObject>, ServiceError> {
        let source_name = if source_name.is_empty() {
            DEFAULT_SOURCE
        } else {
            source_name
        };
        let manifests = parse_manifests(yaml, source_name)?;
        if manifests.is_empty() {
            return Err(ServiceError::Empty {
                source_name: source_name.to_string(),
            });
        }
        let mut vms: Vec<(VmKey, VirtualMachine)> = Vec::new();
        let mut sizing_objects = Vec::new();
        let mut seen: HashMap<VmKey, usize> = HashMap::new();
        for (i, manifest) in manifests.into_iter().enumerate() {
            let index = i + 1;
            let manifest = match sizing::classify(manifest)? {
                Classified::Sizing(object) => {
                    sizing_objects.push(object);
                    continue;
                }
                Classified::Other(manifest) => manifest,
            };
            let mut vm = match manifest {
                Manifest::VirtualMachine(vm) => *vm,
                Manifest::ClusterInstancetype(_) | Manifest::ClusterPreference(_) => continue,
                Manifest::VirtualMachineInstance(vmi) => {
                    return Err(ServiceError::UnsupportedKind {
                        source_name: source_name.to_string(),
                        index,
                        name: vmi.metadata.name.clone().unwrap_or_default(),
                    })
                }
            };
            defaults::apply(&mut vm);
            if vm.metadata.namespace.as_deref().is_none_or(str::is_empty) {
                vm.metadata.namespace = Some(DEFAULT_NAMESPACE.to_string());
            }
            validate::vm(&vm)?;
            let Some(name) = vm.metadata.name.clone() else {
                return Err(ServiceError::MissingName {
                    source_name: source_name.to_string(),
                    index,
                });
            };
            let key = VmKey::new(vm.metadata.namespace.as_deref().unwrap_or(""), &name);
            if let Some(first) = seen.insert(key.clone(), index) {
                return Err(ServiceError::Duplicate {
                    source_name: source_name.to_string(),
                    key,
                    first,
                    second: index,
                });
            }
            vms.push((key, vm));
        }
        let applied = self
            .store()
            .call(move |store| {
                store.transact(|t| -> Result<_, ServiceError> {
                    let stored = sizing::store(t, &sizing_objects)?;
                    let mut out = Vec::new();
                    for (key, vm) in &vms {
                        let action = match t.vm(key)? {
                            None => {
                                t.put_vm(key, &new_record(vm))?;
                                t.push_event(
                                    key,
                                    event(EventType::Normal, "Created", "VirtualMachine created"),
                                )?;
                                ApplyAction::Created
                            }
                            Some(rec) if rec.runtime.deleting => {
                                return Err(ServiceError::Deleting(key.clone()))
                            }
                            Some(mut rec) => {
                                if same_desired_state(&rec.vm, vm) {
                                    ApplyAction::Unchanged
                                } else {
                                    rec.vm.spec = vm.spec.clone();
                                    rec.vm.metadata.labels = vm.metadata.labels.clone();
                                    rec.vm.metadata.annotations = vm.metadata.annotations.clone();
                                    rec.vm.metadata.generation =
                                        Some(rec.vm.metadata.generation.unwrap_or(1) + 1);
                                    t.put_vm(key, &rec)?;
                                    t.push_event(
                                        key,
                                        event(
                                            EventType::Normal,
                                            "Updated",
                                            "VirtualMachine spec updated (template changes \
                                             apply to the next instance)",
                                        ),
                                    )?;
                                    ApplyAction::Configured
                                }
                            }
                        };
                        out.push((key.clone(), action));
                    }
                    Ok((stored, out))
                })
            })
            .await?;
        self.runtime.wake();
        let (stored, applied) = applied;
        Ok(stored
            .into_iter()
            .chain(applied.into_iter().map(|(key, action)| {
                info!(vm = %key, action = action.as_str(), "applied");
                AppliedObject {
                    kind: ironvisor_crds::v1alpha1::VIRTUAL_MACHINE_KIND.to_string(),
                    namespace: key.namespace,
                    name: key.name,
                    action: action.as_str().to_string(),
                }
            }))
            .collect())
    }

    /// Changes the VM in one transaction with `f`, which returns the answer message.
    async fn mutate<F>(&self, key: &VmKey, f: F) -> Result<String, ServiceError>
    where
        F: FnOnce(&mut VmRecord, &VmSnapshot) -> Result<String, ServiceError> + Send + 'static,
    {
        let owned = key.clone();
        let message = self
            .store()
            .call(move |store| {
                store.transact(|t| -> Result<String, ServiceError> {
                    let Some(mut record) = t.vm(&owned)? else {
                        return Err(ServiceError::NotFound(owned.clone()));
                    };
                    if record.runtime.deleting {
                        return Err(ServiceError::Deleting(owned.clone()));
                    }
                    let snap = VmSnapshot {
                        key: owned.clone(),
                        record: record.clone(),
                        vmi: t.vmi(&owned)?,
                        launcher: t.launcher(&owned)?,
                        events: Vec::new(),
                    };
                    // On error nothing is written and the error goes back to the caller.
                    let message = f(&mut record, &snap)?;
                    t.put_vm(&owned, &record)?;
                    t.push_event(
                        &owned,
                        event(EventType::Normal, "UserRequest", message.clone()),
                    )?;
                    Ok(message)
                })
            })
            .await?;
        self.runtime.wake();
        info!(vm = %key, %message, "request accepted");
        Ok(message)
    }

    async fn start_vm(&self, key: &VmKey) -> Result<String, ServiceError> {
        let k = key.clone();
        self.mutate(key, move |rec, snap| {
            let active = snap.launcher.as_ref().is_some_and(|l| l.stop.is_none());
            match rec.vm.spec.run_strategy.unwrap_or(RunStrategy::Halted) {
                RunStrategy::Halted => {
                    rec.vm.spec.run_strategy = Some(RunStrategy::Always);
                    Ok(format!("VirtualMachine {k}: runStrategy changed from Halted to Always; starting"))
                }
                RunStrategy::Once => Err(ServiceError::NotAllowed {
                    key: k.clone(),
                    message: "runStrategy Once does not support start requests (use restart, or change the runStrategy)",
                }),
                _ if active => Err(ServiceError::AlreadyRunning {
                    key: k.clone(),
                    detail: "",
                }),
                RunStrategy::Always | RunStrategy::Manual | RunStrategy::RerunOnFailure => {
                    rec.runtime.requests.push(StateChangeRequest::Start);
                    Ok(format!("VirtualMachine {k} was scheduled to start"))
                }
            }
        })
        .await
    }

    async fn stop_vm(
        &self,
        key: &VmKey,
        force: bool,
        grace: Option<u64>,
    ) -> Result<String, ServiceError> {
        let k = key.clone();
        let now = now_unix_ms();
        self.mutate(key, move |rec, snap| {
            let active = snap.launcher.as_ref();
            let active_uid = active.map(|l| l.vmi_uid.clone());
            let rt = &rec.runtime;
            // Something will run unless stopped: a pending start, a back-off, or an
            // unschedulable start.
            let pending = rt.requests.contains(&StateChangeRequest::Start)
                || rt.start_error.is_some()
                || rt.retry_after_unix_ms.is_some_and(|t| t > now);
            let request = StateChangeRequest::Stop {
                uid: active_uid,
                force,
                grace_period_seconds: grace,
            };
            match rec.vm.spec.run_strategy.unwrap_or(RunStrategy::Halted) {
                RunStrategy::Always => {
                    rec.vm.spec.run_strategy = Some(RunStrategy::Halted);
                    if active.is_some() && (force || grace.is_some()) {
                        rec.runtime.requests.push(request);
                    }
                    Ok(format!(
                        "VirtualMachine {k}: runStrategy changed from Always to Halted; stopping"
                    ))
                }
                RunStrategy::Halted if active.is_some() && force => {
                    rec.runtime.requests.push(request);
                    Ok(format!("VirtualMachine {k} is being stopped now (forced)"))
                }
                RunStrategy::Halted => Err(ServiceError::NotRunning {
                    key: k.clone(),
                    detail: if active.is_some() {
                        " (already stopping)"
                    } else {
                        ""
                    },
                }),
                _ if active.is_none() && !pending => Err(ServiceError::NotRunning {
                    key: k.clone(),
                    detail: "",
                }),
                _ => {
                    rec.runtime.requests.push(request);
                    Ok(format!(
                        "VirtualMachine {k} was scheduled to stop{}",
                        if force { " (forced)" } else { "" }
                    ))
                }
            }
        })
        .await
    }

    async fn restart_vm(&self, key: &VmKey) -> Result<String, ServiceError> {
        let k = key.clone();
        self.mutate(key, move |rec, snap| {
            let Some(launcher) = snap.launcher.as_ref() else {
                return Err(ServiceError::NotRunning {
                    key: k.clone(),
                    detail: " (start it instead)",
                });
            };
            if rec.vm.spec.run_strategy == Some(RunStrategy::Halted) {
                return Err(ServiceError::NotAllowed {
                    key: k.clone(),
                    message: "runStrategy is Halted; start it instead",
                });
            }
            rec.runtime.requests.push(StateChangeRequest::Stop {
                uid: Some(launcher.vmi_uid.clone()),
                force: false,
                grace_period_seconds: None,
            });
            rec.runtime.requests.push(StateChangeRequest::Start);
            Ok(format!("VirtualMachine {k} was scheduled to restart"))
        })
        .await
    }

    async fn pause_vm(&self, key: &VmKey, pause: bool) -> Result<String, ServiceError> {
        let snap = self.snapshot(key).await?;
        let launcher = match &snap.launcher {
            Some(l) if l.stop.is_some() => {
                return Err(ServiceError::NotRunning {
                    key: key.clone(),
                    detail: " (it is stopping)",
                })
            }
            Some(l) => l.clone(),
            None => {
                return Err(ServiceError::NotRunning {
                    key: key.clone(),
                    detail: "",
                })
            }
        };
        let running = snap
            .vmi
            .as_ref()
            .and_then(crate::status::vmi_phase)
            .is_some_and(|p| p == VirtualMachineInstancePhase::Running);
        if !running {
            return Err(ServiceError::NotRunning {
                key: key.clone(),
                detail: " yet (the guest is still starting)",
            });
        }
        let action = if pause { "pause" } else { "unpause" };
        let client =
            launcher_proc::connect(&launcher)
                .await
                .map_err(|source| ServiceError::Launcher {
                    key: key.clone(),
                    action,
                    source: Box::new(source),
                })?;
        let result = if pause {
            client.pause().await
        } else {
            client.resume().await
        };
        result.map_err(|source| ServiceError::Launcher {
            key: key.clone(),
            action,
            source: Box::new(source),
        })?;
        let message = format!(
            "VirtualMachine {key} was {}",
            if pause { "paused" } else { "unpaused" }
        );
        let event_key = key.clone();
        let reason = if pause { "Paused" } else { "Unpaused" };
        let event_message = message.clone();
        self.store()
            .call(move |s| {
                s.transact(|t| {
                    t.push_event(&event_key, event(EventType::Normal, reason, event_message))
                })
            })
            .await?;
        // Status follows at once rather than at the next periodic pass.
        self.runtime.reconcile_vm(key).await.ok();
        Ok(message)
    }

    async fn delete_vm(&self, key: &VmKey) -> Result<String, ServiceError> {
        let owned = key.clone();
        let grace = self
            .store()
            .call(move |store| {
                store.transact(|t| -> Result<Option<i64>, StoreError> {
                    let Some(mut rec) = t.vm(&owned)? else {
                        return Ok(None);
                    };
                    if !rec.runtime.deleting {
                        rec.runtime.deleting = true;
                        rec.vm.metadata.deletion_timestamp = Some(time(now_unix_ms()));
                        t.put_vm(&owned, &rec)?;
                        t.push_event(
                            &owned,
                            event(
                                EventType::Normal,
                                "Deleting",
                                "VirtualMachine is being deleted",
                            ),
                        )?;
                    }
                    Ok(Some(
                        rec.vm
                            .spec
                            .template
                            .spec
                            .termination_grace_period_seconds
                            .unwrap_or(0),
                    ))
                })
            })
            .await?
            .ok_or_else(|| ServiceError::NotFound(key.clone()))?;
        self.runtime.wake();
        let wait = Duration::from_secs(u64::try_from(grace).unwrap_or(0)) + DELETE_WAIT_MARGIN;
        let deadline = tokio::time::Instant::now() + wait;
        while tokio::time::Instant::now() < deadline {
            let owned = key.clone();
            if self.store().call(move |s| s.get(&owned)).await?.is_none() {
                info!(vm = %key, "deleted");
                return Ok(format!("VirtualMachine {key} deleted"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        warn!(vm = %key, "deletion still in progress");
        Ok(format!(
            "VirtualMachine {key} is being deleted (still stopping)"
        ))
    }
}

/// A new VM record: server-set metadata, no status.
fn new_record(vm: &VirtualMachine) -> VmRecord {
    let mut vm = vm.clone();
    vm.metadata.uid = Some(new_uid());
    vm.metadata.creation_timestamp = Some(time(now_unix_ms()));
    vm.metadata.generation = Some(1);
    vm.metadata.deletion_timestamp = None;
    vm.metadata.resource_version = None;
    vm.metadata.managed_fields = None;
    vm.status = None;
    VmRecord {
        vm,
        runtime: VmRuntime::default(),
    }
}

/// Whether applying `new` over `stored` changes nothing the user controls.
fn same_desired_state(stored: &VirtualMachine, new: &VirtualMachine) -> bool {
    stored.spec == new.spec
        && stored.metadata.labels == new.metadata.labels
        && stored.metadata.annotations == new.metadata.annotations
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Handler for HandlerService {
    async fn apply(
        &self,
        request: Request<ApplyRequest>,
    ) -> Result<Response<ApplyResponse>, Status> {
        let request = request.into_inner();
        let span =
            info_span!("rpc", rpc = "Apply", source = %request.source, bytes = request.yaml.len());
        async {
            let objects = self.apply_yaml(&request.yaml, &request.source).await?;
            Ok(Response::new(ApplyResponse { objects }))
        }
        .instrument(span)
        .await
        .map_err(|e: ServiceError| {
            debug!(error = %e, "apply refused");
            e.into()
        })
    }

    async fn get(&self, request: Request<ObjectRef>) -> Result<Response<VmView>, Status> {
        let key = key_of(request.get_ref());
        let span = info_span!("rpc", rpc = "Get", vm = %key);
        async {
            let snap = self.snapshot(&key).await?;
            Ok::<_, ServiceError>(Response::new(view(&snap)))
        }
        .instrument(span)
        .await
        .map_err(Into::into)
    }

    async fn list(&self, request: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let namespace = request.into_inner().namespace;
        let span = info_span!("rpc", rpc = "List", namespace = %namespace);
        async {
            let filter = (!namespace.is_empty()).then_some(namespace);
            let snaps = self
                .store()
                .call(move |s| s.list(filter.as_deref()))
                .await?;
            Ok::<_, ServiceError>(Response::new(ListResponse {
                vms: snaps.iter().map(view).collect(),
            }))
        }
        .instrument(span)
        .await
        .map_err(Into::into)
    }

    async fn delete(
        &self,
        request: Request<ObjectRef>,
    ) -> Result<Response<ActionResponse>, Status> {
        let key = key_of(request.get_ref());
        let span = info_span!("rpc", rpc = "Delete", vm = %key);
        async { self.delete_vm(&key).await }
            .instrument(span)
            .await
            .map(|message| Response::new(ActionResponse { message }))
            .map_err(Into::into)
    }

    async fn start(&self, request: Request<ObjectRef>) -> Result<Response<ActionResponse>, Status> {
        let key = key_of(request.get_ref());
        let span = info_span!("rpc", rpc = "Start", vm = %key);
        async { self.start_vm(&key).await }
            .instrument(span)
            .await
            .map(|message| Response::new(ActionResponse { message }))
            .map_err(Into::into)
    }

    async fn stop(
        &self,
        request: Request<StopRequest>,
    ) -> Result<Response<ActionResponse>, Status> {
        let request = request.into_inner();
        let key = key_of(&request.vm.unwrap_or_default());
        let span = info_span!("rpc", rpc = "Stop", vm = %key, force = request.force);
        let grace =
            (request.grace_period_seconds > 0).then_some(u64::from(request.grace_period_seconds));
        async { self.stop_vm(&key, request.force, grace).await }
            .instrument(span)
            .await
            .map(|message| Response::new(ActionResponse { message }))
            .map_err(Into::into)
    }

    async fn restart(
        &self,
        request: Request<ObjectRef>,
    ) -> Result<Response<ActionResponse>, Status> {
        let key = key_of(request.get_ref());
        let span = info_span!("rpc", rpc = "Restart", vm = %key);
        async { self.restart_vm(&key).await }
            .instrument(span)
            .await
            .map(|message| Response::new(ActionResponse { message }))
            .map_err(Into::into)
    }

    async fn pause(&self, request: Request<ObjectRef>) -> Result<Response<ActionResponse>, Status> {
        let key = key_of(request.get_ref());
        let span = info_span!("rpc", rpc = "Pause", vm = %key);
        async { self.pause_vm(&key, true).await }
            .instrument(span)
            .await
            .map(|message| Response::new(ActionResponse { message }))
            .map_err(Into::into)
    }

    async fn unpause(
        &self,
        request: Request<ObjectRef>,
    ) -> Result<Response<ActionResponse>, Status> {
        let key = key_of(request.get_ref());
        let span = info_span!("rpc", rpc = "Unpause", vm = %key);
        async { self.pause_vm(&key, false).await }
            .instrument(span)
            .await
            .map(|message| Response::new(ActionResponse { message }))
            .map_err(Into::into)
    }

    type ConsoleStream = BoxStream<ConsoleChunk>;

    async fn console(
        &self,
        request: Request<Streaming<ConsoleRequest>>,
    ) -> Result<Response<Self::ConsoleStream>, Status> {
        let mut input = request.into_inner();
        let first = input
            .message()
            .await?
            .ok_or(ServiceError::WithoutVm { rpc: "console" })?;
        let key = key_of(
            &first
                .vm
                .clone()
                .ok_or(ServiceError::WithoutVm { rpc: "console" })?,
        );
        let span = info_span!("rpc", rpc = "Console", vm = %key);
        let stream = async { self.attach_console(&key, first.input, input).await }
            .instrument(span.clone())
            .await?;
        Ok(Response::new(stream))
    }

    type PortForwardStream = BoxStream<PortForwardChunk>;

    async fn port_forward(
        &self,
        request: Request<Streaming<PortForwardRequest>>,
    ) -> Result<Response<Self::PortForwardStream>, Status> {
        let mut input = request.into_inner();
        let first = input.message().await?.ok_or(ServiceError::WithoutVm {
            rpc: "port forward",
        })?;
        let key = key_of(&first.vm.clone().ok_or(ServiceError::WithoutVm {
            rpc: "port forward",
        })?);
        let span = info_span!("rpc", rpc = "PortForward", vm = %key, port = first.port);
        let stream = async { self.forward_port(&key, first.port, input).await }
            .instrument(span.clone())
            .await?;
        Ok(Response::new(stream))
    }

    type LogsStream = BoxStream<LogChunk>;

    async fn logs(
        &self,
        request: Request<LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        let request = request.into_inner();
        let key = key_of(&request.vm.unwrap_or_default());
        let span = info_span!("rpc", rpc = "Logs", vm = %key, follow = request.follow);
        let stream = async { self.stream_logs(&key, request.follow).await }
            .instrument(span)
            .await?;
        Ok(Response::new(stream))
    }
}
