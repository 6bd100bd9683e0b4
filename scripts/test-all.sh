#!/usr/bin/env bash
# Runs every Ironvisor test on a fresh Debian 12 machine (root): installs what it needs,
# checks formatting and lints, builds the guest images, starts libvirt for the
# software-emulation backend, runs the Rust tests and a short smoke of every fuzz target,
# builds the release binaries and runs
# the end-to-end tests (the KVM launcher and the node agent for real inside nested KVM,
# the software-emulation node on the host), then cluster mode on a real single-node
# Kubernetes built and started by scripts/cluster.sh (cached by version under
# /var/cache/ironvisor; the first run on a machine builds it).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

log() { printf '\n=== %s ===\n' "$*"; }

# Incremental state would only double the size of target/: CI builds each commit once.
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

# Each stage's output is kept, and the summary at the end (also after a failure) counts
# what ran, what was ignored or skipped and why, and the reruns and L1 retries.
logs=$(mktemp -d /tmp/ironvisor-test-all.XXXXXX)
skipped_by_us=()
trap 'cd "$root" && python3 -m tests.summary "$logs" "${skipped_by_us[@]}"' EXIT

log "system packages"
"$root/scripts/install-deps.sh"

# A fresh checkout has no target/: it gets the machine's build cache outside the work tree
# (by toolchain version, like the other caches under /var/cache/ironvisor), so a rerun on
# the same machine compiles only the workspace's own crates (their sources are newer than
# the cached artifacts) and not its ~370 dependencies again; a new machine builds all.
# A checkout that has its own target/ keeps it.
if [ ! -e "$root/target" ]; then
  cargo_cache=/var/cache/ironvisor/cargo-target/rustc-$(rustc --version | cut -d' ' -f2)
  mkdir -p "$cargo_cache"
  ln -s "$cargo_cache" "$root/target"
  echo "target/ -> $cargo_cache"
fi

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

log "guest images"
python3 images/build.py

log "libvirt + QEMU (software-emulation backend)"
launcher/qemu/setup-libvirt.sh

# Tests that need root, a tool, a device, libvirt or the guest images are #[ignore]d
# with that need (a plain `cargo test` lists them as ignored); everything they need is
# installed above, so they run here and fail, not skip, if something is missing.
cargo_skips=()
if grep -qwE 'vmx|svm' /proc/cpuinfo; then
  # It checks the refusal of a KVM device that cannot run stock guests (PVM).
  cargo_skips+=(--skip a_kvm_device_without_hardware_virtualization_is_refused_up_front)
  skipped_by_us+=("a_kvm_device_without_hardware_virtualization_is_refused_up_front: this CPU has vmx/svm, the test needs a PVM /dev/kvm")
fi
log "unit and integration tests (cargo test, including the ignored ones)"
cargo test --workspace --locked -- --include-ignored "${cargo_skips[@]}" 2>&1 | tee "$logs/cargo-test.log"

# Every cargo-fuzz target for a few seconds (built with nightly + ASan, cached by toolchain
# version under /var/cache/ironvisor/fuzz-target): a crash, hang or OOM fails the run.
log "fuzzing smoke (scripts/fuzz.sh: each target 5 s)"
scripts/fuzz.sh smoke 5 2>&1 | tee "$logs/fuzz-smoke.log"

log "release binaries"
# What the end-to-end tests run (the cluster's images build their own static binaries;
# the boot benchmark builds ironvisor-bootbench when it runs).
cargo build --release --locked -p ironvisor-launcher -p ironvisor-handler \
  -p ironvisor-launcher-qemu -p ironvisor-virtctl
# The KVM launcher as shipped, statically linked (the nested-KVM tests run this one).
scripts/build-launcher.sh

log "end-to-end tests (pytest: nested KVM under QEMU TCG, software emulation on the host)"
python3 -m pytest -v -rs --durations=15 -p no:cacheprovider tests/ --ignore=tests/cluster 2>&1 | tee "$logs/pytest-e2e.log"

# Separately, so the cluster's control plane does not load the machine during the
# nested-KVM tests; the session brings the cluster up (building it once per machine) and
# down again.
log "cluster mode (pytest: real Kubernetes from scripts/cluster.sh, Ironvisor from deploy/)"
python3 -m pytest -v -rs --durations=15 -p no:cacheprovider tests/cluster 2>&1 | tee "$logs/pytest-cluster.log"
