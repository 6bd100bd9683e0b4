"""Shared pytest setup: markers and the guest images, built once per session."""

from __future__ import annotations

import pytest

from images.build import BuildError, Images, build


def pytest_configure(config: pytest.Config) -> None:
    """Register the suite's markers."""
    config.addinivalue_line("markers", "nested: boots an L1 VM under QEMU TCG (slow, needs qemu-system-x86)")
    config.addinivalue_line("markers", "launcher: needs target/release/ironvisor-launcher")
    config.addinivalue_line("markers", "tcg: boots the guest directly under QEMU TCG (a few seconds)")


#: How often a failed nested-KVM test is run again. The emulated platform itself faults now
#: and then: QEMU-TCG's nested SVM makes stock L2 guests triple-fault at random points of
#: their boot or the L1 kernel panic (measured: 2 of 4 plain launcher boots in one L1 went
#: wrong on a bad day, with boots of the same binaries passing before and after). A rerun
#: shows as RERUN in the report, so a flaky test stays visible.
NESTED_RERUNS = 1


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Nested-KVM tests get one rerun on failure (pytest-rerunfailures)."""
    if not config.pluginmanager.hasplugin("rerunfailures"):
        return
    for item in items:
        if item.get_closest_marker("nested") and not item.get_closest_marker("flaky"):
            item.add_marker(pytest.mark.flaky(reruns=NESTED_RERUNS, reruns_delay=2))


@pytest.fixture(scope="session")
def images() -> Images:
    """The guest images in .cache/images (built or reused, once per session)."""
    try:
        return build()
    except BuildError as exc:
        pytest.fail(f"guest images could not be built: {exc}")
