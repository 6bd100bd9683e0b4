//! Watches the domain and tells the launcher's main loop how the guest ended.
//!
//! libvirt events ([`RawEvent`]) are the primary source: a reboot event (the guest reset
//! itself; the domain uses `on_reboot=restart` so the reset is reported), lifecycle
//! "stopped" events with their detail (poweroff, crash, QEMU failure, destroyed from
//! outside), a guest panic, or the libvirtd connection closing. As a safety net the
//! monitor also polls the domain state every [`POLL_INTERVAL`]: a domain that is gone or
//! shut off without any event within [`EVENT_GRACE`] is reported too, so the launcher
//! never waits on a VM that no longer exists.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ironvisor_launcher::vmm::events::{EventSender, VmEvent};
use ironvisor_launcher_api::control::ShutdownMode;
use virt::domain::Domain;
use virt::error::ErrorNumber;
use virt::sys;

use crate::libvirt::RawEvent;

/// How often the monitor polls the domain state.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// How long a vanished or shut-off domain may go without an explaining event before the
/// monitor reports it on its own.
pub const EVENT_GRACE: Duration = Duration::from_secs(1);

/// The vCPU index reported in [`VmEvent::VcpuFailed`]: QEMU does not say which vCPU.
const ANY_VCPU: u32 = 0;

/// What a libvirt event means for the VM, given whether the launcher itself is stopping
/// the domain (then nothing is reported: the main loop already decided how the VM ended).
pub fn interpret(raw: RawEvent, stopping: bool, domain: &str) -> Option<VmEvent> {
    if stopping {
        return None;
    }
    let failed = |reason: String| {
        Some(VmEvent::VcpuFailed {
            vcpu: ANY_VCPU,
            reason,
        })
    };
    match raw {
        RawEvent::Reboot => Some(VmEvent::GuestReboot),
        RawEvent::ConnectionClosed { reason } => failed(format!(
            "lost the connection to libvirtd ({}); the domain {domain} can no longer be \
             controlled",
            close_reason(reason)
        )),
        RawEvent::Lifecycle { event, detail } => {
            let (event, detail) = (event as u32, detail as u32);
            match event {
                sys::VIR_DOMAIN_EVENT_STOPPED => match detail {
                    sys::VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN => Some(VmEvent::GuestPoweroff),
                    sys::VIR_DOMAIN_EVENT_STOPPED_DESTROYED => {
                        tracing::warn!(domain, "domain destroyed outside the launcher");
                        Some(VmEvent::ShutdownRequested(ShutdownMode::Forced))
                    }
                    sys::VIR_DOMAIN_EVENT_STOPPED_CRASHED => {
                        failed("the guest crashed (QEMU reported a guest panic)".into())
                    }
                    sys::VIR_DOMAIN_EVENT_STOPPED_FAILED => failed(format!(
                        "the QEMU process failed; see /var/log/libvirt/qemu/{domain}.log"
                    )),
                    other => failed(format!(
                        "the domain {domain} stopped unexpectedly (libvirt stop detail {other})"
                    )),
                },
                sys::VIR_DOMAIN_EVENT_CRASHED => failed(match detail {
                    sys::VIR_DOMAIN_EVENT_CRASHED_CRASHLOADED => {
                        "the guest kernel panicked and loaded its crash kernel".to_string()
                    }
                    _ => "the guest kernel panicked (pvpanic)".to_string(),
                }),
                _ => None,
            }
        }
    }
}

fn close_reason(reason: i32) -> &'static str {
    match reason as u32 {
        sys::VIR_CONNECT_CLOSE_REASON_ERROR => "I/O error",
        sys::VIR_CONNECT_CLOSE_REASON_EOF => "libvirtd closed the connection",
        sys::VIR_CONNECT_CLOSE_REASON_KEEPALIVE => "keepalive timeout",
        sys::VIR_CONNECT_CLOSE_REASON_CLIENT => "closed by the client",
        _ => "unknown reason",
    }
}

/// What one poll of the domain found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Poll {
    /// The domain exists and has not stopped.
    Alive,
    /// The domain is shut off or crashed, or no longer exists.
    Gone,
    /// The state could not be read (transient error).
    Unknown,
}

fn poll(dom: &Domain) -> Poll {
    match dom.get_state() {
        Ok((state, _)) if state == sys::VIR_DOMAIN_SHUTOFF || state == sys::VIR_DOMAIN_CRASHED => {
            Poll::Gone
        }
        Ok(_) => Poll::Alive,
        Err(err) if err.code() == ErrorNumber::NoDomain => Poll::Gone,
        Err(err) => {
            tracing::debug!(%err, "polling the domain state");
            Poll::Unknown
        }
    }
}

/// Tracks polls so a domain that vanished without an event is reported once
/// [`EVENT_GRACE`] has passed.
#[derive(Debug, Default)]
pub struct VanishTracker {
    gone_since: Option<Instant>,
}

impl VanishTracker {
    /// Records a poll at `now`; returns true when the domain has been gone for longer
    /// than the grace period.
    pub fn record(&mut self, poll: Poll, now: Instant) -> bool {
        match poll {
            Poll::Alive => {
                self.gone_since = None;
                false
            }
            Poll::Unknown => false,
            Poll::Gone => {
                let since = *self.gone_since.get_or_insert(now);
                now.duration_since(since) >= EVENT_GRACE
            }
        }
    }
}

/// Runs the monitor on the current thread until it reported the end of the VM, the event
/// channel closed, or `stopping` was set.
pub fn run(
    events_rx: Receiver<RawEvent>,
    dom: Domain,
    domain_name: String,
    events: EventSender,
    stopping: Arc<AtomicBool>,
) {
    let _span = tracing::info_span!("domain_monitor", domain = %domain_name).entered();
    let mut vanish = VanishTracker::default();
    loop {
        let raw = match events_rx.recv_timeout(POLL_INTERVAL) {
            Ok(raw) => Some(raw),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let is_stopping = stopping.load(Ordering::SeqCst);
        if is_stopping {
            return;
        }
        match raw {
            Some(raw) => {
                tracing::debug!(?raw, "libvirt event");
                if let Some(event) = interpret(raw, is_stopping, &domain_name) {
                    tracing::info!(?event, "domain ended");
                    events.send(event);
                    return;
                }
            }
            None => {
                if vanish.record(poll(&dom), Instant::now()) {
                    let reason = format!(
                        "the domain {domain_name} stopped or vanished without a libvirt event; \
                         see /var/log/libvirt/qemu/{domain_name}.log"
                    );
                    tracing::error!(%reason, "domain lost");
                    events.send(VmEvent::VcpuFailed {
                        vcpu: ANY_VCPU,
                        reason,
                    });
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lifecycle(event: u32, detail: u32) -> RawEvent {
        RawEvent::Lifecycle {
            event: event as i32,
            detail: detail as i32,
        }
    }

    #[test]
    fn poweroff_reboot_and_crash_map_to_their_events() {
        let d = "ironvisor-vm";
        assert_eq!(
            interpret(
                lifecycle(
                    sys::VIR_DOMAIN_EVENT_STOPPED,
                    sys::VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN
                ),
                false,
                d
            ),
            Some(VmEvent::GuestPoweroff)
        );
        assert_eq!(
            interpret(RawEvent::Reboot, false, d),
            Some(VmEvent::GuestReboot)
        );
        for (event, detail, needle) in [
            (
                sys::VIR_DOMAIN_EVENT_STOPPED,
                sys::VIR_DOMAIN_EVENT_STOPPED_CRASHED,
                "crashed",
            ),
            (
                sys::VIR_DOMAIN_EVENT_STOPPED,
                sys::VIR_DOMAIN_EVENT_STOPPED_FAILED,
                "ironvisor-vm.log",
            ),
            (
                sys::VIR_DOMAIN_EVENT_STOPPED,
                sys::VIR_DOMAIN_EVENT_STOPPED_SAVED,
                "detail 4",
            ),
            (
                sys::VIR_DOMAIN_EVENT_CRASHED,
                sys::VIR_DOMAIN_EVENT_CRASHED_PANICKED,
                "panicked",
            ),
        ] {
            match interpret(lifecycle(event, detail), false, d) {
                Some(VmEvent::VcpuFailed { vcpu: 0, reason }) => {
                    assert!(reason.contains(needle), "{reason}")
                }
                other => panic!("{event}/{detail}: {other:?}"),
            }
        }
    }

    #[test]
    fn outside_destroy_is_a_hard_stop_and_connection_loss_a_failure() {
        assert_eq!(
            interpret(
                lifecycle(
                    sys::VIR_DOMAIN_EVENT_STOPPED,
                    sys::VIR_DOMAIN_EVENT_STOPPED_DESTROYED
                ),
                false,
                "d"
            ),
            Some(VmEvent::ShutdownRequested(ShutdownMode::Forced))
        );
        match interpret(RawEvent::ConnectionClosed { reason: 2 }, false, "d") {
            Some(VmEvent::VcpuFailed { reason, .. }) => {
                assert!(reason.contains("keepalive"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn non_terminal_events_and_anything_while_stopping_are_ignored() {
        for (event, detail) in [
            (sys::VIR_DOMAIN_EVENT_STARTED, 0),
            (sys::VIR_DOMAIN_EVENT_SUSPENDED, 0),
            (sys::VIR_DOMAIN_EVENT_RESUMED, 0),
            (sys::VIR_DOMAIN_EVENT_SHUTDOWN, 1),
        ] {
            assert_eq!(interpret(lifecycle(event, detail), false, "d"), None);
        }
        assert_eq!(interpret(RawEvent::Reboot, true, "d"), None);
        assert_eq!(
            interpret(
                lifecycle(
                    sys::VIR_DOMAIN_EVENT_STOPPED,
                    sys::VIR_DOMAIN_EVENT_STOPPED_DESTROYED
                ),
                true,
                "d"
            ),
            None
        );
    }

    #[test]
    fn vanished_domain_is_reported_after_the_grace_period() {
        let mut tracker = VanishTracker::default();
        let t0 = Instant::now();
        assert!(!tracker.record(Poll::Alive, t0));
        assert!(!tracker.record(Poll::Gone, t0));
        assert!(!tracker.record(Poll::Unknown, t0 + EVENT_GRACE / 2));
        assert!(!tracker.record(Poll::Gone, t0 + EVENT_GRACE / 2));
        assert!(tracker.record(Poll::Gone, t0 + EVENT_GRACE));
        // Coming back resets the clock.
        assert!(!tracker.record(Poll::Alive, t0 + EVENT_GRACE * 2));
        assert!(!tracker.record(Poll::Gone, t0 + EVENT_GRACE * 2));
    }
}
