"""containerDisks from OCI archives on the standalone node (`oci-archive:/path.tar:tag`):
the real busybox root-disk image that `python3 -m images.containers` builds (KubeVirt's
containerDisk convention: one file under /disk/) boots a VM, is unpacked once into the
node's cache (`<data-dir>/oci-disks/sha256-<manifest>/`) and a second VM from the same
archive reuses that entry through its own overlay; a corrupt archive fails the start with
a reason naming the image."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from images.containers import Inputs, build_image, select
from tests.standalone.node import Node

pytestmark = pytest.mark.tcg

ROOT_DISK_TEXT = "hello from the ironvisor root disk"


def manifest(name: str, image: str) -> str:
    """A VM booting the node's guest kernel with its root disk from ``image``."""
    return f"""\
apiVersion: ironvisor.io/v1alpha1
kind: VirtualMachine
metadata:
  name: {name}
spec:
  runStrategy: Always
  template:
    spec:
      domain:
        memory:
          guest: 256Mi
        firmware:
          kernelBoot:
            kernelArgs: "root=/dev/vda rw"
            container:
              image: ironvisor/guest-kernel:debian-6.1
              kernelPath: /boot/vmlinuz
              initrdPath: /boot/initrd.img
        devices:
          disks:
            - name: rootdisk
              disk:
                bus: virtio
      volumes:
        - name: rootdisk
          containerDisk:
            image: {image}
"""


@pytest.fixture(scope="module")
def rootfs_archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The rootfs containerDisk archive and its manifest digest, built by images.containers
    from the session's guest images into a temporary directory (with a layer cache of its
    own, so the shared archive cache and its lock are left alone; the build is
    deterministic, so this is the archive `python3 -m images.containers build` writes)."""
    out = tmp_path_factory.mktemp("oci")
    (image,) = select(["rootfs"])
    built = build_image(image, Inputs(out / "cache"), out)
    return built.archive, built.manifest_digest


def apply(node: Node, tmp_path: Path, name: str, image: str) -> None:
    path = tmp_path / f"{name}.yaml"
    path.write_text(manifest(name, image))
    node.virtctl("apply", "-f", str(path))


def delete(node: Node, name: str) -> None:
    node.virtctl("delete", name, check=False)
    deadline = time.monotonic() + 90
    while node.virtctl("get", name, check=False).returncode == 0:
        assert time.monotonic() < deadline, f"VM {name} was not deleted within 90 s"
        time.sleep(0.5)


def unpack_log(node: Node) -> list[str]:
    return [line for line in node.log().splitlines()
            if "containerDisk unpacked into the cache" in line]


def check_root_disk(node: Node, name: str) -> None:
    """The guest boots and its /dev/vda is the image's ext4 root disk."""
    console = node.console(name)
    try:
        console.expect("IRONVISOR-GUEST-INIT-REACHED", timeout=180)
        console.send("\r")
        console.expect(r"[#$] ", timeout=60)
        out = console.run("mkdir -p /mnt/r && mount -t ext4 -o ro /dev/vda /mnt/r && "
                          "cat /mnt/r/srv/hello.txt; umount /mnt/r", "IV-ROOT", timeout=60)
        assert ROOT_DISK_TEXT in out, out
        console.detach()
    finally:
        console.close()


def test_two_vms_boot_from_one_oci_archive_unpacked_once(
        node: Node, tmp_path: Path, rootfs_archive: tuple[Path, str]) -> None:
    archive, digest = rootfs_archive
    image = f"oci-archive:{archive}:busybox"
    entry = node.data_dir / "oci-disks" / digest.replace(":", "-")
    unpacks_before = len(unpack_log(node))
    started = time.monotonic()
    apply(node, tmp_path, "oci-one", image)
    try:
        node.wait_status("oci-one", "Running", timeout=120)
        running_s = time.monotonic() - started
        assert (entry / "disk.img").is_file(), sorted(entry.parent.iterdir())
        cached = (entry / "disk.img").stat()
        check_root_disk(node, "oci-one")

        apply(node, tmp_path, "oci-two", image)
        try:
            node.wait_status("oci-two", "Running", timeout=120)
            check_root_disk(node, "oci-two")
            again = (entry / "disk.img").stat()
            assert (again.st_ino, again.st_mtime_ns) == (cached.st_ino, cached.st_mtime_ns)
            assert [p.name for p in entry.parent.iterdir()] == [entry.name]
            unpacks = unpack_log(node)[unpacks_before:]
            assert len(unpacks) == 1, unpacks
            assert "already unpacked" in node.log()
            # Each VM's own overlay names the cached file as its backing file.
            for vm in ("oci-one", "oci-two"):
                disks = node.data_dir / "vms" / "default" / vm / "disks"
                header = (disks / "rootdisk.overlay.qcow2").read_bytes()[:4096]
                assert str(entry / "disk.img").encode() in header, vm
        finally:
            delete(node, "oci-two")
    finally:
        delete(node, "oci-one")
    elapsed = re.search(r"elapsed_ms=(\d+)", unpacks[0])
    usage = sum(p.stat().st_blocks * 512 for p in entry.iterdir())
    print(f"\nunpack {elapsed.group(1) if elapsed else '?'} ms, cache entry "
          f"{usage / 2**20:.1f} MiB on disk for a {cached.st_size / 2**20:.0f} MiB disk; "
          f"first VM Running after {running_s:.1f} s")
    # The cache outlives the VMs: it is the overlays' backing store, not theirs.
    assert (entry / "disk.img").is_file()


def test_a_corrupt_archive_fails_the_start_with_the_reason(
        node: Node, tmp_path: Path, rootfs_archive: tuple[Path, str]) -> None:
    archive, _ = rootfs_archive
    broken = tmp_path / "broken.tar"
    # Cut inside the layer blob (the last member). The archive is read before the cache
    # is looked at, so this fails even though the image's entry may already be cached.
    data = archive.read_bytes()
    broken.write_bytes(data[:len(data) - 20000])
    image = f"oci-archive:{broken}:busybox"
    entries_before = sorted((node.data_dir / "oci-disks").glob("*"))
    apply(node, tmp_path, "oci-broken", image)
    try:
        deadline = time.monotonic() + 60
        view: dict = {}
        while time.monotonic() < deadline:
            view = node.view("oci-broken")
            text = json.dumps(view.get("status", {}))
            if "ImageUnusable" in text:
                break
            time.sleep(0.5)
        text = json.dumps(view.get("status", {}))
        assert "ImageUnusable" in text, json.dumps(view, indent=1)
        describe = node.virtctl("describe", "oci-broken").stdout
        assert str(broken) in describe, describe
        assert "is not a readable tar archive (corrupt or truncated?)" in describe, describe
        print("\n" + next(line.strip() for line in describe.splitlines() if "truncated?" in line))
        assert not node.instance_dirs(), "an instance was started from a corrupt archive"
        assert sorted((node.data_dir / "oci-disks").glob("*")) == entries_before
    finally:
        delete(node, "oci-broken")
