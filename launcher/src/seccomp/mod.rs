//! seccomp-bpf filters per launcher thread kind, installed before the guest runs.
//!
//! Three kinds of threads run once the VM starts, each with its own allowlist
//! ([`rules`], every syscall with the reason it is needed):
//!
//! - **vmm**: the main thread and the async runtime's threads (event loop, control API,
//!   console fan-out, signal handling). Installed on every thread of the process at once
//!   (`SECCOMP_FILTER_FLAG_TSYNC`) right before the vCPU threads are created.
//! - **vcpu**: each vCPU thread adds its filter before its first `KVM_RUN`.
//! - **device worker**: each virtio worker thread adds its filter before it serves a queue.
//!
//! A thread inherits the filters of the thread that created it and every filter must
//! allow a call: vCPU threads are created by the main thread, so they run under the vmm
//! *and* vcpu filters; device workers are created by the vCPU thread that activates the
//! device (the guest's `DRIVER_OK` write), so they run under all three. The vcpu filter
//! therefore also allows what starting a worker needs (thread creation, epoll and
//! eventfd setup), and the worker filter removes it again.
//!
//! A forbidden call raises `SIGSYS`: the handler writes one line naming the thread kind
//! and the call to stderr and ends the process with exit code 7
//! ([`ExitStatus::SeccompViolation`]), which the node agent reports as the VM's reason.
//! `IRONVISOR_SECCOMP=log` turns every filter into "allow and log to the kernel audit
//! log" and `off` installs none: both for debugging only.

mod rules;
mod sigsys;

use std::cell::Cell;
use std::collections::BTreeMap;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, SeccompRule, TargetArch};

pub use ironvisor_launcher_api::exit::ExitStatus;

/// The environment variable that relaxes the filters for debugging.
pub const LEVEL_ENV: &str = "IRONVISOR_SECCOMP";
/// The filters' self-test: `vmm`, `vcpu` or `worker` makes that thread kind call
/// `socket(2)` right after its filter is installed (the e2e tests check that this ends
/// the launcher with exit code 7 and the violation line).
pub const PROBE_ENV: &str = "IRONVISOR_SECCOMP_PROBE";

/// How strictly the filters apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeccompLevel {
    /// A forbidden call ends the launcher (the default).
    Enforce,
    /// Forbidden calls are allowed and logged by the kernel (`SECCOMP_RET_LOG`).
    Log,
    /// No filter at all.
    Off,
}

impl SeccompLevel {
    /// The level `IRONVISOR_SECCOMP` asks for; `Enforce` when unset.
    pub fn from_env() -> Result<Self, SeccompError> {
        match std::env::var(LEVEL_ENV) {
            Ok(value) => Self::parse(&value),
            Err(std::env::VarError::NotPresent) => Ok(Self::Enforce),
            Err(std::env::VarError::NotUnicode(value)) => Err(SeccompError::BadLevel {
                value: value.to_string_lossy().into_owned(),
            }),
        }
    }

    fn parse(value: &str) -> Result<Self, SeccompError> {
        match value {
            "" | "enforce" => Ok(Self::Enforce),
            "log" => Ok(Self::Log),
            "off" => Ok(Self::Off),
            other => Err(SeccompError::BadLevel {
                value: other.to_string(),
            }),
        }
    }
}

/// The kinds of launcher threads, each with its own filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// Main thread and async runtime threads.
    Vmm,
    /// A vCPU thread.
    Vcpu,
    /// A virtio device worker thread.
    DeviceWorker,
}

impl ThreadKind {
    /// The name used in logs and in the violation message.
    pub fn name(self) -> &'static str {
        match self {
            Self::Vmm => "vmm",
            Self::Vcpu => "vcpu",
            Self::DeviceWorker => "device worker",
        }
    }
}

impl ThreadKind {
    /// The value of [`PROBE_ENV`] that selects this kind.
    fn probe_key(self) -> &'static str {
        match self {
            Self::Vmm => "vmm",
            Self::Vcpu => "vcpu",
            Self::DeviceWorker => "worker",
        }
    }
}

/// Runs the self-test of [`PROBE_ENV`] on the calling thread of `kind`: a forbidden call
/// that the filter answers by ending the launcher.
pub fn probe(kind: ThreadKind) {
    if std::env::var(PROBE_ENV).is_ok_and(|value| value == kind.probe_key()) {
        tracing::warn!(kind = kind.name(), "{PROBE_ENV}: making a forbidden call");
        // SAFETY: a plain socket(2); under an enforcing filter it does not return, and
        // without one the descriptor is closed at once.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        if fd >= 0 {
            // SAFETY: closing the descriptor just created.
            unsafe { libc::close(fd) };
        }
    }
}

/// Why a filter could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// `IRONVISOR_SECCOMP` has a value other than enforce, log or off.
    #[error("{LEVEL_ENV}={value:?}: expected enforce, log or off")]
    BadLevel {
        /// The value given.
        value: String,
    },
    /// The allowlist could not be compiled to BPF.
    #[error("cannot build the {kind} seccomp filter: {reason}")]
    Build {
        /// Thread kind.
        kind: &'static str,
        /// What seccompiler said.
        reason: String,
    },
    /// The SIGSYS handler could not be installed.
    #[error("cannot install the SIGSYS handler: {0}")]
    Handler(#[source] std::io::Error),
    /// The kernel refused the filter.
    #[error("cannot install the {kind} seccomp filter: {reason}")]
    Install {
        /// Thread kind.
        kind: &'static str,
        /// What the kernel said.
        reason: String,
    },
}

thread_local! {
    /// The kind of the filter this thread installed last (read by the SIGSYS handler).
    static THREAD_KIND: Cell<Option<ThreadKind>> = const { Cell::new(None) };
}

/// The kind of the calling thread's own filter, if it installed one.
pub(crate) fn current_kind() -> Option<ThreadKind> {
    THREAD_KIND.with(Cell::get)
}

/// Installs the vmm filter on every thread of the process (TSYNC) and the SIGSYS
/// handler; call it on the main thread before any vCPU thread exists.
pub fn install_process(level: SeccompLevel) -> Result<(), SeccompError> {
    if level == SeccompLevel::Off {
        tracing::warn!("{LEVEL_ENV}=off: the launcher runs without seccomp filters");
        return Ok(());
    }
    sigsys::install_handler().map_err(SeccompError::Handler)?;
    let kind = ThreadKind::Vmm;
    for program in [compile(kind, level)?, clone3_unsupported(kind)?] {
        seccompiler::apply_filter_all_threads(&program).map_err(|err| SeccompError::Install {
            kind: kind.name(),
            reason: err.to_string(),
        })?;
    }
    THREAD_KIND.with(|kind| kind.set(Some(ThreadKind::Vmm)));
    tracing::info!(?level, "seccomp: vmm filter installed on every thread");
    probe(ThreadKind::Vmm);
    Ok(())
}

/// Adds the filter of `kind` to the calling thread.
pub fn install_thread(kind: ThreadKind, level: SeccompLevel) -> Result<(), SeccompError> {
    if level == SeccompLevel::Off {
        return Ok(());
    }
    let programs = [compile(kind, level)?, clone3_unsupported(kind)?];
    apply_to_thread(kind, &programs)?;
    tracing::debug!(kind = kind.name(), "seccomp filter installed");
    Ok(())
}

/// Installs compiled `programs` on the calling thread and records its kind; allocates
/// nothing (the tests call it in a forked child).
fn apply_to_thread(kind: ThreadKind, programs: &[BpfProgram]) -> Result<(), SeccompError> {
    for program in programs {
        seccompiler::apply_filter(program).map_err(|err| SeccompError::Install {
            kind: kind.name(),
            reason: err.to_string(),
        })?;
    }
    THREAD_KIND.with(|current| current.set(Some(kind)));
    Ok(())
}

/// Prepares the process for its filters; call it first thing in `main`, before any thread.
///
/// glibc's allocator opens files behind the program's back when it manages per-thread
/// arenas: `/sys/devices/system/cpu/online` to size them when a thread first allocates,
/// `/proc/sys/vm/overcommit_memory` the first time it shrinks one. With a single arena
/// (the main heap, grown and trimmed with `brk`) it does neither, so no filter has to
/// allow `openat` for the allocator; the launcher's few threads allocate little on their
/// hot paths, and one arena also costs less memory than one per CPU.
pub fn prepare_process() {
    // SAFETY: mallopt only sets a malloc parameter; called before any thread exists.
    if unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) } != 1 {
        tracing::warn!("cannot limit malloc to one arena");
    }
}

/// The level device worker threads confine themselves at (set once per process).
static WORKER_LEVEL: std::sync::OnceLock<SeccompLevel> = std::sync::OnceLock::new();

/// Makes every virtio worker thread started from now on install the device-worker filter
/// at `level` before it serves a queue.
pub fn confine_device_workers(level: SeccompLevel) {
    if WORKER_LEVEL.set(level).is_err() || !ironvisor_virtio::set_thread_init(confine_worker) {
        tracing::debug!("device workers are already confined");
    }
}

fn confine_worker() -> Result<(), String> {
    let level = WORKER_LEVEL.get().copied().unwrap_or(SeccompLevel::Enforce);
    install_thread(ThreadKind::DeviceWorker, level).map_err(|err| err.to_string())?;
    probe(ThreadKind::DeviceWorker);
    Ok(())
}

/// The BPF program of `kind` at `level`.
pub fn compile(kind: ThreadKind, level: SeccompLevel) -> Result<BpfProgram, SeccompError> {
    let build_error = |reason: String| SeccompError::Build {
        kind: kind.name(),
        reason,
    };
    // An entry without conditions wins over conditional ones for the same call (the vmm
    // list allows any ioctl, the vcpu list it passes on only KVM_RUN and register reads):
    // seccompiler reads an empty rule list as "any arguments".
    let mut map: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let mut unconditional = std::collections::BTreeSet::new();
    for allowed in rules::allowlist(kind) {
        tracing::trace!(
            kind = kind.name(),
            syscall = allowed.syscall,
            reason = allowed.reason,
            "seccomp allows"
        );
        let conditions = allowed
            .rules()
            .map_err(|err| build_error(err.to_string()))?;
        if conditions.is_empty() {
            unconditional.insert(allowed.syscall);
        }
        map.entry(allowed.syscall).or_default().extend(conditions);
    }
    for syscall in unconditional {
        map.insert(syscall, Vec::new());
    }
    let mismatch = match level {
        SeccompLevel::Log => SeccompAction::Log,
        SeccompLevel::Enforce | SeccompLevel::Off => SeccompAction::Trap,
    };
    let filter = SeccompFilter::new(map, mismatch, SeccompAction::Allow, TargetArch::x86_64)
        .map_err(|err| build_error(err.to_string()))?;
    BpfProgram::try_from(filter).map_err(|err| build_error(err.to_string()))
}

/// A filter answering `clone3` with `ENOSYS`: its flags live in memory a filter cannot
/// read, so glibc is made to fall back to `clone`, whose flags the allowlists check
/// (`ERRNO` takes precedence over the allowlist's `ALLOW`).
fn clone3_unsupported(kind: ThreadKind) -> Result<BpfProgram, SeccompError> {
    let build_error = |reason: String| SeccompError::Build {
        kind: kind.name(),
        reason,
    };
    let rules = BTreeMap::from([(libc::SYS_clone3, Vec::new())]);
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        TargetArch::x86_64,
    )
    .map_err(|err| build_error(err.to_string()))?;
    BpfProgram::try_from(filter).map_err(|err| build_error(err.to_string()))
}

#[cfg(test)]
mod tests;
