"""The KubeVirt corpus (tests/kubevirt_corpus/) on the standalone node under software
emulation: each VM, written for KubeVirt, runs with only its apiVersion changed, and the
guest shows the sockets and the real-time clock the VM asked for."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.guest_machine import guest_machine
from tests.kubevirt_cases import CASE_IDS, CASES, as_ironvisor
from tests.standalone.node import Node

pytestmark = pytest.mark.tcg


@pytest.mark.parametrize("name, vm, packages, rtc_offset, sata", CASES, ids=CASE_IDS)
def test_kubevirt_vm_runs_with_only_its_api_version_changed(
        node: Node, tmp_path: Path, name: str, vm: str, packages: str, rtc_offset: int,
        sata: bool) -> None:
    manifest = tmp_path / name
    manifest.write_text(as_ironvisor(name))
    node.virtctl("apply", "-f", str(manifest))
    try:
        row = node.wait_status(vm, "Running", timeout=120)
        assert row["BACKEND"] == "qemu-tcg", row
        console = node.console(vm)
        try:
            match = console.expect(r"IRONVISOR-GUEST-MACHINE [^\r\n]*[\r\n]", timeout=240)
            read_at = time.time()
        finally:
            console.close()
        machine = guest_machine(match.group(0))
        assert machine["packages"] == packages, machine
        # The RTC was read during the boot, before the console line reached the test.
        ahead = int(machine["rtc"]) - read_at
        assert rtc_offset - 300 <= ahead <= rtc_offset + 5, (ahead, machine)
        describe = node.virtctl("describe", vm).stdout
        assert ("DiskBusMapped" in describe) == sata, describe
    finally:
        node.virtctl("delete", vm)
        deadline = time.monotonic() + 60
        while node.virtctl("get", vm, check=False).returncode == 0:
            assert time.monotonic() < deadline, f"VM {vm} was not deleted within 60 s"
            time.sleep(0.5)
