//! Entry point for the `qcow2_image` cargo-fuzz target in `fuzz/` (feature `fuzzing`;
//! not an API): fuzzer bytes as an untrusted qcow2 file (a containerDisk), inspected as
//! the node agent does, then opened read-only, as the launcher opens it (the base of the
//! VM's overlay), and read through.
//!
//! Writes are not fuzzed: a read-write qcow2 is always an overlay the node agent made,
//! whose metadata the guest cannot reach, and imago 0.2.6 recurses without bound when it
//! allocates refcount blocks in some corrupted images (see tests/README.md, fuzzing).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::{inspect, open_as, DiskFormat};

/// Bytes per access in the input.
const OP_LEN: usize = 11;
/// Most accesses one input makes.
const MAX_OPS: usize = 16;
/// Largest access.
const MAX_ACCESS: usize = 64 * 1024;
/// Byte offset of `incompatible_features` in a version 3 header.
const INCOMPATIBLE_FEATURES: usize = 72;
/// Incompatible feature bit: the guest data lives in an external file named in the header.
const EXTERNAL_DATA_FILE: u64 = 1 << 2;

/// Input: a byte of flags (unused), the access count, the accesses (11 bytes each: kind,
/// offset, length), then the image file.
pub fn qcow2_image(data: &[u8]) {
    let data = data.get(1..).unwrap_or_default();
    let (count, data) = data.split_first().unwrap_or((&0, &[]));
    let ops_len = (usize::from(*count) % (MAX_OPS + 1)) * OP_LEN;
    let (ops, image) = data.split_at(ops_len.min(data.len()));

    let path = image_path();
    std::fs::write(path, image).expect("write the image");
    // What the node agent does with a containerDisk: inspect it, refuse a backing file.
    let Ok(info) = inspect(path) else {
        return;
    };
    if info.format != DiskFormat::Qcow2 || info.backing_file.is_some() {
        return;
    }
    // An external data file is opened read-write at the path the header names: the harness
    // must not open host files the input picks (see the fuzzing notes in tests/README.md).
    if external_data_file(image) {
        return;
    }
    let Ok(mut disk) = open_as(path, DiskFormat::Qcow2, true) else {
        return;
    };
    assert_eq!(disk.size(), info.virtual_size);
    let size = disk.size();
    let mut buf = vec![0u8; MAX_ACCESS];
    for op in ops.chunks_exact(OP_LEN) {
        let kind = op[0];
        let mut offset = [0u8; 8];
        offset.copy_from_slice(&op[1..9]);
        let mut offset = u64::from_le_bytes(offset);
        if kind & 0x80 == 0 && size > 0 {
            // Mostly inside the disk, so that accesses reach the tables.
            offset %= size;
        }
        let len = usize::from(u16::from_le_bytes([op[9], op[10]])).min(MAX_ACCESS);
        let chunk = &mut buf[..len];
        let in_bounds = offset
            .checked_add(len as u64)
            .is_some_and(|end| end <= size);
        let result = match kind % 3 {
            0 => disk.read_at(chunk, offset),
            1 => disk.write_at(chunk, offset),
            _ => disk.flush(),
        };
        match kind % 3 {
            1 => assert!(result.is_err(), "a write to a read-only image succeeded"),
            0 if !in_bounds => assert!(result.is_err(), "a read beyond the disk end succeeded"),
            _ => {}
        }
    }
}

/// Whether a version 3 header sets the external data file feature.
fn external_data_file(image: &[u8]) -> bool {
    image
        .get(INCOMPATIBLE_FEATURES..INCOMPATIBLE_FEATURES + 8)
        .and_then(|bytes| <[u8; 8]>::try_from(bytes).ok())
        .is_some_and(|bytes| u64::from_be_bytes(bytes) & EXTERNAL_DATA_FILE != 0)
}

/// The image file, in a scratch directory (in memory when the host has /dev/shm).
fn image_path() -> &'static Path {
    static SCRATCH: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, path) = SCRATCH.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::tempdir_in(shm)
        } else {
            tempfile::tempdir()
        }
        .expect("scratch directory");
        let path = dir.path().join("image.qcow2");
        (dir, path)
    });
    path
}
