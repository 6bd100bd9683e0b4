#!/usr/bin/env bash
# Installs the Debian packages and Python tools the build and the tests need.
# Idempotent: does nothing when everything is present.
set -euo pipefail

packages=(
  qemu-system-x86   # L1 for nested KVM (TCG + SVM) and the QEMU peer in benchmarks
  busybox-static    # guest and L1 userland
  cpio lz4 kmod     # initramfs assembly, kernel payload extraction, module info
  e2fsprogs         # ext4 disk images (mkfs.ext4 -d, debugfs)
  iproute2          # tap devices in tests
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

if ! python3 -c 'import pytest' 2>/dev/null; then
  python3 -m pip install --quiet 'pytest>=8,<9'
fi
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt
