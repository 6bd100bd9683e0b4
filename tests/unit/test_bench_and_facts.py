"""Pure parts of the benchmark report and of the e2e fact parsing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.bench.boot import BenchError, Stat, format_table, parse_results, summarise
from tests.e2e.vmtest import Facts, parse_facts, write_params
from tests.nested import l1


def _line(label: str, run: int, ms: float, overhead_kib: int, maxrss_kib: int) -> str:
    return "BENCH-JSON " + json.dumps({
        "label": label, "run": run, "marker_ms": ms, "rss_kib": 0, "guest_ram_rss_kib": 0,
        "guest_mapping_kib": 0, "overhead_kib": overhead_kib, "maxrss_kib": maxrss_kib,
        "error": None})


def test_summary_skips_warmup_and_failed_runs() -> None:
    out = "\n".join([
        _line("qemu", 0, 99999, 1, 1),  # warm-up
        _line("qemu", 1, 300, 80 * 1024, 160 * 1024),
        _line("qemu", 2, 100, 82 * 1024, 162 * 1024),
        _line("qemu", 3, 200, 84 * 1024, 164 * 1024),
        _line("launcher", 1, 50, 4 * 1024, 20 * 1024),
        'BENCH-JSON {"label": "launcher", "run": 2, "error": "boom"}',
        "noise",
    ])
    results = parse_results(out)
    assert len(results) == 6
    summary = summarise(results)
    assert summary["qemu"]["marker_ms"] == Stat(200, 100, 300)
    assert summary["qemu"]["overhead_mib"] == Stat(82, 80, 84)
    assert summary["launcher"]["maxrss_mib"] == Stat(20, 20, 20)
    table = format_table(summary, {"qemu": 3, "launcher": 1})
    assert "launcher/QEMU (medians): boot to init marker (ms): 0.25" in table
    assert "VMM overhead Rss (MiB): 0.05" in table
    assert "< 125 ms" in table and "< 5 MiB" in table
    with pytest.raises(BenchError, match="bad bootbench line"):
        parse_results("BENCH-JSON {not json")


def test_facts_and_status_blocks() -> None:
    output = "\n".join([
        "L1-FACT vm_rc=0",
        "guest| GUEST-FACT nproc=2",
        "guest| IRONVISOR-GUEST-INIT-REACHED",
        "L1-STATUS-BEGIN running",
        '{"state": "Running", "vcpus": 2}',
        "L1-FACT status_running_rc=0",
        "L1-STATUS-END running",
        "L1-FACT vm_rc=5",
    ])
    l1_facts, guest_facts = parse_facts(output)
    assert l1_facts == {"vm_rc": "5", "status_running_rc": "0"}
    assert guest_facts == {"nproc": "2"}
    result = l1.L1Result(0, output, Path("/dev/null"), 1.0, 0.5, 0.6, False, 0)
    facts = Facts(l1_facts, guest_facts, output, result)
    assert facts.status_json("running") == {"state": "Running", "vcpus": 2}
    assert facts.console() == ["GUEST-FACT nproc=2", "IRONVISOR-GUEST-INIT-REACHED"]
    with pytest.raises(AssertionError, match="no status block 'paused'"):
        facts.status_json("paused")


def test_params_are_shell_quoted(tmp_path: Path) -> None:
    path = tmp_path / "params"
    write_params(path, {"A": "it's $HOME", "B": "plain"})
    assert path.read_text() == "A='it'\"'\"'s $HOME'\nB=plain\n"
