"""Reproducible initramfs archives: a staging tree packed with ``cpio -H newc``.

The kernel unpacks every archive concatenated in the initrd, each compressed or not, in
order, later files replacing earlier ones: a generic base archive plus small per-test
overlays therefore behave as one tree.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
from pathlib import Path

from images.common import ToolError, clamp_tree_mtimes, replace_atomically, run
from images.elf import elf_interpreter

log = logging.getLogger("images.cpio")


class CpioError(RuntimeError):
    """Staging or packing an archive failed; the message names the path involved."""


class Staging:
    """A directory that becomes the root of an initramfs archive."""

    def __init__(self, root: Path) -> None:
        self.root = root
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)

    def _target(self, dst: str) -> Path:
        rel = dst.lstrip("/")
        if not rel or ".." in Path(rel).parts:
            raise CpioError(f"invalid path in the archive: {dst!r}")
        target = self.root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink() or (target.exists() and not target.is_dir()):
            target.unlink()
        return target

    def mkdir(self, dst: str, mode: int = 0o755) -> None:
        """Create a directory (and its parents)."""
        target = self.root / dst.lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        target.chmod(mode)

    def add_file(self, src: Path, dst: str, mode: int | None = None) -> None:
        """Copy a file's content (following symlinks); keep its permission bits by default."""
        if not src.is_file():
            raise CpioError(f"cannot add {src} to the archive: not a regular file")
        target = self._target(dst)
        shutil.copyfile(src, target)
        target.chmod(mode if mode is not None else stat.S_IMODE(src.stat().st_mode))

    def add_tree(self, src: Path, dst: str) -> None:
        """Copy a directory tree (regular files, directories and symlinks)."""
        if not src.is_dir():
            raise CpioError(f"cannot add {src} to the archive: not a directory")
        for dirpath, dirnames, filenames in os.walk(src):
            rel = Path(dirpath).relative_to(src)
            self.mkdir(str(Path(dst) / rel), stat.S_IMODE(os.stat(dirpath).st_mode))
            for name in sorted(filenames) + sorted(d for d in dirnames if (Path(dirpath) / d).is_symlink()):
                path = Path(dirpath) / name
                out = str(Path(dst) / rel / name)
                if path.is_symlink():
                    self.add_symlink(out, os.readlink(path))
                else:
                    self.add_file(path, out)

    def add_bytes(self, dst: str, data: bytes, mode: int = 0o644) -> None:
        """Write a file with the given content."""
        target = self._target(dst)
        target.write_bytes(data)
        target.chmod(mode)

    def add_symlink(self, dst: str, points_to: str) -> None:
        """Create a symbolic link."""
        self._target(dst).symlink_to(points_to)

    def add_char_device(self, dst: str, major: int, minor: int, mode: int = 0o600) -> None:
        """Create a character device node (needs root, as for any mknod)."""
        target = self._target(dst)
        try:
            os.mknod(target, stat.S_IFCHR | mode, os.makedev(major, minor))
        except PermissionError as exc:
            raise CpioError(f"cannot create device node {dst} ({major}:{minor}): run as root") from exc

    def install_busybox(self, busybox: Path, bin_dir: str = "/bin") -> list[str]:
        """Copy a static busybox to ``bin_dir`` with one symlink per applet; returns the applets."""
        if elf_interpreter(busybox) is not None:
            raise CpioError(f"{busybox} is dynamically linked (install busybox-static)")
        self.add_file(busybox, f"{bin_dir}/busybox", 0o755)
        try:
            applets = run([busybox, "--list"]).decode().split()
        except ToolError as exc:
            raise CpioError(f"cannot list the applets of {busybox}: {exc}") from exc
        for applet in sorted(set(applets) - {"busybox"}):
            self.add_symlink(f"{bin_dir}/{applet}", "busybox")
        return applets


def pack(root: Path, out: Path, *, epoch: int, compress: bool = True) -> None:
    """Pack ``root`` into ``out`` as a newc archive, optionally ``gzip -n``.

    Entries are sorted, owned by 0:0, with every mtime set to ``epoch`` and inode/device
    numbers normalised (``--reproducible``), so equal trees give equal bytes.
    """
    clamp_tree_mtimes(root, epoch)
    names = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        for name in dirnames + filenames:
            names.append(str(rel / name) if str(rel) != "." else name)
    names.sort(key=lambda n: n.encode())
    listing = b"".join(n.encode() + b"\0" for n in names)
    tmp = out.with_name(out.name + ".tmp")
    raw = out.with_name(out.name + ".cpio.tmp") if compress else tmp
    try:
        run(["cpio", "--quiet", "--null", "--create", "--format=newc", "--reproducible",
             "--owner=0:0"], cwd=root, stdin=listing, stdout_path=raw)
        if compress:
            run(["gzip", "-n", "-9", "-c", raw], stdout_path=tmp)
            raw.unlink()
    except ToolError as exc:
        for p in (tmp, raw):
            p.unlink(missing_ok=True)
        raise CpioError(f"cannot pack {root} into {out}: {exc}") from exc
    replace_atomically(tmp, out)
    log.info("packed %s (%d entries, %d bytes)", out, len(names), out.stat().st_size)


def concatenate(parts: list[Path], out: Path) -> None:
    """Write the archives in ``parts`` one after the other into ``out`` (one initrd).

    Each part starts at a 4-byte aligned offset (zero padding in between): the kernel only
    recognises an uncompressed archive there, and skips the zeros.
    """
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "wb") as dst:
        for part in parts:
            pad = -dst.tell() % 4
            dst.write(b"\0" * pad)
            with open(part, "rb") as src:
                shutil.copyfileobj(src, dst, 1 << 20)
    replace_atomically(tmp, out)
