//! The launcher as a child of the container's first process: SIGTERM and SIGINT are
//! forwarded to it (the launcher then shuts the guest down gracefully, as on pod
//! deletion), every child that ends is reaped (this process may be PID 1 and inherit
//! orphans such as `libvirtd`'s helpers), and the launcher's exit is returned.
//!
//! Like the standalone monitor, this runs no async runtime: the signals are blocked
//! before any child or thread exists ([`Signals::block`]) and taken with `sigwait`, so
//! neither the launcher's exit nor a SIGTERM can be missed. The launcher's stdout (the
//! guest console) is the container's; its stderr is copied through to remember its last
//! error line for the termination message.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ChildStderr, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tracing::{debug, info, warn};

use crate::records::ExitOutcome;

/// Longest stderr line remembered (bytes).
const MAX_LINE: usize = 2048;
/// How long to wait for the launcher's stderr to close after it exited (a helper it
/// started may still hold it).
const STDERR_DRAIN: Duration = Duration::from_secs(2);

/// Why the launcher could not be run.
#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    /// Signal handling could not be set up.
    #[error("cannot {action}: {source}")]
    Signals {
        /// What was attempted.
        action: &'static str,
        /// The OS error.
        #[source]
        source: Errno,
    },
    /// The launcher could not be started.
    #[error("cannot start the launcher {program}: {source}")]
    Spawn {
        /// The launcher.
        program: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Waiting for children failed.
    #[error("waiting for the launcher (pid {pid}) failed: {source}")]
    Wait {
        /// The launcher's pid.
        pid: i32,
        /// The OS error.
        #[source]
        source: Errno,
    },
}

/// The signals this process takes synchronously.
#[derive(Debug, Clone, Copy)]
pub struct Signals {
    set: SigSet,
}

impl Signals {
    /// Blocks SIGCHLD, SIGTERM, SIGINT, SIGHUP and SIGQUIT in this thread (threads started
    /// later inherit the mask; children start with an empty one) and makes this process
    /// the reaper of its orphaned descendants. Call first, before anything is started.
    pub fn block() -> Result<Self, SuperviseError> {
        let set = crate::monitor::forwarded_signals();
        set.thread_block()
            .map_err(|source| SuperviseError::Signals {
                action: "block signals",
                source,
            })?;
        // An ignored disposition survives exec: with SIGCHLD ignored, ended children are
        // reaped by the kernel and never signalled; an ignored SIGTERM is discarded even
        // while blocked. Back to the defaults (harmless: they are blocked).
        for signal in set.iter() {
            // SAFETY: SIG_DFL installs no handler code, so no async-signal-safety
            // requirement applies; it only replaces a possibly inherited SIG_IGN.
            unsafe { nix::sys::signal::signal(signal, nix::sys::signal::SigHandler::SigDfl) }
                .map_err(|source| SuperviseError::Signals {
                    action: "reset signal dispositions",
                    source,
                })?;
        }
        // As PID 1 this is implied; elsewhere (tests) daemons started with `-d` are
        // reparented here instead of to the host's init.
        if let Err(error) = nix::sys::prctl::set_child_subreaper(true) {
            warn!(%error, "cannot become a child subreaper; orphans go to init");
        }
        Ok(Self { set })
    }

    /// Whether a stop (SIGTERM or SIGINT) arrived and is waiting to be taken.
    pub fn stop_pending() -> bool {
        let mut pending = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: sigpending writes a complete sigset_t through the valid pointer it is
        // given and touches nothing else; the set is only read after it returned 0.
        if unsafe { libc::sigpending(pending.as_mut_ptr()) } != 0 {
            return false;
        }
        // SAFETY: sigpending succeeded, so the set is initialised.
        let pending = unsafe { pending.assume_init() };
        [libc::SIGTERM, libc::SIGINT].into_iter().any(|signal| {
            // SAFETY: sigismember only reads the initialised set.
            unsafe { libc::sigismember(&pending, signal) == 1 }
        })
    }
}

/// Makes `command` start its process with no signal blocked: a child inherits the
/// blocked set of the thread that starts it, and this process blocks the signals it
/// takes with `sigwait` ([`Signals::block`]).
pub fn with_signals_unblocked(command: &mut Command) -> &mut Command {
    // SAFETY: the closure runs in the forked child before exec and only calls
    // pthread_sigmask (through nix), which is async-signal-safe; it allocates nothing and
    // takes no lock.
    unsafe {
        command.pre_exec(|| {
            SigSet::empty()
                .thread_set_mask()
                .map_err(|errno| io::Error::from_raw_os_error(errno as i32))
        })
    }
}

/// How the launcher ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    /// Its exit code or signal.
    pub outcome: ExitOutcome,
    /// Its last error line on stderr (`...: error: ...`, else the last line).
    pub error_line: Option<String>,
}

/// Runs `program --config <config>` until it ends, forwarding SIGTERM and SIGINT and
/// reaping every child.
pub fn run_launcher(
    signals: Signals,
    program: &Path,
    config: &Path,
    envs: &[(&str, &str)],
) -> Result<Ended, SuperviseError> {
    let mut command = Command::new(program);
    let mut child = with_signals_unblocked(&mut command)
        .arg("--config")
        .arg(config)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| SuperviseError::Spawn {
            program: program.to_path_buf(),
            source,
        })?;
    let pid = Pid::from_raw(child.id() as i32);
    info!(pid = pid.as_raw(), launcher = %program.display(), "launcher started");
    let stderr = child.stderr.take().map(copy_stderr);
    // The child is reaped below with waitpid(-1); the handle is only dropped (no wait).
    drop(child);
    let outcome = wait_for(signals, pid)?;
    let error_line = stderr.and_then(|rx| rx.recv_timeout(STDERR_DRAIN).ok().flatten());
    Ok(Ended {
        outcome,
        error_line,
    })
}

fn wait_for(signals: Signals, launcher: Pid) -> Result<ExitOutcome, SuperviseError> {
    let mut stopping = false;
    loop {
        if let Some(outcome) = reap(launcher)? {
            return Ok(outcome);
        }
        let signal = signals
            .set
            .wait()
            .map_err(|source| SuperviseError::Signals {
                action: "wait for signals",
                source,
            })?;
        match signal {
            Signal::SIGTERM | Signal::SIGINT => {
                info!(%signal, again = stopping, "stop requested: forwarding SIGTERM to the launcher");
                stopping = true;
                if let Err(error) = kill(launcher, Signal::SIGTERM) {
                    warn!(%error, "cannot signal the launcher");
                }
            }
            Signal::SIGCHLD => {}
            other => debug!(signal = %other, "ignored"),
        }
    }
}

/// Reaps every child that has ended; returns the launcher's outcome if it is one of them.
fn reap(launcher: Pid) -> Result<Option<ExitOutcome>, SuperviseError> {
    let mut found = None;
    loop {
        let status = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(status) => status,
            Err(Errno::ECHILD) => return Ok(found),
            Err(Errno::EINTR) => continue,
            Err(source) => {
                return Err(SuperviseError::Wait {
                    pid: launcher.as_raw(),
                    source,
                })
            }
        };
        let (pid, outcome) = match status {
            WaitStatus::StillAlive => return Ok(found),
            WaitStatus::Exited(pid, code) => (pid, ExitOutcome::Code(code)),
            WaitStatus::Signaled(pid, signal, _) => (pid, ExitOutcome::Signal(signal as i32)),
            _ => continue,
        };
        if pid == launcher {
            found = Some(outcome);
        } else {
            debug!(pid = pid.as_raw(), ?outcome, "reaped a child");
        }
    }
}

/// Copies the launcher's stderr to ours on a thread; the channel gets its last error
/// line when the pipe closes.
fn copy_stderr(stderr: ChildStderr) -> mpsc::Receiver<Option<String>> {
    let (tx, rx) = mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("launcher-stderr".into())
        .spawn(move || {
            let mut reader = BufReader::new(stderr);
            let mut tail = ErrorTail::default();
            let mut line = Vec::new();
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let _ = io::stderr().write_all(&line);
                        tail.push(&line);
                    }
                }
            }
            let _ = tx.send(tail.best());
        });
    if let Err(error) = spawned {
        warn!(%error, "cannot start the stderr copier; launcher errors are not reported");
    }
    rx
}

/// The launcher's last error line and last line. An error line ending in ':' takes the
/// indented lines after it (`invalid launch configuration (1 problem):` then
/// `  - disks[2].path: ...`), so the reason names the problem, within [`MAX_LINE`].
#[derive(Debug, Default)]
struct ErrorTail {
    error: Option<String>,
    last: Option<String>,
    /// The error line ends in ':' and indented details may follow.
    open: bool,
}

impl ErrorTail {
    fn push(&mut self, raw: &[u8]) {
        let text = String::from_utf8_lossy(&raw[..raw.len().min(MAX_LINE)]);
        let indented = text.starts_with([' ', '\t']);
        let text = text.trim();
        if text.is_empty() {
            return;
        }
        match &mut self.error {
            Some(error) if self.open && indented => {
                let room = MAX_LINE.saturating_sub(error.len() + 1);
                if room > 0 {
                    error.push(' ');
                    error.extend(text.chars().take(room));
                }
                self.last = Some(text.to_string());
                return;
            }
            _ => self.open = false,
        }
        if text.contains(": error: ") || text.contains(" ERROR ") {
            self.error = Some(text.to_string());
            self.open = text.ends_with(':');
        }
        self.last = Some(text.to_string());
    }

    fn best(self) -> Option<String> {
        self.error.or(self.last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_error_line_wins_over_later_noise() {
        let mut tail = ErrorTail::default();
        tail.push(b"INFO booting\n");
        assert_eq!(tail.error, None);
        tail.push(b"ironvisor-launcher: error: kernel /k: not found\n");
        tail.push(b"\n");
        tail.push(b"guardian: sockets removed\n");
        assert_eq!(
            tail.best().as_deref(),
            Some("ironvisor-launcher: error: kernel /k: not found")
        );
        let mut tail = ErrorTail::default();
        tail.push(b"something odd\n");
        assert_eq!(tail.best().as_deref(), Some("something odd"));
        let mut tail = ErrorTail::default();
        tail.push(b"ironvisor-launcher-qemu: error: invalid launch configuration (1 problem):\n");
        tail.push(b"  - disks[2].path: /d is a special file, not a regular file\n");
        tail.push(b"guardian: done\n");
        tail.push(b"  indented noise after the details\n");
        assert_eq!(
            tail.best().as_deref(),
            Some("ironvisor-launcher-qemu: error: invalid launch configuration (1 problem): - disks[2].path: /d is a special file, not a regular file")
        );
        let mut tail = ErrorTail::default();
        tail.push(&[b'x'; 10_000]);
        assert_eq!(tail.best().map(|l| l.len()), Some(MAX_LINE));
    }
}
