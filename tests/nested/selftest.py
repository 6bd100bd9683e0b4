"""Prove the nested harness: inside L1, QEMU with ``-accel kvm`` boots the guest images.

    python3 -m tests.nested.selftest [--smp N]

Exits 0 when the L2 guest reached its /init and its scenario exited 0.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import tempfile
from pathlib import Path

from images.build import BuildError, Images, build
from images.common import source_date_epoch
from images.cpio import concatenate
from images.initramfs import build_overlay
from tests.nested import l1

SELFTEST_L1 = Path(__file__).resolve().parent / "selftest-l1.sh"

#: The guest scenario: proves L2 userspace runs and reports what it sees.
GUEST_SCENARIO = b"""echo "SELFTEST-GUEST kernel=$(uname -r) cpus=$(nproc)"
"""

#: Firmware QEMU's microvm machine loads (qboot BIOS, the PVH and Linux option ROMs).
QEMU_FIRMWARE = ["bios-microvm.bin", "pvh.bin", "linuxboot_dma.bin"]

_L2_WALL = re.compile(r"SELFTEST-FACT l2_wall_ms=(\d+)")


def run_selftest(images: Images, *, smp: int = 2, timeout_s: float = 600.0,
                 base: l1.L1Base | None = None) -> l1.L1Result:
    """Boot L1 with QEMU inside and the guest images; returns the L1 result."""
    with tempfile.TemporaryDirectory(prefix="iv-selftest-") as tmp:
        work = Path(tmp)
        overlay = work / "scenario.cpio.gz"
        build_overlay({"/scenarios/selftest.sh": GUEST_SCENARIO}, overlay,
                      epoch=source_date_epoch(), work=work)
        initrd = work / "guest-initrd.img"
        concatenate([images.initrd, overlay], initrd)
        firmware = Path("/usr/share/qemu")
        files = [(images.vmlinux, "/guest/vmlinux"), (initrd, "/guest/initrd")]
        files += [(firmware / f, str(firmware / f)) for f in QEMU_FIRMWARE]
        spec = l1.L1Spec(script=SELFTEST_L1, bins=[l1.qemu_binary()], files=files,
                         smp=smp, timeout_s=timeout_s, name="selftest")
        return l1.run(spec, base)


def l2_wall_ms(result: l1.L1Result) -> int | None:
    """Milliseconds the L2 QEMU run took inside L1, as measured there."""
    m = _L2_WALL.search(result.output)
    return int(m.group(1)) if m else None


def main(argv: list[str] | None = None) -> int:
    """Run the self-test and print its timings."""
    parser = argparse.ArgumentParser(prog="python3 -m tests.nested.selftest", description=__doc__)
    parser.add_argument("--smp", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    try:
        result = run_selftest(build(), smp=args.smp, timeout_s=args.timeout)
    except (BuildError, l1.HarnessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    ok = result.rc == 0 and "SELFTEST-OK" in result.output
    print(f"selftest {'passed' if ok else 'FAILED'}: rc={result.rc} L1 wall={result.wall_s:.1f}s "
          f"L1 init={result.init_s}s L2 run in L1={l2_wall_ms(result)} ms log={result.log_path}",
          file=sys.stderr)
    if result.failure:
        print(f"error: {result.failure}", file=sys.stderr)
    return 0 if ok else (result.rc or 1)


if __name__ == "__main__":
    sys.exit(main())
