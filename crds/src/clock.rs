//! Where a VM's real-time clock starts: `spec.domain.clock` resolved to seconds ahead of
//! UTC at a given instant.
//!
//! `utc.offsetSeconds` is taken as written. A `timezone` is looked up in the host's
//! zoneinfo (`/usr/share/zoneinfo`) or, where there is none (a minimal container image), in
//! the IANA database bundled into the binary, and gives the zone's offset at the instant
//! the VM starts; like libvirt's `timezone` clock, the offset then stays fixed while the
//! VM runs (a daylight-saving change shows at the next start).

use crate::v1alpha1::Clock;

/// Longest time zone name accepted (the longest IANA names are about 30 bytes).
pub const MAX_TIMEZONE_BYTES: usize = 64;

/// Why a clock cannot be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClockError {
    /// The name cannot be an IANA time zone.
    #[error("{name:?} is not a time zone name: {reason}")]
    InvalidTimezoneName {
        /// The name as written.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// No time zone database knows the name.
    #[error(
        "unknown time zone {name:?}: not in the host's zoneinfo nor in the bundled IANA \
         database (names look like \"Europe/Berlin\" or \"America/New_York\")"
    )]
    UnknownTimezone {
        /// The name as written.
        name: String,
    },
}

/// Seconds the RTC of a VM with `clock` runs ahead of UTC when it starts at
/// `unix_seconds` (0 without a clock or with a plain UTC clock).
pub fn rtc_offset_seconds(clock: Option<&Clock>, unix_seconds: i64) -> Result<i64, ClockError> {
    let Some(clock) = clock else {
        return Ok(0);
    };
    if let Some(name) = clock.timezone.as_deref() {
        return timezone_offset_seconds(name, unix_seconds);
    }
    Ok(clock
        .utc
        .as_ref()
        .and_then(|utc| utc.offset_seconds)
        .unwrap_or(0))
}

/// The UTC offset of time zone `name` at `unix_seconds`.
pub fn timezone_offset_seconds(name: &str, unix_seconds: i64) -> Result<i64, ClockError> {
    check_timezone_name(name)?;
    let zone = jiff::tz::db()
        .get(name)
        .map_err(|_| ClockError::UnknownTimezone {
            name: name.to_string(),
        })?;
    let instant = jiff::Timestamp::from_second(unix_seconds).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    Ok(i64::from(zone.to_offset(instant).seconds()))
}

/// Checks that `name` has the shape of an IANA name: `/`-separated parts of letters,
/// digits, `_`, `-`, `+` and `.`, none of them `.` or `..`.
fn check_timezone_name(name: &str) -> Result<(), ClockError> {
    let invalid = |reason| ClockError::InvalidTimezoneName {
        name: name.to_string(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("it is empty"));
    }
    if name.len() > MAX_TIMEZONE_BYTES {
        return Err(invalid("it is longer than 64 bytes"));
    }
    for part in name.split('/') {
        if part.is_empty() || part == "." || part == ".." {
            return Err(invalid(
                "its parts are separated by single slashes and are neither . nor ..",
            ));
        }
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '+' | '.');
        if !part.chars().all(allowed) {
            return Err(invalid(
                "it may hold only letters, digits, '_', '-', '+', '.' and '/'",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1alpha1::ClockOffsetUtc;

    /// 2026-07-01T12:00:00Z (northern summer) and 2026-12-04T12:00:00Z (winter).
    const JULY: i64 = 1_782_907_200;
    const DECEMBER: i64 = 1_796_385_600;

    fn timezone(name: &str) -> Clock {
        Clock {
            timezone: Some(name.into()),
            ..Clock::default()
        }
    }

    #[test]
    fn no_clock_and_plain_utc_are_zero() {
        assert_eq!(rtc_offset_seconds(None, JULY), Ok(0));
        let utc = Clock {
            utc: Some(ClockOffsetUtc::default()),
            ..Clock::default()
        };
        assert_eq!(rtc_offset_seconds(Some(&utc), JULY), Ok(0));
    }

    #[test]
    fn utc_offset_seconds_are_taken_as_written() {
        let shifted = Clock {
            utc: Some(ClockOffsetUtc {
                offset_seconds: Some(-7200),
            }),
            ..Clock::default()
        };
        assert_eq!(rtc_offset_seconds(Some(&shifted), JULY), Ok(-7200));
    }

    #[test]
    fn a_timezone_gives_its_offset_at_the_instant() {
        let kolkata = timezone("Asia/Kolkata");
        assert_eq!(rtc_offset_seconds(Some(&kolkata), JULY), Ok(19_800));
        let berlin = timezone("Europe/Berlin");
        assert_eq!(rtc_offset_seconds(Some(&berlin), JULY), Ok(7200), "CEST");
        assert_eq!(rtc_offset_seconds(Some(&berlin), DECEMBER), Ok(3600), "CET");
        let new_york = timezone("America/New_York");
        assert_eq!(rtc_offset_seconds(Some(&new_york), DECEMBER), Ok(-18_000));
        assert_eq!(rtc_offset_seconds(Some(&timezone("UTC")), JULY), Ok(0));
    }

    #[test]
    fn unknown_and_malformed_names_are_refused() {
        let err = timezone_offset_seconds("Mars/Olympus_Mons", JULY).unwrap_err();
        assert!(matches!(err, ClockError::UnknownTimezone { .. }), "{err}");
        assert!(err.to_string().contains("\"Mars/Olympus_Mons\""), "{err}");
        for name in [
            "",
            "../etc/passwd",
            "/etc/localtime",
            "Europe//Berlin",
            "Europe/Ber lin",
        ] {
            let err = timezone_offset_seconds(name, JULY).unwrap_err();
            assert!(
                matches!(err, ClockError::InvalidTimezoneName { .. }),
                "{name:?}: {err}"
            );
        }
    }
}
