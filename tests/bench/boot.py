"""Boot benchmark: the launcher against QEMU microvm, side by side inside one L1.

    python3 -m tests.bench.boot --runs N [--only launcher|qemu] [--warmup 1]

Both boot the same vmlinux + initrd with ``iv.bench`` (the guest powers off right after
printing IRONVISOR-GUEST-INIT-REACHED), 1 vCPU, 256 MiB, no devices. Per VMM it reports
median/min/max of: ms from process start to the marker, memory overhead (Rss minus the
guest-RAM mapping's Rss, from /proc/PID/smaps at marker time) and ru_maxrss.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from images.build import BuildError, build
from images.common import REPO_ROOT
from tests.nested import l1

BENCH_L1 = Path(__file__).resolve().parent / "l1-boot.sh"
LAUNCHER = Path(os.environ.get("IRONVISOR_LAUNCHER",
                               REPO_ROOT / "target" / "release" / "ironvisor-launcher"))
MEM_MIB = 256
CMDLINE = "console=ttyS0 reboot=k panic=1 quiet iv.bench"
QEMU_FIRMWARE = ["bios-microvm.bin", "pvh.bin", "linuxboot_dma.bin"]

#: Firecracker's published targets, measured on bare metal (not in a TCG-nested L1).
FIRECRACKER_ANCHORS = ("Firecracker (published, bare metal): < 125 ms from VMM start to guest "
                       "init, < 5 MiB VMM memory overhead")

log = logging.getLogger("tests.bench")


class BenchError(RuntimeError):
    """The benchmark could not run or produced no usable numbers."""


@dataclass(frozen=True)
class Stat:
    """median, min, max of one metric."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: list[float]) -> Stat:
        """Summarise a non-empty list."""
        return cls(statistics.median(values), min(values), max(values))


def bootbench_binary() -> Path:
    """Build ironvisor-bootbench (release) and return its path."""
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO_ROOT / "target"))
    if not target.is_absolute():
        target = REPO_ROOT / target
    proc = subprocess.run(["cargo", "build", "--release", "-p", "ironvisor-bootbench"],
                          cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BenchError(f"cargo build -p ironvisor-bootbench failed:\n{proc.stderr}")
    binary = target / "release" / "ironvisor-bootbench"
    if not binary.is_file():
        raise BenchError(f"cargo built ironvisor-bootbench but {binary} is missing")
    return binary


def parse_results(output: str) -> list[dict[str, object]]:
    """The JSON objects of the ``BENCH-JSON`` lines."""
    results = []
    for line in output.splitlines():
        if line.startswith("BENCH-JSON "):
            try:
                results.append(json.loads(line[len("BENCH-JSON "):]))
            except json.JSONDecodeError as exc:
                raise BenchError(f"bad bootbench line {line!r}: {exc}") from exc
    return results


def summarise(results: list[dict[str, object]]) -> dict[str, dict[str, Stat]]:
    """Per VMM: marker_ms, overhead_mib, maxrss_mib (warm-up runs, numbered <= 0, skipped)."""
    table: dict[str, dict[str, list[float]]] = {}
    for r in results:
        if int(r["run"]) <= 0 or r.get("error"):  # type: ignore[arg-type]
            continue
        row = table.setdefault(str(r["label"]), {"marker_ms": [], "overhead_mib": [], "maxrss_mib": []})
        row["marker_ms"].append(float(r["marker_ms"]))  # type: ignore[arg-type]
        row["overhead_mib"].append(float(r["overhead_kib"]) / 1024)  # type: ignore[arg-type]
        row["maxrss_mib"].append(float(r["maxrss_kib"]) / 1024)  # type: ignore[arg-type]
    return {vmm: {k: Stat.of(v) for k, v in row.items()} for vmm, row in table.items()}


def format_table(summary: dict[str, dict[str, Stat]], runs: dict[str, int]) -> str:
    """The report: one row per VMM, the launcher/QEMU ratio, and Firecracker's anchors."""
    metrics = [("marker_ms", "boot to init marker (ms)", "{:.0f}"),
               ("overhead_mib", "VMM overhead Rss (MiB)", "{:.2f}"),
               ("maxrss_mib", "ru_maxrss (MiB)", "{:.1f}")]
    lines = [f"{'VMM':10} {'runs':>4}  " + "  ".join(f"{title:>32}" for _, title, _ in metrics),
             f"{'':10} {'':>4}  " + "  ".join(f"{'median [min..max]':>32}" for _ in metrics)]
    for vmm in sorted(summary):
        cells = []
        for key, _, fmt in metrics:
            s = summary[vmm][key]
            cells.append(f"{fmt.format(s.median)} [{fmt.format(s.low)}..{fmt.format(s.high)}]")
        lines.append(f"{vmm:10} {runs.get(vmm, 0):>4}  " + "  ".join(f"{c:>32}" for c in cells))
    if "launcher" in summary and "qemu" in summary:
        ratios = []
        for key, title, _ in metrics:
            q = summary["qemu"][key].median
            ratio = summary["launcher"][key].median / q if q else float("nan")
            ratios.append(f"{title}: {ratio:.2f}")
        lines.append("launcher/QEMU (medians): " + "; ".join(ratios))
    lines.append(FIRECRACKER_ANCHORS)
    lines.append("Here both VMMs run on KVM inside a QEMU-TCG L1 (nested, emulated CPU): "
                 "compare the two rows with each other, not with the anchors.")
    return "\n".join(lines)


def run_bench(runs: int, vmms: list[str], warmup: int, smp: int, timeout_s: float) -> tuple[str, l1.L1Result]:
    """Run the benchmark in one L1; returns (report text, L1 result)."""
    if runs < 1:
        raise BenchError("--runs must be at least 1")
    images = build()
    bins = [bootbench_binary()]
    firmware = Path("/usr/share/qemu")
    files: list[tuple[Path, str]] = [(images.vmlinux, "/guest/vmlinux"), (images.initrd, "/guest/initrd")]
    if "launcher" in vmms:
        if not LAUNCHER.is_file():
            raise BenchError(f"{LAUNCHER} is missing: cargo build --release -p ironvisor-launcher "
                             "(or use --only qemu)")
        bins.append(LAUNCHER)
    if "qemu" in vmms:
        bins.append(l1.qemu_binary())
        files += [(firmware / f, str(firmware / f)) for f in QEMU_FIRMWARE]
    with tempfile.TemporaryDirectory(prefix="iv-bench-") as tmp:
        params = Path(tmp) / "params"
        values = {"RUNS": str(runs), "WARMUP": str(warmup), "VMMS": " ".join(vmms),
                  "MEM_MIB": str(MEM_MIB), "CMDLINE": CMDLINE, "RUN_TIMEOUT_S": "120"}
        params.write_text("".join(f"{k}={shlex.quote(v)}\n" for k, v in values.items()))
        files.append((params, "/bench/params"))
        spec = l1.L1Spec(script=BENCH_L1, bins=bins, files=files, smp=smp, timeout_s=timeout_s,
                         name="bench-boot", echo=None)
        result = l1.run(spec)
    if result.rc != 0:
        raise BenchError(f"the benchmark's L1 run failed: {result.failure} (log {result.log_path})")
    results = parse_results(result.output)
    errors = [r for r in results if r.get("error")]
    summary = summarise(results)
    missing = [v for v in vmms if v not in summary]
    if missing:
        detail = "; ".join(str(r["error"]) for r in errors[:3])
        raise BenchError(f"no successful runs for {', '.join(missing)}: {detail} (log {result.log_path})")
    counts = {v: sum(1 for r in results if r["label"] == v and int(r["run"]) > 0 and not r.get("error"))  # type: ignore[arg-type]
              for v in vmms}
    report = format_table(summary, counts)
    if errors:
        report += f"\n{len(errors)} run(s) failed, e.g.: {errors[0]['error']}"
    return report, result


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="python3 -m tests.bench.boot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=1, help="unreported runs of each VMM first")
    parser.add_argument("--only", choices=["launcher", "qemu"], default=None)
    parser.add_argument("--smp", type=int, default=2, help="L1 vCPUs")
    parser.add_argument("--timeout", type=float, default=1800.0, help="L1 time limit, seconds")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    vmms = [args.only] if args.only else ["launcher", "qemu"]
    try:
        report, result = run_bench(args.runs, vmms, args.warmup, args.smp, args.timeout)
    except (BenchError, BuildError, l1.HarnessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(report)
    print(f"(L1 wall {result.wall_s:.0f} s; raw lines in {result.log_path})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
