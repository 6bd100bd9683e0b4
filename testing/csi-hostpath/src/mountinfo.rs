//! The mount table of this process's mount namespace (`/proc/self/mountinfo`): what is
//! mounted at a path, and where a file or directory is bind-mounted.
//!
//! A bind mount shows in mountinfo as the source's filesystem (`major:minor`) and the
//! source's path inside that filesystem (the root field). So a path's own location —
//! the mount it lies under, that mount's root, plus the rest of the path — identifies
//! every mount of it, whatever the mount point.

use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// Where the kernel shows this process's mounts.
pub const SELF_MOUNTINFO: &str = "/proc/self/mountinfo";

/// Why the mount table could not be read.
#[derive(Debug, thiserror::Error)]
pub enum MountInfoError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A line does not have the mountinfo fields.
    #[error("line {number} of the mount table is malformed: {line:?}")]
    Malformed {
        /// 1-based line number.
        number: usize,
        /// The line.
        line: String,
    },
}

impl From<MountInfoError> for tonic::Status {
    fn from(error: MountInfoError) -> Self {
        tonic::Status::internal(error.to_string())
    }
}

/// A filesystem (`major`, `minor`) and a path inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsLocation {
    /// The filesystem's device number.
    pub device: (u32, u32),
    /// The path relative to the filesystem's root.
    pub root: PathBuf,
}

/// One line of mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// What is mounted: the filesystem and the path inside it.
    pub source: FsLocation,
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// Per-mount options (`rw`/`ro`, `nosuid`, …).
    pub options: Vec<String>,
}

impl MountEntry {
    /// Whether the mount is read-only.
    pub fn read_only(&self) -> bool {
        self.options.iter().any(|o| o == "ro")
    }
}

/// Decodes mountinfo's octal escapes (`\040` for a space, `\134` for a backslash…).
fn unescape(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                let value = d.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                out.push(u8::try_from(value).unwrap_or(b'?'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    PathBuf::from(OsString::from_vec(out))
}

fn parse_line(line: &str) -> Option<MountEntry> {
    let mut fields = line.split(' ');
    let _id = fields.next()?;
    let _parent = fields.next()?;
    let (major, minor) = fields.next()?.split_once(':')?;
    let device = (major.parse().ok()?, minor.parse().ok()?);
    let root = unescape(fields.next()?);
    let mount_point = unescape(fields.next()?);
    let options = fields.next()?.split(',').map(str::to_owned).collect();
    // Optional fields up to the separator, then type, source and super options.
    if !fields.any(|f| f == "-") {
        return None;
    }
    Some(MountEntry {
        source: FsLocation { device, root },
        mount_point,
        options,
    })
}

/// A snapshot of a mount table.
#[derive(Debug, Clone, Default)]
pub struct MountTable {
    entries: Vec<MountEntry>,
}

impl MountTable {
    /// Parses mountinfo text.
    pub fn parse(text: &str) -> Result<Self, MountInfoError> {
        let entries = text
            .lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(i, line)| {
                parse_line(line).ok_or_else(|| MountInfoError::Malformed {
                    number: i + 1,
                    line: line.to_owned(),
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { entries })
    }

    /// The mount table of this process now.
    pub fn read() -> Result<Self, MountInfoError> {
        let text =
            std::fs::read_to_string(SELF_MOUNTINFO).map_err(|source| MountInfoError::Read {
                path: SELF_MOUNTINFO,
                source,
            })?;
        Self::parse(&text)
    }

    /// The entries, in mount order.
    pub fn entries(&self) -> &[MountEntry] {
        &self.entries
    }

    /// The topmost mount at `path` (absolute, symlinks resolved), if any.
    pub fn top_at(&self, path: &Path) -> Option<&MountEntry> {
        self.entries.iter().rev().find(|e| e.mount_point == path)
    }

    /// Where `path` (absolute, symlinks resolved) lies: the mount it is under and the
    /// path inside that mount's filesystem.
    pub fn location(&self, path: &Path) -> Option<FsLocation> {
        let (entry, rest) = self
            .entries
            .iter()
            .filter_map(|e| Some((e, path.strip_prefix(&e.mount_point).ok()?)))
            .fold(None::<(&MountEntry, &Path)>, |best, (e, rest)| match best {
                Some((b, _))
                    if b.mount_point.components().count() > e.mount_point.components().count() =>
                {
                    best
                }
                _ => Some((e, rest)),
            })?;
        let root = if rest.as_os_str().is_empty() {
            entry.source.root.clone()
        } else {
            entry.source.root.join(rest)
        };
        Some(FsLocation {
            device: entry.source.device,
            root,
        })
    }

    /// The mounts that show the file or directory at `path` (absolute, symlinks
    /// resolved), other than a mount at `path` itself.
    pub fn bind_mounts_of(&self, path: &Path) -> Vec<&MountEntry> {
        let Some(location) = self.location(path) else {
            return Vec::new();
        };
        self.entries
            .iter()
            .filter(|e| e.source == location && e.mount_point != path)
            .collect()
    }

    /// Whether the topmost mount at `target` shows `source` (both absolute, symlinks
    /// resolved).
    pub fn is_bind_of(&self, target: &Path, source: &Path) -> Option<&MountEntry> {
        let top = self.top_at(target)?;
        (Some(&top.source) == self.location(source).as_ref()).then_some(top)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "\
22 27 0:21 / /proc rw,relatime shared:4 - proc proc rw
24 27 0:6 / /dev rw,relatime shared:17 - devtmpfs devtmpfs rw,size=1k
27 1 254:0 / / rw,relatime shared:2 - ext4 /dev/vda rw
50 27 254:0 /srv/csi /csi-data rw,relatime shared:30 - ext4 /dev/vda rw
61 27 254:0 /srv/csi/pvc-1 /var/lib/kubelet/pods/u1/volumes/mount rw,relatime shared:40 - ext4 /dev/vda rw
62 27 254:0 /srv/csi/pvc-1 /var/lib/kubelet/pods/u2/volumes/ro\\040dir ro,relatime - ext4 /dev/vda rw
70 27 0:6 /loop3 /var/lib/kubelet/plugins/publish/pvc-2/u3 rw,nosuid - devtmpfs devtmpfs rw
";

    fn table() -> MountTable {
        MountTable::parse(TABLE).unwrap()
    }

    #[test]
    fn parses_fields_and_escapes() {
        let t = table();
        assert_eq!(t.entries().len(), 7);
        let e = &t.entries()[5];
        assert_eq!(e.source.device, (254, 0));
        assert_eq!(e.source.root, Path::new("/srv/csi/pvc-1"));
        assert_eq!(
            e.mount_point,
            Path::new("/var/lib/kubelet/pods/u2/volumes/ro dir")
        );
        assert!(e.read_only());
        assert!(!t.entries()[4].read_only());
    }

    #[test]
    fn a_path_is_located_under_its_longest_mount() {
        let t = table();
        assert_eq!(
            t.location(Path::new("/csi-data/pvc-1")),
            Some(FsLocation {
                device: (254, 0),
                root: PathBuf::from("/srv/csi/pvc-1")
            })
        );
        assert_eq!(
            t.location(Path::new("/dev/loop3")).map(|l| l.root),
            Some(PathBuf::from("/loop3"))
        );
        assert_eq!(
            t.location(Path::new("/csi-data")).map(|l| l.root),
            Some(PathBuf::from("/srv/csi"))
        );
        assert_eq!(
            t.location(Path::new("/etc/hosts")).map(|l| l.root),
            Some(PathBuf::from("/etc/hosts"))
        );
    }

    #[test]
    fn finds_every_bind_mount_of_a_directory_and_a_device_node() {
        let t = table();
        let binds: Vec<_> = t
            .bind_mounts_of(Path::new("/csi-data/pvc-1"))
            .iter()
            .map(|e| e.mount_point.clone())
            .collect();
        assert_eq!(
            binds,
            [
                PathBuf::from("/var/lib/kubelet/pods/u1/volumes/mount"),
                PathBuf::from("/var/lib/kubelet/pods/u2/volumes/ro dir"),
            ]
        );
        assert_eq!(t.bind_mounts_of(Path::new("/dev/loop3")).len(), 1);
        assert!(t.bind_mounts_of(Path::new("/csi-data/pvc-9")).is_empty());
        assert!(t.bind_mounts_of(Path::new("/dev/loop0")).is_empty());
    }

    #[test]
    fn tells_what_a_target_shows() {
        let t = table();
        let target = Path::new("/var/lib/kubelet/pods/u1/volumes/mount");
        assert!(t.is_bind_of(target, Path::new("/csi-data/pvc-1")).is_some());
        assert!(t.is_bind_of(target, Path::new("/csi-data/pvc-2")).is_none());
        assert!(t.top_at(Path::new("/var/lib/kubelet")).is_none());
        assert!(t.top_at(Path::new("/dev")).is_some());
    }

    #[test]
    fn a_malformed_line_is_an_error_naming_it() {
        let e = MountTable::parse("27 1 254:0 / /\n").unwrap_err();
        assert!(
            matches!(e, MountInfoError::Malformed { number: 1, .. }),
            "{e}"
        );
        assert!(MountTable::parse("").unwrap().entries().is_empty());
    }

    #[test]
    fn the_real_table_parses_and_has_a_root() {
        let t = MountTable::read().unwrap();
        assert!(t.top_at(Path::new("/")).is_some());
    }
}
