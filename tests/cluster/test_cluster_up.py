"""The test cluster itself (scripts/cluster.sh, docs/cluster.md): `up` gives a Ready node
whose pods run on the offline pause image, get addresses from the bridge CNI, are
reachable from the host and from each other, and reach the API server at the
`kubernetes` service's ClusterIP with their own service-account token (what in-cluster
config does); `down` leaves no process, mount, network namespace, link, iptables rule or
cgroup behind; and `up` brings it back, left up for the tests after this one.

Self-contained on purpose (no fixture of conftest.py): it checks the script, so it
drives the script. Needs root, like the script."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import subprocess
import time
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.cluster

REPO_ROOT = Path(__file__).resolve().parents[2]
CLUSTER_SH = REPO_ROOT / "scripts" / "cluster.sh"
CACHE = Path(os.environ.get("IRONVISOR_CACHE_DIR", "/var/cache/ironvisor"))
K8S_BIN = CACHE / "kubernetes" / "v1.34.4" / "bin"
ETCD = CACHE / "etcd" / "v3.6.4" / "bin" / "etcd"
STATE = Path("/var/lib/ironvisor-cluster")
RUN = Path("/run/ironvisor-cluster")
KUBELET_ROOT = Path("/var/lib/kubelet")
SOCKET = RUN / "containerd" / "containerd.sock"
CONTAINERD_CONFIG = STATE / "config" / "containerd.toml"
NODE = "ironvisor-node"
NODE_IP = "10.250.0.1"
NODE_POD_CIDR = ipaddress.ip_network("10.244.0.0/24")
PAUSE = "docker.io/ironvisor/pause:3.10"
LINKS = ("ironvisor-node0", "ironvisor-cni0")


def sh(*args: str, check: bool = True, timeout: float = 120,
       input: str | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout,
                          input=input)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {done.returncode}:\n"
                             f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def cluster(command: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    return sh(str(CLUSTER_SH), command, timeout=timeout)


def kubectl(*args: str, check: bool = True, input: str | None = None
            ) -> subprocess.CompletedProcess[str]:
    kubeconfig = cluster("kubeconfig").stdout.strip().splitlines()[-1]
    return sh(str(K8S_BIN / "kubectl"), "--kubeconfig", kubeconfig, *args, check=check,
              input=input)


def wait_for(what: str, probe, timeout: float = 90, interval: float = 0.5):
    """probe() until it returns something truthy; fails saying what was awaited."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def pod_json(namespace: str, name: str) -> dict:
    return json.loads(kubectl("get", "pod", name, "-n", namespace, "-o", "json").stdout)


def pause_pod(name: str) -> str:
    return json.dumps({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
            "name": "pause", "image": PAUSE, "imagePullPolicy": "Never"}]},
    })


def task_pid(container_id: str) -> int:
    """The host pid of a container's task, from containerd (its network namespace is the
    pod's)."""
    listed = sh("ctr", "--address", str(SOCKET), "-n", "k8s.io", "tasks", "ls").stdout
    for line in listed.splitlines()[1:]:
        fields = line.split()
        if fields and fields[0] == container_id:
            return int(fields[1])
    raise AssertionError(f"no containerd task {container_id} in:\n{listed}")


def in_netns(pid: int, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return sh("nsenter", "-t", str(pid), "-n", *args, check=check, timeout=30)


# ------------------------------------------------------------------ leftovers after down

def cluster_processes() -> list[str]:
    """Processes that belong to this cluster, by their command line."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        argv = [a.decode(errors="replace") for a in argv if a]
        if not argv:
            continue
        line = " ".join(argv)
        if (argv[0].startswith(str(K8S_BIN) + "/") and not argv[0].endswith("/kubectl")
                or argv[0] == str(ETCD)
                or argv[0].endswith("containerd") and str(CONTAINERD_CONFIG) in line
                or "containerd-shim" in argv[0] and str(SOCKET) in line):
            found.append(f"{proc.name}: {line[:160]}")
    return found


def leftovers() -> dict[str, list[str]]:
    """Everything `down` must not leave behind, by kind; empty lists when clean."""
    mounts = sh("findmnt", "-rn", "-o", "TARGET").stdout.split()
    links = sh("ip", "-o", "link", "show").stdout
    rules = sh("iptables-save").stdout + sh("ip6tables-save").stdout
    cgroups = [str(p) for p in Path("/sys/fs/cgroup").glob("*/kubepods*")]
    cgroups += [str(p) for p in Path("/sys/fs/cgroup").glob("kubepods*")]
    return {
        "processes": cluster_processes(),
        "mounts": [m for m in mounts
                   if m.startswith((f"{KUBELET_ROOT}/", f"{RUN}/", f"{STATE}/"))],
        # Pod network namespaces are bind-mounted under containerd's state in RUN.
        "netns": [str(RUN)] if RUN.exists() else [],
        "links": [line.split(":")[1].strip() for line in links.splitlines()
                  if any(f": {name}" in line for name in LINKS)
                  or re.match(r"\d+: veth[0-9a-f]{8}@", line)],
        "iptables": [r for r in rules.splitlines() if re.search(r"\b(KUBE|CNI)-", r)],
        "cgroups": cgroups,
    }


# ------------------------------------------------------------------------------- tests

@pytest.fixture(scope="module")
def up() -> None:
    if os.geteuid() != 0:
        pytest.fail("scripts/cluster.sh needs root (it runs kubelet and containerd)")
    cluster("up")


def test_up_gives_a_ready_node_and_healthy_components(up: None) -> None:
    status = cluster("status").stdout
    for component in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler",
                      "containerd", "kubelet", "kube-proxy"):
        assert re.search(rf"^{component} +running \(pid \d+\)$", status, re.M), status
    node = json.loads(kubectl("get", "node", NODE, "-o", "json").stdout)
    ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}
    assert ready["Ready"] == "True", node["status"]["conditions"]
    addresses = {a["type"]: a["address"] for a in node["status"]["addresses"]}
    assert addresses["InternalIP"] == NODE_IP
    assert node["spec"]["podCIDR"] == str(NODE_POD_CIDR)
    assert node["status"]["nodeInfo"]["kubeletVersion"] == "v1.34.4"
    kubectl("get", "serviceaccount", "default", "-n", "default")
    # `up` again is a no-op that says so.
    again = cluster("up")
    assert "already running" in again.stderr
    assert "cluster: started" not in again.stderr, again.stderr


def test_pods_run_and_reach_each_other_and_the_api_server(up: None) -> None:
    namespace = f"cluster-up-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", namespace)
    try:
        for name in ("a", "b"):
            kubectl("apply", "-n", namespace, "-f", "-", input=pause_pod(name))
        pods = {}
        for name in ("a", "b"):
            pods[name] = wait_for(
                f"pod {name} Running with an IP",
                lambda name=name: (lambda p: p if p["status"].get("phase") == "Running"
                                   and p["status"].get("podIP") else None)(
                    pod_json(namespace, name)))
        ips = {name: pod["status"]["podIP"] for name, pod in pods.items()}
        for ip in ips.values():
            assert ipaddress.ip_address(ip) in NODE_POD_CIDR, ips
        assert ips["a"] != ips["b"]
        # The host reaches the pods on the bridge.
        for ip in ips.values():
            sh("ping", "-c", "1", "-W", "2", ip)
        # From pod b's network namespace: pod a, and the API server at the ClusterIP of
        # the `kubernetes` service (kube-proxy's DNAT to the node address), with the
        # pod's own service-account token and the CA kubelet mounted for it.
        b = pods["b"]
        pid = task_pid(b["status"]["containerStatuses"][0]["containerID"].split("://")[1])
        in_netns(pid, "ping", "-c", "1", "-W", "2", ips["a"])
        volumes = KUBELET_ROOT / "pods" / b["metadata"]["uid"] / "volumes" / "kubernetes.io~projected"
        token_dir = next(volumes.glob("kube-api-access-*"))
        token = (token_dir / "token").read_text()
        api = in_netns(pid, "curl", "-sS", "--max-time", "10", "--cacert",
                       str(token_dir / "ca.crt"), "-H", f"Authorization: Bearer {token}",
                       "https://10.96.0.1:443/api")
        assert json.loads(api.stdout)["kind"] == "APIVersions", api.stdout
    finally:
        kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def test_down_leaves_nothing_and_up_brings_it_back(up: None) -> None:
    try:
        started = time.monotonic()
        cluster("down")
        down_secs = time.monotonic() - started
        left = leftovers()
        assert not any(left.values()), f"left behind by down: {left}"
        assert cluster_status_code() != 0
        # Certificates and kubeconfigs stay; `down` again succeeds with nothing up.
        assert (STATE / "pki" / "ca.crt").is_file()
        cluster("down")
        assert down_secs < 120, f"down took {down_secs:.0f} s"
    finally:
        # Back up for the cluster tests after this one (and for developers).
        cluster("up")
    assert cluster_status_code() == 0
    assert json.loads(kubectl("get", "node", NODE, "-o", "json").stdout)["spec"]["podCIDR"]


def cluster_status_code() -> int:
    return sh(str(CLUSTER_SH), "status", check=False).returncode
