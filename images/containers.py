"""Ironvisor's container images for cluster mode, built offline and imported into the
test cluster's containerd. Nothing is pulled: every image is written by images/oci.py from
the project's own binaries, the guest images (images/build.py) and a Debian root file
system made with mmdebstrap from Debian's packages.

    python3 -m images.containers build  [--only NAME ...]
    python3 -m images.containers import [--only NAME ...] [--containerd-socket PATH]
    python3 -m images.containers list

| name | reference | contents |
|---|---|---|
| pause | docker.io/ironvisor/pause:3.10 | the `pause` binary (images/pause) and its libraries |
| rootfs | docker.io/ironvisor/rootfs:busybox | containerDisk: `/disk/rootfs.ext4` (KubeVirt's convention) |
| guest-kernel | docker.io/ironvisor/guest-kernel:debian-6.1 | `/boot/vmlinuz`, `/boot/initrd.img`, `/boot/vmlinux` |
| launcher | docker.io/ironvisor/launcher:0.1.0 | Debian base (libvirt, QEMU, busybox, iproute2, nftables, dnsmasq, CNI plugins) + Ironvisor binaries |
| handler | docker.io/ironvisor/handler:0.1.0 | the same two layers (one copy in containerd) |
| controller | docker.io/ironvisor/controller:0.1.0 | `ironvisor-controller`, its libraries, CA certificates |

Archives are cached under $IRONVISOR_CACHE_DIR/oci (default /var/cache/ironvisor/oci),
keyed by the SHA-256 of every input, so a rebuild with nothing changed writes nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from images.oci import Entry, ImageSpec, Layer, OciError, normalize_reference, write_archive

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("IRONVISOR_CACHE_DIR", "/var/cache/ironvisor")) / "oci"
DEFAULT_SOCKET = "/run/ironvisor-cluster/containerd/containerd.sock"
VERSION = "0.1.0"
RELEASE = REPO_ROOT / "target" / "release"

#: Debian packages of the base layer shared by the launcher and handler images.
BASE_PACKAGES = [
    "libvirt-daemon", "libvirt-daemon-driver-qemu", "qemu-system-x86", "qemu-utils",
    "busybox-static", "iproute2", "ca-certificates", "nftables", "iptables", "dnsmasq-base",
    "procps", "containernetworking-plugins", "passwd",
]
BASE_SUITE = "bookworm"
BASE_MIRROR = "http://deb.debian.org/debian"

#: libvirt's QEMU driver inside an unprivileged launcher pod: QEMU runs as the container's
#: root, libvirt neither chowns files, nor makes cgroups (the pod's cgroup holds it), nor
#: mount namespaces (no CAP_SYS_ADMIN), and there is no AppArmor/SELinux to drive.
QEMU_CONF = b"""# Written by images/containers.py for Ironvisor launcher pods.
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
"""

log = logging.getLogger("images.containers")


class ContainersError(RuntimeError):
    """An image could not be built or imported; the message says which and why."""


def run(cmd: list[str], what: str, **kwargs) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        raise ContainersError(f"{what}: {' '.join(cmd)} exited {done.returncode}: "
                              f"{(done.stderr or done.stdout).strip()[-2000:]}")
    return done


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def shared_libraries(binary: Path) -> list[Path]:
    """The libraries `ldd` resolves for `binary`, and its ELF interpreter."""
    done = run(["ldd", str(binary)], f"listing the libraries of {binary}", check=False)
    libs = []
    for line in done.stdout.splitlines():
        match = re.search(r"(/\S+) \(0x", line)
        if match:
            libs.append(Path(match.group(1)))
    return libs


def binary_entries(binary: Path, target: str) -> list[Entry]:
    """A binary at `target` and the libraries it loads, at their host paths."""
    if not binary.is_file():
        raise ContainersError(f"{binary} does not exist (cargo build --release failed?)")
    entries = [Entry(target, source=binary, mode=0o755)]
    for lib in shared_libraries(binary):
        entries.append(Entry(str(lib), source=lib.resolve(), mode=0o755))
    return entries


def cargo_build(packages: list[str]) -> None:
    cmd = ["cargo", "build", "--release", "--locked"]
    for package in packages:
        cmd += ["-p", package]
    log.info("building %s", ", ".join(packages))
    run(cmd, "building the Ironvisor binaries", cwd=REPO_ROOT)


def guest_images():
    from images.build import build
    return build()


def base_rootfs() -> Path:
    """The Debian root file system tar of the launcher and handler images (cached)."""
    hook = ("getent group kvm >/dev/null || groupadd --system kvm; "
            "getent group libvirt >/dev/null || groupadd --system libvirt; "
            "getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu; "
            "getent passwd libvirt-qemu >/dev/null || useradd --system --no-create-home "
            "--home-dir /var/lib/libvirt -g libvirt-qemu -G kvm libvirt-qemu")
    key = hashlib.sha256(json.dumps([BASE_SUITE, BASE_PACKAGES, hook]).encode()).hexdigest()[:16]
    out = CACHE / f"base-{BASE_SUITE}-{key}.tar"
    if out.is_file():
        return out
    CACHE.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["which", "mmdebstrap"], capture_output=True).returncode != 0:
        raise ContainersError("mmdebstrap is not installed (apt-get install mmdebstrap)")
    log.info("building the Debian base root file system with mmdebstrap (cached as %s)", out)
    partial = out.with_suffix(".partial.tar")
    run(["mmdebstrap", "--mode=root", "--variant=apt", "--format=tar",
         "--include=" + ",".join(BASE_PACKAGES),
         f"--customize-hook=chroot \"$1\" sh -c '{hook}'",
         "--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-exclude=/usr/share/man/*",
         "--dpkgopt=path-exclude=/usr/share/locale/*", "--dpkgopt=path-exclude=/usr/share/info/*",
         BASE_SUITE, str(partial), BASE_MIRROR],
        "mmdebstrap of the launcher base", env={**os.environ, "SOURCE_DATE_EPOCH": "0"})
    partial.replace(out)
    return out


def node_binaries_layer() -> Layer:
    entries = [Entry("/etc/libvirt/qemu.conf", data=QEMU_CONF)]
    for name in ("ironvisor-handler", "ironvisor-launcher", "ironvisor-launcher-qemu"):
        entries.append(Entry(f"/usr/local/bin/{name}", source=RELEASE / name, mode=0o755))
    return Layer(entries=entries, comment="Ironvisor node binaries and libvirt settings")


def spec_pause() -> ImageSpec:
    cargo_build(["ironvisor-pause"])
    return ImageSpec("docker.io/ironvisor/pause:3.10",
                     [Layer(binary_entries(RELEASE / "pause", "/pause"))], entrypoint=["/pause"])


def spec_rootfs() -> ImageSpec:
    built = guest_images()
    return ImageSpec("docker.io/ironvisor/rootfs:busybox", [Layer([
        Entry("/disk"), Entry("/disk/rootfs.ext4", source=built.rootfs, mode=0o644)],
        comment="containerDisk: the busybox guest's root disk")])


def spec_guest_kernel() -> ImageSpec:
    from images.catalog import kernel_tag
    built = guest_images()
    return ImageSpec(f"docker.io/ironvisor/guest-kernel:{kernel_tag(built.kernel_version)}", [Layer([
        Entry("/boot/vmlinuz", source=built.vmlinuz, mode=0o644),
        Entry("/boot/initrd.img", source=built.initrd, mode=0o644),
        Entry("/boot/vmlinux", source=built.vmlinux, mode=0o644)],
        comment="kernelBoot: the Debian cloud kernel and the guest initrd")])


def spec_launcher(name: str = "launcher") -> ImageSpec:
    cargo_build(["ironvisor-handler", "ironvisor-launcher", "ironvisor-launcher-qemu"])
    return ImageSpec(f"docker.io/ironvisor/{name}:{VERSION}",
                     [Layer(tar=base_rootfs(), comment=f"Debian {BASE_SUITE}: "
                            + " ".join(BASE_PACKAGES)), node_binaries_layer()])


def spec_controller() -> ImageSpec:
    cargo_build(["ironvisor-controller"])
    entries = binary_entries(RELEASE / "ironvisor-controller", "/usr/local/bin/ironvisor-controller")
    entries.append(Entry("/etc/ssl/certs/ca-certificates.crt",
                         source=Path("/etc/ssl/certs/ca-certificates.crt"), mode=0o644))
    entries.append(Entry("/tmp", mode=0o1777))
    return ImageSpec(f"docker.io/ironvisor/controller:{VERSION}", [Layer(entries)],
                     entrypoint=["/usr/local/bin/ironvisor-controller"], user="65532:65532")


@dataclass(frozen=True)
class Image:
    """A buildable image."""

    name: str
    spec: Callable[[], ImageSpec]


IMAGES = [
    Image("pause", spec_pause),
    Image("rootfs", spec_rootfs),
    Image("guest-kernel", spec_guest_kernel),
    Image("launcher", spec_launcher),
    Image("handler", lambda: spec_launcher("handler")),
    Image("controller", spec_controller),
]


def select(only: list[str] | None) -> list[Image]:
    if not only:
        return IMAGES
    known = {image.name: image for image in IMAGES}
    unknown = [name for name in only if name not in known]
    if unknown:
        raise ContainersError(f"unknown image(s) {', '.join(unknown)}; known: "
                              f"{', '.join(known)}")
    return [known[name] for name in only]


def input_key(spec: ImageSpec) -> str:
    """SHA-256 over everything the archive is made of (and this builder's source)."""
    digest = hashlib.sha256()
    for source in (Path(__file__), Path(__file__).with_name("oci.py")):
        digest.update(source.read_bytes())
    digest.update(json.dumps([spec.reference, spec.entrypoint, spec.cmd, spec.env, spec.user,
                              spec.labels]).encode())
    for layer in spec.layers:
        if layer.tar is not None:
            digest.update(layer.tar.name.encode())
        for entry in layer.entries:
            digest.update(json.dumps([entry.path, entry.link, entry.mode]).encode())
            if entry.data is not None:
                digest.update(entry.data)
            if entry.source is not None:
                digest.update(sha256_file(entry.source).encode())
    return digest.hexdigest()[:16]


def build_image(image: Image) -> Path:
    """The image's archive, built unless cached."""
    spec = image.spec()
    key = input_key(spec)
    CACHE.mkdir(parents=True, exist_ok=True)
    archive = CACHE / f"{image.name}-{key}.tar"
    if archive.is_file():
        log.info("%s: cached %s", image.name, archive)
        return archive
    try:
        write_archive(spec, archive)
    except OciError as error:
        raise ContainersError(f"{image.name}: {error}") from error
    for stale in CACHE.glob(f"{image.name}-*.tar"):
        if stale != archive:
            stale.unlink()
    log.info("%s: wrote %s (%.1f MiB)", image.name, archive, archive.stat().st_size / 2**20)
    return archive


def import_image(image: Image, archive: Path, socket: str) -> None:
    if not Path(socket).exists():
        raise ContainersError(f"containerd is not running: no socket {socket} "
                              "(scripts/cluster.sh up starts it)")
    ctr = ["ctr", "--address", socket, "-n", "k8s.io"]
    reference = json.loads(_member(archive, "index.json"))["manifests"][0]["annotations"][
        "io.containerd.image.name"]
    run([*ctr, "images", "import", str(archive)], f"importing {image.name} into containerd")
    listed = run([*ctr, "images", "ls", "-q"], "listing containerd's images").stdout.split()
    if reference not in listed:
        raise ContainersError(f"{image.name}: {reference} is not in containerd after the import")
    log.info("%s: imported as %s", image.name, reference)


def _member(archive: Path, name: str) -> bytes:
    import tarfile
    with tarfile.open(archive) as tar:
        member = tar.extractfile(name)
        if member is None:
            raise ContainersError(f"{archive}: no {name}")
        return member.read()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Ironvisor's OCI images, built offline")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in ("build", "import"):
        p = sub.add_parser(command)
        p.add_argument("--only", nargs="+", metavar="NAME")
        if command == "import":
            p.add_argument("--containerd-socket", default=DEFAULT_SOCKET)
    sub.add_parser("list")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="images.containers: %(message)s")
    try:
        if args.command == "list":
            for image in IMAGES:
                print(image.name)
            return 0
        for image in select(args.only):
            archive = build_image(image)
            if args.command == "import":
                import_image(image, archive, args.containerd_socket)
            else:
                print(archive)
    except ContainersError as error:
        print(f"images.containers: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["IMAGES", "ContainersError", "build_image", "import_image", "normalize_reference"]
