"""The Debian guest disk's test inputs: a NoCloud seed whose userData sets the hostname
and runs a command that prints a marker on the serial console, and the marker to look for.
Shared by the TCG boot test of the disk, the nested-KVM boot by the launcher and the
standalone node's boots."""

from __future__ import annotations

import subprocess
from pathlib import Path

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
