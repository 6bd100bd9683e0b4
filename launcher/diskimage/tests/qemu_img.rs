//! Interoperability with QEMU's own qcow2 implementation (`qemu-img`, `qemu-io` from Debian's
//! `qemu-utils`): overlays written through `DiskImage` must pass `qemu-img check` and convert
//! to exactly the expected bytes, and overlays written by QEMU must read back here.
//!
//! Each test is `#[ignore]`d with that need and, when run, fails if `qemu-img` is missing.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use ironvisor_diskimage::{create_overlay, inspect, open, open_as, DiskFormat};

fn require_qemu_img() {
    ironvisor_prereq::tool("qemu-img", "qemu-utils");
    ironvisor_prereq::tool("qemu-io", "qemu-utils");
}

/// A small deterministic generator (xorshift64*), so failures reproduce.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// FNV-1a 64-bit checksum of a file's contents.
fn checksum(path: &Path) -> u64 {
    fs::read(path)
        .unwrap()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        })
}

fn qemu_img(args: &[&str]) -> (bool, String) {
    let out = Command::new("qemu-img").args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn assert_check_clean(image: &Path) {
    let (ok, text) = qemu_img(&["check", "-f", "qcow2", image.to_str().unwrap()]);
    assert!(ok, "qemu-img check failed for {}:\n{text}", image.display());
    assert!(text.contains("No errors were found"), "{text}");
}

fn convert_to_raw(image: &Path, out: &Path) -> Vec<u8> {
    let (ok, text) = qemu_img(&[
        "convert",
        "-f",
        "qcow2",
        "-O",
        "raw",
        image.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    assert!(ok, "qemu-img convert failed:\n{text}");
    fs::read(out).unwrap()
}

fn make_base(dir: &Path, len: usize, seed: u64) -> (PathBuf, Vec<u8>) {
    let path = dir.join("base.img");
    let data = Rng(seed).bytes(len);
    fs::write(&path, &data).unwrap();
    (path, data)
}

#[test]
#[ignore = "needs qemu-img and qemu-io (Debian package qemu-utils)"]
fn overlay_written_here_passes_qemu_img_check_and_converts_to_expected_bytes() {
    require_qemu_img();
    let dir = tempfile::tempdir().unwrap();
    let size = 16 << 20;
    let (base, mut model) = make_base(dir.path(), size, 7);
    let base_sum = checksum(&base);
    let overlay = dir.path().join("vm.qcow2");
    create_overlay(&overlay, &base, DiskFormat::Raw).unwrap();

    // QEMU agrees with the header we wrote.
    let (ok, info) = qemu_img(&["info", "--output=json", overlay.to_str().unwrap()]);
    assert!(ok, "{info}");
    assert!(info.contains("\"format\": \"qcow2\""), "{info}");
    assert!(
        info.contains("\"backing-filename-format\": \"raw\""),
        "{info}"
    );
    assert!(
        info.contains(&format!("\"virtual-size\": {size}")),
        "{info}"
    );
    assert_check_clean(&overlay);

    // Scattered writes of odd sizes, some crossing clusters, some at the very end.
    let mut rng = Rng(99);
    let mut img = open(&overlay, false).unwrap();
    for i in 0..300 {
        let len = 1 + rng.below(if i % 10 == 0 { 300_000 } else { 9000 }) as usize;
        let offset = rng.below((size - len) as u64) as usize;
        let data = rng.bytes(len);
        img.write_at(&data, offset as u64).unwrap();
        model[offset..offset + len].copy_from_slice(&data);
        if i % 50 == 0 {
            img.flush().unwrap();
        }
    }
    img.write_at(b"tail", (size - 4) as u64).unwrap();
    model[size - 4..].copy_from_slice(b"tail");
    // Read back through the same handle before closing.
    let mut back = vec![0u8; size];
    img.read_at(&mut back, 0).unwrap();
    assert!(
        back == model,
        "read-back through DiskImage differs from the model"
    );
    img.flush().unwrap();
    drop(img);

    assert_check_clean(&overlay);
    let converted = convert_to_raw(&overlay, &dir.path().join("out.raw"));
    assert!(
        converted == model,
        "qemu-img convert output differs from the writes"
    );
    assert_eq!(checksum(&base), base_sum, "base image was modified");
}

#[test]
#[ignore = "needs qemu-img and qemu-io (Debian package qemu-utils)"]
fn overlay_made_by_qemu_img_is_read_and_written_here() {
    require_qemu_img();
    let dir = tempfile::tempdir().unwrap();
    let size = 4 << 20;
    let (base, mut model) = make_base(dir.path(), size, 3);
    let base_sum = checksum(&base);
    let overlay = dir.path().join("qemu.qcow2");
    let (ok, text) = qemu_img(&[
        "create",
        "-f",
        "qcow2",
        "-F",
        "raw",
        "-b",
        base.to_str().unwrap(),
        overlay.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    // QEMU writes a pattern first.
    let out = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 0x5a 1M 64k"])
        .arg(&overlay)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    model[1 << 20..(1 << 20) + 65536].fill(0x5a);

    let info = inspect(&overlay).unwrap();
    assert_eq!(info.virtual_size, size as u64);
    assert_eq!(info.backing_file.as_deref(), base.to_str());

    let mut img = open_as(&overlay, DiskFormat::Qcow2, false).unwrap();
    let mut back = vec![0u8; size];
    img.read_at(&mut back, 0).unwrap();
    assert!(
        back == model,
        "QEMU's writes or the base do not show through"
    );
    img.write_at(&[0xc3; 100_000], 2_000_000).unwrap();
    model[2_000_000..2_100_000].fill(0xc3);
    img.flush().unwrap();
    drop(img);

    assert_check_clean(&overlay);
    let converted = convert_to_raw(&overlay, &dir.path().join("out.raw"));
    assert!(converted == model);
    assert_eq!(checksum(&base), base_sum, "base image was modified");
}

#[test]
#[ignore = "needs qemu-img and qemu-io (Debian package qemu-utils)"]
fn standalone_qcow2_from_qemu_img_grows_and_stays_consistent() {
    require_qemu_img();
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("plain.qcow2");
    let (ok, text) = qemu_img(&["create", "-f", "qcow2", image.to_str().unwrap(), "8M"]);
    assert!(ok, "{text}");
    let mut img = open(&image, false).unwrap();
    assert_eq!(img.format(), DiskFormat::Qcow2);
    let mut zeros = vec![1u8; 4096];
    img.read_at(&mut zeros, 0).unwrap();
    assert!(zeros.iter().all(|b| *b == 0), "unallocated reads as zeroes");
    let mut model = vec![0u8; 8 << 20];
    let mut rng = Rng(5);
    for _ in 0..64 {
        let offset = rng.below(120) * 65536 + rng.below(1000);
        let data = rng.bytes(70_000);
        img.write_at(&data, offset).unwrap();
        let o = offset as usize;
        model[o..o + data.len()].copy_from_slice(&data);
    }
    img.flush().unwrap();
    drop(img);
    assert_check_clean(&image);
    assert!(convert_to_raw(&image, &dir.path().join("out.raw")) == model);
}

#[test]
#[ignore = "needs qemu-img and qemu-io (Debian package qemu-utils)"]
fn an_image_with_an_external_data_file_is_refused() {
    require_qemu_img();
    let dir = tempfile::tempdir().unwrap();
    // A host file the image's author would like the guest to see (and write).
    let host_file = dir.path().join("host-secret.raw");
    fs::write(&host_file, vec![0x5a; 1 << 20]).unwrap();
    let image = dir.path().join("disk.qcow2");
    let data_file = format!("data_file={},data_file_raw=on", host_file.display());
    let (ok, text) = qemu_img(&[
        "create",
        "-f",
        "qcow2",
        "-o",
        &data_file,
        image.to_str().unwrap(),
        "1M",
    ]);
    assert!(ok, "{text}");
    let err = inspect(&image).unwrap_err();
    assert!(err.to_string().contains("external data file"), "{err}");
}
