#!/usr/bin/env bash
# Builds the KVM launcher (ironvisor-launcher) as Ironvisor ships it: the `launcher` profile
# (fat LTO, one codegen unit, opt-level "s"), statically linked against glibc (+crt-static)
# with packed relative relocations (DT_RELR, `-z pack-relative-relocs`). Each keeps memory
# off every VM's bill: a static launcher maps no shared library, DT_RELR shrinks the
# relocation table its start-up reads from ~400 KiB to ~5 KiB, the profile cuts its code by
# a third (tests/README.md has the measurements). `--target` keeps the flags away from
# build scripts and proc macros, so the ordinary `target/release` builds stay as they are.
# Prints the binary's path as its last line.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
triple=x86_64-unknown-linux-gnu
target_dir=${CARGO_TARGET_DIR:-$root/target}
cd "$root"
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static -C link-arg=-Wl,-z,pack-relative-relocs" \
  cargo build --profile launcher --locked -p ironvisor-launcher --bin ironvisor-launcher \
  --target "$triple" >&2
bin=$target_dir/$triple/launcher/ironvisor-launcher
if readelf -l "$bin" | grep -q INTERP; then
  echo "build-launcher: $bin is dynamically linked (crt-static ignored?)" >&2
  exit 1
fi
echo "$bin"
