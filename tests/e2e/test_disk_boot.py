"""A VM without kernelBoot boots the kernel its own disk names: the launcher reads the
Debian guest disk's GRUB configuration (no firmware runs; the microVM has none), boots
that kernel with that initrd and command line, and Debian comes up with cloud-init's
userData applied from a NoCloud seed, and L1 logs in over SSH with the key userData
installed (measured: launcher start -> first SSH login). `bios` and `efi` take the same path in the launcher
(the configuration is read on the host either way), so one boot covers both; the
launcher configuration's unit tests cover the choice."""

from __future__ import annotations

from pathlib import Path

import pytest

from images import debian_disk
from tests.debian_guest import RUNCMD_MARKER, USER_DATA, HOSTNAME, key_pair, nocloud_seed
from tests.e2e.vmtest import E2ERunner

pytestmark = pytest.mark.nested

MAC = "52:54:00:12:34:57"
#: ssh and the DHCP server for the guest's NIC, run inside L1.
L1_TOOLS = [Path("/usr/bin/ssh"), Path("/usr/sbin/dnsmasq")]


def test_the_launcher_boots_the_debian_disk_by_its_own_grub_configuration(
        runner: E2ERunner, launcher: Path, tmp_path: Path) -> None:
    firmware = "bios"
    disk = debian_disk.build_disk()
    key, public = key_pair(tmp_path)
    seed = nocloud_seed(tmp_path, USER_DATA + f"ssh_authorized_keys:\n  - {public}\n")
    facts = runner.run("diskboot", params={"FIRMWARE": firmware, "MAC": MAC},
                       files=[(disk, "/e2e/debian.qcow2"), (seed, "/e2e/seed.img"),
                              (key, "/e2e/id_ed25519")],
                       timeout_s=900.0, tools=L1_TOOLS)
    console = facts.console()
    text = "\n".join(console)
    assert "login_ms" in facts.l1, f"no login prompt:\n{text[-4000:]}"
    # The disk's kernel (Debian's cloud kernel), the disk's command line from grub.cfg.
    assert any("Linux version 6.1." in line and "cloud" in line for line in console), text[-4000:]
    assert any("root=LABEL=ironvisor-root" in line for line in console), text[-4000:]
    # userData from the seed: the hostname it sets, seen by the runcmd it runs.
    assert RUNCMD_MARKER in text, text[-4000:]
    # ssh with the key userData installed, over the guest's NIC.
    assert facts.l1.get("ssh_said") == f"ssh-user=debian ssh-host={HOSTNAME}", \
        f"no SSH login: {facts.l1}\n{text[-4000:]}"
    print(f"\n{firmware}: Debian disk booted by the launcher: login prompt "
          f"{facts.l1['login_ms']} ms, cloud-init runcmd {facts.l1.get('runcmd_ms')} ms, "
          f"first SSH login {facts.l1.get('ssh_ms')} ms after the launcher started (nested "
          f"KVM in TCG L1); stop rc {facts.l1.get('vm_rc')}")
