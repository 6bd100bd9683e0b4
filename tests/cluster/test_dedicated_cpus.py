"""`dedicatedCpuPlacement` on the real cluster: the test cluster's kubelet runs the static
CPU manager policy (scripts/cluster.sh), the node agent labels the node
`ironvisor.io/cpumanager=true`, the controller makes the launcher pod Guaranteed with
whole CPUs and selects that label, the kubelet gives the pod a CPU of its own, and
virt-launcher pins the guest's vCPU thread to it. Every assertion reads the API server,
the kubelet's own checkpoint or the node's /proc."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cluster.conftest import diagnostics
from tests.cluster.kube import REPO_ROOT, Kubectl, condition, phase, wait_for
from tests.cluster.test_vm_lifecycle import GUEST_MARKER, console_log, launcher_pod, vmi_running

pytestmark = pytest.mark.cluster

EXAMPLE = (REPO_ROOT / "examples" / "vm-dedicated.yaml").read_text()
CPU_MANAGER_STATE = Path("/var/lib/kubelet/cpu_manager_state")
CPU_MANAGER_LABEL = "ironvisor.io/cpumanager"


def cpu_list(text: str) -> set[int]:
    """A kernel CPU list ("0-2,5") as a set."""
    cpus: set[int] = set()
    for part in filter(None, text.strip().split(",")):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def pod_processes(pod_uid: str) -> list[int]:
    """The node's processes in the pod's cgroups (cgroup v1 paths carry the pod uid)."""
    marker = "pod" + pod_uid
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if marker in (proc / "cgroup").read_text():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def vcpu_threads(pids: list[int]) -> dict[int, set[int]]:
    """The guest's vCPU threads among `pids` (QEMU names them "CPU n/TCG" or "CPU n/KVM";
    the KVM launcher "vcpu n") and the CPUs each may run on."""
    threads = {}
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                name = (task / "comm").read_text().strip()
                status = (task / "status").read_text()
            except OSError:
                continue
            if name.startswith(("CPU ", "vcpu")):
                allowed = next(line.split(":", 1)[1] for line in status.splitlines()
                               if line.startswith("Cpus_allowed_list:"))
                threads[int(task.name)] = cpu_list(allowed)
    return threads


def test_a_dedicated_vm_gets_a_cpu_of_its_own_and_its_vcpu_is_pinned_to_it(
        ironvisor: Kubectl, namespace: str) -> None:
    k, ns = ironvisor, namespace
    node = k.json("get", "nodes")["items"][0]
    assert node["metadata"]["labels"].get(CPU_MANAGER_LABEL) == "true", node["metadata"]["labels"]
    k.apply(EXAMPLE, ns)
    vmi = vmi_running(k, ns, "dedicated")
    pod = launcher_pod(k, ns, vmi)
    assert pod["status"]["qosClass"] == "Guaranteed"
    assert pod["spec"]["nodeSelector"][CPU_MANAGER_LABEL] == "true"
    wait_for("the guest's init marker on the console", lambda: GUEST_MARKER in console_log(
        k, ns, pod["metadata"]["name"]), 180, describe=lambda: diagnostics(k, ns))

    # The kubelet's own record: the compute container holds CPUs the shared pool lacks.
    state = json.loads(CPU_MANAGER_STATE.read_text())
    assert state["policyName"] == "static"
    assigned = cpu_list(state["entries"][pod["metadata"]["uid"]]["compute"])
    shared = cpu_list(state["defaultCpuSet"])
    assert len(assigned) == 1 and not assigned & shared, state

    # The guest's vCPU thread runs on that CPU alone.
    threads = wait_for("the vCPU thread in the launcher pod", lambda: vcpu_threads(
        pod_processes(pod["metadata"]["uid"])), 60, describe=lambda: diagnostics(k, ns))
    assert len(threads) == 1, threads
    assert list(threads.values()) == [assigned], (threads, assigned)

    # A Burstable launcher pod (a VM with shared CPUs) stays off the dedicated CPU.
    k.apply((REPO_ROOT / "examples" / "vm-small.yaml").read_text(), ns)
    small = vmi_running(k, ns, "small")
    other = launcher_pod(k, ns, small)
    assert other["status"]["qosClass"] == "Burstable"
    others = wait_for("the other VM's vCPU thread", lambda: vcpu_threads(
        pod_processes(other["metadata"]["uid"])), 60, describe=lambda: diagnostics(k, ns))
    for allowed in others.values():
        assert not allowed & assigned, (allowed, assigned)


def test_a_dedicated_vm_needing_more_cpus_than_the_node_has_is_unschedulable(
        ironvisor: Kubectl, namespace: str) -> None:
    k, ns = ironvisor, namespace
    k.apply(EXAMPLE.replace("cores: 1", "cores: 4"), ns)
    vmi = wait_for("PodScheduled False on the VMI", lambda: (
        (c := condition(k.get("vmi", "dedicated", ns), "PodScheduled")) and c["status"] == "False"
        and k.get("vmi", "dedicated", ns)), 120, describe=lambda: diagnostics(k, ns))
    scheduled = condition(vmi, "PodScheduled")
    assert scheduled["reason"] == "Unschedulable"
    assert "Insufficient cpu" in scheduled["message"], scheduled
    assert phase(vmi) == "Scheduling"
