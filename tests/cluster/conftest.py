"""Fixtures of the cluster e2e tests: the real single-node Kubernetes of
scripts/cluster.sh, Ironvisor's images imported into its containerd and deploy/ applied
with kubectl -k. Nothing here is a double: every call goes to the real API server.

The cluster stays up after the session when IRONVISOR_KEEP_CLUSTER=1 (handy while
developing); otherwise the session brings it down at the end (scripts/cluster.sh down)."""

from __future__ import annotations

import os
import subprocess
import time
import uuid

import pytest

from tests.cluster.kube import (
    CLUSTER_SH, REPO_ROOT, Kubectl, cluster_env, wait_for,
)

pytestmark = pytest.mark.cluster
NAMESPACE_SYSTEM = "ironvisor-system"


@pytest.fixture(scope="session")
def kubectl() -> Kubectl:
    if os.geteuid() != 0:
        pytest.fail("the cluster e2e tests need root (scripts/cluster.sh starts kubelet)")
    up = subprocess.run([str(CLUSTER_SH), "up"], capture_output=True, text=True)
    if up.returncode != 0:
        pytest.fail(f"scripts/cluster.sh up failed ({up.returncode}):\n{up.stdout[-4000:]}\n"
                    f"{up.stderr[-4000:]}")
    k = Kubectl(cluster_env())
    yield k
    if os.environ.get("IRONVISOR_KEEP_CLUSTER") != "1":
        subprocess.run([str(CLUSTER_SH), "down"], check=False)


def diagnostics(k: Kubectl, namespace: str) -> str:
    """What a failing test prints: objects, events, controller and launcher logs."""
    parts = []
    for args in (["get", "vm,vmi,pods", "-n", namespace, "-o", "wide"],
                 ["get", "pods", "-n", NAMESPACE_SYSTEM, "-o", "wide"],
                 ["describe", "vmi", "-n", namespace],
                 ["describe", "pods", "-n", namespace],
                 ["logs", "-n", NAMESPACE_SYSTEM, "-l",
                  "app.kubernetes.io/name=ironvisor-controller", "--tail=60", "--prefix"],
                 ["logs", "-n", namespace, "-l", "app.kubernetes.io/component=virt-launcher",
                  "-c", "compute", "--tail=40", "--prefix"]):
        done = k.run(*args, check=False)
        parts.append(f"$ kubectl {' '.join(args)}\n{done.stdout}{done.stderr}")
    return "\n".join(parts)


WORKLOADS = ("deployment/ironvisor-controller", "daemonset/ironvisor-handler",
             "deployment/ironvisor-apiserver")
SUBRESOURCE_API_SERVICE = "v1alpha1.subresources.ironvisor.io"


@pytest.fixture(scope="session")
def ironvisor(kubectl: Kubectl) -> Kubectl:
    """Ironvisor deployed on the cluster: images imported, `kubectl apply -k deploy/`,
    both controller replicas ready and one of them leading, the api-server's webhooks and
    subresource API available."""
    done = subprocess.run(["python3", "-m", "images.containers", "import"], cwd=REPO_ROOT,
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"importing the images failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    kubectl.run("apply", "-k", str(REPO_ROOT / "deploy"))
    kubectl.run("wait", "--for=condition=Established", "--timeout=60s",
                "crd/virtualmachines.ironvisor.io", "crd/virtualmachineinstances.ironvisor.io")
    # Pick up freshly imported images even when the manifests did not change.
    for workload in WORKLOADS:
        kubectl.run("rollout", "restart", "-n", NAMESPACE_SYSTEM, workload)
    for workload in WORKLOADS:
        kubectl.run("rollout", "status", "-n", NAMESPACE_SYSTEM, workload, "--timeout=180s",
                    timeout=200)
    wait_ready(kubectl)
    return kubectl


def wait_ready(k: Kubectl) -> None:
    """Waits until the subresource API is available (the api-server answers, so do its
    webhooks) and a running controller replica holds the leader lease: after the
    deployment, and again after anything restarted the cluster (test_cluster_up's
    down/up)."""
    k.run("wait", "--for=condition=Available", "--timeout=180s",
          f"apiservice/{SUBRESOURCE_API_SERVICE}", timeout=190)
    wait_for("a controller replica to hold the leader lease",
             lambda: leader(k), timeout=120,
             describe=lambda: diagnostics(k, NAMESPACE_SYSTEM))


def leader(k: Kubectl) -> str | None:
    """The pod name holding the controller's leader lease, if it is one of the running
    replicas."""
    lease = k.get("lease", "ironvisor-controller", NAMESPACE_SYSTEM)
    holder = ((lease or {}).get("spec") or {}).get("holderIdentity")
    pods = k.json("get", "pods", "-n", NAMESPACE_SYSTEM, "-l",
                  "app.kubernetes.io/name=ironvisor-controller")["items"]
    running = {p["metadata"]["name"] for p in pods
               if p["status"].get("phase") == "Running"
               and not p["metadata"].get("deletionTimestamp")}
    return holder if holder in running else None


@pytest.fixture()
def namespace(ironvisor: Kubectl):
    """A fresh namespace per test, deleted afterwards (with everything in it)."""
    wait_ready(ironvisor)
    name = f"e2e-{uuid.uuid4().hex[:6]}"
    ironvisor.run("create", "namespace", name)
    yield name
    clear_namespace(ironvisor, name)


#: How long a test's VMs, instances and pods may take to go at its end.
CLEAR_TIMEOUT_S = 180.0


def clear_namespace(k: Kubectl, name: str) -> None:
    """Deletes what a test ran on the node (VMs, instances, pods), waits until all of it is
    gone, then deletes the namespace without waiting for the rest. The namespace controller
    starts on a deleted namespace no sooner than 5 s later and, finding launcher pods still
    terminating, comes back only after a share of their grace period: waiting for the
    namespace took 15.5 s per test where the pods are gone in about 2. The rest (Events,
    ConfigMaps, claims) concerns no other test, each having a namespace of its own."""
    k.run("delete", "vm,vmi", "--all", "-n", name, "--wait=false", check=False)
    k.run("delete", "pods", "--all", "-n", name, "--wait=false", check=False)
    deadline = time.monotonic() + CLEAR_TIMEOUT_S
    while time.monotonic() < deadline:
        left = k.run("get", "vm,vmi,pods", "-n", name, "-o", "name", check=False)
        if left.returncode == 0 and not left.stdout.strip():
            break
        time.sleep(0.5)
    k.run("delete", "namespace", name, "--wait=false", check=False)
