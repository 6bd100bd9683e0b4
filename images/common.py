"""Small helpers shared by the image builders: running tools, caching, hashing, locking."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import subprocess
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

log = logging.getLogger("images")

#: Timestamp written into every archive and file system when SOURCE_DATE_EPOCH is unset
#: (2024-01-01T00:00:00Z), so that two builds of the same inputs give the same bytes.
DEFAULT_SOURCE_DATE_EPOCH = 1704067200

#: Repository root (the directory holding ``images/``).
REPO_ROOT = Path(__file__).resolve().parent.parent

#: Where ``images/build.py`` writes by default (ignored by git through ``.cache/``).
DEFAULT_OUT_DIR = REPO_ROOT / ".cache" / "images"


class ToolError(RuntimeError):
    """A host tool was missing or failed; the message names the command and its output."""


def source_date_epoch() -> int:
    """The fixed timestamp for reproducible outputs (``SOURCE_DATE_EPOCH`` or the default)."""
    raw = os.environ.get("SOURCE_DATE_EPOCH")
    if raw is None or raw == "":
        return DEFAULT_SOURCE_DATE_EPOCH
    try:
        return int(raw)
    except ValueError as exc:
        raise ToolError(f"SOURCE_DATE_EPOCH={raw!r} is not an integer number of seconds") from exc


def require_tools(names: Iterable[str]) -> None:
    """Fail with one message listing every missing host tool and the package that has it."""
    packages = {
        "busybox": "busybox-static",
        "cpio": "cpio",
        "lz4": "lz4",
        "mkfs.ext4": "e2fsprogs",
        "debugfs": "e2fsprogs",
        "modinfo": "kmod",
        "dpkg-deb": "dpkg",
        "apt-get": "apt",
        "apt-cache": "apt",
        "gzip": "gzip",
        "ldd": "libc-bin",
        "qemu-system-x86_64": "qemu-system-x86",
    }
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        hint = " ".join(sorted({packages.get(n, n) for n in missing}))
        raise ToolError(
            f"missing host tools: {', '.join(missing)} "
            f"(install with: apt-get install -y --no-install-recommends {hint})"
        )


def run(
    cmd: Sequence[str | os.PathLike[str]],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    stdin: bytes | None = None,
    stdout_path: Path | None = None,
) -> bytes:
    """Run ``cmd`` and return its stdout; raise :class:`ToolError` with stderr on failure.

    With ``stdout_path`` the output is streamed to that file instead and ``b""`` is returned.
    """
    argv = [os.fspath(c) for c in cmd]
    full_env = None
    if env:
        full_env = dict(os.environ)
        full_env.update(env)
    log.debug("run: %s", " ".join(argv))
    try:
        if stdout_path is not None:
            with open(stdout_path, "wb") as out:
                proc = subprocess.run(
                    argv, cwd=cwd, env=full_env, input=stdin, stdout=out,
                    stderr=subprocess.PIPE, check=False,
                )
            stdout = b""
        else:
            proc = subprocess.run(
                argv, cwd=cwd, env=full_env, input=stdin, capture_output=True, check=False
            )
            stdout = proc.stdout
    except FileNotFoundError as exc:
        raise ToolError(f"cannot run {argv[0]!r}: not found on PATH") from exc
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()
        where = f" (in {cwd})" if cwd else ""
        raise ToolError(f"command failed with exit code {proc.returncode}{where}: "
                        f"{' '.join(argv)}\n{err}")
    return stdout


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's content."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def up_to_date(outputs: Iterable[Path], inputs: Iterable[Path]) -> bool:
    """True when every output exists and is at least as new as the newest input."""
    outs = list(outputs)
    if not outs or not all(p.exists() for p in outs):
        return False
    newest_input = max((p.stat().st_mtime for p in inputs), default=0.0)
    return min(p.stat().st_mtime for p in outs) >= newest_input


def package_sources() -> list[Path]:
    """The builder's own source files: a change to any of them invalidates the cache."""
    here = Path(__file__).resolve().parent
    return sorted(p for p in here.iterdir() if p.suffix in (".py", ".sh") and p.is_file())


@contextlib.contextmanager
def build_lock(out_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``out_dir`` so concurrent builds don't interleave."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def replace_atomically(tmp: Path, final: Path) -> None:
    """Move a finished temporary output into place so readers never see a partial file."""
    os.replace(tmp, final)


def clamp_tree_mtimes(root: Path, epoch: int) -> None:
    """Set the mtime (and atime) of every entry under ``root`` (not following symlinks)."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.utime(Path(dirpath) / name, (epoch, epoch), follow_symlinks=False)
    os.utime(root, (epoch, epoch))
