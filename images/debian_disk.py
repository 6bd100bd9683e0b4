"""A Debian guest disk that boots on its own under BIOS or UEFI: an MBR with GRUB's boot
code, GRUB's core image in the gap before the first partition, an ext4 partition holding
Debian bookworm (the cloud kernel and an initramfs with the virtio drivers, systemd,
cloud-init reading the NoCloud datasource, openssh-server), and a small EFI system
partition with GRUB's EFI image, which reads the same grub.cfg.

    python3 -m images.debian_disk [--cache DIR] [--force]

Everything comes from Debian packages; nothing is mounted and no loop device is used:

1. ``mmdebstrap`` makes the root file system as a tar, and its customize hooks configure
   it inside the chroot: fstab and GRUB find the root by its label, the initramfs gets the
   virtio modules (virtio-mmio for the KVM launcher, virtio-pci for QEMU), cloud-init
   looks only for NoCloud, ``/boot/grub/grub.cfg`` boots ``/vmlinuz`` on the serial
   console, and the guest's own ``grub-mkimage`` builds ``core.img``.
2. ``mke2fs -d ROOT -E offset=1MiB`` writes the ext4 file system (of the tar, unpacked)
   straight into the disk file at the first partition's offset.
3. The MBR is written here: GRUB's ``boot.img`` (patched as ``grub-bios-setup`` does:
   the sector of ``core.img``, no floppy probe), the partition table, and ``core.img``
   from sector 1 with its first block list pointing at sector 2.
4. The EFI system partition (``mkfs.vfat`` and ``mcopy``, no mount) is written after the
   root partition, with GRUB's EFI image (``grub-mkimage -O x86_64-efi``, an embedded
   configuration that finds the root by label) at ``EFI/BOOT/BOOTX64.EFI``.
5. ``qemu-img convert`` makes the qcow2.

The disk is cached outside the work tree, in ``$IRONVISOR_CACHE_DIR/guest-disk`` (default
``/var/cache/ironvisor/guest-disk``), named by a key of the recipe and the Debian snapshot
date of the host's apt lists; a new key builds a new disk and removes the old ones.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from images.common import source_date_epoch  # noqa: E402
from images.debian_base import SUITE, host_sources, snapshot_date  # noqa: E402

log = logging.getLogger("images.debian_disk")

#: The packages of the guest (with their dependencies, no recommends).
PACKAGES = ("linux-image-cloud-amd64", "initramfs-tools", "systemd-sysv", "udev", "dbus",
            "cloud-init", "openssh-server", "sudo", "ifupdown", "isc-dhcp-client", "netbase",
            "iproute2", "grub-pc-bin", "grub-efi-amd64-bin")
#: The file system label fstab and GRUB find the root by.
ROOT_LABEL = "ironvisor-root"
#: Size of the disk (sparse), where its root partition starts, and the size of the EFI
#: system partition at its end.
DISK_BYTES = 2 << 30
PARTITION_START_SECTOR = 2048
SECTOR = 512
ESP_BYTES = 16 << 20
#: Where GRUB's EFI image is found by UEFI firmware without boot variables (the
#: removable-media path on the EFI system partition).
EFI_BOOT_PATH = "EFI/BOOT/BOOTX64.EFI"
#: Modules the initramfs loads so that the root disk is found on either launcher.
INITRAMFS_MODULES = ("virtio_mmio", "virtio_pci", "virtio_blk", "virtio_net",
                     "virtio_console", "virtio_rng", "ext4")
#: The kernel command line GRUB boots with (the serial console is where the node agent
#: and `virtctl console` read).
KERNEL_ARGS = f"root=LABEL={ROOT_LABEL} ro console=tty0 console=ttyS0,115200n8"

GRUB_CFG = f"""\
set timeout=1
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
menuentry 'Debian GNU/Linux ({SUITE}, Ironvisor guest)' {{
\tsearch --no-floppy --label --set=root {ROOT_LABEL}
\tlinux /vmlinuz {KERNEL_ARGS}
\tinitrd /initrd.img
}}
"""

#: GRUB modules of core.img: enough to read the MBR partition and ext4, then load the rest
#: (normal, linux, search, serial) from /boot/grub/i386-pc.
CORE_MODULES = ("biosdisk", "part_msdos", "ext2")

#: GRUB modules of the EFI image: read the partition table and ext4, find the root by its
#: label (the early configuration below), then the normal mode reads the same grub.cfg as
#: the BIOS GRUB; every command that grub.cfg uses is in the image.
EFI_MODULES = ("part_msdos", "ext2", "fat", "search", "search_label", "normal", "configfile",
               "linux", "serial", "terminal", "echo", "test", "efi_gop", "all_video")
EFI_EARLY_CFG = (f"search --no-floppy --label --set=root {ROOT_LABEL}\n"
                 "set prefix=($root)/boot/grub\n")

#: The configuration written in the chroot (shell run by mmdebstrap with "$1" = root).
CONFIGURE_HOOK = "\n".join([
    "set -e",
    f"echo 'LABEL={ROOT_LABEL} / ext4 defaults,errors=remount-ro 0 1' > \"$1/etc/fstab\"",
    "echo debian > \"$1/etc/hostname\"",
    "printf '%s\\n' " + " ".join(INITRAMFS_MODULES) + " >> \"$1/etc/initramfs-tools/modules\"",
    "mkdir -p \"$1/etc/cloud/cloud.cfg.d\"",
    "echo 'datasource_list: [ NoCloud, None ]' > \"$1/etc/cloud/cloud.cfg.d/90-ironvisor.cfg\"",
    "chroot \"$1\" update-initramfs -u -k all",
    "mkdir -p \"$1/boot/grub\"",
    "cp -a \"$1/usr/lib/grub/i386-pc\" \"$1/boot/grub/\"",
    "chroot \"$1\" grub-mkimage -O i386-pc -o /boot/grub/i386-pc/core.img "
    f"-p '(hd0,msdos1)/boot/grub' {' '.join(CORE_MODULES)}",
    f"printf '{EFI_EARLY_CFG}' > \"$1/tmp/early.cfg\"",
    "chroot \"$1\" grub-mkimage -O x86_64-efi -o /tmp/bootx64.efi "
    f"-c /tmp/early.cfg -p /boot/grub {' '.join(EFI_MODULES)}",
    "rm -rf \"$1\"/var/lib/apt/lists/* \"$1\"/var/cache/apt/*.bin \"$1\"/var/log/*.log",
])

# GRUB's boot.img (the MBR code) and the block list at the end of core.img's first sector.
BOOT_CODE_BYTES = 440
BOOT_KERNEL_SECTOR_OFFSET = 0x5C
BOOT_DRIVE_CHECK_OFFSET = 0x66
BLOCKLIST_START_OFFSET = SECTOR - 12


def default_cache_dir() -> Path:
    """$IRONVISOR_CACHE_DIR/guest-disk, default /var/cache/ironvisor/guest-disk."""
    return Path(os.environ.get("IRONVISOR_CACHE_DIR") or "/var/cache/ironvisor") / "guest-disk"


class DiskError(RuntimeError):
    """The disk could not be made; the message says which step and why."""


def _run(step: str, cmd: list[str], **kwargs: object) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)
    if done.returncode != 0:
        raise DiskError(f"{step}: {' '.join(cmd[:3])} ... exited {done.returncode}:\n"
                        f"{(done.stderr or done.stdout).strip()[-3000:]}")


def mmdebstrap_command(output: Path, core_img: Path, boot_img: Path,
                       efi_img: Path) -> list[str]:
    """The mmdebstrap invocation (host sources; core.img, boot.img and GRUB's EFI image
    copied out)."""
    cmd = ["mmdebstrap", "--mode=root", "--variant=minbase", "--format=tar",
           "--include=" + ",".join(PACKAGES),
           f"--customize-hook={CONFIGURE_HOOK}",
           f"--customize-hook=cat > \"$1/boot/grub/grub.cfg\" <<'EOF'\n{GRUB_CFG}EOF",
           f"--customize-hook=copy-out /boot/grub/i386-pc/core.img {core_img.parent}",
           f"--customize-hook=copy-out /usr/lib/grub/i386-pc/boot.img {boot_img.parent}",
           f"--customize-hook=copy-out /tmp/bootx64.efi {efi_img.parent}",
           "--customize-hook=rm -f \"$1/tmp/bootx64.efi\" \"$1/tmp/early.cfg\"",
           SUITE, str(output)]
    cmd += [source.line() for source in host_sources()]
    return cmd


def cache_key() -> str:
    """The snapshot date of the host's Debian lists and a hash of the recipe."""
    recipe = json.dumps([mmdebstrap_command(Path("-"), Path("core"), Path("boot"), Path("efi")),
                         DISK_BYTES, PARTITION_START_SECTOR, ESP_BYTES, source_date_epoch()])
    digest = hashlib.sha256(recipe.encode()).hexdigest()[:12]
    return f"{snapshot_date(host_sources())}-{digest}"


def mbr(existing: bytes, boot_img: bytes, partition_sectors: int, esp_sectors: int = 0) -> bytes:
    """Sector 0: GRUB's boot code patched to load core.img from sector 1 and not to probe
    a floppy, then a bootable Linux partition from PARTITION_START_SECTOR and, when
    ``esp_sectors`` is not 0, an EFI system partition (type 0xEF) right after it."""
    if len(boot_img) != SECTOR:
        raise DiskError(f"boot.img is {len(boot_img)} bytes, not {SECTOR}")
    sector = bytearray(existing[:SECTOR].ljust(SECTOR, b"\0"))
    code = bytearray(boot_img[:BOOT_CODE_BYTES])
    struct.pack_into("<Q", code, BOOT_KERNEL_SECTOR_OFFSET, 1)
    code[BOOT_DRIVE_CHECK_OFFSET:BOOT_DRIVE_CHECK_OFFSET + 2] = b"\x90\x90"
    sector[:BOOT_CODE_BYTES] = code
    # Disk signature (4 bytes) and 2 reserved bytes, then four 16-byte entries.
    struct.pack_into("<IH", sector, BOOT_CODE_BYTES, 0x49524E56, 0)
    entry = struct.pack("<B3sB3sII", 0x80, b"\xfe\xff\xff", 0x83, b"\xfe\xff\xff",
                        PARTITION_START_SECTOR, partition_sectors)
    sector[446:462] = entry
    sector[462:510] = bytes(48)
    if esp_sectors:
        sector[462:478] = struct.pack("<B3sB3sII", 0, b"\xfe\xff\xff", 0xEF, b"\xfe\xff\xff",
                                      PARTITION_START_SECTOR + partition_sectors, esp_sectors)
    sector[510:512] = b"\x55\xaa"
    return bytes(sector)


def embed_core(core_img: bytes) -> bytes:
    """core.img with its first block list pointing at sector 2 (core.img is written from
    sector 1; its first sector, diskboot, loads the rest)."""
    sectors = -(-len(core_img) // SECTOR)
    if 1 + sectors > PARTITION_START_SECTOR:
        raise DiskError(f"core.img ({len(core_img)} bytes) does not fit before the partition")
    core = bytearray(core_img.ljust(sectors * SECTOR, b"\0"))
    struct.pack_into("<Q", core, BLOCKLIST_START_OFFSET, 2)
    return bytes(core)


def root_partition_sectors() -> int:
    """The root partition: from PARTITION_START_SECTOR up to the EFI system partition."""
    return (DISK_BYTES - ESP_BYTES) // SECTOR - PARTITION_START_SECTOR


def esp_image(out: Path, efi_img: Path) -> Path:
    """The EFI system partition: FAT with GRUB's EFI image at the removable-media path."""
    _run("mkfs.vfat", ["mkfs.vfat", "-C", "-n", "EFI", str(out), str(ESP_BYTES // 1024)])
    _run("mmd", ["mmd", "-i", str(out), "::EFI", "::EFI/BOOT"])
    _run("mcopy", ["mcopy", "-i", str(out), str(efi_img), f"::{EFI_BOOT_PATH}"])
    return out


def write_boot_sectors(disk: Path, boot_img: bytes, core_img: bytes, esp: bytes) -> None:
    partition_sectors = root_partition_sectors()
    with open(disk, "r+b") as f:
        existing = f.read(SECTOR)
        f.seek(0)
        f.write(mbr(existing, boot_img, partition_sectors, len(esp) // SECTOR))
        f.seek((PARTITION_START_SECTOR + partition_sectors) * SECTOR)
        f.write(esp)
        f.seek(SECTOR)
        f.write(embed_core(core_img))


def build_disk(cache_dir: Path | None = None, *, force: bool = False) -> Path:
    """The cached qcow2 (built now when its key changed or with ``force``)."""
    key = cache_key()
    directory = cache_dir or default_cache_dir()
    out = directory / f"{SUITE}-{key}.qcow2"
    if out.is_file() and not force:
        return out
    for tool in ("mmdebstrap", "mke2fs", "qemu-img", "mkfs.vfat", "mcopy"):
        if shutil.which(tool) is None:
            raise DiskError(f"{tool} is not installed (scripts/install-deps.sh installs it)")
    work = directory / "work"
    shutil.rmtree(work, ignore_errors=True)
    (work / "core").mkdir(parents=True)
    (work / "boot").mkdir()
    (work / "efi").mkdir()
    tar, raw = work / "root.tar", work / "disk.raw"
    core_img, boot_img = work / "core" / "core.img", work / "boot" / "boot.img"
    efi_img = work / "efi" / "bootx64.efi"
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(source_date_epoch()),
           "DEBIAN_FRONTEND": "noninteractive"}
    log.info("mmdebstrap: the Debian %s guest (%s); takes a minute or two",
             SUITE, " ".join(PACKAGES))
    _run("mmdebstrap", ["nice", "-n", "10", *mmdebstrap_command(tar, core_img, boot_img, efi_img)],
         env=env)
    offset = PARTITION_START_SECTOR * SECTOR
    partition_kib = root_partition_sectors() * SECTOR // 1024
    with open(raw, "wb") as f:
        f.truncate(DISK_BYTES)
    # (Debian 12's mke2fs 1.47.0 takes a directory, not yet a tar.)
    root = work / "root"
    root.mkdir()
    _run("tar", ["tar", "-xpf", str(tar), "-C", str(root), "--numeric-owner"])
    _run("mke2fs", ["mke2fs", "-q", "-F", "-t", "ext4", "-L", ROOT_LABEL, "-d", str(root),
                    "-E", f"offset={offset}", str(raw), f"{partition_kib}k"], env=env)
    esp = esp_image(work / "esp.img", efi_img)
    write_boot_sectors(raw, boot_img.read_bytes(), core_img.read_bytes(), esp.read_bytes())
    partial = out.with_name(out.name + ".partial")
    _run("qemu-img convert", ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw),
                              str(partial)])
    partial.replace(out)
    shutil.rmtree(work, ignore_errors=True)
    for stale in directory.glob(f"{SUITE}-*.qcow2"):
        if stale != out:
            stale.unlink()
    log.info("Debian guest disk: %s (%d MiB)", out, out.stat().st_size >> 20)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=None,
                        help="cache directory (default: $IRONVISOR_CACHE_DIR/guest-disk)")
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    try:
        print(build_disk(args.cache, force=args.force))
    except DiskError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
