//! The socket guardian: removes the launcher's socket files when the launcher is killed.
//!
//! A SIGKILLed launcher runs no destructor, so its API and console socket files would
//! stay behind. The guardian is a second, tiny process started from the launcher's
//! binary (`ironvisor-launcher __socket-guardian`, a fresh `exec`, so no state of the
//! launcher is copied into it) before any thread or async runtime exists. Its stdin is
//! the read end of a pipe whose write end only the launcher holds (close-on-exec, so no
//! other child inherits it):
//!
//! - after binding a socket the launcher reports its path, device and inode
//!   ([`Guardian::watch`]);
//! - on a normal exit the launcher removes its sockets itself, then sends `release`
//!   and reaps the guardian ([`Guardian::release`]);
//! - when the launcher dies any other way the kernel closes the pipe; the guardian reads
//!   end of file, removes each reported socket that is still the very file the launcher
//!   bound (so a newer launcher's socket at the same path survives), and exits.
//!
//! The guardian runs in its own process group, ignores SIGINT/SIGTERM/SIGHUP/SIGQUIT,
//! keeps no file descriptor but the pipe (stdout and stderr are `/dev/null`; no tap, no
//! `/dev/kvm`, no disk image), and never affects the launcher's exit status. Its command
//! line (`ironvisor-socket-guardian __socket-guardian`) does not repeat the launcher's, so
//! it is never mistaken for the VM's process.

mod process;
pub mod protocol;
#[cfg(test)]
mod tests;

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use tracing::{debug, info_span, warn};

pub use process::{run as run_process, ProcessError};
use protocol::{Message, WatchedSocket};

/// The hidden subcommand (first argument) that turns the launcher binary into a guardian.
pub const GUARDIAN_SUBCOMMAND: &str = "__socket-guardian";

/// The running launcher's own binary, even if the file was replaced since it started.
const SELF_EXE: &str = "/proc/self/exe";

/// How long [`Guardian::release`] (or dropping a [`Guardian`]) waits for it to exit
/// before killing it. It exits as soon as it reads the pipe, so this is never reached
/// unless something is badly wrong.
const EXIT_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the guardian could not be started or told about a socket.
#[derive(Debug, thiserror::Error)]
pub enum GuardianError {
    /// The pipe could not be created.
    #[error("socket guardian: cannot create its pipe: {0}")]
    Pipe(#[source] nix::Error),
    /// The process could not be started.
    #[error("socket guardian: cannot start {program}: {source}")]
    Spawn {
        /// The binary run.
        program: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The socket file could not be identified.
    #[error("socket guardian: cannot identify socket {path}: {source}")]
    Identify {
        /// The socket path.
        path: PathBuf,
        /// The `lstat` (or current directory) error.
        #[source]
        source: io::Error,
    },
    /// The message could not be written (the guardian is gone).
    #[error("socket guardian: cannot report socket {path}: {source}")]
    Report {
        /// The socket path.
        path: PathBuf,
        /// The `write` error.
        #[source]
        source: io::Error,
    },
}

/// The launcher's end of its socket guardian. Dropping it without [`Guardian::release`]
/// closes the pipe, so the guardian removes the watched sockets, exactly as if the
/// launcher had been killed.
#[derive(Debug)]
pub struct Guardian {
    child: Child,
    pipe: Option<File>,
    /// Every socket reported, to tell at exit whether the launcher removed them all.
    watched: Mutex<Vec<WatchedSocket>>,
}

impl Guardian {
    /// Starts the guardian from the launcher's own binary. Call it before any thread is
    /// started (it is safe afterwards too: the child `exec`s at once).
    pub fn spawn() -> Result<Self, GuardianError> {
        Self::spawn_program(Path::new(SELF_EXE))
    }

    /// Starts the guardian from `program`, a launcher binary.
    pub fn spawn_program(program: &Path) -> Result<Self, GuardianError> {
        let mut command = Command::new(program);
        command
            .arg0("ironvisor-socket-guardian")
            .arg(GUARDIAN_SUBCOMMAND);
        Self::spawn_command(command)
    }

    /// Starts the guardian as `command`, which must end up in [`run_process`] (tests
    /// run it from their own binary). Its stdio and process group are set here.
    pub(crate) fn spawn_command(mut command: Command) -> Result<Self, GuardianError> {
        let program = PathBuf::from(command.get_program());
        let _span = info_span!("socket_guardian", program = %program.display()).entered();
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(GuardianError::Pipe)?;
        command
            // The read end becomes the guardian's stdin (dup2 in the child clears its
            // close-on-exec flag there only). The parent's copy goes with `command`.
            .stdin(Stdio::from(read))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Out of the launcher's process group: a terminal's Ctrl+C or a kill of the
            // group is meant for the launcher.
            .process_group(0);
        let child = command
            .spawn()
            .map_err(|source| GuardianError::Spawn { program, source })?;
        drop(command);
        debug!(pid = child.id(), "socket guardian started");
        Ok(Self {
            child,
            pipe: Some(File::from(write)),
            watched: Mutex::new(Vec::new()),
        })
    }

    /// The guardian's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Tells the guardian about the socket just bound at `path`: if the launcher dies,
    /// it removes the file as long as it is still this one (same device and inode).
    pub fn watch(&self, path: &Path) -> Result<(), GuardianError> {
        let _span = info_span!("socket_guardian_watch", path = %path.display()).entered();
        let identify = |source| GuardianError::Identify {
            path: path.to_path_buf(),
            source,
        };
        let absolute = std::path::absolute(path).map_err(identify)?;
        let socket = WatchedSocket::at(&absolute).map_err(identify)?;
        let line = Message::Watch(socket.clone()).encode();
        let report = |source| GuardianError::Report {
            path: path.to_path_buf(),
            source,
        };
        let mut pipe = self
            .pipe
            .as_ref()
            .ok_or_else(|| report(io::ErrorKind::BrokenPipe.into()))?;
        pipe.write_all(&line).map_err(report)?;
        self.watched
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(socket);
        debug!("socket reported to the guardian");
        Ok(())
    }

    /// For a normal exit, once the launcher has removed its sockets itself: tells the
    /// guardian to exit without touching anything and reaps it. A launcher that dropped
    /// root may not remove its sockets from a directory root owns: when one of them is
    /// still there, the guardian (still root) removes it instead, as after a kill.
    pub fn release(mut self) {
        let left = self
            .watched
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .any(WatchedSocket::is_unchanged);
        if left {
            debug!("a socket is still there: the guardian removes it");
        }
        self.finish(!left);
    }

    /// For a launcher that cannot see its sockets' paths any more (jailed): the guardian
    /// removes each watched socket that is still the very file the launcher bound, as
    /// after a kill, and is reaped.
    pub fn hand_over(mut self) {
        debug!("the launcher cannot see its sockets: the guardian removes them");
        self.finish(false);
    }

    fn finish(&mut self, release: bool) {
        let Some(mut pipe) = self.pipe.take() else {
            return;
        };
        if release {
            if let Err(err) = pipe.write_all(&Message::Release.encode()) {
                warn!(%err, "socket guardian: cannot release it");
            }
        }
        drop(pipe);
        self.reap();
    }

    fn reap(&mut self) {
        let deadline = Instant::now() + EXIT_TIMEOUT;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    debug!(%status, "socket guardian exited");
                    return;
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(2));
                }
                Ok(None) => {
                    warn!(
                        pid = self.child.id(),
                        "socket guardian did not exit; killing it"
                    );
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return;
                }
                Err(err) => {
                    warn!(%err, "socket guardian: cannot wait for it");
                    return;
                }
            }
        }
    }
}

impl Drop for Guardian {
    fn drop(&mut self) {
        self.finish(false);
    }
}
