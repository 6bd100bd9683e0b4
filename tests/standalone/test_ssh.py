"""`virtctl ssh`, `scp` and `port-forward` on the standalone node: the Debian guest, from
its OCI containerDisk archive (`python3 -m images.containers`' `debian` image), boots
under software emulation with userData that creates a user with the test's SSH key and
writes a file; `virtctl ssh` logs in as that user through `port-forward --stdio` (the node
daemon connects to the guest inside the VM's network namespace) and reads the file,
`virtctl scp` copies a file in and back out, and a port nothing listens on is named in the
error. Prints boot -> SSH reachable."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from images.containers import Inputs, build_image, select
from tests.debian_guest import key_pair, manifest, ssh_options
from tests.standalone.node import Node

pytestmark = pytest.mark.tcg

NAME = "debian-ssh"
USER = "alice"
BOOT_TIMEOUT_S = 600
READY = "IRONVISOR-SSH-GUEST-READY"


def user_data(public_key: str) -> str:
    return f"""\
#cloud-config
users:
  - name: {USER}
    shell: /bin/sh
    ssh_authorized_keys:
      - {public_key}
write_files:
  - path: /etc/ironvisor-note
    content: "written by cloud-init for {USER}\\n"
runcmd:
  - [sh, -c, "echo {READY} > /dev/ttyS0"]
"""


@pytest.fixture(scope="module")
def debian_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Debian containerDisk archive, built by images.containers into a temporary
    directory with a layer cache of its own (the shared archive cache stays untouched)."""
    out = tmp_path_factory.mktemp("oci-debian")
    (image,) = select(["debian"])
    return build_image(image, Inputs(out / "cache"), out).archive


def test_ssh_scp_and_port_forward_reach_the_debian_guest(node: Node, debian_archive: Path,
                                                         tmp_path: Path) -> None:
    key, public = key_pair(tmp_path)
    options = ssh_options(tmp_path / "known_hosts")
    path = tmp_path / "vm.yaml"
    path.write_text(manifest(NAME, "", user_data=user_data(public),
                             image=f"oci-archive:{debian_archive}:bookworm"))
    started = time.monotonic()
    node.virtctl("apply", "-f", str(path))
    try:
        node.wait_status(NAME, "Running", timeout=120)
        console = node.console(NAME)
        try:
            console.expect(READY, timeout=BOOT_TIMEOUT_S)
        finally:
            console.close()
        ready_s = time.monotonic() - started

        # sshd may still be starting when runcmd reports: retry the first login briefly.
        deadline = time.monotonic() + 120
        while True:
            login = node.virtctl("ssh", "-i", str(key), *options, "-c",
                                 "cat /etc/ironvisor-note; echo user=$(id -un)",
                                 f"{USER}@vm/{NAME}", check=False, timeout=180)
            if login.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(3)
        ssh_s = time.monotonic() - started
        assert login.returncode == 0, (login.stdout, login.stderr)
        assert f"written by cloud-init for {USER}" in login.stdout, login.stdout
        assert f"user={USER}" in login.stdout, login.stdout
        assert f"vm.{NAME}.default" in (tmp_path / "known_hosts").read_text()
        print(f"\n{NAME}: apply -> cloud-init runcmd {ready_s:.0f} s, "
              f"-> first SSH login {ssh_s:.0f} s (software emulation)")

        # scp in and back out.
        upload = tmp_path / "upload.txt"
        upload.write_text("sent by virtctl scp\n")
        node.virtctl("scp", "-i", str(key), *options, str(upload),
                     f"{USER}@vm/{NAME}:/tmp/upload.txt", timeout=180)
        node.virtctl("scp", "-i", str(key), *options, f"{USER}@vm/{NAME}:/tmp/upload.txt",
                     str(tmp_path / "back.txt"), timeout=180)
        assert (tmp_path / "back.txt").read_text() == "sent by virtctl scp\n"

        # The raw port: sshd's banner comes back over standard output.
        banner = node.virtctl("port-forward", "--stdio", f"vm/{NAME}", "22", input="",
                              timeout=60)
        assert banner.stdout.startswith("SSH-2.0-OpenSSH"), banner.stdout

        # A port nothing listens on is named, and nothing changes.
        closed = node.virtctl("port-forward", "--stdio", f"vm/{NAME}", "7779", input="",
                              check=False, timeout=60)
        assert closed.returncode != 0
        assert f"port 7779 of VM default/{NAME}" in closed.stderr, closed.stderr
        assert "refused" in closed.stderr.lower(), closed.stderr
        assert node.row(NAME)["STATUS"] == "Running"
    finally:
        node.virtctl("delete", NAME, check=False)
        deadline = time.monotonic() + 90
        while node.virtctl("get", NAME, check=False).returncode == 0:
            assert time.monotonic() < deadline, f"VM {NAME} was not deleted within 90 s"
            time.sleep(0.5)
