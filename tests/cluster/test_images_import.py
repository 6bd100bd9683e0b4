"""The offline OCI images (images/containers.py) in the cluster's real containerd.

Imports every image with the real command line into the containerd of scripts/cluster.sh
(its socket, namespace k8s.io), then checks what containerd has: each image under its
full normalised name at the archive's manifest digest, a second import that stores nothing
new, and the unpacked content of each image (mounted read-only with `ctr images mount`),
including running the node binaries and the controller inside their image's root file
system and the pause image as a container that exits 0 on SIGTERM.

Needs the cluster's containerd (scripts/cluster.sh up); fails, never skips, without it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from images import containers, elf
from images.containerd import CRI_NAMESPACE

REPO_ROOT = Path(__file__).resolve().parents[2]
SOCKET = containers.DEFAULT_SOCKET
ARCHIVES = containers.cache_dir()


def ctr(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ctr", "--address", str(SOCKET), "-n", CRI_NAMESPACE, *args],
                          capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        pytest.fail(f"ctr {' '.join(args)} exited {done.returncode}: {done.stderr.strip()}")
    return done


def import_images() -> dict[str, str]:
    """`python3 -m images.containers import`; {full name: manifest digest} it printed."""
    done = subprocess.run(["python3", "-m", "images.containers", "import",
                           "--containerd-socket", str(SOCKET)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        pytest.fail(f"images.containers import failed ({done.returncode}):\n"
                    f"{done.stdout[-3000:]}\n{done.stderr[-5000:]}")
    return dict(line.split() for line in done.stdout.splitlines() if line.strip())


@pytest.fixture(scope="module")
def imported() -> dict[str, str]:
    if os.geteuid() != 0:
        pytest.fail("importing into the cluster's containerd needs root")
    if not SOCKET.is_socket():
        pytest.fail(f"the cluster's containerd is not running: no socket at {SOCKET} "
                    "(bring the cluster up with scripts/cluster.sh up)")
    version = ctr("version", check=False, timeout=20)
    if version.returncode != 0:
        pytest.fail(f"containerd at {SOCKET} does not answer: {version.stderr.strip()}")
    return import_images()


@contextlib.contextmanager
def mounted(reference: str, tmp_path: Path) -> Iterator[Path]:
    """The image's root file system, mounted read-only through containerd's snapshotter."""
    target = tmp_path / f"mnt-{uuid.uuid4().hex[:8]}"
    target.mkdir()
    ctr("images", "mount", reference, str(target))
    try:
        yield target
    finally:
        ctr("images", "unmount", "--rm", str(target), check=False)


def files_under(root: Path) -> set[str]:
    return {"/" + str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir()}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_every_image_is_listed_under_its_full_name_at_the_archive_digest(
        imported: dict[str, str]) -> None:
    expected = {containers.listed_reference(image) for image in containers.IMAGES}
    assert set(imported) == expected, "every image is imported (none skipped)"
    listed = ctr("images", "ls").stdout.splitlines()[1:]
    digests = {line.split()[0]: line.split()[2] for line in listed}
    for name, digest in imported.items():
        assert name.startswith("docker.io/ironvisor/")
        assert digests.get(name) == digest, f"{name} in containerd at {SOCKET}"
        meta = json.loads((ARCHIVES / f"{name_of(name)}.json").read_text())
        assert meta["manifest_digest"] == digest


def name_of(reference: str) -> str:
    return next(i.name for i in containers.IMAGES if containers.listed_reference(i) == reference)


def test_a_second_import_changes_nothing(imported: dict[str, str]) -> None:
    started = time.monotonic()
    again = import_images()
    assert again == imported
    # Nothing is rebuilt: only cargo's no-op check and the re-import (no new blobs).
    assert time.monotonic() - started < 300


def test_pause_is_one_static_binary_that_exits_0_on_sigterm(imported: dict[str, str],
                                                            tmp_path: Path) -> None:
    reference = "docker.io/ironvisor/pause:3.10"
    with mounted(reference, tmp_path) as root:
        assert files_under(root) == {"/pause"}
        assert elf.elf_interpreter(root / "pause") is None, "statically linked"
    name = f"ironvisor-pause-test-{uuid.uuid4().hex[:8]}"
    ctr("run", "-d", reference, name)
    try:
        time.sleep(1)
        assert " RUNNING" in ctr("tasks", "ls").stdout.split(name, 1)[1].splitlines()[0]
        ctr("tasks", "kill", "--signal", "SIGTERM", name)
        deadline = time.monotonic() + 10
        while "STOPPED" not in ctr("tasks", "ls").stdout.split(name, 1)[1].splitlines()[0]:
            assert time.monotonic() < deadline, "pause did not stop on SIGTERM"
            time.sleep(0.2)
        # ctr exits 0 either way and only warns about a non-zero exit status.
        deleted = ctr("tasks", "delete", name)
        assert "non-zero exit code" not in deleted.stderr, deleted.stderr
    finally:
        ctr("tasks", "delete", "--force", name, check=False)
        ctr("containers", "delete", name, check=False)


def test_container_disk_holds_only_the_guest_root_disk(imported: dict[str, str],
                                                       tmp_path: Path) -> None:
    from images.build import build
    guest = build()
    with mounted("docker.io/ironvisor/rootfs:busybox", tmp_path) as root:
        assert files_under(root) == {"/disk/rootfs.ext4"}
        disk = root / "disk" / "rootfs.ext4"
        assert disk.stat().st_mode & 0o7777 == 0o644
        assert (disk.stat().st_uid, disk.stat().st_gid) == (0, 0)
        assert sha256(disk) == sha256(guest.rootfs)


def test_guest_kernel_image_holds_the_kernel_build(imported: dict[str, str],
                                                   tmp_path: Path) -> None:
    from images.build import build
    from images.catalog import kernel_image_name
    guest = build()
    reference = containers.normalize_reference(kernel_image_name(guest))
    assert reference in imported
    with mounted(reference, tmp_path) as root:
        assert files_under(root) == {"/boot/vmlinuz", "/boot/initrd.img", "/boot/vmlinux"}
        for name, built in (("vmlinuz", guest.vmlinuz), ("initrd.img", guest.initrd),
                            ("vmlinux", guest.vmlinux)):
            assert sha256(root / "boot" / name) == sha256(built)


def run_in(root: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """A program of the image run in its root file system (its own libraries)."""
    return subprocess.run(["chroot", str(root), *argv], capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("image", ["launcher", "handler"])
def test_node_images_run_the_ironvisor_binaries_on_their_debian_base(
        imported: dict[str, str], tmp_path: Path, image: str) -> None:
    reference = f"docker.io/ironvisor/{image}:{containers.VERSION}"
    with mounted(reference, tmp_path) as root:
        for binary in containers.NODE_BINARIES:
            done = run_in(root, f"/usr/local/bin/{binary}", "--help")
            assert done.returncode == 0, f"{binary} in {reference}: {done.stderr}"
        for tool in ("/usr/sbin/libvirtd", "/usr/sbin/virtlogd", "/usr/bin/qemu-system-x86_64",
                     "/usr/bin/qemu-img", "/bin/busybox", "/usr/bin/ip", "/usr/lib/cni/bridge",
                     "/usr/lib/cni/host-local", "/usr/sbin/nft", "/usr/sbin/dnsmasq"):
            assert (root / tool.lstrip("/")).exists(), f"{tool} in {reference}"
        version = run_in(root, "/usr/bin/qemu-system-x86_64", "--version")
        assert version.returncode == 0 and "QEMU emulator" in version.stdout, version.stderr
        assert run_in(root, "/usr/sbin/libvirtd", "--version").returncode == 0
        conf = (root / "etc/libvirt/qemu.conf").read_text()
        assert containers.QEMU_CONF_BLOCK.decode().strip() in conf
        for user in ("libvirt-qemu",):
            assert run_in(root, "/usr/bin/getent", "passwd", user).returncode == 0
        for group in ("kvm", "libvirt", "libvirt-qemu"):
            assert run_in(root, "/usr/bin/getent", "group", group).returncode == 0
        assert not (root / "usr/share/man").exists() or not any((root / "usr/share/man").iterdir())


def test_launcher_and_handler_share_their_layers(imported: dict[str, str]) -> None:
    launcher, handler = (f"docker.io/ironvisor/{name}:{containers.VERSION}"
                         for name in ("launcher", "handler"))
    assert imported[launcher] == imported[handler] or _layers(launcher) == _layers(handler)


def _layers(reference: str) -> list[str]:
    digest = ctr("images", "ls", f"name=={reference}").stdout.splitlines()[1].split()[2]
    manifest = json.loads(ctr("content", "get", digest).stdout)
    return [layer["digest"] for layer in manifest["layers"]]


@pytest.mark.parametrize("short, binary", [("controller", "ironvisor-controller"),
                                           ("apiserver", "ironvisor-apiserver")])
def test_service_image_runs_its_binary(imported: dict[str, str], tmp_path: Path,
                                       short: str, binary: str) -> None:
    reference = f"docker.io/ironvisor/{short}:{containers.VERSION}"
    with mounted(reference, tmp_path) as root:
        assert (root / f"usr/local/bin/{binary}").is_file()
        assert (root / "etc/ssl/certs/ca-certificates.crt").stat().st_size > 100_000
        done = run_in(root, f"/usr/local/bin/{binary}", "--help")
        assert done.returncode == 0, done.stderr
