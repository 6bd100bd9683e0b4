#!/usr/bin/env bash
# Runs every Ironvisor test on a fresh Debian 12 machine: installs what it needs,
# checks formatting and lints, runs the unit tests, builds the guest images, and runs the
# end-to-end tests (the launcher ones for real inside nested KVM).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

log() { printf '\n=== %s ===\n' "$*"; }

log "system packages"
"$root/scripts/install-deps.sh"

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

log "unit and integration tests (cargo test)"
cargo test --workspace --locked

log "release binaries"
cargo build --release --locked -p ironvisor-launcher -p ironvisor-bootbench

log "guest images"
python3 images/build.py

log "end-to-end tests (nested KVM under QEMU TCG)"
python3 -m pytest -v -p no:cacheprovider tests/
