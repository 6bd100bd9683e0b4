"""Helpers for the e2e tests: the guest initrd with scenarios, L1 runs, and their output.

Each test runs one L1 script from ``tests/e2e/l1/`` inside the nested-KVM harness; the
script starts VMs from the guest images and prints ``L1-FACT key=value`` lines, the guest
scenarios (``tests/e2e/guest/``) print ``GUEST-FACT key=value`` lines on the VM console,
which the L1 script copies out prefixed with ``guest| ``. Tests assert on those facts.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from images.build import Images
from images.common import REPO_ROOT, source_date_epoch
from images.cpio import concatenate
from images.initramfs import build_overlay
from tests.nested import l1

E2E_DIR = Path(__file__).resolve().parent
GUEST_SCENARIOS = E2E_DIR / "guest"
L1_SCRIPTS = E2E_DIR / "l1"

#: The launcher under test, as shipped: statically linked, built by
#: ``scripts/build-launcher.sh``; IRONVISOR_LAUNCHER=PATH tests another build (e.g. a debug
#: or dynamically linked one).
LAUNCHER = Path(os.environ.get(
    "IRONVISOR_LAUNCHER",
    REPO_ROOT / "target" / "x86_64-unknown-linux-gnu" / "launcher" / "ironvisor-launcher"))
#: How to build it.
LAUNCHER_BUILD_HINT = "build it with 'scripts/build-launcher.sh'"

#: Host programs the L1 scripts call (iproute2 for tuntap, debugfs to read disk images).
L1_TOOLS = [Path("/usr/sbin/ip"), Path("/usr/sbin/debugfs")]

#: QEMU firmware a microvm needs when QEMU stands in for the launcher.
QEMU_FIRMWARE = ["bios-microvm.bin", "pvh.bin", "linuxboot_dma.bin"]

_FACT = re.compile(r"(L1|GUEST)-FACT ([A-Za-z0-9_]+)=(.*)$")


def guest_initrd_with_scenarios(images: Images, out: Path, scenarios: Path = GUEST_SCENARIOS) -> Path:
    """The generic guest initrd followed by an archive of ``scenarios/*.sh`` at /scenarios."""
    files = {f"/scenarios/{p.name}": p.read_bytes() for p in sorted(scenarios.glob("*.sh"))}
    overlay = out.with_name(out.name + ".scenarios.cpio.gz")
    with tempfile.TemporaryDirectory(prefix="iv-overlay-") as work:
        build_overlay(files, overlay, epoch=source_date_epoch(), work=Path(work))
    concatenate([images.initrd, overlay], out)
    overlay.unlink()
    return out


@dataclass
class Facts:
    """What an L1 run reported."""

    l1: dict[str, str]
    guest: dict[str, str]
    output: str
    result: l1.L1Result

    def status_json(self, name: str) -> dict[str, object]:
        """The JSON printed by ``ctl status`` between the L1-STATUS markers ``name``."""
        m = re.search(rf"L1-STATUS-BEGIN {re.escape(name)}\n(.*?)L1-STATUS-END {re.escape(name)}",
                      self.output, re.S)
        if m is None:
            raise AssertionError(f"no status block {name!r} in the L1 output")
        text = "\n".join(line for line in m.group(1).splitlines() if not line.startswith("L1-FACT"))
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise AssertionError(f"status {name!r} is not JSON: {exc}\n{text}") from exc
        if not isinstance(value, dict):
            raise AssertionError(f"status {name!r} is not a JSON object: {text}")
        return value

    def console(self) -> list[str]:
        """The guest console lines the L1 script copied out."""
        return [line[len("guest| "):] for line in self.output.splitlines()
                if line.startswith("guest| ")]


def parse_facts(output: str) -> tuple[dict[str, str], dict[str, str]]:
    """(L1 facts, guest facts) from console text; a later value for a key wins."""
    l1_facts: dict[str, str] = {}
    guest_facts: dict[str, str] = {}
    for line in output.splitlines():
        m = _FACT.search(line)
        if m:
            (l1_facts if m.group(1) == "L1" else guest_facts)[m.group(2)] = m.group(3).strip()
    return l1_facts, guest_facts


def write_params(path: Path, params: dict[str, str]) -> None:
    """A shell file of ``KEY='value'`` lines, sourced by the L1 scripts as /e2e/params."""
    lines = [f"{k}={shlex.quote(v)}\n" for k, v in sorted(params.items())]
    path.write_text("".join(lines))


class E2ERunner:
    """Runs the e2e L1 scripts against one set of guest images."""

    def __init__(self, images: Images, guest_initrd: Path, base: l1.L1Base, work: Path,
                 vmm: str = "launcher", launcher: Path = LAUNCHER) -> None:
        self.images = images
        self.guest_initrd = guest_initrd
        self.base = base
        self.work = work
        self.vmm = vmm
        self.launcher = launcher

    def run(self, script: str, *, params: dict[str, str] | None = None,
            files: list[tuple[Path, str]] | None = None, timeout_s: float = 900.0,
            smp: int = 2, tools: list[Path] | None = None) -> Facts:
        """Run ``tests/e2e/l1/<script>.sh`` in L1 and collect its facts; ``tools`` are more
        host binaries the script runs."""
        run_dir = Path(tempfile.mkdtemp(prefix=f"{script}-", dir=self.work))
        params_file = run_dir / "params"
        write_params(params_file, params or {})
        vmm_file = run_dir / "vmm"
        vmm_file.write_text(self.vmm + "\n")
        all_files = [
            (self.images.vmlinux, "/guest/vmlinux"),
            (self.guest_initrd, "/guest/initrd"),
            (L1_SCRIPTS / "common.sh", "/e2e/common.sh"),
            (params_file, "/e2e/params"),
            (vmm_file, "/e2e/vmm"),
            *(files or []),
        ]
        bins = [*L1_TOOLS, *(tools or [])]
        if self.vmm == "qemu":
            bins.append(l1.qemu_binary())
            all_files += [(Path("/usr/share/qemu") / f, f"/usr/share/qemu/{f}") for f in QEMU_FIRMWARE]
        else:
            # Copied to its own path plus the /usr/local/bin/ironvisor-launcher symlink.
            bins.append(self.launcher)
        spec = l1.L1Spec(script=L1_SCRIPTS / f"{script}.sh", bins=bins, files=all_files,
                         smp=smp, timeout_s=timeout_s, name=f"e2e-{script}", echo=sys.stdout,
                         log_path=run_dir / "console.log")
        result = l1.run(spec, self.base)
        l1_facts, guest_facts = parse_facts(result.output)
        return Facts(l1_facts, guest_facts, result.output, result)
