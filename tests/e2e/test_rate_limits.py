"""Rate limits a guest cannot escape: it floods a rate-limited disk and NIC (each
direction) as fast as it can, and every transfer takes at least as long as the token
buckets allow. Prints the measured rates beside the limits (and an unlimited disk)."""

from __future__ import annotations

import pytest

from tests.e2e.vmtest import E2ERunner

pytestmark = pytest.mark.nested

MAC = "52:54:00:12:34:57"
MIB = 1 << 20
DISK_BPS = 1 * MIB
DISK_BLOCKS = 96  # 64 KiB reads: 6 MiB
NET_BPS = 256 * 1024
NET_BLOCKS = 16  # 1 MiB each way


def least_seconds(total: int, rate: int) -> float:
    """The shortest time a bucket of `rate` bytes/s with a burst of one second's worth
    lets `total` bytes through (5 % margin for the clocks of two VMs)."""
    return (total - rate) / rate * 0.95


def test_disk_and_nic_floods_stay_within_their_rate_limits(runner: E2ERunner) -> None:
    facts = runner.run("ratelimit", params={
        "MAC": MAC, "DISK_BPS": str(DISK_BPS), "DISK_BLOCKS": str(DISK_BLOCKS),
        "NET_BPS": str(NET_BPS), "NET_BLOCKS": str(NET_BLOCKS)})
    assert facts.result.rc == 0, facts.result.failure
    g, l1 = facts.guest, facts.l1
    assert "IRONVISOR-SCENARIO-EXIT=0" in facts.console()
    assert l1["vm_rc"] == "0"

    disk_bytes = DISK_BLOCKS * 64 * 1024
    net_bytes = NET_BLOCKS * 64 * 1024
    assert g["vda_read_rc"] == "0", g.get("vda_read_error")
    assert g["vdb_read_rc"] == "0", g.get("vdb_read_error")
    assert g["ping"] == "yes"
    assert g["rx_rc"] == "0"
    assert int(g["rx_bytes"]) == net_bytes
    assert int(l1["tx_bytes"]) == net_bytes
    assert g["tx_served_rc"] == "0"

    rows = [
        ("disk, limited", disk_bytes, float(g["vda_read_seconds"]), DISK_BPS),
        ("disk, unlimited", disk_bytes, float(g["vdb_read_seconds"]), None),
        ("NIC RX (L1 -> guest)", net_bytes, float(g["rx_seconds"]), NET_BPS),
        ("NIC TX (guest -> L1)", net_bytes, float(l1["tx_seconds"]), NET_BPS),
    ]
    print("\nrate limits under a flood (nested KVM in a TCG L1):")
    print("(the bucket starts full: one second's worth passes at once, the rest at the limit)")
    print(f"{'transfer':<22} {'MiB':>5} {'seconds':>8} {'MiB/s':>7} {'limit MiB/s':>12} "
          f"{'bucket allows >= s':>19}")
    for name, total, seconds, limit in rows:
        rate = total / MIB / seconds if seconds > 0 else float("inf")
        shown = f"{limit / MIB:.2f}" if limit else "none"
        least = f"{(total - limit) / limit:.2f}" if limit else "-"
        print(f"{name:<22} {total / MIB:>5.1f} {seconds:>8.2f} {rate:>7.2f} {shown:>12} "
              f"{least:>19}")
    for name, total, seconds, limit in rows:
        if limit:
            assert seconds >= least_seconds(total, limit), (
                f"{name}: {total} bytes in {seconds} s beat the limit of {limit} bytes/s")
