//! `pause`: PID 1 of a pod sandbox. It holds the pod's namespaces open, reaps every
//! orphan re-parented to it, and exits 0 on SIGTERM or SIGINT (the kubelet stops a
//! sandbox with SIGTERM). Built static for the pause image (images/containers.py).

use std::process::ExitCode;

use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

fn main() -> ExitCode {
    let mut signals = SigSet::empty();
    for signal in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGCHLD] {
        signals.add(signal);
    }
    // Block the signals so that they are only ever taken by sigwait below.
    if let Err(error) = signals.thread_block() {
        eprintln!("pause: cannot block signals: {error}");
        return ExitCode::FAILURE;
    }
    loop {
        match signals.wait() {
            Ok(Signal::SIGCHLD) => reap(),
            Ok(_) => return ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("pause: sigwait: {error}");
                return ExitCode::FAILURE;
            }
        }
    }
}

/// Collects every child that has ended.
fn reap() {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => continue,
        }
    }
}
