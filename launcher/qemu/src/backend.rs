//! The software-emulation [`Backend`]: one transient libvirt domain per VM.
//!
//! `prepare` creates the domain **paused** (so the console pump and event watch are in
//! place before the guest executes its first instruction), `start` resumes it, and
//! `stop` destroys it. Being transient, a destroyed domain leaves nothing defined in
//! libvirt. Everything the launcher set up (the domain, the NICs' frame relays, the taps
//! it opened, the runtime directory with QEMU's serial and network sockets) is released
//! by [`Owned`] on stop or drop, in that order.
//!
//! The taps are opened here, in the launcher's network namespace, before the domain
//! exists; QEMU reaches them only through the [`relay`](crate::relay) sockets.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Instant;

use ironvisor_console::ConsoleHub;
use ironvisor_launcher::config::{LaunchConfig, MAX_SOCKET_PATH_BYTES};
use ironvisor_launcher::instance::{Backend, PreparedInstance, VmInstance};
use ironvisor_launcher::vmm::events::{EventSender, VmEvent};
use ironvisor_launcher_api::control::{
    ControlError, DeviceStatus, ShutdownMode, VmControl, VmState, VmStatus,
};
use virt::connect::Connect;
use virt::domain::Domain;
use virt::error::ErrorNumber;
use virt::sys;

use crate::console::{ConsoleError, SerialPump};
use crate::domain::{launcher_pid_from_metadata, DomainError, DomainPlan, METADATA_NAMESPACE};
use crate::libvirt::{self, LibvirtError, RawEvent};
use crate::monitor;
use crate::relay::{NicRelay, RelayError, RelaySocket};
use crate::tap::{TapError, TapGuard};
use ironvisor_virtio::RateLimit;

/// What `status` reports as the backend.
pub const BACKEND_NAME: &str = "qemu-tcg";
/// Environment variable that overrides the runtime directory base.
pub const RUNTIME_DIR_ENV: &str = "IRONVISOR_QEMU_RUNTIME_DIR";
/// Linux input keycodes of Ctrl+Alt+Del (`KEY_LEFTCTRL`, `KEY_LEFTALT`, `KEY_DELETE`).
pub const CTRL_ALT_DEL_KEYCODES: [u32; 3] = [29, 56, 111];
/// How long the keys of Ctrl+Alt+Del are held, in milliseconds.
pub const KEY_HOLD_MS: u32 = 100;
/// Process name prefix of a live launcher (`/proc/PID/comm` is cut at 15 bytes).
const LAUNCHER_COMM_PREFIX: &str = "ironvisor-launc";

/// Why the VM could not be built or started. Each variant names the step and the domain,
/// device or path involved.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    /// The runtime directory for QEMU's sockets could not be created.
    #[error("creating the runtime directory {path}: {source}")]
    RuntimeDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A socket path in the runtime directory would not fit a unix socket address.
    #[error(
        "runtime socket path {path} is {len} bytes; unix sockets allow at most \
         {MAX_SOCKET_PATH_BYTES}: set {RUNTIME_DIR_ENV} to a shorter directory"
    )]
    SocketPathTooLong {
        /// The path.
        path: PathBuf,
        /// Its length in bytes.
        len: usize,
    },
    /// A tap could not be prepared.
    #[error("nets[{index}]: {source}")]
    Tap {
        /// Index of the NIC in the configuration.
        index: usize,
        /// The tap error.
        #[source]
        source: TapError,
    },
    /// The domain could not be planned.
    #[error(transparent)]
    Plan(#[from] DomainError),
    /// A NIC's frame relay could not be set up.
    #[error(transparent)]
    Relay(#[from] RelayError),
    /// libvirt could not be reached or events could not be registered.
    #[error(transparent)]
    Libvirt(#[from] LibvirtError),
    /// A domain of the same name is owned by a launcher that is still running.
    #[error(
        "domain {domain} already exists and belongs to the running launcher pid {pid}; \
         refusing to start a second copy of the VM"
    )]
    DomainInUse {
        /// The domain name.
        domain: String,
        /// The live launcher's pid.
        pid: u32,
    },
    /// A libvirt call on the domain failed.
    #[error("{op} domain {domain}: {source}")]
    Domain {
        /// "creating", "looking up", "destroying the stale", "resuming", ...
        op: &'static str,
        /// The domain name.
        domain: String,
        /// The libvirt error.
        #[source]
        source: virt::error::Error,
    },
    /// The serial console could not be attached.
    #[error("domain {domain}: {source}")]
    Console {
        /// The domain name.
        domain: String,
        /// The console error.
        #[source]
        source: ConsoleError,
    },
    /// The monitor thread could not be started.
    #[error("spawning the domain monitor thread for {domain}: {source}")]
    SpawnMonitor {
        /// The domain name.
        domain: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// The software-emulation backend: QEMU with TCG, through libvirt.
#[derive(Debug, Clone)]
pub struct QemuBackend {
    /// libvirt URI ("qemu:///system").
    pub uri: String,
    /// Directory under which each launcher makes `<pid>/` for QEMU's serial socket and
    /// the NICs' relay sockets.
    pub runtime_base: PathBuf,
    /// Why hardware virtualization is not used, for the start-up warning.
    pub emulation_reason: Option<String>,
}

impl QemuBackend {
    /// A backend with the URI from `IRONVISOR_LIBVIRT_URI` (default `qemu:///system`) and
    /// the runtime directory from `IRONVISOR_QEMU_RUNTIME_DIR` (default
    /// `$TMPDIR/ironvisor-qemu` for root, `$TMPDIR/ironvisor-qemu-<uid>` for any other
    /// user).
    pub fn from_env(emulation_reason: Option<String>) -> Self {
        let runtime_base = std::env::var_os(RUNTIME_DIR_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                std::env::temp_dir().join(default_runtime_base_name(nix::unistd::geteuid()))
            });
        Self {
            uri: libvirt::uri_from_env(),
            runtime_base,
            emulation_reason,
        }
    }
}

impl Backend for QemuBackend {
    type Prepared = PreparedQemu;
    type Error = QemuError;

    #[tracing::instrument(skip_all, fields(vm = %config.name, backend = BACKEND_NAME))]
    fn prepare(
        &self,
        config: &LaunchConfig,
        console: &ConsoleHub,
        _events: &EventSender,
    ) -> Result<PreparedQemu, QemuError> {
        tracing::warn!(
            reason = self.emulation_reason.as_deref().unwrap_or("not given"),
            "running under software emulation (QEMU TCG): no hardware isolation"
        );
        let pid = std::process::id();
        let runtime_dir = RuntimeDir::create(&self.runtime_base.join(pid.to_string()))?;
        let plan = DomainPlan::from_config(config, &runtime_dir.path, pid)?;
        for socket in plan.runtime_sockets() {
            let len = socket.as_os_str().len();
            if len > MAX_SOCKET_PATH_BYTES {
                return Err(QemuError::SocketPathTooLong {
                    path: socket.to_path_buf(),
                    len,
                });
            }
        }
        let owned = Owned::new(runtime_dir);
        // Refuse or clean a domain of the same name before touching taps or sockets.
        let domain = crate::domain::domain_name(&config.name);
        let conn = libvirt::connect(&self.uri)?;
        owned.set_conn(conn.clone());
        clear_stale_domain(&conn, &domain)?;
        for (index, net) in config.nets.iter().enumerate() {
            let tap =
                TapGuard::ensure(&net.tap).map_err(|source| QemuError::Tap { index, source })?;
            owned.lock_taps().push(tap);
        }
        // QEMU sends to these from its first instant, so they exist before the domain.
        let relay_sockets = plan
            .nets
            .iter()
            .map(|net| RelaySocket::bind(&net.id, &net.tap, &net.relay_socket))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(agent) = &plan.agent_socket {
            // QEMU binds the agent socket itself; a leftover file would make it fail.
            remove_stale_socket(agent);
            lock(&owned.sockets).push(agent.clone());
        }

        let xml = plan.to_xml();
        tracing::debug!(%xml, "domain XML");
        // AUTODESTROY: libvirt destroys the domain when this launcher's connection closes,
        // so a launcher that is killed (or crashes) never leaves its QEMU running.
        let flags = sys::VIR_DOMAIN_START_PAUSED | sys::VIR_DOMAIN_START_AUTODESTROY;
        let dom = Domain::create_xml(&conn, &xml, flags).map_err(|source| QemuError::Domain {
            op: "creating",
            domain: domain.clone(),
            source,
        })?;
        owned.set_domain(dom.clone(), domain.clone());
        tracing::info!(domain, "domain created (paused)");

        for (index, (net, socket)) in plan.nets.iter().zip(relay_sockets).enumerate() {
            let tap = owned.tap_file(index, &net.id)?;
            let limit = net.rate_limit.map_or_else(RateLimit::default, |limit| {
                RateLimit::new(limit.bytes_per_second, limit.ops_per_second)
            });
            let relay = socket.start(tap, &net.qemu_socket, limit)?;
            lock(&owned.relays).push(relay);
        }

        let pump = SerialPump::start(&plan.serial_socket, console).map_err(|source| {
            QemuError::Console {
                domain: domain.clone(),
                source,
            }
        })?;
        *lock(&owned.pump) = Some(pump);

        let (raw_tx, raw_rx) = std::sync::mpsc::channel();
        let watch = libvirt::watch_domain(&conn, &dom, &domain, &raw_tx)?;
        *lock(&owned.watch) = Some(watch);

        let devices = plan.devices(config.console.socket.as_deref());
        Ok(PreparedQemu {
            plan,
            devices,
            dom,
            raw_rx,
            owned,
        })
    }
}

/// A created, paused domain with its console and event watch attached.
pub struct PreparedQemu {
    plan: DomainPlan,
    devices: Vec<DeviceStatus>,
    dom: Domain,
    raw_rx: std::sync::mpsc::Receiver<RawEvent>,
    owned: Owned,
}

impl std::fmt::Debug for PreparedQemu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedQemu")
            .field("domain", &self.plan.domain_name)
            .finish_non_exhaustive()
    }
}

impl PreparedInstance for PreparedQemu {
    type Instance = QemuInstance;
    type Error = QemuError;

    #[tracing::instrument(skip_all, fields(domain = %self.plan.domain_name))]
    fn start(self, events: EventSender) -> Result<Arc<QemuInstance>, QemuError> {
        let PreparedQemu {
            plan,
            devices,
            dom,
            raw_rx,
            owned,
        } = self;
        let domain = plan.domain_name.clone();
        let monitor = {
            let (dom, name, events, stopping) = (
                dom.clone(),
                domain.clone(),
                events.clone(),
                owned.stopping.clone(),
            );
            std::thread::Builder::new()
                .name("domain-monitor".into())
                .spawn(move || monitor::run(raw_rx, dom, name, events, stopping))
                .map_err(|source| QemuError::SpawnMonitor {
                    domain: domain.clone(),
                    source,
                })?
        };
        *lock(&owned.monitor) = Some(monitor);
        dom.resume().map_err(|source| QemuError::Domain {
            op: "resuming",
            domain: domain.clone(),
            source,
        })?;
        tracing::info!("guest running under QEMU TCG");
        Ok(Arc::new(QemuInstance {
            name: plan.vm_name.clone(),
            domain,
            vcpus: plan.vcpus,
            memory_mib: plan.memory_mib,
            devices,
            vcpu_affinity: plan.vcpu_affinity.clone(),
            dom,
            events,
            state: Mutex::new(VmState::Running),
            started: Instant::now(),
            owned,
        }))
    }
}

/// A running VM on QEMU TCG.
pub struct QemuInstance {
    name: String,
    domain: String,
    vcpus: u32,
    memory_mib: u64,
    devices: Vec<DeviceStatus>,
    /// The vCPU pinning in the domain's `<cputune>`.
    vcpu_affinity: Vec<Vec<u32>>,
    dom: Domain,
    events: EventSender,
    /// The launcher's view: Running, Paused, ShuttingDown or Stopped.
    state: Mutex<VmState>,
    started: Instant,
    owned: Owned,
}

impl std::fmt::Debug for QemuInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QemuInstance")
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

/// The VM state from libvirt's domain state and the launcher's own view (which knows
/// about a requested shutdown that libvirt cannot see yet).
pub fn combined_state(libvirt_state: Option<sys::virDomainState>, ours: VmState) -> VmState {
    if ours == VmState::Stopped {
        return VmState::Stopped;
    }
    match libvirt_state {
        None | Some(sys::VIR_DOMAIN_SHUTOFF) | Some(sys::VIR_DOMAIN_CRASHED) => VmState::Stopped,
        Some(sys::VIR_DOMAIN_SHUTDOWN) => VmState::ShuttingDown,
        Some(_) if ours == VmState::ShuttingDown => VmState::ShuttingDown,
        Some(sys::VIR_DOMAIN_PAUSED) => VmState::Paused,
        Some(_) => VmState::Running,
    }
}

impl QemuInstance {
    fn state(&self) -> MutexGuard<'_, VmState> {
        lock(&self.state)
    }

    fn libvirt_state(&self) -> Option<sys::virDomainState> {
        match self.dom.get_state() {
            Ok((state, _reason)) => Some(state),
            Err(err) => {
                if err.code() != ErrorNumber::NoDomain {
                    tracing::warn!(%err, domain = %self.domain, "reading the domain state");
                }
                None
            }
        }
    }

    fn internal(&self, op: &str, err: virt::error::Error) -> ControlError {
        ControlError::Internal(format!("{op} domain {}: {err}", self.domain))
    }
}

impl VmInstance for QemuInstance {
    /// Presses Ctrl+Alt+Del on the guest's PS/2 keyboard (resuming a paused guest first),
    /// like the KVM launcher; falls back to the ACPI power button if the keys cannot be
    /// sent.
    fn request_guest_shutdown(&self) {
        let _span =
            tracing::info_span!("qemu_control", op = "graceful_shutdown", domain = %self.domain)
                .entered();
        let mut state = self.state();
        if *state == VmState::Paused {
            if let Err(err) = self.dom.resume() {
                tracing::warn!(%err, "resuming the paused guest before the shutdown request");
            }
        }
        *state = VmState::ShuttingDown;
        drop(state);
        let mut keys = CTRL_ALT_DEL_KEYCODES;
        match self.dom.send_key(
            sys::VIR_KEYCODE_SET_LINUX,
            KEY_HOLD_MS,
            keys.as_mut_ptr(),
            keys.len() as i32,
            0,
        ) {
            Ok(()) => tracing::info!("sent Ctrl+Alt+Del to the guest"),
            Err(err) => {
                tracing::warn!(%err, "sending Ctrl+Alt+Del failed; pressing the ACPI power button");
                if let Err(err) = self
                    .dom
                    .shutdown_flags(sys::VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
                {
                    tracing::error!(%err, "ACPI power button request failed too");
                }
            }
        }
    }

    /// Destroys the domain and releases everything the launcher set up.
    fn stop(&self) {
        let _span =
            tracing::info_span!("qemu_control", op = "stop", domain = %self.domain).entered();
        *self.state() = VmState::Stopped;
        self.owned.release();
    }
}

impl VmControl for QemuInstance {
    fn status(&self) -> VmStatus {
        let _span =
            tracing::debug_span!("qemu_control", op = "status", domain = %self.domain).entered();
        let ours = *self.state();
        let state = if ours == VmState::Stopped {
            ours
        } else {
            combined_state(self.libvirt_state(), ours)
        };
        VmStatus {
            name: self.name.clone(),
            state,
            vcpus: self.vcpus,
            memory_mib: self.memory_mib,
            devices: self.devices.clone(),
            uptime: self.started.elapsed(),
            backend: BACKEND_NAME.into(),
            // libvirt pins QEMU's vCPU threads from the domain's <cputune> when it starts
            // the domain, and refuses to start it when it cannot.
            vcpu_affinity: self.vcpu_affinity.clone(),
        }
    }

    fn pause(&self) -> Result<(), ControlError> {
        let _span =
            tracing::info_span!("qemu_control", op = "pause", domain = %self.domain).entered();
        let mut state = self.state();
        if *state != VmState::Running {
            return Err(ControlError::InvalidState(*state));
        }
        self.dom
            .suspend()
            .map_err(|err| self.internal("suspending", err))?;
        *state = VmState::Paused;
        tracing::info!("VM paused");
        Ok(())
    }

    fn resume(&self) -> Result<(), ControlError> {
        let _span =
            tracing::info_span!("qemu_control", op = "resume", domain = %self.domain).entered();
        let mut state = self.state();
        if *state != VmState::Paused {
            return Err(ControlError::InvalidState(*state));
        }
        self.dom
            .resume()
            .map_err(|err| self.internal("resuming", err))?;
        *state = VmState::Running;
        tracing::info!("VM resumed");
        Ok(())
    }

    fn shutdown(&self, mode: ShutdownMode) -> Result<(), ControlError> {
        let _span =
            tracing::info_span!("qemu_control", op = "shutdown", domain = %self.domain, ?mode)
                .entered();
        let state = *self.state();
        if state == VmState::Stopped {
            return Err(ControlError::InvalidState(state));
        }
        self.events.send(VmEvent::ShutdownRequested(mode));
        Ok(())
    }
}

/// Refuses a domain of the same name that a live launcher owns; destroys (and undefines,
/// if persistent) a leftover one.
fn clear_stale_domain(conn: &Connect, domain: &str) -> Result<(), QemuError> {
    let dom = match Domain::lookup_by_name(conn, domain) {
        Ok(dom) => dom,
        Err(err) if err.code() == ErrorNumber::NoDomain => return Ok(()),
        Err(source) => {
            return Err(QemuError::Domain {
                op: "looking up",
                domain: domain.to_string(),
                source,
            })
        }
    };
    let owner = dom
        .get_metadata(
            sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
            Some(METADATA_NAMESPACE),
            0,
        )
        .ok()
        .and_then(|xml| launcher_pid_from_metadata(&xml));
    if let Some(pid) = owner.filter(|pid| *pid != std::process::id() && launcher_alive(*pid)) {
        return Err(QemuError::DomainInUse {
            domain: domain.to_string(),
            pid,
        });
    }
    tracing::warn!(
        domain,
        owner_pid = owner,
        "found a stale leftover domain of this VM (its launcher is gone); destroying it"
    );
    let stale = |source| QemuError::Domain {
        op: "destroying the stale",
        domain: domain.to_string(),
        source,
    };
    if dom.is_active().map_err(stale)? {
        dom.destroy().map_err(stale)?;
    }
    // A transient domain is gone once destroyed; a persistent one must be undefined.
    match dom.is_persistent() {
        Ok(true) => dom.undefine().map_err(stale)?,
        Ok(false) => {}
        Err(err) if err.code() == ErrorNumber::NoDomain => {}
        Err(err) => return Err(stale(err)),
    }
    Ok(())
}

/// Whether `pid` is a running Ironvisor launcher process.
fn launcher_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|comm| comm.trim_end().starts_with(LAUNCHER_COMM_PREFIX))
        .unwrap_or(false)
}

/// Removes `path` if it is a unix socket (never a regular file or directory).
fn remove_stale_socket(path: &Path) {
    use std::os::unix::fs::FileTypeExt;
    let is_socket = std::fs::symlink_metadata(path)
        .map(|meta| meta.file_type().is_socket())
        .unwrap_or(false);
    if is_socket {
        if let Err(err) = std::fs::remove_file(path) {
            tracing::warn!(%err, path = %path.display(), "removing a socket file");
        }
    }
}

/// The per-launcher directory holding QEMU's serial socket and the NICs' relay sockets;
/// removed on drop.
#[derive(Debug)]
struct RuntimeDir {
    path: PathBuf,
}

/// The default runtime base's name for the user `uid`: one directory per user, so that a
/// base root made first (mode 0755) does not lock every other user's launcher out, and no
/// user's launcher works in a directory another user controls.
fn default_runtime_base_name(uid: nix::unistd::Uid) -> String {
    if uid.is_root() {
        "ironvisor-qemu".into()
    } else {
        format!("ironvisor-qemu-{uid}")
    }
}

/// Refuses a runtime base that belongs to another user: whoever owns it could replace
/// the sockets QEMU and the launcher exchange the console and the NICs' frames through.
fn check_base_owner(base: &Path, uid: nix::unistd::Uid) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::symlink_metadata(base)?.uid();
    if owner == uid.as_raw() {
        return Ok(());
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::PermissionDenied,
        format!(
            "the base directory {} belongs to uid {owner}, not to this launcher's uid {uid}; \
             set {RUNTIME_DIR_ENV} to a directory of this user's",
            base.display()
        ),
    ))
}

impl RuntimeDir {
    fn create(path: &Path) -> Result<Self, QemuError> {
        let err = |source| QemuError::RuntimeDir {
            path: path.to_path_buf(),
            source,
        };
        if let Some(base) = path.parent() {
            std::fs::create_dir_all(base).map_err(err)?;
            check_base_owner(base, nix::unistd::geteuid()).map_err(err)?;
            sweep_stale_runtime_dirs(base);
        }
        // A directory of the same pid is a leftover of a dead launcher.
        if path.exists() {
            std::fs::remove_dir_all(path).map_err(err)?;
        }
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(path)
            .map_err(err)?;
        // The mode passed to mkdir is filtered by the umask; make sure.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
        Ok(Self {
            path: path.to_path_buf(),
        })
    }
}

/// Removes `<base>/<pid>` directories left by launchers that were killed (their pid is
/// no longer a running launcher).
fn sweep_stale_runtime_dirs(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || launcher_alive(pid) {
            continue;
        }
        let path = entry.path();
        match std::fs::remove_dir_all(&path) {
            Ok(()) => {
                tracing::info!(path = %path.display(), "removed the runtime directory of a dead launcher")
            }
            Err(err) => {
                tracing::debug!(%err, path = %path.display(), "removing a stale runtime directory")
            }
        }
    }
}

impl Drop for RuntimeDir {
    fn drop(&mut self) {
        if let Err(err) = std::fs::remove_dir_all(&self.path) {
            if err.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(%err, path = %self.path.display(), "removing the runtime directory");
            }
        }
    }
}

/// Everything the launcher must undo, released once ([`Owned::release`]) in order: stop
/// the monitor, destroy the domain, drain the console, drop the event watch, stop the
/// frame relays, close the taps (deleting those it created), close the connection,
/// remove the runtime directory.
struct Owned {
    stopping: Arc<AtomicBool>,
    released: AtomicBool,
    domain: Mutex<Option<(Domain, String)>>,
    monitor: Mutex<Option<JoinHandle<()>>>,
    pump: Mutex<Option<SerialPump>>,
    watch: Mutex<Option<libvirt::DomainWatch>>,
    relays: Mutex<Vec<NicRelay>>,
    taps: Mutex<Vec<TapGuard>>,
    conn: Mutex<Option<Connect>>,
    runtime_dir: Mutex<Option<RuntimeDir>>,
    /// Socket files QEMU created outside the runtime directory.
    sockets: Mutex<Vec<PathBuf>>,
}

impl Owned {
    fn new(runtime_dir: RuntimeDir) -> Self {
        Self {
            stopping: Arc::new(AtomicBool::new(false)),
            released: AtomicBool::new(false),
            domain: Mutex::new(None),
            monitor: Mutex::new(None),
            pump: Mutex::new(None),
            watch: Mutex::new(None),
            relays: Mutex::new(Vec::new()),
            taps: Mutex::new(Vec::new()),
            conn: Mutex::new(None),
            runtime_dir: Mutex::new(Some(runtime_dir)),
            sockets: Mutex::new(Vec::new()),
        }
    }

    fn lock_taps(&self) -> MutexGuard<'_, Vec<TapGuard>> {
        lock(&self.taps)
    }

    /// A second descriptor of the `index`-th NIC's tap (taps are kept in NIC order).
    fn tap_file(&self, index: usize, nic: &str) -> Result<std::fs::File, QemuError> {
        let setup = |source| {
            QemuError::Relay(RelayError::Setup {
                nic: nic.to_string(),
                what: "duplicating the tap descriptor",
                source,
            })
        };
        let taps = self.lock_taps();
        let tap = taps
            .get(index)
            .ok_or_else(|| setup(std::io::Error::other("no open tap for this NIC")))?;
        tap.try_clone_file()
            .unwrap_or_else(|| Err(std::io::Error::other("the tap was already closed")))
            .map_err(setup)
    }

    fn set_conn(&self, conn: Connect) {
        *lock(&self.conn) = Some(conn);
    }

    fn set_domain(&self, dom: Domain, name: String) {
        *lock(&self.domain) = Some((dom, name));
    }

    fn release(&self) {
        if self.released.swap(true, Ordering::SeqCst) {
            return;
        }
        self.stopping.store(true, Ordering::SeqCst);
        if let Some((dom, name)) = lock(&self.domain).take() {
            match dom.destroy() {
                Ok(()) => tracing::info!(domain = %name, "domain destroyed"),
                Err(err) if err.code() == ErrorNumber::NoDomain => {
                    tracing::debug!(domain = %name, "domain already gone")
                }
                Err(err) if err.code() == ErrorNumber::OperationInvalid => {
                    tracing::debug!(domain = %name, %err, "domain not running")
                }
                Err(err) => tracing::error!(domain = %name, %err, "destroying the domain"),
            }
        }
        if let Some(monitor) = lock(&self.monitor).take() {
            if monitor.join().is_err() {
                tracing::error!("domain monitor thread panicked");
            }
        }
        if let Some(mut pump) = lock(&self.pump).take() {
            pump.close();
        }
        drop(lock(&self.watch).take());
        for mut relay in lock(&self.relays).drain(..) {
            relay.stop();
        }
        for mut tap in lock(&self.taps).drain(..) {
            tap.remove();
        }
        if let Some(mut conn) = lock(&self.conn).take() {
            if let Err(err) = conn.close() {
                tracing::debug!(%err, "closing the libvirt connection");
            }
        }
        for socket in lock(&self.sockets).drain(..) {
            remove_stale_socket(&socket);
        }
        drop(lock(&self.runtime_dir).take());
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        self.release();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_combines_libvirt_and_launcher_views() {
        use VmState::*;
        let cases = [
            (Some(sys::VIR_DOMAIN_RUNNING), Running, Running),
            (Some(sys::VIR_DOMAIN_BLOCKED), Running, Running),
            (Some(sys::VIR_DOMAIN_PAUSED), Paused, Paused),
            // Paused by someone else (virsh suspend) still shows as paused.
            (Some(sys::VIR_DOMAIN_PAUSED), Running, Paused),
            (Some(sys::VIR_DOMAIN_RUNNING), ShuttingDown, ShuttingDown),
            (Some(sys::VIR_DOMAIN_SHUTDOWN), Running, ShuttingDown),
            (Some(sys::VIR_DOMAIN_SHUTOFF), Running, Stopped),
            (Some(sys::VIR_DOMAIN_CRASHED), Running, Stopped),
            (None, Running, Stopped),
            (Some(sys::VIR_DOMAIN_RUNNING), Stopped, Stopped),
        ];
        for (libvirt, ours, expected) in cases {
            assert_eq!(
                combined_state(libvirt, ours),
                expected,
                "{libvirt:?} {ours:?}"
            );
        }
    }

    #[test]
    fn each_user_has_a_runtime_base_of_its_own() {
        use nix::unistd::Uid;
        assert_eq!(
            default_runtime_base_name(Uid::from_raw(0)),
            "ironvisor-qemu"
        );
        assert_eq!(
            default_runtime_base_name(Uid::from_raw(107)),
            "ironvisor-qemu-107"
        );
    }

    #[test]
    fn a_runtime_base_of_another_user_is_refused_with_both_uids() {
        let base = tempfile::tempdir().unwrap();
        let me = nix::unistd::geteuid();
        check_base_owner(base.path(), me).unwrap();
        let other = nix::unistd::Uid::from_raw(me.as_raw() + 4242);
        let error = check_base_owner(base.path(), other).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::PermissionDenied);
        let message = error.to_string();
        assert!(message.contains(&format!("uid {me}")), "{message}");
        assert!(message.contains(RUNTIME_DIR_ENV), "{message}");
    }

    #[test]
    fn runtime_dir_is_private_replaces_leftovers_and_is_removed() {
        let base = tempfile::tempdir().unwrap();
        let path = base.path().join("runtime/123");
        std::fs::create_dir_all(&path).unwrap();
        std::fs::write(path.join("serial.sock"), b"stale").unwrap();
        let dir = RuntimeDir::create(&path).unwrap();
        assert!(!path.join("serial.sock").exists());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        drop(dir);
        assert!(!path.exists());
    }

    #[test]
    fn runtime_dirs_of_dead_launchers_are_swept() {
        let base = tempfile::tempdir().unwrap();
        let dead = base.path().join(u32::MAX.to_string());
        let other = base.path().join("not-a-pid");
        std::fs::create_dir_all(dead.join("x")).unwrap();
        std::fs::create_dir_all(&other).unwrap();
        let ours = RuntimeDir::create(&base.path().join(std::process::id().to_string())).unwrap();
        assert!(!dead.exists(), "dead launcher's directory removed");
        assert!(other.exists(), "foreign entries are left alone");
        assert!(ours.path.exists());
    }

    #[test]
    fn only_sockets_are_removed_as_stale() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let file = dir.path().join("agent.txt");
        std::fs::write(&file, b"keep").unwrap();
        remove_stale_socket(&socket);
        remove_stale_socket(&file);
        remove_stale_socket(&dir.path().join("missing"));
        assert!(!socket.exists());
        assert!(file.exists());
    }

    #[test]
    fn only_launcher_processes_count_as_owners() {
        assert!(!launcher_alive(u32::MAX));
        // This test binary is not a launcher.
        assert!(!launcher_alive(std::process::id()));
    }

    #[test]
    fn owned_release_is_idempotent_and_removes_the_runtime_dir() {
        let base = tempfile::tempdir().unwrap();
        let path = base.path().join("9");
        let owned = Owned::new(RuntimeDir::create(&path).unwrap());
        assert!(path.exists());
        owned.release();
        assert!(!path.exists());
        assert!(owned.stopping.load(Ordering::SeqCst));
        owned.release();
    }
}
