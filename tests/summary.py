"""The test command's closing summary (scripts/test-all.sh runs it on exit, also after a
failure): how many tests ran, passed and failed in each stage, which were ignored or
skipped and why, and how many reruns and L1 retries there were, so flakiness and skips
show as numbers instead of disappearing into a green run.

    python3 -m tests.summary LOG_DIR ["name: why the test command skipped it" ...]

LOG_DIR holds the stages' output: cargo-test.log, pytest-e2e.log, pytest-cluster.log
(each optional: a stage that did not run has no log).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

CARGO_RESULT = re.compile(
    r"^test result: \w+\. (\d+) passed; (\d+) failed; (\d+) ignored; \d+ measured; (\d+) filtered out")
CARGO_IGNORED = re.compile(r"^test (\S+) \.\.\. ignored(?:, (.*))?$")
CARGO_FAILED = re.compile(r"^test (\S+) \.\.\. FAILED$")
PYTEST_FINAL = re.compile(r"^=+ (.*\d+ \w+.*) in [\d.]+s.* =+$")
PYTEST_SKIP = re.compile(r"^SKIPPED \[\d+\] (.*)$")
PYTEST_FAILED = re.compile(r"^FAILED (\S+)")
PYTEST_COUNTS = re.compile(r"^IRONVISOR-TEST-COUNTS reruns=(\d+) l1_retries=(\d+) skipped=(\d+)")
PYTEST_RERUN_OR_RETRY = re.compile(r"^  (rerun|L1 retry): (.*)$")


@dataclass
class CargoStage:
    passed: int = 0
    failed: int = 0
    ignored: int = 0
    filtered_out: int = 0
    binaries: int = 0
    ignored_tests: list[str] = field(default_factory=list)
    failed_tests: list[str] = field(default_factory=list)


@dataclass
class PytestStage:
    outcome: str = "no final line (the stage was cut short)"
    reruns: int = 0
    l1_retries: int = 0
    skips: list[str] = field(default_factory=list)
    failed_tests: list[str] = field(default_factory=list)
    retried: list[str] = field(default_factory=list)


def parse_cargo(text: str) -> CargoStage:
    stage = CargoStage()
    for line in text.splitlines():
        if m := CARGO_RESULT.match(line):
            stage.binaries += 1
            stage.passed += int(m[1])
            stage.failed += int(m[2])
            stage.ignored += int(m[3])
            stage.filtered_out += int(m[4])
        elif m := CARGO_IGNORED.match(line):
            stage.ignored_tests.append(f"{m[1]}: {m[2] or 'no reason given'}")
        elif m := CARGO_FAILED.match(line):
            stage.failed_tests.append(m[1])
    return stage


def parse_pytest(text: str) -> PytestStage:
    stage = PytestStage()
    for line in text.splitlines():
        if m := PYTEST_FINAL.match(line):
            stage.outcome = m[1]
        elif m := PYTEST_SKIP.match(line):
            stage.skips.append(m[1])
        elif m := PYTEST_FAILED.match(line):
            stage.failed_tests.append(m[1])
        elif m := PYTEST_COUNTS.match(line):
            stage.reruns, stage.l1_retries = int(m[1]), int(m[2])
        elif m := PYTEST_RERUN_OR_RETRY.match(line):
            stage.retried.append(f"{m[1]}: {m[2]}")
    return stage


def report(log_dir: Path, skipped_by_command: list[str]) -> list[str]:
    """The summary's lines."""
    lines = ["", "=== summary ==="]
    cargo_log = log_dir / "cargo-test.log"
    if cargo_log.is_file():
        cargo = parse_cargo(cargo_log.read_text(errors="replace"))
        lines.append(f"cargo test ({cargo.binaries} test binaries): {cargo.passed} passed, "
                     f"{cargo.failed} failed, {cargo.ignored} ignored, "
                     f"{cargo.filtered_out} left out by --skip")
        lines += [f"  FAILED {name}" for name in cargo.failed_tests]
        lines += [f"  ignored {entry}" for entry in cargo.ignored_tests]
    else:
        lines.append("cargo test: did not run")
    for what in skipped_by_command:
        lines.append(f"  left out by the test command: {what}")
    for stage_name, file_name in (("pytest e2e", "pytest-e2e.log"),
                                  ("pytest cluster", "pytest-cluster.log")):
        path = log_dir / file_name
        if not path.is_file():
            lines.append(f"{stage_name}: did not run")
            continue
        stage = parse_pytest(path.read_text(errors="replace"))
        lines.append(f"{stage_name}: {stage.outcome}; reruns {stage.reruns}, "
                     f"L1 retries {stage.l1_retries}, skipped {len(stage.skips)}")
        lines += [f"  FAILED {name}" for name in stage.failed_tests]
        lines += [f"  skipped {entry}" for entry in stage.skips]
        lines += [f"  {entry}" for entry in stage.retried]
    lines.append(f"logs: {log_dir}")
    return lines


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    print("\n".join(report(Path(argv[0]), argv[1:])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
