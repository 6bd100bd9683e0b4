"""A small kubectl driver for the cluster e2e tests: runs the real kubectl against the
real test cluster (scripts/cluster.sh), JSON in and out, and polls with deadlines whose
failures say what was awaited and what was last seen."""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

REPO_ROOT = Path(__file__).resolve().parents[2]
CLUSTER_SH = REPO_ROOT / "scripts" / "cluster.sh"


class KubectlError(RuntimeError):
    """kubectl exited non-zero; the message has its command line and stderr."""


def cluster_env() -> dict[str, str]:
    """The environment `scripts/cluster.sh env` sets up (KUBECONFIG, PATH with kubectl)."""
    out = subprocess.run(
        ["bash", "-c", f'eval "$({CLUSTER_SH} env)" && env -0'],
        check=True, capture_output=True, text=True,
    ).stdout
    env = dict(item.split("=", 1) for item in out.split("\0") if "=" in item)
    return {k: env[k] for k in ("KUBECONFIG", "PATH")}


@dataclass
class Kubectl:
    """kubectl with the admin kubeconfig of the test cluster."""

    env: dict[str, str]

    def run(self, *args: str, input: str | None = None, check: bool = True,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, **self.env}
        done = subprocess.run(["kubectl", *args], input=input, capture_output=True,
                              text=True, env=env, timeout=timeout)
        if check and done.returncode != 0:
            raise KubectlError(f"kubectl {' '.join(args)} exited {done.returncode}: "
                               f"{done.stderr.strip()}")
        return done

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "-o", "json").stdout)

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict | None:
        """The object, or None when it does not exist."""
        args = ["get", kind, name, "-o", "json"]
        if namespace:
            args += ["-n", namespace]
        done = self.run(*args, check=False)
        if done.returncode != 0:
            if "NotFound" in done.stderr or "not found" in done.stderr:
                return None
            raise KubectlError(f"kubectl {' '.join(args)}: {done.stderr.strip()}")
        return json.loads(done.stdout)

    def apply(self, manifest: str, namespace: str | None = None) -> str:
        args = ["apply", "-f", "-"]
        if namespace:
            args += ["-n", namespace]
        return self.run(*args, input=manifest).stdout

    def events(self, namespace: str, name: str) -> list[dict]:
        """Events (events.k8s.io) about objects named `name`, oldest first."""
        items = self.json("get", "events.events.k8s.io", "-n", namespace)["items"]
        mine = [e for e in items if (e.get("regarding") or {}).get("name") == name]
        return sorted(mine, key=lambda e: e.get("eventTime") or e["metadata"]["creationTimestamp"])


def wait_for(what: str, probe: Callable[[], Any], timeout: float,
             describe: Callable[[], str] | None = None, interval: float = 1.0) -> Any:
    """Polls `probe` until it returns something truthy; fails with `what`, the last value
    seen and `describe()` (diagnostics) after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    details = describe() if describe else ""
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; "
                         f"last seen: {last!r}\n{details}")


def phase(obj: dict | None) -> str | None:
    return ((obj or {}).get("status") or {}).get("phase")


def condition(obj: dict | None, type_: str) -> dict | None:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return c
    return None
