"""The generic guest initramfs: busybox, the virtio modules and ``guest-init.sh`` as /init."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from images.common import package_sources, up_to_date
from images.cpio import Staging, pack
from images.kernel import KernelArtifacts
from images.kmod import ModuleIndex

log = logging.getLogger("images.initramfs")

#: Modules the guest loads, in the order given (dependencies are added before each).
GUEST_MODULES = [
    # virtio-mmio for the KVM launcher, virtio-pci for the software-emulation backend.
    "virtio", "virtio_ring", "virtio_mmio", "virtio_pci", "virtio_blk",
    "failover", "net_failover", "virtio_net",
    # The entropy device (a VM with ``rng``): hw_random (rng-core, built into the Debian
    # cloud kernel) makes it current, /sys/class/misc/hw_random/rng_current = virtio_rng.N.
    "virtio_rng",
    # Kept last in the load order.
    "virtio_console",
]

#: Directories every initramfs needs before /init mounts anything on them.
BASE_DIRS = ["dev", "proc", "sys", "tmp", "run", "root", "etc", "mnt", "scenarios"]

INIT_SCRIPT = Path(__file__).resolve().parent / "guest-init.sh"


class InitramfsError(RuntimeError):
    """The guest initramfs could not be assembled."""


def find_busybox() -> Path:
    """The static busybox of the busybox-static package."""
    for candidate in ("/usr/bin/busybox", "/bin/busybox"):
        path = Path(candidate)
        if path.is_file():
            return path
    found = shutil.which("busybox")
    if found is None:
        raise InitramfsError("no busybox on this host (apt-get install busybox-static)")
    return Path(found)


def stage_base(staging: Staging, busybox: Path) -> None:
    """Directories, /dev/console and busybox: what every initramfs here starts from."""
    for d in BASE_DIRS:
        staging.mkdir(d)
    staging.mkdir("tmp", 0o1777)
    # The kernel opens /dev/console for init's stdio before /init can mount devtmpfs.
    staging.add_char_device("dev/console", 5, 1, 0o600)
    staging.install_busybox(busybox)
    for d in ("sbin", "usr/bin", "usr/sbin"):
        staging.mkdir(d)


def stage_modules(staging: Staging, index: ModuleIndex, required: list[str],
                  optional: list[str] | None = None,
                  list_path: str = "etc/ironvisor/modules") -> list[str]:
    """Copy the modules with their dependencies; returns their in-archive paths, load order.

    The same paths, one a line in load order, are written to ``list_path`` for /init.
    """
    plan = index.plan(required, optional)
    release = index.modules_dir.name
    ordered: list[str] = []
    for _name, ko in plan.load_order:
        rel = ko.relative_to(index.modules_dir)
        dst = f"/lib/modules/{release}/{rel}"
        staging.add_file(ko, dst, 0o644)
        ordered.append(dst)
    staging.add_bytes(list_path, "".join(p + "\n" for p in ordered).encode())
    return ordered


def build_guest_initrd(kernel: KernelArtifacts, out: Path, *, epoch: int, work: Path,
                       force: bool = False) -> bool:
    """Build ``out`` (gzip newc) unless it is newer than all its inputs; True if rebuilt."""
    busybox = find_busybox()
    index = ModuleIndex(kernel.modules_dir)
    plan = index.plan(GUEST_MODULES)
    inputs = [busybox, INIT_SCRIPT, *package_sources(), *(p for _, p in plan.load_order)]
    if not force and up_to_date([out], inputs):
        log.info("initrd up to date: %s", out)
        return False
    staging = Staging(work / "guest-initrd")
    stage_base(staging, busybox)
    modules = stage_modules(staging, index, GUEST_MODULES)
    staging.add_file(INIT_SCRIPT, "init", 0o755)
    staging.add_bytes("etc/ironvisor-release", f"ironvisor-guest kernel={kernel.version}\n".encode())
    staging.add_bytes("etc/hostname", b"ironvisor-guest\n")
    staging.add_bytes("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    staging.add_bytes("etc/group", b"root:x:0:\n")
    log.info("guest initrd: %d modules: %s", len(modules), ", ".join(Path(m).stem for m in modules))
    pack(staging.root, out, epoch=epoch, compress=True)
    shutil.rmtree(staging.root, ignore_errors=True)
    return True


def build_overlay(files: dict[str, bytes], out: Path, *, epoch: int, work: Path,
                  compress: bool = True) -> None:
    """A small archive of extra files (e.g. ``/scenarios/NAME.sh``) to append to an initrd.

    Paths ending in ``.sh`` are made executable.
    """
    staging = Staging(work / f"overlay-{out.name}")
    for dst, data in sorted(files.items()):
        staging.add_bytes(dst, data, 0o755 if dst.endswith(".sh") else 0o644)
    pack(staging.root, out, epoch=epoch, compress=compress)
    shutil.rmtree(staging.root, ignore_errors=True)
