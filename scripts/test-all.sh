#!/usr/bin/env bash
# Runs every Ironvisor test on a fresh Debian 12 machine (root): installs what it needs,
# checks formatting and lints, builds the guest images, starts libvirt for the
# software-emulation backend, runs the Rust tests, builds the release binaries and runs
# the end-to-end tests (the KVM launcher and the node agent for real inside nested KVM,
# the software-emulation node on the host), then cluster mode on a real single-node
# Kubernetes built and started by scripts/cluster.sh (cached by version under
# /var/cache/ironvisor; the first run on a machine builds it).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

log() { printf '\n=== %s ===\n' "$*"; }

# A clean checkout builds everything once: incremental state would only double the size
# of target/ (CI runs on a fresh clone, so there is nothing to reuse).
export CARGO_INCREMENTAL=0

# The build, the guest images and the cluster's cache need room; running out half-way
# shows up as a linker crash, so say it up front.
need_gib=25
free_gib=$(df --output=avail -BG "$root" | tail -1 | tr -dc '0-9')
if [ "${free_gib:-0}" -lt "$need_gib" ]; then
  echo "test-all: only ${free_gib} GiB free on $(df --output=target "$root" | tail -1)" \
       "(${root}); the full test run needs about ${need_gib} GiB" >&2
  exit 1
fi

log "system packages"
"$root/scripts/install-deps.sh"

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

log "guest images"
python3 images/build.py

log "libvirt + QEMU (software-emulation backend)"
launcher/qemu/setup-libvirt.sh

log "unit and integration tests (cargo test)"
cargo test --workspace --locked

log "release binaries"
cargo build --release --locked -p ironvisor-launcher -p ironvisor-bootbench \
  -p ironvisor-handler -p ironvisor-launcher-qemu -p ironvisor-virtctl -p ironvisor-controller

log "end-to-end tests (pytest: nested KVM under QEMU TCG, software emulation on the host)"
python3 -m pytest -v -p no:cacheprovider tests/ --ignore=tests/cluster

# Separately, so the cluster's control plane does not load the machine during the
# nested-KVM tests; the session brings the cluster up (building it once per machine) and
# down again.
log "cluster mode (pytest: real Kubernetes from scripts/cluster.sh, Ironvisor from deploy/)"
python3 -m pytest -v -p no:cacheprovider tests/cluster
