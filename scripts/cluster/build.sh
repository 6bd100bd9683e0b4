#!/usr/bin/env bash
# Builds the test cluster's upstream binaries once per machine, cached by version outside
# the work tree:
#   $CACHE/kubernetes/<version>/bin/  kube-apiserver kube-controller-manager kube-scheduler
#                                     kubelet kube-proxy kubectl   (k8s.io/kubernetes)
#   $CACHE/etcd/<version>/bin/etcd                                  (go.etcd.io/etcd/server/v3)
#   $CACHE/go/{mod,build}                                           Go module and build caches
# The k8s.io/kubernetes module cannot be built with `go install`: its go.mod points the
# k8s.io/* staging modules at ./staging/... So a small wrapper module requires it and
# replaces each staging module by its published v0.<minor>.<patch> release.
set -euo pipefail
shopt -s inherit_errexit

K8S_VERSION=${K8S_VERSION:-v1.34.4}
# The etcd server the Kubernetes release itself requires (its go.mod).
ETCD_VERSION=${ETCD_VERSION:-v3.6.4}
CACHE=${IRONVISOR_CACHE_DIR:-/var/cache/ironvisor}
K8S_BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)

log() { printf 'cluster build: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

command -v go >/dev/null || die "Go is not installed (needed to build Kubernetes from its module)"
export GOMODCACHE=$CACHE/go/mod GOCACHE=$CACHE/go/build GOWORK=off CGO_ENABLED=0 GOFLAGS=-mod=mod
export GOTOOLCHAIN=local
mkdir -p "$GOMODCACHE" "$GOCACHE"

k8s_bin=$CACHE/kubernetes/$K8S_VERSION/bin
etcd_bin=$CACHE/etcd/$ETCD_VERSION/bin

build_kubernetes() {
	local missing=() b
	for b in "${K8S_BINARIES[@]}"; do [ -x "$k8s_bin/$b" ] || missing+=("$b"); done
	if [ "${#missing[@]}" -eq 0 ]; then
		log "Kubernetes $K8S_VERSION: cached in $k8s_bin"
		return
	fi
	local src=$CACHE/kubernetes/$K8S_VERSION/src minor patch gomod started
	minor=$(cut -d. -f2 <<<"$K8S_VERSION"); patch=$(cut -d. -f3 <<<"$K8S_VERSION")
	mkdir -p "$src" "$k8s_bin"
	gomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/^\t"GoMod": "\(.*\)",$/\1/p')
	[ -f "$gomod" ] || die "could not download k8s.io/kubernetes@$K8S_VERSION from the Go module proxy"
	{
		echo "module ironvisor.local/kubernetes-build"
		echo
		echo "go $(sed -n 's/^go //p' "$gomod")"
		echo
		echo "require k8s.io/kubernetes $K8S_VERSION"
		echo
		sed -n 's#^\t\(k8s.io/[a-z0-9-]*\) => ./staging/src/k8s.io/[a-z0-9-]*$#\1#p' "$gomod" |
			while read -r module; do echo "replace $module => $module v0.$minor.$patch"; done
	} >"$src/go.mod"
	# The binaries are main packages, which cannot be imported; their app packages can,
	# and keep `go mod tidy` from dropping the requirement.
	cat >"$src/tools.go" <<'GO'
//go:build tools

// Package tools pins the Kubernetes commands this module builds.
package tools

import (
	_ "k8s.io/kubectl/pkg/cmd"
	_ "k8s.io/kubernetes/cmd/kube-apiserver/app"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	_ "k8s.io/kubernetes/cmd/kube-proxy/app"
	_ "k8s.io/kubernetes/cmd/kube-scheduler/app"
	_ "k8s.io/kubernetes/cmd/kubelet/app"
)
GO
	log "building ${missing[*]} of Kubernetes $K8S_VERSION (cold: several minutes on 2 cores)"
	started=$(date +%s)
	local ldflags="-s -w"
	ldflags+=" -X k8s.io/component-base/version.gitVersion=$K8S_VERSION"
	ldflags+=" -X k8s.io/component-base/version.gitMajor=1"
	ldflags+=" -X k8s.io/component-base/version.gitMinor=$minor"
	ldflags+=" -X k8s.io/component-base/version.gitTreeState=clean"
	ldflags+=" -X k8s.io/component-base/version.buildDate=1970-01-01T00:00:00Z"
	local packages=()
	for b in "${missing[@]}"; do packages+=("k8s.io/kubernetes/cmd/$b"); done
	(cd "$src" && go mod tidy && go build -trimpath -ldflags "$ldflags" -o "$k8s_bin/" "${packages[@]}") ||
		die "go build of Kubernetes $K8S_VERSION failed (wrapper module: $src)"
	log "Kubernetes $K8S_VERSION built in $(( $(date +%s) - started )) s"
}

build_etcd() {
	if [ -x "$etcd_bin/etcd" ]; then
		log "etcd $ETCD_VERSION: cached in $etcd_bin"
		return
	fi
	local src=$CACHE/etcd/$ETCD_VERSION/src started
	mkdir -p "$src" "$etcd_bin"
	cat >"$src/main.go" <<'GO'
// The etcd server, built from its module: etcdmain is what the etcd binary runs.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
	printf 'module ironvisor.local/etcd-build\n\ngo 1.24\n\nrequire go.etcd.io/etcd/server/v3 %s\n' \
		"$ETCD_VERSION" >"$src/go.mod"
	started=$(date +%s)
	(cd "$src" && go mod tidy >/dev/null && go build -trimpath -ldflags "-s -w" -o "$etcd_bin/etcd" .) ||
		die "go build of etcd $ETCD_VERSION failed ($src)"
	log "etcd $ETCD_VERSION built in $(( $(date +%s) - started )) s"
}

build_etcd
build_kubernetes
