"""virtio-blk: read and write an ext4 disk; a read-only disk refuses writes; serials."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from images.common import sha256_file, source_date_epoch
from images.rootfs import make_ext4, rootfs_files
from tests.e2e.vmtest import E2ERunner

pytestmark = pytest.mark.nested

RO_SERIAL = "IVRO-SERIAL-42"


def test_read_write_and_read_only_disks(runner: E2ERunner, tmp_path: Path) -> None:
    token = secrets.token_hex(8)
    data_disk = tmp_path / "data.ext4"
    files: dict[str, bytes | Path] = dict(rootfs_files(runner.images.kernel_version))
    files["host-token.txt"] = f"host-placed-{token}\n".encode()
    make_ext4(data_disk, 32, files, epoch=source_date_epoch(), label="ivdata")
    rootfs_sha = sha256_file(runner.images.rootfs)

    facts = runner.run("blk", params={"TOKEN": token, "RO_SERIAL": RO_SERIAL},
                       files=[(data_disk, "/guest/data.ext4"),
                              (runner.images.rootfs, "/guest/rootfs.ext4")])
    assert facts.result.rc == 0, facts.result.failure
    g = facts.guest
    assert "IRONVISOR-SCENARIO-EXIT=0" in facts.console()
    assert facts.l1["vm_rc"] == "0"

    # vda: the read-write data disk.
    assert g["vda_present"] == "yes"
    assert g["vda_size_sectors"] == str(32 * 1024 * 1024 // 512)
    assert g["vda_mounted"] == "yes"
    assert g["vda_host_file"] == f"host-placed-{token}"
    assert g["vda_release"].startswith("ironvisor-rootfs_1_kernel=")
    assert g["vda_write_rc"] == "0"
    assert g["vda_umount_rc"] == "0"
    # The guest's write reached the image file (read back in L1 after the VMM exited).
    assert facts.l1["debugfs_guest_token"] == f"guest-wrote-{token}"

    # vdb: read-only with a serial number.
    assert g["vdb_present"] == "yes"
    assert g["vdb_serial"] == RO_SERIAL
    assert g["vdb_ro_flag"] == "1"
    rw_mount = g["vdb_rw_mount"]
    assert rw_mount.startswith("refused:") or rw_mount == "mounted:ro", rw_mount
    if rw_mount == "mounted:ro":
        assert g["vdb_file_write"].startswith("failed:"), g["vdb_file_write"]
        assert "Read-only" in g["vdb_file_write"]
    assert g["vdb_raw_write"].startswith("failed:"), g["vdb_raw_write"]
    # Not one byte of the read-only image changed.
    assert facts.l1["rodisk_sha256"] == rootfs_sha
