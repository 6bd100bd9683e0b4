//! One measured VMM run: spawn, time the console marker, sample smaps, kill, reap.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde::Serialize;
use tracing::{info, info_span, warn};

use crate::guest_entry::{EntryTrace, GuestEntryError};
use crate::kvm_stats::{self, KvmStatsError};
use crate::phases;
use crate::smaps::{self, SmapsError};

/// How a run failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The VMM could not be started.
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    /// The VMM exited before printing the marker.
    #[error("{program} exited ({status}) before printing {marker:?}; stderr: {stderr}")]
    ExitedEarly {
        program: String,
        status: String,
        marker: String,
        stderr: String,
    },
    /// The marker did not appear in time.
    #[error("{marker:?} not seen within {timeout:?}; stderr: {stderr}")]
    Timeout {
        marker: String,
        timeout: Duration,
        stderr: String,
    },
    /// smaps could not be read at marker time.
    #[error("reading the memory map at marker time: {0}")]
    Smaps(#[from] SmapsError),
    /// KVM's counters could not be read at marker time.
    #[error("reading KVM's counters at marker time: {0}")]
    KvmStats(#[from] KvmStatsError),
    /// The guest-entry trace could not be armed or read.
    #[error("tracing guest entries: {0}")]
    GuestEntry(#[from] GuestEntryError),
    /// Reaping the killed VMM failed.
    #[error("wait4({pid}) failed: {source}")]
    Wait { pid: u32, source: std::io::Error },
    /// No command was given.
    #[error("no VMM command given")]
    EmptyCommand,
}

/// What to run and what to look for.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The VMM command line (program first).
    pub command: Vec<String>,
    /// Console text that marks "guest init reached".
    pub marker: String,
    /// Guest memory size, to recognise the guest-RAM mapping.
    pub guest_mem_mib: u64,
    /// Limit for reaching the marker.
    pub timeout: Duration,
    /// KVM's debugfs directory (`/sys/kernel/debug/kvm`); no counters when it is absent.
    pub kvm_debugfs: PathBuf,
    /// tracefs (`/sys/kernel/tracing`), for the first guest entry; none when it lacks
    /// KVM's `kvm_entry` event.
    pub tracefs: PathBuf,
    /// How long the VMM may take to exit by itself after the marker (the bench guest
    /// powers off right after it) before it is killed.
    pub exit_grace: Duration,
}

/// The numbers of one successful run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Measurement {
    /// Milliseconds from just before spawning to reading the marker.
    pub marker_ms: f64,
    /// Total Rss at marker time, KiB.
    pub rss_kib: u64,
    /// Rss of the guest-RAM mapping at marker time, KiB.
    pub guest_ram_rss_kib: u64,
    /// Size of the mapping taken for guest RAM, KiB (see [`smaps::memory_use`]).
    pub guest_mapping_kib: u64,
    /// Rss minus guest-RAM Rss, KiB.
    pub overhead_kib: u64,
    /// `overhead_kib` by kind (see [`smaps::overhead_breakdown`]), KiB.
    pub overhead_by_kind_kib: BTreeMap<String, u64>,
    /// `ru_maxrss` from wait4 after the VMM ended, KiB.
    pub maxrss_kib: u64,
    /// The VMM did not exit by itself within the grace period and was killed.
    pub killed: bool,
    /// KVM's counters for the VM at marker time (see [`kvm_stats::COUNTERS`]), when
    /// debugfs is mounted.
    pub kvm: Option<BTreeMap<String, u64>>,
    /// Milliseconds from the spawn to each start-up phase the VMM reported on stderr.
    pub phases_ms: BTreeMap<String, f64>,
    /// Milliseconds from the spawn to the first entry into the guest (KVM's `kvm_entry`
    /// tracepoint), when tracefs has it: the VMM's start-up, measured alike for every VMM.
    pub first_guest_entry_ms: Option<f64>,
}

enum Event {
    Stdout(Vec<u8>),
    Eof,
}

/// Finds `marker` in a stream that arrives in chunks (it may straddle two of them).
#[derive(Debug)]
pub struct MarkerScanner {
    marker: Vec<u8>,
    tail: Vec<u8>,
}

impl MarkerScanner {
    /// A scanner for `marker` (non-empty).
    pub fn new(marker: &str) -> Self {
        Self {
            marker: marker.as_bytes().to_vec(),
            tail: Vec::new(),
        }
    }

    /// Feeds the next chunk; true once the marker has been seen.
    pub fn feed(&mut self, chunk: &[u8]) -> bool {
        self.tail.extend_from_slice(chunk);
        let found = self
            .tail
            .windows(self.marker.len().max(1))
            .any(|w| w == self.marker.as_slice());
        let keep = self.marker.len().saturating_sub(1);
        if self.tail.len() > keep {
            self.tail.drain(..self.tail.len() - keep);
        }
        found
    }
}

/// What a VMM wrote on stderr: its last bytes (for error messages) and its phase lines.
#[derive(Debug, Default)]
struct Stderr {
    tail: Vec<u8>,
    phases: Vec<(String, u64)>,
}

impl Stderr {
    /// Takes one complete line: a phase line is recorded, anything else kept in the tail.
    fn take_line(&mut self, line: &[u8], limit: usize) {
        if let Some(phase) = std::str::from_utf8(line).ok().and_then(phases::parse_line) {
            self.phases.push(phase);
            return;
        }
        self.tail.extend_from_slice(line);
        if self.tail.len() > limit {
            self.tail.drain(..self.tail.len() - limit);
        }
    }
}

/// Reads `reader` to its end, line by line (lines longer than `limit` are cut), and sends
/// what it collected.
fn spawn_stderr_collector<R: Read + Send + 'static>(
    mut reader: R,
    limit: usize,
) -> mpsc::Receiver<Stderr> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut out = Stderr::default();
        let mut line = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            for &b in &buf[..n] {
                line.push(b);
                if b == b'\n' || line.len() >= limit {
                    out.take_line(&line, limit);
                    line.clear();
                }
            }
        }
        out.take_line(&line, limit);
        let _ = tx.send(out);
    });
    rx
}

/// What the collector gathered; empty when the stream does not end soon after the VMM was
/// reaped (a grandchild the VMM left behind still holds it open).
fn collected(rx: Option<mpsc::Receiver<Stderr>>) -> Stderr {
    rx.and_then(|rx| rx.recv_timeout(Duration::from_secs(2)).ok())
        .unwrap_or_default()
}

fn text_of(rx: Option<mpsc::Receiver<Stderr>>) -> String {
    String::from_utf8_lossy(&collected(rx).tail)
        .trim()
        .to_string()
}

/// One `wait4` on `pid` (`flags` 0 or `WNOHANG`): `Some((ru_maxrss KiB, status))` once it
/// was reaped, `None` while it still runs (WNOHANG).
fn wait_for(pid: u32, flags: libc::c_int) -> Result<Option<(u64, i32)>, RunError> {
    let raw_pid = pid as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: both pointers are to live, writable locals of the right types.
        let rc = unsafe { libc::wait4(raw_pid, &mut status, flags, &mut usage) };
        if rc == raw_pid {
            return Ok(Some((u64::try_from(usage.ru_maxrss).unwrap_or(0), status)));
        }
        if rc == 0 {
            return Ok(None);
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(RunError::Wait { pid, source: err });
        }
    }
}

/// Kills and reaps `pid`, returning ru_maxrss in KiB and the wait status.
fn kill_and_reap(pid: u32) -> Result<(u64, i32), RunError> {
    // SAFETY: sending a signal to our own child, which we have not reaped yet, so the pid
    // cannot have been reused.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
    wait_for(pid, 0)?.ok_or(RunError::Wait {
        pid,
        source: std::io::Error::other("wait4 returned without the child"),
    })
}

/// Lets `pid` exit by itself within `grace`, else kills it; reaps it either way and says
/// whether it had to be killed.
///
/// Killing a VMM whose vCPU is inside the guest is rarer than a guest powering off and
/// is what once in a while froze a nested L1 for good (the next VM never started), so a
/// VMM whose guest shuts down is left to end on its own.
fn reap_within(pid: u32, grace: Duration) -> Result<(u64, bool), RunError> {
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Some((maxrss_kib, _)) = wait_for(pid, libc::WNOHANG)? {
            return Ok((maxrss_kib, false));
        }
        thread::sleep(Duration::from_millis(5));
    }
    Ok((kill_and_reap(pid)?.0, true))
}

/// Runs the VMM once and measures it.
pub fn run_once(cfg: &RunConfig) -> Result<Measurement, RunError> {
    let (program, args) = cfg.command.split_first().ok_or(RunError::EmptyCommand)?;
    let span = info_span!("run", program = %program);
    let _guard = span.enter();
    let entry_trace = EntryTrace::arm(&cfg.tracefs)?;
    let spawn_ns = phases::monotonic_ns();
    let started = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| RunError::Spawn {
            program: program.clone(),
            source,
        })?;
    let pid = child.id();
    let stderr = child.stderr.take().map(|e| spawn_stderr_collector(e, 2048));
    let (tx, rx) = mpsc::channel();
    if let Some(mut stdout) = child.stdout.take() {
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match stdout.read(&mut buf) {
                    Ok(0) | Err(_) => {
                        let _ = tx.send(Event::Eof);
                        break;
                    }
                    Ok(n) => {
                        if tx.send(Event::Stdout(buf[..n].to_vec())).is_err() {
                            break;
                        }
                    }
                }
            }
        });
    }
    let mut scanner = MarkerScanner::new(&cfg.marker);
    let deadline = started + cfg.timeout;
    let outcome = loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(remaining) {
            Ok(Event::Stdout(chunk)) => {
                if scanner.feed(&chunk) {
                    let marker_ms = started.elapsed().as_secs_f64() * 1000.0;
                    // Sample the memory map before anything else can change it.
                    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
                    let usage = smaps::read(pid).and_then(|maps| {
                        let usage = smaps::memory_use(&maps, cfg.guest_mem_mib * 1024)?;
                        let exe = exe.to_string_lossy();
                        Ok((usage, smaps::overhead_breakdown(&maps, &exe, &usage)))
                    });
                    let kvm =
                        kvm_stats::read_for_threads(&cfg.kvm_debugfs, &kvm_stats::threads_of(pid));
                    break Ok((marker_ms, usage, kvm));
                }
            }
            Ok(Event::Eof) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                let (_, status) = kill_and_reap(pid)?;
                let status = std::process::ExitStatus::from_raw(status);
                return Err(RunError::ExitedEarly {
                    program: program.clone(),
                    status: status.to_string(),
                    marker: cfg.marker.clone(),
                    stderr: text_of(stderr),
                });
            }
            Err(mpsc::RecvTimeoutError::Timeout) => break Err(()),
        }
    };
    let (maxrss_kib, killed) = match outcome {
        Ok(_) => reap_within(pid, cfg.exit_grace)?,
        Err(()) => (kill_and_reap(pid)?.0, true),
    };
    drop(child);
    match outcome {
        Ok((marker_ms, usage, kvm)) => {
            let (usage, overhead_by_kind_kib) = usage?;
            let kvm = kvm?;
            let first_guest_entry_ms = match &entry_trace {
                Some(trace) => trace
                    .first_entry_ns()?
                    .map(|ns| ns.saturating_sub(spawn_ns) as f64 / 1e6),
                None => None,
            };
            let phases_ms = phases::relative_ms(spawn_ns, &collected(stderr).phases);
            let m = Measurement {
                marker_ms,
                rss_kib: usage.total_rss_kib,
                guest_ram_rss_kib: usage.guest_rss_kib,
                guest_mapping_kib: usage.guest_size_kib,
                overhead_kib: usage.overhead_kib(),
                overhead_by_kind_kib,
                maxrss_kib,
                killed,
                kvm,
                phases_ms,
                first_guest_entry_ms,
            };
            info!(?m, "measured");
            Ok(m)
        }
        Err(()) => {
            warn!("marker timeout");
            Err(RunError::Timeout {
                marker: cfg.marker.clone(),
                timeout: cfg.timeout,
                stderr: text_of(stderr),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(script: &str, timeout_ms: u64) -> RunConfig {
        RunConfig {
            command: vec!["sh".into(), "-c".into(), script.into()],
            marker: "MARK-REACHED".into(),
            // No mapping of sh is anywhere near 1 TiB.
            guest_mem_mib: 1 << 20,
            timeout: Duration::from_millis(timeout_ms),
            kvm_debugfs: PathBuf::from("/nonexistent/kvm"),
            tracefs: PathBuf::from("/nonexistent/tracefs"),
            exit_grace: Duration::from_millis(300),
        }
    }

    #[test]
    fn scanner_finds_a_marker_split_across_chunks() {
        let mut s = MarkerScanner::new("MARK-REACHED");
        assert!(!s.feed(b"boot noise MARK-"));
        assert!(s.feed(b"REACHED\n"));
        let mut s = MarkerScanner::new("MARK");
        assert!(!s.feed(b"MA"));
        assert!(!s.feed(b"xRK"));
        assert!(s.feed(b"..MARK"));
    }

    #[test]
    fn marker_is_timed_and_the_process_is_killed() {
        // sh has no guest-RAM-sized mapping: the smaps error is reported,
        // after the process was killed and reaped.
        let started = Instant::now();
        let err =
            run_once(&cfg("sleep 0.2; echo MARK-REACHED; exec sleep 30", 10_000)).unwrap_err();
        assert!(
            matches!(err, RunError::Smaps(SmapsError::NoGuestMapping { .. })),
            "{err}"
        );
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn guest_mapping_rss_is_separated_from_overhead() {
        // A stand-in "VMM": 8 MiB of private anonymous "guest RAM", 2 MiB of it touched.
        let script = "import mmap, sys, time\n\
                      m = mmap.mmap(-1, 8 << 20, flags=mmap.MAP_PRIVATE)\n\
                      m.write(b'x' * (2 << 20))\n\
                      print('IRONVISOR-BOOT-PHASE mapped', time.monotonic_ns(), file=sys.stderr)\n\
                      print('chatter', file=sys.stderr, flush=True)\n\
                      print('MARK-REACHED', flush=True)\n\
                      time.sleep(30)\n";
        let c = RunConfig {
            command: vec!["python3".into(), "-c".into(), script.into()],
            marker: "MARK-REACHED".into(),
            guest_mem_mib: 8,
            timeout: Duration::from_secs(30),
            kvm_debugfs: PathBuf::from("/nonexistent/kvm"),
            tracefs: PathBuf::from("/nonexistent/tracefs"),
            exit_grace: Duration::from_millis(300),
        };
        let m = run_once(&c).unwrap();
        assert!(m.marker_ms > 0.0 && m.marker_ms < 30_000.0, "{m:?}");
        assert!((2048..=2048 + 64).contains(&m.guest_ram_rss_kib), "{m:?}");
        assert_eq!(m.overhead_kib, m.rss_kib - m.guest_ram_rss_kib);
        assert_eq!(m.guest_mapping_kib, 8 * 1024);
        assert!(m.overhead_kib > 1024, "python itself is resident: {m:?}");
        assert!(m.maxrss_kib >= m.rss_kib, "{m:?}");
        let mapped = m.phases_ms["mapped"];
        assert!(mapped > 0.0 && mapped < m.marker_ms, "{m:?}");
        assert_eq!(m.phases_ms.len(), 1, "{m:?}");
        assert!(m.kvm.is_none(), "{m:?}");
        assert!(m.first_guest_entry_ms.is_none(), "{m:?}");
        assert!(m.killed, "it sleeps past the grace period: {m:?}");
        // The same stand-in ending by itself right after the marker is not killed.
        let mut c = c;
        c.command[2] = c.command[2].replace("time.sleep(30)", "time.sleep(0.05)");
        let m = run_once(&c).unwrap();
        assert!(!m.killed, "{m:?}");
    }

    #[test]
    fn early_exit_is_reported_with_stderr() {
        let err = run_once(&cfg("echo boom >&2; exit 3", 10_000)).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, RunError::ExitedEarly { .. }), "{text}");
        assert!(
            text.contains("boom") && text.contains("exit status: 3"),
            "{text}"
        );
    }

    #[test]
    fn timeout_is_reported() {
        let err = run_once(&cfg("echo nothing; exec sleep 30", 300)).unwrap_err();
        assert!(matches!(err, RunError::Timeout { .. }), "{err}");
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let mut c = cfg("", 100);
        c.command = vec!["/nonexistent/vmm".into()];
        assert!(matches!(run_once(&c), Err(RunError::Spawn { .. })));
        c.command.clear();
        assert!(matches!(run_once(&c), Err(RunError::EmptyCommand)));
    }
}
