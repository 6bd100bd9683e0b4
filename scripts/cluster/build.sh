#!/usr/bin/env bash
# Builds the test cluster's upstream binaries once per machine, cached by version outside
# the work tree:
#   $CACHE/kubernetes/<version>/bin/  kube-apiserver kube-controller-manager kube-scheduler
#                                     kubelet kube-proxy kubectl   (k8s.io/kubernetes)
#   $CACHE/etcd/<version>/bin/etcd                                  (go.etcd.io/etcd/server/v3)
#   $CACHE/csi-provisioner/<version>/bin/csi-provisioner            (the CSI external-provisioner)
#   $CACHE/go/{mod,build}                                           Go module and build caches
#
# The k8s.io/kubernetes module cannot be built with `go install`: its go.mod points the
# k8s.io/* staging modules at ./staging/... So a small wrapper module requires it and
# replaces each staging module by its published v0.<minor>.<patch> release. The wrapper
# modules of the pinned versions are kept next to this script (kubernetes/, etcd/: go.mod,
# go.sum, and the Go file that names what is built), so the build is checked against
# go.sum; for another version (K8S_VERSION=..., ETCD_VERSION=...) they are generated from
# that release's own go.mod.
set -euo pipefail
shopt -s inherit_errexit

HERE=$(cd "$(dirname "$0")" && pwd)
K8S_VERSION=${K8S_VERSION:-v1.34.4}
# The etcd the Kubernetes release itself is built against (go.etcd.io/etcd/client/v3 in
# its go.mod); 1.34 supports etcd 3.5 and 3.6.
ETCD_VERSION=${ETCD_VERSION:-v3.6.4}
# The CSI external-provisioner sidecar of the test cluster's storage (scripts/cluster/csi).
CSI_PROVISIONER_VERSION=${CSI_PROVISIONER_VERSION:-v5.3.0}
CACHE=${IRONVISOR_CACHE_DIR:-/var/cache/ironvisor}
K8S_BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)

log() { printf 'cluster build: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

k8s_bin=$CACHE/kubernetes/$K8S_VERSION/bin
etcd_bin=$CACHE/etcd/$ETCD_VERSION/bin
csi_bin=$CACHE/csi-provisioner/$CSI_PROVISIONER_VERSION/bin

all_cached() {
	local b
	[ -x "$etcd_bin/etcd" ] || return 1
	[ -x "$csi_bin/csi-provisioner" ] || return 1
	for b in "${K8S_BINARIES[@]}"; do [ -x "$k8s_bin/$b" ] || return 1; done
}

# Fast path, without Go and without the lock: everything is there already.
if all_cached; then
	log "cached: Kubernetes $K8S_VERSION in $k8s_bin, etcd $ETCD_VERSION in $etcd_bin, csi-provisioner $CSI_PROVISIONER_VERSION in $csi_bin"
	exit 0
fi

command -v go >/dev/null || die "Go is not installed (needed to build Kubernetes from its module)"
command -v flock >/dev/null || die "flock is missing (apt-get install util-linux)"
mkdir -p "$CACHE"
# Two `up`s at once (a developer and a test) must not build the same thing twice.
exec 8>"$CACHE/.build.lock"
flock -n 8 || { log "another build is running; waiting for it ($CACHE/.build.lock)"; flock 8; }

export GOMODCACHE=$CACHE/go/mod GOCACHE=$CACHE/go/build GOWORK=off CGO_ENABLED=0 GOTOOLCHAIN=local
unset GOFLAGS
mkdir -p "$GOMODCACHE" "$GOCACHE"
# Others compile on the same two cores: this build yields to them.
gobuild() { nice -n 10 go build -trimpath "$@"; }

# use_recipe DIR SRC VERSION-LINE: copies the committed wrapper module DIR into SRC when it
# pins the requested version (its go.mod has VERSION-LINE); false otherwise.
use_recipe() {
	local dir=$1 src=$2 line=$3
	grep -qxF "$line" "$dir/go.mod" || return 1
	cp "$dir"/* "$src/"
}

build_kubernetes() {
	local missing=() b
	for b in "${K8S_BINARIES[@]}"; do [ -x "$k8s_bin/$b" ] || missing+=("$b"); done
	if [ "${#missing[@]}" -eq 0 ]; then
		log "Kubernetes $K8S_VERSION: cached in $k8s_bin"
		return
	fi
	local src=$CACHE/kubernetes/$K8S_VERSION/src minor gomod started module
	minor=$(cut -d. -f2 <<<"$K8S_VERSION")
	mkdir -p "$src" "$k8s_bin"
	started=$SECONDS
	if use_recipe "$HERE/kubernetes" "$src" $'\tk8s.io/kubernetes '"$K8S_VERSION"; then
		log "Kubernetes $K8S_VERSION: wrapper module from scripts/cluster/kubernetes"
		(cd "$src" && go mod download) || die "downloading the modules of $src/go.mod failed"
	else
		log "Kubernetes $K8S_VERSION: generating the wrapper module in $src"
		gomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/^\t"GoMod": "\(.*\)",$/\1/p')
		[ -f "$gomod" ] || die "could not download k8s.io/kubernetes@$K8S_VERSION from the Go module proxy"
		{
			printf 'module ironvisor.local/kubernetes-build\n\ngo %s\n\nrequire k8s.io/kubernetes %s\n\n' \
				"$(sed -n 's/^go //p' "$gomod")" "$K8S_VERSION"
			sed -n 's#^\t\(k8s.io/[a-z0-9-]*\) => ./staging/src/k8s.io/[a-z0-9-]*$#\1#p' "$gomod" |
				while read -r module; do echo "replace $module => $module v0.${K8S_VERSION#v1.}"; done
		} >"$src/go.mod"
		grep -q '^replace k8s.io/api ' "$src/go.mod" ||
			die "no staging modules found in $gomod (has its layout changed?)"
		cp "$HERE/kubernetes/tools.go" "$src/"
		(cd "$src" && go mod tidy) || die "go mod tidy of the wrapper module $src failed"
	fi
	log "building ${missing[*]} of Kubernetes $K8S_VERSION (cold: several minutes on 2 cores)"
	local ldflags="-s -w" v=k8s.io/component-base/version
	ldflags+=" -X $v.gitVersion=$K8S_VERSION -X $v.gitMajor=1 -X $v.gitMinor=$minor"
	ldflags+=" -X $v.gitTreeState=clean -X $v.buildDate=1970-01-01T00:00:00Z"
	local packages=()
	for b in "${missing[@]}"; do packages+=("k8s.io/kubernetes/cmd/$b"); done
	(cd "$src" && gobuild -mod=readonly -ldflags "$ldflags" -o "$k8s_bin/" "${packages[@]}") ||
		die "go build of Kubernetes $K8S_VERSION failed (wrapper module: $src)"
	log "Kubernetes $K8S_VERSION built in $((SECONDS - started)) s"
}

build_etcd() {
	if [ -x "$etcd_bin/etcd" ]; then
		log "etcd $ETCD_VERSION: cached in $etcd_bin"
		return
	fi
	local src=$CACHE/etcd/$ETCD_VERSION/src started=$SECONDS
	mkdir -p "$src" "$etcd_bin"
	if ! use_recipe "$HERE/etcd" "$src" "require go.etcd.io/etcd/server/v3 $ETCD_VERSION"; then
		log "etcd $ETCD_VERSION: generating the wrapper module in $src"
		cp "$HERE/etcd/main.go" "$src/"
		printf 'module ironvisor.local/etcd-build\n\ngo 1.24\n\nrequire go.etcd.io/etcd/server/v3 %s\n' \
			"$ETCD_VERSION" >"$src/go.mod"
		rm -f "$src/go.sum"
		(cd "$src" && go mod tidy) || die "go mod tidy of the etcd wrapper module $src failed"
	fi
	(cd "$src" && gobuild -mod=readonly -ldflags "-s -w" -o "$etcd_bin/etcd" .) ||
		die "go build of etcd $ETCD_VERSION failed ($src)"
	log "etcd $ETCD_VERSION built in $((SECONDS - started)) s"
}

# The provisioner is built from its own module (its go.mod pins the k8s.io modules it was
# released with), copied out of the module cache so `go build` can use it as the main
# module; it needs nothing that is not on the module proxy.
build_csi_provisioner() {
	if [ -x "$csi_bin/csi-provisioner" ]; then
		log "csi-provisioner $CSI_PROVISIONER_VERSION: cached in $csi_bin"
		return
	fi
	local module=github.com/kubernetes-csi/external-provisioner/v5 src dir started=$SECONDS
	[[ $CSI_PROVISIONER_VERSION == v5.* ]] ||
		die "CSI_PROVISIONER_VERSION=$CSI_PROVISIONER_VERSION: only v5.x releases ($module) are supported"
	dir=$(go mod download -json "$module@$CSI_PROVISIONER_VERSION" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
	[ -d "$dir" ] || die "could not download $module@$CSI_PROVISIONER_VERSION from the Go module proxy"
	src=$CACHE/csi-provisioner/$CSI_PROVISIONER_VERSION/src
	rm -rf "$src"
	mkdir -p "$(dirname "$src")" "$csi_bin"
	cp -r "$dir" "$src"
	chmod -R u+w "$src"
	(cd "$src" && gobuild -mod=mod -ldflags "-s -w -X main.version=$CSI_PROVISIONER_VERSION" \
		-o "$csi_bin/csi-provisioner" ./cmd/csi-provisioner) ||
		die "go build of csi-provisioner $CSI_PROVISIONER_VERSION failed ($src)"
	log "csi-provisioner $CSI_PROVISIONER_VERSION built in $((SECONDS - started)) s"
}

build_etcd
build_kubernetes
build_csi_provisioner
