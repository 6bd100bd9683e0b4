"""PersistentVolumeClaim disks on the real cluster, through the test cluster's CSI
storage (scripts/cluster/storage: the project's CSI driver next to the upstream
external-provisioner, default StorageClass `ironvisor-hostpath`, WaitForFirstConsumer).

A VM with one Filesystem claim (its `disk.img`) and one Block claim (the raw device):
the guest writes a token to each disk; the tokens are on the node's volumes, survive a
stop/start and a VM deleted and recreated on the same claims, and the volumes go with
their claims. A VM whose claim does not exist stays Pending with a condition naming the
claim, and runs once the claim is created."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.cluster.conftest import diagnostics
from tests.cluster.kube import Kubectl, condition, phase, wait_for
from tests.cluster.test_vm_lifecycle import BOOT_TIMEOUT, launcher_pod, vmi_running
from tests.cluster.test_apiserver import console_of
from tests.cluster.test_vm_network import guest_shell

pytestmark = pytest.mark.cluster

CSI_DATA = Path("/var/lib/ironvisor-cluster/csi-hostpath")
FS_SERIAL, BLOCK_SERIAL = "PVCFS0001", "PVCBLK0001"


def claim(name: str, size: str, mode: str = "Filesystem") -> str:
    return f"""
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: {name}
spec:
  accessModes: [ReadWriteOnce]
  volumeMode: {mode}
  resources:
    requests:
      storage: {size}
"""


def vm(strategy: str = "Always") -> str:
    return f"""
apiVersion: ironvisor.io/v1alpha1
kind: VirtualMachine
metadata:
  name: claims
spec:
  runStrategy: {strategy}
  template:
    spec:
      domain:
        cpu:
          cores: 1
        memory:
          guest: 256Mi
        firmware:
          kernelBoot:
            kernelArgs: "root=/dev/vda rw"
            container:
              image: ironvisor/guest-kernel:debian-6.1
              kernelPath: /boot/vmlinuz
              initrdPath: /boot/initrd.img
        devices:
          disks:
            - name: rootdisk
              disk:
                bus: virtio
            - name: fsdisk
              serial: {FS_SERIAL}
              disk:
                bus: virtio
            - name: blockdisk
              serial: {BLOCK_SERIAL}
              disk:
                bus: virtio
      terminationGracePeriodSeconds: 5
      volumes:
        - name: rootdisk
          containerDisk:
            image: ironvisor/rootfs:busybox
        - name: fsdisk
          persistentVolumeClaim:
            claimName: fs-claim
        - name: blockdisk
          persistentVolumeClaim:
            claimName: block-claim
"""


def device_of(serial: str) -> str:
    """Guest shell: the /dev path of the virtio disk with this serial."""
    return (f"$(for d in /sys/block/vd*; do [ \"$(cat $d/serial)\" = {serial} ] && "
            f"echo /dev/${{d##*/}}; done)")


def boot_and_shell(k: Kubectl, ns: str, not_uid: str | None = None):
    vmi = vmi_running(k, ns, "claims", not_uid=not_uid)
    console = console_of(k, ns, "claims")
    guest_shell(console)
    return vmi, console


def read_tokens(console) -> str:
    return console.run(f"head -c 64 {device_of(FS_SERIAL)}; echo; "
                       f"head -c 64 {device_of(BLOCK_SERIAL)}; echo", "IV-READ", timeout=60)


def volume_path(k: Kubectl, ns: str, name: str) -> str:
    pvc = k.get("pvc", name, ns)
    pv = k.get("pv", pvc["spec"]["volumeName"])
    return pv["spec"]["csi"]["volumeHandle"]


def set_strategy(k: Kubectl, ns: str, strategy: str) -> None:
    k.run("patch", "vm", "claims", "-n", ns, "--type=merge",
          "-p", f'{{"spec":{{"runStrategy":"{strategy}"}}}}')


def delete_vm(k: Kubectl, ns: str) -> None:
    k.run("delete", "vm", "claims", "-n", ns, "--wait=false")
    wait_for("the VM gone", lambda: k.get("vm", "claims", ns) is None and stopped(k, ns), 180,
             describe=lambda: diagnostics(k, ns))


def stopped(k: Kubectl, ns: str) -> bool:
    return k.get("vmi", "claims", ns) is None and not k.json(
        "get", "pods", "-n", ns, "-l", "app.kubernetes.io/component=virt-launcher")["items"]


def test_guest_data_on_filesystem_and_block_claims_outlives_its_vms(
        ironvisor: Kubectl, namespace: str) -> None:
    k, ns = ironvisor, namespace
    token = f"IVPVC-{uuid.uuid4().hex[:12]}"
    k.apply(claim("fs-claim", "64Mi") + "---" + claim("block-claim", "32Mi", "Block") +
            "---" + vm(), ns)
    vmi, console = boot_and_shell(k, ns)
    try:
        pod = launcher_pod(k, ns, vmi)
        compute = next(c for c in pod["spec"]["containers"] if c["name"] == "compute")
        assert f"fsdisk=filesystem:{64 << 20}" in compute["command"], compute["command"]
        assert "blockdisk=block" in compute["command"], compute["command"]
        assert compute["volumeDevices"] == [{
            "name": "claim-blockdisk",
            "devicePath": "/var/run/ironvisor/claim-devices/blockdisk"}]
        for pvc in ("fs-claim", "block-claim"):
            assert k.get("pvc", pvc, ns)["status"]["phase"] == "Bound"
        # dd's fsync makes the guest flush the disk, as a file system would: a raw write
        # and `sync` leave it in the host's cache of the device.
        out = console.run(f"printf '{token}-fs\\n' | dd of={device_of(FS_SERIAL)} conv=fsync && "
                          f"printf '{token}-block\\n' | dd of={device_of(BLOCK_SERIAL)} conv=fsync",
                          "IV-WRITE", timeout=60)
        assert "IV-WRITE-rc=0" in out, out
    finally:
        console.close()

    # On the node: the Filesystem claim's disk.img and the Block claim's backing file.
    fs_volume = CSI_DATA / volume_path(k, ns, "fs-claim")
    block_volume = CSI_DATA / f"{volume_path(k, ns, 'block-claim')}.img"
    disk_img = fs_volume / "disk.img"
    assert disk_img.stat().st_size == 64 << 20, "disk.img at the claim's size"
    assert disk_img.read_bytes()[:64].startswith(f"{token}-fs".encode())
    assert block_volume.read_bytes()[:64].startswith(f"{token}-block".encode())

    # Stop and start: the same claims, the same data.
    set_strategy(k, ns, "Halted")
    wait_for("the VM stopped", lambda: stopped(k, ns), 180, describe=lambda: diagnostics(k, ns))
    set_strategy(k, ns, "Always")
    vmi2, console = boot_and_shell(k, ns, not_uid=vmi["metadata"]["uid"])
    try:
        out = read_tokens(console)
        assert f"{token}-fs" in out and f"{token}-block" in out, out
    finally:
        console.close()

    # The VM deleted and made again on the same claims.
    delete_vm(k, ns)
    k.apply(vm(), ns)
    _, console = boot_and_shell(k, ns, not_uid=vmi2["metadata"]["uid"])
    try:
        out = read_tokens(console)
        assert f"{token}-fs" in out and f"{token}-block" in out, out
    finally:
        console.close()

    # The claims' volumes go with them (reclaimPolicy Delete).
    delete_vm(k, ns)
    k.run("delete", "pvc", "fs-claim", "block-claim", "-n", ns, "--timeout=120s", timeout=130)
    wait_for("the volumes removed from the node",
             lambda: not fs_volume.exists() and not block_volume.exists(), 120,
             describe=lambda: diagnostics(k, ns))


def test_a_vm_whose_claim_is_missing_waits_for_it_with_a_condition(
        ironvisor: Kubectl, namespace: str) -> None:
    k, ns = ironvisor, namespace
    k.apply(claim("block-claim", "16Mi", "Block") + "---" + vm(), ns)

    def waiting():
        vmi = k.get("vmi", "claims", ns)
        ready = condition(vmi, "Ready") if vmi else None
        if ready and ready.get("reason") == "PersistentVolumeClaimNotFound":
            return vmi
        return None
    vmi = wait_for("the instance waiting for its claim", waiting, 120,
                   describe=lambda: diagnostics(k, ns))
    assert phase(vmi) == "Pending", vmi["status"]
    message = condition(vmi, "Ready")["message"]
    assert "spec.volumes[fsdisk]" in message and '"fs-claim"' in message, message
    assert not k.json("get", "pods", "-n", ns)["items"], "no launcher pod without its claim"
    events = [e.get("reason") for e in k.events(ns, "claims")]
    assert "PersistentVolumeClaimNotFound" in events, events

    # Nothing was lost: the claim made afterwards is picked up and the VM runs.
    k.apply(claim("fs-claim", "16Mi"), ns)
    running = vmi_running(k, ns, "claims")
    assert running["metadata"]["uid"] == vmi["metadata"]["uid"], "the same instance runs"
    assert wait_for("both claims bound", lambda: all(
        k.get("pvc", n, ns)["status"].get("phase") == "Bound"
        for n in ("fs-claim", "block-claim")), BOOT_TIMEOUT)
