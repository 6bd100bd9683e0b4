//! `spec.domain.clock`: one of `utc` and `timezone`, a time zone that exists, and timers
//! only as the microVM has them (kvmclock, the PIT and the CMOS RTC always present; no
//! HPET and no Hyper-V timer; no missed-tick policies).

use super::{FieldPath, ValidationError};
use crate::clock::timezone_offset_seconds;
use crate::v1alpha1::{Clock, TimerSettings};

/// Checks `clock` (at `path`).
pub(super) fn check(clock: &Clock, path: &FieldPath, errors: &mut Vec<ValidationError>) {
    if clock.utc.is_some() && clock.timezone.is_some() {
        errors.push(ValidationError::ClockOffsetConflict {
            path: path.clone().into(),
        });
    }
    if let Some(name) = clock.timezone.as_deref() {
        // The offset at the epoch: only whether the zone resolves matters here.
        if let Err(error) = timezone_offset_seconds(name, 0) {
            errors.push(ValidationError::InvalidTimezone {
                path: path.child("timezone").into(),
                reason: error.to_string(),
            });
        }
    }
    let Some(timer) = &clock.timer else {
        return;
    };
    let timers = path.child("timer");
    let absent_only = [
        ("hpet", &timer.hpet, "the microVM has no HPET"),
        (
            "hyperv",
            &timer.hyperv,
            "the microVM has no Hyper-V reference time counter",
        ),
    ];
    for (name, settings, reason) in absent_only {
        if let Some(settings) = settings {
            if settings.is_present() {
                errors.push(ValidationError::TimerNotServed {
                    path: timers.child(name).child("present").into(),
                    reason: format!("{reason}; set present: false or leave the timer out"),
                });
            }
            policies(settings, &timers.child(name), errors);
        }
    }
    let always_present = [
        ("kvm", &timer.kvm),
        ("pit", &timer.pit),
        ("rtc", &timer.rtc),
    ];
    for (name, settings) in always_present {
        if let Some(settings) = settings {
            if !settings.is_present() {
                errors.push(ValidationError::TimerNotServed {
                    path: timers.child(name).child("present").into(),
                    reason: format!(
                        "the microVM always gives the guest its {name} timer; remove present: \
                         false"
                    ),
                });
            }
            policies(settings, &timers.child(name), errors);
        }
    }
}

/// `tickPolicy` and `track`, which the microVM's timers have no choice of.
fn policies(settings: &TimerSettings, path: &FieldPath, errors: &mut Vec<ValidationError>) {
    if let Some(policy) = &settings.tick_policy {
        errors.push(ValidationError::TimerNotServed {
            path: path.child("tickPolicy").into(),
            reason: format!(
                "tick policy {policy:?} is not served: KVM's timers deliver missed ticks their \
                 own way; leave tickPolicy out"
            ),
        });
    }
    if let Some(track) = &settings.track {
        errors.push(ValidationError::TimerNotServed {
            path: path.child("track").into(),
            reason: format!(
                "track {track:?} is not served: the RTC follows the host's clock; leave track \
                 out"
            ),
        });
    }
}
