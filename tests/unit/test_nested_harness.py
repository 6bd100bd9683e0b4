"""tests/nested: L1 image assembly and console/exit-code handling (no L1 boot here)."""

from __future__ import annotations

import argparse
import gzip
import io
import subprocess
from pathlib import Path

import pytest

from images.build import Images
from images.elf import runtime_files
from tests.nested import l1
from tests.nested.run import _file_arg


def _archive_bytes(archive: Path) -> bytes:
    data = archive.read_bytes()
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def _listing(archive: Path) -> list[str]:
    return subprocess.run(["cpio", "-it", "--quiet"], input=_archive_bytes(archive),
                          capture_output=True, check=True).stdout.decode().split()


def _member(archive: Path, name: str) -> str:
    """The text of one file in a (possibly gzipped) cpio archive."""
    return subprocess.run(["cpio", "-i", "--quiet", "--to-stdout", name],
                          input=_archive_bytes(archive), capture_output=True,
                          check=True).stdout.decode()


def _spec(tmp_path: Path, script: str, timeout_s: float = 10.0) -> l1.L1Spec:
    path = tmp_path / "s.sh"
    path.write_text(script)
    return l1.L1Spec(script=path, timeout_s=timeout_s, echo=io.StringIO(),
                     log_path=tmp_path / "console.log")


def test_exit_marker_gives_the_scenario_rc(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "")
    cmd = ["sh", "-c", "echo NESTED-L1-INIT; echo NESTED-L1-SCENARIO-START; "
           "printf 'x\\r\\nNESTED-L1-EXIT=7\\r\\n'"]
    result = l1._boot(cmd, spec, spec.log_path or tmp_path / "x")
    assert result.rc == 7 and result.marker_seen and not result.timed_out
    assert result.failure == "the L1 scenario exited with 7"
    assert "\r" not in result.output
    assert result.init_s is not None and result.scenario_start_s is not None
    log = (tmp_path / "console.log").read_text()
    assert "NESTED-L1-EXIT=7" in log and "# L1 l1: rc=7" in log
    assert spec.echo is not None and "NESTED-L1-EXIT=7" in spec.echo.getvalue()  # type: ignore[attr-defined]


def test_timeout_kills_qemu_and_reports(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "", timeout_s=1.0)
    result = l1._boot(["sh", "-c", "echo NESTED-L1-INIT; exec sleep 30"], spec, tmp_path / "c.log")
    assert result.timed_out and result.rc == l1.NO_MARKER_RC
    assert result.wall_s < 10
    assert result.failure is not None and "timed out after 1 s" in result.failure


def test_a_silent_run_is_taken_for_hung_and_killed_before_its_timeout(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "", timeout_s=30.0)
    spec.silence_limit_s = 1.0
    # Output keeps the run alive; only the silence after the last line ends it.
    script = "echo NESTED-L1-INIT; sleep 0.6; echo one; sleep 0.6; echo two; exec sleep 30"
    result = l1._boot(["sh", "-c", script], spec, tmp_path / "c.log")
    assert not result.timed_out and result.rc == l1.NO_MARKER_RC
    assert "two" in result.output
    assert 2 <= result.wall_s < 10
    assert result.failure is not None and "no console output for 1 s" in result.failure
    assert "hung=True" in (tmp_path / "c.log").read_text()


def test_missing_marker_is_a_failure(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "")
    result = l1._boot(["sh", "-c", "echo kernel panic; exit 1"], spec, tmp_path / "c.log")
    assert result.rc == l1.NO_MARKER_RC and not result.timed_out
    assert result.failure == "L1 never reached its /init (QEMU exit code 1)"
    result = l1._boot(["sh", "-c", "echo NESTED-L1-INIT"], spec, tmp_path / "c.log")
    assert result.failure == "L1 stopped without printing NESTED-L1-EXIT (QEMU exit code 0)"


def test_programs_below_l1_mount_points_are_staged_elsewhere() -> None:
    assert l1.l1_program_path(Path("/work/main/target/release/x")) == "/work/main/target/release/x"
    assert l1.l1_program_path(Path("/tmp/ci/target/release/x")) == "/opt/nested/tmp/ci/target/release/x"
    assert l1.l1_program_path(Path("/run/x")) == "/opt/nested/run/x"
    assert l1.l1_program_path(Path("/tmpfoo/x")) == "/tmpfoo/x"


def test_only_an_l1_kernel_panic_before_the_exit_marker_is_retried(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "")
    panic = ("echo NESTED-L1-INIT; echo '[   78.396760] Kernel panic - not syncing: "
             "corrupted stack end detected inside scheduler'")
    result = l1._boot(["sh", "-c", panic], spec, tmp_path / "c.log")
    assert l1.l1_kernel_panic(result) == (
        "Kernel panic - not syncing: corrupted stack end detected inside scheduler")
    # A panic of an L2 guest that a scenario copies to the console has a prefix.
    guest = "echo NESTED-L1-INIT; echo 'guest| [ 1.5] Kernel panic - not syncing: VFS'"
    result = l1._boot(["sh", "-c", guest], spec, tmp_path / "c.log")
    assert l1.l1_kernel_panic(result) is None
    # Once the scenario reported its exit code, nothing is retried.
    done = panic + "; echo NESTED-L1-EXIT=0"
    result = l1._boot(["sh", "-c", done], spec, tmp_path / "c.log")
    assert l1.l1_kernel_panic(result) is None


def test_overlay_has_programs_libraries_files_and_script(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    (data_dir / "sub").mkdir(parents=True)
    (data_dir / "sub" / "f.txt").write_text("f")
    spec = _spec(tmp_path, "echo hi\n")
    spec.bins = [Path("/usr/sbin/ip")]
    spec.files = [(data_dir, "/srv/data"), (spec.script, "/etc/copy.sh")]
    out = tmp_path / "overlay.cpio"
    l1.build_overlay(spec, out)
    names = set(_listing(out))
    assert {"scenario.sh", "usr/sbin/ip", "usr/local/bin/ip", "srv/data/sub/f.txt",
            "etc/copy.sh"} <= names
    for lib in runtime_files(Path("/usr/sbin/ip")):
        assert lib.lstrip("/") in names


def test_l1_kvm_gets_shadow_paging_unless_nested_paging_is_asked_for(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "true\n")
    out = tmp_path / "overlay.cpio"
    l1.build_overlay(spec, out)
    assert _member(out, l1.MODULE_PARAMS) == "kvm-amd npt=0\n"
    spec.nested_paging = True
    l1.build_overlay(spec, out)
    assert _member(out, l1.MODULE_PARAMS) == ""


def test_overlay_errors_name_the_problem(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "")
    spec.files = [(tmp_path / "nope", "/x")]
    with pytest.raises(l1.HarnessError, match="nope does not exist"):
        l1.build_overlay(spec, tmp_path / "o.cpio")
    spec.files = [(spec.script, "relative")]
    with pytest.raises(l1.HarnessError, match="absolute path"):
        l1.build_overlay(spec, tmp_path / "o.cpio")
    spec.files = []
    spec.bins = [tmp_path / "missing-bin"]
    with pytest.raises(l1.HarnessError, match="no such file"):
        l1.build_overlay(spec, tmp_path / "o.cpio")
    spec.bins = []
    spec.script = tmp_path / "missing.sh"
    with pytest.raises(l1.HarnessError, match="does not exist"):
        l1.build_overlay(spec, tmp_path / "o.cpio")


def test_base_image_has_kvm_modules_in_order(images: Images, tmp_path: Path) -> None:
    base = l1.prepare_base(images, cache_dir=tmp_path)
    names = _listing(base.initrd)
    assert "init" in names and "bin/busybox" in names and "dev/console" in names
    order = _member(base.initrd, "etc/nested/modules").split()
    stems = [Path(p).stem.replace("-", "_") for p in order]
    assert stems.index("irqbypass") < stems.index("kvm") < stems.index("kvm_amd")
    assert "tun" in stems
    assert stems.index("llc") < stems.index("stp") < stems.index("bridge")
    mtime = base.initrd.stat().st_mtime_ns
    assert l1.prepare_base(images, cache_dir=tmp_path).initrd.stat().st_mtime_ns == mtime


def test_qemu_command_uses_svm_and_npt(images: Images, tmp_path: Path) -> None:
    base = l1.L1Base(images.vmlinuz, tmp_path / "i", images.kernel_version)
    cmd = l1.qemu_command(base, tmp_path / "i", 2048, 2)
    assert cmd[cmd.index("-cpu") + 1] == "EPYC,+svm,+npt"
    assert cmd[cmd.index("-accel") + 1] == "tcg"
    assert cmd[cmd.index("-m") + 1] == "2048" and cmd[cmd.index("-smp") + 1] == "2"
    assert "-no-reboot" in cmd and "console=ttyS0" in cmd[cmd.index("-append") + 1]


def test_file_argument_parsing() -> None:
    assert _file_arg("a/b:/c/d") == (Path("a/b"), "/c/d")
    for bad in ("nocolon", "a:relative", ":/x"):
        with pytest.raises(argparse.ArgumentTypeError):
            _file_arg(bad)
