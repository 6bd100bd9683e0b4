"""Density benchmark on the real test cluster (KubeVirt sig-performance's shape, scaled to
one 2-core node): create N small VMIs 100 ms apart, then delete them, and print

- creation → Running: p50 / p95 / p99 (client clock: from the create call to the watch
  event that shows phase Running);
- deletion → gone: p50 / p95 (from the delete call to the watch's DELETED event);
- API writes per VMI: the API server's own `apiserver_request_total` for the write verbs
  (POST, PUT, PATCH, DELETE), all clients (controller, kubelet, scheduler, node agent),
  before and after, divided by N;
- node memory per VM: the drop of MemAvailable with all N running, divided by N;
- where creation → Running goes, median per step, from the objects' own timestamps
  (whole seconds): VMI created → launcher pod created (controller) → scheduled
  (scheduler) → first init container started (kubelet: sandbox, CNI) → last init
  container finished (image copies) → compute container started → VMI Running (node
  agent, launcher; the watch's wall clock).

    python3 -m tests.bench.density --vms 20 [--interval 0.1] [--timeout 900]

Needs the cluster up with Ironvisor deployed (scripts/cluster.sh up, then the cluster
e2e fixture or `kubectl apply -k deploy/` after `python3 -m images.containers import`).
KubeVirt's published audit for 100 minimal VMIs on real clusters: creation → Running p50
15–23 s, p95 19.5–30 s; deletion ~1 s. Guests here run under software emulation.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import yaml

from tests.cluster.kube import Kubectl, KubectlError, cluster_env

VMI_EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "vmi-small.yaml"
WRITE_VERBS = ("POST", "PUT", "PATCH", "DELETE")


class BenchError(RuntimeError):
    """The benchmark could not run."""


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def write_requests(k: Kubectl) -> int:
    """Sum of the API server's write requests so far."""
    text = k.run("get", "--raw", "/metrics").stdout
    total = 0
    pattern = re.compile(r'^apiserver_request_total\{([^}]*)\} ([0-9.e+]+)$')
    for line in text.splitlines():
        match = pattern.match(line)
        if match and re.search(r'verb="(%s)"' % "|".join(WRITE_VERBS), match.group(1)):
            total += int(float(match.group(2)))
    return total


def mem_available_kib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1])
    raise BenchError("no MemAvailable in /proc/meminfo")


class Watch:
    """`kubectl get vmi -w -o json --output-watch-events` in the background, recording when
    each VMI was first seen Running and when it was DELETED (monotonic clock)."""

    def __init__(self, k: Kubectl, namespace: str) -> None:
        self.running: dict[str, float] = {}
        self.running_wall: dict[str, float] = {}
        self.deleted: dict[str, float] = {}
        self.proc = subprocess.Popen(
            ["kubectl", "get", "vmi", "-n", namespace, "-w", "-o", "json",
             "--output-watch-events"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            env={**os.environ, **k.env})
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        decoder = json.JSONDecoder()
        buffer = ""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            buffer += line
            while buffer.strip():
                try:
                    event, end = decoder.raw_decode(buffer.lstrip())
                except json.JSONDecodeError:
                    break
                buffer = buffer.lstrip()[end:]
                now = time.monotonic()
                obj = event.get("object", {})
                name = obj.get("metadata", {}).get("name", "")
                if event.get("type") == "DELETED":
                    self.deleted.setdefault(name, now)
                elif (obj.get("status") or {}).get("phase") == "Running":
                    self.running.setdefault(name, now)
                    self.running_wall.setdefault(name, time.time())

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


STEPS = ("controller: VMI -> pod", "scheduler: pod -> scheduled",
         "kubelet: scheduled -> first init", "init containers (copies)",
         "kubelet: last init -> compute", "launcher: compute -> Running")


def stamp(value: str | None) -> float | None:
    """An API timestamp (RFC 3339, whole seconds) as epoch seconds."""
    if not value:
        return None
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def step_times(vmi: dict, pod: dict, running_wall: float) -> list[float] | None:
    """The seconds each of STEPS took for one VMI, or None when a timestamp is missing."""
    status = pod.get("status", {})
    scheduled = next((c.get("lastTransitionTime") for c in status.get("conditions", [])
                      if c["type"] == "PodScheduled"), None)
    inits = status.get("initContainerStatuses") or []
    starts = [i.get("state", {}).get("terminated", {}).get("startedAt") for i in inits]
    ends = [i.get("state", {}).get("terminated", {}).get("finishedAt") for i in inits]
    compute = next((c.get("state", {}).get("running", {}).get("startedAt")
                    for c in status.get("containerStatuses", []) if c["name"] == "compute"),
                   None)
    points = [stamp(vmi["metadata"]["creationTimestamp"]),
              stamp(pod["metadata"]["creationTimestamp"]), stamp(scheduled),
              min((stamp(t) for t in starts if t), default=None),
              max((stamp(t) for t in ends if t), default=None), stamp(compute), running_wall]
    if any(p is None for p in points):
        return None
    return [b - a for a, b in zip(points, points[1:])]


def run(vms: int, interval: float, timeout: float) -> dict[str, float]:
    k = Kubectl(cluster_env())
    try:
        k.run("get", "deployment", "-n", "ironvisor-system", "ironvisor-controller")
    except KubectlError as error:
        raise BenchError("Ironvisor is not deployed on the test cluster (scripts/cluster.sh up; "
                         f"kubectl apply -k deploy/): {error}") from error
    namespace = f"bench-density-{uuid.uuid4().hex[:6]}"
    k.run("create", "namespace", namespace)
    template = yaml.safe_load(VMI_EXAMPLE.read_text())
    template["metadata"].pop("namespace", None)
    watch = Watch(k, namespace)
    try:
        time.sleep(1)
        writes_before = write_requests(k)
        mem_before = mem_available_kib()
        created: dict[str, float] = {}
        for i in range(vms):
            name = f"density-{i:03d}"
            doc = json.loads(json.dumps(template))
            doc["metadata"]["name"] = name
            created[name] = time.monotonic()
            subprocess.Popen(["kubectl", "create", "-n", namespace, "-f", "-"],
                             stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                             env={**os.environ, **k.env},
                             text=True).communicate(json.dumps(doc))
            time.sleep(interval)
        deadline = time.monotonic() + timeout
        while len(watch.running) < vms and time.monotonic() < deadline:
            time.sleep(0.5)
        if len(watch.running) < vms:
            raise BenchError(f"only {len(watch.running)} of {vms} VMIs reached Running within "
                             f"{timeout:.0f} s")
        time.sleep(5)
        mem_per_vm_mib = (mem_before - mem_available_kib()) / vms / 1024
        writes_per_vmi = (write_requests(k) - writes_before) / vms
        to_running = [watch.running[n] - created[n] for n in created]
        vmis = {v["metadata"]["name"]: v for v in k.json("get", "vmi", "-n", namespace)["items"]}
        steps = []
        for pod in k.json("get", "pods", "-n", namespace)["items"]:
            name = pod["metadata"].get("labels", {}).get("ironvisor.io/vmi")
            if name in vmis and name in watch.running_wall:
                times = step_times(vmis[name], pod, watch.running_wall[name])
                if times:
                    steps.append(times)
        deleting: dict[str, float] = {}
        for name in created:
            deleting[name] = time.monotonic()
            k.run("delete", "vmi", name, "-n", namespace, "--wait=false")
        deadline = time.monotonic() + timeout
        while len(watch.deleted) < vms and time.monotonic() < deadline:
            time.sleep(0.5)
        to_gone = [watch.deleted[n] - deleting[n] for n in deleting if n in watch.deleted]
    finally:
        watch.close()
        k.run("delete", "namespace", namespace, "--wait=false", check=False)
    return {
        "vms": vms,
        "running_p50": percentile(to_running, 50),
        "running_p95": percentile(to_running, 95),
        "running_p99": percentile(to_running, 99),
        "running_max": max(to_running),
        "gone_p50": percentile(to_gone, 50) if to_gone else float("nan"),
        "gone_p95": percentile(to_gone, 95) if to_gone else float("nan"),
        "gone_count": len(to_gone),
        "writes_per_vmi": writes_per_vmi,
        "mem_per_vm_mib": mem_per_vm_mib,
        "running_mean": statistics.fmean(to_running),
        "steps": {step: statistics.median(t[i] for t in steps) for i, step in enumerate(STEPS)}
        if steps else {},
        "steps_count": len(steps),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vms", type=int, default=20)
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between creates")
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()
    try:
        r = run(args.vms, args.interval, args.timeout)
    except (BenchError, KubectlError) as error:
        print(f"density benchmark: {error}", file=sys.stderr)
        return 1
    print(f"density: {r['vms']} VMIs created {args.interval * 1000:.0f} ms apart on one node")
    print(f"  creation -> Running  p50 {r['running_p50']:.1f} s  p95 {r['running_p95']:.1f} s  "
          f"p99 {r['running_p99']:.1f} s  max {r['running_max']:.1f} s")
    print(f"  deletion -> gone     p50 {r['gone_p50']:.1f} s  p95 {r['gone_p95']:.1f} s  "
          f"({r['gone_count']} of {r['vms']} seen)")
    print(f"  API writes per VMI   {r['writes_per_vmi']:.1f} (all clients)")
    print(f"  node memory per VM   {r['mem_per_vm_mib']:.0f} MiB (MemAvailable drop)")
    if r["steps"]:
        print(f"  where creation -> Running goes (median of {r['steps_count']}, "
              "API timestamps in whole seconds):")
        for step, seconds in r["steps"].items():
            print(f"    {step:<34} {seconds:5.1f} s")
    print("  KubeVirt audit, 100 minimal VMIs: creation -> Running p50 15-23 s, "
          "p95 19.5-30 s; deletion ~1 s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
