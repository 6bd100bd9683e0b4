//! A plugin's unix socket in the kubelet's directory: binding it (replacing a stale
//! file), telling whether the file there is still the one bound, and removing it only
//! if it is.

use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

/// Why a socket could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// A live server already answers on the path (another instance of this plugin).
    #[error("{path} is in use by another server", path = path.display())]
    InUse {
        /// The socket path.
        path: PathBuf,
    },
    /// Removing the stale file, binding, or setting the mode failed.
    #[error("cannot bind {path}", path = path.display())]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The failing call's error.
        #[source]
        source: io::Error,
    },
}

/// Which file a path named when it was bound: device and inode. A socket file removed
/// and made again (by the kubelet deleting it, then anyone binding) has another one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketIdentity {
    dev: u64,
    ino: u64,
}

impl SocketIdentity {
    /// The identity of the file at `path` now, `None` if there is none.
    pub fn of(path: &Path) -> Option<Self> {
        std::fs::symlink_metadata(path).ok().map(|m| Self {
            dev: m.dev(),
            ino: m.ino(),
        })
    }

    /// Whether `path` still names this file.
    pub fn still_at(&self, path: &Path) -> bool {
        Self::of(path) == Some(*self)
    }
}

/// A bound listener and the identity of its socket file.
#[derive(Debug)]
pub struct BoundSocket {
    /// The listener to serve on.
    pub listener: UnixListener,
    /// The file bound.
    pub identity: SocketIdentity,
}

/// Binds `path` with mode 0600 (only root, as the kubelet, connects). A file already
/// there is replaced if nobody answers on it; a live server there is an error.
pub fn bind(path: &Path) -> Result<BoundSocket, SocketError> {
    let err = |source| SocketError::Bind {
        path: path.to_path_buf(),
        source,
    };
    if std::fs::symlink_metadata(path).is_ok() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(SocketError::InUse {
                path: path.to_path_buf(),
            });
        }
        std::fs::remove_file(path).map_err(err)?;
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    let metadata = std::fs::symlink_metadata(path).map_err(err)?;
    Ok(BoundSocket {
        listener,
        identity: SocketIdentity {
            dev: metadata.dev(),
            ino: metadata.ino(),
        },
    })
}

/// Removes `path` if it is still the file `identity` names; a file someone else
/// made there since is left alone. Returns whether it removed something.
pub fn remove_if_ours(path: &Path, identity: SocketIdentity) -> io::Result<bool> {
    if !identity.still_at(path) {
        return Ok(false);
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn binds_0600_and_replaces_a_stale_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.sock");
        std::fs::write(&path, b"stale").unwrap();
        let bound = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(bound.identity.still_at(&path));
    }

    #[tokio::test]
    async fn refuses_a_live_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.sock");
        let _live = bind(&path).unwrap();
        assert!(matches!(bind(&path), Err(SocketError::InUse { .. })));
    }

    #[tokio::test]
    async fn a_recreated_file_is_not_ours() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.sock");
        let first = bind(&path).unwrap();
        drop(first.listener);
        // Moved away rather than deleted, so its inode stays taken and the new file
        // cannot get the same one.
        let moved = dir.path().join("moved.sock");
        std::fs::rename(&path, &moved).unwrap();
        assert!(!first.identity.still_at(&path));
        let second = bind(&path).unwrap();
        assert!(!first.identity.still_at(&path));
        assert!(!remove_if_ours(&path, first.identity).unwrap());
        assert!(path.exists());
        assert!(remove_if_ours(&path, second.identity).unwrap());
        assert!(!path.exists());
    }
}
