//! Crash- and ENOSPC-safe file creation: build under a temporary name in the target
//! directory, sync, then move into place, so a reader never sees a half-made file.
//!
//! These helpers return plain [`io::Error`]s; callers attach the volume and path.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

/// How the finished file is moved to its final name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Publish {
    /// Fail with [`io::ErrorKind::AlreadyExists`] if the final name exists (hard link, then
    /// unlink the temporary): used for files whose contents must never be replaced.
    NoReplace,
    /// Atomically replace whatever is at the final name (rename).
    Replace,
}

/// The temporary name used while building `path`: `dir/.name.tmp`. It is deterministic so
/// that a leftover from a crash is found (and removed) by the next attempt and by cleanup.
pub(crate) fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}

/// Creates `path` by running `fill` on a fresh temporary file next to it, syncing it and
/// publishing it under its final name. On any error the temporary file is removed and
/// nothing appears at `path`.
pub(crate) fn create_atomically<F>(path: &Path, publish: Publish, fill: F) -> io::Result<()>
where
    F: FnOnce(&mut File) -> io::Result<()>,
{
    let tmp = temp_path(path);
    remove_if_exists(&tmp)?;
    let result = build_and_publish(&tmp, path, publish, fill);
    if result.is_err() {
        if let Err(e) = remove_if_exists(&tmp) {
            tracing::warn!(tmp = %tmp.display(), error = %e, "cannot remove temporary file");
        }
    }
    result
}

fn build_and_publish<F>(tmp: &Path, path: &Path, publish: Publish, fill: F) -> io::Result<()>
where
    F: FnOnce(&mut File) -> io::Result<()>,
{
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(tmp)?;
    fill(&mut file)?;
    file.sync_all()?;
    drop(file);
    match publish {
        Publish::Replace => fs::rename(tmp, path)?,
        Publish::NoReplace => {
            fs::hard_link(tmp, path)?;
            fs::remove_file(tmp)?;
        }
    }
    sync_parent(path)
}

/// Creates a sparse file of `len` bytes at `path` (never replacing an existing one).
pub(crate) fn create_sparse(path: &Path, len: u64) -> io::Result<()> {
    create_atomically(path, Publish::NoReplace, |file| file.set_len(len))
}

/// Removes `path`; a missing file is not an error.
pub(crate) fn remove_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Syncs the directory holding `path`, so a new or removed name survives a crash.
pub(crate) fn sync_parent(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

/// True if the error means the filesystem is full or the user is over quota.
pub(crate) fn is_no_space(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
        || err.kind() == io::ErrorKind::StorageFull
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn sparse_file_has_size_but_no_blocks() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.img");
        create_sparse(&path, 1 << 30).unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 1 << 30);
        assert!(
            meta.blocks() < 64,
            "file is not sparse: {} blocks",
            meta.blocks()
        );
        assert!(!temp_path(&path).exists());
    }

    #[test]
    fn no_replace_keeps_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        fs::write(&path, b"data").unwrap();
        let err = create_sparse(&path, 10).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&path).unwrap(), b"data");
        assert!(!temp_path(&path).exists());
    }

    #[test]
    fn replace_swaps_contents_and_failure_leaves_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        create_atomically(&path, Publish::Replace, |f| f.write_all(b"one")).unwrap();
        create_atomically(&path, Publish::Replace, |f| f.write_all(b"two")).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let err = create_atomically(&path, Publish::Replace, |f| {
            f.write_all(b"half")?;
            Err(io::Error::other("boom"))
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "boom");
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert!(!temp_path(&path).exists());
    }

    #[test]
    fn stale_temporary_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        fs::write(temp_path(&path), b"leftover").unwrap();
        create_sparse(&path, 512).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().len(), 512);
        assert!(!temp_path(&path).exists());
    }

    #[test]
    fn enospc_is_recognised() {
        assert!(is_no_space(&io::Error::from_raw_os_error(libc::ENOSPC)));
        assert!(is_no_space(&io::Error::from_raw_os_error(libc::EDQUOT)));
        assert!(!is_no_space(&io::Error::from_raw_os_error(libc::EIO)));
    }
}
