//! Creating qcow2 copy-on-write overlays over a base image.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use imago::file::File as ImagoFile;
use imago::qcow2::Qcow2;
use imago::{FormatCreateBuilder, Storage, StorageCreateOptions};

use crate::{inspect, is_no_space, raw, DiskFormat, DiskImageError, ImageInfo};

/// Creates a qcow2 overlay at `overlay` whose backing file is `base` (in `base_format`).
///
/// The overlay has the base's virtual size and no allocated clusters, so it reads exactly
/// like the base until written; writes land in the overlay and the base is never modified.
/// The header records the base's canonical absolute path and its format, so the overlay
/// opens without format probing wherever the current directory is.
///
/// The file is built under a temporary name in the same directory, synced, and then linked
/// into place, so a crash or a full filesystem never leaves a half-made overlay at
/// `overlay`. An existing `overlay` is never replaced ([`DiskImageError::OverlayExists`]).
pub fn create_overlay(
    overlay: &Path,
    base: &Path,
    base_format: DiskFormat,
) -> Result<ImageInfo, DiskImageError> {
    let _span = tracing::info_span!(
        "create_overlay",
        overlay = %overlay.display(),
        base = %base.display(),
        %base_format
    )
    .entered();
    let base_err = |source: io::Error| DiskImageError::Base {
        path: base.to_path_buf(),
        overlay: overlay.to_path_buf(),
        source,
    };
    let base_abs = fs::canonicalize(base).map_err(base_err)?;
    let base_name = base_abs
        .to_str()
        .ok_or_else(|| {
            base_err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the path is not UTF-8 and cannot be written into a qcow2 header",
            ))
        })?
        .to_owned();
    let virtual_size = match base_format {
        DiskFormat::Raw => raw::file_size(&base_abs)?,
        DiskFormat::Qcow2 => inspect(&base_abs)?.virtual_size,
    };
    if overlay.symlink_metadata().is_ok() {
        return Err(DiskImageError::OverlayExists {
            path: overlay.to_path_buf(),
        });
    }

    let tmp = temp_name(overlay);
    // A temporary left by an earlier crash is ours and incomplete.
    remove_if_exists(&tmp).map_err(|source| create_err(&tmp, source))?;
    let result = write_overlay(&tmp, &base_name, base_format, virtual_size)
        .and_then(|()| publish(&tmp, overlay));
    if result.is_err() {
        if let Err(e) = remove_if_exists(&tmp) {
            tracing::warn!(tmp = %tmp.display(), error = %e, "cannot remove temporary overlay");
        }
    }
    result?;
    tracing::info!(virtual_size, "qcow2 overlay created");
    Ok(ImageInfo {
        format: DiskFormat::Qcow2,
        virtual_size,
        backing_file: Some(base_name),
        backing_format: Some(base_format.as_str().to_owned()),
    })
}

/// `dir/.name.tmp`: hidden, same directory (so the final link is atomic), deterministic (so a
/// leftover from a crash is found and removed by the next attempt).
fn temp_name(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}

fn remove_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn create_err(path: &Path, source: io::Error) -> DiskImageError {
    if is_no_space(&source) {
        DiskImageError::NoSpace {
            path: path.to_path_buf(),
        }
    } else {
        DiskImageError::Create {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Formats `tmp` as an empty qcow2 image backed by `base_name` and syncs it.
fn write_overlay(
    tmp: &Path,
    base_name: &str,
    base_format: DiskFormat,
    virtual_size: u64,
) -> Result<(), DiskImageError> {
    let storage = ImagoFile::create_open(StorageCreateOptions::new().filename(tmp))
        .map_err(|source| create_err(tmp, source))?;
    Qcow2::<ImagoFile>::create_builder(storage)
        .size(virtual_size)
        .backing(base_name.to_owned(), base_format.as_str().to_owned())
        .create()
        .map_err(|source| create_err(tmp, source))?;
    File::open(tmp)
        .and_then(|f| f.sync_all())
        .map_err(|source| create_err(tmp, source))
}

/// Links `tmp` to `overlay` (failing if `overlay` exists), drops the temporary name and
/// syncs the directory so the new entry survives a crash.
fn publish(tmp: &Path, overlay: &Path) -> Result<(), DiskImageError> {
    fs::hard_link(tmp, overlay).map_err(|source| {
        if source.kind() == io::ErrorKind::AlreadyExists {
            DiskImageError::OverlayExists {
                path: overlay.to_path_buf(),
            }
        } else {
            create_err(overlay, source)
        }
    })?;
    fs::remove_file(tmp).map_err(|source| create_err(tmp, source))?;
    let dir = match overlay.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| create_err(dir, source))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{open, open_as, probe};

    fn base_with_pattern(dir: &Path, len: usize) -> PathBuf {
        let path = dir.join("base.img");
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        fs::write(&path, data).unwrap();
        path
    }

    #[test]
    fn overlay_reads_base_and_keeps_writes_to_itself() {
        let dir = tempfile::tempdir().unwrap();
        let base = base_with_pattern(dir.path(), 3 << 20);
        let before = fs::read(&base).unwrap();
        let ov = dir.path().join("vm.qcow2");

        let info = create_overlay(&ov, &base, DiskFormat::Raw).unwrap();
        assert_eq!(info.virtual_size, 3 << 20);
        assert_eq!(probe(&ov).unwrap(), DiskFormat::Qcow2);
        let header = inspect(&ov).unwrap();
        assert_eq!(header.virtual_size, 3 << 20);
        assert_eq!(
            header.backing_file.as_deref(),
            Some(fs::canonicalize(&base).unwrap().to_str().unwrap())
        );
        assert_eq!(header.backing_format.as_deref(), Some("raw"));

        let mut img = open(&ov, false).unwrap();
        assert_eq!(img.format(), DiskFormat::Qcow2);
        assert_eq!(img.size(), 3 << 20);
        // Unwritten: falls through to the base.
        let mut buf = vec![0u8; 8192];
        img.read_at(&mut buf, 100_000).unwrap();
        assert_eq!(buf[..], before[100_000..108_192]);
        // Write across a 64 KiB cluster boundary, unaligned.
        let payload = vec![0xA5u8; 5000];
        img.write_at(&payload, 65536 - 1234).unwrap();
        img.flush().unwrap();
        drop(img);

        let mut img = open_as(&ov, DiskFormat::Qcow2, true).unwrap();
        let mut buf = vec![0u8; 7000];
        img.read_at(&mut buf, 65536 - 2234).unwrap();
        assert_eq!(
            buf[..1000],
            before[65536 - 2234..65536 - 1234],
            "COW kept base bytes"
        );
        assert!(buf[1000..6000].iter().all(|b| *b == 0xA5));
        assert_eq!(buf[6000..], before[65536 + 3766..65536 + 4766]);
        assert_eq!(fs::read(&base).unwrap(), before, "base never modified");
    }

    #[test]
    fn existing_overlay_is_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let base = base_with_pattern(dir.path(), 1 << 20);
        let ov = dir.path().join("vm.qcow2");
        create_overlay(&ov, &base, DiskFormat::Raw).unwrap();
        let mut img = open(&ov, false).unwrap();
        img.write_at(b"keep me", 0).unwrap();
        drop(img);

        let err = create_overlay(&ov, &base, DiskFormat::Raw).unwrap_err();
        assert!(matches!(err, DiskImageError::OverlayExists { .. }), "{err}");
        let mut img = open(&ov, true).unwrap();
        let mut buf = [0u8; 7];
        img.read_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"keep me");
    }

    #[test]
    fn missing_base_names_base_and_overlay_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let ov = dir.path().join("vm.qcow2");
        let err = create_overlay(&ov, &dir.path().join("nope.img"), DiskFormat::Raw).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("nope.img") && msg.contains("vm.qcow2"),
            "{msg}"
        );
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn overlay_over_qcow2_base_chains_two_levels() {
        let dir = tempfile::tempdir().unwrap();
        let raw_base = base_with_pattern(dir.path(), 1 << 20);
        let mid = dir.path().join("mid.qcow2");
        create_overlay(&mid, &raw_base, DiskFormat::Raw).unwrap();
        let mut img = open(&mid, false).unwrap();
        img.write_at(b"middle", 512).unwrap();
        drop(img);

        let top = dir.path().join("top.qcow2");
        let info = create_overlay(&top, &mid, DiskFormat::Qcow2).unwrap();
        assert_eq!(info.virtual_size, 1 << 20);
        let mut img = open(&top, false).unwrap();
        img.write_at(b"top", 0).unwrap();
        let mut buf = [0u8; 520];
        img.read_at(&mut buf, 0).unwrap();
        assert_eq!(&buf[..3], b"top");
        assert_eq!(&buf[3..6], &[3, 4, 5], "raw base shows through two levels");
        assert_eq!(&buf[512..518], b"middle");
    }

    #[test]
    fn stale_temporary_from_a_crash_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let base = base_with_pattern(dir.path(), 1 << 20);
        let ov = dir.path().join("vm.qcow2");
        fs::write(temp_name(&ov), b"half-written garbage").unwrap();
        create_overlay(&ov, &base, DiskFormat::Raw).unwrap();
        assert!(!temp_name(&ov).exists());
        assert_eq!(inspect(&ov).unwrap().virtual_size, 1 << 20);
    }
}
