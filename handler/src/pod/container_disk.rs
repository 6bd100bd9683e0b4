//! containerDisk volumes in the pod: an init container copied the image's `/disk`
//! directory to `<container-disks>/<volume>/`, which holds exactly one disk file
//! (KubeVirt's convention: `disk.img`, `disk.qcow2`, `rootfs.ext4`, ...).
//!
//! The file is the pod's private, ephemeral copy, so the VM uses it directly (writes
//! vanish with the pod, as KubeVirt's containerDisks do); no overlay is made. Its format
//! is read from its header: qcow2 starts with `QFI\xfb`, anything else is raw.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use ironvisor_disks::DiskFormat;

/// The first bytes of a qcow2 image.
pub const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";

/// Why a containerDisk volume has no usable disk file.
#[derive(Debug, thiserror::Error)]
pub enum ContainerDiskError {
    /// The volume name cannot be a directory name.
    #[error("containerDisk volume {volume:?}: the name cannot be a directory name")]
    BadName {
        /// The volume.
        volume: String,
    },
    /// The directory is missing.
    #[error(
        "containerDisk volume {volume}: {dir} does not exist (the init container copies the \
         image's /disk directory there)"
    )]
    NoDir {
        /// The volume.
        volume: String,
        /// The directory.
        dir: PathBuf,
    },
    /// The directory cannot be listed, or a file cannot be read.
    #[error("containerDisk volume {volume}: cannot read {path}: {source}")]
    Read {
        /// The volume.
        volume: String,
        /// The directory or file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// No disk file in the directory.
    #[error(
        "containerDisk volume {volume}: no disk file in {dir} (the image must have exactly \
         one file under /disk)"
    )]
    NoFile {
        /// The volume.
        volume: String,
        /// The directory.
        dir: PathBuf,
    },
    /// More than one file in the directory.
    #[error(
        "containerDisk volume {volume}: {dir} holds {} files ({}); the image must have exactly \
         one file under /disk", .files.len(), .files.join(", ")
    )]
    SeveralFiles {
        /// The volume.
        volume: String,
        /// The directory.
        dir: PathBuf,
        /// The file names found.
        files: Vec<String>,
    },
}

/// The disk file of one containerDisk volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerDiskFile {
    /// The file.
    pub path: PathBuf,
    /// Its format, from its header.
    pub format: DiskFormat,
}

/// Finds the one disk file of volume `volume` under `container_disks` and detects its
/// format.
pub fn find(container_disks: &Path, volume: &str) -> Result<ContainerDiskFile, ContainerDiskError> {
    let mut components = Path::new(volume).components();
    if !matches!(
        (components.next(), components.next()),
        (Some(Component::Normal(_)), None)
    ) {
        return Err(ContainerDiskError::BadName {
            volume: volume.to_string(),
        });
    }
    let dir = container_disks.join(volume);
    let read_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ContainerDiskError::Read {
            volume: volume.to_string(),
            path,
            source,
        }
    };
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(ContainerDiskError::NoDir {
                volume: volume.to_string(),
                dir,
            })
        }
        Err(e) => return Err(read_error(&dir)(e)),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(read_error(&dir))?;
        let path = entry.path();
        // Follows symbolic links: a link to a file counts as the file.
        if std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
            files.push(path);
        }
    }
    files.sort();
    let path = match files.len() {
        0 => {
            return Err(ContainerDiskError::NoFile {
                volume: volume.to_string(),
                dir,
            })
        }
        1 => files.remove(0),
        _ => {
            return Err(ContainerDiskError::SeveralFiles {
                volume: volume.to_string(),
                dir,
                files: files
                    .iter()
                    .map(|f| f.file_name().unwrap_or_default().to_string_lossy().into())
                    .collect(),
            })
        }
    };
    let format = detect_format(&path).map_err(read_error(&path))?;
    Ok(ContainerDiskFile { path, format })
}

/// qcow2 when the file starts with [`QCOW2_MAGIC`], raw otherwise.
pub fn detect_format(path: &Path) -> io::Result<DiskFormat> {
    let mut header = [0u8; 4];
    let mut file = File::open(path)?;
    let mut filled = 0;
    while filled < header.len() {
        match file.read(&mut header[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(if filled == header.len() && header == QCOW2_MAGIC {
        DiskFormat::Qcow2
    } else {
        DiskFormat::Raw
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn volume_dir(root: &Path, volume: &str, files: &[(&str, &[u8])]) {
        let dir = root.join(volume);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, content) in files {
            std::fs::write(dir.join(name), content).unwrap();
        }
    }

    #[test]
    fn the_one_file_is_found_and_its_format_detected() {
        let root = tempfile::tempdir().unwrap();
        volume_dir(root.path(), "rootdisk", &[("rootfs.ext4", &[0u8; 1024])]);
        let found = find(root.path(), "rootdisk").unwrap();
        assert_eq!(found.path, root.path().join("rootdisk/rootfs.ext4"));
        assert_eq!(found.format, DiskFormat::Raw);

        let mut qcow2 = QCOW2_MAGIC.to_vec();
        qcow2.extend_from_slice(&[0, 0, 0, 3]);
        volume_dir(root.path(), "cow", &[("disk.qcow2", &qcow2)]);
        std::fs::create_dir(root.path().join("cow/subdir")).unwrap();
        let found = find(root.path(), "cow").unwrap();
        assert_eq!(found.format, DiskFormat::Qcow2);

        // Shorter than the magic, and a near miss: raw.
        volume_dir(root.path(), "tiny", &[("disk.img", b"QF")]);
        assert_eq!(find(root.path(), "tiny").unwrap().format, DiskFormat::Raw);
        volume_dir(root.path(), "near", &[("disk.img", b"QFI\xfa....")]);
        assert_eq!(find(root.path(), "near").unwrap().format, DiskFormat::Raw);
    }

    #[test]
    fn none_or_several_files_are_errors_naming_the_directory() {
        let root = tempfile::tempdir().unwrap();
        volume_dir(root.path(), "empty", &[]);
        let error = find(root.path(), "empty").unwrap_err();
        assert!(matches!(error, ContainerDiskError::NoFile { .. }));
        assert!(
            error
                .to_string()
                .contains(&root.path().join("empty").display().to_string()),
            "{error}"
        );

        volume_dir(root.path(), "two", &[("b.img", b"x"), ("a.qcow2", b"y")]);
        let error = find(root.path(), "two").unwrap_err();
        assert!(
            error.to_string().contains("holds 2 files (a.qcow2, b.img)"),
            "{error}"
        );

        let error = find(root.path(), "missing").unwrap_err();
        assert!(matches!(error, ContainerDiskError::NoDir { .. }), "{error}");
        for bad in ["..", "a/b", "", "/abs"] {
            assert!(
                matches!(
                    find(root.path(), bad),
                    Err(ContainerDiskError::BadName { .. })
                ),
                "{bad:?}"
            );
        }
    }
}
