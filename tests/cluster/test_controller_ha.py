"""The controller on the real cluster: two replicas, one leader (a Lease), failover when
the leader's pod is deleted, convergence after the controller is killed mid-reconcile,
and its /metrics."""

from __future__ import annotations

import pytest

from tests.cluster.conftest import NAMESPACE_SYSTEM, diagnostics, leader, wait_ready
import os
import signal
import subprocess
import time
from pathlib import Path

from tests.cluster.kube import CLUSTER_SH, REPO_ROOT, Kubectl, phase, wait_for

pytestmark = pytest.mark.cluster

EXAMPLE = (REPO_ROOT / "examples" / "vm-small.yaml").read_text()


def controller_pods(k: Kubectl) -> list[dict]:
    return [p for p in k.json("get", "pods", "-n", NAMESPACE_SYSTEM, "-l",
                              "app.kubernetes.io/name=ironvisor-controller")["items"]
            if not p["metadata"].get("deletionTimestamp")]


def test_two_replicas_one_leader(ironvisor: Kubectl) -> None:
    k = ironvisor
    wait_ready(k)
    pods = controller_pods(k)
    assert len(pods) == 2, [p["metadata"]["name"] for p in pods]
    holder = leader(k)
    assert holder in {p["metadata"]["name"] for p in pods}
    # Only the leader reconciles: its metrics say so, the follower's do not.
    for pod in pods:
        name = pod["metadata"]["name"]
        metrics = k.run("get", "--raw",
                        f"/api/v1/namespaces/{NAMESPACE_SYSTEM}/pods/{name}:8080/proxy/metrics",
                        check=False)
        if metrics.returncode != 0:
            pytest.fail(f"metrics of {name} unreachable through the API server proxy: "
                        f"{metrics.stderr}")
        expected = "1" if name == holder else "0"
        assert f"ironvisor_controller_leader {expected}" in metrics.stdout, metrics.stdout
        assert "ironvisor_controller_reconciles_total" in metrics.stdout


def test_leader_failover_when_its_pod_is_deleted(ironvisor: Kubectl, namespace: str) -> None:
    k, ns = ironvisor, namespace
    old = leader(k)
    assert old
    k.run("delete", "pod", old, "-n", NAMESPACE_SYSTEM, "--wait=false")
    new = wait_for("another replica to take the lease", lambda: (
        (h := leader(k)) and h != old and h), 90,
        describe=lambda: diagnostics(k, NAMESPACE_SYSTEM))
    assert new != old
    # The new leader reconciles: a VM applied now runs.
    k.apply(EXAMPLE, ns)
    wait_for("the VMI Running under the new leader",
             lambda: phase(k.get("vmi", "small", ns)) == "Running", 300,
             describe=lambda: diagnostics(k, ns))
    k.run("rollout", "status", "-n", NAMESPACE_SYSTEM, "deployment/ironvisor-controller",
          "--timeout=180s", timeout=200)


def test_controller_killed_mid_reconcile_converges(ironvisor: Kubectl, namespace: str) -> None:
    k, ns = ironvisor, namespace
    k.apply(EXAMPLE, ns)
    # Kill every replica at once while the VM is being turned into a VMI and a pod.
    for pod in controller_pods(k):
        k.run("delete", "pod", pod["metadata"]["name"], "-n", NAMESPACE_SYSTEM,
              "--grace-period=0", "--force", check=False)
    wait_for("the VMI Running after the controller restarted",
             lambda: phase(k.get("vmi", "small", ns)) == "Running", 300,
             describe=lambda: diagnostics(k, ns))
    pods = k.json("get", "pods", "-n", ns, "-l",
                  "app.kubernetes.io/component=virt-launcher")["items"]
    assert len(pods) == 1, "exactly one launcher pod, none duplicated by the restart"
    k.run("rollout", "status", "-n", NAMESPACE_SYSTEM, "deployment/ironvisor-controller",
          "--timeout=180s", timeout=200)


def test_nothing_is_lost_when_the_api_server_restarts(ironvisor: Kubectl, namespace: str) -> None:
    k, ns = ironvisor, namespace
    k.apply(EXAMPLE, ns)
    before = wait_for("the VMI Running", lambda: phase(k.get("vmi", "small", ns)) == "Running"
                      and k.get("vmi", "small", ns), 300, describe=lambda: diagnostics(k, ns))
    pid_file = Path("/var/lib/ironvisor-cluster/pids/kube-apiserver.pid")
    pid = int(pid_file.read_text().split()[0])
    # Killed outright: a crash, not a graceful stop (which takes the API server over a
    # minute with watches open). Its state is etcd's.
    os.kill(pid, signal.SIGKILL)
    wait_for("the API server to exit", lambda: not Path(f"/proc/{pid}").exists()
             or "zombie" in Path(f"/proc/{pid}/status").read_text(errors="replace"), 30)
    time.sleep(2)
    up = subprocess.run([str(CLUSTER_SH), "up"], capture_output=True, text=True)
    assert up.returncode == 0, up.stderr[-2000:]
    after = wait_for("the same VMI Running again", lambda: phase(k.get("vmi", "small", ns))
                     == "Running" and k.get("vmi", "small", ns), 180,
                     describe=lambda: diagnostics(k, ns))
    assert after["metadata"]["uid"] == before["metadata"]["uid"], "the instance was replaced"
    assert k.get("vm", "small", ns) is not None
    pods = k.json("get", "pods", "-n", ns, "-l",
                  "app.kubernetes.io/component=virt-launcher")["items"]
    assert [p["metadata"]["labels"]["ironvisor.io/created-by"] for p in pods] == [
        before["metadata"]["uid"]]
    k.run("rollout", "status", "-n", NAMESPACE_SYSTEM, "deployment/ironvisor-controller",
          "--timeout=180s", timeout=200)
