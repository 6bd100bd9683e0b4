"""A VM without kernelBoot on the real cluster: the Debian guest disk, an OCI
containerDisk (`ironvisor/debian:bookworm`, built offline by images/containers.py and
imported into containerd), is copied into the launcher pod by its init container and
boots through firmware and its own GRUB — SeaBIOS here, as KubeVirt's default — and
cloud-init applies the VM's cloudInitNoCloud userData."""

from __future__ import annotations

import time

import pytest

from tests.cluster.conftest import diagnostics
from tests.cluster.kube import Kubectl, phase, wait_for
from tests.cluster.test_kubevirt_corpus import compute_log
from tests.debian_guest import RUNCMD_MARKER, manifest

pytestmark = pytest.mark.cluster

BOOT_TIMEOUT = 420


def test_the_debian_container_disk_boots_through_firmware_and_its_own_grub(
        ironvisor: Kubectl, namespace: str) -> None:
    k, ns, name = ironvisor, namespace, "debian-disk"
    started = time.monotonic()
    k.apply(manifest(name, ""), ns)
    vmi = wait_for(f"VMI {ns}/{name} Running", lambda: (
        (lambda obj: obj if obj and phase(obj) == "Running" else None)(k.get("vmi", name, ns))),
        BOOT_TIMEOUT, describe=lambda: diagnostics(k, ns))
    log = wait_for("a login prompt and the userData's runcmd on the console", lambda: (
        (lambda text: text if "login:" in text and RUNCMD_MARKER in text else None)(
            compute_log(k, ns, vmi))), BOOT_TIMEOUT, describe=lambda: diagnostics(k, ns))
    login_s = time.monotonic() - started
    assert "GNU GRUB" in log, log[-3000:]
    assert "Linux version 6.1." in log, log[-3000:]
    print(f"\n{name}: kubectl apply -> firmware -> GRUB -> Debian login prompt and cloud-init "
          f"runcmd in the launcher pod (TCG) in {login_s:.0f} s")
    k.run("delete", "vm", name, "-n", ns, "--wait=false")
    wait_for(f"VM {ns}/{name} gone", lambda: k.get("vm", name, ns) is None, 120,
             describe=lambda: diagnostics(k, ns))
