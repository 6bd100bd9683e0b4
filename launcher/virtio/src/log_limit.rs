//! Rate limits for log lines a guest can trigger at will (odd-width register accesses,
//! unknown registers, malformed requests, tiny receive buffers).
//!
//! Each device owns a [`LogLimiter`]; every cause gets [`BURST`] lines per [`WINDOW`], the
//! rest are counted and the count is reported on the cause's first line of a later window.
//! A guest looping on a bad access therefore costs the node a few lines a minute instead of
//! a disk filled with log.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines logged per cause and window.
pub const BURST: u32 = 5;
/// Length of a window.
pub const WINDOW: Duration = Duration::from_secs(60);

/// The log budget of one device, per cause.
#[derive(Debug, Default)]
pub struct LogLimiter {
    causes: Mutex<HashMap<&'static str, Window>>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    logged: u32,
    suppressed: u64,
}

impl LogLimiter {
    /// Whether a line for `cause` may be logged now; `Some(n)` carries the lines of this
    /// cause suppressed since the last one logged.
    pub fn admit(&self, cause: &'static str) -> Option<u64> {
        self.admit_at(cause, Instant::now())
    }

    fn admit_at(&self, cause: &'static str, now: Instant) -> Option<u64> {
        let mut causes = match self.causes.lock() {
            Ok(causes) => causes,
            Err(poisoned) => poisoned.into_inner(),
        };
        let window = causes.entry(cause).or_insert(Window {
            start: now,
            logged: 0,
            suppressed: 0,
        });
        if now.saturating_duration_since(window.start) >= WINDOW {
            window.start = now;
            window.logged = 0;
        }
        if window.logged < BURST {
            window.logged += 1;
            Some(std::mem::take(&mut window.suppressed))
        } else {
            window.suppressed += 1;
            None
        }
    }
}

/// `tracing::warn!` through a device's [`LogLimiter`]: the line carries `cause` and the
/// number of lines of that cause suppressed before it.
macro_rules! guest_warn {
    ($limiter:expr, $cause:literal, $($rest:tt)+) => {
        if let Some(suppressed) = $limiter.admit($cause) {
            tracing::warn!(cause = $cause, suppressed, $($rest)+);
        }
    };
}
pub(crate) use guest_warn;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_logs_a_burst_per_window_then_reports_what_it_suppressed() {
        let limiter = LogLimiter::default();
        let start = Instant::now();
        for _ in 0..BURST {
            assert_eq!(limiter.admit_at("odd-width", start), Some(0));
        }
        for _ in 0..1000 {
            assert_eq!(limiter.admit_at("odd-width", start), None);
        }
        // Another cause has its own budget.
        assert_eq!(limiter.admit_at("unknown-register", start), Some(0));
        let later = start + WINDOW;
        assert_eq!(limiter.admit_at("odd-width", later), Some(1000));
        assert_eq!(limiter.admit_at("odd-width", later), Some(0));
    }
}
