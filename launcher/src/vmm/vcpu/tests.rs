use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc;

use ironvisor_arch::boot::KernelEntry;
use ironvisor_arch::topology::CpuTopology;
use vm_memory::GuestAddress;

use super::*;
use crate::vmm::bus::BusDevice;
use crate::vmm::vm::tests::{kvm_on_dev_null, open_host_kvm, small_guest_memory};

// ---------------------------------------------------------------------------------------
// Exit dispatch

/// A bus device that records accesses and reads back `marker + offset`.
struct Recorder {
    marker: u8,
    reads: Vec<(u64, usize)>,
    writes: Vec<(u64, Vec<u8>)>,
}

impl BusDevice for Recorder {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.reads.push((offset, data.len()));
        data.fill(self.marker + offset as u8);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        self.writes.push((offset, data.to_vec()));
    }
}

/// Base and length of the one device on each bus: the same addresses on both, so a test
/// sees which bus an access went to.
const DEVICE_BASE: u64 = 0x10;
const DEVICE_LEN: u64 = 0x10;
const UNMAPPED: u64 = 0x80;

struct TestBuses {
    buses: IoBuses,
    port_device: Arc<Mutex<Recorder>>,
    mmio_device: Arc<Mutex<Recorder>>,
}

impl TestBuses {
    fn new() -> Self {
        let port_device = Arc::new(Mutex::new(Recorder {
            marker: 0x40,
            reads: Vec::new(),
            writes: Vec::new(),
        }));
        let mmio_device = Arc::new(Mutex::new(Recorder {
            marker: 0x80,
            reads: Vec::new(),
            writes: Vec::new(),
        }));
        let mut pio = Bus::new();
        pio.insert("port device", DEVICE_BASE, DEVICE_LEN, port_device.clone())
            .unwrap();
        let mut mmio = Bus::new();
        mmio.insert("mmio device", DEVICE_BASE, DEVICE_LEN, mmio_device.clone())
            .unwrap();
        Self {
            buses: IoBuses { pio, mmio },
            port_device,
            mmio_device,
        }
    }

    fn dispatch(&self, exit: Result<VcpuExit<'_>, kvm_ioctls::Error>) -> ExitOutcome {
        dispatch_exit(exit, &self.buses, 0)
    }

    fn port_device(&self) -> MutexGuard<'_, Recorder> {
        self.port_device.lock().unwrap()
    }

    fn mmio_device(&self) -> MutexGuard<'_, Recorder> {
        self.mmio_device.lock().unwrap()
    }
}

fn failure_reason(outcome: ExitOutcome) -> String {
    match outcome {
        ExitOutcome::Failed(reason) => reason,
        other => panic!("expected the vCPU to fail, got {other:?}"),
    }
}

#[test]
fn port_in_reads_the_port_device_at_its_offset_and_keeps_running() {
    let test = TestBuses::new();
    let mut data = [0u8; 2];
    let outcome = test.dispatch(Ok(VcpuExit::IoIn(0x12, &mut data)));
    assert_eq!(outcome, ExitOutcome::Continue);
    assert_eq!(data, [0x42, 0x42]);
    assert_eq!(test.port_device().reads, vec![(2, 2)]);
    assert!(test.mmio_device().reads.is_empty());
}

#[test]
fn port_out_writes_the_port_device_only() {
    let test = TestBuses::new();
    let outcome = test.dispatch(Ok(VcpuExit::IoOut(0x14, &[1, 2])));
    assert_eq!(outcome, ExitOutcome::Continue);
    assert_eq!(test.port_device().writes, vec![(4, vec![1, 2])]);
    assert!(test.mmio_device().writes.is_empty());
}

#[test]
fn mmio_read_and_write_go_to_the_mmio_device_only() {
    let test = TestBuses::new();
    let mut data = [0u8; 4];
    let read = test.dispatch(Ok(VcpuExit::MmioRead(0x13, &mut data)));
    let write = test.dispatch(Ok(VcpuExit::MmioWrite(0x18, &[9, 8, 7, 6])));
    assert_eq!(read, ExitOutcome::Continue);
    assert_eq!(write, ExitOutcome::Continue);
    assert_eq!(data, [0x83; 4]);
    assert_eq!(test.mmio_device().reads, vec![(3, 4)]);
    assert_eq!(test.mmio_device().writes, vec![(8, vec![9, 8, 7, 6])]);
    assert!(test.port_device().reads.is_empty());
    assert!(test.port_device().writes.is_empty());
}

#[test]
fn unmapped_accesses_read_all_ones_drop_writes_and_keep_running() {
    let test = TestBuses::new();
    let mut port_data = [0u8; 1];
    let mut mmio_data = [0u8; 8];
    let port = u16::try_from(UNMAPPED).unwrap();
    let outcomes = [
        test.dispatch(Ok(VcpuExit::IoIn(port, &mut port_data))),
        test.dispatch(Ok(VcpuExit::IoOut(port, &[1]))),
        test.dispatch(Ok(VcpuExit::MmioRead(UNMAPPED, &mut mmio_data))),
        test.dispatch(Ok(VcpuExit::MmioWrite(UNMAPPED, &[1]))),
    ];
    assert!(
        outcomes
            .iter()
            .all(|outcome| *outcome == ExitOutcome::Continue),
        "{outcomes:?}"
    );
    assert_eq!(port_data, [0xff]);
    assert_eq!(mmio_data, [0xff; 8]);
    for device in [test.port_device(), test.mmio_device()] {
        assert!(device.reads.is_empty() && device.writes.is_empty());
    }
}

#[test]
fn hlt_powers_the_guest_off() {
    let outcome = TestBuses::new().dispatch(Ok(VcpuExit::Hlt));
    assert_eq!(outcome, ExitOutcome::Finished(VmEvent::GuestPoweroff));
}

#[test]
fn shutdown_is_a_triple_fault_of_the_exiting_vcpu() {
    let test = TestBuses::new();
    let outcome = dispatch_exit(Ok(VcpuExit::Shutdown), &test.buses, 3);
    assert_eq!(
        outcome,
        ExitOutcome::Finished(VmEvent::TripleFault { vcpu: 3 })
    );
}

#[test]
fn system_events_power_off_reboot_or_fail_the_vcpu() {
    let test = TestBuses::new();
    let event = |kind| test.dispatch(Ok(VcpuExit::SystemEvent(kind, &[])));
    assert_eq!(
        event(KVM_SYSTEM_EVENT_SHUTDOWN),
        ExitOutcome::Finished(VmEvent::GuestPoweroff)
    );
    assert_eq!(
        event(KVM_SYSTEM_EVENT_RESET),
        ExitOutcome::Finished(VmEvent::GuestReboot)
    );
    let crash = failure_reason(event(KVM_SYSTEM_EVENT_CRASH));
    assert!(crash.contains("KVM_SYSTEM_EVENT_CRASH"), "{crash}");
    let unknown = failure_reason(event(99));
    assert_eq!(unknown, "unexpected KVM system event 99");
}

#[test]
fn an_interrupted_run_runs_again() {
    let test = TestBuses::new();
    for errno in [libc::EINTR, libc::EAGAIN] {
        let outcome = test.dispatch(Err(kvm_ioctls::Error::new(errno)));
        assert_eq!(outcome, ExitOutcome::Continue, "errno {errno}");
    }
    assert_eq!(test.dispatch(Ok(VcpuExit::Intr)), ExitOutcome::Continue);
}

#[test]
fn a_failed_kvm_run_fails_the_vcpu_with_the_os_error() {
    let outcome = TestBuses::new().dispatch(Err(kvm_ioctls::Error::new(libc::EFAULT)));
    let reason = failure_reason(outcome);
    assert!(reason.starts_with("KVM_RUN failed: "), "{reason}");
    assert!(reason.contains("os error 14"), "{reason}");
}

#[test]
fn entry_failure_and_internal_error_fail_the_vcpu_with_what_kvm_said() {
    let test = TestBuses::new();
    let entry = failure_reason(test.dispatch(Ok(VcpuExit::FailEntry(0x8000_0021, 1))));
    assert!(
        entry.contains("KVM_EXIT_FAIL_ENTRY")
            && entry.contains("0x80000021")
            && entry.contains("host CPU 1"),
        "{entry}"
    );
    let internal = failure_reason(test.dispatch(Ok(VcpuExit::InternalError)));
    assert!(internal.contains("KVM_EXIT_INTERNAL_ERROR"), "{internal}");
}

#[test]
fn unexpected_exits_fail_the_vcpu_naming_the_exit() {
    let test = TestBuses::new();
    assert_eq!(
        failure_reason(test.dispatch(Ok(VcpuExit::Unknown))),
        "unexpected vCPU exit Unknown"
    );
    assert_eq!(
        failure_reason(test.dispatch(Ok(VcpuExit::Unsupported(42)))),
        "unexpected vCPU exit Unsupported(42)"
    );
}

// ---------------------------------------------------------------------------------------
// Pause, resume and stop: the state alone

fn state(request: Request, acknowledged: u32) -> RunState {
    RunState {
        request,
        acknowledged,
    }
}

#[test]
fn a_new_request_starts_a_new_count_of_acknowledgements() {
    let mut run_state = state(Request::Pause, 2);
    assert!(run_state.set_request(Request::Stop));
    assert_eq!(
        (run_state.request, run_state.acknowledged),
        (Request::Stop, 0)
    );
}

#[test]
fn repeating_the_current_request_keeps_its_acknowledgements() {
    // Threads already parked do not acknowledge a second time; a second pause must not
    // wait for them to.
    let mut run_state = state(Request::Pause, 2);
    assert!(run_state.set_request(Request::Pause));
    assert_eq!(
        (run_state.request, run_state.acknowledged),
        (Request::Pause, 2)
    );
}

#[test]
fn stop_is_final() {
    let mut run_state = state(Request::Stop, 1);
    assert!(!run_state.set_request(Request::Pause));
    assert!(!run_state.set_request(Request::Stop));
    assert!(!run_state.resume());
    assert_eq!(
        (run_state.request, run_state.acknowledged),
        (Request::Stop, 1)
    );
}

#[test]
fn resume_only_undoes_a_pause() {
    let mut running = state(Request::Run, 0);
    assert!(!running.resume());
    assert_eq!(running.request, Request::Run);

    let mut paused = state(Request::Pause, 2);
    assert!(paused.resume());
    assert_eq!((paused.request, paused.acknowledged), (Request::Run, 0));
}

// ---------------------------------------------------------------------------------------
// Pause, resume and stop: a vCPU set of threads that stand in for vCPUs

/// How long a test waits for threads to make progress before it fails.
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(10);

type Body = Box<dyn FnOnce() + Send>;

/// What the stand-in vCPU threads report.
#[derive(Default)]
struct Counters {
    /// Guest runs (stand-ins for KVM_RUN) started, by all threads.
    runs: AtomicU64,
    /// Threads that have returned.
    exited: AtomicU32,
}

impl Counters {
    fn runs(&self) -> u64 {
        self.runs.load(Ordering::SeqCst)
    }

    fn exited(&self) -> u32 {
        self.exited.load(Ordering::SeqCst)
    }

    /// Waits until some thread starts another run.
    fn wait_for_a_run_after(&self, runs: u64) {
        let deadline = Instant::now() + PROGRESS_TIMEOUT;
        while self.runs() <= runs {
            assert!(
                Instant::now() < deadline,
                "no vCPU thread ran within {PROGRESS_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// The run loop of a vCPU whose guest keeps running: each pass stands in for a KVM_RUN
/// that a kick would interrupt.
fn running_vcpu(shared: &Arc<Shared>, counters: &Arc<Counters>) -> Body {
    let (shared, counters) = (shared.clone(), counters.clone());
    Box::new(move || {
        while shared.wait_until_runnable() {
            counters.runs.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_micros(200));
        }
        counters.exited.fetch_add(1, Ordering::SeqCst);
    })
}

/// A vCPU whose guest is already finished (it sent its event): it parks until stopped.
fn finished_vcpu(shared: &Arc<Shared>, counters: &Arc<Counters>) -> Body {
    let (shared, counters) = (shared.clone(), counters.clone());
    Box::new(move || {
        shared.park_until_stopped();
        counters.exited.fetch_add(1, Ordering::SeqCst);
    })
}

/// Starts a vCPU set with one thread per body, unpinned.
fn start_set(shared: Arc<Shared>, bodies: Vec<Body>) -> VcpuSet {
    let pinning = VcpuPinning::new(&[]).unwrap();
    VcpuSet::spawn(shared, bodies, &pinning).unwrap()
}

fn request_and_acknowledged(set: &VcpuSet) -> (Request, u32) {
    let state = set.shared.lock();
    (state.request, state.acknowledged)
}

#[test]
fn pause_parks_every_vcpu_and_resume_lets_them_run_again() {
    let shared = Arc::new(Shared::new());
    let counters = Arc::new(Counters::default());
    let bodies = (0..3).map(|_| running_vcpu(&shared, &counters)).collect();
    let set = start_set(shared, bodies);
    assert_eq!(set.count(), 3);
    counters.wait_for_a_run_after(0);

    set.pause().unwrap();
    assert_eq!(request_and_acknowledged(&set), (Request::Pause, 3));
    // Every thread acknowledged, so each waits for the request to change: none runs.
    let runs_when_paused = counters.runs();
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(counters.runs(), runs_when_paused);

    set.resume();
    assert_eq!(request_and_acknowledged(&set), (Request::Run, 0));
    counters.wait_for_a_run_after(runs_when_paused);

    set.stop().unwrap();
    assert_eq!(counters.exited(), 3);
}

#[test]
fn stop_ends_and_joins_every_thread_and_nothing_undoes_it() {
    let shared = Arc::new(Shared::new());
    let counters = Arc::new(Counters::default());
    let bodies = (0..2).map(|_| running_vcpu(&shared, &counters)).collect();
    let set = start_set(shared, bodies);

    set.stop().unwrap();
    // stop() returns after joining, so every thread has returned.
    assert_eq!(counters.exited(), 2);
    assert!(set.threads.lock().unwrap().is_empty());
    assert_eq!(request_and_acknowledged(&set), (Request::Stop, 2));

    set.stop().unwrap();
    set.pause().unwrap();
    set.resume();
    assert_eq!(request_and_acknowledged(&set), (Request::Stop, 2));
}

#[test]
fn a_paused_set_stops() {
    let shared = Arc::new(Shared::new());
    let counters = Arc::new(Counters::default());
    let bodies = (0..2).map(|_| running_vcpu(&shared, &counters)).collect();
    let set = start_set(shared, bodies);

    set.pause().unwrap();
    set.stop().unwrap();
    assert_eq!(counters.exited(), 2);
}

#[test]
fn a_vcpu_whose_guest_finished_counts_as_paused_and_still_stops() {
    let shared = Arc::new(Shared::new());
    let counters = Arc::new(Counters::default());
    let bodies = vec![
        running_vcpu(&shared, &counters),
        finished_vcpu(&shared, &counters),
    ];
    let set = start_set(shared, bodies);

    set.pause().unwrap();
    assert_eq!(request_and_acknowledged(&set), (Request::Pause, 2));
    set.resume();
    set.stop().unwrap();
    assert_eq!(counters.exited(), 2);
}

#[test]
fn a_vcpu_that_never_acknowledges_fails_the_pause_with_the_count() {
    let shared = Arc::new(Shared::new());
    let counters = Arc::new(Counters::default());
    let (release, released) = mpsc::channel::<()>();
    // Stuck (as if in a KVM_RUN no kick interrupts) until the test releases it.
    let stuck: Body = {
        let running = running_vcpu(&shared, &counters);
        Box::new(move || {
            // An error means the test is gone; run on either way.
            let _ = released.recv();
            running();
        })
    };
    let bodies = vec![running_vcpu(&shared, &counters), stuck];
    let set = start_set(shared, bodies);

    let err = set.pause().unwrap_err();
    assert!(
        matches!(
            err,
            VcpuError::Unresponsive {
                what: "pause",
                acknowledged: 1,
                total: 2,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .starts_with("only 1 of 2 vCPUs acknowledged a pause request within"),
        "{err}"
    );

    release.send(()).unwrap();
    set.resume();
    set.stop().unwrap();
    assert_eq!(counters.exited(), 2);
}

// ---------------------------------------------------------------------------------------
// vCPU creation on a KVM device

#[test]
#[ignore = "needs /dev/kvm"]
fn create_vcpus_fails_reading_cpuid_from_a_fd_that_is_not_kvm() {
    let kvm = open_host_kvm();
    let mem = small_guest_memory();
    let vm = kvm
        .create_vm()
        .expect("KVM_CREATE_VM on the host's KVM device");
    let entry = KernelEntry::Linux64(GuestAddress(0x10_0000));
    let err =
        create_vcpus(&kvm_on_dev_null(), &vm, &mem, &CpuTopology::flat(1), &entry).unwrap_err();
    assert!(
        matches!(&err, VcpuError::SupportedCpuid(source) if source.errno() == libc::ENOTTY),
        "{err:?}"
    );
}

#[test]
#[ignore = "needs /dev/kvm"]
fn only_the_boot_vcpu_starts_at_the_kernel_entry() {
    let kvm = open_host_kvm();
    let mem = small_guest_memory();
    let vm = crate::vmm::vm::create_vm(&kvm, &mem)
        .unwrap_or_else(|err| panic!("creating a VM on the host's KVM device: {err}"));
    let entry = KernelEntry::Linux64(GuestAddress(0x10_0000));
    let vcpus = create_vcpus(&kvm, &vm, &mem, &CpuTopology::flat(2), &entry)
        .unwrap_or_else(|err| panic!("creating 2 vCPUs: {err}"));
    assert_eq!(vcpus.len(), 2);
    let boot = vcpus[0].get_regs().unwrap();
    assert_eq!(boot.rip, 0x10_0000);
    assert_eq!(boot.rsi, ironvisor_arch::layout::ZERO_PAGE_START);
    let application = vcpus[1].get_regs().unwrap();
    assert_ne!(application.rip, 0x10_0000);
}

#[test]
#[ignore = "needs /dev/kvm"]
fn each_vcpu_gets_the_apic_id_of_its_place_in_the_topology() {
    let kvm = open_host_kvm();
    let mem = small_guest_memory();
    let vm = crate::vmm::vm::create_vm(&kvm, &mem)
        .unwrap_or_else(|err| panic!("creating a VM on the host's KVM device: {err}"));
    let entry = KernelEntry::Linux64(GuestAddress(0x10_0000));
    // 2 sockets x 3 cores: the cores take 2 bits, so socket 1's ids start at 4.
    let topology = CpuTopology::new(2, 3, 1).unwrap();
    let vcpus = create_vcpus(&kvm, &vm, &mem, &topology, &entry)
        .unwrap_or_else(|err| panic!("creating 6 vCPUs: {err}"));
    let apic_ids: Vec<u32> = vcpus
        .iter()
        .map(|vcpu| {
            let lapic = vcpu.get_lapic().unwrap();
            // APIC ID register (offset 0x20), id in bits 31:24 in xAPIC mode.
            let bytes: Vec<u8> = lapic.regs[0x20..0x24].iter().map(|&b| b as u8).collect();
            u32::from_le_bytes(bytes.try_into().unwrap()) >> 24
        })
        .collect();
    assert_eq!(apic_ids, [0, 1, 2, 4, 5, 6]);
    let mut cpuid = vcpus[4]
        .get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .unwrap();
    let leaf1 = cpuid
        .as_mut_slice()
        .iter()
        .find(|e| e.function == 1)
        .copied()
        .unwrap();
    assert_eq!(leaf1.ebx >> 24, 5, "vCPU 4's initial APIC id in CPUID");
}
