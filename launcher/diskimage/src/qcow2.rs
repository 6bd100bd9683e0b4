//! qcow2 images through imago: backing-file fallthrough on reads, cluster allocation on
//! writes, refcounts maintained by imago.

use std::io;
use std::path::{Path, PathBuf};

use imago::file::File as ImagoFile;
use imago::qcow2::Qcow2;
use imago::{
    DenyImplicitOpenGate, FormatAccess, FormatDriverBuilder, PermissiveImplicitOpenGate, Storage,
    StorageOpenOptions,
};

use crate::{check_bounds, read_only_error, DiskFormat, DiskImage, DiskImageError, ImageInfo};

/// An open qcow2 image with its backing chain.
pub(crate) struct Qcow2Image {
    access: FormatAccess<ImagoFile>,
    path: PathBuf,
    size: u64,
    read_only: bool,
}

impl Qcow2Image {
    /// Opens `path` and the backing chain named in its header (read-only).
    ///
    /// The header is trusted: overlays are created by the node agent, and the guest can only
    /// change data clusters, never the header that names the backing file.
    pub(crate) fn open(path: &Path, read_only: bool) -> Result<Self, DiskImageError> {
        let qcow2 = Qcow2::<ImagoFile>::builder_path(path)
            .write(!read_only)
            .open(PermissiveImplicitOpenGate::default())
            .map_err(|source| DiskImageError::Qcow2 {
                path: path.to_path_buf(),
                source,
            })?;
        let access = FormatAccess::new(qcow2);
        let size = access.size();
        Ok(Qcow2Image {
            access,
            path: path.to_path_buf(),
            size,
            read_only,
        })
    }
}

/// Reads the header of the qcow2 image at `path` without opening its backing file.
pub(crate) fn inspect(path: &Path) -> Result<ImageInfo, DiskImageError> {
    let qcow2_err = |source| DiskImageError::Qcow2 {
        path: path.to_path_buf(),
        source,
    };
    // imago 0.2.6 panics on some malformed header extensions; refuse those first.
    let file = std::fs::File::open(path).map_err(qcow2_err)?;
    crate::qcow2_guard::check_header_extensions(&file).map_err(qcow2_err)?;
    // Opened explicitly so that the deny-all gate only stops the backing file and data file.
    let storage = ImagoFile::open(StorageOpenOptions::new().filename(path).write(false))
        .map_err(qcow2_err)?;
    let qcow2 = Qcow2::<ImagoFile>::builder(storage)
        .write(false)
        .backing(None)
        .data_file(None)
        .open(DenyImplicitOpenGate::default())
        .map_err(qcow2_err)?;
    let backing_file = qcow2.implicit_backing_file().cloned();
    let backing_format = qcow2.implicit_backing_format().cloned();
    let access = FormatAccess::new(qcow2);
    Ok(ImageInfo {
        format: DiskFormat::Qcow2,
        virtual_size: access.size(),
        backing_file,
        backing_format,
    })
}

impl DiskImage for Qcow2Image {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        check_bounds(self.size, offset, buf.len(), &self.path)?;
        self.access.read(buf, offset)
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.read_only {
            return Err(read_only_error(&self.path));
        }
        check_bounds(self.size, offset, buf.len(), &self.path)?;
        self.access.write(buf, offset)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.read_only {
            return Ok(());
        }
        // First write out imago's cached L2/refcount tables, then make it all durable.
        self.access.flush()?;
        self.access.sync()
    }

    fn format(&self) -> DiskFormat {
        DiskFormat::Qcow2
    }
}
