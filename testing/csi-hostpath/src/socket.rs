//! The driver's unix sockets: binding one (making its directory, replacing a stale
//! file) and removing it again when the driver stops, unless someone replaced it.

use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;
use tracing::warn;

/// Why a socket could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// A live server already answers on the path (another instance of the driver).
    #[error("{path} is in use by another server", path = path.display())]
    InUse {
        /// The socket path.
        path: PathBuf,
    },
    /// Making the directory, removing the stale file, binding or setting the mode
    /// failed.
    #[error("cannot {action} {path}: {source}", path = path.display())]
    Bind {
        /// What was being done.
        action: &'static str,
        /// The socket path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// A bound socket file, removed when this is dropped if the path still names it.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    identity: (u64, u64),
}

impl SocketFile {
    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if identity(&self.path) != Some(self.identity) {
            return;
        }
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                warn!(path = %self.path.display(), error = %e, "cannot remove the socket")
            }
            _ => {}
        }
    }
}

/// Binds `path` with mode 0660, making its directory if needed. A file already there
/// is replaced if nobody answers on it. Must run inside the tokio runtime.
pub fn bind(path: &Path) -> Result<(UnixListener, SocketFile), SocketError> {
    let err = |action| {
        move |source| SocketError::Bind {
            action,
            path: path.to_path_buf(),
            source,
        }
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(err("create the directory of"))?;
    }
    if std::fs::symlink_metadata(path).is_ok() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(SocketError::InUse {
                path: path.to_path_buf(),
            });
        }
        std::fs::remove_file(path).map_err(err("remove the stale socket"))?;
    }
    let listener = UnixListener::bind(path).map_err(err("bind"))?;
    let file = SocketFile {
        path: path.to_path_buf(),
        identity: identity(path).unwrap_or_default(),
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(err("set the mode of"))?;
    Ok((listener, file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn binds_in_a_new_directory_replacing_a_stale_file_and_removes_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/csi.sock");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"stale").unwrap();
        let (listener, file) = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        assert!(matches!(bind(&path), Err(SocketError::InUse { .. })));
        drop(listener);
        drop(file);
        assert!(!path.exists());
        let fresh = dir.path().join("new/dir/reg.sock");
        let (_l, _f) = bind(&fresh).unwrap();
        assert!(fresh.exists());
    }

    #[tokio::test]
    async fn a_replaced_file_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("csi.sock");
        let (listener, file) = bind(&path).unwrap();
        drop(listener);
        std::fs::rename(&path, dir.path().join("moved")).unwrap();
        std::fs::write(&path, b"someone else's").unwrap();
        drop(file);
        assert!(path.exists());
    }
}
