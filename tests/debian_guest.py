"""The Debian guest disk's test inputs: a NoCloud seed whose userData sets the hostname
and runs a command that prints a marker on the serial console, the marker to look for,
and a VM of the disk without kernelBoot. Shared by the TCG boot test of the disk, the
nested-KVM boot by the launcher, and the standalone node's and the cluster's boots."""

from __future__ import annotations

import subprocess
from pathlib import Path

from images.catalog import DEBIAN_DISK_NAME

#: The hostname userData sets.
HOSTNAME = "corpus-guest"
#: userData: the hostname, and a runcmd that reports it on the serial console.
USER_DATA = f"""\
#cloud-config
hostname: {HOSTNAME}
runcmd:
  - [sh, -c, "echo IRONVISOR-CLOUD-INIT-RUNCMD host=$(hostname) > /dev/ttyS0"]
"""
#: What the runcmd prints once cloud-init has applied userData.
RUNCMD_MARKER = f"IRONVISOR-CLOUD-INIT-RUNCMD host={HOSTNAME}"


def nocloud_seed(directory: Path, user_data: str = USER_DATA) -> Path:
    """A NoCloud seed in ``directory``: a FAT image labelled cidata with user-data and
    meta-data (mkfs.vfat and mcopy, from dosfstools and mtools)."""
    for name, text in (("user-data", user_data),
                       ("meta-data", f"instance-id: {HOSTNAME}-1\n")):
        (directory / name).write_text(text)
    seed = directory / "seed.img"
    subprocess.run(["mkfs.vfat", "-C", "-n", "CIDATA", str(seed), "1024"], check=True,
                   capture_output=True)
    for name in ("user-data", "meta-data"):
        subprocess.run(["mcopy", "-i", str(seed), str(directory / name), f"::{name}"],
                       check=True, capture_output=True)
    return seed


def key_pair(directory: Path) -> tuple[Path, str]:
    """A fresh ed25519 key without passphrase: its private key file and public line."""
    key = directory / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ironvisor-test-key",
                    "-f", str(key)], check=True)
    return key, (directory / "id_ed25519.pub").read_text().strip()


def ssh_options(known_hosts: Path) -> list[str]:
    """`virtctl ssh`/`scp` options (`-t OPTION`) for a test: no prompts, the guest's host
    key accepted once and kept in `known_hosts`."""
    options = ["-oStrictHostKeyChecking=no", f"-oUserKnownHostsFile={known_hosts}",
               "-oBatchMode=yes", "-oHashKnownHosts=no", "-oConnectTimeout=30"]
    return [word for option in options for word in ("-t", option)]


def manifest(name: str, bootloader: str, *, user_data: str = USER_DATA,
             extra_disks: tuple[str, ...] = (), extra_volumes: str = "",
             template_spec: str = "", labels: str = "", image: str = DEBIAN_DISK_NAME) -> str:
    """A KubeVirt-shaped VM of the Debian disk with a NoCloud seed. `bootloader` is the
    YAML of `firmware.bootloader` ("" for none); `extra_disks` are more virtio disks,
    whose volumes `extra_volumes` lists (YAML list items at the volumes' indentation);
    `template_spec` is more YAML at the template spec's level and `labels` the template's
    labels (YAML at their level); `image` the root disk's containerDisk image."""
    firmware = f"        firmware:\n          bootloader: {bootloader}\n" if bootloader else ""
    seed = "".join(f"              {line}\n" for line in user_data.splitlines())
    disks = "".join(f"""\
            - name: {disk}
              disk:
                bus: virtio
""" for disk in ("root", "cloudinit", *extra_disks))
    metadata = f"    metadata:\n      labels:\n{labels}" if labels else ""
    return f"""\
apiVersion: ironvisor.io/v1alpha1
kind: VirtualMachine
metadata:
  name: {name}
spec:
  runStrategy: Always
  template:
{metadata}    spec:
{template_spec}      domain:
{firmware}        memory:
          guest: 1Gi
        devices:
          disks:
{disks}      volumes:
        - name: root
          containerDisk:
            image: {image}
        - name: cloudinit
          cloudInitNoCloud:
            userData: |
{seed}{extra_volumes}"""
