"""Boot benchmark: the launcher side by side with QEMU microvm and, when given, Firecracker
and Cloud Hypervisor, interleaved inside one L1.

    python3 -m tests.bench.boot --runs N [--only launcher|qemu|firecracker|cloud-hypervisor]
        [--peer firecracker=PATH] [--peer cloud-hypervisor=PATH] [--skip VMM] [--warmup 1]
        [--pio-trace] [--pin-cpu N] [--from-log L1_LOG]

Every VMM boots the same vmlinux + initrd with the same command line (``iv.bench``: the
guest powers off right after printing IRONVISOR-GUEST-INIT-REACHED), 1 vCPU, 256 MiB, no
devices. The peers are binaries the user built (``scripts/build-peers.sh``). Per VMM the
report gives boot time to the marker, its spread, memory overhead and ru_maxrss, the
launcher's ratio to every other VMM, KVM's exit counters per VM and the launcher's
start-up phases (see ``tests/bench/boot_report.py``). ``--pio-trace`` adds one traced boot
per VMM and prints which I/O ports each guest boot exited on, side by side. ``--pin-cpu N``
runs every VMM (all its threads) on L1 CPU N, the same for all of them. ``--skip qemu``
leaves an arm out (QEMU's boots are the longest: without them the L1 run is a third
shorter, and so is its exposure to the emulated platform's freezes). When the L1 fails
after every VMM had measured boots, the report of those boots is still printed, under a
``PARTIAL REPORT`` line, and the exit code is 1.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from images.build import BuildError, build
from images.common import REPO_ROOT
from tests.bench.boot_report import (BenchError, Stat, format_pio, format_table, parse_pio,
                                     parse_results, summarise)
from tests.e2e.vmtest import LAUNCHER, LAUNCHER_BUILD_HINT
from tests.nested import l1

__all__ = ["BenchError", "Stat", "format_table", "parse_results", "summarise", "main"]

BENCH_L1 = Path(__file__).resolve().parent / "l1-boot.sh"
MEM_MIB = 256
CMDLINE = "console=ttyS0 reboot=k panic=1 quiet iv.bench"
QEMU_FIRMWARE = ["bios-microvm.bin", "pvh.bin", "linuxboot_dma.bin"]
#: Peer VMMs and the L1 script's variable holding each one's path.
PEERS = {"firecracker": "FIRECRACKER", "cloud-hypervisor": "CLOUD_HYPERVISOR"}
BUILT_IN = ["launcher", "qemu"]

log = logging.getLogger("tests.bench")


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


def parse_peer(text: str) -> tuple[str, Path]:
    """``NAME=PATH`` of ``--peer``: a known peer and an executable file."""
    name, sep, path = text.partition("=")
    if not sep or not path:
        raise BenchError(f"--peer {text!r}: expected NAME=PATH, e.g. firecracker=/path/to/firecracker")
    if name not in PEERS:
        raise BenchError(f"--peer {text!r}: unknown peer {name!r} (known: {', '.join(PEERS)})")
    binary = Path(path).resolve()
    if not binary.is_file() or not os.access(binary, os.X_OK):
        raise BenchError(f"--peer {text!r}: {binary} is not an executable file "
                         "(scripts/build-peers.sh builds the peers)")
    return name, binary


def select_vmms(only: str | None, skip: list[str], peers: dict[str, Path]) -> list[str]:
    """The VMMs to run, in boot order: ``only`` alone, else the built-in arms and the given
    peers, less those in ``skip``."""
    if only and skip:
        raise BenchError("--only and --skip do not go together")
    vmms = [only] if only else BUILT_IN + [p for p in PEERS if p in peers]
    unknown = [v for v in skip if v not in vmms]
    if unknown:
        raise BenchError(f"--skip {unknown[0]}: not an arm of this run ({', '.join(vmms)})")
    vmms = [v for v in vmms if v not in skip]
    if not vmms:
        raise BenchError("--skip left no VMM to run")
    return vmms


def run_bench(runs: int, vmms: list[str], peers: dict[str, Path], warmup: int, smp: int,
              timeout_s: float, pio_trace: bool = False,
              pin_cpu: int | None = None) -> tuple[str, l1.L1Result]:
    """Run the benchmark in one L1; returns (report text, L1 result)."""
    if runs < 1:
        raise BenchError("--runs must be at least 1")
    if pin_cpu is not None and not 0 <= pin_cpu < smp:
        raise BenchError(f"--pin-cpu {pin_cpu}: L1 has CPUs 0..{smp - 1} (--smp {smp})")
    missing_peer = [v for v in vmms if v in PEERS and v not in peers]
    if missing_peer:
        raise BenchError(f"{missing_peer[0]} needs --peer {missing_peer[0]}=PATH")
    images = build()
    bins = [bootbench_binary()]
    firmware = Path("/usr/share/qemu")
    files: list[tuple[Path, str]] = [(images.vmlinux, "/guest/vmlinux"), (images.initrd, "/guest/initrd")]
    if "launcher" in vmms:
        if not LAUNCHER.is_file():
            raise BenchError(f"{LAUNCHER} is missing: {LAUNCHER_BUILD_HINT} (or use --only qemu)")
        bins.append(LAUNCHER)
    if "qemu" in vmms:
        bins.append(l1.qemu_binary())
        files += [(firmware / f, str(firmware / f)) for f in QEMU_FIRMWARE]
    values = {"RUNS": str(runs), "WARMUP": str(warmup), "VMMS": " ".join(vmms),
              "MEM_MIB": str(MEM_MIB), "CMDLINE": CMDLINE, "RUN_TIMEOUT_S": "120",
              "PIO_TRACE": "1" if pio_trace else "0",
              "PIN_CPU": "" if pin_cpu is None else str(pin_cpu)}
    for name, binary in peers.items():
        if name in vmms:
            bins.append(binary)
            values[PEERS[name]] = str(binary)
    with tempfile.TemporaryDirectory(prefix="iv-bench-") as tmp:
        params = Path(tmp) / "params"
        params.write_text("".join(f"{k}={shlex.quote(v)}\n" for k, v in values.items()))
        files.append((params, "/bench/params"))
        # Nested paging on, as every published run of this benchmark measured it.
        spec = l1.L1Spec(script=BENCH_L1, bins=bins, files=files, smp=smp, timeout_s=timeout_s,
                         name="bench-boot", echo=None, nested_paging=True)
        result = l1.run(spec)
    report = report_of_run(result, vmms)
    if pio_trace and "Port I/O exits" not in report:
        report += "\n\nno port histogram: L1 has no kvm_pio tracepoint"
    return report, result


class PartialRun(BenchError):
    """The L1 run failed after every VMM had measured boots: the error, and the report of
    the boots measured before it failed (``report``)."""

    def __init__(self, message: str, report: str) -> None:
        super().__init__(message)
        self.report = report


def report_of_run(result: l1.L1Result, vmms: list[str]) -> str:
    """The report of a finished L1 run; :class:`PartialRun` when the L1 failed after every
    VMM had been measured (an L1 that froze mid-run still leaves its earlier rounds)."""
    if result.rc != 0:
        failure = f"the benchmark's L1 run failed: {result.failure} (log {result.log_path})"
        try:
            partial = report_from_output(result.output, vmms)
        except BenchError:
            raise BenchError(failure) from None
        measured = sum(measured_counts(parse_results(result.output), vmms).values())
        raise PartialRun(f"{failure}; the report covers the {measured} measured boots before it",
                         partial)
    try:
        return report_from_output(result.output, vmms)
    except BenchError as exc:
        raise BenchError(f"{exc} (log {result.log_path})") from exc


def measured_counts(results: list[dict[str, object]], vmms: list[str]) -> dict[str, int]:
    """Successful measured (not warm-up) boots per VMM."""
    return {v: sum(1 for r in results
                   if r["label"] == v and int(r["run"]) > 0 and not r.get("error"))  # type: ignore[call-overload]
            for v in vmms}


def report_from_output(output: str, vmms: list[str] | None = None) -> str:
    """The report for the bootbench lines in an L1's output (every VMM seen there when
    ``vmms`` is None); the port histogram is added when the output has one."""
    results = parse_results(output)
    errors = [r for r in results if r.get("error")]
    summary = summarise(results)
    vmms = vmms if vmms is not None else list(summary)
    missing = [v for v in vmms if v not in summary]
    if missing or not summary:
        detail = "; ".join(str(r["error"]) for r in errors[:3])
        raise BenchError(f"no successful runs for {', '.join(missing) or 'any VMM'}: {detail}")
    report = format_table(summary, measured_counts(results, vmms))
    if errors:
        report += f"\n{len(errors)} run(s) failed, e.g.: {errors[0]['error']}"
    pio = format_pio(parse_pio(output))
    if pio:
        report += "\n\n" + pio
    return report


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="python3 -m tests.bench.boot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=1, help="unreported runs of each VMM first")
    parser.add_argument("--only", choices=BUILT_IN + list(PEERS), default=None)
    parser.add_argument("--peer", action="append", default=[], metavar="NAME=PATH",
                        help=f"add a peer VMM arm ({', '.join(PEERS)})")
    parser.add_argument("--skip", action="append", default=[], metavar="VMM",
                        help="leave this arm out (repeatable), e.g. --skip qemu")
    parser.add_argument("--pio-trace", action="store_true",
                        help="one more traced boot per VMM: I/O port exits side by side")
    parser.add_argument("--pin-cpu", type=int, default=None, metavar="N",
                        help="run every VMM on L1 CPU N (default: left to L1's scheduler)")
    parser.add_argument("--from-log", type=Path, metavar="L1_LOG",
                        help="print the report of an earlier run from its L1 console log "
                             "(e.g. one whose L1 froze after the measured runs) and exit")
    parser.add_argument("--smp", type=int, default=2, help="L1 vCPUs")
    parser.add_argument("--timeout", type=float, default=1800.0, help="L1 time limit, seconds")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    if args.from_log:
        try:
            print(report_from_output(args.from_log.read_text(errors="replace")))
        except (OSError, BenchError) as exc:
            print(f"error: {args.from_log}: {exc}", file=sys.stderr)
            return 1
        return 0
    try:
        peers = dict(parse_peer(p) for p in args.peer)
        vmms = select_vmms(args.only, args.skip, peers)
        report, result = run_bench(args.runs, vmms, peers, args.warmup, args.smp, args.timeout,
                                   args.pio_trace, args.pin_cpu)
    except PartialRun as exc:
        print(f"PARTIAL REPORT: {exc}")
        print(exc.report)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (BenchError, BuildError, l1.HarnessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(report)
    print(f"(L1 wall {result.wall_s:.0f} s; raw lines in {result.log_path})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
