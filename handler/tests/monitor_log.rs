//! `ironvisor-handler monitor` as a real process: a launcher that floods its output does
//! not grow the log past its cap; one previous generation is kept and the exit status is
//! still recorded.

use std::process::Command;
use std::time::{Duration, Instant};

const HANDLER: &str = env!("CARGO_BIN_EXE_ironvisor-handler");

#[test]
fn a_flooding_launcher_gets_its_log_rotated_and_its_exit_recorded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("launcher.log");
    let status = dir.path().join("status.json");
    // 64 KiB of output against a 4 KiB cap, then the "launcher" lives long enough for
    // the monitor's next look at the log.
    let flood = "head -c 65536 /dev/zero | tr '\\0' x; sleep 5; echo done";
    let started = Instant::now();
    let exit = Command::new(HANDLER)
        .args(["monitor", "--status-file"])
        .arg(&status)
        .arg("--pid-file")
        .arg(dir.path().join("launcher.pid"))
        .arg("--log-file")
        .arg(&log)
        .args(["--log-max-bytes", "4096", "--", "/bin/sh", "-c", flood])
        .status()
        .expect("run the monitor");
    assert!(exit.success(), "monitor exit: {exit:?}");
    assert!(started.elapsed() >= Duration::from_secs(5));

    let previous = std::fs::read(dir.path().join("launcher.log.1")).expect("launcher.log.1");
    assert!(
        previous.len() >= 65536,
        "previous generation: {} bytes",
        previous.len()
    );
    let current = std::fs::read_to_string(&log).expect("launcher.log");
    assert!(
        current.len() < 4096,
        "log after rotation: {} bytes",
        current.len()
    );
    assert!(
        current.contains("earlier lines are in") && current.ends_with("done\n"),
        "log after rotation: {current:?}"
    );
    let recorded = std::fs::read_to_string(&status).expect("status file");
    assert_eq!(recorded.trim(), r#"{"code":0}"#);
}
