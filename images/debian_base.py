"""The Debian bookworm root file system under the launcher and handler images.

Made with ``mmdebstrap --variant=essential`` from the host's Debian sources (the same
suites the host's libvirt and glibc come from, so the dynamically linked Ironvisor
binaries find the libraries they were linked against), without recommends, without
documentation, man pages, info pages and locales. One base serves both images (the
union of their packages), so containerd stores it once.

It is the expensive part (about 100 MiB of packages), so the tar is cached under
``<cache>/base/``, keyed by the package list, the build options and the Debian snapshot
date: the newest ``Date:`` of the host's apt lists for those suites, which moves when
``apt-get update`` sees a new Debian release or security update.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import logging
import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from images.common import source_date_epoch

log = logging.getLogger("images.debian_base")

SUITE = "bookworm"

#: What the software-emulation launcher runs: libvirt's QEMU driver and QEMU itself, the
#: static busybox the launcher pod's init containers copy, iproute2 and CA certificates.
LAUNCHER_PACKAGES = (
    "libvirt-daemon", "libvirt-daemon-driver-qemu", "qemu-system-x86", "qemu-utils",
    "busybox-static", "iproute2", "ca-certificates",
)
#: What the node agent runs on the node: the CNI plugins, nftables/iptables, dnsmasq
#: (DHCP for the guests) and procps.
HANDLER_PACKAGES = (
    "containernetworking-plugins", "nftables", "iptables", "dnsmasq-base", "iproute2", "procps",
)
#: groupadd/useradd for the customize hook.
TOOL_PACKAGES = ("passwd",)
PACKAGES = tuple(sorted(set(LAUNCHER_PACKAGES + HANDLER_PACKAGES + TOOL_PACKAGES)))

#: Documentation and translations are not installed (dpkg path filters).
EXCLUDED_PATHS = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*",
                  "/usr/share/locale/*", "/usr/share/lintian/*", "/usr/share/bash-completion/*")
#: ...except the copyright files, which the licences ask to ship.
INCLUDED_PATHS = ("/usr/share/doc/*/copyright",)

#: The launcher pods' user and group (``ironvisor_crds::cluster::LAUNCHER_UID``): libvirt's
#: per-user daemons need it in /etc/passwd. Its home is the pod's ``libvirt`` emptyDir.
LAUNCHER_UID = 107
LAUNCHER_HOME = "/var/run/ironvisor/libvirt"

#: The users and groups libvirt's QEMU driver expects (the Debian packages that create
#: them, libvirt-daemon-system and udev, are not installed), and the launcher user.
USERS_HOOK = (
    "set -e; "
    f"getent group ironvisor >/dev/null || groupadd --system --gid {LAUNCHER_UID} ironvisor; "
    f"getent passwd ironvisor >/dev/null || useradd --system --uid {LAUNCHER_UID} "
    f"--gid {LAUNCHER_UID} --no-create-home --home-dir {LAUNCHER_HOME} "
    "--shell /usr/sbin/nologin ironvisor; "
    "getent group kvm >/dev/null || groupadd --system kvm; "
    "getent group libvirt >/dev/null || groupadd --system libvirt; "
    "getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu; "
    "getent passwd libvirt-qemu >/dev/null || useradd --system --no-create-home "
    "--home-dir /var/lib/libvirt --shell /usr/sbin/nologin -g libvirt-qemu -G kvm libvirt-qemu; "
    "rm -f /var/log/*.log /var/log/apt/* /var/cache/ldconfig/aux-cache"
)

#: mmdebstrap's own merged-/usr setup (with usr-is-merged): without it apt satisfies
#: init-system-helpers with usrmerge, which pulls in perl (about 50 MiB).
MERGED_USR_HOOK = "/usr/share/mmdebstrap/hooks/merged-usr"

_APT_LISTS = Path("/var/lib/apt/lists")


class BaseError(RuntimeError):
    """The base root file system could not be made; the message has the mmdebstrap output."""


@dataclass(frozen=True)
class Source:
    """One deb822 source stanza: ``deb URI SUITE COMPONENTS``."""

    uri: str
    suite: str
    components: str

    def line(self) -> str:
        return f"deb {self.uri} {self.suite} {self.components}"


def host_sources(sources_dir: Path = Path("/etc/apt/sources.list.d")) -> list[Source]:
    """The host's Debian sources for the bookworm suites (deb822 ``.sources`` files)."""
    found: list[Source] = []
    for path in sorted(sources_dir.glob("*.sources")):
        for stanza in path.read_text().split("\n\n"):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line or line[:1].isspace():
                    continue
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
            if "deb" not in fields.get("types", "").split() or fields.get("enabled") == "no":
                continue
            for uri in fields.get("uris", "").split():
                for suite in fields.get("suites", "").split():
                    if suite == SUITE or suite.startswith(f"{SUITE}-"):
                        found.append(Source(uri.rstrip("/"), suite,
                                            fields.get("components", "main")))
    if not found:
        raise BaseError(f"no Debian {SUITE} source in {sources_dir}/*.sources")
    return found


def _list_prefix(source: Source) -> str:
    uri = source.uri.split("://", 1)[-1].replace("/", "_")
    return f"{uri}_dists_{source.suite}_"


def snapshot_date(sources: list[Source], lists: Path = _APT_LISTS) -> str:
    """The newest ``Date:`` of the host's apt Release files of ``sources`` (YYYYMMDDTHHMMSSZ)."""
    newest = None
    for source in sources:
        for name in ("InRelease", "Release"):
            path = lists / (_list_prefix(source) + name)
            if path.is_file():
                break
        else:
            raise BaseError(f"no apt Release file for {source.line()} in {lists} "
                            "(run apt-get update)")
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("Date:"):
                when = email.utils.parsedate_to_datetime(line[5:].strip())
                newest = when if newest is None or when > newest else newest
                break
    if newest is None:
        raise BaseError(f"the apt Release files in {lists} have no Date:")
    return newest.strftime("%Y%m%dT%H%M%SZ")


def mmdebstrap_command(sources: list[Source], output: Path) -> list[str]:
    """The mmdebstrap invocation (without the environment)."""
    cmd = ["mmdebstrap", "--mode=root", "--variant=essential", "--format=tar",
           f"--hook-dir={MERGED_USR_HOOK}", "--include=" + ",".join(PACKAGES)]
    cmd += [f"--dpkgopt=path-exclude={p}" for p in EXCLUDED_PATHS]
    cmd += [f"--dpkgopt=path-include={p}" for p in INCLUDED_PATHS]
    cmd += [f"--customize-hook=chroot \"$1\" sh -c '{USERS_HOOK}'", SUITE, str(output)]
    cmd += [source.line() for source in sources]
    return cmd


def cache_key(sources: list[Source]) -> str:
    """The name part of the cached tar: the snapshot date and a hash of the recipe."""
    recipe = json.dumps([mmdebstrap_command(sources, Path("-")), source_date_epoch()])
    return f"{snapshot_date(sources)}-{hashlib.sha256(recipe.encode()).hexdigest()[:12]}"


def base_rootfs(cache: Path) -> Path:
    """The cached base tar (made now if its key changed); older ones are removed."""
    sources = host_sources()
    key = cache_key(sources)
    directory = cache / "base"
    out = directory / f"{SUITE}-{key}.tar"
    if out.is_file():
        return out
    if shutil.which("mmdebstrap") is None:
        raise BaseError("mmdebstrap is not installed (apt-get install -y mmdebstrap)")
    directory.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    partial.unlink(missing_ok=True)
    cmd = mmdebstrap_command(sources, partial)
    log.info("mmdebstrap: Debian %s with %s (cached as %s; takes minutes)",
             SUITE, " ".join(PACKAGES), out)
    done = subprocess.run(["nice", "-n", "10", *cmd], capture_output=True, text=True,
                          env={**os.environ, "SOURCE_DATE_EPOCH": str(source_date_epoch())},
                          check=False)
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        raise BaseError(f"mmdebstrap of the {SUITE} base into {partial} exited "
                        f"{done.returncode}:\n{done.stderr.strip()[-3000:]}")
    partial.replace(out)
    for stale in directory.glob(f"{SUITE}-*.tar*"):
        if stale.name not in (out.name, out.name + ".names.json"):
            stale.unlink()
    return out


def member_names(base: Path) -> set[str]:
    """Every path in the base tar, without the leading ``./`` (cached next to it)."""
    cached = base.with_name(base.name + ".names.json")
    if cached.is_file():
        return set(json.loads(cached.read_text()))
    try:
        with tarfile.open(base) as tar:
            names = sorted({m.name.removeprefix("./").rstrip("/") for m in tar})
    except (OSError, tarfile.TarError) as exc:
        raise BaseError(f"cannot read the base tar {base}: {exc}") from exc
    cached.write_text(json.dumps(names))
    return set(names)


def extract_member(base: Path, member: str, out: Path) -> Path:
    """One regular file of the base tar (``usr/bin/busybox``), copied to ``out`` unless it
    is there already; named by the base tar's key, so a new base gives a new copy."""
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    try:
        with tarfile.open(base) as tar:
            source = tar.extractfile(f"./{member}")
            if source is None:
                raise BaseError(f"{member} in {base} is not a regular file")
            with source, open(partial, "wb") as sink:
                shutil.copyfileobj(source, sink)
    except KeyError as exc:
        raise BaseError(f"the base tar {base} has no {member}") from exc
    except (OSError, tarfile.TarError) as exc:
        raise BaseError(f"cannot read {member} from the base tar {base}: {exc}") from exc
    partial.replace(out)
    return out
