"""seccomp: a forbidden call from any launcher thread kind ends the launcher with exit
code 7 and a line naming the thread kind and the call (the filters' self-test,
IRONVISOR_SECCOMP_PROBE). That every thread runs filtered is checked in test_api."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.vmtest import E2ERunner

pytestmark = [pytest.mark.nested, pytest.mark.launcher]


def test_a_forbidden_call_from_each_thread_kind_ends_the_launcher(
        runner: E2ERunner, launcher: Path) -> None:
    facts = runner.run("seccomp")
    assert facts.result.rc == 0, facts.result.failure
    for key, kind in (("vmm", "vmm"), ("vcpu", "vcpu"), ("worker", "device worker")):
        assert facts.l1[f"{key}_rc"] == "7", (key, facts.l1)
        assert facts.l1[f"{key}_line"] == (
            f"ironvisor-launcher: seccomp: a {kind} thread made a forbidden system call: "
            "socket (41); the launcher ends (exit code 7)"), facts.l1
