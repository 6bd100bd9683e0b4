"""hostDisk volumes on the real cluster: `examples/vm-hostdisk.yaml` unchanged — a root
disk that is an existing raw file on the node (`Disk`) and a data disk created on first
start (`DiskOrCreate`, 2Gi) — started with `virtctl start`; the launcher pod gets the
files' node directories as hostPath volumes, the guest boots from the node's file, and
the created file stays on the node after the VM is deleted. A hostDisk outside the
controller's `--host-disk-root` fails the instance naming the root."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.cluster.conftest import diagnostics
from tests.cluster.kube import REPO_ROOT, Kubectl, condition, phase, wait_for
from tests.cluster.test_apiserver import virtctl
from tests.cluster.test_vm_lifecycle import GUEST_MARKER, console_log, launcher_pod, vmi_running

pytestmark = pytest.mark.cluster

EXAMPLE = (REPO_ROOT / "examples" / "vm-hostdisk.yaml").read_text()
ROOT_FILE = Path("/var/lib/ironvisor/images/busybox-root.raw")
DATA_FILE = Path("/var/lib/ironvisor/disks/hostdisk-data.raw")
ROOTFS = REPO_ROOT / ".cache" / "images" / "rootfs.ext4"


@pytest.fixture
def node_files():
    """The example's root disk on the node (a copy of the test root file system), and no
    data disk yet; the data disk is removed again afterwards."""
    if not ROOT_FILE.is_file():
        if not ROOTFS.is_file():
            pytest.fail(f"{ROOTFS} is missing: python3 images/build.py builds it")
        ROOT_FILE.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "--sparse=always", str(ROOTFS), str(ROOT_FILE)], check=True)
    DATA_FILE.unlink(missing_ok=True)
    yield
    DATA_FILE.unlink(missing_ok=True)


def test_the_hostdisk_example_boots_from_the_nodes_file_and_creates_its_data_disk(
        ironvisor: Kubectl, namespace: str, node_files: None) -> None:
    k, ns = ironvisor, namespace
    k.apply(EXAMPLE, ns)
    started = virtctl(k, "start", "hostdisk", "-n", ns)
    assert started.returncode == 0, started.stderr
    vmi = vmi_running(k, ns, "hostdisk")
    pod = launcher_pod(k, ns, vmi)
    host_paths = {v["hostPath"]["path"]: v["hostPath"]["type"]
                  for v in pod["spec"]["volumes"] if "hostPath" in v}
    assert host_paths == {str(ROOT_FILE.parent): "Directory",
                          str(DATA_FILE.parent): "DirectoryOrCreate"}, host_paths
    wait_for("the guest's init marker on the console", lambda: GUEST_MARKER in console_log(
        k, ns, pod["metadata"]["name"]), 180, describe=lambda: diagnostics(k, ns))
    # Created on the node at the requested capacity, sparse.
    assert DATA_FILE.stat().st_size == 2 << 30
    k.run("delete", "vm", "hostdisk", "-n", ns, "--wait=false")
    wait_for("VM gone", lambda: k.get("vm", "hostdisk", ns) is None, 120,
             describe=lambda: diagnostics(k, ns))
    assert DATA_FILE.is_file(), "a hostDisk outlives the VM"


def test_a_hostdisk_outside_the_allowed_root_fails_the_instance_naming_the_root(
        ironvisor: Kubectl, namespace: str) -> None:
    k, ns = ironvisor, namespace
    k.apply(EXAMPLE.replace("/var/lib/ironvisor/disks/hostdisk-data.raw", "/etc/hostdisk.raw")
            .replace("runStrategy: Manual", "runStrategy: Once"), ns)
    vmi = wait_for("the instance Failed", lambda: (
        (v := k.get("vmi", "hostdisk", ns)) and phase(v) == "Failed" and v), 120,
        describe=lambda: diagnostics(k, ns))
    assert vmi["status"]["reason"] == "HostDiskNotAllowed", vmi["status"]
    message = condition(vmi, "Ready")["message"]
    assert "spec.volumes[data]" in message and "/var/lib/ironvisor" in message, message
    assert not Path("/etc/hostdisk.raw").exists()
    assert not k.json("get", "pods", "-n", ns)["items"], "no launcher pod was made"
