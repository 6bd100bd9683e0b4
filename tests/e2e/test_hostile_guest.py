"""A hostile guest in nested KVM: it takes a virtio-blk and a virtio-net device from their
driver and drives them with garbage through /dev/mem (descriptor loops, addresses outside
guest memory, a 4 GiB buffer, a next index beyond the queue, an available index far
ahead, a storm of notifications, out-of-order status changes, writes to the read-only
configuration, random values in every register). The launcher neither crashes nor hangs
nor grows; a device asks for a reset where the ring itself is corrupt and works again
for the driver afterwards; a second VM on the same L1 keeps running throughout."""

from __future__ import annotations

import pytest

from tests.e2e.vmtest import E2ERunner

pytestmark = pytest.mark.nested

#: Notifications of the storm, writes of the configuration flood and of the status flood
#: (each a busybox devmem write in the guest).
STORM = 300
#: The attacked devices: the second disk's request queue and the NIC's transmit queue.
DEVICES = ["blk", "net"]
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
LOG_LINES_BOUND = 250
GUEST_LOG_BURST = 5


def test_a_hostile_guest_breaks_only_its_own_devices(runner: E2ERunner) -> None:
    facts = runner.run("hostile", params={"STORM": str(STORM)}, timeout_s=900.0)
    assert facts.result.rc == 0, facts.result.failure
    g, l1 = facts.guest, facts.l1
    assert "error" not in g, g.get("error")
    assert "bystander_ready" not in l1 and "hostile_ready" not in l1, l1

    for dev in DEVICES:
        assert g[f"{dev}_unbound"] == "yes", dev
        statuses = {name: int(g[f"{dev}_status_after_{name}"]) for name in ATTACKS}
        print(f"\nhostile guest, {dev} ({g[f'{dev}_platform_device']} at "
              f"{g[f'{dev}_mmio_base']}): device status after each attack {statuses}")
        for name in ATTACKS:
            assert int(g[f"{dev}_ready_before_{name}"]) == DRIVER_OK_STATUS, (dev, name, g)
        # A corrupt ring cannot be served: the device asks the driver for a reset.
        assert statuses["avail_ahead"] & NEEDS_RESET, (dev, statuses)
        # A reset clears it.
        assert int(g[f"{dev}_status_after_reset"]) == 0, dev

    # The launcher survived every attack, did not grow, and ended with its guest.
    assert l1["hostile_alive_after_attacks"] == "yes"
    growth = int(l1["hostile_rss_peak_kib"]) - int(l1["hostile_rss_before_kib"])
    print(f"hostile launcher RSS: {l1['hostile_rss_before_kib']} KiB before, peak "
          f"{l1['hostile_rss_peak_kib']} KiB during the attacks (VmHWM "
          f"{l1['hostile_hwm_kib']} KiB); log {l1['hostile_log_lines']} lines, "
          f"{l1['hostile_reset_log_lines']} of them reset requests, "
          f"{l1['hostile_config_log_lines']} configuration writes")
    assert growth < RSS_GROWTH_BOUND_KIB, f"the launcher grew by {growth} KiB"
    # The guest cannot fill the node's disk with the launcher's log.
    assert int(l1["hostile_config_log_lines"]) <= len(DEVICES) * GUEST_LOG_BURST, l1
    assert int(l1["hostile_log_lines"]) < LOG_LINES_BOUND, l1["hostile_log_lines"]
    assert "IRONVISOR-SCENARIO-EXIT=0" in facts.console()
    assert l1["vm_rc"] == "0"

    # The driver took both devices back: the disk reads, the NIC reaches L1.
    assert g["blk_rebind_rc"] == "0" and g["net_rebind_rc"] == "0"
    assert g["vdb_read_rc"] == "0"
    assert g["vdb_magic"] == "HOSTILE!"
    assert g["ping_after_rebind"] == "yes"

    # The other VM on the same L1 kept counting during the attacks and after.
    assert int(l1["bystander_lines_during_attacks"]) > 0
    assert int(l1["bystander_lines_after"]) > 0
    assert l1["bystander_alive"] == "yes"
