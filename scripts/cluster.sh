#!/usr/bin/env bash
# A real single-node Kubernetes for Ironvisor's cluster mode, built and started by the
# project itself (no kind, no kubeadm, no registry): see docs/cluster.md.
#
#   scripts/cluster.sh up          build (once, cached) and start everything; idempotent
#   scripts/cluster.sh down        stop everything, leave no process, mount, netns, link,
#                                  iptables rule or cgroup behind (--purge: state too)
#   scripts/cluster.sh status      each component, and whether the node is Ready
#   scripts/cluster.sh kubeconfig  the admin kubeconfig's path (last line)
#   scripts/cluster.sh env         `eval "$(scripts/cluster.sh env)"` sets KUBECONFIG, PATH
#
# Versions: Kubernetes v1.34.4 and etcd v3.6.4 from their Go modules (scripts/cluster/build.sh,
# cached in $IRONVISOR_CACHE_DIR, default /var/cache/ironvisor); containerd, runc, the CNI
# plugins and iptables from Debian. State in /var/lib/ironvisor-cluster, logs in its logs/.
set -euo pipefail
shopt -s inherit_errexit

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
export K8S_VERSION=${K8S_VERSION:-v1.34.4}
export ETCD_VERSION=${ETCD_VERSION:-v3.6.4}
CACHE=${IRONVISOR_CACHE_DIR:-/var/cache/ironvisor}
K8S_BIN=$CACHE/kubernetes/$K8S_VERSION/bin
ETCD_BIN=$CACHE/etcd/$ETCD_VERSION/bin
STATE=${IRONVISOR_CLUSTER_STATE:-/var/lib/ironvisor-cluster}
RUN=/run/ironvisor-cluster
PKI=$STATE/pki
LOGS=$STATE/logs
PIDS=$RUN/pids
KUBELET_ROOT=/var/lib/kubelet
CONTAINERD_SOCK=$RUN/containerd/containerd.sock
CNI_CONF_DIR=$STATE/cni/net.d
CNI_BIN_DIR=/usr/lib/cni

NODE_NAME=ironvisor-node
# The node's own address on a dummy link: the machine has several addresses and none is
# "the" node address, so the cluster gets one of its own (traffic never leaves the host).
NODE_LINK=ivk8s0
NODE_IP=10.250.0.1
API_PORT=6443
API_URL=https://$NODE_IP:$API_PORT
ETCD_URL=http://127.0.0.1:23790
SERVICE_CIDR=10.96.0.0/16
SERVICE_IP=10.96.0.1
POD_CIDR=10.244.0.0/16
NODE_POD_CIDR=10.244.0.0/24
CNI_BRIDGE=cni0
PAUSE_IMAGE=docker.io/ironvisor/pause:3.10
ADMIN_KUBECONFIG=$STATE/kubeconfigs/admin.kubeconfig
WAIT_SECS=${IRONVISOR_CLUSTER_WAIT_SECS:-180}

# Start order; `down` goes in reverse (with the kubelet's pods drained first).
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy)

log() { printf 'cluster: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------- prerequisites

DEBIAN_PACKAGES=(containerd runc containernetworking-plugins iptables conntrack kmod openssl
                 curl iproute2 util-linux procps)

install_packages() {
	local missing=() p
	for p in "${DEBIAN_PACKAGES[@]}"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
	done
	[ "${#missing[@]}" -eq 0 ] && return
	log "installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 || {
		apt-get update -qq
		apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
	}
}

kubectl() { "$K8S_BIN/kubectl" --kubeconfig "$ADMIN_KUBECONFIG" "$@"; }

# ---------------------------------------------------------------- certificates

# make_cert NAME CN [O] [SANS]: a key and a certificate signed by the cluster CA.
make_cert() {
	local name=$1 cn=$2 org=${3:-} sans=${4:-} ca=${5:-ca} subj="/CN=$2"
	[ -f "$PKI/$name.crt" ] && return
	[ -n "$org" ] && subj="/O=$org/CN=$cn"
	openssl genrsa -out "$PKI/$name.key" 2048 2>/dev/null
	openssl req -new -key "$PKI/$name.key" -subj "$subj" -out "$PKI/$name.csr" 2>/dev/null
	{
		echo "basicConstraints=CA:FALSE"
		echo "keyUsage=critical,digitalSignature,keyEncipherment"
		echo "extendedKeyUsage=serverAuth,clientAuth"
		[ -n "$sans" ] && echo "subjectAltName=$sans"
	} >"$PKI/$name.ext"
	openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/$ca.crt" -CAkey "$PKI/$ca.key" \
		-CAcreateserial -days 3650 -sha256 -extfile "$PKI/$name.ext" -out "$PKI/$name.crt" 2>/dev/null
	rm -f "$PKI/$name.csr" "$PKI/$name.ext"
}

make_ca() {
	local name=$1 cn=$2
	[ -f "$PKI/$name.crt" ] && return
	openssl genrsa -out "$PKI/$name.key" 2048 2>/dev/null
	openssl req -x509 -new -key "$PKI/$name.key" -subj "/CN=$cn" -days 3650 -sha256 \
		-addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
		-out "$PKI/$name.crt" 2>/dev/null
}

make_kubeconfig() {
	local name=$1 user=$2 file=$STATE/kubeconfigs/$1.kubeconfig
	[ -f "$file" ] && return
	cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: ironvisor
  cluster:
    server: $API_URL
    certificate-authority: $PKI/ca.crt
users:
- name: $user
  user:
    client-certificate: $PKI/$name.crt
    client-key: $PKI/$name.key
contexts:
- name: ironvisor
  context: {cluster: ironvisor, user: $user}
current-context: ironvisor
EOF
}

generate_pki() {
	mkdir -p "$PKI" "$STATE/kubeconfigs"
	chmod 700 "$PKI"
	make_ca ca ironvisor-cluster-ca
	make_ca front-proxy-ca ironvisor-front-proxy-ca
	make_cert apiserver kube-apiserver "" \
		"DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost,IP:$SERVICE_IP,IP:$NODE_IP,IP:127.0.0.1"
	make_cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters
	make_cert front-proxy-client front-proxy-client "" "" front-proxy-ca
	make_cert admin kubernetes-admin system:masters
	make_cert controller-manager system:kube-controller-manager
	make_cert scheduler system:kube-scheduler
	make_cert kubelet "system:node:$NODE_NAME" system:nodes
	make_cert kubelet-serving "$NODE_NAME" "" "DNS:$NODE_NAME,IP:$NODE_IP"
	make_cert kube-proxy system:kube-proxy
	if [ ! -f "$PKI/sa.key" ]; then
		openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
		openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
	fi
	make_kubeconfig admin kubernetes-admin
	make_kubeconfig controller-manager system:kube-controller-manager
	make_kubeconfig scheduler system:kube-scheduler
	make_kubeconfig kubelet "system:node:$NODE_NAME"
	make_kubeconfig kube-proxy system:kube-proxy
}

# ---------------------------------------------------------------- configuration files

write_configs() {
	mkdir -p "$STATE/config" "$CNI_CONF_DIR" "$STATE/cni/ipam" "$RUN/containerd" "$LOGS" "$PIDS"
	cat >"$STATE/config/containerd.toml" <<EOF
# containerd for the Ironvisor test cluster (bookworm's 1.6): its own root, state and
# socket, so it never meets another containerd on the machine.
version = 2
root = "$STATE/containerd"
state = "$RUN/containerd/state"
[grpc]
  address = "$CONTAINERD_SOCK"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # Root here lacks CAP_SYS_RESOURCE: lowering oom_score_adj below the parent's fails.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CNI_BIN_DIR"
    conf_dir = "$CNI_CONF_DIR"
EOF
	cat >"$CNI_CONF_DIR/10-ironvisor-pods.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "ironvisor-pods",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$CNI_BRIDGE",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$NODE_POD_CIDR"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "$STATE/cni/ipam"
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
	cat >"$STATE/config/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
# No systemd here: cgroupfs, as containerd's runc (SystemdCgroup = false).
cgroupDriver: cgroupfs
# These machines have cgroup v1; kubelet 1.35+ refuses it unless told otherwise.
failCgroupV1: false
failSwapOn: false
# containerd 1.6 does not pin the pause image: never garbage-collect images.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
clusterDomain: cluster.local
podCIDR: $NODE_POD_CIDR
maxPods: 110
serializeImagePulls: false
healthzBindAddress: 127.0.0.1
healthzPort: 10248
evictionHard:
  memory.available: "200Mi"
  nodefs.available: "2%"
  imagefs.available: "2%"
EOF
	cat >"$STATE/config/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: $STATE/kubeconfigs/kube-proxy.kubeconfig
mode: iptables
clusterCIDR: $POD_CIDR
hostnameOverride: $NODE_NAME
bindAddress: $NODE_IP
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
conntrack:
  # Leave the host's conntrack sysctls alone.
  maxPerCore: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
EOF
}

# ---------------------------------------------------------------- processes

pid_of() { local f=$PIDS/$1.pid; [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null && cat "$f"; }
running() { pid_of "$1" >/dev/null; }

command_of() {
	case $1 in
	etcd) echo "$ETCD_BIN/etcd --name $NODE_NAME --data-dir $STATE/etcd \
		--listen-client-urls $ETCD_URL --advertise-client-urls $ETCD_URL \
		--listen-peer-urls http://127.0.0.1:23800 --initial-advertise-peer-urls http://127.0.0.1:23800 \
		--initial-cluster $NODE_NAME=http://127.0.0.1:23800 --listen-metrics-urls http://127.0.0.1:23810" ;;
	kube-apiserver) echo "$K8S_BIN/kube-apiserver --etcd-servers=$ETCD_URL \
		--advertise-address=$NODE_IP --bind-address=$NODE_IP --secure-port=$API_PORT \
		--service-cluster-ip-range=$SERVICE_CIDR --allow-privileged=true \
		--authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
		--client-ca-file=$PKI/ca.crt --tls-cert-file=$PKI/apiserver.crt --tls-private-key-file=$PKI/apiserver.key \
		--kubelet-client-certificate=$PKI/apiserver-kubelet-client.crt --kubelet-client-key=$PKI/apiserver-kubelet-client.key \
		--kubelet-certificate-authority=$PKI/ca.crt --kubelet-preferred-address-types=InternalIP \
		--service-account-issuer=https://kubernetes.default.svc.cluster.local \
		--service-account-key-file=$PKI/sa.pub --service-account-signing-key-file=$PKI/sa.key \
		--requestheader-client-ca-file=$PKI/front-proxy-ca.crt --requestheader-allowed-names=front-proxy-client \
		--requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group \
		--requestheader-extra-headers-prefix=X-Remote-Extra- \
		--proxy-client-cert-file=$PKI/front-proxy-client.crt --proxy-client-key-file=$PKI/front-proxy-client.key \
		--enable-aggregator-routing=true" ;;
	kube-controller-manager) echo "$K8S_BIN/kube-controller-manager \
		--kubeconfig=$STATE/kubeconfigs/controller-manager.kubeconfig \
		--authentication-kubeconfig=$STATE/kubeconfigs/controller-manager.kubeconfig \
		--authorization-kubeconfig=$STATE/kubeconfigs/controller-manager.kubeconfig \
		--bind-address=127.0.0.1 --secure-port=10257 --leader-elect=false \
		--cluster-signing-cert-file=$PKI/ca.crt --cluster-signing-key-file=$PKI/ca.key \
		--root-ca-file=$PKI/ca.crt --service-account-private-key-file=$PKI/sa.key \
		--use-service-account-credentials=true --allocate-node-cidrs=true \
		--cluster-cidr=$POD_CIDR --node-cidr-mask-size=24 --service-cluster-ip-range=$SERVICE_CIDR" ;;
	kube-scheduler) echo "$K8S_BIN/kube-scheduler \
		--kubeconfig=$STATE/kubeconfigs/scheduler.kubeconfig \
		--authentication-kubeconfig=$STATE/kubeconfigs/scheduler.kubeconfig \
		--authorization-kubeconfig=$STATE/kubeconfigs/scheduler.kubeconfig \
		--bind-address=127.0.0.1 --secure-port=10259 --leader-elect=false" ;;
	containerd) echo "containerd --config $STATE/config/containerd.toml" ;;
	kubelet) echo "$K8S_BIN/kubelet --config=$STATE/config/kubelet.yaml \
		--kubeconfig=$STATE/kubeconfigs/kubelet.kubeconfig --hostname-override=$NODE_NAME \
		--node-ip=$NODE_IP --root-dir=$KUBELET_ROOT --v=1" ;;
	kube-proxy) echo "$K8S_BIN/kube-proxy --config=$STATE/config/kube-proxy.yaml" ;;
	esac
}

start() {
	local name=$1 pid
	if running "$name"; then
		log "$name already running (pid $(pid_of "$name"))"
		return
	fi
	# shellcheck disable=SC2046
	setsid $(command_of "$name") >>"$LOGS/$name.log" 2>&1 </dev/null &
	pid=$!
	echo "$pid" >"$PIDS/$name.pid"
	log "started $name (pid $pid, log $LOGS/$name.log)"
}

# wait_until WHAT COMMAND...: polls COMMAND until it succeeds, up to WAIT_SECS.
wait_until() {
	local what=$1 deadline=$((SECONDS + WAIT_SECS))
	shift
	until "$@" >/dev/null 2>&1; do
		if [ "$SECONDS" -ge "$deadline" ]; then
			log "gave up waiting for $what after ${WAIT_SECS}s; last lines of the logs:"
			tail -n 15 "$LOGS"/*.log >&2 || true
			die "$what did not become healthy"
		fi
		sleep 1
	done
}

healthy() {
	case $1 in
	etcd) curl -fsS "$ETCD_URL/health" ;;
	kube-apiserver) kubectl get --raw /readyz ;;
	kube-controller-manager) curl -fsSk https://127.0.0.1:10257/healthz ;;
	kube-scheduler) curl -fsSk https://127.0.0.1:10259/healthz ;;
	containerd) ctr --address "$CONTAINERD_SOCK" version ;;
	kubelet) curl -fsS http://127.0.0.1:10248/healthz ;;
	kube-proxy) curl -fsS http://127.0.0.1:10256/healthz ;;
	esac
}

prepare_host() {
	# Volume mounts of pods must propagate (mountPropagation, the kubelet's own mounts).
	mount --make-rshared /
	sysctl -qw net.ipv4.ip_forward=1
	modprobe br_netfilter 2>/dev/null || true
	modprobe overlay 2>/dev/null || true
	if ! ip link show "$NODE_LINK" >/dev/null 2>&1; then
		ip link add "$NODE_LINK" type dummy
	fi
	ip addr replace "$NODE_IP/32" dev "$NODE_LINK"
	ip link set "$NODE_LINK" up
	mkdir -p "$KUBELET_ROOT"
}

import_pause_image() {
	if ctr --address "$CONTAINERD_SOCK" -n k8s.io images ls -q | grep -qx "$PAUSE_IMAGE"; then
		return
	fi
	log "importing the pause image ($PAUSE_IMAGE)"
	(cd "$REPO" && python3 -m images.containers import --only pause --containerd-socket "$CONTAINERD_SOCK") ||
		die "could not build or import the pause image (python3 -m images.containers import --only pause)"
}

node_ready() {
	[ "$(kubectl get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}

cmd_up() {
	[ "$(id -u)" -eq 0 ] || die "must run as root (starts kubelet and containerd)"
	local started=$SECONDS
	install_packages
	"$HERE/cluster/build.sh"
	generate_pki
	write_configs
	prepare_host
	local name
	for name in "${COMPONENTS[@]}"; do
		start "$name"
		wait_until "$name" healthy "$name"
		[ "$name" = containerd ] && import_pause_image
	done
	wait_until "node $NODE_NAME Ready" node_ready
	wait_until "the default service account" kubectl get serviceaccount default -n default
	log "cluster up in $((SECONDS - started)) s: kubectl --kubeconfig $ADMIN_KUBECONFIG (or eval \"\$($0 env)\")"
}

# ---------------------------------------------------------------- down

stop() {
	local name=$1 pid grace=${2:-20} i
	pid=$(pid_of "$name") || { rm -f "$PIDS/$name.pid"; return 0; }
	kill -TERM "$pid" 2>/dev/null || true
	for ((i = 0; i < grace * 10; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	if kill -0 "$pid" 2>/dev/null; then
		log "$name (pid $pid) ignored SIGTERM for ${grace}s: SIGKILL"
		kill -KILL "$pid" 2>/dev/null || true
	fi
	rm -f "$PIDS/$name.pid"
	log "stopped $name"
}

containerd_tasks() { ctr --address "$CONTAINERD_SOCK" -n k8s.io tasks ls -q 2>/dev/null || true; }

drain_pods() {
	running kube-apiserver && running kubelet || return 0
	# No controller may recreate what is deleted here.
	stop kube-controller-manager
	stop kube-scheduler
	kubectl delete pods --all --all-namespaces --grace-period=5 --wait=false >/dev/null 2>&1 || true
	local deadline=$((SECONDS + 90))
	while [ -n "$(containerd_tasks)" ] && [ "$SECONDS" -lt "$deadline" ]; do sleep 1; done
	[ -z "$(containerd_tasks)" ] || log "pods still running after 90 s; killing their tasks"
}

kill_leftover_tasks() {
	running containerd || return 0
	local ctr=(ctr --address "$CONTAINERD_SOCK" -n k8s.io) id
	for id in $(containerd_tasks); do
		"${ctr[@]}" tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true
	done
	sleep 1
	for id in $(containerd_tasks); do "${ctr[@]}" tasks delete -f "$id" >/dev/null 2>&1 || true; done
	for id in $("${ctr[@]}" containers ls -q 2>/dev/null); do
		"${ctr[@]}" containers delete "$id" >/dev/null 2>&1 || true
	done
}

cleanup_host() {
	# runc shims of this containerd, if any survived it.
	pkill -KILL -f "containerd-shim-runc-v2 .*-address $CONTAINERD_SOCK" 2>/dev/null || true
	# Mounts: pod volumes, container root file systems and shm.
	local m
	for m in $(findmnt -rn -o TARGET | grep -E "^($KUBELET_ROOT|$RUN|$STATE)/" | sort -r); do
		umount -l "$m" 2>/dev/null || true
	done
	# Network namespaces of pod sandboxes (containerd names them cni-<uuid>).
	for m in /var/run/netns/cni-*; do
		[ -e "$m" ] || continue
		umount -l "$m" 2>/dev/null || true
		rm -f "$m"
	done
	ip link del "$CNI_BRIDGE" 2>/dev/null || true
	ip link del "$NODE_LINK" 2>/dev/null || true
	rm -rf "$STATE/cni/ipam"
	# iptables: kube-proxy's chains (kube-proxy --cleanup) and the CNI plugins' NAT chains.
	if [ -x "$K8S_BIN/kube-proxy" ]; then
		"$K8S_BIN/kube-proxy" --cleanup --config="$STATE/config/kube-proxy.yaml" >/dev/null 2>&1 || true
	fi
	local table chain
	for table in nat filter mangle; do
		for chain in $(iptables -t "$table" -S 2>/dev/null | awk '/^-N (KUBE-|CNI-)/{print $2}'); do
			iptables -t "$table" -F "$chain" 2>/dev/null || true
		done
		iptables -t "$table" -S 2>/dev/null | grep -E -- '-j (KUBE-|CNI-)' | sed 's/^-A/-D/' |
			while read -r rule; do eval "iptables -t $table $rule" 2>/dev/null || true; done
		for chain in $(iptables -t "$table" -S 2>/dev/null | awk '/^-N (KUBE-|CNI-)/{print $2}'); do
			iptables -t "$table" -X "$chain" 2>/dev/null || true
		done
	done
	# cgroups the kubelet made (kubepods, and its per-QoS and per-pod children).
	local dir
	for dir in /sys/fs/cgroup/*/kubepods* /sys/fs/cgroup/kubepods*; do
		[ -d "$dir" ] || continue
		find "$dir" -depth -type d -exec rmdir {} \; 2>/dev/null || true
	done
	rm -rf "$RUN"
}

cmd_down() {
	[ "$(id -u)" -eq 0 ] || die "must run as root"
	local purge=${1:-}
	if [ -d "$PIDS" ]; then
		drain_pods
		stop kubelet
		kill_leftover_tasks
		stop kube-proxy
		stop containerd
		stop kube-controller-manager
		stop kube-scheduler
		# The API server before etcd: without etcd it ignores SIGTERM for minutes.
		stop kube-apiserver 30
		stop etcd
	fi
	cleanup_host
	if [ "$purge" = --purge ]; then
		rm -rf "$STATE"
		log "purged $STATE"
	fi
	log "cluster down"
}

cmd_status() {
	local name healthy_all=0
	for name in "${COMPONENTS[@]}"; do
		if running "$name" && healthy "$name" >/dev/null 2>&1; then
			printf '%-24s running (pid %s)\n' "$name" "$(pid_of "$name")"
		elif running "$name"; then
			printf '%-24s running, not healthy\n' "$name"; healthy_all=1
		else
			printf '%-24s stopped\n' "$name"; healthy_all=1
		fi
	done
	if running kube-apiserver && node_ready; then
		printf '%-24s Ready\n' "node $NODE_NAME"
	else
		printf '%-24s not Ready\n' "node $NODE_NAME"; healthy_all=1
	fi
	return "$healthy_all"
}

case ${1:-} in
up) cmd_up ;;
down) cmd_down "${2:-}" ;;
status) cmd_status ;;
kubeconfig) echo "$ADMIN_KUBECONFIG" ;;
env)
	echo "export KUBECONFIG=$ADMIN_KUBECONFIG"
	echo "export PATH=$K8S_BIN:\$PATH"
	;;
*)
	echo "usage: $0 up | down [--purge] | status | kubeconfig | env" >&2
	exit 2
	;;
esac
