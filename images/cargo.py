"""Builds the Ironvisor binaries that go into the container images, with cargo.

Static binaries (``pause``, the controller) are linked with ``+crt-static`` for the host
target in a target directory of their own under the image cache, so that the RUSTFLAGS
change never invalidates the workspace's ``target/``. Dynamically linked binaries (the
node binaries, which link the system glibc and libvirt) are the workspace's ordinary
``target/release`` builds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
from pathlib import Path

from images.common import REPO_ROOT

log = logging.getLogger("images.cargo")

#: The target triple static binaries are built for (``--target`` keeps RUSTFLAGS away from
#: build scripts and proc macros).
STATIC_TARGET = "x86_64-unknown-linux-gnu"


class CargoError(RuntimeError):
    """cargo failed or a binary is missing; the message has the command and its output."""


def _cargo(args: list[str], what: str, env: dict[str, str] | None = None) -> str:
    return _run(["cargo", *args], what, env)


def _run(program: list[str], what: str, env: dict[str, str] | None = None) -> str:
    """Runs ``program`` at low priority in the workspace; its standard output."""
    cmd = ["nice", "-n", "10", *program]
    try:
        done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True,
                              env={**os.environ, **(env or {})}, check=False)
    except FileNotFoundError as exc:
        raise CargoError(f"{what}: {program[0]} is not on PATH") from exc
    if done.returncode != 0:
        raise CargoError(f"{what}: `{' '.join(program)}` in {REPO_ROOT} exited "
                         f"{done.returncode}:\n{done.stderr.strip()[-3000:]}")
    return done.stdout


def workspace_packages() -> set[str]:
    """Names of the workspace's member packages (``cargo metadata --no-deps``)."""
    out = _cargo(["metadata", "--no-deps", "--format-version", "1", "--offline"],
                 "reading the workspace's packages")
    return {package["name"] for package in json.loads(out)["packages"]}


def _build_args(packages: list[str]) -> list[str]:
    args = ["build", "--release", "--locked"]
    for package in packages:
        args += ["-p", package]
    return args


def build_release(packages: list[str], binaries: list[str]) -> dict[str, Path]:
    """``cargo build --release --locked -p ...`` in the workspace; the binaries' paths."""
    log.info("cargo build --release %s", " ".join(packages))
    _cargo(_build_args(packages), f"building {', '.join(packages)}")
    return _existing(REPO_ROOT / "target" / "release", binaries)


def checkout_dir(base: Path) -> Path:
    """``base/checkout-<key>``: a directory of this work tree's own under a cache that
    every checkout on the machine shares.

    cargo decides whether a binary is fresh from its own sources' fingerprints, but the
    binary in a shared target directory is the one the last checkout built: with one target
    directory for two checkouts, a build from the other checkout's older sources was taken
    as fresh and its binary deployed. The key is the work tree's absolute path, so a rerun
    in the same checkout (CI's clone is always at the same path) stays warm."""
    key = hashlib.sha256(str(REPO_ROOT.resolve()).encode()).hexdigest()[:12]
    return base / f"checkout-{key}"


def build_static(packages: list[str], binaries: list[str], base_dir: Path) -> dict[str, Path]:
    """The same, statically linked (``+crt-static``), into this checkout's target
    directory under ``base_dir`` (see :func:`checkout_dir`); stripped."""
    target_dir = checkout_dir(base_dir)
    log.info("cargo build --release (static) %s into %s", " ".join(packages), target_dir)
    flags = os.environ.get("RUSTFLAGS", "")
    env = {"RUSTFLAGS": f"{flags} -C target-feature=+crt-static".strip(),
           "CARGO_PROFILE_RELEASE_STRIP": "symbols"}
    _cargo([*_build_args(packages), "--target", STATIC_TARGET, "--target-dir", str(target_dir)],
           f"building {', '.join(packages)} statically", env)
    return _existing(target_dir / STATIC_TARGET / "release", binaries)


def build_launcher(target_dir: Path) -> Path:
    """The KVM launcher as it ships, built by ``scripts/build-launcher.sh`` (its profile and
    link flags in one place) in the workspace's own target directory, where the test
    command's build of the same binary already is, then copied into ``target_dir`` and
    stripped there. The stripped copy's path."""
    log.info("scripts/build-launcher.sh")
    out = _run([str(REPO_ROOT / "scripts" / "build-launcher.sh")], "building the launcher")
    lines = out.strip().splitlines()
    built = Path(lines[-1]) if lines else None
    if built is None or not built.is_file():
        raise CargoError("scripts/build-launcher.sh succeeded but printed no binary "
                         f"({out.strip()[-300:]!r})")
    target_dir.mkdir(parents=True, exist_ok=True)
    stripped = target_dir / "ironvisor-launcher.stripped"
    partial = stripped.with_suffix(".partial")
    _run(["strip", "--strip-all", "-o", str(partial), str(built)], "stripping the launcher")
    partial.replace(stripped)
    return stripped


def _existing(directory: Path, binaries: list[str]) -> dict[str, Path]:
    paths = {name: directory / name for name in binaries}
    missing = [str(path) for path in paths.values() if not path.is_file()]
    if missing:
        raise CargoError(f"cargo succeeded but did not leave {', '.join(missing)}")
    return paths
