//! When a VMM's guest first ran, from KVM's `kvm_entry` tracepoint: the same measure for
//! every VMM, whatever it reports about itself.
//!
//! Before the spawn the trace buffer is cleared, its clock set to `mono` (the
//! `CLOCK_MONOTONIC` the spawn time is read with) and overwriting switched off, so the
//! buffer keeps the earliest events when it fills; then `kvm:kvm_entry` is enabled. After
//! the marker, the first `kvm_entry` line's timestamp is the moment a vCPU first entered
//! the guest. Splitting spawn → marker at that moment separates the VMM's start-up (its
//! own code) from the guest's boot (the guest's code plus the VMM's device models).
//!
//! Only one VM runs at a time in the benchmark's L1, so the first entry after the clear
//! is this VMM's. The tracepoint costs about a microsecond per guest entry.

use std::path::{Path, PathBuf};

/// The tracepoint used.
const EVENT: &str = "events/kvm/kvm_entry/enable";

/// Why the trace could not be armed or read.
#[derive(Debug, thiserror::Error)]
pub enum GuestEntryError {
    /// A tracefs control file could not be written.
    #[error("cannot write {value:?} to {path}: {source}")]
    Write {
        path: PathBuf,
        value: String,
        source: std::io::Error,
    },
    /// The trace could not be read.
    #[error("cannot read the trace {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// An armed trace of guest entries (disarmed on drop).
#[derive(Debug)]
pub struct EntryTrace {
    tracefs: PathBuf,
}

impl EntryTrace {
    /// Clears the trace and starts recording guest entries; `None` when `tracefs` has no
    /// `kvm_entry` event (not mounted, or no KVM in this kernel).
    pub fn arm(tracefs: &Path) -> Result<Option<EntryTrace>, GuestEntryError> {
        if !tracefs.join(EVENT).exists() {
            return Ok(None);
        }
        let trace = EntryTrace {
            tracefs: tracefs.to_path_buf(),
        };
        trace.write("tracing_on", "0")?;
        trace.write("trace", "")?;
        trace.write("trace_clock", "mono")?;
        trace.write("options/overwrite", "0")?;
        trace.write(EVENT, "1")?;
        trace.write("tracing_on", "1")?;
        Ok(Some(trace))
    }

    /// `CLOCK_MONOTONIC` ns of the first guest entry recorded since [`EntryTrace::arm`].
    pub fn first_entry_ns(&self) -> Result<Option<u64>, GuestEntryError> {
        let path = self.tracefs.join("trace");
        let text = std::fs::read_to_string(&path)
            .map_err(|source| GuestEntryError::Read { path, source })?;
        Ok(text.lines().find_map(entry_timestamp_ns))
    }

    fn write(&self, file: &str, value: &str) -> Result<(), GuestEntryError> {
        let path = self.tracefs.join(file);
        std::fs::write(&path, value).map_err(|source| GuestEntryError::Write {
            path,
            value: value.to_string(),
            source,
        })
    }
}

impl Drop for EntryTrace {
    fn drop(&mut self) {
        // Best effort: leave the event off and the buffer overwriting, as tracefs starts.
        let _ = self.write(EVENT, "0");
        let _ = self.write("options/overwrite", "1");
    }
}

/// The timestamp of a `kvm_entry` trace line in ns, `None` for any other line.
///
/// A line reads `<task>-<pid> [<cpu>] <flags> <seconds>.<micros>: kvm_entry: vcpu 0, ...`.
pub fn entry_timestamp_ns(line: &str) -> Option<u64> {
    let (before, _) = line.split_once(": kvm_entry:")?;
    let stamp = before.split_whitespace().last()?;
    let (secs, frac) = stamp.split_once('.')?;
    if frac.is_empty() || frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: u64 = secs.parse().ok()?;
    let frac_ns: u64 = format!("{frac:0<9}").parse().ok()?;
    secs.checked_mul(1_000_000_000)?.checked_add(frac_ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_lines_give_their_timestamp_and_other_lines_nothing() {
        let line =
            " ironvisor-laun-812     [001] d....  1234.567891: kvm_entry: vcpu 0, rip 0x1000000";
        assert_eq!(entry_timestamp_ns(line), Some(1_234_567_891_000));
        let ns = "  fc_vcpu 0-90 [000] .N...    17.000000123: kvm_entry: vcpu 0, rip 0xfff0";
        assert_eq!(entry_timestamp_ns(ns), Some(17_000_000_123));
        assert_eq!(entry_timestamp_ns("# tracer: nop"), None);
        assert_eq!(
            entry_timestamp_ns(" qemu-1 [000] ..... 5.000001: kvm_pio: pio_read at 0x70"),
            None
        );
        assert_eq!(
            entry_timestamp_ns(" x [0] . 5.abc: kvm_entry: vcpu 0"),
            None
        );
    }

    #[test]
    fn a_tracefs_without_the_event_is_not_armed() {
        let dir = tempfile::tempdir().unwrap();
        assert!(EntryTrace::arm(dir.path()).unwrap().is_none());
    }

    #[test]
    fn an_armed_trace_sets_its_controls_and_finds_the_first_entry() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("events/kvm/kvm_entry")).unwrap();
        std::fs::create_dir_all(dir.path().join("options")).unwrap();
        std::fs::write(dir.path().join(EVENT), "0").unwrap();
        let trace = EntryTrace::arm(dir.path()).unwrap().unwrap();
        let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap();
        assert_eq!(read("trace_clock"), "mono");
        assert_eq!(read("options/overwrite"), "0");
        assert_eq!(read(EVENT), "1");
        assert_eq!(read("tracing_on"), "1");
        std::fs::write(
            dir.path().join("trace"),
            "# tracer: nop\n v-1 [000] ..... 2.000500: kvm_entry: vcpu 0, rip 0x0\n \
             v-1 [000] ..... 2.000900: kvm_entry: vcpu 0, rip 0x1\n",
        )
        .unwrap();
        assert_eq!(trace.first_entry_ns().unwrap(), Some(2_000_500_000));
        drop(trace);
        assert_eq!(read(EVENT), "0");
        assert_eq!(read("options/overwrite"), "1");
    }
}
