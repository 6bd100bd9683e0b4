"""Fixtures for the e2e tests: guest images with scenarios, the L1 base, the launcher."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from images.build import Images
from tests.e2e.vmtest import (LAUNCHER, LAUNCHER_BUILD_HINT, E2ERunner,
                              guest_initrd_with_scenarios)
from tests.nested import l1

#: Set IRONVISOR_E2E_VMM=qemu to run the scenarios with QEMU standing in for the launcher
#: (checks the guest and L1 scripts themselves; launcher-only tests are skipped).
VMM = os.environ.get("IRONVISOR_E2E_VMM", "launcher")


@pytest.fixture(scope="session")
def e2e_work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch directory for the whole e2e session."""
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="session")
def guest_initrd(images: Images, e2e_work: Path) -> Path:
    """The guest initrd plus every scenario of tests/e2e/guest at /scenarios."""
    return guest_initrd_with_scenarios(images, e2e_work / "guest-initrd.img")


@pytest.fixture(scope="session")
def l1_base(images: Images) -> l1.L1Base:
    """The cached L1 kernel and base initramfs."""
    return l1.prepare_base(images)


@pytest.fixture(scope="session")
def launcher() -> Path:
    """The release launcher binary; skips the test while it has not been built."""
    if VMM != "launcher":
        pytest.skip(f"IRONVISOR_E2E_VMM={VMM}: this test needs the launcher itself")
    if not LAUNCHER.is_file():
        pytest.skip(f"{LAUNCHER} is missing: {LAUNCHER_BUILD_HINT}")
    return LAUNCHER


@pytest.fixture(scope="session")
def runner(images: Images, guest_initrd: Path, l1_base: l1.L1Base, e2e_work: Path) -> E2ERunner:
    """Runs L1 scripts with the launcher (or QEMU with IRONVISOR_E2E_VMM=qemu)."""
    if VMM == "launcher" and not LAUNCHER.is_file():
        pytest.skip(f"{LAUNCHER} is missing: {LAUNCHER_BUILD_HINT}")
    if VMM not in ("launcher", "qemu"):
        pytest.fail(f"IRONVISOR_E2E_VMM must be 'launcher' or 'qemu', not {VMM!r}")
    return E2ERunner(images, guest_initrd, l1_base, e2e_work, vmm=VMM)
