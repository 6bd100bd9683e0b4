"""images/oci.py: archives are deterministic, self-consistent (every digest and size
matches its blob, diff_ids match the uncompressed layers) and owned by root; image names
normalise as containerd's CRI does."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from images.oci import Entry, ImageSpec, Layer, OciError, normalize_reference, write_archive


def spec(tmp_path: Path) -> ImageSpec:
    binary = tmp_path / "tool"
    binary.write_bytes(b"\x7fELF fake binary")
    binary.chmod(0o755)
    return ImageSpec("ironvisor/test:1", [
        Layer([Entry("/usr/local/bin/tool", source=binary), Entry("/etc/conf", data=b"x=1\n"),
               Entry("/bin/sh", link="busybox"), Entry("/var/empty")]),
        Layer([Entry("/disk/disk.img", data=b"\0" * 4096, mode=0o644)]),
    ], entrypoint=["/usr/local/bin/tool"])


def members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def test_same_inputs_same_bytes(tmp_path: Path) -> None:
    a, b = tmp_path / "a.tar", tmp_path / "b.tar"
    first = write_archive(spec(tmp_path), a)
    second = write_archive(spec(tmp_path), b)
    assert first == second
    assert a.read_bytes() == b.read_bytes()


def test_digests_sizes_and_diff_ids_are_consistent(tmp_path: Path) -> None:
    archive = tmp_path / "img.tar"
    manifest_digest = write_archive(spec(tmp_path), archive)
    files = members(archive)
    blob = lambda d: files[f"blobs/sha256/{d.split(':')[1]}"]  # noqa: E731
    for name, data in files.items():
        if name.startswith("blobs/sha256/"):
            assert hashlib.sha256(data).hexdigest() == name.rsplit("/", 1)[1]
    index = json.loads(files["index.json"])
    descriptor = index["manifests"][0]
    assert descriptor["digest"] == manifest_digest
    assert descriptor["annotations"]["io.containerd.image.name"] == "docker.io/ironvisor/test:1"
    assert descriptor["annotations"]["org.opencontainers.image.ref.name"] == "1"
    manifest = json.loads(blob(manifest_digest))
    assert len(blob(manifest_digest)) == descriptor["size"]
    config = json.loads(blob(manifest["config"]["digest"]))
    assert config["config"]["Entrypoint"] == ["/usr/local/bin/tool"]
    for layer, diff_id in zip(manifest["layers"], config["rootfs"]["diff_ids"]):
        raw = gzip.decompress(blob(layer["digest"]))
        assert "sha256:" + hashlib.sha256(raw).hexdigest() == diff_id
        assert len(blob(layer["digest"])) == layer["size"]
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}


def test_layer_members_are_root_owned_sorted_with_parents(tmp_path: Path) -> None:
    archive = tmp_path / "img.tar"
    digest = write_archive(spec(tmp_path), archive)
    files = members(archive)
    manifest = json.loads(files[f"blobs/sha256/{digest.split(':')[1]}"])
    first = gzip.decompress(files[f"blobs/sha256/{manifest['layers'][0]['digest'].split(':')[1]}"])
    with tarfile.open(fileobj=io.BytesIO(first)) as tar:
        infos = tar.getmembers()
    names = [i.name for i in infos]
    assert names == sorted(names)
    assert {"usr", "usr/local", "usr/local/bin", "etc", "bin"} <= set(names)
    assert all(i.uid == 0 and i.gid == 0 for i in infos)
    tool = next(i for i in infos if i.name == "usr/local/bin/tool")
    assert tool.mode == 0o755
    assert next(i for i in infos if i.name == "bin/sh").linkname == "busybox"


def test_missing_input_names_it(tmp_path: Path) -> None:
    bad = ImageSpec("x/y:1", [Layer([Entry("/f", source=tmp_path / "nope")])])
    with pytest.raises(OciError, match="nope"):
        write_archive(bad, tmp_path / "x.tar")


@pytest.mark.parametrize("given,full", [
    ("ironvisor/rootfs:busybox", "docker.io/ironvisor/rootfs:busybox"),
    ("busybox", "docker.io/library/busybox:latest"),
    ("ironvisor/x", "docker.io/ironvisor/x:latest"),
    ("registry.local:5000/a/b:2", "registry.local:5000/a/b:2"),
    ("docker.io/ironvisor/pause:3.10", "docker.io/ironvisor/pause:3.10"),
])
def test_names_normalise_like_the_cri(given: str, full: str) -> None:
    assert normalize_reference(given) == full
