"""Writes OCI images offline, as OCI archives that `ctr images import` takes.

An image is a list of layers plus a config (entrypoint, environment). A layer is built
from entries (a file, a directory, a symlink, bytes), or is an existing tar (a root file
system made by mmdebstrap). Archives are deterministic: sorted members, uid/gid 0, fixed
mtimes (SOURCE_DATE_EPOCH), gzip without a timestamp, so the same inputs give the same
digests and a rebuild imports nothing new.

Archive layout (OCI image layout 1.0, in one tar):
    oci-layout, index.json, blobs/sha256/<config>, <manifest>, <layers...>
The index's manifest descriptor carries `io.containerd.image.name` (the full reference
containerd registers) and `org.opencontainers.image.ref.name` (the tag).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class OciError(RuntimeError):
    """An image could not be written; the message names the image and the input."""


def normalize_reference(reference: str) -> str:
    """The full name containerd's CRI looks images up by: `ironvisor/x:1` ->
    `docker.io/ironvisor/x:1`, `x` -> `docker.io/library/x:latest`."""
    name, _, digest = reference.partition("@")
    first = name.split("/", 1)[0]
    has_registry = "/" in name and ("." in first or ":" in first or first == "localhost")
    if not has_registry:
        name = f"docker.io/{name}" if "/" in name else f"docker.io/library/{name}"
    last = name.rsplit("/", 1)[-1]
    if ":" not in last and not digest:
        name += ":latest"
    return f"{name}@{digest}" if digest else name


@dataclass(frozen=True)
class Entry:
    """One member of a layer: `path` in the image, from `source` (a host file), `data`
    (bytes), a directory (neither), or a symlink to `link`."""

    path: str
    source: Path | None = None
    data: bytes | None = None
    link: str | None = None
    mode: int | None = None


@dataclass
class Layer:
    """A layer from entries, or an existing (uncompressed) tar file."""

    entries: list[Entry] = field(default_factory=list)
    tar: Path | None = None
    comment: str = ""


@dataclass
class ImageSpec:
    """What an image is made of."""

    reference: str
    layers: list[Layer]
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    env: dict[str, str] = field(default_factory=lambda: {"PATH": DEFAULT_PATH})
    user: str | None = None
    labels: dict[str, str] = field(default_factory=dict)


def _mtime() -> int:
    return int(os.environ.get("SOURCE_DATE_EPOCH", "0"))


def _parents(path: str) -> list[str]:
    parts = path.strip("/").split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def _write_entries(entries: list[Entry], out: io.BufferedIOBase) -> None:
    mtime = _mtime()
    members: dict[str, tuple[tarfile.TarInfo, bytes | Path | None]] = {}

    def add_dir(name: str) -> None:
        if name and name not in members:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, mtime
            members[name] = (info, None)

    for entry in entries:
        name = entry.path.strip("/")
        if not name:
            raise OciError(f"layer entry with an empty path: {entry}")
        for parent in _parents(entry.path):
            add_dir(parent)
        info = tarfile.TarInfo(name)
        info.mtime = mtime
        payload: bytes | Path | None = None
        if entry.link is not None:
            info.type, info.linkname, info.mode = tarfile.SYMTYPE, entry.link, 0o777
        elif entry.data is not None:
            info.size, info.mode = len(entry.data), entry.mode or 0o644
            payload = entry.data
        elif entry.source is not None:
            if not entry.source.is_file():
                raise OciError(f"{entry.source}: not a file (for {entry.path} in the image)")
            info.size = entry.source.stat().st_size
            info.mode = entry.mode if entry.mode is not None else entry.source.stat().st_mode & 0o777
            payload = entry.source
        else:
            info.type, info.mode = tarfile.DIRTYPE, entry.mode or 0o755
        members[name] = (info, payload)

    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(members):
            info, payload = members[name]
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if isinstance(payload, Path):
                with payload.open("rb") as f:
                    tar.addfile(info, f)
            elif isinstance(payload, bytes):
                tar.addfile(info, io.BytesIO(payload))
            else:
                tar.addfile(info)


def _blob(blobs: Path, data_path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    with data_path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    hexdigest = digest.hexdigest()
    target = blobs / hexdigest
    if not target.exists():
        shutil.move(str(data_path), target)
    else:
        data_path.unlink()
    return f"sha256:{hexdigest}", target.stat().st_size


def _blob_bytes(blobs: Path, data: bytes) -> tuple[str, int]:
    hexdigest = hashlib.sha256(data).hexdigest()
    (blobs / hexdigest).write_bytes(data)
    return f"sha256:{hexdigest}", len(data)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def write_archive(spec: ImageSpec, archive: Path) -> str:
    """Writes `spec` as an OCI archive at `archive`; returns the manifest digest."""
    reference = normalize_reference(spec.reference)
    tag = reference.rsplit(":", 1)[-1] if "@" not in reference else ""
    with tempfile.TemporaryDirectory(dir=archive.parent) as tmp:
        root = Path(tmp)
        blobs = root / "blobs" / "sha256"
        blobs.mkdir(parents=True)
        layer_descriptors, diff_ids, history = [], [], []
        for index, layer in enumerate(spec.layers):
            raw = root / f"layer{index}.tar"
            if layer.tar is not None:
                if not layer.tar.is_file():
                    raise OciError(f"{reference}: layer tar {layer.tar} does not exist")
                shutil.copyfile(layer.tar, raw)
            else:
                with raw.open("wb") as out:
                    _write_entries(layer.entries, out)
            diff_ids.append(_sha256_file(raw))
            compressed = root / f"layer{index}.tar.gz"
            with raw.open("rb") as src, compressed.open("wb") as dst:
                with gzip.GzipFile(fileobj=dst, mode="wb", mtime=0, compresslevel=6) as gz:
                    shutil.copyfileobj(src, gz, 1 << 20)
            raw.unlink()
            digest, size = _blob(blobs, compressed)
            layer_descriptors.append({"mediaType": MEDIA_LAYER_GZIP, "digest": digest, "size": size})
            history.append({"created_by": layer.comment or f"ironvisor images: layer {index}"})
        config: dict = {"Env": [f"{k}={v}" for k, v in sorted(spec.env.items())],
                        "WorkingDir": "/"}
        if spec.entrypoint:
            config["Entrypoint"] = spec.entrypoint
        if spec.cmd:
            config["Cmd"] = spec.cmd
        if spec.user:
            config["User"] = spec.user
        if spec.labels:
            config["Labels"] = dict(sorted(spec.labels.items()))
        image_config = {
            "architecture": "amd64",
            "os": "linux",
            "created": "1970-01-01T00:00:00Z",
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": history,
        }
        config_digest, config_size = _blob_bytes(
            blobs, json.dumps(image_config, sort_keys=True, separators=(",", ":")).encode())
        manifest = {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": {"mediaType": MEDIA_CONFIG, "digest": config_digest, "size": config_size},
            "layers": layer_descriptors,
        }
        manifest_digest, manifest_size = _blob_bytes(
            blobs, json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode())
        annotations = {"io.containerd.image.name": reference}
        if tag:
            annotations["org.opencontainers.image.ref.name"] = tag
        index = {
            "schemaVersion": 2,
            "mediaType": MEDIA_INDEX,
            "manifests": [{"mediaType": MEDIA_MANIFEST, "digest": manifest_digest,
                           "size": manifest_size, "annotations": annotations,
                           "platform": {"architecture": "amd64", "os": "linux"}}],
        }
        (root / "index.json").write_text(json.dumps(index, sort_keys=True))
        (root / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
        partial = archive.with_suffix(".partial")
        with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
            for path in sorted(p for p in root.rglob("*") if p.is_file()
                               and p.name not in (f"layer{i}.tar" for i in range(len(spec.layers)))):
                info = tar.gettarinfo(str(path), arcname=str(path.relative_to(root)))
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mtime = _mtime()
                with path.open("rb") as f:
                    tar.addfile(info, f)
        partial.replace(archive)
    return manifest_digest
