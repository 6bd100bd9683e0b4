"""Standalone node mode on this host, for real: the node daemon, virtctl, the real CNI
plugins and the software-emulation launcher (QEMU TCG through libvirt), running the
examples from examples/ unchanged.

The host's /dev/kvm cannot run stock guests (PVM), so `--backend auto` must pick software
emulation and say so. The same flow with the KVM launcher runs inside nested KVM in
tests/e2e/test_standalone_kvm.py.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from images.common import REPO_ROOT
from tests.standalone.conftest import BRIDGE_IP
from tests.standalone.node import Node, host_leftovers

pytestmark = pytest.mark.tcg

EXAMPLES = REPO_ROOT / "examples"


class TcpListener:
    """A one-shot TCP server on the node bridge: records what the guest sends."""

    def __init__(self, host: str) -> None:
        self.sock = socket.create_server((host, 0))
        self.sock.settimeout(120)
        self.port = self.sock.getsockname()[1]
        self.received = b""
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
            with conn:
                conn.settimeout(30)
                self.received = conn.recv(4096)
                conn.sendall(b"host-says-hello\n")
        except OSError:
            pass
        finally:
            self.sock.close()


def test_hardware_isolated_example_is_refused_not_emulated(node: Node) -> None:
    node.virtctl("apply", "-f", str(EXAMPLES / "vm-hardware-isolated.yaml"))
    try:
        row = node.wait_status("isolated", "ErrorUnschedulable", timeout=60)
        assert row["PHASE"] != "Running"
        describe = node.virtctl("describe", "isolated").stdout
        assert "hardware" in describe.lower(), describe
        assert not [d for d in node.instance_dirs()], "an instance was started anyway"
    finally:
        node.virtctl("delete", "isolated")


def test_dedicated_example_pins_its_vcpu_under_emulation(node: Node) -> None:
    """dedicatedCpuPlacement reaches QEMU as libvirt's <vcpupin>: vCPU 0 on its own CPU."""
    cpus = sorted(os.sched_getaffinity(0))
    expected = str(cpus[1] if len(cpus) > 1 else cpus[0])
    node.virtctl("apply", "-f", str(EXAMPLES / "vm-dedicated.yaml"))
    try:
        row = node.wait_status("dedicated", "Running", timeout=120)
        assert row["BACKEND"] == "qemu-tcg", row
        describe = node.virtctl("describe", "dedicated").stdout
        assert f"vCPUs pinned to dedicated host CPUs {expected}" in describe, describe
        pins = subprocess.run(["virsh", "-c", "qemu:///system", "vcpupin", "ironvisor-dedicated"],
                              capture_output=True, text=True, check=True).stdout
        rows = [line.split() for line in pins.splitlines()]
        assert ["0", expected] in rows, pins
    finally:
        node.virtctl("delete", "dedicated")
        deadline = time.monotonic() + 60
        while node.virtctl("get", "dedicated", check=False).returncode == 0:
            assert time.monotonic() < deadline, "VM dedicated was not deleted within 60 s"
            time.sleep(0.5)


def test_small_example_runs_under_emulation_end_to_end(node: Node) -> None:
    applied = node.virtctl("apply", "-f", str(EXAMPLES / "vm-small.yaml")).stdout
    assert "virtualmachine.ironvisor.io/small created" in applied

    # Boot: Running with a pod IP from the CNI host-local range, under emulation.
    row = node.wait_status("small", "Running", timeout=120)
    assert row["PHASE"] == "Running"
    assert row["IP"].startswith("10.223.0."), row
    assert row["BACKEND"] == "qemu-tcg", row
    describe = node.virtctl("describe", "small").stdout
    assert "SoftwareEmulation" in describe, describe

    # Console: the boot log (a late attacher sees it from the ring) and a shell.
    console = node.console("small")
    try:
        console.expect("IRONVISOR-GUEST-INIT-REACHED", timeout=180)
        console.expect(r"IRONVISOR-GUEST-INFO cpus=1 mem_kb=\d+", timeout=180)
        console.send("\r")
        console.expect(r"[#$] ", timeout=60)

        # The guest reaches the node through CNI: DHCP from the VM's dnsmasq gives it the
        # masquerade address, then TCP to a listener on the node bridge.
        listener = TcpListener(BRIDGE_IP)
        script = ("printf '%s\\n' '#!/bin/sh' '[ \"$1\" = bound ] || exit 0' "
                  "'ip addr add $ip/$mask dev $interface' "
                  "'[ -n \"$router\" ] && ip route add default via $router' >/tmp/dhcp.sh; "
                  "chmod +x /tmp/dhcp.sh")
        console.run(script, "IV-SCRIPT")
        out = console.run("ip link set eth0 up; udhcpc -i eth0 -q -f -n -t 10 -s /tmp/dhcp.sh",
                          "IV-DHCP", timeout=90)
        assert "IV-DHCP-rc=0" in out, out
        out = console.run("ip -4 addr show dev eth0", "IV-ADDR")
        assert "10.0.2.2/24" in out, out
        out = console.run(f"echo guest-says-hi | nc -w 10 {BRIDGE_IP} {listener.port}",
                          "IV-TCP", timeout=60)
        listener.thread.join(timeout=30)
        assert listener.received == b"guest-says-hi\n", out
        assert "host-says-hello" in out, out
        # The cloudInitNoCloud volume is a NoCloud seed disk (label cidata) holding the
        # user data of the example.
        out = console.run("for d in /dev/vd?; do head -c 512 $d | grep -qi cidata && "
                          "head -c 4194304 $d | grep -q 'hostname: small' && "
                          "echo SEED-ON-$d; done", "IV-SEED")
        assert "SEED-ON-/dev/vd" in out, out
        assert console.detach() == 0
    finally:
        console.close()

    # Stop, start, restart.
    node.virtctl("stop", "small")
    node.wait_status("small", "Stopped", timeout=120)
    assert node.instance_dirs() == [], "a stopped VM keeps no instance"
    node.virtctl("start", "small")
    node.wait_status("small", "Running", timeout=120)
    first = node.instance_dirs()
    assert len(first) == 1
    node.virtctl("restart", "small")
    # A restart replaces the instance (a new VMI UID), as KubeVirt's does.
    deadline = time.monotonic() + 120
    while node.instance_dirs() in ([], first) and time.monotonic() < deadline:
        time.sleep(0.5)
    node.wait_status("small", "Running", timeout=120)
    second = node.instance_dirs()
    assert len(second) == 1 and second != first, "restart must make a new instance"

    # The daemon dies (kill -9); the VM keeps running and the new daemon adopts it.
    uid = second[0].name
    monitor = node.monitor_pid(uid)
    node.kill(signal.SIGKILL)
    assert Path(f"/proc/{monitor}").exists(), "the launcher died with the daemon"
    node.start()
    row = node.wait_status("small", "Running", timeout=60)
    assert [p.name for p in node.instance_dirs()] == [uid]
    assert node.monitor_pid(uid) == monitor, "the VM was restarted instead of adopted"
    console = node.console("small")
    try:
        console.send("\r")
        out = console.run("echo still-alive", "IV-ALIVE")
        assert "still-alive" in out
        console.detach()
    finally:
        console.close()

    # Delete: nothing left behind.
    node.virtctl("delete", "small")
    assert "small" not in node.vm_names()
    left = host_leftovers(node)
    assert all(not v for v in left.values()), left
