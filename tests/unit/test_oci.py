"""images/oci.py and the offline parts of images/containers.py: archives are
deterministic, self-consistent (every digest and size matches its blob, diff_ids match the
uncompressed layers), layer members are root-owned with fixed modes and mtimes; image names
normalise as containerd's CRI does; the image cache key follows the inputs; the Debian base
recipe comes from the host's apt sources. No network, no containerd."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from images import containers, debian_base
from images.oci import (Entry, ImageSpec, Layer, OciError, archive_reference, normalize_reference,
                        write_archive, write_layer)

EPOCH = 1700000000


@pytest.fixture(autouse=True)
def fixed_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(EPOCH))


def make_spec(tmp_path: Path, payload: bytes = b"\x7fELF fake binary") -> ImageSpec:
    binary = tmp_path / "tool"
    binary.write_bytes(payload)
    binary.chmod(0o700)
    return ImageSpec("ironvisor/test:1", (
        Layer((Entry("/usr/local/bin/tool", source=binary, mode=0o755),
               Entry("/etc/conf", data=b"x=1\n"), Entry("/bin/sh", link="busybox"),
               Entry("/var/empty"), Entry("/tmp", mode=0o1777))),
        Layer((Entry("/disk/disk.img", data=b"\0" * 4096, mode=0o644),)),
    ), entrypoint=("/usr/local/bin/tool",))


def files_of(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def blob(files: dict[str, bytes], digest: str) -> bytes:
    return files[f"blobs/sha256/{digest.split(':', 1)[1]}"]


def layer_members(archive: Path, index: int) -> list[tarfile.TarInfo]:
    files = files_of(archive)
    manifest = json.loads(blob(files, json.loads(files["index.json"])["manifests"][0]["digest"]))
    raw = gzip.decompress(blob(files, manifest["layers"][index]["digest"]))
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        return tar.getmembers()


def test_same_inputs_give_the_same_bytes(tmp_path: Path) -> None:
    a, b = tmp_path / "a.tar", tmp_path / "b.tar"
    assert write_archive(make_spec(tmp_path), a) == write_archive(make_spec(tmp_path), b)
    assert a.read_bytes() == b.read_bytes()


def test_a_changed_file_changes_the_digest(tmp_path: Path) -> None:
    first = write_archive(make_spec(tmp_path), tmp_path / "a.tar")
    second = write_archive(make_spec(tmp_path, b"\x7fELF other"), tmp_path / "b.tar")
    assert first != second


def test_the_layer_tar_itself_is_deterministic(tmp_path: Path) -> None:
    outs = []
    for _ in range(2):
        out = io.BytesIO()
        write_layer(make_spec(tmp_path).layers[0].entries, out)
        outs.append(out.getvalue())
    assert outs[0] == outs[1]


def test_digests_sizes_and_diff_ids_are_consistent(tmp_path: Path) -> None:
    archive = tmp_path / "img.tar"
    manifest_digest = write_archive(make_spec(tmp_path), archive)
    files = files_of(archive)
    for name, data in files.items():
        if name.startswith("blobs/sha256/"):
            assert hashlib.sha256(data).hexdigest() == name.rsplit("/", 1)[1]
    index = json.loads(files["index.json"])
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    descriptor = index["manifests"][0]
    assert descriptor["digest"] == manifest_digest
    assert descriptor["size"] == len(blob(files, manifest_digest))
    assert descriptor["annotations"] == {
        "io.containerd.image.name": "docker.io/ironvisor/test:1",
        "org.opencontainers.image.ref.name": "1"}
    manifest = json.loads(blob(files, manifest_digest))
    assert manifest["config"]["size"] == len(blob(files, manifest["config"]["digest"]))
    config = json.loads(blob(files, manifest["config"]["digest"]))
    assert config["config"]["Entrypoint"] == ["/usr/local/bin/tool"]
    assert config["config"]["Env"][0].startswith("PATH=/usr/local/sbin:")
    assert config["created"] == "2023-11-14T22:13:20Z"
    assert len(manifest["layers"]) == len(config["rootfs"]["diff_ids"]) == len(config["history"]) == 2
    for layer, diff_id in zip(manifest["layers"], config["rootfs"]["diff_ids"]):
        compressed = blob(files, layer["digest"])
        assert layer["size"] == len(compressed)
        assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
        assert "sha256:" + hashlib.sha256(gzip.decompress(compressed)).hexdigest() == diff_id
        assert compressed[4:8] == b"\0\0\0\0", "gzip header carries no timestamp"
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    assert archive_reference(archive) == "docker.io/ironvisor/test:1"


def test_archive_members_are_root_owned_with_fixed_mtime(tmp_path: Path) -> None:
    archive = tmp_path / "img.tar"
    write_archive(make_spec(tmp_path), archive)
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            assert (member.uid, member.gid, member.uname, member.gname) == (0, 0, "", "")
            assert member.mtime == EPOCH


def test_layer_members_sorted_root_owned_with_parents_and_modes(tmp_path: Path) -> None:
    infos = layer_members_of(tmp_path, 0)
    names = [i.name for i in infos]
    assert names == sorted(names)
    assert {"usr", "usr/local", "usr/local/bin", "etc", "bin", "var", "var/empty", "tmp"} <= set(names)
    assert all((i.uid, i.gid, i.uname, i.gname, i.mtime) == (0, 0, "", "", EPOCH) for i in infos)
    by_name = {i.name: i for i in infos}
    assert by_name["usr/local/bin/tool"].mode == 0o755
    assert by_name["etc/conf"].mode == 0o644
    assert by_name["usr"].isdir() and by_name["usr"].mode == 0o755
    assert by_name["tmp"].mode == 0o1777
    assert by_name["bin/sh"].issym() and by_name["bin/sh"].linkname == "busybox"


def layer_members_of(tmp_path: Path, index: int) -> list[tarfile.TarInfo]:
    archive = tmp_path / "img.tar"
    write_archive(make_spec(tmp_path), archive)
    return layer_members(archive, index)


def test_a_container_disk_layer_holds_only_the_disk(tmp_path: Path) -> None:
    assert [(i.name, i.mode) for i in layer_members_of(tmp_path, 1)] == [
        ("disk", 0o755), ("disk/disk.img", 0o644)]


def test_a_tar_layer_is_taken_as_is_and_its_compression_cached(tmp_path: Path) -> None:
    base = tmp_path / "base.tar"
    with tarfile.open(base, "w") as tar:
        info = tarfile.TarInfo("./etc/os-release")
        info.size, info.uid, info.gid = 3, 0, 42
        tar.addfile(info, io.BytesIO(b"x=1"))
    spec = ImageSpec("ironvisor/base:1", (Layer(tar=base),))
    cache = tmp_path / "layers"
    first = write_archive(spec, tmp_path / "a.tar", layer_cache=cache)
    assert [p.name for p in cache.iterdir()] == [f"{hashlib.sha256(base.read_bytes()).hexdigest()}.tar.gz"]
    assert write_archive(spec, tmp_path / "b.tar", layer_cache=cache) == first
    files = files_of(tmp_path / "a.tar")
    manifest = json.loads(blob(files, first))
    assert gzip.decompress(blob(files, manifest["layers"][0]["digest"])) == base.read_bytes()


def test_missing_input_names_it(tmp_path: Path) -> None:
    bad = ImageSpec("x/y:1", (Layer((Entry("/f", source=tmp_path / "nope"),)),))
    with pytest.raises(OciError, match="nope"):
        write_archive(bad, tmp_path / "x.tar")
    assert not (tmp_path / "x.tar").exists()


@pytest.mark.parametrize("given,full", [
    ("ironvisor/rootfs:busybox", "docker.io/ironvisor/rootfs:busybox"),
    ("ironvisor/pause:3.10", "docker.io/ironvisor/pause:3.10"),
    ("busybox", "docker.io/library/busybox:latest"),
    ("docker.io/busybox:1", "docker.io/library/busybox:1"),
    ("ironvisor/x", "docker.io/ironvisor/x:latest"),
    ("index.docker.io/ironvisor/x:2", "docker.io/ironvisor/x:2"),
    ("registry.local:5000/a/b:2", "registry.local:5000/a/b:2"),
    ("localhost/a", "localhost/a:latest"),
    ("docker.io/ironvisor/pause:3.10", "docker.io/ironvisor/pause:3.10"),
    ("a/b@sha256:00", "docker.io/a/b@sha256:00"),
])
def test_names_normalise_like_the_cri(given: str, full: str) -> None:
    assert normalize_reference(given) == full


@pytest.mark.parametrize("bad", ["", "Ironvisor/x:1", "a b:1", "a/b:x/y"])
def test_bad_names_are_refused(bad: str) -> None:
    with pytest.raises(OciError):
        normalize_reference(bad)


def test_every_image_lists_under_its_full_name() -> None:
    names = {image.name: containers.listed_reference(image) for image in containers.IMAGES}
    assert list(names) == ["pause", "rootfs", "debian", "busybox", "guest-kernel", "launcher",
                           "handler", "controller", "apiserver", "csi-hostpath",
                           "csi-provisioner"]
    assert names["csi-provisioner"] == (
        f"docker.io/ironvisor/csi-provisioner:{containers.CSI_PROVISIONER_VERSION}")
    assert names["csi-hostpath"] == f"docker.io/ironvisor/csi-hostpath:{containers.VERSION}"
    assert names["debian"] == "docker.io/ironvisor/debian:bookworm"
    assert names["apiserver"] == f"docker.io/ironvisor/apiserver:{containers.VERSION}"
    assert names["pause"] == "docker.io/ironvisor/pause:3.10"
    assert names["busybox"] == "docker.io/ironvisor/busybox:1.35"
    assert names["rootfs"] == "docker.io/ironvisor/rootfs:busybox"
    assert names["launcher"] == f"docker.io/ironvisor/launcher:{containers.VERSION}"
    assert names["guest-kernel"].startswith("docker.io/ironvisor/guest-kernel:debian-")


def test_version_is_the_workspace_version() -> None:
    cargo_toml = Path(__file__).resolve().parents[2] / "Cargo.toml"
    assert f'version = "{containers.VERSION}"' in cargo_toml.read_text()


def test_select_keeps_build_order_and_refuses_unknown_names() -> None:
    assert [i.name for i in containers.select(["controller", "pause"])] == ["pause", "controller"]
    with pytest.raises(containers.ContainersError, match="nope"):
        containers.select(["nope"])


def test_input_key_follows_file_content_and_settings(tmp_path: Path) -> None:
    spec = make_spec(tmp_path)
    key = containers.input_key(spec)
    assert containers.input_key(make_spec(tmp_path)) == key
    assert containers.input_key(make_spec(tmp_path, b"changed")) != key
    moved = ImageSpec(spec.reference, spec.layers, entrypoint=("/other",))
    assert containers.input_key(moved) != key


def test_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("IRONVISOR_CACHE_DIR", str(tmp_path))
    assert containers.cache_dir() == tmp_path / "oci"
    monkeypatch.delenv("IRONVISOR_CACHE_DIR")
    assert containers.cache_dir() == Path("/var/cache/ironvisor/oci")


def test_qemu_conf_block_runs_qemu_container_style() -> None:
    block = containers.QEMU_CONF_BLOCK.decode()
    for line in ('user = "root"', 'group = "root"', "dynamic_ownership = 0",
                 'security_driver = "none"', "cgroup_controllers = [ ]", "namespaces = [ ]",
                 "remember_owner = 0"):
        assert f"\n{line}\n" in block


SOURCES = """Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main

Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
"""


def test_base_recipe_uses_the_host_sources_and_release_dates(tmp_path: Path) -> None:
    (tmp_path / "debian.sources").write_text(SOURCES)
    (tmp_path / "other.list").write_text("deb http://example.org x main\n")
    sources = debian_base.host_sources(tmp_path)
    assert [s.line() for s in sources] == [
        "deb http://deb.debian.org/debian bookworm main",
        "deb http://deb.debian.org/debian bookworm-updates main",
        "deb http://deb.debian.org/debian-security bookworm-security main"]
    lists = tmp_path / "lists"
    lists.mkdir()
    for prefix, date in (("deb.debian.org_debian_dists_bookworm_", "Sat, 09 Aug 2025 09:00:00 UTC"),
                         ("deb.debian.org_debian_dists_bookworm-updates_", "Mon, 01 Dec 2025 20:00:00 UTC"),
                         ("deb.debian.org_debian-security_dists_bookworm-security_",
                          "Tue, 02 Dec 2025 21:15:27 UTC")):
        (lists / f"{prefix}InRelease").write_text(f"Origin: Debian\nDate: {date}\n")
    assert debian_base.snapshot_date(sources, lists) == "20251202T211527Z"
    cmd = debian_base.mmdebstrap_command(sources, Path("/out.tar"))
    assert "--variant=essential" in cmd and cmd[-4:-3] == ["/out.tar"]
    include = next(c for c in cmd if c.startswith("--include=")).split("=", 1)[1].split(",")
    assert set(debian_base.LAUNCHER_PACKAGES) | set(debian_base.HANDLER_PACKAGES) <= set(include)
    (lists / "deb.debian.org_debian_dists_bookworm_InRelease").unlink()
    with pytest.raises(debian_base.BaseError, match="apt-get update"):
        debian_base.snapshot_date(sources, lists)


def test_layer_cache_prune_removes_only_long_unused_layers(tmp_path: Path) -> None:
    import os
    from images.oci import prune_layer_cache
    old, fresh = tmp_path / "a.tar.gz", tmp_path / "b.tar.gz"
    old.write_bytes(b"1")
    fresh.write_bytes(b"2")
    os.utime(old, (1, 1))
    assert prune_layer_cache(tmp_path, 14) == [old]
    assert [p.name for p in tmp_path.iterdir()] == ["b.tar.gz"]
    assert prune_layer_cache(tmp_path / "missing", 14) == []


def test_import_without_containerd_names_the_socket(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    socket = tmp_path / "no" / "containerd.sock"
    assert containers.main(["import", "--only", "pause", "--containerd-socket", str(socket)]) == 1
    err = capsys.readouterr().err
    assert "containerd is not reachable" in err and str(socket) in err
