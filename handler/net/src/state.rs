//! The per-VM state file, `<state_dir>/<netns>/state.json`: what `load` returns and what
//! `teardown` needs to undo a setup, also one that crashed half-way. It is written before
//! anything is created and removed only after everything is gone.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cni::Attachment;
use crate::config::{mac_serde, Binding};
use crate::VmNetwork;

/// Format version of the state file.
pub(crate) const STATE_VERSION: u32 = 1;

const STATE_FILE: &str = "state.json";

/// Why the state file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The per-VM directory could not be created.
    #[error("creating state directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Writing or renaming the state file failed.
    #[error("writing state file {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Reading the state file failed.
    #[error("reading state file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The state file is not valid JSON of the expected shape.
    #[error("state file {path} is corrupt: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// The state file was written by an incompatible version.
    #[error(
        "state file {path} has format version {found}; this build reads version {STATE_VERSION}"
    )]
    Version {
        /// The file.
        path: PathBuf,
        /// The version found.
        found: u32,
    },
    /// The per-VM directory could not be removed.
    #[error("removing state directory {path}: {source}")]
    Remove {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Everything known about one VM's network, from the first step of setup on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct VmState {
    pub(crate) version: u32,
    pub(crate) vm_key: String,
    /// The CNI container ID.
    pub(crate) vm_uid: String,
    /// KubeVirt interface name.
    pub(crate) interface: String,
    pub(crate) netns_name: String,
    pub(crate) binding: Binding,
    #[serde(with = "mac_serde")]
    pub(crate) mac: [u8; 6],
    /// The plugin directory and configuration ADD ran with, so DEL runs with the same.
    pub(crate) cni_bin_dir: PathBuf,
    pub(crate) cni_config: Value,
    /// Set once CNI ADD returned.
    pub(crate) attachment: Option<Attachment>,
    /// The node end of the pod's veth, from the ADD result: removed by teardown when the
    /// namespace was lost and the kernel has not removed it yet.
    #[serde(default)]
    pub(crate) host_interface: Option<String>,
    /// Set once setup completed.
    pub(crate) network: Option<VmNetwork>,
}

/// The per-VM directory: state file, dnsmasq pid, lease and log files.
pub(crate) fn vm_dir(state_dir: &Path, netns_name: &str) -> PathBuf {
    state_dir.join(netns_name)
}

/// Writes the state atomically: a temporary file, fsync, rename, fsync of the directory.
pub(crate) fn write(dir: &Path, state: &VmState) -> Result<(), StateError> {
    fs::create_dir_all(dir).map_err(|source| StateError::CreateDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let path = dir.join(STATE_FILE);
    let tmp = dir.join(format!("{STATE_FILE}.tmp"));
    let write_err = |source| StateError::Write {
        path: path.clone(),
        source,
    };
    let json = serde_json::to_vec_pretty(state).map_err(|e| write_err(io::Error::other(e)))?;
    let mut file = File::create(&tmp).map_err(write_err)?;
    file.write_all(&json).map_err(write_err)?;
    file.sync_all().map_err(write_err)?;
    drop(file);
    fs::rename(&tmp, &path).map_err(write_err)?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(write_err)
}

/// Reads the state; `None` when there is no state file.
pub(crate) fn read(dir: &Path) -> Result<Option<VmState>, StateError> {
    let path = dir.join(STATE_FILE);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(StateError::Read { path, source }),
    };
    // Check the version before the shape, so a future format gives the clearer error.
    #[derive(Deserialize)]
    struct Versioned {
        version: u32,
    }
    let versioned: Versioned =
        serde_json::from_slice(&bytes).map_err(|source| StateError::Parse {
            path: path.clone(),
            source,
        })?;
    if versioned.version != STATE_VERSION {
        return Err(StateError::Version {
            path,
            found: versioned.version,
        });
    }
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| StateError::Parse { path, source })
}

/// Removes the per-VM directory and everything in it; does nothing if it is gone.
pub(crate) fn remove(dir: &Path) -> Result<(), StateError> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(StateError::Remove {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> VmState {
        VmState {
            version: STATE_VERSION,
            vm_key: "default/vm-small".into(),
            vm_uid: "uid-1".into(),
            interface: "default".into(),
            netns_name: "iv-0123456789".into(),
            binding: Binding::Masquerade,
            mac: [0x52, 0x54, 0, 0, 0, 1],
            cni_bin_dir: "/usr/lib/cni".into(),
            cni_config: serde_json::json!({"type": "bridge"}),
            attachment: Some(Attachment {
                address: "10.222.0.2".parse().unwrap(),
                prefix_len: 24,
                gateway: "10.222.0.1".parse().unwrap(),
            }),
            host_interface: None,
            network: None,
        }
    }

    #[test]
    fn write_then_read_round_trips_and_leaves_no_temporary() {
        let root = tempfile::tempdir().unwrap();
        let dir = vm_dir(root.path(), "iv-0123456789");
        assert_eq!(read(&dir).unwrap(), None);
        write(&dir, &sample()).unwrap();
        assert_eq!(read(&dir).unwrap(), Some(sample()));
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
        let mut updated = sample();
        updated.attachment = None;
        write(&dir, &updated).unwrap();
        assert_eq!(read(&dir).unwrap(), Some(updated));
    }

    #[test]
    fn corrupt_and_future_files_are_reported_with_their_path() {
        let root = tempfile::tempdir().unwrap();
        let dir = vm_dir(root.path(), "iv-x");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(STATE_FILE), b"{not json").unwrap();
        let err = read(&dir).unwrap_err();
        assert!(matches!(err, StateError::Parse { .. }));
        assert!(err.to_string().contains("iv-x/state.json"), "{err}");
        fs::write(dir.join(STATE_FILE), br#"{"version": 99}"#).unwrap();
        assert!(matches!(
            read(&dir).unwrap_err(),
            StateError::Version { found: 99, .. }
        ));
    }

    #[test]
    fn remove_is_idempotent() {
        let root = tempfile::tempdir().unwrap();
        let dir = vm_dir(root.path(), "iv-y");
        write(&dir, &sample()).unwrap();
        fs::write(dir.join("dnsmasq.leases"), b"").unwrap();
        remove(&dir).unwrap();
        assert!(!dir.exists());
        remove(&dir).unwrap();
    }
}
