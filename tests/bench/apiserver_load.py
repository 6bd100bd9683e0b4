"""Load check of the api-server on the real cluster (a command, not a test): concurrent
console sessions and start/stop calls, every one through kube-apiserver's aggregation
layer, the api-server and (for consoles) the node agent's mutual-TLS link to the
launcher.

    python3 -m tests.bench.apiserver_load [--consoles 200] [--calls 1000] [--vms 10]

* consoles: one running VM; N WebSocket console sessions opened at once (the same
  channel protocol virtctl speaks), each timed from the request to its first output
  frame (the launcher replays its boot log to each new client), all held open together,
  then closed.
* calls: `--vms` Halted VMs whose template selects no node (their launcher pods stay
  Pending, so the node runs no guests); one worker per VM alternates start and stop,
  `--calls` PUTs in all, each timed to its answer.

Prints p50/p99/max latency, failures by HTTP status, and the api-server processes' RSS
(VmRSS now, VmHWM peak) before and after. Needs the cluster up with Ironvisor deployed
(scripts/cluster-deploy.sh) and runs in a namespace of its own, deleted afterwards.
"""

from __future__ import annotations

import argparse
import base64
import os
import socket
import ssl
import statistics
import struct
import sys
import threading
import time
import urllib.parse
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.bench.scale import Api, BenchError
from tests.cluster.kube import Kubectl, cluster_env, phase, wait_for
from tests.cluster.test_vm_lifecycle import EXAMPLE

SUBRESOURCES = "/apis/subresources.ironvisor.io/v1alpha1"


def apiserver_memory_kib() -> dict[int, tuple[int, int]]:
    """(VmRSS, VmHWM) of every ironvisor-apiserver process on this node, by pid."""
    out = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            # comm is the name cut to 15 characters.
            if (proc / "comm").read_text().strip() != "ironvisor-apise":
                continue
            fields = dict(line.split(":", 1) for line in
                          (proc / "status").read_text().splitlines() if ":" in line)
            out[int(proc.name)] = (int(fields["VmRSS"].split()[0]),
                                   int(fields["VmHWM"].split()[0]))
        except (OSError, KeyError, ValueError):
            continue
    return out


def percentiles(samples: list[float]) -> str:
    if not samples:
        return "no samples"
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
    return (f"p50 {statistics.median(ordered) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, "
            f"max {ordered[-1] * 1000:.0f} ms")


class ConsoleClient:
    """One console WebSocket through kube-apiserver, with the admin client certificate."""

    def __init__(self, api: Api, path: str) -> None:
        url = urllib.parse.urlparse(api.server)
        raw = socket.create_connection((url.hostname, url.port or 443), timeout=60)
        self.sock = api.context.wrap_socket(raw, server_hostname=url.hostname)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (f"GET {path} HTTP/1.1\r\nHost: {url.hostname}\r\nUpgrade: websocket\r\n"
                   f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                   "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: v4.channel.k8s.io\r\n\r\n")
        self.sock.sendall(request.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise BenchError("console: connection closed during the upgrade")
            head += chunk
        status, _, self.buffer = head.partition(b"\r\n\r\n")
        status_line = status.split(b"\r\n", 1)[0]
        if b" 101 " not in status_line:
            raise BenchError(f"console: {status_line.decode(errors='replace')} "
                             f"{self.buffer[:300]!r}")

    def _read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise BenchError("console: connection closed")
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def frame(self) -> tuple[int, bytes]:
        first, second = self._read(2)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", self._read(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", self._read(8))
        return first & 0x0F, self._read(length)

    def first_output(self) -> None:
        while True:
            opcode, payload = self.frame()
            if opcode == 0x8:
                raise BenchError("console: closed by the server")
            if opcode == 0x2 and payload[:1] == b"\x01" and len(payload) > 1:
                return

    def close(self) -> None:
        try:
            # A masked close frame, as clients must send.
            mask = os.urandom(4)
            self.sock.sendall(bytes([0x88, 0x80]) + mask)
        except OSError:
            pass
        self.sock.close()


def consoles(api: Api, k: Kubectl, ns: str, sessions: int) -> None:
    k.apply(EXAMPLE, ns)
    wait_for("the console VM Running", lambda: phase(k.get("vmi", "small", ns)) == "Running",
             300)
    path = f"{SUBRESOURCES}/namespaces/{ns}/virtualmachineinstances/small/console"
    latencies: list[float] = []
    failures: dict[str, int] = {}
    lock = threading.Lock()
    opened = threading.Barrier(sessions + 1, timeout=600)

    def session() -> None:
        started = time.monotonic()
        client = None
        try:
            client = ConsoleClient(api, path)
            client.first_output()
            with lock:
                latencies.append(time.monotonic() - started)
        except (BenchError, OSError) as error:
            with lock:
                key = str(error)[:120]
                failures[key] = failures.get(key, 0) + 1
        try:
            opened.wait()
        except threading.BrokenBarrierError:
            pass
        if client:
            client.close()

    before = apiserver_memory_kib()
    with ThreadPoolExecutor(max_workers=sessions) as pool:
        for _ in range(sessions):
            pool.submit(session)
        opened.wait()
        during = apiserver_memory_kib()
    print(f"consoles: {len(latencies)} of {sessions} sessions open at once; time to first "
          f"output {percentiles(latencies)}")
    for error, count in failures.items():
        print(f"  failed x{count}: {error}")
    print_memory("consoles", before, during)


def calls(api: Api, k: Kubectl, ns: str, total: int, vms: int) -> None:
    halted = EXAMPLE.replace("runStrategy: Always", "runStrategy: Halted").replace(
        "      domain:", "      nodeSelector:\n        ironvisor.io/bench: nowhere\n      domain:", 1)
    for index in range(vms):
        k.apply(halted.replace("name: small\n  labels", f"name: load-{index}\n  labels", 1), ns)
    latencies: list[float] = []
    failures: dict[int, int] = {}
    examples: dict[int, str] = {}
    lock = threading.Lock()

    def worker(index: int, count: int) -> None:
        for call in range(count):
            action = "start" if call % 2 == 0 else "stop"
            path = f"{SUBRESOURCES}/namespaces/{ns}/virtualmachines/load-{index}/{action}"
            started = time.monotonic()
            try:
                api.call("PUT", path, {})
                with lock:
                    latencies.append(time.monotonic() - started)
            except BenchError as error:
                code = int(str(error).split(": ", 1)[1].split()[0]) if ": " in str(error) else 0
                with lock:
                    failures[code] = failures.get(code, 0) + 1
                    examples.setdefault(code, str(error)[:300])

    before = apiserver_memory_kib()
    started = time.monotonic()
    per_vm = [total // vms + (1 if i < total % vms else 0) for i in range(vms)]
    with ThreadPoolExecutor(max_workers=vms) as pool:
        for index, count in enumerate(per_vm):
            pool.submit(worker, index, count)
    elapsed = time.monotonic() - started
    after = apiserver_memory_kib()
    print(f"start/stop: {len(latencies)} of {total} calls answered 2xx in {elapsed:.1f} s "
          f"({total / elapsed:.0f} calls/s, {vms} workers); latency {percentiles(latencies)}")
    for code, count in sorted(failures.items()):
        print(f"  answered {code} x{count}, e.g. {examples[code]}")
    print_memory("start/stop", before, after)


def print_memory(what: str, before: dict, after: dict) -> None:
    for pid in sorted(after):
        rss0, _ = before.get(pid, (0, 0))
        rss1, hwm1 = after[pid]
        print(f"  api-server pid {pid}: RSS {rss0 / 1024:.1f} -> {rss1 / 1024:.1f} MiB "
              f"(peak {hwm1 / 1024:.1f} MiB) over the {what} run")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--consoles", type=int, default=200)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--vms", type=int, default=10)
    args = parser.parse_args(argv)
    env = cluster_env()
    k = Kubectl(env)
    api = Api(Path(env["KUBECONFIG"]))
    ns = f"load-{uuid.uuid4().hex[:6]}"
    k.run("create", "namespace", ns)
    try:
        if args.consoles:
            consoles(api, k, ns, args.consoles)
        if args.calls:
            calls(api, k, ns, args.calls, args.vms)
    except BenchError as error:
        print(f"apiserver_load: {error}", file=sys.stderr)
        return 1
    finally:
        k.run("delete", "namespace", ns, "--wait=false", check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
