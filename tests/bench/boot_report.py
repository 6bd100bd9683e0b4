"""The boot benchmark's numbers: bootbench's JSON lines in, the printed tables out.

Per VMM and metric the report gives median [min..max] over the measured runs (warm-up
runs, numbered <= 0, and failed runs are left out). Metrics: ``marker_ms`` (process start
to the guest's init marker), ``overhead_mib`` (Rss minus guest-RAM Rss at the marker),
``maxrss_mib``, ``kvm.<counter>`` (KVM's exit counters for the VM at the marker, when L1's
debugfs had them), ``phase.<name>`` (the launcher's start-up phases, ms since spawn) and
``mem.<kind>`` (the overhead by kind: the executable's text/rodata/data, libraries, heap,
stacks and other anonymous memory, KiB), ``guest_entry_ms`` (process start to the first
entry into the guest, from KVM's ``kvm_entry`` tracepoint: the VMM's own start-up, measured
alike for every VMM) and ``guest_boot_ms`` (that entry to the marker: the guest's boot on
the VMM's device models).
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass

#: KVM counters in the order they are printed (bootbench reads these).
KVM_COUNTERS = ["exits", "io_exits", "mmio_exits", "insn_emulation", "irq_window_exits",
                "pf_taken"]
#: The launcher's start-up phases in the order it passes them.
LAUNCHER_PHASES = ["main", "args_parsed", "host_probed", "config_checked", "runtime_started",
                   "memory_mapped", "vm_created", "kernel_copied", "kernel_loaded", "devices_created",
                   "vcpus_configured", "first_kvm_run"]
#: Firecracker's published targets, measured on bare metal (not in a TCG-nested L1).
FIRECRACKER_ANCHORS = ("Firecracker (published, bare metal): < 125 ms from VMM start to guest "
                       "init, < 5 MiB VMM memory overhead")


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

    @property
    def spread(self) -> float:
        """max/min (1.0 means every run took the same)."""
        return self.high / self.low if self.low else float("nan")

    def cell(self, fmt: str) -> str:
        """``median [min..max]`` with ``fmt`` for each number."""
        return f"{fmt.format(self.median)} [{fmt.format(self.low)}..{fmt.format(self.high)}]"


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


def _metrics_of(r: dict[str, object]) -> dict[str, float]:
    values = {"marker_ms": float(r["marker_ms"]),  # type: ignore[arg-type]
              "overhead_mib": float(r["overhead_kib"]) / 1024,  # type: ignore[arg-type]
              "maxrss_mib": float(r["maxrss_kib"]) / 1024}  # type: ignore[arg-type]
    entry = r.get("first_guest_entry_ms")
    if entry is not None:
        values["guest_entry_ms"] = float(entry)  # type: ignore[arg-type]
        values["guest_boot_ms"] = values["marker_ms"] - values["guest_entry_ms"]
    kvm = r.get("kvm") or {}
    for name, value in kvm.items():  # type: ignore[union-attr]
        values[f"kvm.{name}"] = float(value)
    phases = r.get("phases_ms") or {}
    for name, value in phases.items():  # type: ignore[union-attr]
        values[f"phase.{name}"] = float(value)
    kinds = r.get("overhead_by_kind_kib") or {}
    for name, value in kinds.items():  # type: ignore[union-attr]
        values[f"mem.{name}"] = float(value)
    return values


def summarise(results: list[dict[str, object]]) -> dict[str, dict[str, Stat]]:
    """Per VMM and metric, the Stat over the measured runs."""
    table: dict[str, dict[str, list[float]]] = {}
    for r in results:
        if int(r["run"]) <= 0 or r.get("error"):  # type: ignore[call-overload]
            continue
        row = table.setdefault(str(r["label"]), {})
        for key, value in _metrics_of(r).items():
            row.setdefault(key, []).append(value)
    return {vmm: {k: Stat.of(v) for k, v in row.items()} for vmm, row in table.items()}


def _order(summary: dict[str, dict[str, Stat]]) -> list[str]:
    """The launcher first, then the others by name."""
    return sorted(summary, key=lambda v: (v != "launcher", v))


def _main_table(summary: dict[str, dict[str, Stat]], runs: dict[str, int]) -> list[str]:
    lines = [f"{'VMM':17} {'runs':>4}  {'boot to init marker, ms':>28}  {'spread':>6}  "
             f"{'VMM overhead Rss, MiB':>24}  {'ru_maxrss, MiB':>22}",
             f"{'':17} {'':>4}  {'median [min..max]':>28}  {'max/min':>6}  "
             f"{'median [min..max]':>24}  {'median [min..max]':>22}"]
    for vmm in _order(summary):
        row = summary[vmm]
        lines.append(f"{vmm:17} {runs.get(vmm, 0):>4}  {row['marker_ms'].cell('{:.0f}'):>28}  "
                     f"{row['marker_ms'].spread:>6.2f}  {row['overhead_mib'].cell('{:.2f}'):>24}  "
                     f"{row['maxrss_mib'].cell('{:.1f}'):>22}")
    return lines


def _ratio_lines(summary: dict[str, dict[str, Stat]]) -> list[str]:
    if "launcher" not in summary:
        return []
    mine = summary["launcher"]
    lines = []
    for vmm in _order(summary):
        if vmm == "launcher":
            continue
        other = summary[vmm]
        boot = mine["marker_ms"].median / other["marker_ms"].median
        overhead = mine["overhead_mib"].median / other["overhead_mib"].median
        lines.append(f"launcher/{vmm} (medians): boot {boot:.2f}, overhead {overhead:.2f}")
    return lines


def _split_table(summary: dict[str, dict[str, Stat]]) -> list[str]:
    vmms = [v for v in _order(summary) if "guest_entry_ms" in summary[v]]
    if not vmms:
        return []
    lines = ["spawn to marker split at the first guest entry (KVM's kvm_entry), ms, "
             "median [min..max]:",
             f"{'VMM':17} {'VMM start-up (spawn to entry)':>30} {'guest boot (entry to marker)':>30}"]
    for vmm in vmms:
        row = summary[vmm]
        lines.append(f"{vmm:17} {row['guest_entry_ms'].cell('{:.0f}'):>30} "
                     f"{row['guest_boot_ms'].cell('{:.0f}'):>30}")
    mine = summary.get("launcher", {})
    if "guest_entry_ms" in mine:
        for vmm in vmms:
            if vmm == "launcher":
                continue
            other = summary[vmm]
            lines.append(f"launcher - {vmm} (medians): start-up "
                         f"{mine['guest_entry_ms'].median - other['guest_entry_ms'].median:+.0f} ms, "
                         f"guest boot {mine['guest_boot_ms'].median - other['guest_boot_ms'].median:+.0f} ms")
    return lines


def _kvm_table(summary: dict[str, dict[str, Stat]]) -> list[str]:
    vmms = [v for v in _order(summary) if any(k.startswith("kvm.") for k in summary[v])]
    if not vmms:
        return []
    lines = ["KVM exit counters at the marker (L1 debugfs), median [min..max]:",
             f"{'VMM':17} " + " ".join(f"{c:>22}" for c in KVM_COUNTERS)]
    for vmm in vmms:
        cells = [summary[vmm][f"kvm.{c}"].cell("{:.0f}") if f"kvm.{c}" in summary[vmm] else "-"
                 for c in KVM_COUNTERS]
        lines.append(f"{vmm:17} " + " ".join(f"{c:>22}" for c in cells))
    return lines


def _phase_table(summary: dict[str, dict[str, Stat]]) -> list[str]:
    row = summary.get("launcher", {})
    phases = [p for p in LAUNCHER_PHASES if f"phase.{p}" in row]
    phases += sorted(k[len("phase."):] for k in row
                     if k.startswith("phase.") and k[len("phase."):] not in LAUNCHER_PHASES)
    if not phases:
        return []
    lines = ["launcher start-up, ms from spawn to each phase, median [min..max]:"]
    lines += [f"  {p:18} {row[f'phase.{p}'].cell('{:.1f}')}" for p in phases]
    return lines


def _memory_table(summary: dict[str, dict[str, Stat]]) -> list[str]:
    vmms = [v for v in _order(summary) if any(k.startswith("mem.") for k in summary[v])]
    kinds = sorted({k[len("mem."):] for v in vmms for k in summary[v] if k.startswith("mem.")})
    if not kinds:
        return []
    lines = ["VMM overhead by kind at the marker, KiB (medians):",
             f"{'VMM':17} " + " ".join(f"{k:>11}" for k in kinds)]
    for vmm in vmms:
        cells = [f"{summary[vmm][f'mem.{k}'].median:.0f}" if f"mem.{k}" in summary[vmm] else "-"
                 for k in kinds]
        lines.append(f"{vmm:17} " + " ".join(f"{c:>11}" for c in cells))
    return lines


def format_table(summary: dict[str, dict[str, Stat]], runs: dict[str, int]) -> str:
    """The report: boot time, spread and memory per VMM, the launcher's ratios to every
    other VMM, KVM's counters, the launcher's start-up phases, Firecracker's anchors."""
    lines = _main_table(summary, runs) + _ratio_lines(summary)
    for block in (_split_table(summary), _memory_table(summary), _kvm_table(summary),
                  _phase_table(summary)):
        if block:
            lines += [""] + block
    lines += ["", FIRECRACKER_ANCHORS,
              "Here every VMM runs on KVM inside a QEMU-TCG L1 (nested, emulated CPU): "
              "compare the rows with each other, not with the anchors."]
    return "\n".join(lines)


#: What usually sits at an I/O port on a PC (for reading the port histogram).
PORT_NAMES = [(0x20, 0x21, "PIC 1"), (0x40, 0x43, "PIT"), (0x60, 0x60, "i8042 data"),
              (0x61, 0x61, "port B / speaker"), (0x64, 0x64, "i8042 cmd"),
              (0x70, 0x71, "CMOS/RTC"), (0x80, 0x80, "POST delay"), (0x87, 0x8f, "DMA page"),
              (0x92, 0x92, "A20 fast"), (0xa0, 0xa1, "PIC 2"), (0xed, 0xed, "delay"),
              (0x2e8, 0x2ef, "COM4"), (0x2f8, 0x2ff, "COM2"), (0x3e8, 0x3ef, "COM3"),
              (0x3f8, 0x3ff, "COM1"), (0x4d0, 0x4d1, "ELCR"), (0x510, 0x51b, "fw_cfg"),
              (0x600, 0x6ff, "ACPI PM"), (0xcf8, 0xcff, "PCI config")]


def port_name(port: int) -> str:
    """The usual device at ``port``, or ``?``."""
    return next((name for low, high, name in PORT_NAMES if low <= port <= high), "?")


def parse_pio(output: str) -> dict[str, dict[tuple[str, int], int]]:
    """``PIO-HIST vmm dir port count`` lines: per VMM, (read|write, port) -> exits."""
    hist: dict[str, dict[tuple[str, int], int]] = {}
    for line in output.splitlines():
        parts = line.split()
        if len(parts) != 5 or parts[0] != "PIO-HIST":
            continue
        _, vmm, direction, port, count = parts
        try:
            key = (direction.removeprefix("pio_"), int(port, 16))
            hist.setdefault(vmm, {})[key] = hist.get(vmm, {}).get(key, 0) + int(count)
        except ValueError as exc:
            raise BenchError(f"bad port histogram line {line!r}: {exc}") from exc
    return hist


def format_pio(hist: dict[str, dict[tuple[str, int], int]], top: int = 24) -> str:
    """Port exits side by side per VMM (one traced boot each), busiest ports first."""
    if not hist:
        return ""
    vmms = sorted(hist, key=lambda v: (v != "launcher", v))
    keys = {k for h in hist.values() for k in h}
    busiest = sorted(keys, key=lambda k: (-max(h.get(k, 0) for h in hist.values()), k))
    lines = ["Port I/O exits of one traced boot per VMM (KVM's kvm_pio tracepoint):",
             f"{'dir':5} {'port':>6} {'device':16} " + " ".join(f"{v:>16}" for v in vmms),
             f"{'all':5} {'':>6} {'':16} " + " ".join(f"{sum(hist[v].values()):>16}" for v in vmms)]
    for direction, port in busiest[:top]:
        counts = " ".join(f"{hist[v].get((direction, port), 0):>16}" for v in vmms)
        lines.append(f"{direction:5} {port:#6x} {port_name(port):16} {counts}")
    if len(busiest) > top:
        lines.append(f"({len(busiest) - top} more ports)")
    return "\n".join(lines)
