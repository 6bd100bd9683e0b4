//! `ironvisor-bootbench`: start a VMM, time its guest's "init reached" console line, and
//! measure its memory overhead; one JSON line per run on stdout.
//!
//! ```text
//! ironvisor-bootbench --label qemu --guest-mem-mib 256 [--runs N] -- qemu-system-x86_64 ...
//! ```
//!
//! Memory overhead is the process's total Rss minus the Rss of its guest-RAM mapping (the
//! anonymous mapping of exactly the guest memory size), read from /proc/PID/smaps the
//! moment the marker arrives; `maxrss_kib` is ru_maxrss from wait4 once the VMM ended (by
//! itself when its guest powers off soon after the marker, else killed: `killed`). At the
//! same moment KVM's exit counters for the VM are read from debugfs (`kvm`), and the
//! start-up phases the VMM wrote on stderr are turned into ms since the spawn (`phases_ms`),
//! and the moment the guest first ran is read from KVM's `kvm_entry` tracepoint
//! (`first_guest_entry_ms`, the same measure for every VMM).

mod guest_entry;
mod kvm_stats;
mod phases;
mod run;
mod smaps;

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use serde::Serialize;

use crate::run::{run_once, Measurement, RunConfig};

/// Command-line arguments.
#[derive(Debug, Parser)]
#[command(
    name = "ironvisor-bootbench",
    about = "Time a VMM's guest boot and its memory overhead"
)]
struct Args {
    /// Name of the VMM in the output.
    #[arg(long)]
    label: String,
    /// Guest memory size in MiB (identifies the guest-RAM mapping).
    #[arg(long)]
    guest_mem_mib: u64,
    /// Console text that marks "guest init reached".
    #[arg(long, default_value = "IRONVISOR-GUEST-INIT-REACHED")]
    marker: String,
    /// Number of runs.
    #[arg(long, default_value_t = 1)]
    runs: u32,
    /// Index printed for the first run (runs are numbered from here; warm-up and other
    /// unreported runs are numbered 0 and below).
    #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
    first_run: i64,
    /// Seconds to wait for the marker before killing the VMM.
    #[arg(long, default_value_t = 120)]
    timeout_s: u64,
    /// Milliseconds the VMM may take to exit by itself after the marker before it is
    /// killed (the bench guest powers off right after the marker).
    #[arg(long, default_value_t = 10_000)]
    exit_grace_ms: u64,
    /// KVM's debugfs directory, for the VM's exit counters (none when it does not exist).
    #[arg(long, default_value = "/sys/kernel/debug/kvm")]
    kvm_debugfs: std::path::PathBuf,
    /// tracefs, for the moment the guest first ran (KVM's `kvm_entry` tracepoint; not
    /// measured when the event is not there).
    #[arg(long, default_value = "/sys/kernel/tracing")]
    tracefs: std::path::PathBuf,
    /// The VMM command line.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

/// One output line.
#[derive(Debug, Serialize)]
struct Report<'a> {
    label: &'a str,
    run: i64,
    #[serde(flatten)]
    measurement: Option<Measurement>,
    error: Option<String>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let cfg = RunConfig {
        command: args.command.clone(),
        marker: args.marker.clone(),
        guest_mem_mib: args.guest_mem_mib,
        timeout: Duration::from_secs(args.timeout_s),
        kvm_debugfs: args.kvm_debugfs.clone(),
        tracefs: args.tracefs.clone(),
        exit_grace: Duration::from_millis(args.exit_grace_ms),
    };
    let mut failed = false;
    let stdout = std::io::stdout();
    for run in args.first_run..args.first_run.saturating_add(i64::from(args.runs)) {
        let (measurement, error) = match run_once(&cfg) {
            Ok(m) => (Some(m), None),
            Err(e) => {
                failed = true;
                (None, Some(e.to_string()))
            }
        };
        let report = Report {
            label: &args.label,
            run,
            measurement,
            error,
        };
        let line = match serde_json::to_string(&report) {
            Ok(line) => line,
            Err(e) => {
                eprintln!("ironvisor-bootbench: cannot encode the report: {e}");
                return ExitCode::FAILURE;
            }
        };
        let mut out = stdout.lock();
        if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
            return ExitCode::FAILURE;
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
