#!/usr/bin/env bash
# Build the peer VMMs used by the boot benchmark (Firecracker, Cloud Hypervisor)
# from local source snapshots (git dirs without a work tree).
#
# Usage: build-peers.sh [FC_GIT] [CH_GIT] [MH_GIT]
#   FC_GIT  firecracker git dir   (env FC_GIT, default below)
#   CH_GIT  cloud-hypervisor git dir (env CH_GIT)
#   MH_GIT  micro-http git dir    (env MH_GIT); both VMMs take it from git,
#           we point them at a local copy instead.
# Output: $PEERS/bin/{firecracker,cloud-hypervisor}-<short commit> plus
# stable symlinks without the suffix. A binary already present for a commit
# is reused. Tunables: PEERS, CARGO_BUILD_JOBS (default 2).
set -euo pipefail

MIRROR=/work/.mirror
FC_GIT=${1:-${FC_GIT:-$MIRROR/firecracker-microvm+firecracker/repo}}
CH_GIT=${2:-${CH_GIT:-$MIRROR/cloud-hypervisor+cloud-hypervisor/repo}}
MH_GIT=${3:-${MH_GIT:-$MIRROR/firecracker-microvm+micro-http/repo}}
PEERS=${PEERS:-/var/cache/ironvisor/peers}
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2}
MH_URL=https://github.com/firecracker-microvm/micro-http

log() { echo "[build-peers] $*" >&2; }
short() { git --git-dir="$1" rev-parse --short=7 HEAD; }

# extract GITDIR DEST: write HEAD's tree into DEST (once). Blobs missing from
# the snapshot are left out rather than failing the whole archive.
extract() {
  local git=$1 dest=$2 missing=()
  [[ -f $dest/.extracted ]] && return 0
  rm -rf "$dest" && mkdir -p "$dest"
  mapfile -t missing < <(git --git-dir="$git" ls-tree -r HEAD |
    awk -F'\t' '$1 ~ / blob / { split($1, a, " "); print a[3] " " $2 }' |
    while read -r sha path; do
      git --git-dir="$git" cat-file -e "$sha" 2>/dev/null || echo "$path"
    done)
  local excl=()
  for p in "${missing[@]}"; do
    log "snapshot lacks $p; skipping it"
    excl+=(":(exclude)$p")
  done
  # git still names an excluded missing blob as "invalid object" (rc stays 0);
  # hide that line, a real failure still fails the pipeline.
  git --git-dir="$git" archive HEAD -- . "${excl[@]}" \
    2> >(grep -v "^error: invalid object" >&2) | tar -x -C "$dest"
  touch "$dest/.extracted"
}

# patch_micro_http TREE: make cargo use the local micro-http for TREE.
patch_micro_http() {
  local cfg=$1/.cargo/config.toml
  mkdir -p "$1/.cargo"
  grep -qF "[patch.\"$MH_URL\"]" "$cfg" 2>/dev/null && return 0
  printf '\n[patch."%s"]\nmicro_http = { path = "%s" }\n' "$MH_URL" "$MH_SRC" >>"$cfg"
}

# Debian packages: libclang for bindgen (userfaultfd-sys), libseccomp for seccompiler.
need_pkgs=()
for p in libclang-dev libseccomp-dev; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep 'install ok installed' >/dev/null || need_pkgs+=("$p")
done
if ((${#need_pkgs[@]})); then
  log "installing ${need_pkgs[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y "${need_pkgs[@]}"
fi

mkdir -p "$PEERS/src" "$PEERS/bin" "$PEERS/target"
MH_SRC=$PEERS/src/micro-http-$(short "$MH_GIT")
extract "$MH_GIT" "$MH_SRC"

# build NAME GITDIR TOOLCHAIN CARGO_ARGS...: build one VMM unless cached.
build() {
  local name=$1 git=$2 tc=$3; shift 3
  local rev; rev=$(short "$git")
  local out=$PEERS/bin/$name-$rev src=$PEERS/src/$name-$rev
  if [[ -x $out ]]; then
    log "$name $rev: cached at $out"
  else
    extract "$git" "$src"
    patch_micro_http "$src"
    local t0=$SECONDS
    log "$name $rev: building with Rust $tc"
    # CARGO_TARGET_DIR overrides any target-dir in the tree's own cargo config.
    (cd "$src" && CARGO_TARGET_DIR=$PEERS/target/$name \
      nice cargo "+$tc" build --release -p "$name" "$@")
    log "$name $rev: built in $(((SECONDS - t0) / 60))m$(((SECONDS - t0) % 60))s"
    install -m 0755 "$PEERS/target/$name/release/$name" "$out"
  fi
  ln -sfn "$name-$rev" "$PEERS/bin/$name"
}

# Firecracker pins its toolchain; install that one if rustup lacks it.
FC_SRC_TC=$(git --git-dir="$FC_GIT" show HEAD:rust-toolchain.toml |
  sed -n 's/^channel *= *"\(.*\)"/\1/p')
# (grep without -q: an early exit would SIGPIPE the writer under pipefail)
rustup toolchain list | grep "^$FC_SRC_TC-" >/dev/null ||
  rustup toolchain install "$FC_SRC_TC" --profile minimal

build firecracker "$FC_GIT" "$FC_SRC_TC"
build cloud-hypervisor "$CH_GIT" stable --no-default-features --features kvm

# Report shared-library needs (the target VM has glibc, nothing more assumed).
for b in firecracker cloud-hypervisor; do
  bin=$(readlink -f "$PEERS/bin/$b")
  echo "== ldd $bin"
  ldd "$bin" || true
  extra=$(ldd "$bin" 2>/dev/null | awk '{print $1}' |
    grep -Ev '^(linux-vdso\.|/lib64/ld-linux-|(libc|libm|libgcc_s|libpthread|libdl|librt)\.)' || true)
  [[ -z $extra ]] || echo "   needs beyond glibc: $extra"
done
readlink -f "$PEERS/bin/firecracker" "$PEERS/bin/cloud-hypervisor"
