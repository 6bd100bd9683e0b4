//! Volume ids: derived from the CreateVolume name, and safe as a file name in the data
//! directory.
//!
//! A name made of ASCII letters, digits, `-` and `.` (every PersistentVolume name,
//! `pvc-<uuid>`, is) is its own id. Any other byte, `_` included, becomes `_` and two
//! lowercase hex digits, and so does a leading `.`; the mapping is therefore one to one,
//! and no id contains `/` or NUL, is `.` or `..`, or starts with `.` (the data
//! directory's temporary files do).

use std::fmt;

/// Longest id, in bytes: the limit CSI sets on a volume id.
pub const MAX_LEN: usize = 128;

/// Why a name gives no id, or a string is not an id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VolumeIdError {
    /// The name or id is empty.
    #[error("the volume {what} is empty")]
    Empty {
        /// "name" or "id".
        what: &'static str,
    },
    /// The escaped name is longer than [`MAX_LEN`].
    #[error("volume name {name:?} gives an id of {len} bytes, more than {MAX_LEN}")]
    TooLong {
        /// The name.
        name: String,
        /// The id's length.
        len: usize,
    },
    /// The string cannot be an id this driver made.
    #[error("{id:?} is not a volume id of this driver")]
    Malformed {
        /// The string.
        id: String,
    },
}

impl From<VolumeIdError> for tonic::Status {
    fn from(error: VolumeIdError) -> Self {
        tonic::Status::invalid_argument(error.to_string())
    }
}

/// A volume id, valid as a file name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VolumeId(String);

fn kept(byte: u8, first: bool) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'-' || (byte == b'.' && !first)
}

impl VolumeId {
    /// The id of the volume called `name`.
    pub fn from_name(name: &str) -> Result<Self, VolumeIdError> {
        if name.is_empty() {
            return Err(VolumeIdError::Empty { what: "name" });
        }
        let mut id = String::with_capacity(name.len());
        for (i, byte) in name.bytes().enumerate() {
            if kept(byte, i == 0) {
                id.push(char::from(byte));
            } else {
                id.push_str(&format!("_{byte:02x}"));
            }
        }
        if id.len() > MAX_LEN {
            return Err(VolumeIdError::TooLong {
                name: name.to_owned(),
                len: id.len(),
            });
        }
        Ok(Self(id))
    }

    /// `id` as a volume id, if it is one [`VolumeId::from_name`] can make.
    pub fn parse(id: &str) -> Result<Self, VolumeIdError> {
        if id.is_empty() {
            return Err(VolumeIdError::Empty { what: "id" });
        }
        let well_formed = id.len() <= MAX_LEN
            && id
                .bytes()
                .enumerate()
                .all(|(i, b)| kept(b, i == 0) || b == b'_');
        if !well_formed {
            return Err(VolumeIdError::Malformed { id: id.to_owned() });
        }
        Ok(Self(id.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for VolumeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_persistent_volume_name_is_its_own_id() {
        let name = "pvc-0d4c8a5e-3f1b-4c1e-9a57-5c2f7e4b9d10";
        assert_eq!(VolumeId::from_name(name).unwrap().as_str(), name);
        assert_eq!(VolumeId::parse(name).unwrap().as_str(), name);
    }

    #[test]
    fn unsafe_bytes_are_escaped() {
        let id = |name: &str| VolumeId::from_name(name).unwrap().0;
        assert_eq!(id("a/b"), "a_2fb");
        assert_eq!(id(".."), "_2e.");
        assert_eq!(id("."), "_2e");
        assert_eq!(id("../etc"), "_2e._2fetc");
        assert_eq!(id("a\0b"), "a_00b");
        assert_eq!(id("a_b"), "a_5fb");
        assert_eq!(id("é"), "_c3_a9");
        for name in ["a/b", "..", ".", "a\0b", ".hidden", "x y"] {
            let id = id(name);
            assert!(!id.contains('/') && !id.contains('\0') && !id.starts_with('.'));
            assert_eq!(VolumeId::parse(&id).unwrap().0, id);
        }
    }

    #[test]
    fn escaping_is_one_to_one() {
        // "a_2fb" is a name of its own, distinct from "a/b".
        assert_ne!(
            VolumeId::from_name("a_2fb").unwrap(),
            VolumeId::from_name("a/b").unwrap()
        );
    }

    #[test]
    fn empty_and_too_long_names_are_refused() {
        assert_eq!(
            VolumeId::from_name(""),
            Err(VolumeIdError::Empty { what: "name" })
        );
        assert!(VolumeId::from_name(&"a".repeat(MAX_LEN)).is_ok());
        assert!(matches!(
            VolumeId::from_name(&"a".repeat(MAX_LEN + 1)),
            Err(VolumeIdError::TooLong { len: 129, .. })
        ));
        assert!(matches!(
            VolumeId::from_name(&"/".repeat(50)),
            Err(VolumeIdError::TooLong { len: 150, .. })
        ));
    }

    #[test]
    fn ids_that_could_escape_the_data_dir_are_malformed() {
        for id in [
            "..",
            ".",
            "a/b",
            "../x",
            "a\0",
            ".json",
            "x y",
            &"a".repeat(129),
        ] {
            assert!(
                matches!(VolumeId::parse(id), Err(VolumeIdError::Malformed { .. })),
                "{id:?}"
            );
        }
        assert_eq!(
            VolumeId::parse(""),
            Err(VolumeIdError::Empty { what: "id" })
        );
    }
}
