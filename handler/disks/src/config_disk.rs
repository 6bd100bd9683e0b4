//! Read-only disks of files from the cluster: a `configMap`, `secret`, `serviceAccount`
//! or `downwardAPI` volume, which the kubelet has written into a directory of the launcher
//! pod, becomes a FAT file system image (KubeVirt gives the guest the same files on a
//! disk). The guest finds it by its volume label or the disk's serial number.
//!
//! The kubelet's directory holds each file as a symlink into a hidden `..data` directory;
//! links are followed, and names that start with a dot are left out.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use fatfs::{Dir, FileSystem, FormatVolumeOptions, FsOptions};

const MIB: u64 = 1 << 20;
/// The most bytes of files one disk takes (a Secret or ConfigMap is at most 1 MiB; this
/// leaves room for a projected volume of several).
pub const MAX_CONTENT_BYTES: u64 = 64 * MIB;

/// Why the disk cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum ConfigDiskError {
    /// The source directory or one of its files cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The files are larger than [`MAX_CONTENT_BYTES`].
    #[error("the files in {dir} hold more than {MAX_CONTENT_BYTES} bytes")]
    TooLarge {
        /// The source directory.
        dir: PathBuf,
    },
    /// The image cannot be written.
    #[error("cannot write the disk image {path}: {source}")]
    Write {
        /// The image.
        path: PathBuf,
        /// The OS or file system error.
        source: io::Error,
    },
}

/// A file to put on the disk: its path inside the disk and its bytes.
type Entry = (Vec<String>, Vec<u8>);

/// Writes a FAT image of the files under `dir` to `out` with volume `label` (at most 11
/// bytes; longer is cut). Returns the image size in bytes.
pub fn write_directory_disk(dir: &Path, out: &Path, label: &str) -> Result<u64, ConfigDiskError> {
    let _span = tracing::info_span!("config_disk", dir = %dir.display(), label).entered();
    let mut entries = Vec::new();
    let mut total = 0u64;
    collect(dir, dir, &mut Vec::new(), &mut entries, &mut total)?;
    let size = (total + total / 8 + MIB / 2).div_ceil(MIB).max(1) * MIB;
    let write_error = |source: io::Error| ConfigDiskError::Write {
        path: out.to_path_buf(),
        source,
    };
    let mut disk = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(out)
        .map_err(write_error)?;
    disk.set_len(size).map_err(write_error)?;
    write_fat(&mut disk, label, &entries).map_err(write_error)?;
    disk.sync_all().map_err(write_error)?;
    tracing::info!(
        files = entries.len(),
        bytes = total,
        size,
        "disk of files written"
    );
    Ok(size)
}

fn collect(
    root: &Path,
    dir: &Path,
    prefix: &mut Vec<String>,
    entries: &mut Vec<Entry>,
    total: &mut u64,
) -> Result<(), ConfigDiskError> {
    let read_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ConfigDiskError::Read { path, source }
    };
    for name in visible_names(dir).map_err(read_error(dir))? {
        let path = dir.join(&name);
        // Follows the kubelet's symlinks into ..data.
        let metadata = fs::metadata(&path).map_err(read_error(&path))?;
        prefix.push(name);
        if metadata.is_dir() {
            collect(root, &path, prefix, entries, total)?;
        } else if metadata.is_file() {
            *total += metadata.len();
            if *total > MAX_CONTENT_BYTES {
                return Err(ConfigDiskError::TooLarge {
                    dir: root.to_path_buf(),
                });
            }
            let bytes = fs::read(&path).map_err(read_error(&path))?;
            entries.push((prefix.clone(), bytes));
        }
        prefix.pop();
    }
    Ok(())
}

/// The names in `dir` that are not hidden (the kubelet's `..data` and timestamped
/// directories start with dots), sorted.
pub fn visible_names(dir: &Path) -> io::Result<Vec<String>> {
    let mut names: Vec<String> = fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| !name.starts_with('.'))
        .collect();
    names.sort();
    Ok(names)
}

fn write_fat(disk: &mut File, label: &str, entries: &[Entry]) -> io::Result<()> {
    let mut volume_label = [b' '; 11];
    for (slot, byte) in volume_label.iter_mut().zip(label.bytes()) {
        *slot = byte;
    }
    fatfs::format_volume(
        &mut *disk,
        FormatVolumeOptions::new().volume_label(volume_label),
    )?;
    let fs = FileSystem::new(&mut *disk, FsOptions::new())?;
    {
        let root = fs.root_dir();
        for (path, bytes) in entries {
            let Some((file_name, dirs)) = path.split_last() else {
                continue;
            };
            let mut dir: Dir<'_, &mut File> = root.clone();
            for name in dirs {
                dir = dir.create_dir(name)?;
            }
            let mut file = dir.create_file(file_name)?;
            file.truncate()?;
            file.write_all(bytes)?;
            file.flush()?;
        }
    }
    fs.unmount()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn read_back(image: &Path, path: &str) -> Vec<u8> {
        let disk = File::open(image).unwrap();
        let fs = FileSystem::new(disk, FsOptions::new()).unwrap();
        let mut data = Vec::new();
        fs.root_dir()
            .open_file(path)
            .unwrap()
            .read_to_end(&mut data)
            .unwrap();
        data
    }

    #[test]
    fn the_kubelets_layout_becomes_files_on_a_labelled_fat_disk() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("..2026_12_05");
        fs::create_dir_all(data.join("labels-dir")).unwrap();
        fs::write(data.join("app.conf"), b"mode=vm\n").unwrap();
        fs::write(data.join("labels-dir/labels"), b"app=\"web\"\n").unwrap();
        std::os::unix::fs::symlink("..2026_12_05", dir.path().join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/app.conf", dir.path().join("app.conf")).unwrap();
        std::os::unix::fs::symlink("..data/labels-dir", dir.path().join("labels-dir")).unwrap();
        let out = tempfile::tempdir().unwrap();
        let image = out.path().join("config.img");
        let size = write_directory_disk(dir.path(), &image, "cfgdata").unwrap();
        assert_eq!(size, MIB);
        assert_eq!(read_back(&image, "app.conf"), b"mode=vm\n");
        assert_eq!(read_back(&image, "labels-dir/labels"), b"app=\"web\"\n");
        let fs = FileSystem::new(File::open(&image).unwrap(), FsOptions::new()).unwrap();
        assert_eq!(fs.volume_label().trim_end(), "cfgdata");
        let names: Vec<String> = fs
            .root_dir()
            .iter()
            .filter_map(Result::ok)
            .map(|entry| entry.file_name())
            .collect();
        assert!(!names.iter().any(|name| name.starts_with('.')), "{names:?}");
    }

    #[test]
    fn a_missing_directory_is_named() {
        let out = tempfile::tempdir().unwrap();
        let error = write_directory_disk(
            Path::new("/nonexistent/config"),
            &out.path().join("x.img"),
            "x",
        )
        .unwrap_err();
        assert!(error.to_string().contains("/nonexistent/config"), "{error}");
    }
}
