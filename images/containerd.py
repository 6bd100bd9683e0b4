"""Imports OCI archives into a containerd with `ctr` and checks that they are there."""

from __future__ import annotations

import subprocess
from pathlib import Path

#: The namespace containerd's CRI plugin (hence the kubelet) keeps its images in.
CRI_NAMESPACE = "k8s.io"
_TIMEOUT = 600


class ContainerdError(RuntimeError):
    """containerd is not reachable, or an import failed; the message names the socket."""


class Containerd:
    """One containerd, addressed by its socket, in one namespace."""

    def __init__(self, socket: Path, namespace: str = CRI_NAMESPACE) -> None:
        self.socket = socket
        self.namespace = namespace

    def _ctr(self, *args: str, what: str, timeout: float = _TIMEOUT) -> str:
        cmd = ["ctr", "--address", str(self.socket), "--namespace", self.namespace, *args]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                  check=False)
        except FileNotFoundError as exc:
            raise ContainerdError("ctr is not on PATH (apt-get install containerd)") from exc
        except subprocess.TimeoutExpired as exc:
            raise ContainerdError(f"{what}: `{' '.join(cmd)}` took more than {timeout} s "
                                  f"(containerd at {self.socket} hung?)") from exc
        if done.returncode != 0:
            raise ContainerdError(f"{what}: `{' '.join(cmd)}` exited {done.returncode}: "
                                  f"{(done.stderr or done.stdout).strip()[-2000:]}")
        return done.stdout

    def check_reachable(self) -> str:
        """The server's version; a clear error when nothing answers on the socket."""
        if not self.socket.exists():
            raise ContainerdError(f"containerd is not reachable: no socket at {self.socket} "
                                  "(is the cluster up? scripts/cluster.sh up starts it)")
        try:
            out = self._ctr("version", what=f"asking containerd at {self.socket} for its version",
                            timeout=20)
        except ContainerdError as exc:
            raise ContainerdError(f"containerd is not reachable at {self.socket}: {exc}") from exc
        server = out.split("Server:", 1)[-1]
        for line in server.splitlines():
            if line.strip().startswith("Version:"):
                return line.split(":", 1)[1].strip()
        return "unknown"

    def import_archive(self, archive: Path) -> None:
        """`ctr images import` (which also unpacks the image for the default snapshotter)."""
        self._ctr("images", "import", str(archive),
                  what=f"importing {archive} into containerd at {self.socket}")

    def image_names(self) -> set[str]:
        """Every image name in the namespace."""
        out = self._ctr("images", "ls", "-q", what=f"listing the images of {self.socket}",
                        timeout=60)
        return set(out.split())

    def image_digest(self, name: str) -> str | None:
        """The manifest (target) digest `name` points at, or None if it is absent."""
        out = self._ctr("images", "ls", f"name=={name}",
                        what=f"looking up {name} in {self.socket}", timeout=60)
        for line in out.splitlines()[1:]:
            fields = line.split()
            if fields and fields[0] == name:
                return next((f for f in fields if f.startswith("sha256:")), None)
        return None
