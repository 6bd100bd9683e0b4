"""The launcher pod's compute container with the KVM launcher, in nested KVM.

The cluster runs every launcher pod as user 107 with no capability (Pod Security
"restricted"); on these hosts the cluster's node has PVM, not hardware KVM, so its pods run
the emulation launcher. This test runs the same program the pod runs
(``ironvisor-handler virt-launcher``) with the KVM backend as that user in a nested-KVM L1,
on the pod's directory layout, with ``/dev/kvm`` owned by the user as containerd's
``device_ownership_from_security_context`` hands it to the container: the guest boots,
every launcher thread is the pod user's with no capability under its seccomp filters, and
SIGTERM stops it gracefully. What it leaves out is Kubernetes itself (the scheduler, the
kubelet, the device plugins), which the cluster suite covers with the emulation launcher.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest

from images.common import REPO_ROOT
from tests.e2e.vmtest import E2ERunner

pytestmark = [pytest.mark.nested, pytest.mark.launcher]

HANDLER = Path(os.environ.get("IRONVISOR_HANDLER",
                              REPO_ROOT / "target" / "release" / "ironvisor-handler"))
#: The launcher pod's user and group (deploy/, the controller's pod builder).
POD_UID = "107"


def test_kvm_launcher_runs_as_the_pod_user(runner: E2ERunner, launcher: Path) -> None:
    if not HANDLER.is_file():
        pytest.skip(f"{HANDLER} is missing: cargo build --release --locked -p ironvisor-handler")
    vmi_uid = str(uuid.uuid4())
    facts = runner.run("podlauncher", params={"VMI_UID": vmi_uid}, tools=[HANDLER])
    assert facts.result.rc == 0, facts.result.failure
    f = facts.l1
    assert f.get("scenario_done") == "yes", f
    assert f["guest_counting"] == "yes", "the guest did not boot under the pod's user"
    assert '"backend": "kvm"' in f["launch_config_backend"].replace('":"', '": "'), (
        f["launch_config_backend"])
    # virt-launcher and every launcher thread: the pod user's ids, no capability; every
    # launcher thread under its seccomp filter (mode 2).
    _, ids = f["virt_launcher_identity"].split("=", 1)
    assert ids.split(":")[:3] == [POD_UID, POD_UID, "0000000000000000"], f["virt_launcher_identity"]
    threads = [t.split("=", 1) for t in f["launcher_identity"].split()]
    assert threads, "no launcher process found under virt-launcher"
    assert "vcpu0" in {name for name, _ in threads}, f["launcher_identity"]
    for name, ids in threads:
        assert ids.split(":") == [POD_UID, POD_UID, "0000000000000000", "2"], (
            f"thread {name}: {ids}")
    assert int(f["launcher_uses_kvm"]) >= 1, "the launcher holds no /dev/kvm descriptor"
    assert f["launcher_exe"].endswith("ironvisor-launcher"), f["launcher_exe"]
    # SIGTERM: the guest is asked to shut down, the launcher exits 5 and the
    # termination message says the VM stopped.
    assert f["graceful_in_console"] != "0", "the guest saw no graceful shutdown"
    assert f["virt_launcher_rc"] == "5", f["virt_launcher_rc"]
    message = json.loads(f["termination_message"])
    assert message["reason"] == "Stopped", message
