"""Writes OCI images offline, as single-file archives that `ctr images import` takes.

An image is a list of layers plus a config (entrypoint, environment). A layer is built
from entries (a host file, bytes, a directory or a symlink), or is an existing tar file
(a root file system made by mmdebstrap). Everything is deterministic: members sorted,
uid/gid 0 with no user names, mtimes fixed to SOURCE_DATE_EPOCH (images.common), gzip
without a name or timestamp, JSON with sorted keys; the same inputs give the same bytes,
hence the same digests, so re-importing an unchanged image stores nothing new.

Archive layout (OCI image layout 1.0.0, in one tar):

    oci-layout, index.json, blobs/sha256/<config|manifest|layer...>

The index's manifest descriptor carries `io.containerd.image.name` (the full reference
containerd registers the image under) and `org.opencontainers.image.ref.name` (the tag).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from images.common import source_date_epoch

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
ANNOTATION_NAME = "io.containerd.image.name"
ANNOTATION_REF = "org.opencontainers.image.ref.name"
_CHUNK = 1 << 20
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG = re.compile(r"[\w][\w.-]{0,127}")


class OciError(RuntimeError):
    """An image could not be written; the message names the image and the input."""


def normalize_reference(reference: str) -> str:
    """The full name containerd's CRI knows an image by, as docker's reference parser
    normalises it: `ironvisor/x:1` -> `docker.io/ironvisor/x:1`, `x` ->
    `docker.io/library/x:latest`, `index.docker.io/x/y` -> `docker.io/x/y:latest`."""
    if not reference or any(c.isspace() for c in reference):
        raise OciError(f"invalid image reference {reference!r}: empty or with spaces")
    name, _, digest = reference.partition("@")
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        domain, path = first, rest
    else:
        domain, path = "docker.io", name
    if domain == "index.docker.io":
        domain = "docker.io"
    repository, _, tag = path.partition(":") if ":" in path.rsplit("/", 1)[-1] else (path, "", "")
    if domain == "docker.io" and "/" not in repository:
        repository = f"library/{repository}"
    if not _REPOSITORY.fullmatch(repository):
        raise OciError(f"invalid image reference {reference!r}: bad repository {repository!r}")
    if tag and not _TAG.fullmatch(tag):
        raise OciError(f"invalid image reference {reference!r}: bad tag {tag!r}")
    full = f"{domain}/{repository}"
    if digest:
        return f"{full}:{tag}@{digest}" if tag else f"{full}@{digest}"
    return f"{full}:{tag or 'latest'}"


@dataclass(frozen=True)
class Entry:
    """One member of a layer at `path`: a host file (`source`), `data`, a symlink to
    `link`, or a directory (none of them). `mode` defaults to the source's permission
    bits, 0o644 for data and 0o755 for directories."""

    path: str
    source: Path | None = None
    data: bytes | None = None
    link: str | None = None
    mode: int | None = None


@dataclass(frozen=True)
class Layer:
    """A layer from `entries`, or from an existing uncompressed tar file `tar`."""

    entries: tuple[Entry, ...] = ()
    tar: Path | None = None
    comment: str = ""


@dataclass(frozen=True)
class ImageSpec:
    """What an image is made of."""

    reference: str
    layers: tuple[Layer, ...]
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = (("PATH", DEFAULT_PATH),)
    user: str = ""
    working_dir: str = "/"
    labels: tuple[tuple[str, str], ...] = ()


def _parents(path: str) -> list[str]:
    parts = path.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def _tarinfo(entry: Entry, name: str, mtime: int) -> tuple[tarfile.TarInfo, bytes | Path | None]:
    info = tarfile.TarInfo(name)
    info.mtime = mtime
    if entry.link is not None:
        info.type, info.linkname, info.mode = tarfile.SYMTYPE, entry.link, 0o777
        return info, None
    if entry.data is not None:
        info.size, info.mode = len(entry.data), 0o644 if entry.mode is None else entry.mode
        return info, entry.data
    if entry.source is not None:
        if not entry.source.is_file():
            raise OciError(f"{entry.source} is not a file (wanted at {entry.path} in the image)")
        stat = entry.source.stat()
        info.size = stat.st_size
        info.mode = stat.st_mode & 0o7777 if entry.mode is None else entry.mode
        return info, entry.source
    info.type, info.mode = tarfile.DIRTYPE, 0o755 if entry.mode is None else entry.mode
    return info, None


def write_layer(entries: tuple[Entry, ...] | list[Entry], out: BinaryIO) -> None:
    """An uncompressed layer tar: parents created (0755), members sorted, owned by 0:0."""
    mtime = source_date_epoch()
    members: dict[str, tuple[tarfile.TarInfo, bytes | Path | None]] = {}
    for entry in entries:
        name = entry.path.strip("/")
        if not name or ".." in name.split("/"):
            raise OciError(f"layer entry with an invalid path {entry.path!r}")
        if name in members and members[name][0].type != tarfile.DIRTYPE:
            raise OciError(f"two layer entries for {entry.path}")
        for parent in _parents(name):
            if parent not in members:
                members[parent] = _tarinfo(Entry(parent), parent, mtime)
        members[name] = _tarinfo(entry, name, mtime)
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(members):
            info, payload = members[name]
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if info.isdir():
                info.name += "/"
            if isinstance(payload, Path):
                with payload.open("rb") as f:
                    tar.addfile(info, f)
            elif isinstance(payload, bytes):
                tar.addfile(info, io.BytesIO(payload))
            else:
                tar.addfile(info)


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _gzip(src: Path, dst: Path) -> None:
    with src.open("rb") as raw, dst.open("wb") as out:
        # filename="" and mtime=0: no name and no timestamp in the gzip header.
        with gzip.GzipFile(filename="", fileobj=out, mode="wb", mtime=0, compresslevel=6) as gz:
            shutil.copyfileobj(raw, gz, _CHUNK)


@dataclass(frozen=True)
class _Blob:
    digest: str
    size: int
    path: Path


class _Blobs:
    """Blobs of one archive being written, with an optional cache of compressed layers
    (keyed by the uncompressed layer's digest) shared between images and builds."""

    def __init__(self, root: Path, layer_cache: Path | None) -> None:
        self.dir = root / "blobs" / "sha256"
        self.dir.mkdir(parents=True)
        self.layer_cache = layer_cache

    def put_bytes(self, data: bytes) -> _Blob:
        hexdigest = hashlib.sha256(data).hexdigest()
        path = self.dir / hexdigest
        path.write_bytes(data)
        return _Blob(f"sha256:{hexdigest}", len(data), path)

    def put_layer(self, raw: Path, *, cache: bool) -> tuple[_Blob, str]:
        """The gzip blob of the uncompressed layer `raw` and the layer's diff_id."""
        diff_id = _hash_file(raw)
        cached = self.layer_cache / f"{diff_id}.tar.gz" if self.layer_cache and cache else None
        compressed = self.dir / "layer.tmp"
        if cached is not None and cached.is_file():
            shutil.copyfile(cached, compressed)
            os.utime(cached)  # last use, for prune_layer_cache
        else:
            _gzip(raw, compressed)
            if cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                partial = cached.with_name(cached.name + ".partial")
                shutil.copyfile(compressed, partial)
                partial.replace(cached)
        hexdigest = _hash_file(compressed)
        path = self.dir / hexdigest
        compressed.replace(path)
        return _Blob(f"sha256:{hexdigest}", path.stat().st_size, path), f"sha256:{diff_id}"


def prune_layer_cache(layer_cache: Path, max_age_days: float) -> list[Path]:
    """Removes the cached layers not used for `max_age_days`; returns them."""
    cutoff = time.time() - max_age_days * 86400
    removed = []
    for path in layer_cache.glob("*.tar.gz*") if layer_cache.is_dir() else []:
        if path.stat().st_mtime < cutoff:
            path.unlink()
            removed.append(path)
    return removed


def _json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _image_config(spec: ImageSpec, diff_ids: list[str]) -> dict:
    config: dict[str, object] = {"Env": [f"{k}={v}" for k, v in spec.env],
                                 "WorkingDir": spec.working_dir}
    if spec.entrypoint:
        config["Entrypoint"] = list(spec.entrypoint)
    if spec.cmd:
        config["Cmd"] = list(spec.cmd)
    if spec.user:
        config["User"] = spec.user
    if spec.labels:
        config["Labels"] = dict(spec.labels)
    created = _timestamp(source_date_epoch())
    return {
        "architecture": "amd64",
        "os": "linux",
        "created": created,
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": created, "created_by": layer.comment or f"layer {i}"}
                    for i, layer in enumerate(spec.layers)],
    }


def _timestamp(epoch: int) -> str:
    import datetime
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


def write_archive(spec: ImageSpec, archive: Path, *, layer_cache: Path | None = None) -> str:
    """Writes `spec` as an OCI archive at `archive` (atomically); returns the manifest
    digest. `layer_cache` keeps the compressed tar-file layers across calls (a big base
    layer is then compressed once for every image and build that uses it)."""
    reference = normalize_reference(spec.reference)
    if "@" in reference:
        raise OciError(f"{reference}: an image to write needs a tag, not a digest")
    if not spec.layers:
        raise OciError(f"{reference}: an image needs at least one layer")
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=archive.parent, prefix=".oci-") as tmp:
        root = Path(tmp)
        blobs = _Blobs(root, layer_cache)
        layers, diff_ids = [], []
        for index, layer in enumerate(spec.layers):
            if layer.tar is not None:
                if not layer.tar.is_file():
                    raise OciError(f"{reference}: layer {index}: {layer.tar} is not a file")
                raw = layer.tar
            else:
                raw = root / "layer.tar"
                with raw.open("wb") as out:
                    write_layer(layer.entries, out)
            blob, diff_id = blobs.put_layer(raw, cache=layer.tar is not None)
            layers.append({"mediaType": MEDIA_LAYER_GZIP, "digest": blob.digest, "size": blob.size})
            diff_ids.append(diff_id)
        config = blobs.put_bytes(_json(_image_config(spec, diff_ids)))
        manifest = blobs.put_bytes(_json({
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": {"mediaType": MEDIA_CONFIG, "digest": config.digest, "size": config.size},
            "layers": layers,
        }))
        tag = reference.rsplit(":", 1)[1]
        index_json = _json({
            "schemaVersion": 2,
            "mediaType": MEDIA_INDEX,
            "manifests": [{"mediaType": MEDIA_MANIFEST, "digest": manifest.digest,
                           "size": manifest.size,
                           "annotations": {ANNOTATION_NAME: reference, ANNOTATION_REF: tag},
                           "platform": {"architecture": "amd64", "os": "linux"}}],
        })
        files = {"oci-layout": _json({"imageLayoutVersion": "1.0.0"}), "index.json": index_json}
        partial = archive.with_name(archive.name + ".partial")
        _write_outer_tar(partial, files, sorted(blobs.dir.iterdir()))
        partial.replace(archive)
    return manifest.digest


def _write_outer_tar(path: Path, files: dict[str, bytes], blobs: list[Path]) -> None:
    mtime = source_date_epoch()

    def info(name: str, size: int, directory: bool = False) -> tarfile.TarInfo:
        member = tarfile.TarInfo(name)
        member.size, member.mtime, member.uid, member.gid = size, mtime, 0, 0
        member.mode = 0o755 if directory else 0o644
        if directory:
            member.type, member.size = tarfile.DIRTYPE, 0
        return member

    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            tar.addfile(info(name, len(data)), io.BytesIO(data))
        tar.addfile(info("blobs/", 0, True))
        tar.addfile(info("blobs/sha256/", 0, True))
        for blob in blobs:
            with blob.open("rb") as f:
                tar.addfile(info(f"blobs/sha256/{blob.name}", blob.stat().st_size), f)


def read_index(archive: Path) -> dict:
    """The index.json of an archive written by :func:`write_archive`."""
    try:
        with tarfile.open(archive) as tar:
            member = tar.extractfile("index.json")
            if member is None:
                raise OciError(f"{archive}: index.json is not a file")
            return json.loads(member.read())
    except (OSError, tarfile.TarError, KeyError, ValueError) as exc:
        raise OciError(f"{archive}: not a readable OCI archive: {exc}") from exc


def archive_reference(archive: Path) -> str:
    """The full image name an archive imports as."""
    manifests = read_index(archive).get("manifests") or [{}]
    name = (manifests[0].get("annotations") or {}).get(ANNOTATION_NAME)
    if not name:
        raise OciError(f"{archive}: index.json names no image ({ANNOTATION_NAME})")
    return name
