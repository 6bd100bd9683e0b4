"""`virtctl port-forward` on the real cluster: a guest's TCP port reached through
kube-apiserver, Ironvisor's api-server (the `portforward` subresource) and the node agent,
which connects to the guest inside the launcher pod's network namespace. Over standard
input and output (`--stdio`, what `virtctl ssh` uses as ssh's ProxyCommand) and on a local
listening port; a closed guest port and a user without the right are refused clearly.
The test's namespace enforces the Pod Security "restricted" level, and the launcher pod's
processes (virt-launcher, libvirt, the launcher, QEMU) are checked to be its unprivileged
user with no capability."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.cluster.kube import Kubectl, wait_for
from tests.cluster.test_apiserver import console_of, user_kubeconfig, virtctl
from tests.cluster.test_vm_lifecycle import EXAMPLE, launcher_pod, vmi_running
from tests.cluster.test_vm_network import guest_dhcp, guest_shell
from tests.standalone.node import VIRTCTL

pytestmark = pytest.mark.cluster


def virtctl_env(k: Kubectl) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "IRONVISOR_SOCKET"}
    env.update(k.env)
    return env


#: The launcher pods' user (ironvisor_crds::cluster::LAUNCHER_UID).
LAUNCHER_UID = 107


def pod_processes(pod_uid: str) -> dict[int, dict[str, str]]:
    """The node's processes in the pod's cgroups: pid -> name, Uid and CapEff lines."""
    found: dict[int, dict[str, str]] = {}
    marks = (f"pod{pod_uid}", f"pod{pod_uid.replace('-', '_')}")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cgroups = (entry / "cgroup").read_text()
            status = (entry / "status").read_text()
        except OSError:
            continue
        if not any(mark in cgroups for mark in marks):
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        found[int(entry.name)] = {key: fields[key].strip() for key in ("Name", "Uid", "CapEff")}
    return found


def listen_once(console, port: int, greeting: str, got: str) -> None:
    """A one-connection TCP server in the guest: sends `greeting`, keeps what it gets."""
    console.run(f"(echo {greeting} | nc -l -p {port} > {got}) & sleep 1", "IV-LISTEN")


def test_port_forward_reaches_a_guest_port(ironvisor: Kubectl, namespace: str,
                                           tmp_path: Path) -> None:
    k, ns = ironvisor, namespace
    # The launcher pod meets the Pod Security "restricted" level: admitted where it is
    # enforced (non-root, no capability, RuntimeDefault seccomp, no privilege escalation,
    # no host namespaces or paths, devices from device plugins).
    k.run("label", "namespace", ns, "pod-security.kubernetes.io/enforce=restricted",
          "pod-security.kubernetes.io/enforce-version=latest")
    k.apply(EXAMPLE, ns)
    vmi = vmi_running(k, ns)
    pod = launcher_pod(k, ns, vmi)
    processes = pod_processes(pod["metadata"]["uid"])
    names = sorted({p["Name"] for p in processes.values()})
    print(f"\nlauncher pod processes: {names}")
    # QEMU (the guest) and everything around it run as the launcher user, capability-less.
    assert any(name.startswith("qemu-system") for name in names), names
    for pid, process in processes.items():
        if process["Name"] == "pause":
            continue
        assert process["Uid"].split() == [str(LAUNCHER_UID)] * 4, (pid, process)
        assert int(process["CapEff"], 16) == 0, (pid, process)
    console = console_of(k, ns, "small")
    try:
        guest_shell(console)
        # The test guest configures its network only when asked.
        guest_dhcp(console)

        # --stdio: the request goes in, the guest's answer comes out, and end-of-file
        # half-closes so the answer is not cut off.
        listen_once(console, 7777, "guest-says-hello", "/tmp/pf-got")
        done = subprocess.run([str(VIRTCTL), "port-forward", "-n", ns, "--stdio", "vm/small",
                               "7777"], input="client-says-hi\n", capture_output=True,
                              text=True, timeout=120, env=virtctl_env(k))
        assert done.returncode == 0, done.stderr
        assert "guest-says-hello" in done.stdout, (done.stdout, done.stderr)
        out = console.run("cat /tmp/pf-got", "IV-GOT")
        assert "client-says-hi" in out, out

        # A local port, for any TCP client.
        listen_once(console, 7778, "listener-says-hello", "/tmp/pf-got2")
        forward = subprocess.Popen([str(VIRTCTL), "port-forward", "-n", ns, "vm/small",
                                    "17778:7778"], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, env=virtctl_env(k))
        try:
            line = forward.stdout.readline()
            assert "Forwarding from 127.0.0.1:17778 -> 7778" in line, line
            with socket.create_connection(("127.0.0.1", 17778), timeout=60) as client:
                client.sendall(b"tcp-client-says-hi\n")
                client.shutdown(socket.SHUT_WR)
                answer = b""
                while chunk := client.recv(4096):
                    answer += chunk
            assert b"listener-says-hello" in answer, answer
            # The guest's end-of-file came back before the client's bytes had to reach it
            # (each direction ends on its own); they still arrive.
            wait_for("the client's bytes in the guest",
                     lambda: "tcp-client-says-hi" in console.run("cat /tmp/pf-got2", "IV-GOT2"),
                     30)
        finally:
            forward.kill()
            forward.wait()
    finally:
        console.close()

    # Nothing listens on the port: a clear error naming it, not a hang.
    started = time.monotonic()
    refused = subprocess.run([str(VIRTCTL), "port-forward", "-n", ns, "--stdio", "vm/small",
                              "7779"], input="", capture_output=True, text=True, timeout=120,
                             env=virtctl_env(k))
    assert refused.returncode != 0
    assert "7779" in refused.stderr and "connecting to the guest" in refused.stderr, \
        refused.stderr
    assert time.monotonic() - started < 60

    # RBAC: `view` may not, `edit` may.
    viewer = user_kubeconfig(k, ns, "viewer", "view", tmp_path)
    denied = virtctl(viewer, "port-forward", "--stdio", "vm/small", "22")
    assert denied.returncode != 0 and "forbidden" in denied.stderr, denied.stderr
    assert "portforward" in denied.stderr, denied.stderr

    # A VM that does not exist, and bad arguments.
    missing = virtctl(k, "port-forward", "-n", ns, "--stdio", "vm/nope", "22")
    assert missing.returncode != 0 and "not found" in missing.stderr, missing.stderr
    bad = virtctl(k, "port-forward", "-n", ns, "vm/small", "99999")
    assert bad.returncode != 0 and "99999" in bad.stderr, bad.stderr
    wait_for("the VM still running", lambda: k.get("vmi", "small", ns)["status"]["phase"]
             == "Running", 30)
