"""VMs and containers side by side on the cluster's pod network: the unchanged example VM
(masquerade binding) and a bridge-bound variant get their launcher pod's network from the
cluster's CNI; the node agent wires the guest into the pod's namespace; a plain busybox
container pod and the guest reach each other with ping and TCP in both directions. The
guest is driven through its serial console, reached through the node agent
(`ironvisor-handler console` in the agent's pod)."""

from __future__ import annotations

import json
import os

import pytest

from tests.cluster.conftest import NAMESPACE_SYSTEM, diagnostics
from tests.cluster.kube import REPO_ROOT, Kubectl, wait_for
from tests.cluster.test_vm_lifecycle import BOOT_TIMEOUT, launcher_pod, vmi_running
from tests.standalone.node import Console

pytestmark = pytest.mark.cluster

EXAMPLE = (REPO_ROOT / "examples" / "vm-small.yaml").read_text()
BUSYBOX = "docker.io/ironvisor/busybox:1.35"
BB = "/bin/busybox"
POD_PORT, VM_PORT = 8080, 5555
#: The guest's udhcpc hook: configure eth0 and the default route from the lease.
DHCP_SCRIPT = ("printf '%s\\n' '#!/bin/sh' '[ \"$1\" = bound ] || exit 0' "
               "'ip addr add $ip/$mask dev $interface' "
               "'[ -n \"$router\" ] && ip route add default via $router' >/tmp/dhcp.sh; "
               "chmod +x /tmp/dhcp.sh")


def busybox_pod(name: str) -> str:
    """A plain container: answers one line on TCP POD_PORT, again and again, and keeps
    what each client sent in /tmp/got."""
    serve = (f"while true; do echo pod-says-hello | {BB} nc -l -p {POD_PORT} > /tmp/got.new;"
             " mv /tmp/got.new /tmp/got; done")
    return json.dumps({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
            "name": "busybox", "image": BUSYBOX, "imagePullPolicy": "Never",
            "command": [BB, "sh", "-c", serve]}]},
    })


def handler_console(k: Kubectl, ns: str, vmi: str) -> Console:
    """The VMI's serial console through the node agent of its node."""
    node = k.json("get", "vmi", vmi, "-n", ns)["status"]["nodeName"]
    pods = k.json("get", "pods", "-n", NAMESPACE_SYSTEM, "-l",
                  "app.kubernetes.io/name=ironvisor-handler",
                  "--field-selector", f"spec.nodeName={node}")["items"]
    assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
    argv = ["kubectl", "exec", "-i", "-n", NAMESPACE_SYSTEM, pods[0]["metadata"]["name"],
            "--", "ironvisor-handler", "console", f"{ns}/{vmi}"]
    return Console.spawn(argv, raw=True, env={**os.environ, **k.env})


def guest_shell(console: Console) -> None:
    """Waits for the guest's init on the console (replayed from the boot ring) and for a
    shell prompt."""
    console.expect("IRONVISOR-GUEST-INIT-REACHED", timeout=BOOT_TIMEOUT)
    console.send("\r")
    console.expect(r"[#$] ", timeout=60)


def guest_dhcp(console: Console) -> str:
    """Brings eth0 up with the address the node agent's DHCP server offers; the address."""
    console.run(DHCP_SCRIPT, "IV-SCRIPT")
    out = console.run("ip link set eth0 up; udhcpc -i eth0 -q -f -n -t 10 -s /tmp/dhcp.sh",
                      "IV-DHCP", timeout=90)
    assert "IV-DHCP-rc=0" in out, out
    return console.run("ip -4 -o addr show dev eth0", "IV-ADDR")


def pod_exec(k: Kubectl, ns: str, pod: str, script: str, check: bool = True) -> str:
    done = k.run("exec", "-n", ns, pod, "--", BB, "sh", "-c", script, check=check, timeout=60)
    return done.stdout + done.stderr


def running_pod_ip(k: Kubectl, ns: str, name: str) -> str:
    pod = wait_for(f"pod {name} Running", lambda: (lambda p: p if p and p["status"].get(
        "phase") == "Running" and p["status"].get("podIP") else None)(k.get("pod", name, ns)),
        120, describe=lambda: diagnostics(k, ns))
    return pod["status"]["podIP"]


def check_side_by_side(k: Kubectl, ns: str, vmi_name: str, expect_guest_ip) -> None:
    """Pod ↔ VM over the pod network, both ways, ping and TCP."""
    k.apply(busybox_pod("bb"), ns)
    bb_ip = running_pod_ip(k, ns, "bb")
    vmi = vmi_running(k, ns, vmi_name)
    launcher = launcher_pod(k, ns, vmi)
    vm_ip = launcher["status"]["podIP"]
    # The node agent reports the interface with the pod IP (KubeVirt does so for both
    # bindings), and `kubectl get vmi` shows it.
    interfaces = wait_for("status.interfaces of the VMI", lambda: (
        k.get("vmi", vmi_name, ns) or {}).get("status", {}).get("interfaces"), 60,
        describe=lambda: diagnostics(k, ns))
    assert interfaces[0]["ipAddress"] == vm_ip, interfaces
    assert interfaces[0]["name"] == "default" and interfaces[0]["mac"], interfaces
    assert vm_ip in k.run("get", "vmi", vmi_name, "-n", ns).stdout

    console = handler_console(k, ns, vmi_name)
    try:
        guest_shell(console)
        addr = guest_dhcp(console)
        assert expect_guest_ip(vm_ip) in addr, addr
        # VM → pod: ping, then TCP to the busybox server.
        out = console.run(f"ping -c 2 -W 5 {bb_ip}", "IV-PING", timeout=60)
        assert "IV-PING-rc=0" in out, out
        out = console.run(f"echo guest-says-hi | nc {bb_ip} {POD_PORT}", "IV-TCP", timeout=60)
        assert "pod-says-hello" in out, out
        got = wait_for("the busybox pod to receive the guest's line", lambda: pod_exec(
            k, ns, "bb", "cat /tmp/got", check=False).strip() == "guest-says-hi", 30)
        assert got
        # Pod → VM: ping the VM's address, then TCP to a listener in the guest.
        out = pod_exec(k, ns, "bb", f"{BB} ping -c 2 -W 5 {vm_ip}")
        assert " 0% packet loss" in out, out
        console.run(f"(echo vm-says-hello | nc -l -p {VM_PORT} > /tmp/got) & sleep 0", "IV-LISTEN")
        out = wait_for("the guest's TCP listener to answer", lambda: (lambda o: o if
                       "vm-says-hello" in o else None)(pod_exec(
                           k, ns, "bb", f"echo pod-says-hi | {BB} nc -w 5 {vm_ip} {VM_PORT}",
                           check=False)), 30)
        assert "vm-says-hello" in out
        out = console.run("cat /tmp/got", "IV-GOT")
        assert "pod-says-hi" in out, out
    finally:
        console.close()


def test_masquerade_vm_and_a_container_reach_each_other(ironvisor: Kubectl,
                                                         namespace: str) -> None:
    """The unchanged example: the guest keeps 10.0.2.2 behind NAT to the pod IP."""
    ironvisor.apply(EXAMPLE, namespace)
    check_side_by_side(ironvisor, namespace, "small", lambda _vm_ip: "10.0.2.2/24")


def test_bridge_vm_takes_the_pod_ip_and_reaches_a_container(ironvisor: Kubectl,
                                                            namespace: str) -> None:
    """Bridge binding: the guest takes the pod IP itself (DHCP from the node agent)."""
    bridged = EXAMPLE.replace("masquerade: {}", "bridge: {}").replace(
        "name: small", "name: bridged")
    ironvisor.apply(bridged, namespace)
    check_side_by_side(ironvisor, namespace, "bridged", lambda vm_ip: f"{vm_ip}/")


def test_console_through_the_node_agent_names_what_is_wrong(ironvisor: Kubectl,
                                                            namespace: str) -> None:
    pods = ironvisor.json("get", "pods", "-n", NAMESPACE_SYSTEM, "-l",
                          "app.kubernetes.io/name=ironvisor-handler")["items"]
    handler = pods[0]["metadata"]["name"]
    done = ironvisor.run("exec", "-n", NAMESPACE_SYSTEM, handler, "--", "ironvisor-handler",
                         "console", f"{namespace}/absent", check=False)
    assert done.returncode != 0
    assert f"virtualmachineinstance {namespace}/absent not found" in done.stderr, done.stderr
    done = ironvisor.run("exec", "-n", NAMESPACE_SYSTEM, handler, "--", "ironvisor-handler",
                         "console", "no-slash", check=False)
    assert done.returncode != 0 and "is not NAMESPACE/NAME" in done.stderr, done.stderr


def test_an_interface_off_the_pod_network_fails_the_instance_saying_why(
        ironvisor: Kubectl, namespace: str) -> None:
    """Multus networks need a meta plugin this cluster does not run: the instance fails
    with the reason and a message that names the interface, and the node agent says so
    in an event; nothing waits forever."""
    k, ns = ironvisor, namespace
    vmi = {
        "apiVersion": "ironvisor.io/v1alpha1", "kind": "VirtualMachineInstance",
        "metadata": {"name": "multus"},
        "spec": {
            "domain": {"memory": {"guest": "64Mi"},
                       "firmware": {"kernelBoot": {"container": {
                           "image": "ironvisor/guest-kernel:debian-6.1",
                           "kernelPath": "/boot/vmlinuz", "initrdPath": "/boot/initrd.img"}}},
                       "devices": {"disks": [{"name": "rootdisk"}],
                                   "interfaces": [{"name": "secondary", "bridge": {}}]}},
            "networks": [{"name": "secondary", "multus": {"networkName": "net1"}}],
            "volumes": [{"name": "rootdisk",
                         "containerDisk": {"image": "ironvisor/rootfs:busybox"}}],
        },
    }
    k.apply(json.dumps(vmi), ns)
    failed = wait_for("the VMI to fail", lambda: (lambda v: v if v and v.get(
        "status", {}).get("phase") == "Failed" else None)(k.get("vmi", "multus", ns)), 180,
        describe=lambda: diagnostics(k, ns))
    assert failed["status"]["phase"] == "Failed"
    # The controller's event for the ending carries the launcher's reason and message.
    events = wait_for("the NetworkUnsupported event", lambda: [
        e for e in k.events(ns, "multus") if e.get("reason") == "NetworkUnsupported"], 60,
        describe=lambda: diagnostics(k, ns))
    assert 'interface "secondary" is not on a pod network' in events[0].get("note", ""), events
