"""virtio-net over a tap device that L1 owns: ping and a TCP exchange with nc."""

from __future__ import annotations

import secrets

import pytest

from tests.e2e.vmtest import E2ERunner

pytestmark = pytest.mark.nested

MAC = "52:54:00:12:34:56"


def test_ping_and_tcp_over_tap(runner: E2ERunner) -> None:
    token = secrets.token_hex(8)
    facts = runner.run("net", params={"TOKEN": token, "MAC": MAC})
    assert facts.result.rc == 0, facts.result.failure
    g = facts.guest
    assert "IRONVISOR-SCENARIO-EXIT=0" in facts.console()
    assert g["eth0_present"] == "yes"
    assert g["eth0_mac"] == MAC
    assert g["eth0_up_rc"] == "0"
    assert g["ping"] == "yes"
    # One message each way over TCP.
    assert facts.l1["l1_received"] == f"guest-says-{token}"
    assert g["tcp_reply"] == f"l1-says-{token}"
    assert facts.l1["vm_rc"] == "0"
    # The VMM didn't create tap0, so it must leave it in place.
    assert facts.l1["tap0_after"] == "present"
