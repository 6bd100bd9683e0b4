"""Lays the built guest images out as the node agent's local image catalogue.

In standalone mode `ironvisor-handler` resolves image names to files under its images
directory (see handler/README.md, "Images directory"):

| image name (as in examples/*.yaml)      | file(s)                                          |
| --------------------------------------- | ------------------------------------------------ |
| ``ironvisor/guest-kernel:debian-M.m``   | ``ironvisor/guest-kernel/debian-M.m/boot/vmlinuz``, ``.../initrd.img``, ``.../vmlinux`` |
| ``ironvisor/rootfs:busybox``            | ``ironvisor/rootfs/busybox.img`` (raw ext4)      |
| ``ironvisor/debian:bookworm``           | ``ironvisor/debian/bookworm.qcow2`` (``--debian``: the Debian guest disk with its own GRUB, images/debian_disk.py) |

``M.m`` is the Debian kernel's major.minor version (6.1 on Debian 12). Files are
hard-linked from the build output when both are on one file system, else copied; a file
that is already identical is left alone, so running this again is cheap.

    python3 -m images.catalog DIR [--out BUILD_DIR] [--debian]
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import sys
from pathlib import Path

from images.build import DEFAULT_OUT_DIR, BuildError, Images, build
from images.debian_disk import DiskError, build_disk

KERNEL_REPOSITORY = "ironvisor/guest-kernel"
ROOTFS_IMAGE = Path("ironvisor/rootfs/busybox.img")
#: The Debian guest disk's image name and file.
DEBIAN_DISK_NAME = "ironvisor/debian:bookworm"
DEBIAN_DISK_IMAGE = Path("ironvisor/debian/bookworm.qcow2")


def kernel_tag(kernel_version: str) -> str:
    """``6.1.0-28-cloud-amd64`` -> ``debian-6.1``."""
    parts = kernel_version.split(".")
    if len(parts) < 2 or not parts[0].isdigit() or not parts[1].isdigit():
        raise ValueError(f"unexpected kernel version {kernel_version!r}")
    return f"debian-{parts[0]}.{parts[1]}"


def kernel_image_name(images: Images) -> str:
    """The image name a VM's ``firmware.kernelBoot.container.image`` uses for this build."""
    return f"{KERNEL_REPOSITORY}:{kernel_tag(images.kernel_version)}"


def _place(src: Path, dst: Path) -> None:
    if dst.exists() and (os.path.samefile(src, dst) or filecmp.cmp(src, dst, shallow=False)):
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def install(images: Images, images_dir: Path) -> dict[str, Path]:
    """Places the kernel image and the root disk under ``images_dir``; returns the paths."""
    boot = images_dir / KERNEL_REPOSITORY / kernel_tag(images.kernel_version) / "boot"
    placed = {
        "vmlinuz": boot / "vmlinuz",
        "vmlinux": boot / "vmlinux",
        "initrd": boot / "initrd.img",
        "rootfs": images_dir / ROOTFS_IMAGE,
    }
    for key, src in (("vmlinuz", images.vmlinuz), ("vmlinux", images.vmlinux),
                     ("initrd", images.initrd), ("rootfs", images.rootfs)):
        _place(src, placed[key])
    return placed


def install_debian_disk(images_dir: Path) -> Path:
    """Places the Debian guest disk (built now unless cached) as ``DEBIAN_DISK_NAME``."""
    placed = images_dir / DEBIAN_DISK_IMAGE
    _place(build_disk(), placed)
    return placed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images_dir", type=Path, help="the node agent's --images-dir")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT_DIR,
                        help="build output directory (default: %(default)s)")
    parser.add_argument("--debian", action="store_true",
                        help=f"also place the Debian guest disk as {DEBIAN_DISK_NAME}")
    args = parser.parse_args(argv)
    try:
        images = build(args.out)
        placed = install(images, args.images_dir)
        if args.debian:
            placed["debian"] = install_debian_disk(args.images_dir)
    except (BuildError, DiskError, OSError, ValueError) as exc:
        print(f"images.catalog: error: {exc}", file=sys.stderr)
        return 1
    print(f"kernel image {kernel_image_name(images)}:")
    for key, path in placed.items():
        print(f"  {key:8} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
