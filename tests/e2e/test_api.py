"""The gRPC control API: status, pause (console silent), resume, graceful shutdown."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.vmtest import E2ERunner

pytestmark = [pytest.mark.nested, pytest.mark.launcher]

MAC = "52:54:00:ab:cd:ef"
#: The unprivileged user and group the launcher becomes (--run-as).
RUN_AS = "4242:4243"


def _find(obj: object, want: str) -> list[object]:
    """Every value whose key contains ``want`` (case-insensitive), at any depth."""
    found: list[object] = []
    if isinstance(obj, dict):
        for key, value in obj.items():
            if want in str(key).lower():
                found.append(value)
            found.extend(_find(value, want))
    elif isinstance(obj, list):
        for item in obj:
            found.extend(_find(item, want))
    return found


def test_status_pause_resume_shutdown(runner: E2ERunner, launcher: Path) -> None:
    facts = runner.run("api", params={"MAC": MAC, "RUN_AS": RUN_AS})
    assert facts.result.rc == 0, facts.result.failure
    l1f = facts.l1
    assert "ready" not in l1f, "the guest never printed its counter"

    running = facts.status_json("running")
    assert l1f["status_running_rc"] == "0"
    assert [str(s).lower() for s in _find(running, "state")][:1] == ["running"], running
    assert 2 in _find(running, "vcpu"), running
    assert 256 in _find(running, "memory"), running
    devices = _find(running, "devices")
    assert devices and isinstance(devices[0], list) and devices[0], running
    assert MAC in [str(m).lower() for m in _find(devices[0], "mac")], running

    # vmm (main + runtime), 2 vCPUs and the virtio-net worker at least, all filtered.
    assert int(l1f["threads_total"]) >= 5, l1f["threads_total"]
    assert l1f["threads_seccomp_filtered"] == l1f["threads_total"], (
        f"{l1f['threads_seccomp_filtered']} of {l1f['threads_total']} launcher threads "
        "run under a seccomp filter")

    # --run-as: every thread switched all its ids and holds no capability.
    assert l1f["threads_unprivileged"] == l1f["threads_total"], (
        f"{l1f['threads_unprivileged']} of {l1f['threads_total']} launcher threads run as "
        f"{RUN_AS} with no capability")

    # --jail: the launcher sees no host file, in a mount namespace of its own.
    assert l1f["launcher_own_mount_ns"] == "yes"
    assert l1f["launcher_root_entries"] == "0", "the jailed launcher's root is not empty"

    assert l1f["pause_rc"] == "0"
    assert int(l1f["paused_growth"]) == 0, "the console kept printing while paused"
    paused = facts.status_json("paused")
    assert [str(s).lower() for s in _find(paused, "state")][:1] == ["paused"], paused

    assert l1f["resume_rc"] == "0"
    # About ten counter lines in 2 s; demand a few.
    assert int(l1f["resumed_growth"]) >= 3 * len("GUEST-COUNTER 10\n"), l1f["resumed_growth"]
    resumed = facts.status_json("resumed")
    assert [str(s).lower() for s in _find(resumed, "state")][:1] == ["running"], resumed

    assert l1f["shutdown_rc"] == "0"
    assert "IRONVISOR-GUEST-GRACEFUL-SHUTDOWN" in facts.console()
    assert l1f["vm_rc"] == "5"
    # The socket root bound in root's directory outlived the dropped launcher's own
    # clean-up; its socket guardian (still root) removed it.
    assert l1f["api_socket_owner"] == "0"
    assert l1f["api_socket_after"] == "absent"
