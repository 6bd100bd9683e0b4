//! `spec.domain.clock`, as KubeVirt writes it: where the guest's real-time clock stands
//! (UTC with an optional offset, or a time zone's local time) and per-timer settings.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The guest's clock. At most one of `utc` and `timezone`; neither means UTC.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Clock {
    /// The RTC keeps UTC, shifted by `offsetSeconds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utc: Option<ClockOffsetUtc>,
    /// The RTC keeps the local time of this IANA time zone ("Europe/Berlin"), at the
    /// zone's offset when the VM starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// Per-timer settings. The microVM's timers are fixed (kvmclock, the local APIC timer,
    /// KVM's PIT and the CMOS RTC; no HPET, no Hyper-V timer): only `present` values that
    /// match them are accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timer: Option<Timer>,
}

/// A UTC clock.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClockOffsetUtc {
    /// Seconds the RTC runs ahead of UTC (negative: behind).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset_seconds: Option<i64>,
}

/// KubeVirt's timers.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Timer {
    /// The HPET (the microVM has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hpet: Option<TimerSettings>,
    /// kvmclock (always present).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kvm: Option<TimerSettings>,
    /// The i8254 PIT (always present, in KVM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pit: Option<TimerSettings>,
    /// The CMOS RTC (always present).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtc: Option<TimerSettings>,
    /// The Hyper-V reference time counter (the microVM has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hyperv: Option<TimerSettings>,
}

/// One timer's settings.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TimerSettings {
    /// Whether the guest has the timer (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
    /// What to do with missed ticks (delay, catchup, merge, discard): not served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tick_policy: Option<String>,
    /// What the RTC tracks (guest, wall): not served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track: Option<String>,
}

impl TimerSettings {
    /// KubeVirt's reading: present unless `present: false`.
    pub fn is_present(&self) -> bool {
        self.present != Some(false)
    }
}
