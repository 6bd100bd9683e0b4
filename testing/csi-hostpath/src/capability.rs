//! Volume capabilities: which kind of volume (filesystem or raw block) a request asks
//! for, and whether its access mode is one a node-local volume can give.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::proto::csi::volume_capability::access_mode::Mode;
use crate::proto::csi::volume_capability::AccessType;
use crate::proto::csi::VolumeCapability;

/// What a volume is, and how it is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeKind {
    /// A directory, bind-mounted onto the target directory.
    Mount,
    /// An image file behind a loop device, whose node is bind-mounted onto the target
    /// file.
    Block,
}

impl fmt::Display for VolumeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Mount => "filesystem (mount)",
            Self::Block => "raw block",
        })
    }
}

/// Why a capability is refused. All are `INVALID_ARGUMENT`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapabilityError {
    /// The request has no capability at all.
    #[error("volume_capabilities is empty")]
    None,
    /// A capability has neither `mount` nor `block`.
    #[error("volume capability {index} has no access type (mount or block)")]
    NoAccessType {
        /// Its position in the request.
        index: usize,
    },
    /// A capability has no access mode, or mode UNKNOWN.
    #[error("volume capability {index} has no access mode")]
    NoAccessMode {
        /// Its position in the request.
        index: usize,
    },
    /// The mode needs more than one node, or is not a mode at all.
    #[error(
        "access mode {mode} is not supported: volumes of this driver are local to one node \
         (supported: SINGLE_NODE_WRITER, SINGLE_NODE_READER_ONLY, SINGLE_NODE_SINGLE_WRITER, \
         SINGLE_NODE_MULTI_WRITER)"
    )]
    UnsupportedMode {
        /// The mode's name, or its number when unknown.
        mode: String,
    },
    /// The request asks for both a filesystem and a block volume.
    #[error("volume capabilities mix block and mount access types")]
    MixedKinds,
}

impl From<CapabilityError> for tonic::Status {
    fn from(error: CapabilityError) -> Self {
        tonic::Status::invalid_argument(error.to_string())
    }
}

fn check_mode(index: usize, capability: &VolumeCapability) -> Result<(), CapabilityError> {
    let raw = capability
        .access_mode
        .as_ref()
        .map(|m| m.mode)
        .ok_or(CapabilityError::NoAccessMode { index })?;
    match Mode::try_from(raw) {
        Ok(Mode::Unknown) => Err(CapabilityError::NoAccessMode { index }),
        Ok(
            Mode::SingleNodeWriter
            | Mode::SingleNodeReaderOnly
            | Mode::SingleNodeSingleWriter
            | Mode::SingleNodeMultiWriter,
        ) => Ok(()),
        Ok(other) => Err(CapabilityError::UnsupportedMode {
            mode: other.as_str_name().to_owned(),
        }),
        Err(_) => Err(CapabilityError::UnsupportedMode {
            mode: format!("number {raw}"),
        }),
    }
}

/// The kind `capability` asks for, after checking its access mode. `index` is its
/// position in the request, for the error.
pub fn kind_of(index: usize, capability: &VolumeCapability) -> Result<VolumeKind, CapabilityError> {
    let kind = match capability.access_type {
        Some(AccessType::Mount(_)) => VolumeKind::Mount,
        Some(AccessType::Block(_)) => VolumeKind::Block,
        None => return Err(CapabilityError::NoAccessType { index }),
    };
    check_mode(index, capability)?;
    Ok(kind)
}

/// The one kind all of `capabilities` ask for.
pub fn kind_of_all(capabilities: &[VolumeCapability]) -> Result<VolumeKind, CapabilityError> {
    let mut kind = None;
    for (index, capability) in capabilities.iter().enumerate() {
        let this = kind_of(index, capability)?;
        if kind.is_some_and(|k| k != this) {
            return Err(CapabilityError::MixedKinds);
        }
        kind = Some(this);
    }
    kind.ok_or(CapabilityError::None)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::proto::csi::volume_capability::{AccessMode, BlockVolume, MountVolume};

    pub(crate) fn capability(kind: VolumeKind, mode: Mode) -> VolumeCapability {
        VolumeCapability {
            access_type: Some(match kind {
                VolumeKind::Mount => AccessType::Mount(MountVolume::default()),
                VolumeKind::Block => AccessType::Block(BlockVolume {}),
            }),
            access_mode: Some(AccessMode { mode: mode.into() }),
        }
    }

    #[test]
    fn single_node_modes_are_accepted() {
        for mode in [
            Mode::SingleNodeWriter,
            Mode::SingleNodeReaderOnly,
            Mode::SingleNodeSingleWriter,
            Mode::SingleNodeMultiWriter,
        ] {
            assert_eq!(
                kind_of(0, &capability(VolumeKind::Block, mode)),
                Ok(VolumeKind::Block)
            );
            assert_eq!(
                kind_of(0, &capability(VolumeKind::Mount, mode)),
                Ok(VolumeKind::Mount)
            );
        }
    }

    #[test]
    fn multi_node_modes_are_refused_by_name() {
        for mode in [
            Mode::MultiNodeReaderOnly,
            Mode::MultiNodeSingleWriter,
            Mode::MultiNodeMultiWriter,
        ] {
            let e = kind_of(0, &capability(VolumeKind::Mount, mode)).unwrap_err();
            assert!(e.to_string().contains(mode.as_str_name()), "{e}");
            assert_eq!(tonic::Status::from(e).code(), tonic::Code::InvalidArgument);
        }
        let mut odd = capability(VolumeKind::Mount, Mode::SingleNodeWriter);
        odd.access_mode = Some(AccessMode { mode: 42 });
        assert!(kind_of(0, &odd).unwrap_err().to_string().contains("42"));
    }

    #[test]
    fn missing_parts_are_refused() {
        let mut c = capability(VolumeKind::Mount, Mode::SingleNodeWriter);
        c.access_type = None;
        assert_eq!(
            kind_of(2, &c),
            Err(CapabilityError::NoAccessType { index: 2 })
        );
        let mut c = capability(VolumeKind::Mount, Mode::SingleNodeWriter);
        c.access_mode = None;
        assert_eq!(
            kind_of(1, &c),
            Err(CapabilityError::NoAccessMode { index: 1 })
        );
        let c = capability(VolumeKind::Mount, Mode::Unknown);
        assert_eq!(
            kind_of(0, &c),
            Err(CapabilityError::NoAccessMode { index: 0 })
        );
        assert_eq!(kind_of_all(&[]), Err(CapabilityError::None));
    }

    #[test]
    fn block_and_mount_do_not_mix() {
        let both = [
            capability(VolumeKind::Mount, Mode::SingleNodeWriter),
            capability(VolumeKind::Block, Mode::SingleNodeWriter),
        ];
        assert_eq!(kind_of_all(&both), Err(CapabilityError::MixedKinds));
        let same = [
            capability(VolumeKind::Block, Mode::SingleNodeWriter),
            capability(VolumeKind::Block, Mode::SingleNodeReaderOnly),
        ];
        assert_eq!(kind_of_all(&same), Ok(VolumeKind::Block));
    }
}
