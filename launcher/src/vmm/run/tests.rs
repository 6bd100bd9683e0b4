use std::sync::atomic::{AtomicU32, Ordering};

use ironvisor_launcher_api::control::{ControlError, VmControl, VmStatus};

use super::*;
use crate::vmm::events::EventSender;

/// A graceful timeout long enough never to expire in a test.
const NEVER: Duration = Duration::from_secs(3600);

/// A VM whose guest, when asked to shut down, answers with `answer` (or ignores the
/// request when there is none).
struct FakeVm {
    guest_shutdown_requests: AtomicU32,
    answer: Option<(EventSender, VmEvent)>,
}

impl FakeVm {
    fn ignoring_shutdown_requests() -> Self {
        Self {
            guest_shutdown_requests: AtomicU32::new(0),
            answer: None,
        }
    }

    fn answering_shutdown_requests_with(events: &EventSender, answer: VmEvent) -> Self {
        Self {
            guest_shutdown_requests: AtomicU32::new(0),
            answer: Some((events.clone(), answer)),
        }
    }

    fn guest_shutdown_requests(&self) -> u32 {
        self.guest_shutdown_requests.load(Ordering::SeqCst)
    }
}

impl VmInstance for FakeVm {
    fn request_guest_shutdown(&self) {
        self.guest_shutdown_requests.fetch_add(1, Ordering::SeqCst);
        if let Some((events, answer)) = &self.answer {
            events.send(answer.clone());
        }
    }

    fn stop(&self) {
        panic!("the main loop only decides; stopping the VM is the caller's job");
    }
}

impl VmControl for FakeVm {
    fn status(&self) -> VmStatus {
        panic!("the main loop never asks for the status");
    }
    fn pause(&self) -> Result<(), ControlError> {
        panic!("the main loop never pauses the VM");
    }
    fn resume(&self) -> Result<(), ControlError> {
        panic!("the main loop never resumes the VM");
    }
    fn shutdown(&self, _: ShutdownMode) -> Result<(), ControlError> {
        panic!("the main loop never calls the control API");
    }
}

/// Runs the main loop over `events` (already queued) without signals or a console.
async fn run_main_loop(vm: &FakeVm, events: &mut mpsc::UnboundedReceiver<VmEvent>) -> ExitStatus {
    main_loop(vm, events, None, None, NEVER).await
}

fn graceful(timeout: Duration) -> VmEvent {
    VmEvent::ShutdownRequested(ShutdownMode::Graceful { timeout })
}

#[tokio::test]
async fn each_ending_event_gives_its_exit_status_without_asking_the_guest() {
    let cases = [
        (VmEvent::GuestPoweroff, ExitStatus::GuestPoweroff),
        (VmEvent::GuestReboot, ExitStatus::GuestReboot),
        (VmEvent::TripleFault { vcpu: 1 }, ExitStatus::GuestCrash),
        (
            VmEvent::VcpuFailed {
                vcpu: 0,
                reason: "KVM_RUN failed".to_string(),
            },
            ExitStatus::GuestCrash,
        ),
        (
            VmEvent::ShutdownRequested(ShutdownMode::Forced),
            ExitStatus::HardStop,
        ),
    ];
    for (event, expected) in cases {
        let (sender, mut events) = events::channel();
        let vm = FakeVm::ignoring_shutdown_requests();
        sender.send(event.clone());
        let status = run_main_loop(&vm, &mut events).await;
        assert_eq!(status, expected, "after {event:?}");
        assert_eq!(vm.guest_shutdown_requests(), 0, "after {event:?}");
    }
}

#[tokio::test]
async fn a_closed_event_channel_is_a_launcher_error() {
    let (sender, mut events) = events::channel();
    drop(sender);
    let vm = FakeVm::ignoring_shutdown_requests();
    assert_eq!(
        run_main_loop(&vm, &mut events).await,
        ExitStatus::LauncherError
    );
}

#[tokio::test]
async fn the_guest_going_down_after_a_graceful_request_is_a_graceful_stop() {
    for answer in [VmEvent::GuestPoweroff, VmEvent::GuestReboot] {
        let (sender, mut events) = events::channel();
        let vm = FakeVm::answering_shutdown_requests_with(&sender, answer.clone());
        // The second request arrives while the first is in progress: the guest is asked
        // only once.
        sender.send(graceful(NEVER));
        sender.send(graceful(NEVER));
        let status = run_main_loop(&vm, &mut events).await;
        assert_eq!(
            status,
            ExitStatus::GracefulStop,
            "guest answered {answer:?}"
        );
        assert_eq!(vm.guest_shutdown_requests(), 1, "guest answered {answer:?}");
    }
}

#[tokio::test]
async fn a_guest_ignoring_a_graceful_request_is_stopped_hard_at_the_timeout() {
    let (sender, mut events) = events::channel();
    let vm = FakeVm::ignoring_shutdown_requests();
    sender.send(graceful(Duration::from_millis(10)));
    let status = run_main_loop(&vm, &mut events).await;
    assert_eq!(status, ExitStatus::HardStop);
    assert_eq!(vm.guest_shutdown_requests(), 1);
}

#[tokio::test]
async fn a_forced_request_during_a_graceful_shutdown_stops_hard() {
    let (sender, mut events) = events::channel();
    let vm = FakeVm::ignoring_shutdown_requests();
    sender.send(graceful(NEVER));
    sender.send(VmEvent::ShutdownRequested(ShutdownMode::Forced));
    assert_eq!(run_main_loop(&vm, &mut events).await, ExitStatus::HardStop);
    assert_eq!(vm.guest_shutdown_requests(), 1);
}

#[tokio::test]
async fn a_crash_during_a_graceful_shutdown_is_still_a_crash() {
    let (sender, mut events) = events::channel();
    let vm = FakeVm::answering_shutdown_requests_with(&sender, VmEvent::TripleFault { vcpu: 0 });
    sender.send(graceful(NEVER));
    assert_eq!(
        run_main_loop(&vm, &mut events).await,
        ExitStatus::GuestCrash
    );
}
