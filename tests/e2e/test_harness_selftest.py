"""The nested-KVM harness works: inside L1, QEMU -accel kvm boots the guest images."""

from __future__ import annotations

import pytest

from images.build import Images
from tests.nested import l1
from tests.nested.selftest import l2_wall_ms, run_selftest

pytestmark = pytest.mark.nested


def test_qemu_kvm_in_l1_boots_the_guest(images: Images, l1_base: l1.L1Base) -> None:
    result = run_selftest(images, base=l1_base)
    print(f"\nL1 wall {result.wall_s:.1f} s, L1 /init after {result.init_s} s, "
          f"L2 QEMU run inside L1 {l2_wall_ms(result)} ms")
    assert result.marker_seen, result.failure
    l2 = [line[len("l2| "):].strip() for line in result.output.splitlines()
          if line.startswith("l2| ")]
    assert "IRONVISOR-GUEST-INIT-REACHED" in l2
    assert any(line.startswith("IRONVISOR-GUEST-INFO cpus=1 mem_kb=") for line in l2), l2
    assert f"SELFTEST-GUEST kernel={images.kernel_version} cpus=1" in l2
    assert "IRONVISOR-SCENARIO-EXIT=0" in l2
    assert "SELFTEST-OK" in result.output
    # L1's KVM runs its guests on shadow page tables unless a run asks for nested paging
    # (tests/README.md, "Nested KVM and vCPU migration").
    assert "NESTED-L1-KVM nested_paging=N" in result.output
    assert result.rc == 0, result.failure
    assert not result.timed_out
