//! The launcher monitor: `ironvisor-handler monitor --status-file F -- <launcher argv>`,
//! a hidden subcommand of the node agent's own binary.
//!
//! The node agent starts one monitor per VM instance. The monitor
//!
//! 1. becomes a session leader (`setsid`), so the launcher keeps running when the agent
//!    dies or is restarted, and no terminal signal reaches it;
//! 2. moves itself into the VM's cgroups, so everything it starts belongs to the VM;
//! 3. joins the VM's network namespace (`setns`), where the launcher opens its tap;
//! 4. with `--jail PLAN`, builds the launcher's jail and starts it there as its own
//!    unprivileged user (see [`crate::jailer`]), so the launcher is never root;
//! 5. starts the launcher with stdin on `/dev/null` and stdout/stderr appended to the log
//!    file, and writes its pid and start time to the pid file;
//! 6. forwards SIGTERM and SIGINT to the launcher (a graceful stop);
//! 7. keeps the log under a size cap (see `log_rotation`), checked on a `SIGALRM` timer;
//! 8. when the launcher ends, removes the sockets a jailed one left, writes `{"code":N}`
//!    or `{"signal":N}` atomically to the status file, and exits with the same code
//!    (128 + N for a signal).
//!
//! The monitor runs no async runtime and creates no threads: it waits with `sigwait`, so
//! it cannot miss the launcher's exit.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use nix::sched::{setns, CloneFlags};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::unistd::Pid;

use crate::cgroup;
use crate::files::{read_json, write_atomic, FileError};
use crate::jailer::{self, JailBuildError, JailPlan};
use crate::log_rotation;
use crate::procfs;
use crate::records::{ExitOutcome, ProcessIdentity};

/// What the monitor needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitorArgs {
    /// Where to write how the launcher ended.
    pub status_file: PathBuf,
    /// Where to write the launcher's pid and start time.
    pub pid_file: PathBuf,
    /// The launcher's stdout/stderr (appended).
    pub log_file: PathBuf,
    /// The size past which the log is rotated.
    pub log_max_bytes: u64,
    /// The network namespace to run the launcher in.
    pub netns: Option<PathBuf>,
    /// The cgroups to join.
    pub cgroups: Vec<PathBuf>,
    /// The jail plan to start the launcher in (see [`crate::jailer`]); `None`: as is.
    pub jail: Option<PathBuf>,
    /// The launcher's command line.
    pub argv: Vec<OsString>,
}

/// Why the monitor could not do its job.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    /// No launcher command was given.
    #[error("monitor: no launcher command given after --")]
    NoCommand,
    /// The log file could not be opened.
    #[error("monitor: cannot open log file {path}: {source}")]
    Log {
        /// The log file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The launcher could not be started.
    #[error("monitor: cannot start launcher {program}: {source}")]
    Spawn {
        /// The launcher program.
        program: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Joining the cgroups failed.
    #[error("monitor: {0}")]
    Cgroup(#[from] cgroup::CgroupError),
    /// The network namespace could not be entered.
    #[error("monitor: cannot enter network namespace {path}: {reason}")]
    Netns {
        /// The namespace path.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// Signal handling could not be set up.
    #[error("monitor: cannot {action}: {source}")]
    Signals {
        /// What was attempted.
        action: &'static str,
        /// The OS error.
        #[source]
        source: nix::Error,
    },
    /// Waiting for the launcher failed.
    #[error("monitor: waiting for launcher pid {pid}: {source}")]
    Wait {
        /// The launcher's pid.
        pid: u32,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The status or pid file could not be written.
    #[error("monitor: {0}")]
    File(#[from] FileError),
    /// The jail plan is missing or unreadable.
    #[error("monitor: jail plan {path}: {reason}")]
    JailPlan {
        /// The plan file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The jail could not be built.
    #[error("monitor: {0}")]
    Jail(#[from] JailBuildError),
}

/// Runs the monitor; returns its exit code. Errors before the launcher was started are
/// also recorded in the log and as `{"code":1}` in the status file, so the node agent
/// sees a launcher error rather than a vanished launcher.
pub fn run(args: &MonitorArgs) -> Result<i32, MonitorError> {
    // Already a session leader when the agent made us one; anything else is fine too.
    let _ = nix::unistd::setsid();
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.log_file)
        .map_err(|source| MonitorError::Log {
            path: args.log_file.clone(),
            source,
        })?;
    match prepare_and_spawn(args, &log) {
        Ok((child, plan)) => supervise(args, child, plan.as_ref()),
        Err(error) => {
            let _ = writeln!(log, "ironvisor-handler {error}");
            write_outcome(args, ExitOutcome::Code(1))?;
            Err(error)
        }
    }
}

fn prepare_and_spawn(
    args: &MonitorArgs,
    log: &File,
) -> Result<(Child, Option<JailPlan>), MonitorError> {
    let program = args.argv.first().ok_or(MonitorError::NoCommand)?;
    cgroup::join(&args.cgroups, std::process::id())?;
    if let Some(path) = &args.netns {
        let fd = File::open(path).map_err(|e| MonitorError::Netns {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        setns(&fd, CloneFlags::CLONE_NEWNET).map_err(|e| MonitorError::Netns {
            path: path.clone(),
            reason: e.to_string(),
        })?;
    }
    // Blocked before the launcher exists so no SIGCHLD or SIGTERM is lost; the child
    // starts with an empty signal mask (the standard library resets it).
    monitor_signals()
        .thread_block()
        .map_err(|source| MonitorError::Signals {
            action: "block signals",
            source,
        })?;
    let stdout = log.try_clone().map_err(|source| MonitorError::Log {
        path: args.log_file.clone(),
        source,
    })?;
    let stderr = log.try_clone().map_err(|source| MonitorError::Log {
        path: args.log_file.clone(),
        source,
    })?;
    let mut command = Command::new(program);
    command
        .args(&args.argv[1..])
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr);
    let Some(plan_file) = &args.jail else {
        let child = command.spawn().map_err(|source| MonitorError::Spawn {
            program: PathBuf::from(program),
            source,
        })?;
        return Ok((child, None));
    };
    let plan = read_plan(plan_file)?;
    let jail = jailer::build::build(&plan)?;
    let (root, uid, gid) = (jail.root().to_path_buf(), plan.uid, plan.gid);
    // SAFETY: the closure runs in the forked child before exec; the monitor is
    // single-threaded, so no lock is held by a thread that does not exist in the child.
    // It makes mount and id system calls and writes one line to stderr (the log) on error.
    unsafe {
        command.pre_exec(move || {
            jailer::enter::enter(&root, uid, gid).map_err(|error| {
                let line = format!("ironvisor-handler monitor: {error}\n");
                let _ = nix::unistd::write(std::io::stderr(), line.as_bytes());
                io::Error::from(error)
            })
        });
    }
    let child = command.spawn().map_err(|source| MonitorError::Spawn {
        program: PathBuf::from(program),
        source,
    })?;
    let (bound, devices) = (jail.bound, jail.devices);
    let mut log = log;
    if let Err(error) = jail.release() {
        let _ = writeln!(log, "ironvisor-handler monitor: {error}");
    }
    let _ = writeln!(
        log,
        "ironvisor-handler monitor: launcher started jailed as uid {uid} gid {gid}, never root \
         ({bound} files and directories bound, {devices} device nodes)"
    );
    Ok((child, Some(plan)))
}

fn read_plan(path: &Path) -> Result<JailPlan, MonitorError> {
    let error = |reason: String| MonitorError::JailPlan {
        path: path.to_path_buf(),
        reason,
    };
    read_json::<JailPlan>(path)
        .map_err(|e| error(e.to_string()))?
        .ok_or_else(|| error("no such file".into()))
}

/// The signals a launcher's supervisor blocks and handles itself (SIGCHLD to reap, the
/// stop signals to forward); shared with the launcher pod's supervisor.
pub fn forwarded_signals() -> SigSet {
    let mut set = SigSet::empty();
    for signal in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        set.add(signal);
    }
    set
}

/// What the monitor waits for: the forwarded signals and its log-size timer.
fn monitor_signals() -> SigSet {
    let mut set = forwarded_signals();
    set.add(Signal::SIGALRM);
    set
}

fn supervise(
    args: &MonitorArgs,
    mut child: Child,
    jail: Option<&JailPlan>,
) -> Result<i32, MonitorError> {
    let pid = child.id();
    if let Ok(Some(identity)) = procfs::identify(pid as i32) {
        write_pid_file(args, &identity)?;
    }
    if let Err(err) = log_rotation::start_check_timer(log_rotation::CHECK_INTERVAL) {
        eprintln!("ironvisor-handler monitor: the log will not be rotated: {err}");
    }
    let signals = monitor_signals();
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .map_err(|source| MonitorError::Wait { pid, source })?
        {
            break status;
        }
        let signal = signals.wait().map_err(|source| MonitorError::Signals {
            action: "wait for signals",
            source,
        })?;
        match signal {
            // Graceful stop: the launcher asks the guest to shut down.
            Signal::SIGTERM | Signal::SIGINT => {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
            }
            Signal::SIGALRM => rotate_log(args),
            _ => {}
        }
    };
    if let Some(plan) = jail {
        jailer::build::empty_socket_dirs(plan);
    }
    let outcome = match (status.code(), status.signal()) {
        (Some(code), _) => ExitOutcome::Code(code),
        (None, Some(signal)) => ExitOutcome::Signal(signal),
        (None, None) => ExitOutcome::Vanished,
    };
    write_outcome(args, outcome)?;
    Ok(match outcome {
        ExitOutcome::Code(code) => code,
        ExitOutcome::Signal(signal) => 128 + signal,
        ExitOutcome::Vanished | ExitOutcome::NotStarted => 1,
    })
}

/// Rotates the log when it passed its cap; says so in the fresh log.
fn rotate_log(args: &MonitorArgs) {
    match log_rotation::rotate_if_larger(&args.log_file, args.log_max_bytes) {
        Ok(true) => {
            let note = format!(
                "ironvisor-handler monitor: log passed {} bytes; earlier lines are in {}\n",
                args.log_max_bytes,
                log_rotation::previous_generation(&args.log_file).display()
            );
            let written = OpenOptions::new()
                .append(true)
                .open(&args.log_file)
                .and_then(|mut log| log.write_all(note.as_bytes()));
            if let Err(err) = written {
                eprintln!("ironvisor-handler monitor: cannot note the rotation in the log: {err}");
            }
        }
        Ok(false) => {}
        Err(err) => eprintln!("ironvisor-handler monitor: {err}"),
    }
}

fn write_pid_file(args: &MonitorArgs, identity: &ProcessIdentity) -> Result<(), MonitorError> {
    let json = serde_json::to_vec(identity).unwrap_or_default();
    write_atomic(&args.pid_file, &json)?;
    Ok(())
}

fn write_outcome(args: &MonitorArgs, outcome: ExitOutcome) -> Result<(), MonitorError> {
    // `{"code":N}` / `{"signal":N}`: the externally tagged form of ExitOutcome.
    let json = serde_json::to_vec(&outcome).unwrap_or_default();
    write_atomic(&args.status_file, &json)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_json_is_the_documented_status_file_format() {
        assert_eq!(
            serde_json::to_string(&ExitOutcome::Code(4)).unwrap(),
            r#"{"code":4}"#
        );
        assert_eq!(
            serde_json::to_string(&ExitOutcome::Signal(9)).unwrap(),
            r#"{"signal":9}"#
        );
        let back: ExitOutcome = serde_json::from_str(r#"{"signal":15}"#).unwrap();
        assert_eq!(back, ExitOutcome::Signal(15));
    }
}
