//! Boot entries found on disk images made here with `mkfs.ext4 -d` (a real ext4, as a
//! distribution's installer leaves it), with and without a partition table.

use std::path::Path;

use ironvisor_bootdisk::{find_boot_entry, BootDiskError, MAX_KERNEL_BYTES};
use ironvisor_diskimage::DiskFormat;

const PARTITION_OFFSET: u64 = 1 << 20;
const FS_KIB: u64 = 16 * 1024;

/// Makes an ext4 image of `tree` (relative paths → contents; a content starting with
/// "->" makes a symlink) at `offset` inside `image`.
fn ext4_image(dir: &Path, image: &Path, offset: u64, tree: &[(&str, &[u8])]) {
    ironvisor_prereq::tool("mkfs.ext4", "e2fsprogs");
    let root = dir.join("tree");
    std::fs::create_dir_all(&root).unwrap();
    for (path, content) in tree {
        let file = root.join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        match content.strip_prefix(b"->") {
            Some(target) => {
                std::os::unix::fs::symlink(std::str::from_utf8(target).unwrap(), &file).unwrap()
            }
            None => std::fs::write(&file, content).unwrap(),
        }
    }
    let status = std::process::Command::new("mkfs.ext4")
        .stdout(std::process::Stdio::null())
        .args(["-q", "-F", "-d"])
        .arg(&root)
        .arg("-E")
        .arg(format!("offset={offset}"))
        .arg(image)
        .arg(format!("{FS_KIB}k"))
        .status()
        .unwrap();
    assert!(status.success());
}

/// Writes an MBR with one Linux partition over the file system at PARTITION_OFFSET.
fn write_mbr(image: &Path) {
    use std::io::{Seek, SeekFrom, Write};
    let mut sector = [0u8; 512];
    sector[446] = 0x80;
    sector[450] = 0x83;
    sector[454..458].copy_from_slice(&((PARTITION_OFFSET / 512) as u32).to_le_bytes());
    sector[458..462].copy_from_slice(&((FS_KIB * 2) as u32).to_le_bytes());
    sector[510] = 0x55;
    sector[511] = 0xaa;
    let mut file = std::fs::OpenOptions::new().write(true).open(image).unwrap();
    file.seek(SeekFrom::Start(0)).unwrap();
    file.write_all(&sector).unwrap();
}

const GRUB_CFG: &[u8] = b"set default=0\nmenuentry 'Debian' {\n\tsearch --set=root --label r\n\tlinux /boot/vmlinuz-6.1 root=LABEL=r ro console=ttyS0 $extra\n\tinitrd /boot/initrd.img-6.1\n}\n";

#[test]
#[ignore = "needs mkfs.ext4 (Debian package e2fsprogs)"]
fn grub_on_a_partitioned_disk_names_kernel_initrd_and_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.raw");
    ext4_image(
        dir.path(),
        &image,
        PARTITION_OFFSET,
        &[
            ("boot/grub/grub.cfg", GRUB_CFG),
            ("boot/vmlinuz-6.1", b"KERNEL-IMAGE"),
            ("boot/initrd.img-6.1", b"INITRD"),
        ],
    );
    write_mbr(&image);
    let entry = find_boot_entry(&image, DiskFormat::Raw).unwrap();
    assert_eq!(entry.partition, 1);
    assert_eq!(entry.source, "/boot/grub/grub.cfg");
    assert_eq!(entry.kernel, b"KERNEL-IMAGE");
    assert_eq!(entry.initrd, b"INITRD\0\0", "padded to 4 bytes");
    assert_eq!(entry.cmdline, "root=LABEL=r ro console=ttyS0");
}

#[test]
#[ignore = "needs mkfs.ext4 (Debian package e2fsprogs)"]
fn a_bare_file_system_with_extlinux_or_debians_symlinks_boots() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("extlinux.raw");
    ext4_image(
        dir.path(),
        &image,
        0,
        &[
            (
                "boot/extlinux/extlinux.conf",
                b"DEFAULT a\nLABEL a\n LINUX /boot/k\n APPEND root=/dev/vda\n",
            ),
            ("boot/k", b"K"),
        ],
    );
    let entry = find_boot_entry(&image, DiskFormat::Raw).unwrap();
    assert_eq!((entry.partition, entry.kernel.as_slice()), (0, &b"K"[..]));
    assert_eq!(entry.cmdline, "root=/dev/vda");

    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("symlinks.raw");
    ext4_image(
        dir.path(),
        &image,
        0,
        &[
            ("vmlinuz", b"->boot/vmlinuz-6.1"),
            ("boot/vmlinuz-6.1", b"KERNEL"),
        ],
    );
    let entry = find_boot_entry(&image, DiskFormat::Raw).unwrap();
    assert_eq!(entry.source, "/vmlinuz");
    assert_eq!(entry.kernel, b"KERNEL");
    assert!(entry.initrd.is_empty(), "no /initrd.img: none");
}

#[test]
#[ignore = "needs mkfs.ext4 (Debian package e2fsprogs)"]
fn missing_files_oversized_kernels_and_bare_disks_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("missing.raw");
    ext4_image(dir.path(), &image, 0, &[("boot/grub/grub.cfg", GRUB_CFG)]);
    let error = find_boot_entry(&image, DiskFormat::Raw).unwrap_err();
    assert_eq!(
        error.to_string(),
        "partition 0: /boot/vmlinuz-6.1: named by /boot/grub/grub.cfg but not on the file system"
    );

    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("huge.raw");
    ext4_image(dir.path(), &image, 0, &[("vmlinuz", b"")]);
    // A sparse kernel past the limit: refused from its size, never read.
    let huge = dir.path().join("tree/vmlinuz");
    std::fs::File::options()
        .write(true)
        .open(&huge)
        .unwrap()
        .set_len(MAX_KERNEL_BYTES + 1)
        .unwrap();
    let image = dir.path().join("huge2.raw");
    let status = std::process::Command::new("mkfs.ext4")
        .stdout(std::process::Stdio::null())
        .args(["-q", "-F", "-d"])
        .arg(dir.path().join("tree"))
        .arg(&image)
        .arg("256m")
        .status()
        .unwrap();
    assert!(status.success());
    let error = find_boot_entry(&image, DiskFormat::Raw).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("more than the 134217728 read from a guest disk"),
        "{error}"
    );

    let blank = dir.path().join("blank.raw");
    std::fs::File::create(&blank)
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    let error = find_boot_entry(&blank, DiskFormat::Raw).unwrap_err();
    assert!(matches!(error, BootDiskError::NotFound { .. }), "{error}");
    assert!(
        error.to_string().contains("partition 0: not ext2/3/4"),
        "{error}"
    );
}

/// The Debian guest disk of `images/debian_disk.py` (a qcow2 with GRUB in its MBR),
/// built or reused through its Python entry point.
#[test]
#[ignore = "needs the Debian guest disk (python3 -m images.debian_disk; root, mmdebstrap)"]
fn the_debian_guest_disk_boots_what_its_grub_names() {
    ironvisor_prereq::root();
    ironvisor_prereq::tool("mmdebstrap", "mmdebstrap");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let output = std::process::Command::new("python3")
        .args(["-m", "images.debian_disk"])
        .current_dir(&repo)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let disk = String::from_utf8(output.stdout).unwrap();
    let entry = find_boot_entry(Path::new(disk.trim()), DiskFormat::Qcow2).unwrap();
    assert_eq!(
        (entry.partition, entry.source.as_str()),
        (1, "/boot/grub/grub.cfg")
    );
    assert_eq!(
        entry.cmdline,
        "root=LABEL=ironvisor-root ro console=tty0 console=ttyS0,115200n8"
    );
    // A bzImage ("HdrS" at 0x202) and an initramfs of several MiB.
    assert_eq!(&entry.kernel[0x202..0x206], b"HdrS");
    assert!(entry.initrd.len() > 4 << 20, "{}", entry.initrd.len());
}
