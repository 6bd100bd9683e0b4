"""VirtualMachines on the real cluster, end to end: `kubectl apply` of the unchanged
example → VMI → launcher pod scheduled by kube-scheduler and run by the kubelet →
the guest booting under software emulation inside the pod (these hosts' /dev/kvm is PVM)
→ stop/start/restart by run strategy → RerunOnFailure after the launcher pod is killed →
delete leaving nothing. Every assertion reads the real API server or the node."""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.cluster.conftest import diagnostics
from tests.cluster.kube import REPO_ROOT, Kubectl, condition, phase, wait_for

pytestmark = pytest.mark.cluster

EXAMPLE = (REPO_ROOT / "examples" / "vm-small.yaml").read_text()
GUEST_MARKER = "IRONVISOR-GUEST-INIT-REACHED"
BOOT_TIMEOUT = 300


def vmi_running(k: Kubectl, ns: str, name: str = "small", not_uid: str | None = None) -> dict:
    def probe():
        vmi = k.get("vmi", name, ns)
        if vmi and phase(vmi) == "Running" and vmi["metadata"]["uid"] != not_uid:
            return vmi
        return None
    return wait_for(f"VMI {ns}/{name} Running", probe, BOOT_TIMEOUT,
                    describe=lambda: diagnostics(k, ns))


def launcher_pod(k: Kubectl, ns: str, vmi: dict) -> dict:
    pods = k.json("get", "pods", "-n", ns, "-l",
                  f"ironvisor.io/created-by={vmi['metadata']['uid']}")["items"]
    assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
    return pods[0]


def console_log(k: Kubectl, ns: str, pod: str) -> str:
    return k.run("logs", "-n", ns, pod, "-c", "compute", check=False).stdout


def gone(k: Kubectl, ns: str, kind: str, name: str) -> bool:
    return k.get(kind, name, ns) is None


def no_launcher_pods(k: Kubectl, ns: str) -> bool:
    return not k.json("get", "pods", "-n", ns, "-l",
                      "app.kubernetes.io/component=virt-launcher")["items"]


def patch_strategy(k: Kubectl, ns: str, strategy: str) -> None:
    k.run("patch", "vm", "small", "-n", ns, "--type=merge",
          "-p", f'{{"spec":{{"runStrategy":"{strategy}"}}}}')


def test_example_vm_runs_in_a_launcher_pod(ironvisor: Kubectl, namespace: str) -> None:
    k, ns = ironvisor, namespace
    k.apply(EXAMPLE, ns)
    vmi = vmi_running(k, ns)
    pod = launcher_pod(k, ns, vmi)
    assert pod["status"]["phase"] == "Running"
    node = pod["spec"]["nodeName"]
    assert vmi["status"]["nodeName"] == node
    assert condition(vmi, "Ready")["status"] == "True"
    assert condition(vmi, "PodScheduled")["status"] == "True"
    # The guest's serial console: the boot reached the guest's init inside the pod.
    wait_for("the guest's init marker on the console", lambda: GUEST_MARKER in console_log(
        k, ns, pod["metadata"]["name"]), 120, describe=lambda: diagnostics(k, ns))
    # The pod is an ordinary, unprivileged pod that asked for guest memory + overhead.
    compute = next(c for c in pod["spec"]["containers"] if c["name"] == "compute")
    assert not compute.get("securityContext", {}).get("privileged")
    assert compute["resources"]["requests"]["memory"].endswith("Mi")
    assert [c["name"] for c in pod["spec"]["initContainers"]] == [
        "tools", "volume-rootdisk", "kernel-boot"]
    # The VM reports Running / Ready, and kubectl shows it.
    vm = wait_for("VM printableStatus Running", lambda: (
        (k.get("vm", "small", ns) or {}).get("status", {}).get("printableStatus") == "Running"
        and k.get("vm", "small", ns)), 60, describe=lambda: diagnostics(k, ns))
    assert vm["status"]["ready"] is True
    table = k.run("get", "vm,vmi", "-n", ns).stdout
    assert "Running" in table and node in table
    reasons = {e["reason"] for e in k.events(ns, "small")}
    assert {"SuccessfulCreate", "Started"} <= reasons, reasons
    # The node agent: the node says what it can run, /dev/kvm and /dev/net/tun are
    # device-plugin resources, and the instance says how it is isolated, with a warning.
    node_obj = k.get("node", node)
    labels = node_obj["metadata"]["labels"]
    assert labels["ironvisor.io/isolation"] in ("hardware", "emulation")
    allocatable = node_obj["status"]["allocatable"]
    assert int(allocatable["devices.ironvisor.io/kvm"]) > 0, allocatable
    assert int(allocatable["devices.ironvisor.io/tun"]) > 0, allocatable
    assert compute["resources"]["limits"]["devices.ironvisor.io/kvm"] == "1"
    if labels["ironvisor.io/isolation"] == "emulation":
        wait_for("status.isolation Emulation and a SoftwareEmulation event", lambda: (
            (k.get("vmi", "small", ns) or {}).get("status", {}).get("isolation") == "Emulation"
            and "SoftwareEmulation" in {e["reason"] for e in k.events(ns, "small")}), 60,
            describe=lambda: diagnostics(k, ns))


def test_stop_start_restart_by_run_strategy(ironvisor: Kubectl, namespace: str) -> None:
    k, ns = ironvisor, namespace
    k.apply(EXAMPLE, ns)
    first = vmi_running(k, ns)

    patch_strategy(k, ns, "Halted")
    wait_for("the VMI to be deleted after Halted", lambda: gone(k, ns, "vmi", "small"),
             120, describe=lambda: diagnostics(k, ns))
    wait_for("the launcher pod to be gone", lambda: no_launcher_pods(k, ns), 120,
             describe=lambda: diagnostics(k, ns))
    vm = wait_for("VM printableStatus Stopped", lambda: (
        (k.get("vm", "small", ns) or {}).get("status", {}).get("printableStatus") == "Stopped"
        and k.get("vm", "small", ns)), 60)
    assert vm["status"]["created"] is False

    patch_strategy(k, ns, "Always")
    second = vmi_running(k, ns, not_uid=first["metadata"]["uid"])

    # Restart: the VMI is deleted and the VM (Always) makes a new one.
    k.run("delete", "vmi", "small", "-n", ns, "--wait=false")
    third = vmi_running(k, ns, not_uid=second["metadata"]["uid"])
    assert third["metadata"]["uid"] != second["metadata"]["uid"]


def test_rerun_on_failure_restarts_after_the_launcher_pod_is_killed(
        ironvisor: Kubectl, namespace: str) -> None:
    k, ns = ironvisor, namespace
    k.apply(EXAMPLE.replace("runStrategy: Always", "runStrategy: RerunOnFailure"), ns)
    first = vmi_running(k, ns)
    pod = launcher_pod(k, ns, first)["metadata"]["name"]
    k.run("delete", "pod", pod, "-n", ns, "--grace-period=0", "--force", check=False)
    wait_for("the first VMI to fail", lambda: phase(k.get("vmi", "small", ns)) == "Failed"
             or (k.get("vmi", "small", ns) or {"metadata": {"uid": first["metadata"]["uid"]}}
                 )["metadata"]["uid"] != first["metadata"]["uid"], 120,
             describe=lambda: diagnostics(k, ns))
    second = vmi_running(k, ns, not_uid=first["metadata"]["uid"])
    assert second["metadata"]["uid"] != first["metadata"]["uid"]
    reasons = {e["reason"] for e in k.events(ns, "small")}
    assert "LauncherPodGone" in reasons or "Restarting" in reasons, reasons


def test_delete_leaves_nothing(ironvisor: Kubectl, namespace: str) -> None:
    k, ns = ironvisor, namespace
    k.apply(EXAMPLE, ns)
    vmi = vmi_running(k, ns)
    pod = launcher_pod(k, ns, vmi)["metadata"]["name"]
    # The node agent serves the guest's DHCP inside the pod's network namespace.
    uid = vmi["metadata"]["uid"]
    assert dhcp_servers_of(uid), "no DHCP server for the wired guest"
    k.run("delete", "vm", "small", "-n", ns, "--wait=true", "--timeout=180s", timeout=200)
    assert gone(k, ns, "vm", "small")
    assert gone(k, ns, "vmi", "small")
    wait_for("the launcher pod to be gone", lambda: gone(k, ns, "pod", pod), 60)
    # Nothing of the VM runs on the node any more: no QEMU or launcher of this pod.
    def node_clean() -> bool:
        ps = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True).stdout
        return not [line for line in ps.splitlines()
                    if "qemu-system" in line and f"guest={ns}" in line or pod in line]
    wait_for("no process of the VM on the node", node_clean, 60)
    # ... and the node agent let go of the pod's network: no DHCP server, no named netns.
    wait_for("the node agent to release the pod network", lambda: not dhcp_servers_of(uid), 60)


def dhcp_servers_of(vmi_uid: str) -> list[str]:
    """dnsmasq processes the node agent runs for an instance (seen with the host's pids;
    their state directory is named after the instance's pod namespace)."""
    ps = subprocess.run(["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True).stdout
    netns = pod_netns_name(vmi_uid)
    return [line for line in ps.splitlines()
            if "dnsmasq" in line and f"/pod-network/{netns}/" in line]


def pod_netns_name(vmi_uid: str) -> str:
    """ironvisor_net::pod_netns_name: `iv-` and 10 hex digits of FNV-1a of `pod:<uid>`."""
    value = 0xcbf29ce484222325
    for byte in f"pod:{vmi_uid}".encode():
        value = ((value ^ byte) * 0x100000001b3) % (1 << 64)
    return f"iv-{value >> 24:010x}"


def test_vm_needing_more_memory_than_the_node_is_unschedulable(
        ironvisor: Kubectl, namespace: str) -> None:
    k, ns = ironvisor, namespace
    k.apply(EXAMPLE.replace("guest: 256Mi", "guest: 512Gi"), ns)
    vmi = wait_for("PodScheduled False on the VMI", lambda: (
        (c := condition(k.get("vmi", "small", ns), "PodScheduled")) and c["status"] == "False"
        and k.get("vmi", "small", ns)), 120, describe=lambda: diagnostics(k, ns))
    scheduled = condition(vmi, "PodScheduled")
    assert scheduled["reason"] == "Unschedulable"
    assert "Insufficient memory" in scheduled["message"], scheduled
    assert phase(vmi) == "Scheduling"
    wait_for("VM printableStatus ErrorUnschedulable", lambda: (
        (k.get("vm", "small", ns) or {}).get("status", {}).get("printableStatus")
        == "ErrorUnschedulable"), 60, describe=lambda: diagnostics(k, ns))


def test_vm_requiring_hardware_kvm_stays_pending_on_an_emulation_node(
        ironvisor: Kubectl, namespace: str) -> None:
    k, ns = ironvisor, namespace
    k.apply((REPO_ROOT / "examples" / "vm-hardware-isolated.yaml").read_text(), ns)
    name = k.json("get", "vm", "-n", ns)["items"][0]["metadata"]["name"]
    vmi = wait_for("PodScheduled False on the hardware-isolated VMI", lambda: (
        (c := condition(k.get("vmi", name, ns), "PodScheduled")) and c["status"] == "False"
        and k.get("vmi", name, ns)), 120, describe=lambda: diagnostics(k, ns))
    message = condition(vmi, "PodScheduled")["message"]
    assert "node affinity/selector" in message or "node selector" in message, message
    time.sleep(5)
    assert phase(k.get("vmi", name, ns)) == "Scheduling"
