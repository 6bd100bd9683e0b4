"""Pure parts of the benchmark report and of the e2e fact parsing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.bench.boot import (BenchError, PartialRun, Stat, format_table, parse_peer,
                              parse_results, report_from_output, report_of_run, select_vmms,
                              summarise)
from tests.bench.boot_report import format_pio, parse_pio
from tests.e2e.vmtest import Facts, parse_facts, write_params
from tests.nested import l1


def _line(label: str, run: int, ms: float, overhead_kib: int, maxrss_kib: int,
          kvm: dict[str, int] | None = None, phases: dict[str, float] | None = None,
          kinds: dict[str, int] | None = None, entry_ms: float | None = None) -> str:
    return "BENCH-JSON " + json.dumps({
        "label": label, "run": run, "marker_ms": ms, "rss_kib": 0, "guest_ram_rss_kib": 0,
        "guest_mapping_kib": 0, "overhead_kib": overhead_kib, "maxrss_kib": maxrss_kib,
        "kvm": kvm, "phases_ms": phases or {}, "overhead_by_kind_kib": kinds or {},
        "first_guest_entry_ms": entry_ms, "error": None})


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
    assert summary["qemu"]["marker_ms"].spread == 3.0
    assert summary["qemu"]["overhead_mib"] == Stat(82, 80, 84)
    assert summary["launcher"]["maxrss_mib"] == Stat(20, 20, 20)
    table = format_table(summary, {"qemu": 3, "launcher": 1})
    assert "launcher/qemu (medians): boot 0.25, overhead 0.05" in table
    assert "< 125 ms" in table and "< 5 MiB" in table
    assert "KVM exit counters" not in table and "start-up" not in table
    assert "first guest entry" not in table
    with pytest.raises(BenchError, match="bad bootbench line"):
        parse_results("BENCH-JSON {not json")


def test_peers_counters_and_phases_are_reported() -> None:
    kvm = {"exits": 2800, "io_exits": 500, "mmio_exits": 0, "insn_emulation": 1500,
           "irq_window_exits": 3, "pf_taken": 41}
    out = "\n".join([
        _line("launcher", 1, 2400, 6 * 1024, 30 * 1024, kvm, {"main": 1.5, "first_kvm_run": 20.0},
              {"exe_text": 3000, "heap": 1000}),
        _line("launcher", 2, 2000, 6 * 1024, 30 * 1024, dict(kvm, pf_taken=16000),
              {"main": 2.5, "first_kvm_run": 30.0}, {"exe_text": 3000, "heap": 1144}),
        _line("firecracker", 1, 1800, 5 * 1024, 20 * 1024, dict(kvm, io_exits=289),
              kinds={"exe_text": 2000}),
        _line("cloud-hypervisor", 1, 2000, 7 * 1024, 25 * 1024),
    ])
    summary = summarise(parse_results(out))
    assert summary["launcher"]["kvm.pf_taken"] == Stat(8020.5, 41, 16000)
    assert summary["launcher"]["phase.first_kvm_run"] == Stat(25.0, 20.0, 30.0)
    table = format_table(summary, {"launcher": 2, "firecracker": 1, "cloud-hypervisor": 1})
    rows = table.splitlines()
    assert rows[2].startswith("launcher ") and "1.20" in rows[2]  # spread 2400/2000
    assert "launcher/firecracker (medians): boot 1.22, overhead 1.20" in table
    assert "launcher/cloud-hypervisor (medians): boot 1.10, overhead 0.86" in table
    kvm_rows = [r for r in rows if r.startswith("firecracker ") and "289 [289..289]" in r]
    assert len(kvm_rows) == 1
    kvm_block = table.split("KVM exit counters")[1].split("\n\n")[0]
    assert "launcher" in kvm_block and "cloud-hypervisor" not in kvm_block  # no debugfs there
    assert "  first_kvm_run      25.0 [20.0..30.0]" in table
    mem_block = table.split("VMM overhead by kind")[1].split("\n\n")[0].splitlines()
    assert mem_block[1].split() == ["VMM", "exe_text", "heap"]
    assert mem_block[2].split() == ["launcher", "3000", "1072"]
    assert mem_block[3].split() == ["firecracker", "2000", "-"]
    assert table.index("  main ") < table.index("  first_kvm_run ")


def test_boot_is_split_at_the_first_guest_entry() -> None:
    out = "\n".join([
        _line("launcher", 1, 2400, 1, 1, entry_ms=400.0),
        _line("launcher", 2, 2600, 1, 1, entry_ms=420.0),
        _line("firecracker", 1, 2300, 1, 1, entry_ms=150.0),
        _line("qemu", 1, 7000, 1, 1),  # no tracefs in that run: no split
    ])
    summary = summarise(parse_results(out))
    assert summary["launcher"]["guest_entry_ms"] == Stat(410, 400, 420)
    assert summary["launcher"]["guest_boot_ms"] == Stat(2090, 2000, 2180)
    assert "guest_entry_ms" not in summary["qemu"]
    table = format_table(summary, {"launcher": 2, "firecracker": 1, "qemu": 1})
    block = table.split("first guest entry")[1].split("\n\n")[0].splitlines()
    assert block[2].split() == ["launcher", "410", "[400..420]", "2090", "[2000..2180]"]
    assert block[3].split() == ["firecracker", "150", "[150..150]", "2150", "[2150..2150]"]
    assert block[4] == "launcher - firecracker (medians): start-up +260 ms, guest boot -60 ms"
    assert len(block) == 5


def test_peer_arguments_are_checked(tmp_path: Path) -> None:
    exe = tmp_path / "fc"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    assert parse_peer(f"firecracker={exe}") == ("firecracker", exe)
    with pytest.raises(BenchError, match="expected NAME=PATH"):
        parse_peer("firecracker")
    with pytest.raises(BenchError, match="unknown peer 'crosvm'"):
        parse_peer(f"crosvm={exe}")
    with pytest.raises(BenchError, match="not an executable file"):
        parse_peer(f"cloud-hypervisor={tmp_path / 'missing'}")


def test_arms_are_selected_and_skipped() -> None:
    peers = {"firecracker": Path("/fc"), "cloud-hypervisor": Path("/ch")}
    assert select_vmms(None, [], peers) == ["launcher", "qemu", "firecracker", "cloud-hypervisor"]
    assert select_vmms(None, ["qemu"], peers) == ["launcher", "firecracker", "cloud-hypervisor"]
    assert select_vmms(None, [], {}) == ["launcher", "qemu"]
    assert select_vmms("firecracker", [], peers) == ["firecracker"]
    with pytest.raises(BenchError, match="do not go together"):
        select_vmms("launcher", ["qemu"], peers)
    with pytest.raises(BenchError, match="--skip firecracker: not an arm"):
        select_vmms(None, ["firecracker"], {})
    with pytest.raises(BenchError, match="left no VMM"):
        select_vmms(None, ["launcher", "qemu"], {})


def test_port_histogram_is_side_by_side_busiest_first() -> None:
    out = "\n".join(["PIO-HIST launcher pio_write 0x80 300", "PIO-HIST launcher pio_read 0x3fd 150",
                     "PIO-HIST firecracker pio_read 0x3fd 140", "PIO-HIST firecracker pio_write 0x70 2",
                     "L1-FACT unrelated=1"])
    hist = parse_pio(out)
    assert hist["launcher"] == {("write", 0x80): 300, ("read", 0x3fd): 150}
    text = format_pio(hist, top=2)
    rows = text.splitlines()
    assert rows[1].split()[-2:] == ["launcher", "firecracker"]
    assert rows[2].split()[-2:] == ["450", "142"]
    assert rows[3].split()[:3] == ["write", "0x80", "POST"] and rows[3].split()[-2:] == ["300", "0"]
    assert rows[4].split()[:3] == ["read", "0x3fd", "COM1"]
    assert rows[-1] == "(1 more ports)"
    assert format_pio({}) == ""
    with pytest.raises(BenchError, match="bad port histogram line"):
        parse_pio("PIO-HIST launcher pio_read 0xzz 1")


def test_a_report_is_printed_again_from_a_saved_log() -> None:
    log = "\n".join(["NESTED-L1-INIT uptime=3", _line("launcher", 1, 2500, 6 * 1024, 86 * 1024),
                     _line("firecracker", 1, 2300, 6 * 1024, 86 * 1024),
                     "PIO-HIST launcher pio_read 0x71 30", "[  99.1] soft lockup"])
    report = report_from_output(log)
    assert "launcher/firecracker (medians): boot 1.09" in report
    assert "Port I/O exits" in report and "CMOS/RTC" in report
    with pytest.raises(BenchError, match="no successful runs for qemu"):
        report_from_output(log, ["launcher", "qemu"])
    with pytest.raises(BenchError, match="no successful runs for any VMM"):
        report_from_output("L1 froze before anything ran")


def _l1_result(output: str, rc: int) -> l1.L1Result:
    return l1.L1Result(rc=rc, output=output, log_path=Path("/logs/bench.log"), wall_s=1.0,
                       init_s=1.0, scenario_start_s=1.0, timed_out=False, qemu_returncode=0,
                       failure=None if rc == 0 else "no console output for 300 s")


def test_a_frozen_run_still_reports_the_boots_before_it() -> None:
    rounds = [_line("launcher", 0, 9999, 1, 1), _line("firecracker", 0, 9999, 1, 1),
              _line("launcher", 1, 2500, 4 * 1024, 86 * 1024),
              _line("firecracker", 1, 2400, 6 * 1024, 86 * 1024),
              _line("launcher", 2, 2600, 4 * 1024, 86 * 1024)]
    assert "launcher/firecracker" in report_of_run(_l1_result("\n".join(rounds), 0),
                                                   ["launcher", "firecracker"])
    with pytest.raises(PartialRun, match="no console output for 300 s.*the 3 measured boots") as err:
        report_of_run(_l1_result("\n".join(rounds), 124), ["launcher", "firecracker"])
    assert "launcher/firecracker (medians)" in err.value.report
    # Frozen before every VMM had a measured boot: no report, only the failure.
    with pytest.raises(BenchError, match="L1 run failed: no console output") as plain:
        report_of_run(_l1_result("\n".join(rounds[:3]), 124), ["launcher", "firecracker"])
    assert not isinstance(plain.value, PartialRun)


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


def test_scale_stages_come_from_the_objects_timestamps() -> None:
    from tests.bench.scale import points_of, stage_lines

    vmi = {"metadata": {"creationTimestamp": "2026-12-06T10:00:00Z"},
           "status": {"phase": "Running", "phaseTransitionTimestamps": [
               {"phase": "Pending", "phaseTransitionTimestamp": "2026-12-06T10:00:01Z"},
               {"phase": "Running", "phaseTransitionTimestamp": "2026-12-06T10:00:09Z"}]}}
    pod = {"metadata": {"creationTimestamp": "2026-12-06T10:00:01Z"},
           "status": {"conditions": [
               {"type": "PodScheduled", "status": "True",
                "lastTransitionTime": "2026-12-06T10:00:04Z"},
               {"type": "Ready", "status": "True",
                "lastTransitionTime": "2026-12-06T10:00:08Z"}]}}
    points = points_of(vmi, pod)
    assert points is not None
    assert [b - a for a, b in zip(points, points[1:])] == [1, 3, 4, 1]
    # A pod not ready yet has no Ready time: that instance is left out, not counted as 0.
    pod["status"]["conditions"][1]["status"] = "False"
    assert points_of(vmi, pod) is None

    rows = [[p + offset for p in points] for offset in (0, 10, 20)]
    lines = stage_lines(rows, 4, points[0])
    assert "3 of 4 instances" in lines[0]
    running = next(line for line in lines if "VMI Running" in line).split()
    assert (running[-4], running[-1]) == ("19", "29")
    scheduler = next(line for line in lines if line.strip().startswith("scheduler"))
    assert scheduler.split()[-1] == "3"
    assert stage_lines([], 5, 0.0) == ["  no instance had every timestamp"]
