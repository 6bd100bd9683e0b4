"""Bad input with real KVM (inside nested KVM): what only shows while loading the guest.

Validation errors that need no KVM (missing files, zero vCPUs, too much memory, no or a
PVM /dev/kvm) are covered by launcher/tests/bad_input.rs on the host.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.vmtest import E2ERunner

pytestmark = [pytest.mark.nested, pytest.mark.launcher]

EXIT_LAUNCHER_ERROR = 1


@pytest.fixture(scope="module")
def facts(runner: E2ERunner, launcher: Path):
    facts = runner.run("badinput")
    assert facts.result.rc == 0, facts.result.failure
    return facts.l1


@pytest.mark.parametrize("tag, words", [
    ("garbage_kernel", ["kernel"]),
    ("truncated_kernel", ["kernel"]),
    ("garbage_initrd", ["initrd"]),
])
def test_refused_with_a_message_and_nothing_left(facts: dict[str, str], tag: str,
                                                  words: list[str]) -> None:
    assert facts[f"{tag}_rc"] == str(EXIT_LAUNCHER_ERROR), facts
    error = facts[f"{tag}_error"].lower()
    assert error, f"no error message for {tag}"
    for word in words:
        assert word in error, error
    assert facts[f"{tag}_left"] == "0/0", f"{tag} left sockets/processes behind"
