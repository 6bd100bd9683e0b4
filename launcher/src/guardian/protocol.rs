//! What the launcher tells its socket guardian over the pipe: one line per message.
//!
//! ```text
//! watch <dev> <ino> <path as hex bytes>\n   a socket the launcher bound
//! release\n                                 the launcher cleaned up itself: exit, touch nothing
//! ```
//!
//! Paths are hex-encoded so any byte (a newline too) survives. A line is at most a few
//! hundred bytes, well below `PIPE_BUF`, so every write is atomic.

use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Why a line from the launcher could not be understood.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    /// The line does not end with a newline (the launcher died while writing it).
    #[error("incomplete message")]
    Incomplete,
    /// Not a known message.
    #[error("unknown message {0:?}")]
    Unknown(String),
    /// A field is missing or malformed.
    #[error("malformed {field} in a watch message")]
    Malformed {
        /// The field.
        field: &'static str,
    },
}

/// A socket file the launcher bound: its path and the identity of the file it created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchedSocket {
    /// Absolute path of the socket.
    pub path: PathBuf,
    /// Device of the socket file.
    pub dev: u64,
    /// Inode of the socket file.
    pub ino: u64,
}

/// What happened to a watched socket at cleanup.
#[derive(Debug, PartialEq, Eq)]
pub enum Cleanup {
    /// It was still the launcher's socket and is gone now.
    Removed,
    /// Nothing is at the path any more.
    AlreadyGone,
    /// Another file (a newer launcher's socket, say) is there now; it was left alone.
    Replaced,
}

impl WatchedSocket {
    /// The socket file at `path` as it is now.
    pub fn at(path: &Path) -> io::Result<Self> {
        let meta = std::fs::symlink_metadata(path)?;
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the path is not a socket",
            ));
        }
        Ok(Self {
            path: path.to_path_buf(),
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    /// Whether the socket file is still the very file the launcher created (same device
    /// and inode, still a socket).
    pub fn is_unchanged(&self) -> bool {
        std::fs::symlink_metadata(&self.path).is_ok_and(|meta| {
            meta.file_type().is_socket() && meta.dev() == self.dev && meta.ino() == self.ino
        })
    }

    /// Removes the socket file if it is still the very file the launcher created (same
    /// device and inode, still a socket).
    pub fn remove_if_unchanged(&self) -> io::Result<Cleanup> {
        let meta = match std::fs::symlink_metadata(&self.path) {
            Ok(meta) => meta,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Cleanup::AlreadyGone),
            Err(err) => return Err(err),
        };
        if !meta.file_type().is_socket() || meta.dev() != self.dev || meta.ino() != self.ino {
            return Ok(Cleanup::Replaced);
        }
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(Cleanup::Removed),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(Cleanup::AlreadyGone),
            Err(err) => Err(err),
        }
    }
}

/// One message from the launcher to the guardian.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Remove this socket when the launcher dies.
    Watch(WatchedSocket),
    /// The launcher is exiting normally and has cleaned up: exit without touching files.
    Release,
}

impl Message {
    /// The line to write, newline included.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Message::Release => b"release\n".to_vec(),
            Message::Watch(socket) => {
                let mut line = format!("watch {} {} ", socket.dev, socket.ino).into_bytes();
                line.extend(hex(socket.path.as_os_str().as_bytes()));
                line.push(b'\n');
                line
            }
        }
    }

    /// Parses one line, newline included.
    pub fn decode(line: &[u8]) -> Result<Self, ProtocolError> {
        let line = line.strip_suffix(b"\n").ok_or(ProtocolError::Incomplete)?;
        let mut fields = line.split(|b| *b == b' ');
        let kind = fields.next().unwrap_or_default();
        match kind {
            b"release" => Ok(Message::Release),
            b"watch" => {
                let dev = number(fields.next(), "device")?;
                let ino = number(fields.next(), "inode")?;
                let path = fields
                    .next()
                    .and_then(unhex)
                    .filter(|bytes| bytes.first() == Some(&b'/'))
                    .ok_or(ProtocolError::Malformed { field: "path" })?;
                if fields.next().is_some() {
                    return Err(ProtocolError::Malformed { field: "end" });
                }
                Ok(Message::Watch(WatchedSocket {
                    path: PathBuf::from(OsString::from_vec(path)),
                    dev,
                    ino,
                }))
            }
            other => Err(ProtocolError::Unknown(
                String::from_utf8_lossy(other).into_owned(),
            )),
        }
    }
}

fn number(field: Option<&[u8]>, name: &'static str) -> Result<u64, ProtocolError> {
    field
        .and_then(|bytes| std::str::from_utf8(bytes).ok())
        .and_then(|text| text.parse().ok())
        .ok_or(ProtocolError::Malformed { field: name })
}

fn hex(bytes: &[u8]) -> impl Iterator<Item = u8> + '_ {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    bytes
        .iter()
        .flat_map(|b| [DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 0xf)]])
}

fn unhex(text: &[u8]) -> Option<Vec<u8>> {
    if text.is_empty() || !text.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| {
        char::from(c)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    };
    text.chunks(2)
        .map(|pair| Some((digit(pair[0])? << 4) | digit(pair[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watch(path: &[u8]) -> Message {
        Message::Watch(WatchedSocket {
            path: PathBuf::from(OsString::from_vec(path.to_vec())),
            dev: 2049,
            ino: 1_234_567,
        })
    }

    #[test]
    fn messages_round_trip() {
        for msg in [
            Message::Release,
            watch(b"/run/iv/hard.api"),
            // Spaces, newlines and non-UTF-8 bytes survive the hex encoding.
            watch(b"/tmp/a b\nc\xff.sock"),
        ] {
            let line = msg.encode();
            assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
            assert_eq!(Message::decode(&line).unwrap(), msg);
        }
    }

    #[test]
    fn bad_lines_are_rejected() {
        assert_eq!(
            Message::decode(b"watch 1 2 2f61"),
            Err(ProtocolError::Incomplete)
        );
        assert!(matches!(
            Message::decode(b"hello\n"),
            Err(ProtocolError::Unknown(_))
        ));
        for line in [
            &b"watch x 2 2f61\n"[..],
            b"watch 1 2\n",
            b"watch 1 2 2f6\n",
            b"watch 1 2 zz\n",
            // Relative paths would depend on the guardian's working directory.
            b"watch 1 2 61\n",
            b"watch 1 2 2f61 extra\n",
        ] {
            assert!(
                matches!(Message::decode(line), Err(ProtocolError::Malformed { .. })),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn cleanup_removes_only_the_same_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let first = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let watched = WatchedSocket::at(&path).unwrap();
        drop(first);
        std::fs::remove_file(&path).unwrap();
        let _second = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let mut stale = watched.clone();
        if WatchedSocket::at(&path).unwrap() == watched {
            // The filesystem reused the inode number; make the identities differ.
            stale.ino = stale.ino.wrapping_add(1);
        }
        assert!(!stale.is_unchanged());
        assert_eq!(stale.remove_if_unchanged().unwrap(), Cleanup::Replaced);
        assert!(path.exists());
        let current = WatchedSocket::at(&path).unwrap();
        assert!(current.is_unchanged());
        assert_eq!(current.remove_if_unchanged().unwrap(), Cleanup::Removed);
        assert!(!current.is_unchanged());
        assert_eq!(current.remove_if_unchanged().unwrap(), Cleanup::AlreadyGone);
    }

    #[test]
    fn only_sockets_can_be_watched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("file");
        std::fs::write(&path, b"").unwrap();
        assert!(WatchedSocket::at(&path).is_err());
    }
}
