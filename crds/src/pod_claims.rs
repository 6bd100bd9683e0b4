//! How a launcher pod is told what its `persistentVolumeClaim` volumes are: the controller
//! reads each claim and passes one `--claim` argument per volume to the pod's
//! `virt-launcher`, which cannot read the claim itself (the pod has no API access).
//!
//! | claim `volumeMode` | in the pod | argument |
//! |---|---|---|
//! | `Filesystem` | the volume mounted at [`CLAIM_MOUNTS_DIR`]`/<volume>/`; the disk is its `disk.img`, created at the claim's size when absent | `<volume>=filesystem:<bytes>` |
//! | `Block` | the raw device at [`CLAIM_DEVICES_DIR`]`/<volume>` | `<volume>=block` |
//!
//! (KubeVirt's convention for Filesystem claims is the same `disk.img`.)

use std::fmt;
use std::str::FromStr;

/// Where the compute container sees each Filesystem claim: `<dir>/<volume>/`.
pub const CLAIM_MOUNTS_DIR: &str = "/var/run/ironvisor/claims";
/// Where the compute container sees each Block claim's device: `<dir>/<volume>`.
pub const CLAIM_DEVICES_DIR: &str = "/var/run/ironvisor/claim-devices";
/// The disk file on a Filesystem claim.
pub const CLAIM_DISK_FILE: &str = "disk.img";

/// A claim as the pod gets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimMode {
    /// A file system; the disk is a file on it of at most this many bytes.
    Filesystem {
        /// The claim's size.
        capacity_bytes: u64,
    },
    /// A raw block device that is the disk.
    Block,
}

/// One `--claim` argument: a volume and its claim's mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodClaim {
    /// The instance's volume name.
    pub volume: String,
    /// How the claim reaches the pod.
    pub mode: ClaimMode,
}

/// A `--claim` argument that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--claim {argument:?}: {problem} (expected VOLUME=filesystem:BYTES or VOLUME=block)")]
pub struct PodClaimError {
    /// The argument as given.
    pub argument: String,
    /// What is wrong with it.
    pub problem: &'static str,
}

impl fmt::Display for PodClaim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.mode {
            ClaimMode::Filesystem { capacity_bytes } => {
                write!(f, "{}=filesystem:{capacity_bytes}", self.volume)
            }
            ClaimMode::Block => write!(f, "{}=block", self.volume),
        }
    }
}

impl FromStr for PodClaim {
    type Err = PodClaimError;

    fn from_str(argument: &str) -> Result<Self, Self::Err> {
        let fail = |problem| PodClaimError {
            argument: argument.to_string(),
            problem,
        };
        let (volume, mode) = argument.split_once('=').ok_or_else(|| fail("no '='"))?;
        if volume.is_empty() {
            return Err(fail("no volume name"));
        }
        let mode = match mode.split_once(':') {
            None if mode == "block" => ClaimMode::Block,
            Some(("filesystem", bytes)) => ClaimMode::Filesystem {
                capacity_bytes: bytes
                    .parse()
                    .ok()
                    .filter(|b| *b > 0)
                    .ok_or_else(|| fail("the size is not a positive number of bytes"))?,
            },
            _ => return Err(fail("unknown mode")),
        };
        Ok(Self {
            volume: volume.to_string(),
            mode,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_round_trip() {
        for claim in [
            PodClaim {
                volume: "data".into(),
                mode: ClaimMode::Filesystem {
                    capacity_bytes: 1 << 30,
                },
            },
            PodClaim {
                volume: "raw".into(),
                mode: ClaimMode::Block,
            },
        ] {
            assert_eq!(claim.to_string().parse::<PodClaim>().unwrap(), claim);
        }
        assert_eq!(
            PodClaim {
                volume: "data".into(),
                mode: ClaimMode::Filesystem { capacity_bytes: 5 }
            }
            .to_string(),
            "data=filesystem:5"
        );
    }

    #[test]
    fn bad_arguments_are_refused_naming_them() {
        for bad in [
            "data",
            "=block",
            "data=file",
            "data=filesystem:",
            "data=filesystem:0",
            "data=filesystem:-1",
            "data=block:5",
        ] {
            let error = bad.parse::<PodClaim>().unwrap_err();
            assert!(error.to_string().contains(bad), "{error}");
        }
    }
}
