//! Boot-phase timestamps for the boot benchmark.
//!
//! With `IRONVISOR_BOOT_TRACE=1` in its environment the launcher writes one stderr line per
//! phase of its start-up, `IRONVISOR-BOOT-PHASE <phase> <CLOCK_MONOTONIC ns>`, so a
//! benchmark that noted the same clock when it spawned the launcher can tell where the time
//! before the guest's first instruction went. Without the variable nothing is written.

use std::io::Write;
use std::sync::OnceLock;

/// The environment variable that turns the trace on.
pub const ENV: &str = "IRONVISOR_BOOT_TRACE";
/// The prefix of every trace line.
pub const LINE_PREFIX: &str = "IRONVISOR-BOOT-PHASE";

fn enabled() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var_os(ENV).is_some_and(|v| v == "1"))
}

/// CLOCK_MONOTONIC in nanoseconds (a vDSO call: no system call, allowed in every thread).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a live, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
    }
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// The trace line for `phase` at `ns`.
pub fn line(phase: &str, ns: u64) -> String {
    format!("{LINE_PREFIX} {phase} {ns}\n")
}

/// Records that start-up reached `phase` (only when the trace is on).
pub fn mark(phase: &str) {
    if enabled() {
        // One write per line so lines from different threads do not interleave.
        let _ = std::io::stderr().write_all(line(phase, monotonic_ns()).as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_carry_the_phase_and_the_time() {
        assert_eq!(
            line("first_kvm_run", 42),
            "IRONVISOR-BOOT-PHASE first_kvm_run 42\n"
        );
    }

    #[test]
    fn the_clock_moves_forward() {
        let a = monotonic_ns();
        let b = monotonic_ns();
        assert!(a > 0 && b >= a);
    }
}
