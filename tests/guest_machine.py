"""The machine shape the test guest's /init prints (images/guest-init.sh):

    IRONVISOR-GUEST-MACHINE packages=0,0,1,1 cores=0,0,0,0 siblings=0-1,0-1,2-3,2-3 rtc=1796448349

per CPU in number order its socket, core and SMT siblings, and the RTC's seconds since the
epoch ("none" without an RTC)."""

from __future__ import annotations

from collections.abc import Iterable

MARKER = "IRONVISOR-GUEST-MACHINE "


def guest_machine(console: Iterable[str]) -> dict[str, str]:
    """The fields of the last IRONVISOR-GUEST-MACHINE line of a console (lines or text)."""
    lines = console.splitlines() if isinstance(console, str) else list(console)
    found = [line[line.index(MARKER) + len(MARKER):] for line in lines if MARKER in line]
    if not found:
        raise AssertionError("no IRONVISOR-GUEST-MACHINE line on the console")
    return dict(field.split("=", 1) for field in found[-1].split() if "=" in field)
