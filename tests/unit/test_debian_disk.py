"""The Debian guest disk (images/debian_disk.py): its boot sectors as GRUB's setup writes
them, and the disk booting on its own under QEMU TCG — SeaBIOS runs the MBR code, GRUB
reads its configuration from the ext4 partition, Debian boots with systemd, cloud-init
applies userData from a NoCloud seed, and a login prompt appears on the serial console."""

from __future__ import annotations

import shutil
import struct
import subprocess
import time
from pathlib import Path

import pytest

from images import debian_disk
from images.debian_disk import (
    BLOCKLIST_START_OFFSET,
    BOOT_CODE_BYTES,
    PARTITION_START_SECTOR,
    SECTOR,
    DiskError,
    embed_core,
    mbr,
)
from tests.debian_guest import RUNCMD_MARKER, nocloud_seed

BOOT_TIMEOUT_S = 300


def test_the_mbr_loads_core_from_sector_1_and_has_one_bootable_linux_partition() -> None:
    boot_img = bytes(range(256)) * 2
    sector = mbr(b"\xaa" * SECTOR, boot_img, partition_sectors=4096)
    assert len(sector) == SECTOR
    assert struct.unpack_from("<Q", sector, 0x5C)[0] == 1, "core.img's first sector"
    assert sector[0x66:0x68] == b"\x90\x90", "no floppy probe"
    untouched = [i for i in range(BOOT_CODE_BYTES) if i not in range(0x5C, 0x64)
                 and i not in (0x66, 0x67)]
    assert all(sector[i] == boot_img[i] for i in untouched)
    status, kind, start, count = struct.unpack_from("<B3xB3xII", sector, 446)
    assert (status, kind, start, count) == (0x80, 0x83, PARTITION_START_SECTOR, 4096)
    assert sector[462:510] == bytes(48), "one partition only"
    assert sector[510:] == b"\x55\xaa"


def test_the_efi_system_partition_follows_the_root_partition() -> None:
    sector = mbr(b"", b"\0" * SECTOR, partition_sectors=4096, esp_sectors=2048)
    status, kind, start, count = struct.unpack_from("<B3xB3xII", sector, 462)
    assert (status, kind, start, count) == (0, 0xEF, PARTITION_START_SECTOR + 4096, 2048)
    assert sector[478:510] == bytes(32)


def test_core_points_its_block_list_at_sector_2_and_must_fit_the_gap() -> None:
    core = embed_core(b"\x01" * (SECTOR * 3 + 10))
    assert len(core) == SECTOR * 4, "padded to whole sectors"
    assert struct.unpack_from("<Q", core, BLOCKLIST_START_OFFSET)[0] == 2
    with pytest.raises(DiskError, match="does not fit before the partition"):
        embed_core(b"\0" * SECTOR * PARTITION_START_SECTOR)
    with pytest.raises(DiskError, match="boot.img is 10 bytes"):
        mbr(b"", b"\0" * 10, 1)


@pytest.mark.tcg
def test_the_disk_boots_its_own_grub_and_debian_applies_cloud_init(tmp_path: Path) -> None:
    for tool in ("qemu-system-x86_64", "mmdebstrap", "mkfs.vfat", "mcopy"):
        if shutil.which(tool) is None:
            pytest.fail(f"prerequisite missing: {tool} (scripts/install-deps.sh installs it)")
    started = time.monotonic()
    disk = debian_disk.build_disk()
    built_s = time.monotonic() - started
    serial = tmp_path / "serial.log"
    qemu = subprocess.Popen(
        ["qemu-system-x86_64", "-M", "pc", "-m", "1024", "-smp", "1", "-display", "none",
         "-nodefaults", "-no-reboot", "-serial", f"file:{serial}",
         "-drive", f"file={disk},if=virtio,snapshot=on",
         "-drive", f"file={nocloud_seed(tmp_path)},if=virtio,format=raw,readonly=on"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        booted = time.monotonic()
        deadline = booted + BOOT_TIMEOUT_S
        text = ""
        while time.monotonic() < deadline:
            text = serial.read_text(errors="replace") if serial.exists() else ""
            if RUNCMD_MARKER in text and "login:" in text:
                break
            assert qemu.poll() is None, f"QEMU exited {qemu.returncode}:\n{text[-3000:]}"
            time.sleep(1)
        else:
            pytest.fail(f"no login prompt and runcmd marker in {BOOT_TIMEOUT_S} s:\n"
                        f"{text[-4000:]}")
        login_s = time.monotonic() - booted
    finally:
        qemu.kill()
        qemu.wait()
    assert "GNU GRUB" in text, "the disk's own GRUB ran"
    assert "Linux version 6.1." in text
    # userData from the seed: the hostname it sets, seen by the runcmd it runs.
    assert RUNCMD_MARKER in text, text[-3000:]
    print(f"\nDebian disk {disk.name}: {disk.stat().st_size >> 20} MiB, ready in "
          f"{built_s:.0f} s; SeaBIOS -> login prompt under TCG in {login_s:.0f} s")
