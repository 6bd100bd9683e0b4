"""The guest boots to userspace with the configured vCPUs and memory."""

from __future__ import annotations

import pytest

from tests.e2e.vmtest import E2ERunner

pytestmark = pytest.mark.nested

MEMORY_MIB = 512


def test_boots_to_userspace_with_configured_vcpus_and_memory(runner: E2ERunner) -> None:
    facts = runner.run("boot")
    assert facts.result.rc == 0, facts.result.failure
    console = facts.console()
    assert "IRONVISOR-GUEST-INIT-REACHED" in console
    assert "IRONVISOR-SCENARIO-EXIT=0" in console
    assert facts.guest["nproc"] == "2"
    assert facts.guest["cpus_online"] == "0-1"
    assert facts.guest["cmdline_run"] == "info"
    assert facts.guest["kernel"] == runner.images.kernel_version
    # MemTotal is the configured size minus what the kernel keeps for itself (its image,
    # page tables, reserved ranges): well under 100 MiB for this kernel at 512 MiB.
    mem_kb = int(facts.guest["mem_total_kb"])
    assert (MEMORY_MIB - 100) * 1024 <= mem_kb <= MEMORY_MIB * 1024, mem_kb
    info = [line for line in console if line.startswith("IRONVISOR-GUEST-INFO ")]
    assert info == [f"IRONVISOR-GUEST-INFO cpus=2 mem_kb={mem_kb}"]
    assert facts.l1["vm_rc"] == "0"
    print(f"\nguest init reached {facts.l1.get('init_ms')} ms after the VMM started (in L1)")
