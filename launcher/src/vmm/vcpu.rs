//! vCPUs: boot-state configuration, one thread each, the KVM_RUN loop, and pause/stop.
//!
//! A vCPU thread leaves KVM_RUN when a kick signal interrupts it; the controller keeps
//! kicking until every thread acknowledges, which closes the race of a signal landing just
//! before the thread enters KVM_RUN.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ironvisor_arch::boot::KernelEntry;
use ironvisor_arch::cpu;
use ironvisor_arch::cpuid;
use ironvisor_arch::topology::CpuTopology;
use kvm_bindings::{
    Msrs, KVM_MAX_CPUID_ENTRIES, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET,
    KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use super::affinity::VcpuPinning;
use super::bus::Bus;
use super::events::{EventSender, VmEvent};
use crate::seccomp::{self, SeccompLevel, ThreadKind};
use crate::GuestMemory;

/// How long a pause or stop waits for every vCPU to acknowledge.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);
/// Interval between kicks while waiting for an acknowledgement.
const KICK_INTERVAL: Duration = Duration::from_millis(1);

#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("creating vCPU {index}: {source}")]
    Create {
        index: u32,
        source: kvm_ioctls::Error,
    },
    #[error("reading the CPUID that KVM supports: {0}")]
    SupportedCpuid(kvm_ioctls::Error),
    #[error("configuring vCPU {index}: {step}: {source}")]
    Configure {
        index: u32,
        step: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("vCPU {index}: KVM accepted only {set} of {wanted} boot MSRs")]
    PartialMsrs {
        index: u32,
        set: usize,
        wanted: usize,
    },
    #[error("vCPU {index}: building the boot MSR list: {reason}")]
    MsrList { index: u32, reason: String },
    #[error("vCPU {index}: boot segment setup: {source}")]
    Sregs {
        index: u32,
        source: ironvisor_arch::cpu::CpuError,
    },
    #[error("installing the vCPU kick signal handler: {0}")]
    SignalHandler(vmm_sys_util::errno::Error),
    #[error("starting the thread of vCPU {index}: {source}")]
    Spawn { index: u32, source: std::io::Error },
    #[error(transparent)]
    Pin(#[from] super::affinity::AffinityError),
    #[error(
        "only {acknowledged} of {total} vCPUs acknowledged a {what} request within {timeout:?}"
    )]
    Unresponsive {
        what: &'static str,
        acknowledged: u32,
        total: u32,
        timeout: Duration,
    },
}

/// What the controller wants the vCPU threads to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Request {
    Run,
    Pause,
    Stop,
}

#[derive(Debug)]
struct RunState {
    request: Request,
    /// How many threads are parked (paused) or gone (stopped) under the current request.
    acknowledged: u32,
}

impl RunState {
    /// Records a pause or stop request; a new request starts a new count of
    /// acknowledgements. Returns false, changing nothing, once the set is stopping: a stop
    /// is final.
    fn set_request(&mut self, request: Request) -> bool {
        if self.request == Request::Stop {
            return false;
        }
        if self.request != request {
            self.request = request;
            self.acknowledged = 0;
        }
        true
    }

    /// Turns a pause back into running. Returns whether anything changed: resuming a
    /// running or stopping set does nothing.
    fn resume(&mut self) -> bool {
        if self.request != Request::Pause {
            return false;
        }
        self.request = Request::Run;
        self.acknowledged = 0;
        true
    }
}

/// State shared by the controller and all vCPU threads.
#[derive(Debug)]
struct Shared {
    state: Mutex<RunState>,
    changed: Condvar,
}

impl Shared {
    fn new() -> Self {
        Self {
            state: Mutex::new(RunState {
                request: Request::Run,
                acknowledged: 0,
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, RunState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wait<'a>(&self, state: MutexGuard<'a, RunState>) -> MutexGuard<'a, RunState> {
        self.changed
            .wait(state)
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Called by a vCPU thread before each KVM_RUN: returns true at once while running,
    /// sits out a pause (acknowledging it), and returns false once asked to stop
    /// (acknowledging that too); the thread must then exit.
    fn wait_until_runnable(&self) -> bool {
        let mut state = self.lock();
        loop {
            match state.request {
                Request::Run => return true,
                Request::Stop => {
                    state.acknowledged += 1;
                    self.changed.notify_all();
                    return false;
                }
                Request::Pause => {
                    state.acknowledged += 1;
                    self.changed.notify_all();
                    while state.request == Request::Pause {
                        state = self.wait(state);
                    }
                }
            }
        }
    }

    /// Called by a vCPU thread whose guest is finished: it never runs again, but counts as
    /// paused for a pause request and returns (acknowledged) once asked to stop.
    fn park_until_stopped(&self) {
        let mut state = self.lock();
        loop {
            match state.request {
                Request::Stop => {
                    state.acknowledged += 1;
                    self.changed.notify_all();
                    return;
                }
                Request::Pause => {
                    state.acknowledged += 1;
                    self.changed.notify_all();
                    while state.request == Request::Pause {
                        state = self.wait(state);
                    }
                }
                Request::Run => state = self.wait(state),
            }
        }
    }
}

/// The I/O buses every vCPU dispatches exits to.
pub struct IoBuses {
    pub pio: Bus,
    pub mmio: Bus,
}

/// Creates and configures the vCPUs of `topology`, in index order; each one's KVM vCPU id
/// (which KVM makes its initial APIC id) is its APIC id in the topology. The boot vCPU
/// (index 0, APIC id 0) gets the kernel entry state.
pub fn create_vcpus(
    kvm: &Kvm,
    vm: &VmFd,
    mem: &GuestMemory,
    topology: &CpuTopology,
    entry: &KernelEntry,
) -> Result<Vec<VcpuFd>, VcpuError> {
    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(VcpuError::SupportedCpuid)?;
    (0..topology.vcpus())
        .map(|index| {
            let vcpu = vm
                .create_vcpu(u64::from(topology.apic_id(index)))
                .map_err(|source| VcpuError::Create { index, source })?;
            configure_vcpu(&vcpu, mem, index, topology, entry, &supported)?;
            Ok(vcpu)
        })
        .collect()
}

fn configure_vcpu(
    vcpu: &VcpuFd,
    mem: &GuestMemory,
    index: u32,
    topology: &CpuTopology,
    entry: &KernelEntry,
    supported: &kvm_bindings::CpuId,
) -> Result<(), VcpuError> {
    let step = |step: &'static str| {
        move |source| VcpuError::Configure {
            index,
            step,
            source,
        }
    };
    let mut cpuid = supported.clone();
    cpuid::filter_cpuid(&mut cpuid, index, topology);
    vcpu.set_cpuid2(&cpuid).map_err(step("KVM_SET_CPUID2"))?;

    let entries = cpu::boot_msrs();
    let msrs = Msrs::from_entries(&entries).map_err(|err| VcpuError::MsrList {
        index,
        reason: format!("{err:?}"),
    })?;
    let set = vcpu.set_msrs(&msrs).map_err(step("KVM_SET_MSRS"))?;
    if set != entries.len() {
        return Err(VcpuError::PartialMsrs {
            index,
            set,
            wanted: entries.len(),
        });
    }
    vcpu.set_fpu(&cpu::boot_fpu())
        .map_err(step("KVM_SET_FPU"))?;

    let mut lapic = vcpu.get_lapic().map_err(step("KVM_GET_LAPIC"))?;
    cpu::setup_lint(&mut lapic);
    vcpu.set_lapic(&lapic).map_err(step("KVM_SET_LAPIC"))?;

    // Application processors wait for INIT/SIPI from the boot vCPU; only the boot vCPU
    // starts at the kernel entry point.
    if index == 0 {
        vcpu.set_regs(&cpu::boot_regs(entry))
            .map_err(step("KVM_SET_REGS"))?;
        let mut sregs = vcpu.get_sregs().map_err(step("KVM_GET_SREGS"))?;
        cpu::setup_boot_sregs(mem, entry, &mut sregs)
            .map_err(|source| VcpuError::Sregs { index, source })?;
        vcpu.set_sregs(&sregs).map_err(step("KVM_SET_SREGS"))?;
    }
    Ok(())
}

extern "C" fn handle_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Nothing to do: delivery alone makes KVM_RUN return EINTR.
}

fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

/// The running vCPU threads and the means to pause, resume and stop them.
pub struct VcpuSet {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    count: u32,
    /// Per vCPU, the host CPUs its thread was started pinned to (empty: not pinned).
    pinned: Vec<Vec<u32>>,
}

impl VcpuSet {
    /// Starts one thread per vCPU, all running.
    pub fn start(
        vcpus: Vec<VcpuFd>,
        pinning: &VcpuPinning,
        buses: Arc<IoBuses>,
        events: EventSender,
        seccomp: SeccompLevel,
    ) -> Result<Self, VcpuError> {
        let shared = Arc::new(Shared::new());
        let bodies = (0u32..)
            .zip(vcpus)
            .map(|(index, vcpu)| {
                let thread = VcpuThread {
                    index,
                    vcpu,
                    buses: buses.clone(),
                    shared: shared.clone(),
                    events: events.clone(),
                    seccomp,
                };
                move || thread.run()
            })
            .collect();
        Self::spawn(shared, bodies, pinning)
    }

    /// Installs the kick signal handler and starts one thread per body, all sharing
    /// `shared`, which must say "run".
    fn spawn<B>(
        shared: Arc<Shared>,
        bodies: Vec<B>,
        pinning: &VcpuPinning,
    ) -> Result<Self, VcpuError>
    where
        B: FnOnce() + Send + 'static,
    {
        register_signal_handler(kick_signal(), handle_kick).map_err(VcpuError::SignalHandler)?;
        let count = u32::try_from(bodies.len()).unwrap_or(u32::MAX);
        let mut threads = Vec::with_capacity(bodies.len());
        for (index, body) in (0u32..).zip(bodies) {
            let handle = pinning
                .spawn_pinned(index, || {
                    std::thread::Builder::new()
                        .name(format!("vcpu{index}"))
                        .stack_size(ironvisor_virtio::THREAD_STACK_BYTES)
                        .spawn(body)
                })?
                .map_err(|source| VcpuError::Spawn { index, source })?;
            threads.push(handle);
        }
        let pinned = (0..count).map(|index| pinning.host_cpus(index)).collect();
        Ok(Self {
            shared,
            threads: Mutex::new(threads),
            count,
            pinned,
        })
    }

    pub fn count(&self) -> u32 {
        self.count
    }

    /// Per vCPU, the host CPUs its thread runs pinned to; empty lists (or none at all)
    /// when nothing is pinned.
    pub fn pinned(&self) -> Vec<Vec<u32>> {
        if self.pinned.iter().all(Vec::is_empty) {
            return Vec::new();
        }
        self.pinned.clone()
    }

    /// Parks every vCPU outside KVM_RUN; returns when all have acknowledged.
    pub fn pause(&self) -> Result<(), VcpuError> {
        self.request_and_wait(Request::Pause, "pause")
    }

    /// Lets parked vCPUs run again.
    pub fn resume(&self) {
        if self.shared.lock().resume() {
            self.shared.changed.notify_all();
        }
    }

    /// Stops every vCPU thread and joins them. Idempotent.
    pub fn stop(&self) -> Result<(), VcpuError> {
        let result = self.request_and_wait(Request::Stop, "stop");
        let threads =
            std::mem::take(&mut *self.threads.lock().unwrap_or_else(PoisonError::into_inner));
        if result.is_ok() {
            for handle in threads {
                if handle.join().is_err() {
                    tracing::error!("a vCPU thread panicked");
                }
            }
        }
        result
    }

    fn request_and_wait(&self, request: Request, what: &'static str) -> Result<(), VcpuError> {
        if !self.shared.lock().set_request(request) {
            // Already stopping: nothing more to ask for.
            return Ok(());
        }
        self.shared.changed.notify_all();
        let deadline = Instant::now() + ACK_TIMEOUT;
        loop {
            let acknowledged = self.shared.lock().acknowledged;
            if acknowledged >= self.count {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(VcpuError::Unresponsive {
                    what,
                    acknowledged,
                    total: self.count,
                    timeout: ACK_TIMEOUT,
                });
            }
            self.kick_all();
            std::thread::sleep(KICK_INTERVAL);
        }
    }

    fn kick_all(&self) {
        let threads = self.threads.lock().unwrap_or_else(PoisonError::into_inner);
        for handle in threads.iter() {
            if let Err(err) = handle.kill(kick_signal()) {
                tracing::debug!(%err, "kicking a vCPU thread failed (already gone?)");
            }
        }
    }
}

/// One vCPU and what its thread needs.
struct VcpuThread {
    index: u32,
    vcpu: VcpuFd,
    buses: Arc<IoBuses>,
    shared: Arc<Shared>,
    events: EventSender,
    seccomp: SeccompLevel,
}

/// What the run loop does after one exit.
enum Next {
    Continue,
    /// The guest is finished on this vCPU (the event was sent).
    Done,
}

impl VcpuThread {
    fn run(mut self) {
        let span = tracing::info_span!("vcpu", index = self.index);
        let _guard = span.enter();
        // Before the first KVM_RUN: the guest never runs an instruction unfiltered.
        if let Err(err) = seccomp::install_thread(ThreadKind::Vcpu, self.seccomp) {
            tracing::error!(%err, "vCPU thread cannot be confined");
            self.events.send(VmEvent::VcpuFailed {
                vcpu: self.index,
                reason: err.to_string(),
            });
            return;
        }
        if self.index == 0 {
            seccomp::probe(ThreadKind::Vcpu);
            crate::boot_trace::mark("first_kvm_run");
        }
        loop {
            if !self.shared.wait_until_runnable() {
                return;
            }
            match self.run_once() {
                Next::Continue => {}
                Next::Done => {
                    // Park until the main loop stops everyone.
                    self.shared.park_until_stopped();
                    return;
                }
            }
        }
    }

    fn run_once(&mut self) -> Next {
        match dispatch_exit(self.vcpu.run(), &self.buses, self.index) {
            ExitOutcome::Continue => Next::Continue,
            ExitOutcome::Finished(event) => {
                if let VmEvent::TripleFault { .. } = event {
                    tracing::warn!(state = %self.cpu_state(), "triple fault (KVM_EXIT_SHUTDOWN)");
                }
                self.events.send(event);
                Next::Done
            }
            ExitOutcome::Failed(reason) => self.fail(reason),
        }
    }

    /// A one-line summary of the vCPU's registers, for crash reports.
    fn cpu_state(&self) -> String {
        let (Ok(regs), Ok(sregs)) = (self.vcpu.get_regs(), self.vcpu.get_sregs()) else {
            return "registers unavailable".to_string();
        };
        format!(
            "rip={:#x} rsp={:#x} rflags={:#x} cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} \
             efer={:#x} cs={:#x}/{:#x} idt={:#x}+{:#x} gdt={:#x}+{:#x}",
            regs.rip,
            regs.rsp,
            regs.rflags,
            sregs.cr0,
            sregs.cr2,
            sregs.cr3,
            sregs.cr4,
            sregs.efer,
            sregs.cs.selector,
            sregs.cs.base,
            sregs.idt.base,
            sregs.idt.limit,
            sregs.gdt.base,
            sregs.gdt.limit,
        )
    }

    fn fail(&self, reason: String) -> Next {
        tracing::error!(%reason, state = %self.cpu_state(), "vCPU failed");
        self.events.send(VmEvent::VcpuFailed {
            vcpu: self.index,
            reason,
        });
        Next::Done
    }
}

/// What one return from KVM_RUN leads to.
#[derive(Debug, PartialEq, Eq)]
enum ExitOutcome {
    /// Handled, or nothing to handle: run the guest again.
    Continue,
    /// The guest is finished on this vCPU: the main loop gets this event, the thread parks.
    Finished(VmEvent),
    /// The vCPU cannot go on: the main loop gets [`VmEvent::VcpuFailed`] with this reason.
    Failed(String),
}

/// Handles one return from KVM_RUN of vCPU `vcpu`: port I/O and MMIO go to their bus, the
/// exits that end the guest become an event, an interrupted run just runs again, and
/// anything else fails the vCPU.
fn dispatch_exit(
    exit: Result<VcpuExit<'_>, kvm_ioctls::Error>,
    buses: &IoBuses,
    vcpu: u32,
) -> ExitOutcome {
    let exit = match exit {
        Ok(exit) => exit,
        // A kick: the run loop looks at pause and stop requests before running again.
        Err(err) if err.errno() == libc::EINTR || err.errno() == libc::EAGAIN => {
            return ExitOutcome::Continue
        }
        Err(err) => return ExitOutcome::Failed(format!("KVM_RUN failed: {err}")),
    };
    match exit {
        VcpuExit::IoIn(port, data) => {
            buses.pio.read(u64::from(port), data);
            ExitOutcome::Continue
        }
        VcpuExit::IoOut(port, data) => {
            buses.pio.write(u64::from(port), data);
            ExitOutcome::Continue
        }
        VcpuExit::MmioRead(addr, data) => {
            if !buses.mmio.read(addr, data) {
                tracing::trace!(addr, "MMIO read of an unmapped address");
            }
            ExitOutcome::Continue
        }
        VcpuExit::MmioWrite(addr, data) => {
            if !buses.mmio.write(addr, data) {
                tracing::trace!(addr, "MMIO write to an unmapped address");
            }
            ExitOutcome::Continue
        }
        VcpuExit::Intr => ExitOutcome::Continue,
        VcpuExit::Shutdown => ExitOutcome::Finished(VmEvent::TripleFault { vcpu }),
        VcpuExit::Hlt => {
            tracing::info!("vCPU halted with interrupts off");
            ExitOutcome::Finished(VmEvent::GuestPoweroff)
        }
        VcpuExit::SystemEvent(kind, _) => {
            tracing::info!(kind, "KVM system event");
            match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN => ExitOutcome::Finished(VmEvent::GuestPoweroff),
                KVM_SYSTEM_EVENT_RESET => ExitOutcome::Finished(VmEvent::GuestReboot),
                KVM_SYSTEM_EVENT_CRASH => ExitOutcome::Failed(
                    "the guest reported a crash (KVM_SYSTEM_EVENT_CRASH)".to_string(),
                ),
                other => ExitOutcome::Failed(format!("unexpected KVM system event {other}")),
            }
        }
        VcpuExit::FailEntry(reason, cpu) => ExitOutcome::Failed(format!(
            "KVM_EXIT_FAIL_ENTRY: hardware entry failure reason {reason:#x} on host CPU {cpu}"
        )),
        VcpuExit::InternalError => ExitOutcome::Failed(
            "KVM_EXIT_INTERNAL_ERROR: KVM could not emulate a guest instruction \
             (this /dev/kvm may not support hardware-assisted guests)"
                .to_string(),
        ),
        other => ExitOutcome::Failed(format!("unexpected vCPU exit {other:?}")),
    }
}

#[cfg(test)]
mod tests;
