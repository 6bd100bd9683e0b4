"""Ironvisor's container images for cluster mode, written offline and imported into the
cluster's containerd. Nothing is pulled: every image is made by images/oci.py from the
project's own binaries, the guest images (images/build.py) and a Debian root file system
made with mmdebstrap (images/debian_base.py).

    python3 -m images.containers build  [--only NAME ...] [--out-dir DIR]
    python3 -m images.containers import [--only NAME ...] [--containerd-socket PATH]
    python3 -m images.containers list

Archives are cached in $IRONVISOR_CACHE_DIR/oci (default /var/cache/ironvisor/oci) as
NAME.tar with NAME.json beside it: an image whose inputs (the SHA-256 of every file in
it, its settings and this builder's source) did not change is not written again.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from images import cargo, debian_base, elf
from images.common import DEFAULT_OUT_DIR, build_lock, sha256_file
from images.containerd import Containerd, ContainerdError
from images.oci import (DEFAULT_PATH, Entry, ImageSpec, Layer, OciError, archive_reference,
                        normalize_reference, prune_layer_cache, write_archive)

if TYPE_CHECKING:
    from images.build import Images

log = logging.getLogger("images.containers")

DEFAULT_SOCKET = Path("/run/ironvisor-cluster/containerd/containerd.sock")
#: The workspace version the Ironvisor components are tagged with.
VERSION = "0.1.0"
PAUSE_TAG = "3.10"
BUSYBOX_TAG = "1.35"
#: The CSI external-provisioner built by scripts/cluster/build.sh (same default version).
CSI_PROVISIONER_VERSION = os.environ.get("CSI_PROVISIONER_VERSION") or "v5.3.0"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
#: Compressed base layers unused for this long are removed from the cache.
LAYER_CACHE_DAYS = 14
NODE_BINARIES = ("ironvisor-launcher", "ironvisor-launcher-qemu", "ironvisor-handler")
#: The node binary built statically, by scripts/build-launcher.sh.
STATIC_LAUNCHER = "ironvisor-launcher"

#: libvirt's QEMU driver inside a launcher pod (/etc/libvirt/qemu.conf). As on the
#: host (launcher/qemu/setup-libvirt.sh): QEMU runs as the container's root, libvirt
#: neither chowns nor relabels files (no dynamic_ownership, remember_owner, security
#: driver), makes no cgroups (the pod's cgroup holds QEMU; cgroupfs is read-only in a
#: container) and no mount namespaces (no CAP_SYS_ADMIN in the pod).
QEMU_CONF_BLOCK = b"""
# Ironvisor launcher pod (images/containers.py): QEMU unprivileged, container style.
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
"""


class ContainersError(RuntimeError):
    """An image could not be built or imported; the message says which and why."""


class Skipped(Exception):
    """An image cannot be built yet (its source does not exist); the message says why."""


def cache_dir() -> Path:
    """$IRONVISOR_CACHE_DIR/oci, default /var/cache/ironvisor/oci (outside the work tree)."""
    return Path(os.environ.get("IRONVISOR_CACHE_DIR") or "/var/cache/ironvisor") / "oci"


class Inputs:
    """What the images are made of, each built at most once per run."""

    def __init__(self, cache: Path) -> None:
        self.cache = cache

    @functools.cached_property
    def guest(self) -> Images:
        """The guest kernel, initrd and root disk (images/build.py, cached there)."""
        from images.build import BuildError, build  # lazily: pause needs none of it
        try:
            return build(DEFAULT_OUT_DIR)
        except BuildError as exc:
            raise ContainersError(f"guest images: {exc}") from exc

    @functools.cached_property
    def base(self) -> Path:
        """The Debian base tar of the node images."""
        try:
            return debian_base.base_rootfs(self.cache)
        except debian_base.BaseError as exc:
            raise ContainersError(f"Debian base: {exc}") from exc

    @functools.cached_property
    def node_binaries(self) -> dict[str, Path]:
        """The node binaries: the KVM launcher statically linked, as it ships; the node
        agent and the emulation launcher (which links libvirt) from target/release."""
        dynamic = [name for name in NODE_BINARIES if name != STATIC_LAUNCHER]
        try:
            binaries = cargo.build_release(dynamic, dynamic)
            binaries[STATIC_LAUNCHER] = cargo.build_launcher(self.cache / "cargo-static")
        except cargo.CargoError as exc:
            raise ContainersError(f"node binaries: {exc}") from exc
        if elf.elf_interpreter(binaries[STATIC_LAUNCHER]) is not None:
            raise ContainersError(f"{binaries[STATIC_LAUNCHER]} is dynamically linked "
                                  "(crt-static ignored?)")
        return binaries

    def static(self, package: str, binary: str) -> Path:
        """A static binary from cache/cargo-static."""
        return cargo.build_static([package], [binary], self.cache / "cargo-static")[binary]


def spec_pause(inputs: Inputs) -> ImageSpec:
    """The pod sandbox: one static binary."""
    try:
        pause = inputs.static("ironvisor-pause", "pause")
    except cargo.CargoError as exc:
        raise ContainersError(f"pause: {exc}") from exc
    if elf.elf_interpreter(pause) is not None:
        raise ContainersError(f"pause: {pause} is dynamically linked (crt-static ignored?)")
    return ImageSpec(f"ironvisor/pause:{PAUSE_TAG}",
                     (Layer((Entry("/pause", source=pause, mode=0o755),),
                            comment="ironvisor-pause (images/pause), static"),),
                     entrypoint=("/pause",))


def spec_rootfs(inputs: Inputs) -> ImageSpec:
    """KubeVirt's containerDisk convention: FROM scratch, one disk file under /disk/."""
    return ImageSpec("ironvisor/rootfs:busybox", (Layer((
        Entry("/disk/rootfs.ext4", source=inputs.guest.rootfs, mode=0o644),),
        comment="containerDisk: the busybox guest's ext4 root disk (images/build.py)"),))


def spec_debian(inputs: Inputs) -> ImageSpec:
    """The Debian guest disk (images/debian_disk.py, with its own GRUB for BIOS and UEFI)
    as a containerDisk: one qcow2 under /disk/."""
    from images.catalog import DEBIAN_DISK_NAME
    from images.debian_disk import DiskError, build_disk

    try:
        disk = build_disk()
    except DiskError as exc:
        raise ContainersError(f"debian: {exc}") from exc
    return ImageSpec(DEBIAN_DISK_NAME, (Layer((
        Entry("/disk/bookworm.qcow2", source=disk, mode=0o644),),
        comment="containerDisk: the Debian bookworm guest disk (images/debian_disk.py)"),))


def spec_busybox(inputs: Inputs) -> ImageSpec:
    """A plain container image for workloads next to the VMs (tests, demos): Debian's
    static busybox, run as ``/bin/busybox <applet> ...``."""
    base = inputs.base
    try:
        busybox = debian_base.extract_member(
            base, "usr/bin/busybox", inputs.cache / "busybox" / f"{base.stem}.busybox")
    except debian_base.BaseError as exc:
        raise ContainersError(f"busybox: {exc}") from exc
    if elf.elf_interpreter(busybox) is not None:
        raise ContainersError(f"busybox: {busybox} is not the static busybox")
    return ImageSpec(f"ironvisor/busybox:{BUSYBOX_TAG}", (Layer((
        Entry("/bin/busybox", source=busybox, mode=0o755),
        Entry("/tmp", mode=0o1777)),
        comment="Debian's busybox-static (from the node images' base)"),),
        entrypoint=("/bin/busybox",))


def kernel_reference(kernel_version: str) -> str:
    from images.catalog import KERNEL_REPOSITORY, kernel_tag
    return f"{KERNEL_REPOSITORY}:{kernel_tag(kernel_version)}"


def spec_guest_kernel(inputs: Inputs) -> ImageSpec:
    """kernelBoot: the guest kernel (bzImage and ELF) and the initrd under /boot/."""
    guest = inputs.guest
    return ImageSpec(kernel_reference(guest.kernel_version), (Layer((
        Entry("/boot/vmlinuz", source=guest.vmlinuz, mode=0o644),
        Entry("/boot/initrd.img", source=guest.initrd, mode=0o644),
        Entry("/boot/vmlinux", source=guest.vmlinux, mode=0o644)),
        comment=f"Debian cloud kernel {guest.kernel_version} and the guest initrd"),))


def _check_libraries(binaries: dict[str, Path], base: Path) -> None:
    """Every library a binary loads is in the base (by file name; /lib is /usr/lib there)."""
    present = {name.rsplit("/", 1)[-1] for name in debian_base.member_names(base)}
    for name, path in binaries.items():
        try:
            needed = elf.runtime_files(path)
        except elf.ElfError as exc:
            raise ContainersError(f"{name}: {exc}") from exc
        missing = sorted(lib for lib in needed if lib.rsplit("/", 1)[-1] not in present)
        if missing:
            raise ContainersError(f"{name} ({path}) needs {', '.join(missing)}, which the "
                                  f"Debian base {base} does not have: add its package to "
                                  "images/debian_base.py")


#: libvirt's directories, which Debian's packaging makes only in libvirt-daemon-system
#: (not installed: it brings systemd units and the polkit/apparmor setup).
LIBVIRT_DIRS = ("/etc/libvirt", "/run/libvirt", "/var/lib/libvirt/qemu", "/var/log/libvirt/qemu",
                "/var/cache/libvirt/qemu")


def _node_layers(inputs: Inputs) -> tuple[Layer, ...]:
    base, binaries = inputs.base, inputs.node_binaries
    _check_libraries(binaries, base)
    present = debian_base.member_names(base)
    if "etc/libvirt/qemu.conf" in present:
        raise ContainersError(f"the Debian base {base} has its own /etc/libvirt/qemu.conf now: "
                              "merge QEMU_CONF_BLOCK into it instead of replacing it")
    entries = [Entry(path, mode=0o755) for path in LIBVIRT_DIRS]
    entries.append(Entry("/etc/libvirt/qemu.conf", data=QEMU_CONF_BLOCK.lstrip(), mode=0o644))
    entries += [Entry(f"/usr/local/bin/{name}", source=path, mode=0o755)
                for name, path in sorted(binaries.items())]
    return (Layer(tar=base, comment=f"Debian {debian_base.SUITE} (mmdebstrap): "
                  + " ".join(debian_base.PACKAGES)),
            Layer(tuple(entries), comment="Ironvisor node binaries, libvirt's qemu.conf and dirs"))


def spec_launcher(inputs: Inputs) -> ImageSpec:
    """The launcher pod's compute container (and its busybox for the init containers)."""
    return ImageSpec(f"ironvisor/launcher:{VERSION}", _node_layers(inputs),
                     env=(("PATH", DEFAULT_PATH),))


def spec_handler(inputs: Inputs) -> ImageSpec:
    """The node agent DaemonSet: the same two layers as the launcher."""
    return ImageSpec(f"ironvisor/handler:{VERSION}", _node_layers(inputs),
                     env=(("PATH", DEFAULT_PATH),))


def _static_service(inputs: Inputs, package: str, short: str, folder: str) -> ImageSpec:
    """A cluster service: one binary (static if it links so, else with the libraries
    ldd names), the CA certificates, a writable /tmp, running as 65532."""
    binary = package
    try:
        if package not in cargo.workspace_packages():
            raise Skipped(f"the workspace has no package {package} yet ({folder}/)")
        try:
            path = inputs.static(package, binary)
            libraries: list[str] = []
        except cargo.CargoError as static_error:
            log.warning("%s: static build failed, using the dynamic one: %s", short,
                        str(static_error)[-500:])
            path = cargo.build_release([package], [binary])[binary]
            libraries = elf.runtime_files(path)
    except (cargo.CargoError, elf.ElfError) as exc:
        raise ContainersError(f"{short}: {exc}") from exc
    entries = [Entry(f"/usr/local/bin/{binary}", source=path, mode=0o755),
               Entry(str(CA_BUNDLE), source=CA_BUNDLE, mode=0o644),
               Entry("/tmp", mode=0o1777)]
    entries += [Entry(lib, source=Path(lib).resolve(), mode=0o755) for lib in libraries]
    return ImageSpec(f"ironvisor/{short}:{VERSION}",
                     (Layer(tuple(entries), comment=f"{binary} and CA certificates"),),
                     entrypoint=(f"/usr/local/bin/{binary}",), user="65532:65532")


def spec_controller(inputs: Inputs) -> ImageSpec:
    """The controller."""
    return _static_service(inputs, "ironvisor-controller", "controller", "controller")


def spec_apiserver(inputs: Inputs) -> ImageSpec:
    """The api-server (admission webhooks, subresource API)."""
    return _static_service(inputs, "ironvisor-apiserver", "apiserver", "api-server")


def spec_csi_hostpath(inputs: Inputs) -> ImageSpec:
    """The test cluster's CSI driver (testing/csi-hostpath): one static binary. It runs
    privileged (bind mounts, loop devices), so as root."""
    package = "ironvisor-csi-hostpath"
    try:
        path = inputs.static(package, package)
    except cargo.CargoError as exc:
        raise ContainersError(f"csi-hostpath: {exc}") from exc
    if elf.elf_interpreter(path) is not None:
        raise ContainersError(f"csi-hostpath: {path} is dynamically linked (crt-static ignored?)")
    return ImageSpec(f"ironvisor/csi-hostpath:{VERSION}",
                     (Layer((Entry(f"/usr/local/bin/{package}", source=path, mode=0o755),
                             Entry("/tmp", mode=0o1777)),
                            comment=f"{package} (testing/csi-hostpath), static"),),
                     entrypoint=(f"/usr/local/bin/{package}",))


def spec_csi_provisioner(inputs: Inputs) -> ImageSpec:
    """The upstream CSI external-provisioner sidecar, built from its Go module by
    scripts/cluster/build.sh (static: CGO_ENABLED=0)."""
    binary = (inputs.cache.parent / "csi-provisioner" / CSI_PROVISIONER_VERSION / "bin"
              / "csi-provisioner")
    if not binary.is_file():
        raise ContainersError(f"csi-provisioner: {binary} is missing; scripts/cluster/build.sh "
                              "builds it (scripts/cluster.sh up runs that)")
    if elf.elf_interpreter(binary) is not None:
        raise ContainersError(f"csi-provisioner: {binary} is dynamically linked")
    return ImageSpec(f"ironvisor/csi-provisioner:{CSI_PROVISIONER_VERSION}",
                     (Layer((Entry("/csi-provisioner", source=binary, mode=0o755),
                             Entry(str(CA_BUNDLE), source=CA_BUNDLE, mode=0o644),
                             Entry("/tmp", mode=0o1777)),
                            comment=f"external-provisioner {CSI_PROVISIONER_VERSION}"),),
                     entrypoint=("/csi-provisioner",))


@dataclass(frozen=True)
class Image:
    """A buildable image: its short name, its repository and how to make its spec."""

    name: str
    repository: str
    spec: Callable[[Inputs], ImageSpec]


#: In build order: the cluster needs the pause image first.
IMAGES = (
    Image("pause", "ironvisor/pause", spec_pause),
    Image("rootfs", "ironvisor/rootfs", spec_rootfs),
    Image("debian", "ironvisor/debian", spec_debian),
    Image("busybox", "ironvisor/busybox", spec_busybox),
    Image("guest-kernel", "ironvisor/guest-kernel", spec_guest_kernel),
    Image("launcher", "ironvisor/launcher", spec_launcher),
    Image("handler", "ironvisor/handler", spec_handler),
    Image("controller", "ironvisor/controller", spec_controller),
    Image("apiserver", "ironvisor/apiserver", spec_apiserver),
    Image("csi-hostpath", "ironvisor/csi-hostpath", spec_csi_hostpath),
    Image("csi-provisioner", "ironvisor/csi-provisioner", spec_csi_provisioner),
)


def select(only: list[str] | None) -> list[Image]:
    """The images named (all of them by default), in build order."""
    if not only:
        return list(IMAGES)
    known = {image.name: image for image in IMAGES}
    unknown = [name for name in only if name not in known]
    if unknown:
        raise ContainersError(f"unknown image(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return [image for image in IMAGES if image.name in only]


def listed_reference(image: Image) -> str:
    """The full reference for `list`, without building anything."""
    if image.name == "guest-kernel":
        version = DEFAULT_OUT_DIR / "kernel.version"
        if not version.is_file():
            return f"docker.io/{image.repository}:debian-<M.m> (tag from the kernel build)"
        return normalize_reference(kernel_reference(version.read_text().strip()))
    tag = {"pause": PAUSE_TAG, "rootfs": "busybox", "busybox": BUSYBOX_TAG,
           "debian": "bookworm", "csi-provisioner": CSI_PROVISIONER_VERSION}.get(
        image.name, VERSION)
    return normalize_reference(f"{image.repository}:{tag}")


_BUILDER_SOURCES = ("containers.py", "oci.py", "cargo.py", "debian_base.py", "common.py")


def input_key(spec: ImageSpec) -> str:
    """SHA-256 of everything the archive is made of, and of this builder's source."""
    digest = hashlib.sha256()
    here = Path(__file__).resolve().parent
    for name in _BUILDER_SOURCES:
        digest.update((here / name).read_bytes())
    settings = [normalize_reference(spec.reference), spec.entrypoint, spec.cmd, spec.env,
                spec.user, spec.working_dir, spec.labels, os.environ.get("SOURCE_DATE_EPOCH")]
    digest.update(json.dumps(settings).encode())
    for layer in spec.layers:
        if layer.tar is not None:
            stat = layer.tar.stat()
            digest.update(json.dumps([str(layer.tar), stat.st_size, stat.st_mtime_ns]).encode())
        for entry in layer.entries:
            digest.update(json.dumps([entry.path, entry.link, entry.mode]).encode())
            if entry.data is not None:
                digest.update(hashlib.sha256(entry.data).digest())
            if entry.source is not None:
                digest.update(sha256_file(entry.source).encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class Built:
    """An image archive and what it imports as."""

    name: str
    reference: str
    archive: Path
    manifest_digest: str
    cached: bool


def build_image(image: Image, inputs: Inputs, out_dir: Path) -> Built:
    """The image's archive in `out_dir`, written unless its inputs are unchanged."""
    started = time.monotonic()
    spec = image.spec(inputs)
    key = input_key(spec)
    archive, meta_path = out_dir / f"{image.name}.tar", out_dir / f"{image.name}.json"
    reference = normalize_reference(spec.reference)
    try:
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    except ValueError:
        meta = {}
    if meta.get("key") == key and archive.is_file() and meta.get("size") == archive.stat().st_size:
        log.info("%s: unchanged, %s", image.name, archive)
        return Built(image.name, reference, archive, meta["manifest_digest"], True)
    try:
        digest = write_archive(spec, archive, layer_cache=inputs.cache / "layers")
    except OciError as exc:
        raise ContainersError(f"{image.name}: {exc}") from exc
    size = archive.stat().st_size
    meta_path.write_text(json.dumps({"key": key, "reference": reference, "manifest_digest": digest,
                                     "size": size}, indent=2) + "\n")
    log.info("%s: wrote %s (%.1f MiB, %.0f s)", image.name, archive, size / 2**20,
             time.monotonic() - started)
    return Built(image.name, reference, archive, digest, False)


def import_image(built: Built, containerd: Containerd) -> None:
    """Imports the archive and checks that containerd lists the full name at its digest."""
    reference = archive_reference(built.archive)
    if reference != built.reference:
        raise ContainersError(f"{built.archive} names {reference}, expected {built.reference}")
    containerd.import_archive(built.archive)
    if reference not in containerd.image_names():
        raise ContainersError(f"{built.name}: {reference} is not listed by containerd at "
                              f"{containerd.socket} after the import")
    digest = containerd.image_digest(reference)
    if digest != built.manifest_digest:
        raise ContainersError(f"{built.name}: containerd has {reference} at {digest}, "
                              f"the archive at {built.manifest_digest}")
    log.info("%s: imported as %s (%s)", built.name, reference, digest)


def run(command: str, only: list[str] | None, out_dir: Path | None, socket: Path) -> int:
    images = select(only)
    cache = cache_dir()
    out_dir = (out_dir or cache).resolve()
    containerd = Containerd(socket)
    if command == "import":
        log.info("containerd %s at %s", containerd.check_reachable(), socket)
    inputs = Inputs(cache)
    with build_lock(cache):
        for image in images:
            try:
                built = build_image(image, inputs, out_dir)
            except Skipped as skipped:
                if only:
                    raise ContainersError(f"{image.name}: cannot build: {skipped}") from None
                print(f"skipped {image.name}: {skipped}", file=sys.stderr)
                continue
            if command == "import":
                import_image(built, containerd)
                print(f"{built.reference} {built.manifest_digest}")
            else:
                print(built.archive)
        for stale in prune_layer_cache(cache / "layers", LAYER_CACHE_DAYS):
            log.info("removed %s (unused for %d days)", stale, LAYER_CACHE_DAYS)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="python3 -m images.containers",
                                     description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    names = [image.name for image in IMAGES]
    build_p = sub.add_parser("build", help="write the image archives (cached)")
    import_p = sub.add_parser("import", help="build if needed and import into containerd")
    for p in (build_p, import_p):
        p.add_argument("--only", nargs="+", metavar="NAME", choices=names,
                       help=f"only these images ({', '.join(names)})")
    build_p.add_argument("--out-dir", type=Path, default=None,
                         help=f"where to write the archives (default {cache_dir()})")
    import_p.add_argument("--containerd-socket", type=Path, default=DEFAULT_SOCKET,
                          help="containerd's socket (default %(default)s); namespace k8s.io")
    sub.add_parser("list", help="the images and their full names")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s",
                        stream=sys.stderr)
    if args.command == "list":
        for image in IMAGES:
            print(f"{image.name:13} {listed_reference(image)}")
        return 0
    try:
        return run(args.command, args.only, getattr(args, "out_dir", None),
                   getattr(args, "containerd_socket", DEFAULT_SOCKET))
    except (ContainersError, ContainerdError, OciError) as exc:
        print(f"images.containers: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
