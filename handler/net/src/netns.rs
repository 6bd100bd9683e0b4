//! Named network namespaces, managed with `ip netns` so that they are visible to the usual
//! tools (`ip netns list`, `ip netns exec`) and can be entered by path.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use crate::tool::{Invocation, ToolError};

/// Where `ip netns` bind-mounts named namespaces (iproute2's `NETNS_RUN_DIR`).
pub const NETNS_RUN_DIR: &str = "/var/run/netns";

/// Why a namespace operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// `ip netns add` failed.
    #[error("creating network namespace {name}: {source}")]
    Create {
        /// Namespace name.
        name: String,
        /// The failed command.
        #[source]
        source: ToolError,
    },
    /// `ip netns delete` failed.
    #[error("deleting network namespace {name}: {source}")]
    Delete {
        /// Namespace name.
        name: String,
        /// The failed command.
        #[source]
        source: ToolError,
    },
    /// The name was attached to another namespace than the one meant (the process it was
    /// attached through ended and its pid was reused); the name is removed again.
    #[error("network namespace {name} is namespace {found}, not {expected}: the process it was named through ended; try again")]
    Changed {
        /// Namespace name.
        name: String,
        /// The inode of the namespace meant.
        expected: u64,
        /// The inode the name got.
        found: u64,
    },
    /// The namespace file could not be opened.
    #[error("opening network namespace {path}: {source}")]
    Open {
        /// Namespace path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// The bind-mount path of the namespace `name`.
pub(crate) fn path(name: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(name)
}

/// Whether the namespace `name` exists.
pub(crate) fn exists(name: &str) -> bool {
    path(name).exists()
}

/// Creates the namespace `name` (`ip netns add`).
pub(crate) fn create(name: &str) -> Result<(), NetnsError> {
    Invocation::new("ip")
        .args(["netns", "add", name])
        .run()
        .map(drop)
        .map_err(|source| NetnsError::Create {
            name: name.to_string(),
            source,
        })
}

/// Names the network namespace of process `pid` (`ip netns attach`): a bind mount of
/// `/proc/<pid>/ns/net`, so the namespace can be entered by name while that mount exists.
pub(crate) fn attach(name: &str, pid: u32) -> Result<(), NetnsError> {
    Invocation::new("ip")
        .args(["netns", "attach", name])
        .arg(pid.to_string())
        .run()
        .map(drop)
        .map_err(|source| NetnsError::Create {
            name: name.to_string(),
            source,
        })
}

/// Names the network namespace of process `pid`, as [`attach`], and checks that the name
/// got the namespace whose inode is `expected` (`/proc/<pid>/ns/net` read earlier):
/// between that read and the attach the process may have ended and its pid gone to a
/// process in another namespace. On a mismatch the name is removed again.
pub(crate) fn attach_checked(name: &str, pid: u32, expected: u64) -> Result<(), NetnsError> {
    attach(name, pid)?;
    let found = std::fs::metadata(path(name))
        .map(|meta| std::os::unix::fs::MetadataExt::ino(&meta))
        .map_err(|source| NetnsError::Open {
            path: path(name),
            source,
        })?;
    if found == expected {
        return Ok(());
    }
    delete(name)?;
    Err(NetnsError::Changed {
        name: name.to_string(),
        expected,
        found,
    })
}

/// Deletes the namespace `name`; does nothing if it does not exist.
pub(crate) fn delete(name: &str) -> Result<(), NetnsError> {
    if !exists(name) {
        return Ok(());
    }
    Invocation::new("ip")
        .args(["netns", "delete", name])
        .run()
        .map(drop)
        .map_err(|source| NetnsError::Delete {
            name: name.to_string(),
            source,
        })
}

/// Opens the namespace file of `path`, for `setns(fd, CLONE_NEWNET)`.
pub(crate) fn open(path: &Path) -> Result<OwnedFd, NetnsError> {
    File::open(path)
        .map(OwnedFd::from)
        .map_err(|source| NetnsError::Open {
            path: path.to_path_buf(),
            source,
        })
}

/// An `ip -n <name> ...` command (iproute2 switches namespace for the whole command).
pub(crate) fn ip(name: &str) -> Invocation {
    Invocation::new("ip").args(["-n", name])
}

/// `ip netns exec <name> <program> ...`: runs any program inside the namespace.
pub(crate) fn exec(name: &str, program: &str) -> Invocation {
    Invocation::new("ip").args(["netns", "exec", name, program])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_target_the_namespace() {
        assert_eq!(path("iv-abc"), PathBuf::from("/var/run/netns/iv-abc"));
        assert_eq!(
            ip("iv-abc").args(["link", "show"]).display(),
            "ip -n iv-abc link show"
        );
        assert_eq!(
            exec("iv-abc", "nft").args(["-f", "-"]).display(),
            "ip netns exec iv-abc nft -f -"
        );
    }

    #[test]
    fn deleting_a_missing_namespace_is_a_no_op() {
        delete("iv-does-not-exist-0").unwrap();
    }

    #[test]
    fn opening_a_missing_namespace_names_the_path() {
        let err = open(Path::new("/var/run/netns/iv-does-not-exist-0")).unwrap_err();
        assert!(err.to_string().contains("iv-does-not-exist-0"), "{err}");
    }
}
