"""The guest /init from images/, booted directly under QEMU TCG (no KVM needed)."""

from __future__ import annotations

import os
import select
import socket
import subprocess
import time
from pathlib import Path

import pytest

from images.build import Images
from images.common import source_date_epoch
from images.cpio import concatenate
from images.initramfs import build_overlay
from tests.guest_machine import guest_machine

pytestmark = pytest.mark.tcg

BOOT_TIMEOUT_S = 120.0


class TcgGuest:
    """A guest under ``qemu-system-x86_64 -M pc -accel tcg`` with its serial on a pipe."""

    def __init__(self, kernel: Path, initrd: Path, append: str, tmp: Path, smp: int = 1,
                 mem_mib: int = 256) -> None:
        self.monitor_path = tmp / "monitor.sock"
        self.proc = subprocess.Popen(
            ["qemu-system-x86_64", "-M", "pc", "-accel", "tcg", "-m", str(mem_mib),
             "-smp", str(smp), "-nodefaults", "-no-user-config", "-display", "none",
             "-serial", "stdio", "-monitor", f"unix:{self.monitor_path},server,nowait",
             "-no-reboot", "-kernel", str(kernel), "-initrd", str(initrd),
             "-append", f"console=ttyS0 quiet {append}"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.output = ""

    def expect(self, text: str, timeout_s: float = BOOT_TIMEOUT_S) -> None:
        """Read the console until ``text`` appears."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        while text not in self.output:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{text!r} not seen in {timeout_s} s; console:\n{self.output}")
            ready, _, _ = select.select([self.proc.stdout], [], [], remaining)
            if ready:
                data = os.read(self.proc.stdout.fileno(), 65536)
                if not data:
                    raise AssertionError(f"QEMU exited before {text!r}; console:\n{self.output}")
                self.output += data.decode(errors="replace").replace("\r", "")

    def type(self, line: str) -> None:
        """Type a line on the serial console."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def monitor(self, command: str) -> None:
        """Send one HMP command."""
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(self.monitor_path))
            s.sendall(command.encode() + b"\n")
            time.sleep(0.5)

    def wait(self, timeout_s: float = 60.0) -> int:
        """Wait for QEMU to exit; returns its exit code."""
        try:
            rc = self.proc.wait(timeout_s)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        assert self.proc.stdout is not None
        self.output += self.proc.stdout.read().decode(errors="replace").replace("\r", "")
        return rc

    def lines(self) -> list[str]:
        """Console lines, stripped."""
        return [line.strip() for line in self.output.splitlines()]


@pytest.fixture(scope="module")
def scenario_initrd(images: Images, tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("guest-init")
    overlay = work / "scenarios.cpio.gz"
    build_overlay({
        "/scenarios/exit3.sh": b'echo "scenario args: $# pid1: $(cat /proc/1/comm)"\nexit 3\n',
        "/scenarios/idle.sh": b"echo IDLE-READY\nwhile :; do sleep 1; done\n",
    }, overlay, epoch=source_date_epoch(), work=work)
    initrd = work / "initrd.img"
    concatenate([images.initrd, overlay], initrd)
    return initrd


def test_scenario_runs_and_its_exit_code_is_printed(images: Images, scenario_initrd: Path,
                                                    tmp_path: Path) -> None:
    guest = TcgGuest(images.vmlinuz, scenario_initrd, "iv.run=exit3", tmp_path, smp=2)
    guest.expect("IRONVISOR-SCENARIO-EXIT=")
    assert guest.wait() == 0
    lines = guest.lines()
    marker = lines.index("IRONVISOR-GUEST-INIT-REACHED")
    info = next(i for i, line in enumerate(lines) if line.startswith("IRONVISOR-GUEST-INFO "))
    assert marker < info
    assert lines[info].startswith("IRONVISOR-GUEST-INFO cpus=2 mem_kb=")
    mem_kb = int(lines[info].rsplit("=", 1)[1])
    assert 180 * 1024 < mem_kb < 256 * 1024
    # The machine line: one entry per CPU, and QEMU's RTC read as seconds since the epoch.
    machine = guest_machine(lines)
    assert len(machine["packages"].split(",")) == 2, machine
    assert len(machine["siblings"].split(",")) == 2, machine
    assert abs(int(machine["rtc"]) - time.time()) < 600, machine
    assert "scenario args: 0 pid1: init" in lines
    assert "IRONVISOR-SCENARIO-EXIT=3" in lines
    assert not any("IRONVISOR-GUEST-WARNING" in line for line in lines), guest.output


def test_missing_scenario_exits_127(images: Images, scenario_initrd: Path, tmp_path: Path) -> None:
    guest = TcgGuest(images.vmlinuz, scenario_initrd, "iv.run=nope", tmp_path)
    guest.expect("IRONVISOR-SCENARIO-EXIT=")
    assert guest.wait() == 0
    assert "IRONVISOR-GUEST-ERROR: no scenario /scenarios/nope.sh in the initramfs" in guest.lines()
    assert "IRONVISOR-SCENARIO-EXIT=127" in guest.lines()


def test_bench_powers_off_right_after_the_marker(images: Images, tmp_path: Path) -> None:
    guest = TcgGuest(images.vmlinuz, images.initrd, "iv.bench", tmp_path)
    guest.expect("IRONVISOR-GUEST-INIT-REACHED")
    assert guest.wait() == 0
    assert not any(line.startswith("IRONVISOR-GUEST-INFO") for line in guest.lines())


def test_ctrl_alt_del_shuts_down_gracefully(images: Images, scenario_initrd: Path,
                                            tmp_path: Path) -> None:
    guest = TcgGuest(images.vmlinuz, scenario_initrd, "iv.run=idle", tmp_path)
    guest.expect("IDLE-READY")
    guest.monitor("sendkey ctrl-alt-delete")
    guest.expect("IRONVISOR-GUEST-GRACEFUL-SHUTDOWN", 30)
    assert guest.wait() == 0  # powered off, not rebooted (QEMU runs with -no-reboot)
    assert not any(line.startswith("IRONVISOR-SCENARIO-EXIT") for line in guest.lines())


def test_interactive_shell_on_the_console(images: Images, tmp_path: Path) -> None:
    guest = TcgGuest(images.vmlinuz, images.initrd, "", tmp_path)
    guest.expect("Interactive shell on the console")
    guest.expect("# ")
    guest.type("echo answer=$((6 * 7)); cat /etc/ironvisor-release")
    guest.expect("answer=42")
    guest.expect(f"ironvisor-guest kernel={images.kernel_version}")
    guest.type("exit")
    guest.output = ""
    guest.expect("Interactive shell on the console", 30)  # the shell is restarted
    guest.expect("# ")
    guest.type("poweroff -f")
    assert guest.wait() == 0
