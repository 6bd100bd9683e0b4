//! Start-up phase lines a VMM writes on stderr (the launcher's `IRONVISOR_BOOT_TRACE`;
//! the line format and the clock are the launcher's own `boot_trace`).
//!
//! Each line is `IRONVISOR-BOOT-PHASE <phase> <CLOCK_MONOTONIC ns>`; with the same clock
//! read just before the spawn, each phase becomes milliseconds since the VMM was started.

use std::collections::BTreeMap;

pub use ironvisor_launcher::boot_trace::monotonic_ns;
use ironvisor_launcher::boot_trace::LINE_PREFIX;

/// `(phase, ns)` of a phase line, `None` for any other line.
pub fn parse_line(line: &str) -> Option<(String, u64)> {
    let rest = line
        .trim_end()
        .strip_prefix(LINE_PREFIX)?
        .strip_prefix(' ')?;
    let (phase, ns) = rest.split_once(' ')?;
    Some((phase.to_string(), ns.trim().parse().ok()?))
}

/// Milliseconds from `spawn_ns` to each phase (the first line of a phase counts).
pub fn relative_ms(spawn_ns: u64, lines: &[(String, u64)]) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (phase, ns) in lines {
        out.entry(phase.clone())
            .or_insert_with(|| ns.saturating_sub(spawn_ns) as f64 / 1e6);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_lines_parse_and_others_do_not() {
        assert_eq!(
            parse_line("IRONVISOR-BOOT-PHASE kernel_loaded 123456\n"),
            Some(("kernel_loaded".into(), 123456))
        );
        assert_eq!(parse_line("IRONVISOR-BOOT-PHASE kernel_loaded soon"), None);
        assert_eq!(parse_line("WARN something IRONVISOR-BOOT-PHASE x 1"), None);
        // What the launcher writes is what is read here.
        let written = ironvisor_launcher::boot_trace::line("first_kvm_run", 77);
        assert_eq!(parse_line(&written), Some(("first_kvm_run".into(), 77)));
    }

    #[test]
    fn phases_are_relative_to_the_spawn_and_the_first_one_wins() {
        let lines = vec![
            ("main".to_string(), 3_500_000),
            ("first_kvm_run".to_string(), 11_000_000),
            ("main".to_string(), 9_000_000),
        ];
        let ms = relative_ms(1_000_000, &lines);
        assert_eq!(ms["main"], 2.5);
        assert_eq!(ms["first_kvm_run"], 10.0);
        assert!(monotonic_ns() > 0);
    }
}
