"""The guest (and L1) kernel: resolved by name from Debian's archive, never by a fixed ABI.

``linux-image-cloud-amd64`` is a metapackage whose one dependency names the current cloud
kernel (``linux-image-<abi>-cloud-amd64``); its ``-unsigned`` twin holds the same kernel
without the Secure Boot wrapper. The bzImage is used as is (``vmlinuz``) and the ELF
``vmlinux`` is unpacked from its compressed payload for PVH boot.
"""

from __future__ import annotations

import logging
import os
import pwd
import re
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

from images.common import ToolError, replace_atomically, run, up_to_date

log = logging.getLogger("images.kernel")

#: Metapackage that always depends on the current Debian cloud kernel.
KERNEL_METAPACKAGE = "linux-image-cloud-amd64"

# Offsets in the x86 boot protocol's setup header (Documentation/arch/x86/boot.rst).
_SETUP_SECTS_OFFSET = 0x1F1
_HDR_MAGIC_OFFSET = 0x202
_PAYLOAD_OFFSET_OFFSET = 0x248
_PAYLOAD_LENGTH_OFFSET = 0x24C
_LZ4_LEGACY_MAGIC = b"\x02\x21\x4c\x18"
_LZ4_FRAME_MAGIC = b"\x04\x22\x4d\x18"
_OTHER_MAGICS = {
    b"\x1f\x8b": "gzip",
    b"\xfd7zXZ": "xz",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"BZh": "bzip2",
    b"\x5d\x00\x00": "lzma",
    b"\x89LZO": "lzo",
}


class KernelError(RuntimeError):
    """The kernel package could not be resolved, fetched or unpacked; says which step."""


@dataclass(frozen=True)
class KernelArtifacts:
    """Everything the image builders need from one kernel package."""

    #: Kernel release, e.g. ``6.1.0-56-cloud-amd64``.
    version: str
    #: The bzImage.
    vmlinuz: Path
    #: The ELF image unpacked from the bzImage payload (PVH entry point).
    vmlinux: Path
    #: ``lib/modules/<version>`` of the extracted package.
    modules_dir: Path


def resolve_kernel_package() -> str:
    """Name of the current cloud kernel package, e.g. ``linux-image-6.1.0-56-cloud-amd64``."""
    try:
        out = run(["apt-cache", "depends", KERNEL_METAPACKAGE]).decode()
    except ToolError as exc:
        raise KernelError(
            f"cannot resolve {KERNEL_METAPACKAGE} with apt-cache (run 'apt-get update' first?): {exc}"
        ) from exc
    return parse_kernel_dependency(out)


def parse_kernel_dependency(apt_cache_depends_output: str) -> str:
    """Pick the ``linux-image-<abi>-cloud-amd64`` dependency out of ``apt-cache depends`` text."""
    pattern = re.compile(r"^\s*\|?Depends:\s*(linux-image-[0-9][^\s<>]*-cloud-amd64)\s*$", re.M)
    names = pattern.findall(apt_cache_depends_output)
    if not names:
        raise KernelError(
            f"no linux-image-<abi>-cloud-amd64 dependency in 'apt-cache depends "
            f"{KERNEL_METAPACKAGE}' output:\n{apt_cache_depends_output.strip()}"
        )
    return names[0]


def download_unsigned(package: str, dest: Path) -> Path:
    """``apt-get download <package>-unsigned`` into ``dest`` (reused when already there)."""
    unsigned = f"{package}-unsigned"
    dest.mkdir(parents=True, exist_ok=True)
    existing = sorted(dest.glob(f"{unsigned}_*.deb"))
    if existing:
        log.info("kernel package %s already downloaded: %s", unsigned, existing[-1].name)
        return existing[-1]
    # apt drops privileges to _apt for downloads; give it the directory so the download
    # stays sandboxed (otherwise apt only warns and downloads as root).
    try:
        apt_user = pwd.getpwnam("_apt")
        os.chown(dest, apt_user.pw_uid, -1)
    except (KeyError, PermissionError):
        pass
    log.info("downloading %s", unsigned)
    try:
        run(["apt-get", "download", unsigned], cwd=dest)
    except ToolError as exc:
        raise KernelError(f"cannot download {unsigned} into {dest}: {exc}") from exc
    debs = sorted(dest.glob(f"{unsigned}_*.deb"))
    if not debs:
        raise KernelError(f"apt-get download {unsigned} left no {unsigned}_*.deb in {dest}")
    return debs[-1]


def extract_deb(deb: Path, root: Path) -> None:
    """``dpkg-deb -x`` the package into ``root`` (replacing an earlier extraction)."""
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        run(["dpkg-deb", "-x", deb, tmp])
    except ToolError as exc:
        raise KernelError(f"cannot extract {deb}: {exc}") from exc
    shutil.rmtree(root, ignore_errors=True)
    os.replace(tmp, root)


def find_release(root: Path) -> str:
    """The kernel release of an extracted package (the one ``lib/modules/<release>``)."""
    mod_root = root / "lib" / "modules"
    releases = sorted(p.name for p in mod_root.iterdir()) if mod_root.is_dir() else []
    if len(releases) != 1:
        raise KernelError(f"expected exactly one release under {mod_root}, found {releases}")
    return releases[0]


def bzimage_payload(bzimage: bytes) -> tuple[int, int]:
    """(absolute offset, length) of the compressed kernel inside a bzImage."""
    if len(bzimage) < 0x250 or bzimage[_HDR_MAGIC_OFFSET:_HDR_MAGIC_OFFSET + 4] != b"HdrS":
        raise KernelError("not a bzImage: no 'HdrS' setup header magic at 0x202")
    setup_sects = bzimage[_SETUP_SECTS_OFFSET] or 4
    (payload_offset,) = struct.unpack_from("<I", bzimage, _PAYLOAD_OFFSET_OFFSET)
    (payload_length,) = struct.unpack_from("<I", bzimage, _PAYLOAD_LENGTH_OFFSET)
    start = (setup_sects + 1) * 512 + payload_offset
    if payload_length == 0 or start + payload_length > len(bzimage):
        raise KernelError(
            f"bzImage payload out of bounds: offset {start:#x} length {payload_length:#x} "
            f"file size {len(bzimage):#x}"
        )
    return start, payload_length


def extract_vmlinux(bzimage_path: Path, vmlinux_path: Path) -> None:
    """Unpack the ELF vmlinux from an LZ4-compressed bzImage (``lz4 -dc`` on the payload)."""
    data = bzimage_path.read_bytes()
    start, length = bzimage_payload(data)
    payload = data[start:start + length]
    if not payload.startswith((_LZ4_LEGACY_MAGIC, _LZ4_FRAME_MAGIC)):
        kind = next((k for m, k in _OTHER_MAGICS.items() if payload.startswith(m)), "unknown")
        raise KernelError(
            f"{bzimage_path}: payload is {kind}-compressed (magic {payload[:4].hex()}), "
            "only LZ4 is supported"
        )
    # The build appends the decompressed size (u32 LE) after the stream; the LZ4 legacy
    # format has no end marker, so lz4 would read those bytes as another block.
    (expected_size,) = struct.unpack("<I", payload[-4:])
    tmp = vmlinux_path.with_name(vmlinux_path.name + ".tmp")
    try:
        run(["lz4", "-dc"], stdin=payload[:-4], stdout_path=tmp)
    except ToolError as exc:
        raise KernelError(f"lz4 could not decompress the payload of {bzimage_path}: {exc}") from exc
    size = tmp.stat().st_size
    with open(tmp, "rb") as f:
        magic = f.read(4)
    if magic != b"\x7fELF" or size != expected_size:
        tmp.unlink()
        raise KernelError(
            f"payload of {bzimage_path} decompressed to {size} bytes (expected {expected_size}, "
            f"magic {magic.hex()}): not the kernel ELF"
        )
    replace_atomically(tmp, vmlinux_path)


def prepare_kernel(out_dir: Path, *, deb: Path | None = None, force: bool = False) -> KernelArtifacts:
    """Resolve, download and unpack the cloud kernel into ``out_dir``; cached between runs.

    ``deb`` uses a local ``linux-image-*-cloud-amd64-unsigned`` package instead of
    resolving and downloading one.
    """
    kdir = out_dir / "kernel"
    if deb is None:
        package = resolve_kernel_package()
        log.info("current cloud kernel: %s", package)
        deb = download_unsigned(package, kdir / "debs")
    elif not deb.is_file():
        raise KernelError(f"kernel package {deb} does not exist")
    root = kdir / "root"
    stamp = kdir / "extracted-from"
    if force or not (up_to_date([stamp], [deb]) and stamp.read_text() == str(deb.resolve())):
        log.info("extracting %s", deb.name)
        extract_deb(deb, root)
        stamp.write_text(str(deb.resolve()))
    release = find_release(root)
    vmlinuz_src = root / "boot" / f"vmlinuz-{release}"
    if not vmlinuz_src.is_file():
        raise KernelError(f"{deb.name} has no boot/vmlinuz-{release}")

    vmlinuz = out_dir / "vmlinuz"
    vmlinux = out_dir / "vmlinux"
    version_file = out_dir / "kernel.version"
    modules_link = out_dir / "modules"
    if force or not up_to_date([vmlinuz, vmlinux, version_file], [vmlinuz_src]):
        log.info("unpacking vmlinux from %s", vmlinuz_src.name)
        tmp = vmlinuz.with_name("vmlinuz.tmp")
        shutil.copyfile(vmlinuz_src, tmp)
        replace_atomically(tmp, vmlinuz)
        extract_vmlinux(vmlinuz, vmlinux)
        version_file.write_text(release + "\n")
    target = Path("kernel") / "root" / "lib" / "modules" / release
    if not modules_link.is_symlink() or Path(os.readlink(modules_link)) != target:
        if modules_link.is_symlink() or modules_link.exists():
            modules_link.unlink()
        modules_link.symlink_to(target)
    return KernelArtifacts(release, vmlinuz, vmlinux, root / "lib" / "modules" / release)
