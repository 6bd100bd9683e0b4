"""The KubeVirt corpus (tests/kubevirt_corpus/) on the real cluster: each VM, written for
KubeVirt (one of them exported from a KubeVirt cluster with its server fields and status),
is applied with `kubectl apply` with only its apiVersion changed, runs in a launcher pod,
and its guest shows the sockets and real-time clock the VM asked for; a SATA disk gets the
DiskBusMapped Warning event."""

from __future__ import annotations

import time

import pytest

from tests.cluster.conftest import diagnostics
from tests.cluster.kube import Kubectl, phase, wait_for
from tests.guest_machine import MARKER, guest_machine
from tests.kubevirt_cases import CASE_IDS, CASES, as_ironvisor

pytestmark = pytest.mark.cluster

BOOT_TIMEOUT = 300


def compute_log(k: Kubectl, ns: str, vmi: dict) -> str:
    pods = k.json("get", "pods", "-n", ns, "-l",
                  f"ironvisor.io/created-by={vmi['metadata']['uid']}")["items"]
    if len(pods) != 1:
        return ""
    return k.run("logs", "-n", ns, pods[0]["metadata"]["name"], "-c", "compute",
                 check=False).stdout


@pytest.mark.parametrize("name, vm, packages, rtc_offset, sata", CASES, ids=CASE_IDS)
def test_kubevirt_vm_runs_with_only_its_api_version_changed(
        ironvisor: Kubectl, namespace: str, name: str, vm: str, packages: str,
        rtc_offset: int, sata: bool) -> None:
    k, ns = ironvisor, namespace
    k.apply(as_ironvisor(name), ns)
    vmi = wait_for(f"VMI {ns}/{vm} Running", lambda: (
        (lambda obj: obj if obj and phase(obj) == "Running" else None)(k.get("vmi", vm, ns))),
        BOOT_TIMEOUT, describe=lambda: diagnostics(k, ns))
    log = wait_for("the guest's machine line on the console", lambda: (
        (lambda text: text if MARKER in text else None)(compute_log(k, ns, vmi))), 240,
        describe=lambda: diagnostics(k, ns))
    read_at = time.time()
    machine = guest_machine(log)
    assert machine["packages"] == packages, machine
    ahead = int(machine["rtc"]) - read_at
    assert rtc_offset - 300 <= ahead <= rtc_offset + 5, (ahead, machine)
    reasons = {e["reason"] for e in k.events(ns, vm)}
    assert ("DiskBusMapped" in reasons) == sata, reasons
    # Deleting works although the export carried KubeVirt's finalizer.
    k.run("delete", "vm", vm, "-n", ns, "--wait=false")
    wait_for(f"VM {ns}/{vm} gone", lambda: k.get("vm", vm, ns) is None, 120,
             describe=lambda: diagnostics(k, ns))


def test_a_vm_naming_a_missing_instance_type_waits_naming_it_until_it_exists(
        ironvisor: Kubectl, namespace: str) -> None:
    """The corpus instance-type VM with its objects renamed so that none exists yet: no
    instance is made, a Warning event names the missing instance type, and once the
    instance type and preference are applied the VM runs."""
    k, ns, vm = ironvisor, namespace, "sized-later"
    # Cluster-wide objects outlive the test's namespace (and the cluster's down and up,
    # which keep etcd's data): names of this namespace's own, deleted at the end.
    size, preference = f"{ns}.2cpu", f"{ns}.sockets"
    text = as_ironvisor("instancetype-app.yaml")
    text = (text.replace("corpus.2cpu", size).replace("corpus.sockets", preference)
            .replace("name: instancetype-app", f"name: {vm}"))
    *objects, vm_text = text.split("\n---\n")
    k.apply(vm_text, ns)
    event = wait_for("a Warning event naming the missing instance type", lambda: next(
        (e for e in k.events(ns, vm) if e["reason"] == "InstancetypeNotUsable"), None), 60,
        describe=lambda: diagnostics(k, ns))
    note = event.get("note") or event.get("message") or ""
    assert f'VirtualMachineClusterInstancetype "{size}" does not exist' in note, event
    assert k.get("vmi", vm, ns) is None
    k.apply("\n---\n".join(objects), ns)
    vmi = wait_for(f"VMI {ns}/{vm} Running", lambda: (
        (lambda obj: obj if obj and phase(obj) == "Running" else None)(k.get("vmi", vm, ns))),
        BOOT_TIMEOUT, describe=lambda: diagnostics(k, ns))
    cpu = vmi["spec"]["domain"]["cpu"]
    assert (cpu["sockets"], cpu["cores"], cpu["threads"]) == (2, 1, 1), cpu
    assert vmi["spec"]["domain"]["memory"]["guest"] == "256Mi"
    k.run("delete", "vm", vm, "-n", ns, "--wait=false")
    wait_for(f"VM {ns}/{vm} gone", lambda: k.get("vm", vm, ns) is None, 120,
             describe=lambda: diagnostics(k, ns))
    k.run("delete", "virtualmachineclusterinstancetype", size, "--ignore-not-found")
    k.run("delete", "virtualmachineclusterpreference", preference, "--ignore-not-found")
