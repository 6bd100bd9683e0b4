#!/usr/bin/env bash
# Installs the Debian packages and Python tools that the build, the demo and the tests
# need on a fresh Debian 12 machine (root). Idempotent: does nothing when all is present.
set -euo pipefail

packages=(
  # build
  pkg-config libvirt-dev              # the `virt` crate links libvirt
  # guest images (images/build.py)
  busybox-static cpio lz4 kmod gzip e2fsprogs
  # nested KVM (L1 under TCG), the QEMU peer in benchmarks, software emulation
  qemu-system-x86 qemu-utils ovmf
  libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients
  # node networking (handler/net/DEPENDENCIES)
  containernetworking-plugins iptables iproute2 nftables dnsmasq-base procps
  # the cloud-init seed checks (handler/disks): fsck.fat and mtype read the FAT image
  dosfstools mtools
  # the ACPI and SMBIOS table checks (launcher/arch): iasl and dmidecode read them back
  acpica-tools dmidecode
  # cluster mode: offline container images (images/containers.py); the test cluster's
  # own packages (containerd, runc, iptables, ...) are installed by scripts/cluster.sh
  mmdebstrap
  binutils                            # strip: the KVM launcher's copy in the node image
  # virtctl ssh runs the local OpenSSH client (and the tests make keys with ssh-keygen)
  openssh-client
  # tests
  python3-pip
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if ! python3 -c 'import pytest, pytest_rerunfailures, kubernetes_validate, yaml, sys; sys.exit(int(pytest.__version__.split(".")[0]) < 8)' 2>/dev/null; then
  # Debian 12 marks its Python as externally managed; pytest 8 is not packaged there.
  python3 -m pip install --quiet --break-system-packages -r "$(dirname "$0")/../tests/requirements.txt"
fi
if command -v rustup >/dev/null 2>&1; then
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt
fi
