"""The api-server on the real cluster: admission webhooks refuse bad VMs through
`kubectl apply` (field path and reason, nothing stored) and fill in defaults; the
aggregated subresource API starts, stops, restarts, pauses VMs and opens their serial
console (a WebSocket through kube-apiserver, the api-server and the node agent's mutual-TLS
link) for users RBAC allows, and answers 403 to the others, doing nothing. Users are real
service accounts with their own token-only kubeconfig, driving kubectl and the real
virtctl in cluster mode; every call goes through kube-apiserver."""

from __future__ import annotations

import base64
import http.client
import json
import os
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from tests.cluster.conftest import NAMESPACE_SYSTEM, diagnostics
from tests.cluster.kube import Kubectl, wait_for
from tests.cluster.test_vm_lifecycle import EXAMPLE, vmi_running
from tests.cluster.test_vm_network import guest_shell
from tests.standalone.node import VIRTCTL, Console

pytestmark = pytest.mark.cluster

SUBRESOURCES = "/apis/subresources.ironvisor.io/v1alpha1"


def rejected(k: Kubectl, ns: str, manifest: str, verb: str = "apply") -> str:
    """Applies (or creates) `manifest`, expects a refusal, checks nothing was stored;
    returns stderr."""
    done = k.run(verb, "-n", ns, "-f", "-", input=manifest, check=False, timeout=60)
    assert done.returncode != 0, f"accepted:\n{done.stdout}"
    assert k.json("get", "vm", "-n", ns)["items"] == [], "a refused VM was stored"
    return done.stderr


def with_changes(**replacements: str) -> str:
    manifest = EXAMPLE
    for old, new in replacements.values():
        assert old in manifest, old
        manifest = manifest.replace(old, new)
    return manifest


@pytest.mark.parametrize("case, change, expected", [
    ("unknown field", ("        cpu:\n", "        cpuu:\n          cores: 1\n        cpu:\n"),
     "spec.template.spec.domain.cpuu"),
    ("bad quantity", ("guest: 256Mi", "guest: 12 parsecs"), "spec.template.spec.domain.memory.guest"),
    ("disk without volume", ("- name: rootdisk\n              disk:",
                             "- name: nodisk\n              disk:"),
     "spec.template.spec.domain.devices.disks[0]"),
    ("running with runStrategy", ("runStrategy: Always", "runStrategy: Always\n  running: true"),
     "spec.running"),
    ("duplicate names", ("- name: cloudinitdisk\n              disk:",
                         "- name: rootdisk\n              disk:"),
     "duplicate name"),
    ("impossible CPU topology", ("cores: 1", "cores: 0"), "spec.template.spec.domain.cpu.cores"),
])
def test_bad_vms_are_refused_with_field_and_reason(ironvisor: Kubectl, namespace: str,
                                                   case: str, change: tuple[str, str],
                                                   expected: str) -> None:
    stderr = rejected(ironvisor, namespace, with_changes(change=change))
    assert expected in stderr, f"{case}: {stderr}"


def test_webhook_refusals_list_every_problem(ironvisor: Kubectl, namespace: str) -> None:
    manifest = with_changes(
        running=("runStrategy: Always", "runStrategy: Always\n  running: true"),
        disk=("- name: rootdisk\n              disk:", "- name: nodisk\n              disk:"))
    stderr = rejected(ironvisor, namespace, manifest)
    # kubectl prints the webhook's 422 with one line per cause.
    assert 'The VirtualMachine "small" is invalid' in stderr, stderr
    for field in ("spec.running", "spec.template.spec.domain.devices.disks[0].name",
                  "spec.template.spec.volumes[0].name"):
        assert f"* {field}: " in stderr, stderr


def test_hostile_input_is_answered_and_the_server_survives(ironvisor: Kubectl,
                                                           namespace: str) -> None:
    k, ns = ironvisor, namespace
    restarts_before = apiserver_restarts(k)
    huge = "x" * (2 << 20)
    manifest = with_changes(user_data=("hostname: small", f"hostname: small\n              # {huge}"))
    # create, not apply: apply would also copy the 2 MiB into an annotation, which the API
    # server refuses on its own before the webhook could.
    stderr = rejected(k, ns, manifest, verb="create")
    assert "userData" in stderr and "limit" in stderr, stderr[:2000]

    nested = "".join("  " * depth + f"n{depth}:\n" for depth in range(200)) + "  " * 200 + "v: 1\n"
    deep = EXAMPLE.replace("spec:\n  runStrategy", "spec:\n  deep:\n" + "\n".join(
        "    " + line for line in nested.splitlines()) + "\n  runStrategy", 1)
    rejected(k, ns, deep)

    # The webhooks still answer, and no replica restarted.
    k.apply(EXAMPLE.replace("runStrategy: Always", "runStrategy: Halted"), ns)
    assert apiserver_restarts(k) == restarts_before


def apiserver_restarts(k: Kubectl) -> int:
    pods = k.json("get", "pods", "-n", NAMESPACE_SYSTEM, "-l",
                  "app.kubernetes.io/name=ironvisor-apiserver")["items"]
    return sum(s.get("restartCount", 0) for p in pods
               for s in (p.get("status") or {}).get("containerStatuses") or [])


def test_defaults_are_stored_and_an_instance_spec_is_immutable(ironvisor: Kubectl,
                                                               namespace: str) -> None:
    k, ns = ironvisor, namespace
    k.apply(EXAMPLE.replace("runStrategy: Always", "running: false"), ns)
    vm = k.get("vm", "small", ns)
    spec = vm["spec"]
    # `running` became the runStrategy it means; CPU topology and isolation defaulted.
    assert spec.get("runStrategy") == "Halted" and "running" not in spec, spec
    domain = spec["template"]["spec"]["domain"]
    assert {key: domain["cpu"].get(key) for key in ("cores", "sockets", "threads")} == \
        {"cores": 1, "sockets": 1, "threads": 1}, domain["cpu"]
    assert domain["features"]["hardwareIsolation"] == "Preferred"

    k.apply(EXAMPLE.replace("name: small\n  labels", "name: tiny\n  labels", 1), ns)
    vmi = wait_for("the instance of VM tiny", lambda: k.get("vmi", "tiny", ns), 60)
    done = k.run("patch", "vmi", "tiny", "-n", ns, "--type=merge",
                 "-p", '{"spec":{"domain":{"memory":{"guest":"512Mi"}}}}', check=False)
    assert done.returncode != 0
    assert "spec.domain.memory.guest" in done.stderr and "cannot change" in done.stderr, done.stderr
    after = k.get("vmi", "tiny", ns)
    assert after["spec"]["domain"]["memory"]["guest"] == "256Mi"
    # Metadata is still writable: labels are not spec.
    k.run("label", "vmi", "tiny", "-n", ns, "checked=yes")
    assert k.get("vmi", "tiny", ns)["metadata"]["uid"] == vmi["metadata"]["uid"]


# --- the subresource API --------------------------------------------------------------


def user_kubeconfig(k: Kubectl, ns: str, account: str, role: str, directory: Path) -> Kubectl:
    """A service account bound to ClusterRole `role` in `ns`, and a kubeconfig holding only
    its token (no client certificate that could authenticate as someone else)."""
    k.run("create", "serviceaccount", account, "-n", ns)
    k.run("create", "rolebinding", f"{account}-{role}", "-n", ns, f"--clusterrole={role}",
          f"--serviceaccount={ns}:{account}")
    token = k.run("create", "token", account, "-n", ns, "--duration=1h").stdout.strip()
    admin = k.json("config", "view", "--raw", "--minify")
    cluster = admin["clusters"][0]["cluster"]
    config = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "test", "cluster": cluster}],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": account, "context": {"cluster": "test", "user": account,
                                                   "namespace": ns}}],
        "current-context": account,
    }
    path = directory / f"{account}.kubeconfig"
    path.write_text(json.dumps(config))
    return Kubectl({**k.env, "KUBECONFIG": str(path)})


def put(k: Kubectl, ns: str, kind: str, name: str, action: str,
        body: dict | None = None) -> subprocess.CompletedProcess[str]:
    """PUT on a subresource through kube-apiserver (kubectl replace --raw)."""
    path = f"{SUBRESOURCES}/namespaces/{ns}/{kind}/{name}/{action}"
    return k.run("replace", "--raw", path, "-f", "-", input=json.dumps(body or {}),
                 check=False, timeout=60)


def test_subresources_obey_rbac(ironvisor: Kubectl, namespace: str, tmp_path: Path) -> None:
    k, ns = ironvisor, namespace
    k.apply(EXAMPLE.replace("runStrategy: Always", "runStrategy: Halted"), ns)
    viewer = user_kubeconfig(k, ns, "viewer", "view", tmp_path)
    editor = user_kubeconfig(k, ns, "editor", "edit", tmp_path)

    # The view role (aggregating ironvisor-view) reads VMs but may not start them.
    assert viewer.json("get", "vm", "small")["metadata"]["name"] == "small"
    denied = put(viewer, ns, "virtualmachines", "small", "start")
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr.lower(), denied.stderr
    assert f"system:serviceaccount:{ns}:viewer" in denied.stderr, denied.stderr
    assert k.get("vm", "small", ns)["spec"]["runStrategy"] == "Halted"
    assert k.get("vmi", "small", ns) is None

    # The edit role (aggregating ironvisor-edit) starts, restarts and stops it.
    started = put(editor, ns, "virtualmachines", "small", "start")
    assert started.returncode == 0, started.stderr
    assert k.get("vm", "small", ns)["spec"]["runStrategy"] == "Always"
    first = vmi_running(k, ns)

    again = put(editor, ns, "virtualmachines", "small", "start")
    assert again.returncode != 0 and "already" in again.stderr, again.stderr

    restarted = put(editor, ns, "virtualmachines", "small", "restart")
    assert restarted.returncode == 0, restarted.stderr
    second = vmi_running(k, ns, not_uid=first["metadata"]["uid"])

    assert put(viewer, ns, "virtualmachines", "small", "stop").returncode != 0
    assert k.get("vmi", "small", ns)["metadata"]["uid"] == second["metadata"]["uid"]

    stopped = put(editor, ns, "virtualmachines", "small", "stop", {"gracePeriodSeconds": 0})
    assert stopped.returncode == 0, stopped.stderr
    assert k.get("vm", "small", ns)["spec"]["runStrategy"] == "Halted"
    wait_for("the instance to go", lambda: k.get("vmi", "small", ns) is None, 120,
             describe=lambda: diagnostics(k, ns))

    not_running = put(editor, ns, "virtualmachines", "small", "stop")
    assert not_running.returncode != 0 and "not running" in not_running.stderr
    missing = put(editor, ns, "virtualmachines", "nosuchvm", "start")
    assert missing.returncode != 0 and "not found" in missing.stderr.lower(), missing.stderr


def test_manual_strategy_starts_by_request(ironvisor: Kubectl, namespace: str) -> None:
    k, ns = ironvisor, namespace
    k.apply(EXAMPLE.replace("runStrategy: Always", "runStrategy: Manual"), ns)
    assert k.get("vmi", "small", ns) is None
    assert put(k, ns, "virtualmachines", "small", "start").returncode == 0
    vmi = vmi_running(k, ns)
    owner = vmi["metadata"]["ownerReferences"][0]
    assert owner["kind"] == "VirtualMachine" and owner["controller"] is True
    assert put(k, ns, "virtualmachines", "small", "stop", {"gracePeriodSeconds": 0}).returncode == 0
    wait_for("the instance to go", lambda: k.get("vmi", "small", ns) is None, 120)
    # Manual: nothing starts it again by itself.
    assert k.get("vm", "small", ns)["spec"]["runStrategy"] == "Manual"


def test_the_api_service_needs_the_front_proxy(ironvisor: Kubectl) -> None:
    """Straight to the api-server's pod, past kube-apiserver: no front-proxy certificate,
    so the user headers are not believed."""
    k = ironvisor
    pods = k.json("get", "pods", "-n", NAMESPACE_SYSTEM, "-l",
                  "app.kubernetes.io/name=ironvisor-apiserver")["items"]
    ip = next(p["status"]["podIP"] for p in pods if p["status"].get("podIP"))
    connection = http.client.HTTPSConnection(ip, 8443, timeout=30,
                                             context=ssl._create_unverified_context())
    connection.request("PUT", f"{SUBRESOURCES}/namespaces/default/virtualmachines/x/start",
                       body=b"{}", headers={"X-Remote-User": "system:admin",
                                            "X-Remote-Group": "system:masters"})
    response = connection.getresponse()
    status = json.loads(response.read())
    assert response.status == 401, status
    assert status["code"] == 401, status
    assert "front proxy" in status["message"], status
    bundle = k.json("get", "apiservice", "v1alpha1.subresources.ironvisor.io")["spec"]["caBundle"]
    assert b"BEGIN CERTIFICATE" in base64.b64decode(bundle)


# --- virtctl in cluster mode -----------------------------------------------------------


def virtctl(user: Kubectl, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The real virtctl with `user`'s kubeconfig (cluster mode: KUBECONFIG is set)."""
    if not VIRTCTL.is_file():
        pytest.fail(f"{VIRTCTL} is missing: cargo build --release -p ironvisor-virtctl")
    env = {k: v for k, v in os.environ.items() if k != "IRONVISOR_SOCKET"}
    env.update(user.env)
    return subprocess.run([str(VIRTCTL), *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def console_of(user: Kubectl, ns: str, name: str) -> Console:
    env = {k: v for k, v in os.environ.items() if k != "IRONVISOR_SOCKET"}
    env.update(user.env)
    return Console.spawn([str(VIRTCTL), "console", name, "-n", ns], env=env)


def test_virtctl_console_and_pause_through_the_cluster(ironvisor: Kubectl, namespace: str,
                                                       tmp_path: Path) -> None:
    k, ns = ironvisor, namespace
    k.apply(EXAMPLE.replace("runStrategy: Always", "runStrategy: Halted"), ns)
    viewer = user_kubeconfig(k, ns, "viewer", "view", tmp_path)
    editor = user_kubeconfig(k, ns, "editor", "edit", tmp_path)

    denied = virtctl(viewer, "start", "small")
    assert denied.returncode != 0 and "forbidden" in denied.stderr, denied.stderr
    started = virtctl(editor, "start", "small")
    assert started.returncode == 0, started.stderr
    assert "starting" in started.stdout
    vmi_running(k, ns)

    denied = virtctl(viewer, "console", "small", "--wait", "0")
    assert denied.returncode != 0 and "forbidden" in denied.stderr, denied.stderr

    console = console_of(editor, ns, "small")
    try:
        console.expect("Successfully connected to small console")
        guest_shell(console)
        out = console.run("echo round-$((20+22))", "IV-ROUND")
        assert "round-42" in out, out

        # A guest that prints a tick every second stops ticking while paused.
        console.run("(for i in $(seq 1 20); do echo tick-$i; sleep 1; done) & true", "IV-BG")
        console.expect(r"tick-\d+", timeout=30)
        paused = virtctl(editor, "pause", "small")
        assert paused.returncode == 0, paused.stderr
        time.sleep(1)
        mark = len(console.text())
        time.sleep(3)
        assert "tick-" not in console.text()[mark:], "a paused guest kept running"
        again = virtctl(editor, "pause", "small")
        assert again.returncode != 0 and "Paused" in again.stderr, again.stderr
        assert virtctl(viewer, "unpause", "small").returncode != 0
        resumed = virtctl(editor, "unpause", "small")
        assert resumed.returncode == 0, resumed.stderr
        console.expect(r"tick-\d+", start=mark, timeout=30)
        console.expect("tick-20", timeout=90)

        # The api-server's pods deleted mid-session: virtctl says the connection closed.
        k.run("delete", "pod", "-n", NAMESPACE_SYSTEM, "-l",
              "app.kubernetes.io/name=ironvisor-apiserver", "--wait=false")
        console.expect("connection to the cluster closed", timeout=90)
        assert console.proc.wait(timeout=30) != 0
    finally:
        if console.proc.poll() is None:
            console.proc.kill()

    # Nothing else broke: the VM still runs, and once the api-server is back (a
    # Deployment), a new console works.
    assert k.get("vmi", "small", ns)["status"]["phase"] == "Running"
    k.run("rollout", "status", "-n", NAMESPACE_SYSTEM, "deployment/ironvisor-apiserver",
          "--timeout=180s", timeout=200)
    console = console_of(editor, ns, "small")
    try:
        console.expect("Successfully connected to small console", timeout=120)
        console.send("\r")
        console.expect(r"[#$] ", timeout=60)
        out = console.run("echo back-$((7*6))", "IV-BACK")
        assert "back-42" in out, out
        console.send(b"\x1d")
        console.expect("Detached from the console", timeout=30)
        assert console.proc.wait(timeout=30) == 0
    finally:
        if console.proc.poll() is None:
            console.proc.kill()

    stopped = virtctl(editor, "stop", "small", "--grace-period", "0")
    assert stopped.returncode == 0, stopped.stderr
    wait_for("the instance to go", lambda: k.get("vmi", "small", ns) is None, 120,
             describe=lambda: diagnostics(k, ns))
    gone = virtctl(editor, "console", "small", "--wait", "0")
    assert gone.returncode != 0 and "not found" in gone.stderr, gone.stderr
    # kubectl's jobs stay kubectl's: virtctl says which command to use.
    apply = virtctl(editor, "get", "vms")
    assert apply.returncode != 0 and "kubectl get" in apply.stderr, apply.stderr
