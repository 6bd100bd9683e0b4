"""The standalone node the tests of this folder share: the node daemon, virtctl, the real
CNI plugins and the software-emulation launcher, started once per session."""

from __future__ import annotations

import os
import subprocess

import pytest

from images.build import Images
from images.catalog import install
from tests.standalone.node import BINARIES, Node

#: The pod network of the test node; a bridge and subnet no other test or demo uses.
BRIDGE, SUBNET, BRIDGE_IP = "ivtest0", "10.223.0.0/24", "10.223.0.1"


def _needs() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, taps, cgroups)"
    missing = [str(b) for b in BINARIES if not b.is_file()]
    if missing:
        return (f"missing {', '.join(missing)}: build them with 'cargo build --release "
                "-p ironvisor-handler -p ironvisor-virtctl -p ironvisor-launcher "
                "-p ironvisor-launcher-qemu'")
    if subprocess.run(["virsh", "-c", "qemu:///system", "version"],
                      capture_output=True).returncode != 0:
        return "libvirtd is not running: run launcher/qemu/setup-libvirt.sh"
    return None


@pytest.fixture(scope="session")
def node(images: Images, tmp_path_factory: pytest.TempPathFactory):
    reason = _needs()
    if reason:
        pytest.skip(reason)
    work = tmp_path_factory.mktemp("node")
    images_dir = work / "images"
    install(images, images_dir)
    node = Node(work=work / "node", images_dir=images_dir, bridge=BRIDGE, subnet=SUBNET)
    node.start()
    yield node
    node.close()
