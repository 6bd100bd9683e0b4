"""Shared pytest setup: markers and the guest images, built once per session."""

from __future__ import annotations

import pytest

from images.build import BuildError, Images, build


def pytest_configure(config: pytest.Config) -> None:
    """Register the suite's markers."""
    config.addinivalue_line("markers", "nested: boots an L1 VM under QEMU TCG (slow, needs qemu-system-x86)")
    config.addinivalue_line("markers", "launcher: needs target/release/ironvisor-launcher")
    config.addinivalue_line("markers", "tcg: boots the guest directly under QEMU TCG (a few seconds)")


@pytest.fixture(scope="session")
def images() -> Images:
    """The guest images in .cache/images (built or reused, once per session)."""
    try:
        return build()
    except BuildError as exc:
        pytest.fail(f"guest images could not be built: {exc}")
