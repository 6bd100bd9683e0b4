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


def test_a_vm_naming_a_missing_instance_type_waits_naming_it_until_it_exists(
        node: Node, tmp_path: Path) -> None:
    """The corpus instance-type VM, its objects renamed so that none exists yet: the VM
    does not start and says which instance type is missing; once the instance type and
    preference are applied, it starts."""
    text = as_ironvisor("instancetype-app.yaml")
    text = (text.replace("corpus.2cpu", "later.2cpu").replace("corpus.sockets", "later.sockets")
            .replace("name: instancetype-app", "name: sized-later"))
    *objects, vm = text.split("\n---\n")
    vm_file, objects_file = tmp_path / "vm.yaml", tmp_path / "objects.yaml"
    vm_file.write_text(vm)
    objects_file.write_text("\n---\n".join(objects))
    node.virtctl("apply", "-f", str(vm_file))
    try:
        deadline = time.monotonic() + 60
        while True:
            describe = node.virtctl("describe", "sized-later").stdout
            if "InstancetypeNotFound" in describe:
                break
            assert time.monotonic() < deadline, describe
            time.sleep(0.5)
        assert ('spec.instancetype.name: VirtualMachineClusterInstancetype "later.2cpu" '
                "does not exist") in describe, describe
        assert not node.instance_dirs(), "an instance was started anyway"
        applied = node.virtctl("apply", "-f", str(objects_file)).stdout
        assert "later.2cpu created" in applied, applied
        assert "later.sockets created" in applied, applied
        node.wait_status("sized-later", "Running", timeout=120)
    finally:
        node.virtctl("delete", "sized-later")
