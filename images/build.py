#!/usr/bin/env python3
"""Build the Ironvisor guest images from Debian packages: one command, cached, reproducible.

    python3 images/build.py [--out DIR] [--force] [--kernel-deb PATH]

Outputs in DIR (default .cache/images): vmlinuz, vmlinux, kernel.version, modules/,
initrd.cpio.gz, rootfs.ext4 and manifest.json (sizes and SHA-256 of each).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from images.common import (  # noqa: E402
    DEFAULT_OUT_DIR,
    ToolError,
    build_lock,
    package_sources,
    require_tools,
    sha256_file,
    source_date_epoch,
)
from images.cpio import CpioError  # noqa: E402
from images.elf import ElfError  # noqa: E402
from images.initramfs import InitramfsError, build_guest_initrd  # noqa: E402
from images.kernel import KernelError, prepare_kernel  # noqa: E402
from images.kmod import ModuleError  # noqa: E402
from images.rootfs import DiskError, build_rootfs  # noqa: E402

log = logging.getLogger("images.build")

#: Host tools the build runs (see images/README.md for the packages).
REQUIRED_TOOLS = ["apt-cache", "apt-get", "dpkg-deb", "lz4", "busybox", "cpio", "gzip",
                  "modinfo", "mkfs.ext4"]


@dataclass(frozen=True)
class Images:
    """Paths of one finished build."""

    out_dir: Path
    kernel_version: str
    vmlinuz: Path
    vmlinux: Path
    modules_dir: Path
    initrd: Path
    rootfs: Path

    def manifest(self) -> dict[str, object]:
        """Name, size and SHA-256 of every output file."""
        files = {}
        for name, path in (("vmlinuz", self.vmlinuz), ("vmlinux", self.vmlinux),
                           ("initrd", self.initrd), ("rootfs", self.rootfs)):
            files[name] = {"path": str(path), "size": path.stat().st_size,
                           "sha256": sha256_file(path)}
        return {"kernel_version": self.kernel_version, "modules_dir": str(self.modules_dir),
                "files": files}


class BuildError(RuntimeError):
    """Any failure of the image build, with the step that failed."""


def build(out_dir: Path = DEFAULT_OUT_DIR, *, force: bool = False,
          kernel_deb: Path | None = None) -> Images:
    """Build (or reuse) every image in ``out_dir``; safe to call from several processes."""
    out_dir = out_dir.resolve()
    epoch = source_date_epoch()
    try:
        require_tools(REQUIRED_TOOLS if kernel_deb is None else
                      [t for t in REQUIRED_TOOLS if not t.startswith("apt")])
        with build_lock(out_dir):
            kernel = prepare_kernel(out_dir, deb=kernel_deb, force=force)
            work = out_dir / "work"
            initrd = out_dir / "initrd.cpio.gz"
            build_guest_initrd(kernel, initrd, epoch=epoch, work=work, force=force)
            rootfs = out_dir / "rootfs.ext4"
            build_rootfs(rootfs, kernel.version, [out_dir / "kernel.version", *package_sources()],
                         epoch=epoch, force=force)
            images = Images(out_dir, kernel.version, kernel.vmlinuz, kernel.vmlinux,
                            kernel.modules_dir, initrd, rootfs)
            (out_dir / "manifest.json").write_text(json.dumps(images.manifest(), indent=2) + "\n")
            return images
    except (ToolError, KernelError, ModuleError, CpioError, InitramfsError, DiskError,
            ElfError, OSError) as exc:
        raise BuildError(f"image build in {out_dir} failed: {exc}") from exc


def print_summary(images: Images) -> None:
    """Human-readable table of the outputs."""
    manifest = images.manifest()
    print(f"kernel {images.kernel_version}  (modules: {images.modules_dir})")
    for name, info in manifest["files"].items():  # type: ignore[union-attr]
        print(f"  {name:8} {info['size']:>10} B  sha256 {info['sha256']}  {info['path']}")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT_DIR, help="output directory")
    parser.add_argument("--force", action="store_true", help="rebuild every step")
    parser.add_argument("--kernel-deb", type=Path, default=None,
                        help="use this linux-image-*-cloud-amd64-unsigned .deb instead of apt")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        images = build(args.out, force=args.force, kernel_deb=args.kernel_deb)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print_summary(images)
    return 0


if __name__ == "__main__":
    sys.exit(main())
