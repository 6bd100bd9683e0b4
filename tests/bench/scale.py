"""Control-plane scale benchmark: N VirtualMachineInstances against the real API server,
their launcher pods placed by the real scheduler on fake nodes that KWOK
(sigs.k8s.io/kwok, built from its Go module) keeps and whose pods it "runs" without
processes. What is measured is Ironvisor's controller and the control plane, not guests.

    python3 -m tests.bench.scale --vms 1000 [--vms 10000 ...] [--fake-nodes 10]

Prints per run: time from the first create until every VMI is Running (its launcher pod
Running and ready, as KWOK reports it), peak RSS of the leading controller (VmHWM),
API server requests per VM (all clients, from apiserver_request_total), where the time
went (when half and all of the instances passed each step, from the objects' timestamps,
and each step's latency) and how each grows between runs. Running is counted from one
watch, so the benchmark adds no load that grows with N. Needs the cluster up with
Ironvisor deployed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from tests.bench.density import percentile, stamp
from tests.cluster.kube import Kubectl, KubectlError, cluster_env

KWOK_VERSION = "v0.8.0"
CACHE = Path(os.environ.get("IRONVISOR_CACHE_DIR", "/var/cache/ironvisor"))
KWOK = CACHE / "kwok" / KWOK_VERSION / "bin" / "kwok"
FAKE_LABEL = "ironvisor.io/bench-node"
KWOK_ANNOTATION = "kwok.x-k8s.io/node"
FAKE_NODE_RESOURCES = {"cpu": "64", "memory": "1Ti", "pods": "1100",
                       "devices.ironvisor.io/kvm": "1100", "devices.ironvisor.io/tun": "1100"}


class BenchError(RuntimeError):
    """The benchmark could not run."""


#: KWOK's own "fast" stage profile (node initialize + lease heartbeat, pod ready/complete/
#: delete), read from its module at run time: the plain `kwok` binary loads no stages of
#: its own, kwokctl would pass these.
KWOK_STAGES = ["node/fast/node-initialize.yaml",
               "node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
               "pod/fast/pod-ready.yaml", "pod/fast/pod-complete.yaml", "pod/fast/pod-delete.yaml"]


def kwok_config() -> Path:
    """A KWOK config file with the stages of its fast profile."""
    stages = CACHE / "go" / "mod" / f"sigs.k8s.io/kwok@{KWOK_VERSION}" / "kustomize" / "stage"
    documents = []
    for name in KWOK_STAGES:
        path = stages / name
        if not path.is_file():
            raise BenchError(f"KWOK stage {path} is missing (is the KWOK module in the cache?)")
        documents.append(path.read_text())
    out = KWOK.parent / "stages.yaml"
    out.write_text("\n---\n".join(documents))
    return out


def build_kwok() -> Path:
    """KWOK from its Go module, cached by version."""
    if KWOK.is_file():
        return KWOK
    env = {**os.environ, "GOMODCACHE": str(CACHE / "go" / "mod"),
           "GOCACHE": str(CACHE / "go" / "build"), "GOWORK": "off", "CGO_ENABLED": "0",
           "GOTOOLCHAIN": "local", "GOBIN": str(KWOK.parent)}
    KWOK.parent.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["go", "install", "-ldflags", "-s -w",
                           f"sigs.k8s.io/kwok/cmd/kwok@{KWOK_VERSION}"],
                          env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise BenchError(f"building KWOK {KWOK_VERSION} failed: {done.stderr[-2000:]}")
    return KWOK


class Api:
    """Raw HTTPS calls to the API server with the admin kubeconfig's client certificate."""

    def __init__(self, kubeconfig: Path) -> None:
        config = yaml.safe_load(kubeconfig.read_text())
        cluster = config["clusters"][0]["cluster"]
        user = config["users"][0]["user"]
        self.server = cluster["server"]
        self.context = ssl.create_default_context(cafile=cluster["certificate-authority"])
        self.context.load_cert_chain(user["client-certificate"], user["client-key"])

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.server + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, context=self.context, timeout=60) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as error:
            raise BenchError(f"{method} {path}: {error.code} {error.read()[:300]!r}") from error

    def stream(self, path: str):
        """An open response to read line by line (a watch); no read timeout."""
        request = urllib.request.Request(self.server + path)
        return urllib.request.urlopen(request, context=self.context, timeout=None)

    def list_all(self, path: str) -> list[dict]:
        return self.list_versioned(path)[0]

    def list_versioned(self, path: str) -> tuple[list[dict], str]:
        """Every item, page by page, and the list's resource version (to watch from)."""
        items, token, version = [], "", ""
        while True:
            page = self.call("GET", f"{path}?limit=1000" + (f"&continue={token}" if token else ""))
            items += page.get("items", [])
            version = version or page.get("metadata", {}).get("resourceVersion", "")
            token = page.get("metadata", {}).get("continue", "")
            if not token:
                return items, version

    def request_count(self) -> int:
        request = urllib.request.Request(self.server + "/metrics")
        with urllib.request.urlopen(request, context=self.context, timeout=60) as response:
            text = response.read().decode()
        return sum(int(float(m.group(1))) for m in
                   re.finditer(r"^apiserver_request_total\{[^}]*\} ([0-9.e+]+)$", text, re.M))


class RunningWatch:
    """The names of one collection's objects whose phase is Running, kept by one watch of
    the API server. Polling with lists instead would read every instance every few seconds,
    a load that grows with N by itself: at 10,000 the benchmark would mostly measure its
    own polling."""

    #: Seconds the server keeps one watch open; the next resumes where it ended.
    WATCH_SECONDS = 300

    def __init__(self, api: Api, path: str) -> None:
        self.api, self.path = api, path
        self.running: set[str] = set()
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.version = self._relist()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def count(self) -> int:
        with self.lock:
            return len(self.running)

    def close(self) -> None:
        self.stopped.set()

    def _relist(self) -> str:
        items, version = self.api.list_versioned(self.path)
        with self.lock:
            self.running = {i["metadata"]["name"] for i in items
                            if (i.get("status") or {}).get("phase") == "Running"}
        return version

    def _run(self) -> None:
        while not self.stopped.is_set():
            query = (f"?watch=1&allowWatchBookmarks=true&resourceVersion={self.version}"
                     f"&timeoutSeconds={self.WATCH_SECONDS}")
            try:
                with self.api.stream(self.path + query) as response:
                    for line in response:
                        if self.stopped.is_set():
                            return
                        self._apply(json.loads(line))
            except _Expired:
                self.version = self._relist()
            except (OSError, ValueError, BenchError) as error:
                print(f"scale: the instance watch broke ({error}); watching again",
                      file=sys.stderr, flush=True)
                time.sleep(1)

    def _apply(self, event: dict) -> None:
        obj = event.get("object") or {}
        if event.get("type") == "ERROR":
            if obj.get("code") == 410:
                raise _Expired()
            raise ValueError(f"watch error: {obj.get('message')}")
        meta = obj.get("metadata") or {}
        self.version = meta.get("resourceVersion", self.version)
        if event.get("type") == "BOOKMARK":
            return
        name = meta.get("name", "")
        with self.lock:
            if event.get("type") != "DELETED" and \
                    (obj.get("status") or {}).get("phase") == "Running":
                self.running.add(name)
            else:
                self.running.discard(name)


class _Expired(Exception):
    """The watch's resource version is too old (410): list again."""


def controller_hwm_kib() -> dict[int, int]:
    """VmHWM of every ironvisor-controller process on this node, by pid."""
    out = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            # comm is the name cut to 15 characters: "ironvisor-contr".
            if not (proc / "comm").read_text().strip().startswith("ironvisor-cont"):
                continue
            for line in (proc / "status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    out[int(proc.name)] = int(line.split()[1])
        except OSError:
            continue
    return out


def fake_node(name: str) -> dict:
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {FAKE_LABEL: "true", "type": "kwok"},
                     "annotations": {KWOK_ANNOTATION: "fake"}},
        "spec": {"taints": [{"key": KWOK_ANNOTATION, "value": "fake", "effect": "NoSchedule"}]},
        # Launcher pods also ask for /dev/kvm and (with an interface) /dev/net/tun, which a
        # real node's agent advertises.
        "status": {"allocatable": FAKE_NODE_RESOURCES, "capacity": FAKE_NODE_RESOURCES},
    }


def vmi(name: str) -> dict:
    return {
        "apiVersion": "ironvisor.io/v1alpha1", "kind": "VirtualMachineInstance",
        "metadata": {"name": name},
        "spec": {
            "domain": {"memory": {"guest": "64Mi"},
                       "firmware": {"kernelBoot": {"container": {
                           "image": "ironvisor/guest-kernel:debian-6.1",
                           "kernelPath": "/boot/vmlinuz", "initrdPath": "/boot/initrd.img"}}},
                       "devices": {"disks": [{"name": "rootdisk"}]}},
            "volumes": [{"name": "rootdisk", "containerDisk": {"image": "ironvisor/rootfs:busybox"}}],
            "nodeSelector": {FAKE_LABEL: "true"},
            "tolerations": [{"key": KWOK_ANNOTATION, "operator": "Exists", "effect": "NoSchedule"}],
        },
    }


#: The points every instance passes on its way to Running, from the objects' own
#: timestamps (whole seconds): who moves it to the next one is named in STAGES.
POINTS = ("VMI created", "pod created", "pod scheduled", "pod ready", "VMI Running")
STAGES = ("controller: VMI -> pod", "scheduler: pod -> scheduled",
          "KWOK: scheduled -> ready", "controller: pod ready -> Running")


def condition_time(obj: dict, type_: str) -> float | None:
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition.get("type") == type_ and condition.get("status") == "True":
            return stamp(condition.get("lastTransitionTime"))
    return None


def points_of(vmi: dict, pod: dict) -> list[float] | None:
    """Epoch seconds at which one instance passed each of POINTS, or None if one is missing."""
    running = next((t.get("phaseTransitionTimestamp")
                    for t in (vmi.get("status") or {}).get("phaseTransitionTimestamps") or []
                    if t.get("phase") == "Running"), None)
    points = [stamp(vmi["metadata"].get("creationTimestamp")),
              stamp(pod["metadata"].get("creationTimestamp")),
              condition_time(pod, "PodScheduled"), condition_time(pod, "Ready"), stamp(running)]
    return None if any(p is None for p in points) else points


def stage_report(api: Api, namespace: str, started_wall: float) -> list[str]:
    """Where the time to all Running went: for each point, when (seconds after the first
    create) half and all of the instances had passed it, and each stage's p50/p95/max.
    A stage whose "all" grows faster than the others between runs is the one that does
    not scale."""
    base = f"/namespaces/{namespace}"
    vmis = {v["metadata"]["name"]: v for v in
            api.list_all(f"/apis/ironvisor.io/v1alpha1{base}/virtualmachineinstances")}
    rows = []
    for pod in api.list_all(f"/api/v1{base}/pods"):
        vmi = vmis.get((pod["metadata"].get("labels") or {}).get("ironvisor.io/vmi", ""))
        points = points_of(vmi, pod) if vmi else None
        if points:
            rows.append(points)
    return stage_lines(rows, len(vmis), started_wall)


def stage_lines(rows: list[list[float]], instances: int, started_wall: float) -> list[str]:
    """The report of `stage_report` from each instance's POINTS (epoch seconds)."""
    if not rows:
        return ["  no instance had every timestamp"]
    lines = [f"  where it went ({len(rows)} of {instances} instances with every timestamp; "
             "seconds after the first create, whole-second API timestamps):"]
    for i, point in enumerate(POINTS):
        passed = [r[i] - started_wall for r in rows]
        lines.append(f"    {point:<14} half by {percentile(passed, 50):7.0f}   "
                     f"all by {max(passed):7.0f}")
    for i, stage in enumerate(STAGES):
        took = [r[i + 1] - r[i] for r in rows]
        lines.append(f"    {stage:<34} p50 {percentile(took, 50):6.0f}  "
                     f"p95 {percentile(took, 95):6.0f}  max {max(took):6.0f}")
    return lines


def wait_namespace_gone(api: Api, namespace: str, timeout: float) -> float | None:
    """Seconds until ``namespace`` (and so every VMI and pod in it) is gone; ``None`` after
    ``timeout``. The next run, or the cluster's shutdown, should not inherit thousands of
    objects still being deleted."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            api.call("GET", f"/api/v1/namespaces/{namespace}")
        except BenchError as error:
            if ": 404 " in str(error):
                return time.monotonic() - started
            raise
        time.sleep(3)
    return None


def run_once(api: Api, vms: int, concurrency: int, timeout: float) -> dict[str, float]:
    namespace = f"bench-scale-{uuid.uuid4().hex[:6]}"
    api.call("POST", "/api/v1/namespaces",
             {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    path = f"/apis/ironvisor.io/v1alpha1/namespaces/{namespace}/virtualmachineinstances"
    hwm_before = controller_hwm_kib()
    requests_before = api.request_count()
    watch = RunningWatch(api, path)
    started = time.monotonic()
    started_wall = time.time()
    try:
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(lambda i: api.call("POST", path, vmi(f"scale-{i:05d}")), range(vms)))
        created = time.monotonic() - started
        running = watch.count()
        while running < vms and time.monotonic() - started < timeout:
            time.sleep(0.5)
            running = watch.count()
        elapsed = time.monotonic() - started
    finally:
        watch.close()
    requests = api.request_count() - requests_before
    hwm = controller_hwm_kib()
    if running < vms:
        raise BenchError(f"{running} of {vms} VMIs Running after {timeout:.0f} s")
    stages = stage_report(api, namespace, started_wall)
    deleting = time.monotonic()
    api.call("DELETE", f"/api/v1/namespaces/{namespace}")
    deleted_s = wait_namespace_gone(api, namespace, timeout)
    return {
        "vms": vms, "create_s": created, "all_running_s": elapsed,
        "namespace_deleted_s": deleted_s if deleted_s is not None else time.monotonic() - deleting,
        "requests_per_vm": requests / vms,
        "controller_peak_mib": max(hwm.values(), default=0) / 1024,
        "controller_peak_before_mib": max(hwm_before.values(), default=0) / 1024,
        "stages": stages,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vms", type=int, action="append", help="repeatable; default 1000")
    parser.add_argument("--fake-nodes", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=3600)
    args = parser.parse_args()
    runs = args.vms or [1000]
    k = Kubectl(cluster_env())
    try:
        k.run("get", "deployment", "-n", "ironvisor-system", "ironvisor-controller")
        kwok = build_kwok()
    except (KubectlError, BenchError) as error:
        print(f"scale benchmark: {error}", file=sys.stderr)
        return 1
    api = Api(Path(k.env["KUBECONFIG"]))
    nodes = [f"kwok-bench-{i}" for i in range(args.fake_nodes)]
    log = open("/tmp/ironvisor-kwok.log", "w")
    kwok_proc = subprocess.Popen(
        [str(kwok), f"--kubeconfig={k.env['KUBECONFIG']}", f"--config={kwok_config()}",
         "--manage-all-nodes=false", "--node-lease-duration-seconds=40",
         f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION}=fake",
         "--cidr=10.245.0.0/16", "--node-ip=10.250.0.2"], stdout=log, stderr=log)
    results = []
    try:
        for name in nodes:
            try:
                api.call("POST", "/api/v1/nodes", fake_node(name))
            except BenchError as error:
                if "409" not in str(error):
                    raise
        for vms in runs:
            results.append(run_once(api, vms, args.concurrency, args.timeout))
            r = results[-1]
            print(f"scale: {vms} VMIs on {len(nodes)} KWOK nodes: created in {r['create_s']:.0f} s, "
                  f"all Running after {r['all_running_s']:.0f} s; controller peak RSS "
                  f"{r['controller_peak_mib']:.0f} MiB; {r['requests_per_vm']:.1f} API requests "
                  f"per VM (all clients); namespace gone {r['namespace_deleted_s']:.0f} s after "
                  "its deletion", flush=True)
            print("\n".join(r["stages"]), flush=True)
    except BenchError as error:
        print(f"scale benchmark: {error}", file=sys.stderr)
        return 1
    finally:
        for name in nodes:
            try:
                api.call("DELETE", f"/api/v1/nodes/{name}")
            except BenchError:
                pass
        kwok_proc.terminate()
        kwok_proc.wait(timeout=30)
    if len(results) > 1:
        a, b = results[0], results[-1]
        factor = b["vms"] / a["vms"]
        print(f"growth x{factor:.0f} VMs: time x{b['all_running_s'] / a['all_running_s']:.1f}, "
              f"controller RSS x{b['controller_peak_mib'] / max(a['controller_peak_mib'], 1):.1f}, "
              f"requests per VM x{b['requests_per_vm'] / a['requests_per_vm']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
