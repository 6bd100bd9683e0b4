"""Parsing of the guest's IRONVISOR-GUEST-MACHINE line."""

from __future__ import annotations

import pytest

from tests.guest_machine import guest_machine


def test_the_last_machine_line_is_parsed_into_fields() -> None:
    console = [
        "[    0.1] boot",
        "IRONVISOR-GUEST-MACHINE packages=0 cores=0 siblings=0 rtc=none",
        "guest| IRONVISOR-GUEST-MACHINE packages=0,1 cores=0,0 siblings=0,1 rtc=1796448349",
    ]
    assert guest_machine(console) == {
        "packages": "0,1", "cores": "0,0", "siblings": "0,1", "rtc": "1796448349"}
    assert guest_machine("\n".join(console))["rtc"] == "1796448349"


def test_a_console_without_the_line_says_so() -> None:
    with pytest.raises(AssertionError, match="no IRONVISOR-GUEST-MACHINE line"):
        guest_machine(["IRONVISOR-GUEST-INFO cpus=1 mem_kb=1"])
