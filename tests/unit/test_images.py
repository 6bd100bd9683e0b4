"""images/: kernel resolution, vmlinux extraction, module plans, archives, disks."""

from __future__ import annotations

import gzip
import struct
import subprocess
from pathlib import Path

import pytest

from images.build import Images, build
from images.common import sha256_file, source_date_epoch
from images.cpio import Staging, concatenate, pack
from images.elf import ElfError, elf_interpreter, parse_ldd, runtime_files
from images.initramfs import GUEST_MODULES
from images.kernel import KernelError, bzimage_payload, parse_kernel_dependency
from images.kmod import ModuleError, ModuleIndex
from images.rootfs import DiskError, make_ext4, make_raw, read_file


def test_kernel_dependency_is_parsed_not_hard_coded() -> None:
    out = ("linux-image-cloud-amd64\n"
           "  Depends: linux-image-6.1.0-99-cloud-amd64\n")
    assert parse_kernel_dependency(out) == "linux-image-6.1.0-99-cloud-amd64"
    with pytest.raises(KernelError, match="no linux-image-<abi>-cloud-amd64"):
        parse_kernel_dependency("linux-image-cloud-amd64\n  Depends: something-else\n")


def _fake_bzimage(setup_sects: int, payload: bytes, payload_offset: int) -> bytes:
    image = bytearray((setup_sects + 1) * 512 + payload_offset + len(payload))
    image[0x1F1] = setup_sects
    image[0x202:0x206] = b"HdrS"
    struct.pack_into("<II", image, 0x248, payload_offset, len(payload))
    start = (setup_sects + 1) * 512 + payload_offset
    image[start:start + len(payload)] = payload
    return bytes(image)


def test_bzimage_payload_location() -> None:
    image = _fake_bzimage(27, b"PAYLOAD!", 0x1234)
    start, length = bzimage_payload(image)
    assert image[start:start + length] == b"PAYLOAD!"
    with pytest.raises(KernelError, match="HdrS"):
        bzimage_payload(b"\0" * 0x300)
    broken = bytearray(image)
    struct.pack_into("<I", broken, 0x24C, len(image))
    with pytest.raises(KernelError, match="out of bounds"):
        bzimage_payload(bytes(broken))


def test_real_kernel_outputs(images: Images) -> None:
    assert images.vmlinuz.read_bytes()[0x202:0x206] == b"HdrS"
    header = images.vmlinux.read_bytes()[:4]
    assert header == b"\x7fELF"
    assert (images.out_dir / "kernel.version").read_text().strip() == images.kernel_version
    assert images.modules_dir.name == images.kernel_version
    assert (images.out_dir / "modules").resolve() == images.modules_dir.resolve()


def test_module_plan_orders_dependencies_first(images: Images) -> None:
    index = ModuleIndex(images.modules_dir)
    plan = index.plan(GUEST_MODULES)
    names = [n for n, _ in plan.load_order]
    for name, _ in plan.load_order:
        for dep in index.depends(name):
            assert dep in plan.builtin or names.index(dep) < names.index(name), (dep, name)
    assert set(names) | set(plan.builtin) >= {n.replace("-", "_") for n in GUEST_MODULES}
    plan = index.plan(["kvm-amd"], ["no_such_module_xyz"])
    assert [n for n, _ in plan.load_order] == ["irqbypass", "kvm", "kvm_amd"]
    assert plan.absent == ["no_such_module_xyz"]
    with pytest.raises(ModuleError, match="neither"):
        index.plan(["no_such_module_xyz"])


def test_builtin_modules_are_not_loaded(tmp_path: Path) -> None:
    mods = tmp_path / "6.1.0-test"
    (mods / "kernel").mkdir(parents=True)
    (mods / "modules.builtin").write_text("kernel/drivers/virtio/virtio.ko\n")
    plan = ModuleIndex(mods).plan(["virtio"])
    assert plan.builtin == ["virtio"] and plan.load_order == []


def test_initrd_contents(images: Images) -> None:
    listing = subprocess.run(["cpio", "-itv", "--quiet"], input=gzip.decompress(images.initrd.read_bytes()),
                             capture_output=True, check=True).stdout.decode().splitlines()
    names = {line.split()[-1] for line in listing if "->" not in line}
    names |= {line.split()[-3] for line in listing if "->" in line}
    assert {"init", "bin/busybox", "bin/sh", "bin/cttyhack", "dev/console",
            "etc/ironvisor/modules"} <= names
    console = next(line for line in listing if line.endswith(" dev/console"))
    assert console.startswith("crw") and "5,   1" in console
    assert all(" 2024 " in line or "Jan  1" in line for line in listing)  # SOURCE_DATE_EPOCH
    modules_list = subprocess.run(["cpio", "-i", "--quiet", "--to-stdout", "etc/ironvisor/modules"],
                                  input=gzip.decompress(images.initrd.read_bytes()),
                                  capture_output=True, check=True).stdout.decode().split()
    assert [Path(m).stem for m in modules_list][-1] == "virtio_console"


def test_two_builds_are_identical(images: Images, tmp_path: Path) -> None:
    deb = sorted((images.out_dir / "kernel" / "debs").glob("*.deb"))
    first = build(tmp_path / "a", force=True, kernel_deb=deb[-1] if deb else None)
    second = build(tmp_path / "b", force=True, kernel_deb=deb[-1] if deb else None)
    for name in ("initrd", "rootfs", "vmlinux"):
        assert sha256_file(getattr(first, name)) == sha256_file(getattr(second, name)), name
    assert sha256_file(first.initrd) == sha256_file(images.initrd)
    assert sha256_file(first.rootfs) == sha256_file(images.rootfs)


def test_rebuild_is_skipped_when_up_to_date(images: Images) -> None:
    before = images.initrd.stat().st_mtime_ns, images.rootfs.stat().st_mtime_ns
    again = build(images.out_dir)
    assert (again.initrd.stat().st_mtime_ns, again.rootfs.stat().st_mtime_ns) == before


def test_rootfs_has_release_file(images: Images) -> None:
    release = read_file(images.rootfs, "/etc/ironvisor-release").decode()
    assert release == f"ironvisor-rootfs 1 kernel={images.kernel_version}\n"
    fsck = subprocess.run(["e2fsck", "-fn", str(images.rootfs)], capture_output=True, check=False)
    assert fsck.returncode == 0, fsck.stdout.decode()


def test_scratch_disks(tmp_path: Path) -> None:
    disk = tmp_path / "scratch.ext4"
    host_file = tmp_path / "blob"
    host_file.write_bytes(b"\x00\x01binary")
    make_ext4(disk, 8, {"a/b.txt": b"text\n", "/blob": host_file}, epoch=source_date_epoch())
    assert disk.stat().st_size == 8 << 20
    assert read_file(disk, "/a/b.txt") == b"text\n"
    assert read_file(disk, "/blob") == b"\x00\x01binary"
    with pytest.raises(DiskError, match="/missing"):
        read_file(disk, "/missing")
    with pytest.raises(DiskError, match="invalid path"):
        make_ext4(tmp_path / "bad.ext4", 8, {"../x": b""}, epoch=0)
    raw = tmp_path / "raw.img"
    make_raw(raw, 3)
    assert raw.stat().st_size == 3 << 20 and raw.stat().st_blocks == 0


def test_cpio_pack_is_sorted_and_concatenation_aligned(tmp_path: Path) -> None:
    staging = Staging(tmp_path / "root")
    staging.add_bytes("z/file", b"z")
    staging.add_bytes("a/file", b"a")
    staging.add_symlink("m", "a/file")
    out = tmp_path / "x.cpio"
    pack(staging.root, out, epoch=source_date_epoch(), compress=False)
    names = subprocess.run(["cpio", "-it", "--quiet"], input=out.read_bytes(),
                           capture_output=True, check=True).stdout.decode().split()
    assert names == ["a", "a/file", "m", "z", "z/file"]
    odd = tmp_path / "odd"
    odd.write_bytes(b"123")
    joined = tmp_path / "joined"
    concatenate([odd, out], joined)
    data = joined.read_bytes()
    assert data[:4] == b"123\0" and data[4:] == out.read_bytes()
    with pytest.raises(Exception, match="invalid path"):
        staging.add_bytes("../escape", b"")


def test_elf_helpers() -> None:
    assert elf_interpreter(Path("/bin/busybox")) is None
    assert runtime_files(Path("/bin/busybox")) == []
    ip_files = runtime_files(Path("/usr/sbin/ip"))
    assert elf_interpreter(Path("/usr/sbin/ip")) in ip_files
    assert any("libc.so" in f for f in ip_files)
    sample = ("\tlinux-vdso.so.1 (0x00007ffc)\n"
              "\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f00)\n"
              "\t/lib64/ld-linux-x86-64.so.2 (0x00007f01)\n")
    assert parse_ldd(sample, Path("x")) == ["/lib/x86_64-linux-gnu/libc.so.6",
                                            "/lib64/ld-linux-x86-64.so.2"]
    with pytest.raises(ElfError, match="libmissing"):
        parse_ldd("\tlibmissing.so.1 => not found\n", Path("x"))
    with pytest.raises(ElfError, match="not an ELF"):
        elf_interpreter(Path(__file__))
