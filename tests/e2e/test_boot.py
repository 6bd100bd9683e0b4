"""The guest boots to userspace with the configured vCPUs, CPU topology, memory and RTC."""

from __future__ import annotations

import pytest

from tests.e2e.vmtest import E2ERunner
from tests.guest_machine import guest_machine

pytestmark = pytest.mark.nested

MEMORY_MIB = 512
# The RTC offset boot.sh gives the launcher (Asia/Kolkata, UTC+5:30).
RTC_OFFSET_S = 19_800


def test_boots_to_userspace_with_configured_vcpus_and_memory(runner: E2ERunner) -> None:
    facts = runner.run("boot")
    assert facts.result.rc == 0, facts.result.failure
    console = facts.console()
    assert "IRONVISOR-GUEST-INIT-REACHED" in console
    assert "IRONVISOR-SCENARIO-EXIT=0" in console
    assert facts.guest["nproc"] == "4"
    assert facts.guest["cpus_online"] == "0-3"
    # 2 sockets x 1 core x 2 threads, from the launcher's CPUID leaves and MADT: CPUs 0-1
    # are the two threads of socket 0's core, CPUs 2-3 those of socket 1.
    machine = guest_machine(console)
    assert machine["packages"] == "0,0,1,1", machine
    assert machine["cores"] == "0,0,0,0", machine
    assert machine["siblings"] == "0-1,0-1,2-3,2-3", machine
    assert facts.guest["cmdline_run"] == "info"
    assert facts.guest["kernel"] == runner.images.kernel_version
    # MemTotal is the configured size minus what the kernel keeps for itself (its image,
    # page tables, reserved ranges): well under 100 MiB for this kernel at 512 MiB.
    mem_kb = int(facts.guest["mem_total_kb"])
    assert (MEMORY_MIB - 100) * 1024 <= mem_kb <= MEMORY_MIB * 1024, mem_kb
    info = [line for line in console if line.startswith("IRONVISOR-GUEST-INFO ")]
    assert info == [f"IRONVISOR-GUEST-INFO cpus=4 mem_kb={mem_kb}"]
    # The launcher's CMOS RTC, bound as PNP device 00:00 (the DSDT's PNP0B00), runs 5:30 h
    # ahead of L1's UTC clock.
    assert facts.guest["rtc_name"] == "rtc_cmos 00:00", facts.guest
    ahead = int(machine["rtc"]) - int(facts.l1["l1_epoch"])
    assert RTC_OFFSET_S - 120 <= ahead <= RTC_OFFSET_S + 2, ahead
    assert facts.l1["vm_rc"] == "0"
    print(f"\nguest init reached {facts.l1.get('init_ms')} ms after the VMM started (in L1)")
