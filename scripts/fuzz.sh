#!/usr/bin/env bash
# cargo-fuzz targets for everything a guest or an untrusted image controls (fuzz/).
#
#   scripts/fuzz.sh list                      the targets
#   scripts/fuzz.sh build                     build them all
#   scripts/fuzz.sh smoke [SECONDS]           each target for SECONDS (default 10); fails on
#                                             any crash, hang or OOM
#   scripts/fuzz.sh run TARGET [--runs N]     one target (until a finding when N is absent)
#   scripts/fuzz.sh all --runs N              every target in turn, then a table
#
# Needs rustup; installs the nightly toolchain and cargo-fuzz when missing. The build goes
# to $IRONVISOR_FUZZ_TARGET_DIR, default /var/cache/ironvisor/fuzz-target/<nightly version>
# (or ~/.cache/... when /var/cache is not writable), so reruns on one machine are fast.
# Corpora grow in fuzz/corpus/<target> (the seed-* files there are checked in), findings
# land in fuzz/artifacts/<target>. Extra libFuzzer flags: FUZZ_ARGS="-jobs=2 ...".
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FUZZ_DIR="$ROOT/fuzz"

TARGETS=(virtio_chain virtio_blk virtio_net_tx virtio_net_rx virtio_console mmio_transport uart i8042 qcow2_image api_decode)

# Largest input per target: virtio inputs carry guest memory (rings and buffers).
max_len() {
    case "$1" in
        virtio_*|mmio_transport) echo 16384 ;;
        qcow2_image) echo 65536 ;;
        api_decode) echo 16384 ;;
        *) echo 4096 ;;
    esac
}

# A single input taking longer than this is a hang; more memory than this is an OOM.
TIMEOUT_S="${FUZZ_TIMEOUT:-10}"
RSS_LIMIT_MB="${FUZZ_RSS_LIMIT_MB:-2048}"

log() { printf 'fuzz.sh: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

ensure_tools() {
    command -v rustup >/dev/null || die "rustup is needed (https://rustup.rs)"
    if ! rustup run nightly rustc --version >/dev/null 2>&1; then
        log "installing the nightly toolchain"
        rustup toolchain install nightly --profile minimal
    fi
    if ! cargo fuzz --version >/dev/null 2>&1; then
        log "installing cargo-fuzz"
        cargo install cargo-fuzz --locked
    fi
    # libfuzzer-sys compiles libFuzzer (C++).
    if ! command -v c++ >/dev/null; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            log "installing a C++ compiler"
            apt-get install -y --no-install-recommends g++ >/dev/null
        else
            die "a C++ compiler is needed (apt-get install g++)"
        fi
    fi
}

target_dir() {
    if [ -n "${IRONVISOR_FUZZ_TARGET_DIR:-}" ]; then
        echo "$IRONVISOR_FUZZ_TARGET_DIR"
        return
    fi
    local version base
    # "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)" -> "1.97.0-nightly-e50aa6fba-2026-05-19"
    version="$(rustup run nightly rustc --version | sed -E 's/^rustc ([^ ]+) \(([0-9a-f]+) ([0-9-]+)\).*/\1-\2-\3/; s/[^A-Za-z0-9._-]/_/g')"
    base=/var/cache/ironvisor/fuzz-target
    if ! mkdir -p "$base" 2>/dev/null || [ ! -w "$base" ]; then
        base="${XDG_CACHE_HOME:-$HOME/.cache}/ironvisor/fuzz-target"
    fi
    echo "$base/$version"
}

cargo_fuzz() {
    local sub="$1"
    shift
    (cd "$FUZZ_DIR" && cargo +nightly fuzz "$sub" --debug-assertions --target-dir "$TARGET_DIR" "$@")
}

build() {
    mkdir -p "$TARGET_DIR"
    log "building the fuzz targets in $TARGET_DIR"
    cargo_fuzz build
}

is_target() {
    local t
    for t in "${TARGETS[@]}"; do [ "$t" = "$1" ] && return 0; done
    return 1
}

count_files() { find "$1" -maxdepth 1 -name "$2-*" -newer "$3" 2>/dev/null | wc -l; }

# run_one TARGET LIBFUZZER_ARGS...: runs one target, appends a result row to $RESULTS.
run_one() {
    local target="$1"
    shift
    local corpus="$FUZZ_DIR/corpus/$target" artifacts="$FUZZ_DIR/artifacts/$target"
    local logfile="$FUZZ_DIR/artifacts/$target.log" stamp start end rc=0
    mkdir -p "$corpus" "$artifacts"
    stamp="$(mktemp)"
    start=$(date +%s)
    log "$target: $*"
    # cargo fuzz run fails on any finding; the row below records it.
    # shellcheck disable=SC2086
    cargo_fuzz run "$target" "$corpus" -- \
        -artifact_prefix="$artifacts/" \
        -max_len="$(max_len "$target")" -timeout="$TIMEOUT_S" -rss_limit_mb="$RSS_LIMIT_MB" \
        -print_final_stats=1 ${FUZZ_ARGS:-} "$@" >"$logfile" 2>&1 || rc=$?
    end=$(date +%s)
    local execs crashes timeouts ooms
    execs="$(sed -nE 's/^Done ([0-9]+) runs in.*/\1/p' "$logfile" | tail -n1)"
    [ -n "$execs" ] || execs="$(sed -nE 's/^stat::number_of_executed_units: *([0-9]+).*/\1/p' "$logfile" | tail -n1)"
    [ -n "$execs" ] || execs="$(sed -nE 's/^#([0-9]+).*/\1/p' "$logfile" | tail -n1)"
    crashes=$(count_files "$artifacts" crash "$stamp")
    timeouts=$(count_files "$artifacts" timeout "$stamp")
    ooms=$(count_files "$artifacts" oom "$stamp")
    rm -f "$stamp"
    if [ "$rc" != 0 ] && [ $((crashes + timeouts + ooms)) = 0 ]; then
        # libFuzzer stopped for another reason (a leak, a build failure): count it.
        crashes=1
        log "$target: exited with $rc without an artifact, see $logfile"
    fi
    printf '%s %s %s %s %s %s\n' "$target" "${execs:-0}" "$crashes" "$timeouts" "$ooms" "$((end - start))" >>"$RESULTS"
    if [ "$rc" != 0 ]; then
        log "$target: FOUND something (rc $rc); log $logfile, artifacts in $artifacts"
        grep -E '^(==[0-9]+==ERROR|SUMMARY|thread .* panicked|Test unit written to)' "$logfile" | head -n 5 >&2 || true
    fi
    return "$rc"
}

print_table() {
    printf '%-16s %12s %8s %6s %5s %8s %9s\n' target execs crashes hangs ooms seconds exec/s
    local target execs crashes timeouts ooms secs
    while read -r target execs crashes timeouts ooms secs; do
        printf '%-16s %12s %8s %6s %5s %8s %9s\n' "$target" "$execs" "$crashes" "$timeouts" "$ooms" "$secs" \
            "$((execs / (secs > 0 ? secs : 1)))"
    done <"$RESULTS"
}

usage() { sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 2; }

parse_runs() {
    RUNS=""
    while [ $# -gt 0 ]; do
        case "$1" in
            --runs) RUNS="${2:?--runs needs a number}"; shift 2 ;;
            --runs=*) RUNS="${1#--runs=}"; shift ;;
            *) die "unknown argument $1" ;;
        esac
    done
}

cmd="${1:-}"
[ -n "$cmd" ] || usage
shift
case "$cmd" in
    list) printf '%s\n' "${TARGETS[@]}"; exit 0 ;;
    build|smoke|run|all) ;;
    *) usage ;;
esac

ensure_tools
TARGET_DIR="$(target_dir)"
RESULTS="$(mktemp)"
trap 'rm -f "$RESULTS"' EXIT
build

status=0
case "$cmd" in
    build) ;;
    smoke)
        seconds="${1:-10}"
        for target in "${TARGETS[@]}"; do
            run_one "$target" -max_total_time="$seconds" || status=1
        done
        print_table
        ;;
    run)
        target="${1:-}"
        is_target "$target" || die "unknown target '$target' (scripts/fuzz.sh list)"
        shift
        parse_runs "$@"
        run_one "$target" ${RUNS:+-runs="$RUNS"} || status=1
        print_table
        ;;
    all)
        parse_runs "$@"
        [ -n "$RUNS" ] || die "all needs --runs N"
        for target in "${TARGETS[@]}"; do
            run_one "$target" -runs="$RUNS" || status=1
        done
        print_table
        ;;
esac
exit "$status"
