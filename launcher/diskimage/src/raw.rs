//! Raw images: guest byte `n` is host byte `n`, served with positioned reads and writes.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::{check_bounds, read_only_error, DiskFormat, DiskImage, DiskImageError};

/// A raw file or block device.
#[derive(Debug)]
pub(crate) struct RawImage {
    file: File,
    path: PathBuf,
    size: u64,
    read_only: bool,
}

impl RawImage {
    /// Opens `path`; its current length (a block device's capacity) is the disk size.
    pub(crate) fn open(path: &Path, read_only: bool) -> Result<Self, DiskImageError> {
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|source| DiskImageError::Open {
                path: path.to_path_buf(),
                mode: if read_only { "read-only" } else { "read-write" },
                source,
            })?;
        let size = size_of(&file).map_err(|source| DiskImageError::Size {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(RawImage {
            file,
            path: path.to_path_buf(),
            size,
            read_only,
        })
    }
}

/// Size of an open file or block device (a block device's `st_size` is 0, so seek to the end).
fn size_of(mut file: &File) -> io::Result<u64> {
    file.seek(SeekFrom::End(0))
}

/// Size of the raw image at `path`.
pub(crate) fn file_size(path: &Path) -> Result<u64, DiskImageError> {
    let file = File::open(path).map_err(|source| DiskImageError::Open {
        path: path.to_path_buf(),
        mode: "read-only",
        source,
    })?;
    size_of(&file).map_err(|source| DiskImageError::Size {
        path: path.to_path_buf(),
        source,
    })
}

impl DiskImage for RawImage {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        check_bounds(self.size, offset, buf.len(), &self.path)?;
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.read_only {
            return Err(read_only_error(&self.path));
        }
        check_bounds(self.size, offset, buf.len(), &self.path)?;
        self.file.write_all_at(buf, offset)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.file.sync_data()
    }

    fn format(&self) -> DiskFormat {
        DiskFormat::Raw
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw_file(dir: &Path, len: u64) -> PathBuf {
        let path = dir.join("disk.img");
        File::create(&path).unwrap().set_len(len).unwrap();
        path
    }

    #[test]
    fn write_then_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = raw_file(dir.path(), 1 << 20);
        let mut img = RawImage::open(&path, false).unwrap();
        assert_eq!(img.size(), 1 << 20);
        img.write_at(b"hello", 4096).unwrap();
        img.flush().unwrap();
        let mut buf = [0u8; 7];
        img.read_at(&mut buf, 4095).unwrap();
        assert_eq!(&buf, b"\0hello\0");
        // And the bytes are really at that file offset.
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(&on_disk[4096..4101], b"hello");
    }

    #[test]
    fn read_only_refuses_writes_and_keeps_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = raw_file(dir.path(), 4096);
        let mut img = RawImage::open(&path, true).unwrap();
        let err = img.write_at(b"x", 0).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        assert!(err.to_string().contains("read-only"));
        assert!(img.flush().is_ok());
        assert!(std::fs::read(&path).unwrap().iter().all(|b| *b == 0));
    }

    #[test]
    fn out_of_range_requests_fail() {
        let dir = tempfile::tempdir().unwrap();
        let path = raw_file(dir.path(), 4096);
        let mut img = RawImage::open(&path, false).unwrap();
        let mut buf = [0u8; 2];
        assert_eq!(
            img.read_at(&mut buf, 4095).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(
            img.write_at(&buf, 4095).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 4096, "no growth");
    }

    #[test]
    fn open_missing_file_names_path_and_mode() {
        let err = RawImage::open(Path::new("/nonexistent/x.img"), false).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("/nonexistent/x.img") && msg.contains("read-write"),
            "{msg}"
        );
    }
}
