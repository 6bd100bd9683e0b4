"""Lifecycle: poweroff, SIGTERM (graceful), kill -9 and forced shutdown clean up."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.vmtest import E2ERunner

pytestmark = pytest.mark.nested

#: Launcher exit codes (see the launcher's CLI).
EXIT_POWEROFF = 0
EXIT_GRACEFUL_STOP = 5
EXIT_HARD_STOP = 6


def test_guest_poweroff_exits_zero(runner: E2ERunner) -> None:
    facts = runner.run("poweroff")
    assert facts.result.rc == 0, facts.result.failure
    # The guest's own kernel powered the machine off: after the scenario announced it, the
    # kernel printed its power-down line (a crash, a hang killed from outside or an exit
    # for another reason would not print it).
    console = facts.console()
    announced = [i for i, line in enumerate(console) if "GUEST-FACT powering_off=yes" in line]
    assert announced, f"the poweroff scenario never ran; console tail: {console[-20:]}"
    assert any("reboot: Power down" in line for line in console[announced[-1]:]), (
        f"no kernel power-down after the scenario's poweroff; console tail: {console[-20:]}")
    assert facts.l1["vm_rc"] == str(EXIT_POWEROFF)
    assert facts.l1["procs_after"] == "0"


@pytest.mark.launcher
def test_sigterm_stops_the_guest_gracefully(runner: E2ERunner, launcher: Path) -> None:
    facts = runner.run("sigterm")
    assert facts.result.rc == 0, facts.result.failure
    console = facts.console()
    assert "GUEST-IDLE-READY" in console
    assert "ready" not in facts.l1, "the guest never became ready"
    # The launcher sent Ctrl+Alt+Del; the guest's /init caught SIGINT and powered off.
    assert "IRONVISOR-GUEST-GRACEFUL-SHUTDOWN" in console
    assert facts.l1["vm_rc"] == str(EXIT_GRACEFUL_STOP)
    assert facts.l1["api_socket_after"] == "absent"
    assert facts.l1["console_socket_after"] == "absent"
    assert facts.l1["procs_after"] == "0"
    print(f"\ngraceful stop took {facts.l1['stop_ms']} ms (in L1)")


@pytest.mark.launcher
@pytest.mark.parametrize("stop", ["kill9", "force"])
def test_hard_stop_leaves_nothing_behind(runner: E2ERunner, launcher: Path, stop: str) -> None:
    facts = runner.run("hardstop", params={"STOP": stop, "MAC": "52:54:00:00:00:09"})
    assert facts.result.rc == 0, facts.result.failure
    l1f = facts.l1
    assert "ready" not in l1f, "the guest never became ready"
    # While running, the launcher had created the tap and both sockets.
    assert l1f["tap_during"] == "present"
    assert l1f["api_socket_during"] == "present"
    assert l1f["console_socket_during"] == "present"
    if stop == "kill9":
        assert l1f["vm_rc"] == str(128 + 9)
    else:
        assert l1f["ctl_rc"] == "0"
        assert l1f["vm_rc"] == str(EXIT_HARD_STOP)
        assert "IRONVISOR-GUEST-GRACEFUL-SHUTDOWN" not in facts.console()
    assert l1f["tap_after"] == "absent"
    assert l1f["api_socket_after"] == "absent"
    assert l1f["console_socket_after"] == "absent"
    assert l1f["procs_after"] == "0"
