//! The guardian process itself: `ironvisor-launcher __socket-guardian`, started by
//! [`super::Guardian::spawn`] with its stdin on the read end of a pipe whose write end only
//! the launcher holds.
//!
//! It first sheds everything it might have inherited: every file descriptor but 0-2
//! (stdin is the pipe, stdout and stderr are `/dev/null`), the working directory, and
//! the stop signals a terminal or a process-group kill would send (SIGINT, SIGTERM,
//! SIGHUP, SIGQUIT are ignored: stopping the VM is the launcher's business). Then it
//! reads [`Message`]s until
//!
//! - `release`: the launcher exited normally and cleaned up itself; exit at once;
//! - end of file: the launcher is gone without saying so (SIGKILL, abort); remove every
//!   watched socket that is still the very file the launcher bound, then exit.
//!
//! It never runs an async runtime or a second thread, and nothing it does can block on
//! anything but the pipe.

use std::io::{self, BufRead};
use std::os::fd::RawFd;

use nix::sys::signal::{signal, SigHandler, Signal};

use super::protocol::{Message, WatchedSocket};

/// Why the guardian could not prepare itself. It has no stderr, so these only decide
/// its exit status (which nobody but a test looks at).
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// A stop signal could not be ignored.
    #[error("cannot ignore {signal}: {source}")]
    Signal {
        /// The signal.
        signal: Signal,
        /// The OS error.
        source: nix::Error,
    },
    /// Inherited file descriptors could not be closed.
    #[error("cannot close inherited file descriptors: {0}")]
    CloseFds(io::Error),
}

/// How the launcher ended, as seen through the pipe.
#[derive(Debug, PartialEq, Eq)]
enum Ending {
    /// It sent `release`.
    Released,
    /// The pipe closed; these sockets were reported.
    Gone(Vec<WatchedSocket>),
}

/// Runs the guardian; returns its exit status: 0 when it did its job, 1 when it could
/// not prepare itself or a socket could not be removed.
pub fn run() -> u8 {
    // Guard the sockets even if preparing failed: a leftover fd is the lesser evil.
    let prepared = prepare();
    match read_messages(io::stdin().lock()) {
        Ending::Released => u8::from(prepared.is_err()),
        Ending::Gone(sockets) => {
            let mut status = u8::from(prepared.is_err());
            for socket in &sockets {
                if socket.remove_if_unchanged().is_err() {
                    status = 1;
                }
            }
            status
        }
    }
}

fn prepare() -> Result<(), ProcessError> {
    for sig in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        // SAFETY: SIG_IGN installs no handler code; nothing else runs in this process yet.
        unsafe { signal(sig, SigHandler::SigIgn) }.map_err(|source| ProcessError::Signal {
            signal: sig,
            source,
        })?;
    }
    close_fds_from(3).map_err(ProcessError::CloseFds)?;
    // Hold no directory busy (paths on the pipe are absolute).
    let _ = std::env::set_current_dir("/");
    Ok(())
}

/// Closes every file descriptor numbered `first` or above.
fn close_fds_from(first: RawFd) -> io::Result<()> {
    let first = libc::c_uint::try_from(first).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: close_range only closes descriptors; nothing in this process owns one at
    // or above `first` (std opened none, and no Rust object refers to an inherited one).
    let rc = unsafe { libc::syscall(libc::SYS_close_range, first, libc::c_uint::MAX, 0) };
    if rc == 0 {
        return Ok(());
    }
    // Kernels before 5.9 lack close_range: close what /proc lists.
    let fds: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    for fd in fds {
        if fd >= first as RawFd {
            // SAFETY: as above; the read_dir fd is already closed, EBADF is harmless.
            unsafe { libc::close(fd) };
        }
    }
    Ok(())
}

fn read_messages(mut pipe: impl BufRead) -> Ending {
    let mut sockets = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        match pipe.read_until(b'\n', &mut line) {
            // End of file, or a pipe that cannot be read: the launcher is gone either way.
            Ok(0) | Err(_) => return Ending::Gone(sockets),
            Ok(_) => {}
        }
        match Message::decode(&line) {
            Ok(Message::Release) => return Ending::Released,
            Ok(Message::Watch(socket)) => sockets.push(socket),
            // A partial last line (the launcher died mid-write) or garbage: skip it.
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn socket(path: &str, ino: u64) -> WatchedSocket {
        WatchedSocket {
            path: PathBuf::from(path),
            dev: 1,
            ino,
        }
    }

    #[test]
    fn end_of_file_returns_the_watched_sockets() {
        let mut input = Message::Watch(socket("/a", 1)).encode();
        input.extend(b"bogus\n");
        input.extend(Message::Watch(socket("/b", 2)).encode());
        // The launcher died in the middle of a third message.
        input.extend(b"watch 1 3 2f");
        assert_eq!(
            read_messages(&input[..]),
            Ending::Gone(vec![socket("/a", 1), socket("/b", 2)])
        );
    }

    #[test]
    fn release_ends_without_sockets() {
        let mut input = Message::Watch(socket("/a", 1)).encode();
        input.extend(Message::Release.encode());
        input.extend(Message::Watch(socket("/b", 2)).encode());
        assert_eq!(read_messages(&input[..]), Ending::Released);
    }
}
