"""A VM without kernelBoot on the standalone node under software emulation: the Debian
guest disk (a containerDisk from the node's image catalogue) boots through firmware and
its own GRUB — SeaBIOS by default and for `bootloader.bios`, OVMF for `bootloader.efi` —
and cloud-init applies the VM's `cloudInitNoCloud` userData."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from images.catalog import install_debian_disk
from tests.debian_guest import RUNCMD_MARKER, manifest
from tests.standalone.node import Node

pytestmark = pytest.mark.tcg

BOOT_TIMEOUT_S = 420


@pytest.fixture(scope="module")
def debian_node(node: Node) -> Node:
    install_debian_disk(node.images_dir)
    return node


@pytest.mark.parametrize("name, bootloader", [
    ("debian-default", ""),
    ("debian-efi", "{efi: {secureBoot: false}}"),
], ids=["no-bootloader-bios", "efi"])
def test_the_debian_disk_boots_through_firmware_and_its_own_grub(
        debian_node: Node, tmp_path: Path, name: str, bootloader: str) -> None:
    node = debian_node
    path = tmp_path / f"{name}.yaml"
    path.write_text(manifest(name, bootloader))
    node.virtctl("apply", "-f", str(path))
    try:
        started = time.monotonic()
        row = node.wait_status(name, "Running", timeout=120)
        assert row["BACKEND"] == "qemu-tcg", row
        console = node.console(name)
        try:
            console.expect(r"GNU GRUB", timeout=BOOT_TIMEOUT_S)
            console.expect(r"login:", timeout=BOOT_TIMEOUT_S)
            login_s = time.monotonic() - started
            if RUNCMD_MARKER not in console.text():
                console.expect(RUNCMD_MARKER, timeout=120)
            text = console.text()
        finally:
            console.close()
        assert "Linux version 6.1." in text, text[-3000:]
        # Under OVMF the kernel finds UEFI (its EFI stub was entered by GRUB's EFI image);
        # under SeaBIOS it finds none.
        assert ("EDK II" in text) == bool(bootloader), text[-3000:]
        print(f"\n{name}: firmware -> GRUB -> Debian login prompt under TCG in {login_s:.0f} s")
    finally:
        node.virtctl("delete", name)
        deadline = time.monotonic() + 90
        while node.virtctl("get", name, check=False).returncode == 0:
            assert time.monotonic() < deadline, f"VM {name} was not deleted within 90 s"
            time.sleep(0.5)
