//! libvirt inside the `compute` container, for software emulation: the launcher image
//! carries `virtlogd` and `libvirtd`. When nothing answers on the libvirt socket yet, both
//! daemons are started with `-d` (they fork into the background; this process, the
//! container's init, reaps them) and the socket is waited for, within a bound.
//!
//! Which libvirt depends on who the container runs as ([`LibvirtSetup::for_current_user`]):
//! as root, the system daemons (`qemu:///system`, with the image's `qemu.conf` for
//! in-container use, see `launcher/qemu/setup-libvirt.sh` for the same settings on a
//! host); as anyone else, libvirt's per-user "session" daemons (`qemu:///session`), which
//! keep their sockets under `XDG_RUNTIME_DIR` and their state under `HOME`, and run QEMU
//! as that same user. The launcher is told the URI in its environment ([`URI_ENV`]).

use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tracing::info;

/// The socket of the system libvirtd (`qemu:///system`).
pub const DEFAULT_SOCKET: &str = "/var/run/libvirt/libvirt-sock";
/// The system libvirt's URI.
pub const SYSTEM_URI: &str = "qemu:///system";
/// The per-user libvirt's URI.
pub const SESSION_URI: &str = "qemu:///session";
/// Where the emulation launcher takes its libvirt URI from (its `libvirt::URI_ENV`).
pub const URI_ENV: &str = "IRONVISOR_LIBVIRT_URI";
/// How long to wait for libvirtd to answer by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Directories the system libvirtd and virtlogd need and a fresh container lacks.
const SYSTEM_DIRS: [&str; 5] = [
    "/var/log/libvirt/qemu",
    "/var/run/libvirt",
    "/var/lib/libvirt/qemu",
    "/var/cache/libvirt/qemu",
    "/etc/libvirt",
];
const POLL: Duration = Duration::from_millis(100);

/// Why libvirt is not available.
#[derive(Debug, thiserror::Error)]
pub enum LibvirtError {
    /// A directory cannot be created.
    #[error("cannot create {path} for libvirtd: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A daemon cannot be started.
    #[error("cannot start {program} -d: {source}")]
    Spawn {
        /// The daemon.
        program: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A daemon's start failed.
    #[error("{program} -d failed ({status}); see its messages above")]
    Failed {
        /// The daemon.
        program: String,
        /// How it ended.
        status: std::process::ExitStatus,
    },
    /// Nothing answered on the socket in time.
    #[error("libvirtd did not answer on {socket} within {} s: {last_error}", .timeout.as_secs())]
    Timeout {
        /// The socket.
        socket: PathBuf,
        /// The bound.
        timeout: Duration,
        /// The last connection error.
        last_error: String,
    },
}

/// How to get libvirt running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LibvirtSetup {
    /// The libvirtd socket.
    pub socket: PathBuf,
    /// The URI the launcher connects to.
    pub uri: String,
    /// How long to wait for it.
    pub timeout: Duration,
    /// The daemons to start, in order (`virtlogd`, `libvirtd`).
    pub daemons: Vec<String>,
    /// Directories made before the daemons start.
    pub dirs: Vec<PathBuf>,
}

impl LibvirtSetup {
    /// The system libvirtd with the given socket and bound.
    pub fn new(socket: PathBuf, timeout: Duration) -> Self {
        Self {
            socket,
            uri: SYSTEM_URI.into(),
            timeout,
            daemons: vec!["virtlogd".into(), "libvirtd".into()],
            dirs: SYSTEM_DIRS.iter().map(PathBuf::from).collect(),
        }
    }

    /// The per-user libvirtd whose runtime directory is `runtime_dir`.
    pub fn session(runtime_dir: &Path, timeout: Duration) -> Self {
        Self {
            socket: runtime_dir.join("libvirt").join("libvirt-sock"),
            uri: SESSION_URI.into(),
            timeout,
            daemons: vec!["virtlogd".into(), "libvirtd".into()],
            dirs: vec![runtime_dir.to_path_buf()],
        }
    }

    /// The libvirt this process's user gets: the system daemons for root, else the
    /// per-user ones under `XDG_RUNTIME_DIR` (or `$HOME/.cache`, libvirt's own fallback).
    /// `socket` overrides the socket waited for.
    pub fn for_current_user(socket: Option<PathBuf>, timeout: Duration) -> Self {
        let mut setup = if nix::unistd::geteuid().is_root() {
            Self::new(PathBuf::from(DEFAULT_SOCKET), timeout)
        } else {
            Self::session(&session_runtime_dir(), timeout)
        };
        if let Some(socket) = socket {
            setup.socket = socket;
        }
        setup
    }

    /// Makes sure libvirtd answers on the socket; returns whether the daemons were
    /// started here.
    pub fn ensure_running(&self) -> Result<bool, LibvirtError> {
        let _span =
            tracing::info_span!("libvirt", uri = %self.uri, socket = %self.socket.display())
                .entered();
        if answers(&self.socket).is_ok() {
            info!("libvirtd already answers");
            return Ok(false);
        }
        for dir in &self.dirs {
            std::fs::create_dir_all(dir).map_err(|source| LibvirtError::Dir {
                path: dir.clone(),
                source,
            })?;
        }
        for program in &self.daemons {
            info!(%program, "starting");
            // `-d` forks the daemon and returns; the foreground process reports failures.
            let status = super::supervise::with_signals_unblocked(&mut Command::new(program))
                .arg("-d")
                .stdin(Stdio::null())
                .status()
                .map_err(|source| LibvirtError::Spawn {
                    program: program.clone(),
                    source,
                })?;
            if !status.success() {
                return Err(LibvirtError::Failed {
                    program: program.clone(),
                    status,
                });
            }
        }
        self.wait()?;
        info!("libvirtd answers");
        Ok(true)
    }

    fn wait(&self) -> Result<(), LibvirtError> {
        let deadline = Instant::now() + self.timeout;
        loop {
            let error = match answers(&self.socket) {
                Ok(()) => return Ok(()),
                Err(error) => error,
            };
            if Instant::now() >= deadline {
                return Err(LibvirtError::Timeout {
                    socket: self.socket.clone(),
                    timeout: self.timeout,
                    last_error: error.to_string(),
                });
            }
            std::thread::sleep(POLL);
        }
    }
}

/// The per-user runtime directory libvirt uses: `XDG_RUNTIME_DIR`, else `$HOME/.cache`.
fn session_runtime_dir() -> PathBuf {
    let set = |name| std::env::var_os(name).filter(|value| !value.is_empty());
    match (set("XDG_RUNTIME_DIR"), set("HOME")) {
        (Some(runtime), _) => PathBuf::from(runtime),
        (None, Some(home)) => PathBuf::from(home).join(".cache"),
        (None, None) => PathBuf::from("/tmp"),
    }
}

/// Whether something accepts connections on the socket.
fn answers(socket: &Path) -> io::Result<()> {
    UnixStream::connect(socket).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn a_listening_socket_starts_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("libvirt-sock");
        let _listener = UnixListener::bind(&socket).unwrap();
        let mut setup = LibvirtSetup::new(socket, Duration::from_millis(10));
        setup.daemons = vec!["/nonexistent/libvirtd".into()];
        assert!(!setup.ensure_running().unwrap());
    }

    #[test]
    fn a_session_keeps_its_socket_under_the_runtime_directory() {
        let setup = LibvirtSetup::session(Path::new("/run/home/run"), DEFAULT_TIMEOUT);
        assert_eq!(
            setup.socket,
            Path::new("/run/home/run/libvirt/libvirt-sock")
        );
        assert_eq!(setup.uri, "qemu:///session");
        assert_eq!(setup.dirs, [Path::new("/run/home/run")]);
        let system = LibvirtSetup::new(PathBuf::from(DEFAULT_SOCKET), DEFAULT_TIMEOUT);
        assert_eq!(system.uri, "qemu:///system");
    }

    #[test]
    fn the_wait_is_bounded_and_names_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("libvirt-sock");
        let setup = LibvirtSetup::new(socket.clone(), Duration::from_millis(250));
        let started = Instant::now();
        let error = setup.wait().unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(
            error.to_string().contains(&socket.display().to_string()),
            "{error}"
        );
    }
}
