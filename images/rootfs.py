"""Reproducible ext4 disk images (``mkfs.ext4 -d``) and scratch disks for tests."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import uuid as uuidlib
from pathlib import Path

from images.common import ToolError, clamp_tree_mtimes, replace_atomically, run, up_to_date

log = logging.getLogger("images.rootfs")

#: Fixed identity of the root disk, so that two builds give the same bytes.
ROOTFS_UUID = "6c1f0b8e-4d2a-4c5e-9a57-1e0f2b3c4d5e"
ROOTFS_LABEL = "ivroot"
ROOTFS_SIZE_MIB = 64


class DiskError(RuntimeError):
    """An ext4 or raw image could not be made; the message names the image."""


def rootfs_files(kernel_version: str) -> dict[str, bytes]:
    """The few files placed on the root disk."""
    return {
        "etc/ironvisor-release": f"ironvisor-rootfs 1 kernel={kernel_version}\n".encode(),
        "etc/hostname": b"ironvisor-guest\n",
        "srv/hello.txt": b"hello from the ironvisor root disk\n",
        "README": b"Ironvisor test root disk: made by images/build.py, safe to write to.\n",
    }


def make_ext4(path: Path, size_mib: int, files: dict[str, bytes | Path], *, epoch: int,
              label: str = "ivscratch", fs_uuid: str | None = None) -> None:
    """Make an ext4 image of ``size_mib`` MiB at ``path`` holding ``files``.

    ``files`` maps a path inside the file system to its content or a host file to copy.
    Everything that would vary between runs is pinned: the UUID and directory hash seed
    (``fs_uuid``, derived from the label when None), all timestamps (``epoch`` through
    ``E2FSPROGS_FAKE_TIME`` and the staged files' mtimes), and ownership (root).
    """
    if size_mib < 2:
        raise DiskError(f"{path}: an ext4 image needs at least 2 MiB, got {size_mib}")
    if fs_uuid is None:
        fs_uuid = str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, f"ironvisor-disk:{label}"))
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ivdisk-", dir=path.parent) as tmpdir:
        src = Path(tmpdir) / "root"
        src.mkdir()
        for rel, content in sorted(files.items()):
            rel = rel.lstrip("/")
            if not rel or ".." in Path(rel).parts:
                raise DiskError(f"{path}: invalid path {rel!r} for a file in the image")
            target = src / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, Path):
                if not content.is_file():
                    raise DiskError(f"{path}: {content} (for /{rel}) is not a file")
                shutil.copyfile(content, target)
            else:
                target.write_bytes(content)
            target.chmod(0o644)
        for dirpath, dirnames, _ in os.walk(src):
            for d in dirnames:
                (Path(dirpath) / d).chmod(0o755)
        src.chmod(0o755)
        clamp_tree_mtimes(src, epoch)
        tmp = Path(tmpdir) / "image"
        env = {"E2FSPROGS_FAKE_TIME": str(epoch), "MKE2FS_DEVICE_SECTSIZE": "512"}
        try:
            run(["mkfs.ext4", "-q", "-F", "-t", "ext4", "-b", "4096",
                 "-L", label, "-U", fs_uuid,
                 "-E", f"hash_seed={fs_uuid},root_owner=0:0,nodiscard",
                 "-d", src, tmp, f"{size_mib}M"], env=env)
            # mke2fs copies each staged file's ctime (which no tool can set) and atime (which
            # reading the tree may bump): pin both afterwards.
            _pin_times(tmp, src, epoch, env)
        except ToolError as exc:
            raise DiskError(f"cannot make ext4 image {path}: {exc}") from exc
        replace_atomically(tmp, path)


def _pin_times(image: Path, staged: Path, epoch: int, env: dict[str, str]) -> None:
    """Set the ctime and atime of every inode copied from ``staged`` (and the root) to ``epoch``."""
    paths = ["/"]
    for dirpath, dirnames, filenames in os.walk(staged):
        rel = Path(dirpath).relative_to(staged)
        for name in sorted(dirnames + filenames):
            paths.append("/" + str(rel / name) if str(rel) != "." else "/" + name)
    for p in paths:
        if any(c.isspace() or c == '"' for c in p):
            raise DiskError(f"{image}: file names with spaces or quotes are not supported: {p!r}")
    script = "".join(f"sif {p} {field} @{epoch}\n" for p in paths for field in ("ctime", "atime"))
    run(["debugfs", "-w", "-f", "-", image], stdin=script.encode(), env=env)


def make_raw(path: Path, size_mib: int) -> None:
    """A sparse, zero-filled raw disk image of ``size_mib`` MiB (no file system)."""
    if size_mib < 1:
        raise DiskError(f"{path}: size must be at least 1 MiB, got {size_mib}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(size_mib << 20)


def read_file(image: Path, inner: str) -> bytes:
    """Read ``inner`` from an ext4 image with ``debugfs -R 'cat ...'`` (no mount needed)."""
    proc = subprocess.run(["debugfs", "-R", f"cat {inner}", str(image)],
                          capture_output=True, check=False)
    # debugfs exits 0 even when the file is missing; it says so on stderr.
    errors = [line for line in proc.stderr.decode(errors="replace").splitlines()
              if line.strip() and not line.startswith("debugfs ")]
    if proc.returncode != 0 or errors:
        raise DiskError(f"cannot read {inner} from {image}: {' '.join(errors) or proc.returncode}")
    return proc.stdout


def build_rootfs(out: Path, kernel_version: str, inputs: list[Path], *, epoch: int,
                 force: bool = False) -> bool:
    """Build the root disk unless it is newer than ``inputs``; True if rebuilt."""
    if not force and up_to_date([out], inputs):
        log.info("rootfs up to date: %s", out)
        return False
    make_ext4(out, ROOTFS_SIZE_MIB, dict(rootfs_files(kernel_version)), epoch=epoch,
              label=ROOTFS_LABEL, fs_uuid=ROOTFS_UUID)
    log.info("built %s", out)
    return True
