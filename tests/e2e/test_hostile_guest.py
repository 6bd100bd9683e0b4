"""A hostile guest in nested KVM: it takes a virtio-blk device from its driver and drives
it with garbage through /dev/mem (descriptor loops, addresses outside guest memory, a
4 GiB buffer, a next index beyond the queue, an available index far ahead, a storm of
notifications, random values in every register). The launcher neither crashes nor hangs
nor grows; the device asks for a reset where the ring itself is corrupt and works again
for the driver afterwards; a second VM on the same L1 keeps running throughout."""

from __future__ import annotations

import pytest

from tests.e2e.vmtest import E2ERunner

pytestmark = pytest.mark.nested

#: Notifications of the storm, writes of the configuration flood and of the status flood
#: (each a busybox devmem write in the guest).
STORM = 300
ATTACKS = ["loop", "out_of_range", "huge_length", "next_out_of_queue", "avail_ahead",
           "storm", "config_flood", "status_flood", "garbage_registers"]
#: DEVICE_NEEDS_RESET in the virtio device status (virtio 1.x §2.1.1).
NEEDS_RESET = 64
#: ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK: the guest's own set-up worked.
DRIVER_OK_STATUS = 15
#: How much the hostile launcher's resident memory may grow while attacked, in KiB: far
#: below a 4 GiB allocation or a queue of unbounded log lines or notifications.
RSS_GROWTH_BOUND_KIB = 16 * 1024
#: Guest-triggered log lines are limited to 5 per cause and minute (the attacks take less
#: than one): a few causes' worth plus the launcher's own start and stop lines.
LOG_LINES_BOUND = 150
GUEST_LOG_BURST = 5


def test_a_hostile_guest_breaks_only_its_own_device(runner: E2ERunner) -> None:
    facts = runner.run("hostile", params={"STORM": str(STORM)}, timeout_s=900.0)
    assert facts.result.rc == 0, facts.result.failure
    g, l1 = facts.guest, facts.l1
    assert "error" not in g, g.get("error")
    assert "bystander_ready" not in l1 and "hostile_ready" not in l1, l1
    assert g["unbound"] == "yes"

    statuses = {name: int(g[f"status_after_{name}"]) for name in ATTACKS}
    print(f"\nhostile guest on {g['platform_device']} at {g['mmio_base']}: "
          f"device status after each attack {statuses}")
    for name in ATTACKS:
        assert int(g[f"ready_before_{name}"]) == DRIVER_OK_STATUS, (name, g)
    # A corrupt ring cannot be served: the device asks the driver for a reset.
    for name in ["avail_ahead"]:
        assert statuses[name] & NEEDS_RESET, (name, statuses[name])
    # A reset clears it.
    assert int(g["status_after_reset"]) == 0

    # The launcher survived every attack, did not grow, and ended with its guest.
    assert l1["hostile_alive_after_attacks"] == "yes"
    growth = int(l1["hostile_rss_peak_kib"]) - int(l1["hostile_rss_before_kib"])
    print(f"hostile launcher RSS: {l1['hostile_rss_before_kib']} KiB before, peak "
          f"{l1['hostile_rss_peak_kib']} KiB during the attacks (VmHWM "
          f"{l1['hostile_hwm_kib']} KiB); log {l1['hostile_log_lines']} lines, "
          f"{l1['hostile_reset_log_lines']} of them reset requests")
    assert growth < RSS_GROWTH_BOUND_KIB, f"the launcher grew by {growth} KiB"
    # The guest cannot fill the node's disk with the launcher's log.
    assert int(l1["hostile_config_log_lines"]) <= GUEST_LOG_BURST, l1["hostile_config_log_lines"]
    assert int(l1["hostile_log_lines"]) < LOG_LINES_BOUND, l1["hostile_log_lines"]
    assert "IRONVISOR-SCENARIO-EXIT=0" in facts.console()
    assert l1["vm_rc"] == "0"

    # The driver took the device back and reads the disk.
    assert g["rebind_rc"] == "0"
    assert g["vdb_read_rc"] == "0"
    assert g["vdb_magic"] == "HOSTILE!"

    # The other VM on the same L1 kept counting during the attacks and after.
    assert int(l1["bystander_lines_during_attacks"]) > 0
    assert int(l1["bystander_lines_after"]) > 0
    assert l1["bystander_alive"] == "yes"
