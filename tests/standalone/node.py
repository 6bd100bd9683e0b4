"""A real standalone node for tests: `ironvisor-handler serve` on temporary directories,
driven with the real `virtctl` (release binaries), with an interactive console on a pty.

Everything a node starts is stopped by :meth:`Node.close`, also when a test fails.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import threading
import tty
import time
from dataclasses import dataclass, field
from pathlib import Path

from images.common import REPO_ROOT

RELEASE = REPO_ROOT / "target" / "release"
HANDLER = RELEASE / "ironvisor-handler"
VIRTCTL = RELEASE / "virtctl"
LAUNCHER_QEMU = RELEASE / "ironvisor-launcher-qemu"
LAUNCHER = RELEASE / "ironvisor-launcher"
BINARIES = (HANDLER, VIRTCTL, LAUNCHER_QEMU, LAUNCHER)

#: Ctrl+] : virtctl console's detach key.
DETACH = b"\x1d"


class NodeError(AssertionError):
    """A node operation did not do what the test expected."""


@dataclass
class Node:
    """One node daemon and its directories under ``work``."""

    work: Path
    images_dir: Path
    bridge: str
    subnet: str
    backend: str = "auto"
    proc: subprocess.Popen | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.data_dir = self.work / "data"
        self.run_dir = self.work / "run"
        self.socket = self.work / "handler.sock"
        self.log_path = self.work / "handler.log"
        self.cgroup_parent = f"ivtest-{os.getpid()}"

    # -- daemon ---------------------------------------------------------------------------

    def start(self) -> None:
        """Starts the daemon and waits until virtctl gets an answer."""
        self.work.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [str(HANDLER), "serve", "--data-dir", str(self.data_dir),
             "--images-dir", str(self.images_dir), "--run-dir", str(self.run_dir),
             "--socket", str(self.socket), "--backend", self.backend,
             "--bridge", self.bridge, "--pod-subnet", self.subnet,
             "--cgroup-parent", self.cgroup_parent, "--node-name", "testnode"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise NodeError(f"the daemon exited with {self.proc.returncode}:\n{self.log()}")
            if self.socket.exists() and self.virtctl("get", check=False).returncode == 0:
                return
            time.sleep(0.2)
        raise NodeError(f"the daemon did not answer within 30 s:\n{self.log()}")

    def kill(self, sig: signal.Signals) -> None:
        """Sends ``sig`` to the daemon alone (not its launchers) and reaps it."""
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(timeout=30)
        self.proc = None

    def close(self) -> None:
        """Deletes every VM (best effort), then stops the daemon."""
        if self.proc is not None and self.proc.poll() is None:
            for name in self.vm_names():
                self.virtctl("delete", name, check=False, timeout=120)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        self._remove_cgroup_parents()

    def _remove_cgroup_parents(self) -> None:
        """The daemon removes each VM's cgroup but not the parent it was given: remove the
        parents left empty (a parent still in use by another daemon stays)."""
        for parent in _cgroup_candidates(self.cgroup_parent):
            try:
                parent.rmdir()
            except OSError:
                pass

    def log(self) -> str:
        """The daemon's log, without colours."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no daemon log)"
        return re.sub(r"\x1b\[[0-9;]*m", "", text)

    # -- virtctl --------------------------------------------------------------------------

    def virtctl(self, *args: str, check: bool = True, timeout: float = 60,
                input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Runs virtctl against this node; with ``check`` a failure raises with its output."""
        env = dict(os.environ, IRONVISOR_SOCKET=str(self.socket), NO_COLOR="1")
        result = subprocess.run([str(VIRTCTL), *args], capture_output=True, text=True,
                                timeout=timeout, env=env, input=input)
        if check and result.returncode != 0:
            raise NodeError(f"virtctl {' '.join(args)} exited {result.returncode}:\n"
                            f"stdout: {result.stdout}\nstderr: {result.stderr}")
        return result

    def vm_names(self) -> list[str]:
        out = self.virtctl("get", "-o", "name", check=False).stdout
        return [line.rsplit("/", 1)[-1] for line in out.split() if line]

    def view(self, name: str) -> dict:
        """The VirtualMachine (status included) as JSON."""
        return json.loads(self.virtctl("get", name, "-o", "json").stdout)

    def row(self, name: str) -> dict[str, str]:
        """The `virtctl get NAME` table row as a dict of column -> value."""
        lines = self.virtctl("get", name).stdout.splitlines()
        header, values = lines[0].split(), lines[1].split()
        return dict(zip(header, values))

    def wait_status(self, name: str, status: str, timeout: float = 120) -> dict[str, str]:
        """Waits until the STATUS column reads ``status``; returns the row."""
        deadline = time.monotonic() + timeout
        row: dict[str, str] = {}
        while time.monotonic() < deadline:
            row = self.row(name)
            if row.get("STATUS") == status:
                return row
            time.sleep(0.5)
        describe = self.virtctl("describe", name, check=False).stdout
        raise NodeError(f"VM {name} is {row.get('STATUS')}, not {status}, after {timeout} s\n"
                        f"{describe}\n--- daemon log ---\n{self.log()[-6000:]}")

    def instance_dirs(self) -> list[Path]:
        """The per-instance runtime directories (`<run-dir>/vmi/<uid>`)."""
        vmi = self.run_dir / "vmi"
        return sorted(vmi.iterdir()) if vmi.is_dir() else []

    def monitor_pid(self, uid: str) -> int:
        """The pid of the instance's monitor process (parent of its launcher)."""
        record = json.loads((self.run_dir / "vmi" / uid / "launcher.pid").read_text())
        return int(record["pid"])

    # -- console --------------------------------------------------------------------------

    def console(self, name: str) -> Console:
        """`virtctl console NAME` on a pseudo-terminal."""
        return Console.spawn([str(VIRTCTL), "--socket", str(self.socket), "console", name])


class Console:
    """An interactive program on a pty; output is collected by a thread."""

    def __init__(self, proc: subprocess.Popen, master: int) -> None:
        self.proc = proc
        self.master = master
        self._buf = bytearray()
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @classmethod
    def spawn(cls, argv: list[str], raw: bool = False,
              env: dict[str, str] | None = None) -> Console:
        """``raw``: the pty passes bytes as they are typed, without echo (for programs
        that do not put their terminal in raw mode themselves, as virtctl does)."""
        master, slave = pty.openpty()
        if raw:
            tty.setraw(slave)
        proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave,
                                start_new_session=True, close_fds=True, env=env)
        os.close(slave)
        return cls(proc, master)

    def _read(self) -> None:
        while True:
            try:
                ready, _, _ = select.select([self.master], [], [], 0.5)
                if not ready:
                    if self.proc.poll() is not None:
                        return
                    continue
                data = os.read(self.master, 65536)
            except OSError:
                return
            if not data:
                return
            with self._lock:
                self._buf.extend(data)

    def text(self) -> str:
        with self._lock:
            return self._buf.decode(errors="replace")

    def expect(self, pattern: str, timeout: float = 120, start: int = 0) -> re.Match[str]:
        """Waits for ``pattern`` (a regex) in the output from offset ``start``."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while time.monotonic() < deadline:
            match = regex.search(self.text(), start)
            if match:
                return match
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.2)
        raise NodeError(f"console: no {pattern!r} within {timeout} s; output:\n"
                        f"{self.text()[-4000:]}")

    def send(self, data: bytes | str) -> None:
        os.write(self.master, data.encode() if isinstance(data, str) else data)

    def run(self, command: str, marker: str, timeout: float = 60) -> str:
        """Types ``command; echo marker-$?`` and returns the output up to the marker.

        The marker is split by an empty quote on the typed line so that only the guest
        shell's own output matches it.
        """
        start = len(self.text())
        half = len(marker) // 2
        typed = f"{marker[:half]}''{marker[half:]}"
        self.send(f"{command}; echo {typed}-rc=$?\r")
        match = self.expect(rf"{re.escape(marker)}-rc=(\d+)", timeout, start)
        return self.text()[start:match.end()]

    def detach(self, timeout: float = 10) -> int:
        """Ctrl+] and the exit code of virtctl."""
        self.send(DETACH)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=2)
        try:
            os.close(self.master)
        except OSError:
            pass


def host_leftovers(node: Node) -> dict[str, list[str]]:
    """What the node may leave on the host for its VMs: namespaces, links, processes,
    libvirt domains, lease files, instance directories. Empty lists mean nothing is left."""
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link", "show", "master", node.bridge],
                           capture_output=True, text=True).stdout
    procs = subprocess.run(["pgrep", "-a", "-f", f"ironvisor-launcher.*{node.work}"],
                           capture_output=True, text=True).stdout
    monitors = subprocess.run(["pgrep", "-a", "-f", f"ironvisor-handler monitor.*{node.work}"],
                              capture_output=True, text=True).stdout
    domains = subprocess.run(["virsh", "-c", "qemu:///system", "list", "--all", "--name"],
                             capture_output=True, text=True).stdout
    leases = [str(p) for p in (node.data_dir / "net").rglob("*")
              if p.is_file() and re.fullmatch(r"\d+\.\d+\.\d+\.\d+", p.name)] \
        if (node.data_dir / "net").is_dir() else []
    vm_dirs = [str(p) for p in (node.data_dir / "vms").glob("*/*")] \
        if (node.data_dir / "vms").is_dir() else []
    return {
        "netns": [n.split()[0] for n in netns.splitlines() if n.startswith("iv-")],
        "bridge_ports": [line for line in links.splitlines() if line.strip()],
        "launchers": [line for line in procs.splitlines() if "pgrep" not in line],
        "monitors": [line for line in monitors.splitlines() if "pgrep" not in line],
        "domains": [d for d in domains.split() if d.startswith("ironvisor-")],
        "leases": leases,
        "vm_dirs": vm_dirs,
        "instance_dirs": [str(p) for p in node.instance_dirs()],
    }


def _cgroup_candidates(name: str) -> set[Path]:
    """Where the daemon (our child, so in our cgroups) made its parent cgroup `name`: at the
    top of each v1 hierarchy, and below our own cgroup in it (a hierarchy in which this
    process is not at the root, e.g. memory under a supervisor's group)."""
    root = Path("/sys/fs/cgroup")
    found = set(root.glob(f"*/{name}"))
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        _, controllers, path = line.split(":", 2)
        for mount in {controllers, *controllers.split(",")} - {""}:
            found.add(root / mount / path.lstrip("/") / name)
    return found

