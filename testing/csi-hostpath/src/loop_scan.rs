//! Which loop devices are attached, and to what: `/sys/block/loopN/loop/backing_file`
//! exists while `loopN` has a backing file and holds its path (with ` (deleted)`
//! appended once the file is unlinked).

use std::io;
use std::path::{Path, PathBuf};

/// Where the kernel lists block devices.
pub const SYS_BLOCK: &str = "/sys/block";

const DELETED_SUFFIX: &str = " (deleted)";

/// Why the scan failed.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// The block-device directory could not be listed.
    #[error("cannot list {path}: {source}", path = path.display())]
    List {
        /// The directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

impl From<ScanError> for tonic::Status {
    fn from(error: ScanError) -> Self {
        tonic::Status::internal(error.to_string())
    }
}

/// An attached loop device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedLoop {
    /// N of `loopN`.
    pub index: u32,
    /// The backing file's path, as the kernel shows it to this process.
    pub backing_file: PathBuf,
    /// Whether the backing file has been unlinked.
    pub deleted: bool,
}

/// Reads the text of a `backing_file` attribute: the path and whether it was unlinked.
pub fn parse_backing_file(text: &str) -> (PathBuf, bool) {
    let text = text.strip_suffix('\n').unwrap_or(text);
    match text.strip_suffix(DELETED_SUFFIX) {
        Some(path) => (PathBuf::from(path), true),
        None => (PathBuf::from(text), false),
    }
}

fn loop_index(name: &str) -> Option<u32> {
    let digits = name.strip_prefix("loop")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The attached loop devices listed under `sys_block` (normally [`SYS_BLOCK`]), by
/// index. A device detached during the scan is left out.
pub fn attached_loops(sys_block: &Path) -> Result<Vec<AttachedLoop>, ScanError> {
    let entries = std::fs::read_dir(sys_block).map_err(|source| ScanError::List {
        path: sys_block.to_path_buf(),
        source,
    })?;
    let mut found: Vec<AttachedLoop> = entries
        .flatten()
        .filter_map(|entry| {
            let index = loop_index(entry.file_name().to_str()?)?;
            let text = std::fs::read_to_string(entry.path().join("loop/backing_file")).ok()?;
            let (backing_file, deleted) = parse_backing_file(&text);
            Some(AttachedLoop {
                index,
                backing_file,
                deleted,
            })
        })
        .collect();
    found.sort_by_key(|l| l.index);
    Ok(found)
}

/// The indexes of the loops in `loops` whose backing file is `path` (not unlinked).
pub fn backed_by(loops: &[AttachedLoop], path: &Path) -> Vec<u32> {
    loops
        .iter()
        .filter(|l| !l.deleted && l.backing_file == path)
        .map(|l| l.index)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_loop(root: &Path, name: &str, backing: Option<&str>) {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        if let Some(backing) = backing {
            std::fs::create_dir_all(dir.join("loop")).unwrap();
            std::fs::write(dir.join("loop/backing_file"), backing).unwrap();
        }
    }

    #[test]
    fn lists_attached_loops_only_by_index() {
        let sys = tempfile::tempdir().unwrap();
        fake_loop(sys.path(), "loop10", Some("/data/b.img\n"));
        fake_loop(sys.path(), "loop2", Some("/data/a.img\n"));
        fake_loop(sys.path(), "loop3", None);
        fake_loop(sys.path(), "loop4", Some("/data/gone.img (deleted)\n"));
        fake_loop(sys.path(), "vda", Some("/not/a/loop\n"));
        fake_loop(sys.path(), "loopx", Some("/not/a/loop\n"));
        let loops = attached_loops(sys.path()).unwrap();
        assert_eq!(
            loops,
            [
                AttachedLoop {
                    index: 2,
                    backing_file: "/data/a.img".into(),
                    deleted: false
                },
                AttachedLoop {
                    index: 4,
                    backing_file: "/data/gone.img".into(),
                    deleted: true
                },
                AttachedLoop {
                    index: 10,
                    backing_file: "/data/b.img".into(),
                    deleted: false
                },
            ]
        );
        assert_eq!(backed_by(&loops, Path::new("/data/a.img")), [2]);
        assert!(backed_by(&loops, Path::new("/data/gone.img")).is_empty());
        assert!(backed_by(&loops, Path::new("/data/c.img")).is_empty());
    }

    #[test]
    fn parses_the_attribute_text() {
        assert_eq!(
            parse_backing_file("/a b.img\n"),
            (PathBuf::from("/a b.img"), false)
        );
        assert_eq!(
            parse_backing_file("/x.img (deleted)"),
            (PathBuf::from("/x.img"), true)
        );
    }

    #[test]
    fn a_missing_sysfs_is_an_error_naming_it() {
        let e = attached_loops(Path::new("/nonexistent/sys/block")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/sys/block"), "{e}");
    }
}
