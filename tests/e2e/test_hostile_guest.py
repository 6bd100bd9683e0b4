"""A hostile guest in nested KVM: it takes its virtio-blk, virtio-net, virtio-rng and
virtio-console devices from their drivers and drives them with garbage through /dev/mem
(descriptor loops, addresses outside guest memory, a 4 GiB buffer, a next index beyond the
queue, an available index far ahead, a storm of notifications, out-of-order status
changes, writes to the read-only configuration, random values in every register), on the
disk's request queue, the NIC's transmit queue and its receive queue (while L1 sends the
NIC frames), the entropy device's request queue and the console's transmit and receive
queues. The launcher neither crashes nor hangs nor grows; a device asks for a reset where
the ring itself is corrupt and works again for the driver afterwards; a second VM on the
same L1 keeps running throughout."""

from __future__ import annotations

import pytest

from tests.e2e.vmtest import E2ERunner

pytestmark = pytest.mark.nested

#: Notifications of the storm, writes of the configuration flood and of the status flood
#: (each a busybox devmem write in the guest).
STORM = 300
#: The attacked queues (label: the device it belongs to): the second disk's request queue,
#: the NIC's transmit and receive queues, the entropy device's request queue, the console
#: port's transmit and receive queues.
QUEUES = {"blk": "blk", "net": "net", "netrx": "net", "rng": "rng", "console": "console",
          "consolerx": "console"}
DEVICES = sorted(set(QUEUES.values()))
QUEUE_ATTACKS = ["loop", "out_of_range", "huge_length", "next_out_of_queue", "avail_ahead",
                 "storm"]
#: Run once per device, on its first attacked queue.
DEVICE_ATTACKS = ["config_flood", "status_flood", "garbage_registers"]
#: The console's receive queue is read only when input for the guest arrives, and nothing
#: writes to its socket here: its corrupt ring is never looked at (nor needs to be).
UNREAD_QUEUES = {"consolerx"}
#: The device status bits a driver can set or see (bits 8-31 are reserved).
STATUS_BITS = 0xff
#: DEVICE_NEEDS_RESET in the virtio device status (virtio 1.x §2.1.1).
NEEDS_RESET = 64
#: ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK: the guest's own set-up worked.
DRIVER_OK_STATUS = 15
#: How much the hostile launcher's resident memory may grow while attacked, in KiB: far
#: below a 4 GiB allocation or a queue of unbounded log lines or notifications.
RSS_GROWTH_BOUND_KIB = 16 * 1024
#: Guest-triggered log lines are limited to 5 per device, cause and minute: per attacked
#: device a few causes' worth over the minutes of its attacks, plus the launcher's own
#: start and stop lines.
LOG_LINES_PER_DEVICE = 125
GUEST_LOG_BURST = 5


def test_a_hostile_guest_breaks_only_its_own_devices(runner: E2ERunner) -> None:
    facts = runner.run("hostile", params={"STORM": str(STORM)}, timeout_s=900.0)
    assert facts.result.rc == 0, facts.result.failure
    g, l1 = facts.guest, facts.l1
    assert "error" not in g, g.get("error")
    assert "bystander_ready" not in l1 and "hostile_ready" not in l1, l1

    for dev in DEVICES:
        assert g[f"{dev}_unbound"] == "yes", dev
    first_queues = {dev: queue for queue, dev in reversed(QUEUES.items())}
    for queue, dev in QUEUES.items():
        attacks = QUEUE_ATTACKS + (DEVICE_ATTACKS if first_queues[dev] == queue else [])
        statuses = {name: int(g[f"{queue}_status_after_{name}"]) for name in attacks}
        print(f"\nhostile guest, {queue} ({g[f'{dev}_platform_device']} at "
              f"{g[f'{dev}_mmio_base']}): device status after each attack {statuses}")
        for name in attacks:
            assert int(g[f"{queue}_ready_before_{name}"]) == DRIVER_OK_STATUS, (queue, name, g)
            # Random register values leave a status a driver could have written.
            assert statuses[name] <= STATUS_BITS, (queue, name, statuses)
        # A corrupt ring cannot be served: the device asks the driver for a reset.
        if queue not in UNREAD_QUEUES:
            assert statuses["avail_ahead"] & NEEDS_RESET, (queue, statuses)
        # A reset clears it.
        assert int(g[f"{queue}_status_after_reset"]) == 0, queue
    # The receive queue was attacked while frames for it arrived.
    print(f"frames L1 sent the NIC while its receive queue was attacked: "
          f"{l1['rx_frames_offered']}")
    assert int(l1["rx_frames_offered"]) > 0, l1

    # The launcher survived every attack, did not grow, and ended with its guest.
    assert l1["hostile_alive_after_attacks"] == "yes"
    growth = int(l1["hostile_rss_peak_kib"]) - int(l1["hostile_rss_before_kib"])
    print(f"hostile launcher RSS: {l1['hostile_rss_before_kib']} KiB before, peak "
          f"{l1['hostile_rss_peak_kib']} KiB during the attacks (VmHWM "
          f"{l1['hostile_hwm_kib']} KiB); log {l1['hostile_log_lines']} lines, "
          f"{l1['hostile_reset_log_lines']} of them reset requests, "
          f"{l1['hostile_config_log_lines']} configuration writes")
    assert growth < RSS_GROWTH_BOUND_KIB, f"the launcher grew by {growth} KiB"
    # The guest cannot fill the node's disk with the launcher's log: at most a burst per
    # device and minute (each device's configuration is flooded once, in under a minute).
    assert int(l1["hostile_config_log_lines"]) <= len(DEVICES) * GUEST_LOG_BURST, l1
    assert int(l1["hostile_log_lines"]) < LOG_LINES_PER_DEVICE * len(DEVICES), \
        l1["hostile_log_lines"]
    assert "IRONVISOR-SCENARIO-EXIT=0" in facts.console()
    assert l1["vm_rc"] == "0"

    # The drivers took every device back: the disk reads, the NIC reaches L1, the entropy
    # device serves bytes.
    assert g["blk_rebind_rc"] == "0" and g["net_rebind_rc"] == "0"
    assert g["rng_rebind_rc"] == "0" and g["console_rebind_rc"] == "0"
    assert g["rng_current_after_rebind"].startswith("virtio_rng"), g
    assert g["rng_bytes_after_rebind"] == "64", g
    assert g["vdb_read_rc"] == "0"
    assert g["vdb_magic"] == "HOSTILE!"
    assert g["ping_after_rebind"] == "yes"

    # The other VM on the same L1 kept counting during the attacks and after.
    assert int(l1["bystander_lines_during_attacks"]) > 0
    assert int(l1["bystander_lines_after"]) > 0
    assert l1["bystander_alive"] == "yes"
