//! The unix socket paths the launcher binds (control API, console): before binding, a
//! stale socket file left by a dead launcher is removed, and a live one is refused.
//!
//! "Stale" means a socket file whose `connect` is refused (`ECONNREFUSED`): nothing
//! listens on it any more. A socket that accepts connections (or whose backlog is full)
//! belongs to a running process and is never touched; neither is a path that is not a
//! socket, nor one whose state cannot be told (for example no permission to connect).

use std::io;
use std::path::{Path, PathBuf};

use ironvisor_console::{probe_path, PathState};
use tracing::info;

/// Why a socket path cannot be used. Every variant names the socket and the path.
#[derive(Debug, thiserror::Error)]
pub enum SocketPathError {
    /// A live process listens on the socket.
    #[error("{what} socket {path} is in use: another process is listening on it")]
    InUse {
        /// Which socket ("API", "console").
        what: &'static str,
        /// The socket path.
        path: PathBuf,
    },
    /// Something other than a socket is at the path.
    #[error(
        "{what} socket {path}: a file that is not a socket is in the way; refusing to remove it"
    )]
    NotASocket {
        /// Which socket.
        what: &'static str,
        /// The socket path.
        path: PathBuf,
    },
    /// Whether the existing socket is in use could not be told.
    #[error("{what} socket {path}: cannot tell whether the existing socket is in use: {source}")]
    Probe {
        /// Which socket.
        what: &'static str,
        /// The socket path.
        path: PathBuf,
        /// The `lstat` or `connect` error.
        #[source]
        source: io::Error,
    },
    /// The stale socket could not be removed.
    #[error("{what} socket {path}: cannot remove the stale socket: {source}")]
    RemoveStale {
        /// Which socket.
        what: &'static str,
        /// The socket path.
        path: PathBuf,
        /// The `unlink` error.
        #[source]
        source: io::Error,
    },
}

/// Makes `path` free for a new socket: nothing there is fine, a stale socket is removed,
/// a live socket or any other file is an error. `what` names the socket in messages.
#[tracing::instrument(level = "debug", skip_all, fields(socket = what, path = %path.display()))]
pub fn clear_stale(what: &'static str, path: &Path) -> Result<(), SocketPathError> {
    let state = probe_path(path).map_err(|source| SocketPathError::Probe {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    match state {
        PathState::Absent => Ok(()),
        PathState::Live => Err(SocketPathError::InUse {
            what,
            path: path.to_path_buf(),
        }),
        PathState::NotASocket => Err(SocketPathError::NotASocket {
            what,
            path: path.to_path_buf(),
        }),
        PathState::Stale => {
            info!("removing stale socket left by a dead process");
            match std::fs::remove_file(path) {
                Ok(()) => Ok(()),
                Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(source) => Err(SocketPathError::RemoveStale {
                    what,
                    path: path.to_path_buf(),
                    source,
                }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;

    use super::*;

    #[test]
    fn missing_path_is_free() {
        let dir = tempfile::tempdir().unwrap();
        clear_stale("API", &dir.path().join("api.sock")).unwrap();
    }

    #[test]
    fn stale_socket_is_removed_and_the_path_can_be_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists(), "a dropped listener leaves its file");
        clear_stale("API", &path).unwrap();
        assert!(!path.exists());
        let _again = UnixListener::bind(&path).unwrap();
    }

    #[test]
    fn live_socket_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.sock");
        let _live = UnixListener::bind(&path).unwrap();
        let err = clear_stale("console", &path).unwrap_err();
        assert!(matches!(err, SocketPathError::InUse { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains(&*path.to_string_lossy()) && text.contains("console socket"),
            "{text}"
        );
        assert!(path.exists(), "a live socket must be left alone");
    }

    #[test]
    fn other_files_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        std::fs::write(&path, b"not a socket").unwrap();
        let err = clear_stale("API", &path).unwrap_err();
        assert!(matches!(err, SocketPathError::NotASocket { .. }), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"not a socket");
    }
}
