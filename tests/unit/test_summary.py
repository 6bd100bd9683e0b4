"""The test command's closing summary reads the stages' real output formats."""

from __future__ import annotations

from pathlib import Path

from tests import summary

CARGO_OUTPUT = """\
running 3 tests
test vmm::tests::a ... ok
test net::tests::tap_tx_reaches_the_host ... ignored, needs root (CAP_NET_ADMIN) and /dev/net/tun
test vmm::tests::b ... FAILED

test result: FAILED. 1 passed; 1 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s

running 2 tests
test x ... ok
test y ... ok

test result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 1 filtered out; finished in 0.00s
"""

PYTEST_OUTPUT = """\
tests/e2e/test_a.py::test_one RERUN
tests/e2e/test_a.py::test_one PASSED
=========================== short test summary info ============================
SKIPPED [1] tests/standalone/test_b.py:12: needs libvirt
FAILED tests/e2e/test_c.py::test_three - AssertionError: boom
===================== Ironvisor: reruns, L1 retries, skips =====================
reruns of failed tests: 1
  rerun: tests/e2e/test_a.py::test_one
L1 retries after an L1 kernel panic: 1
  L1 retry: standalone: Kernel panic - not syncing: Fatal exception
skipped: 1
  skipped: tests/standalone/test_b.py::test_two: needs libvirt
IRONVISOR-TEST-COUNTS reruns=1 l1_retries=1 skipped=1
======= 1 failed, 115 passed, 1 skipped, 1 rerun in 1203.45s (0:20:03) ========
"""


def test_cargo_results_are_summed_over_binaries_with_ignored_and_failed_names() -> None:
    stage = summary.parse_cargo(CARGO_OUTPUT)
    assert (stage.binaries, stage.passed, stage.failed, stage.ignored, stage.filtered_out) == (
        2, 3, 1, 1, 1)
    assert stage.ignored_tests == [
        "net::tests::tap_tx_reaches_the_host: needs root (CAP_NET_ADMIN) and /dev/net/tun"]
    assert stage.failed_tests == ["vmm::tests::b"]


def test_pytest_outcome_skips_reruns_and_l1_retries_are_read() -> None:
    stage = summary.parse_pytest(PYTEST_OUTPUT)
    assert stage.outcome == "1 failed, 115 passed, 1 skipped, 1 rerun"
    assert (stage.reruns, stage.l1_retries) == (1, 1)
    assert stage.skips == ["tests/standalone/test_b.py:12: needs libvirt"]
    assert stage.failed_tests == ["tests/e2e/test_c.py::test_three"]
    assert stage.retried == [
        "rerun: tests/e2e/test_a.py::test_one",
        "L1 retry: standalone: Kernel panic - not syncing: Fatal exception"]


def test_report_names_stages_that_did_not_run_and_what_the_command_left_out(
        tmp_path: Path) -> None:
    (tmp_path / "cargo-test.log").write_text(CARGO_OUTPUT)
    (tmp_path / "pytest-e2e.log").write_text(PYTEST_OUTPUT)
    lines = summary.report(tmp_path, ["some_test: needs a PVM host"])
    text = "\n".join(lines)
    assert "cargo test (2 test binaries): 3 passed, 1 failed, 1 ignored, 1 left out by --skip" in text
    assert "  left out by the test command: some_test: needs a PVM host" in text
    assert "pytest e2e: 1 failed, 115 passed, 1 skipped, 1 rerun; reruns 1, L1 retries 1, skipped 1" in text
    assert "pytest cluster: did not run" in text
