#!/bin/sh
# Installs what images/ and tests/ need on a fresh Debian 12 machine (run as root).
set -eu
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# images/: busybox-static cpio lz4 e2fsprogs kmod (see images/README.md)
# tests/nested, tests/e2e: QEMU (L0 TCG and QEMU inside L1), iproute2 (ip tuntap), file
apt-get install -y -q --no-install-recommends \
	busybox-static cpio lz4 e2fsprogs kmod gzip \
	qemu-system-x86 iproute2
python3 -m pip install -q -r "$(dirname "$0")/requirements.txt"
