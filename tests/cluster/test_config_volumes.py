"""configMap, secret, serviceAccount and downwardAPI volumes and accessCredentials on the
real cluster: the kubelet writes each into the launcher pod, `virt-launcher` turns each
volume into a read-only FAT disk and adds the Secret's SSH key to the cloud-init userData,
and the Debian guest mounts the disks by volume label and prints what it reads (the
ConfigMap's and Secret's values, the namespace and a token of the service account, the
VM's labels) and whether cloud-init installed the key. Then `virtctl ssh` logs in with
that key through the cluster's port forwarding and reads a mounted file."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.cluster.conftest import diagnostics
from tests.cluster.kube import Kubectl, phase, wait_for
from tests.cluster.test_kubevirt_corpus import compute_log
from tests.debian_guest import key_pair, manifest as debian_manifest, ssh_options
from tests.standalone.node import VIRTCTL

pytestmark = pytest.mark.cluster

BOOT_TIMEOUT = 420
NAME = "volumes-vm"
MARKER = "IRONVISOR-VOLUMES "

OBJECTS = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: app-config
data:
  app.conf: mode=vm
---
apiVersion: v1
kind: Secret
metadata:
  name: app-secret
stringData:
  password: s3cr3t-value
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: builder
---
apiVersion: v1
kind: Secret
metadata:
  name: my-keys
stringData:
  key1: PUBLIC_KEY
"""

USER_DATA = """\
#cloud-config
write_files:
  - path: /usr/local/bin/show-volumes
    permissions: '0755'
    content: |
      #!/bin/sh
      for label in cfgdata appsecret sa podinfo; do
        mkdir -p /mnt/$label && mount -o ro -L $label /mnt/$label
      done
      echo "IRONVISOR-VOLUMES cfg=$(cat /mnt/cfgdata/app.conf) secret=$(cat /mnt/appsecret/password) ns=$(cat /mnt/sa/namespace) token_bytes=$(wc -c < /mnt/sa/token) keys=$(cat /home/*/.ssh/authorized_keys 2>/dev/null | grep -c ironvisor-test-key) labels=$(tr '\\n' ' ' < /mnt/podinfo/labels)" > /dev/ttyS0
runcmd:
  - /usr/local/bin/show-volumes
"""


TEMPLATE_SPEC = """\
      accessCredentials:
        - sshPublicKey:
            source:
              secret:
                secretName: my-keys
            propagationMethod:
              noCloud: {}
"""

VOLUMES = """\
        - name: config
          configMap:
            name: app-config
            volumeLabel: cfgdata
        - name: secret
          secret:
            secretName: app-secret
            volumeLabel: appsecret
        - name: sa
          serviceAccount:
            serviceAccountName: builder
        - name: podinfo
          downwardAPI:
            fields:
              - path: labels
                fieldRef:
                  fieldPath: metadata.labels
"""


def manifest() -> str:
    return debian_manifest(NAME, "", user_data=USER_DATA,
                           extra_disks=("config", "secret", "sa", "podinfo"),
                           extra_volumes=VOLUMES, template_spec=TEMPLATE_SPEC,
                           labels="        app: cfgtest\n")


def test_cluster_object_volumes_reach_the_guest_as_labelled_disks(
        ironvisor: Kubectl, namespace: str, tmp_path: Path) -> None:
    k, ns = ironvisor, namespace
    key, public = key_pair(tmp_path)
    k.apply(OBJECTS.replace("PUBLIC_KEY", public), ns)
    k.apply(manifest(), ns)
    vmi = wait_for(f"VMI {ns}/{NAME} Running", lambda: (
        (lambda obj: obj if obj and phase(obj) == "Running" else None)(k.get("vmi", NAME, ns))),
        BOOT_TIMEOUT, describe=lambda: diagnostics(k, ns))
    log = wait_for("the guest's volumes line on the console", lambda: (
        (lambda text: text if MARKER in text else None)(compute_log(k, ns, vmi))),
        BOOT_TIMEOUT, describe=lambda: diagnostics(k, ns))
    line = next(line for line in log.splitlines() if MARKER in line)
    assert "cfg=mode=vm " in line, line
    assert "secret=s3cr3t-value " in line, line
    assert f"ns={ns} " in line, line
    token = re.search(r"token_bytes=(\d+)", line)
    assert token and int(token.group(1)) > 100, line
    assert 'app="cfgtest"' in line, line
    # The default user's authorized_keys has the Secret's key.
    assert re.search(r"keys=[1-9]", line), line
    pod = k.json("get", "pods", "-n", ns, "-l",
                 f"ironvisor.io/created-by={vmi['metadata']['uid']}")["items"][0]
    assert pod["spec"]["serviceAccountName"] == "builder", pod["spec"]

    # virtctl ssh with the Secret's key, through port-forward (no Service, no node port).
    env = {key: value for key, value in os.environ.items() if key != "IRONVISOR_SOCKET"}
    env.update(k.env)
    login = subprocess.run(
        [str(VIRTCTL), "ssh", "-n", ns, "-i", str(key), "-t", "-oStrictHostKeyChecking=no",
         "-t", f"-oUserKnownHostsFile={tmp_path / 'known_hosts'}", "-t", "-oBatchMode=yes",
         "-t", "-oHashKnownHosts=no", "-c", "cat /mnt/cfgdata/app.conf; echo user=$(id -un)", f"debian@vm/{NAME}"],
        capture_output=True, text=True, timeout=180, env=env)
    assert login.returncode == 0, (login.stdout, login.stderr)
    assert "mode=vm" in login.stdout and "user=debian" in login.stdout, login.stdout
    # The guest's host key was remembered under the VM's alias.
    assert f"vm.{NAME}.{ns}" in (tmp_path / "known_hosts").read_text()
    # virtctl scp both ways over the same route.
    upload = tmp_path / "upload.txt"
    upload.write_text("sent by virtctl scp\n")
    options = ssh_options(tmp_path / "known_hosts")
    for source, target in ((str(upload), f"debian@vm/{NAME}:/tmp/upload.txt"),
                           (f"debian@vm/{NAME}:/tmp/upload.txt", str(tmp_path / "back.txt"))):
        copied = subprocess.run([str(VIRTCTL), "scp", "-n", ns, "-i", str(key), *options,
                                 source, target], capture_output=True, text=True, timeout=180,
                                env=env)
        assert copied.returncode == 0, (copied.stdout, copied.stderr)
    assert (tmp_path / "back.txt").read_text() == "sent by virtctl scp\n"
    k.run("delete", "vm", NAME, "-n", ns, "--wait=false")
    wait_for(f"VM {ns}/{NAME} gone", lambda: k.get("vm", NAME, ns) is None, 120,
             describe=lambda: diagnostics(k, ns))
