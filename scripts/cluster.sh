#!/usr/bin/env bash
# A real single-node Kubernetes for Ironvisor's cluster mode, built and started by the
# project itself (no kind, no kubeadm, no registry): see docs/cluster.md.
#
#   scripts/cluster.sh up             build (once, cached) and start everything; idempotent
#   scripts/cluster.sh down [--purge] stop everything and leave no process, mount, netns,
#                                     link, iptables rule or cgroup behind; certificates and
#                                     etcd data stay unless --purge
#   scripts/cluster.sh status         each component, and whether the node is Ready
#                                     (exit status 1 unless all is healthy)
#   scripts/cluster.sh kubeconfig     the admin kubeconfig's path (last line)
#   scripts/cluster.sh env            for `eval "$(scripts/cluster.sh env)"`: KUBECONFIG, PATH
#
# Kubernetes v1.34.4 and etcd v3.6.4 are built from their Go modules by
# scripts/cluster/build.sh, cached in $IRONVISOR_CACHE_DIR (default /var/cache/ironvisor);
# containerd, runc, the CNI plugins and iptables come from Debian. State (certificates,
# kubeconfigs, etcd data, pid files, logs/) in /var/lib/ironvisor-cluster, runtime files
# (containerd's socket and state) in /run/ironvisor-cluster.
set -euo pipefail
shopt -s inherit_errexit nullglob

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
export K8S_VERSION=${K8S_VERSION:-v1.34.4}
export ETCD_VERSION=${ETCD_VERSION:-v3.6.4}
CACHE=${IRONVISOR_CACHE_DIR:-/var/cache/ironvisor}
K8S_BIN=$CACHE/kubernetes/$K8S_VERSION/bin
ETCD_BIN=$CACHE/etcd/$ETCD_VERSION/bin
STATE=/var/lib/ironvisor-cluster
RUN=/run/ironvisor-cluster
PKI=$STATE/pki
LOGS=$STATE/logs
PIDS=$STATE/pids
LOCK=/run/lock/ironvisor-cluster.lock
KUBELET_ROOT=/var/lib/kubelet
CONTAINERD_SOCK=$RUN/containerd/containerd.sock
CONTAINERD_CONFIG=$STATE/config/containerd.toml
CNI_CONF_DIR=$STATE/cni/net.d
CNI_BIN_DIR=/usr/lib/cni

NODE_NAME=ironvisor-node
# The node's own address on a link of its own (dummy, or an empty bridge): the machine has several addresses and none is
# "the" node address, so the cluster gets one of its own. Nothing is routed to it from
# outside; clients on the host use 127.0.0.1 (see API_URL).
NODE_LINK=ironvisor-node0
NODE_IP=10.250.0.1
API_PORT=6443
# Host-side clients (kubectl, kubelet, controllers, kube-proxy) talk to the API server on
# loopback: should the dummy link be gone (after `down`), a client left pointing at the
# node address would otherwise send its SYNs out of the default route.
API_URL=https://127.0.0.1:$API_PORT
ETCD_URL=http://127.0.0.1:2379
SERVICE_CIDR=10.96.0.0/16
SERVICE_IP=10.96.0.1
POD_CIDR=10.244.0.0/16
NODE_POD_CIDR=10.244.0.0/24
CNI_BRIDGE=ironvisor-cni0
PAUSE_IMAGE=docker.io/ironvisor/pause:3.10
ADMIN_KUBECONFIG=$STATE/kubeconfigs/admin.kubeconfig
WAIT_SECS=${IRONVISOR_CLUSTER_WAIT_SECS:-180}

# Start order; `down` goes the other way (the kubelet's pods drained first).
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy)

log() { printf 'cluster: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

need_root() { [ "$(id -u)" -eq 0 ] || die "scripts/cluster.sh $1 must run as root (it runs kubelet and containerd)"; }

# One up/down at a time: a test's `up` and a developer's `down` must not interleave.
take_lock() {
	mkdir -p "$(dirname "$LOCK")"
	exec 9>"$LOCK"
	flock -n 9 || { log "another scripts/cluster.sh up/down is running; waiting for it ($LOCK)"; flock 9; }
}

# ---------------------------------------------------------------- prerequisites

DEBIAN_PACKAGES=(containerd runc containernetworking-plugins iptables nftables conntrack kmod
                 openssl curl iproute2 iputils-ping util-linux procps python3)

install_packages() {
	local missing=() p
	for p in "${DEBIAN_PACKAGES[@]}"; do
		[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" = "install ok installed" ] || missing+=("$p")
	done
	[ "${#missing[@]}" -eq 0 ] && return
	log "installing from Debian: ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 || {
		apt-get update -qq || die "apt-get update failed"
		apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
			die "apt-get install ${missing[*]} failed"
	}
}

kubectl() { "$K8S_BIN/kubectl" --kubeconfig "$ADMIN_KUBECONFIG" --request-timeout=10s "$@"; }
ctr_k8s() { ctr --address "$CONTAINERD_SOCK" -n k8s.io "$@"; }

# ---------------------------------------------------------------- certificates

# make_cert NAME CN [O] [SANS] [CA]: a key and a certificate signed by CA (the cluster CA
# unless told), for both server and client use; kept when it exists.
make_cert() {
	local name=$1 cn=$2 org=${3:-} sans=${4:-} ca=${5:-ca} subj="/CN=$2"
	[ -f "$PKI/$name.crt" ] && return
	[ -n "$org" ] && subj="/O=$org/CN=$cn"
	openssl genrsa -out "$PKI/$name.key" 2048 2>/dev/null || die "openssl: key $PKI/$name.key"
	openssl req -new -key "$PKI/$name.key" -subj "$subj" -out "$PKI/$name.csr" 2>/dev/null ||
		die "openssl: request for $PKI/$name.crt"
	{
		echo "basicConstraints=CA:FALSE"
		echo "keyUsage=critical,digitalSignature,keyEncipherment"
		echo "extendedKeyUsage=serverAuth,clientAuth"
		[ -n "$sans" ] && echo "subjectAltName=$sans"
	} >"$PKI/$name.ext"
	openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/$ca.crt" -CAkey "$PKI/$ca.key" \
		-CAcreateserial -days 3650 -sha256 -extfile "$PKI/$name.ext" -out "$PKI/$name.crt" 2>/dev/null ||
		die "openssl: signing $PKI/$name.crt with $PKI/$ca.crt"
	rm -f "$PKI/$name.csr" "$PKI/$name.ext"
}

make_ca() {
	local name=$1 cn=$2
	[ -f "$PKI/$name.crt" ] && return
	openssl genrsa -out "$PKI/$name.key" 2048 2>/dev/null || die "openssl: key $PKI/$name.key"
	openssl req -x509 -new -key "$PKI/$name.key" -subj "/CN=$cn" -days 3650 -sha256 \
		-addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
		-out "$PKI/$name.crt" 2>/dev/null || die "openssl: CA $PKI/$name.crt"
}

# make_kubeconfig NAME USER: a kubeconfig with NAME's client certificate (rewritten each
# time: it only points at files).
make_kubeconfig() {
	local name=$1 user=$2
	put "$STATE/kubeconfigs/$name.kubeconfig" <<EOF
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
	chmod 700 "$PKI" "$STATE/kubeconfigs"
	make_ca ca ironvisor-cluster-ca
	# Aggregated API servers trust requests the API server proxies with this client.
	make_ca front-proxy-ca ironvisor-front-proxy-ca
	make_cert apiserver kube-apiserver "" \
		"DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost,DNS:$NODE_NAME,IP:$SERVICE_IP,IP:$NODE_IP,IP:127.0.0.1"
	make_cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters
	make_cert front-proxy-client front-proxy-client "" "" front-proxy-ca
	make_cert admin kubernetes-admin system:masters
	make_cert controller-manager system:kube-controller-manager
	make_cert scheduler system:kube-scheduler
	make_cert kubelet "system:node:$NODE_NAME" system:nodes
	make_cert kubelet-serving "$NODE_NAME" "" "DNS:$NODE_NAME,IP:$NODE_IP"
	make_cert kube-proxy system:kube-proxy
	if [ ! -f "$PKI/sa.key" ]; then
		openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null || die "openssl: key $PKI/sa.key"
		openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null || die "openssl: $PKI/sa.pub"
	fi
	make_kubeconfig admin kubernetes-admin
	make_kubeconfig controller-manager system:kube-controller-manager
	make_kubeconfig scheduler system:kube-scheduler
	make_kubeconfig kubelet "system:node:$NODE_NAME"
	make_kubeconfig kube-proxy system:kube-proxy
}

# ---------------------------------------------------------------- configuration files

# put FILE: writes stdin to FILE, atomically and only when it changes (kube-proxy exits
# when its configuration file is written to, containerd reloads its CNI folder on every
# write).
# put FILE: writes stdin to FILE when it differs; a file changed is added to CHANGED.
CHANGED=()
put() {
	local file=$1
	cat >"$file.tmp"
	if cmp -s "$file.tmp" "$file"; then
		rm -f "$file.tmp"
	else
		mv -f "$file.tmp" "$file"
		CHANGED+=("$file")
	fi
}

write_configs() {
	mkdir -p "$STATE/config" "$CNI_CONF_DIR" "$STATE/cni/ipam" "$RUN/containerd" "$LOGS" "$PIDS"
	put "$CONTAINERD_CONFIG" <<EOF
# containerd for the Ironvisor test cluster (bookworm's 1.6): its own root, state, sockets
# and CNI configuration, so it never meets another containerd on the machine.
version = 2
root = "$STATE/containerd"
state = "$RUN/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]
[grpc]
  address = "$CONTAINERD_SOCK"
[ttrpc]
  address = "$CONTAINERD_SOCK.ttrpc"
[debug]
  address = "$RUN/containerd/debug.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$STATE/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # Root here lacks CAP_SYS_RESOURCE: lowering oom_score_adj below the parent's fails.
  restrict_oom_score_adj = true
  # Pod network namespaces under our own state dir, not /var/run/netns.
  netns_mounts_under_state_dir = true
  # Devices (device plugins' /dev/kvm and /dev/net/tun, Block claims) belong to the
  # container's runAsUser/runAsGroup, so a launcher pod that is not root can open them.
  device_ownership_from_security_context = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        # No systemd on these machines: cgroupfs, as the kubelet.
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CNI_BIN_DIR"
    conf_dir = "$CNI_CONF_DIR"
EOF
	put "$CNI_CONF_DIR/10-ironvisor-pods.conflist" <<EOF
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
	put "$STATE/config/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
# No systemd here: cgroupfs, as containerd's runc (SystemdCgroup = false).
cgroupDriver: cgroupfs
# These machines have cgroup v1, which newer kubelets refuse unless told otherwise.
failCgroupV1: false
failSwapOn: false
# containerd 1.6 does not pin the pause image, and nothing can be pulled again: never
# garbage-collect images.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
clusterDomain: cluster.local
podCIDR: $NODE_POD_CIDR
maxPods: 110
# Guaranteed pods that ask for whole CPUs (VMs with dedicatedCpuPlacement) get CPUs of
# their own. The static policy reserves ceil(kubeReserved cpu) = 1 CPU (the lowest) for
# the shared pool, while the scheduler only subtracts the 100m itself.
cpuManagerPolicy: static
kubeReserved:
  cpu: 100m
serializeImagePulls: false
healthzBindAddress: 127.0.0.1
healthzPort: 10248
evictionHard:
  memory.available: "200Mi"
  nodefs.available: "2%"
  imagefs.available: "2%"
EOF
	put "$STATE/config/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: $STATE/kubeconfigs/kube-proxy.kubeconfig
mode: iptables
clusterCIDR: $POD_CIDR
hostnameOverride: $NODE_NAME
# NodePorts on the node address only, not on every address of the machine.
nodePortAddresses: [primary]
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

# command_of NAME: sets CMD to the component's command line.
# shellcheck disable=SC2054 # the commas are inside flag values (Node,RBAC)
command_of() {
	local kc=$STATE/kubeconfigs
	case $1 in
	etcd) CMD=("$ETCD_BIN/etcd" --name "$NODE_NAME" --data-dir "$STATE/etcd"
		--listen-client-urls "$ETCD_URL" --advertise-client-urls "$ETCD_URL"
		--listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380
		--initial-cluster "$NODE_NAME=http://127.0.0.1:2380" --listen-metrics-urls http://127.0.0.1:2381) ;;
	kube-apiserver) CMD=("$K8S_BIN/kube-apiserver" --etcd-servers="$ETCD_URL"
		--advertise-address="$NODE_IP" --bind-address=0.0.0.0 --secure-port="$API_PORT"
		--service-cluster-ip-range="$SERVICE_CIDR" --allow-privileged=true
		--authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction
		--client-ca-file="$PKI/ca.crt" --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key"
		--kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" --kubelet-client-key="$PKI/apiserver-kubelet-client.key"
		--kubelet-certificate-authority="$PKI/ca.crt" --kubelet-preferred-address-types=InternalIP
		--service-account-issuer=https://kubernetes.default.svc.cluster.local
		--service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key"
		--requestheader-client-ca-file="$PKI/front-proxy-ca.crt" --requestheader-allowed-names=front-proxy-client
		--requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group
		--requestheader-extra-headers-prefix=X-Remote-Extra-
		--proxy-client-cert-file="$PKI/front-proxy-client.crt" --proxy-client-key-file="$PKI/front-proxy-client.key"
		--enable-aggregator-routing=true) ;;
	kube-controller-manager) CMD=("$K8S_BIN/kube-controller-manager"
		--kubeconfig="$kc/controller-manager.kubeconfig"
		--authentication-kubeconfig="$kc/controller-manager.kubeconfig"
		--authorization-kubeconfig="$kc/controller-manager.kubeconfig"
		--bind-address=127.0.0.1 --secure-port=10257 --leader-elect=false
		--cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key"
		--root-ca-file="$PKI/ca.crt" --service-account-private-key-file="$PKI/sa.key"
		--use-service-account-credentials=true --allocate-node-cidrs=true
		--cluster-cidr="$POD_CIDR" --node-cidr-mask-size=24 --service-cluster-ip-range="$SERVICE_CIDR") ;;
	kube-scheduler) CMD=("$K8S_BIN/kube-scheduler"
		--kubeconfig="$kc/scheduler.kubeconfig"
		--authentication-kubeconfig="$kc/scheduler.kubeconfig"
		--authorization-kubeconfig="$kc/scheduler.kubeconfig"
		--bind-address=127.0.0.1 --secure-port=10259 --leader-elect=false) ;;
	containerd) CMD=(containerd --config "$CONTAINERD_CONFIG") ;;
	kubelet) CMD=("$K8S_BIN/kubelet" --config="$STATE/config/kubelet.yaml"
		--kubeconfig="$kc/kubelet.kubeconfig" --hostname-override="$NODE_NAME"
		--node-ip="$NODE_IP" --root-dir="$KUBELET_ROOT" --v=1) ;;
	kube-proxy) CMD=("$K8S_BIN/kube-proxy" --config="$STATE/config/kube-proxy.yaml") ;;
	*) die "unknown component $1" ;;
	esac
}

# is_component NAME PID: whether process PID is this cluster's NAME (its binary, and for
# containerd and its shims, this cluster's config and socket), judged by its command line.
is_component() {
	local name=$1 pid=$2 args line
	mapfile -d "" args 2>/dev/null <"/proc/$pid/cmdline" || return 1
	[ "${#args[@]}" -gt 0 ] || return 1
	line=" ${args[*]} "
	case $name in
	etcd) [ "${args[0]}" = "$ETCD_BIN/etcd" ] ;;
	containerd) [ "${args[0]##*/}" = containerd ] && [[ $line == *" --config $CONTAINERD_CONFIG "* ]] ;;
	shims) [ "${args[0]##*/}" = containerd-shim-runc-v2 ] && [[ $line == *" -address $CONTAINERD_SOCK "* ]] ;;
	*) [ "${args[0]}" = "$K8S_BIN/$name" ] ;;
	esac
}

# pids_of_component NAME: every process that is this cluster's NAME.
pids_of_component() {
	local dir
	for dir in /proc/[0-9]*; do
		is_component "$1" "${dir#/proc/}" && echo "${dir#/proc/}"
	done
	return 0
}

# pid_of NAME: the pid in NAME's pid file, if that process is still NAME.
pid_of() {
	local f=$PIDS/$1.pid pid
	[ -f "$f" ] || return 1
	pid=$(cat "$f")
	[[ $pid =~ ^[0-9]+$ ]] && is_component "$1" "$pid" || return 1
	echo "$pid"
}
running() { pid_of "$1" >/dev/null; }

# alive PID: the process exists and is not a zombie (PID 1 here reaps orphans only now
# and then, and a zombie is as good as gone).
alive() {
	local stat
	stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
	stat=${stat##*) }
	[ "${stat%% *}" != Z ]
}

start() {
	local name=$1 pid strays
	if running "$name"; then
		log "$name already running (pid $(pid_of "$name"))"
		return
	fi
	# One started by an earlier `up` whose pid file was lost: adopt it rather than start
	# a second one that would fight it over ports and files.
	mapfile -t strays < <(pids_of_component "$name")
	if [ "${#strays[@]}" -gt 0 ]; then
		echo "${strays[0]}" >"$PIDS/$name.pid"
		log "$name already running (pid ${strays[0]}, adopted)"
		return
	fi
	command_of "$name"
	[ "${CMD[0]}" = containerd ] || [ -x "${CMD[0]}" ] || die "$name: ${CMD[0]} is missing (scripts/cluster/build.sh builds it)"
	printf '\n==== %s %s\n' "$(date -u +%FT%TZ)" "${CMD[*]}" >>"$LOGS/$name.log"
	# 9>&-: the component must not hold the up/down lock.
	setsid "${CMD[@]}" >>"$LOGS/$name.log" 2>&1 </dev/null 9>&- &
	pid=$!
	echo "$pid" >"$PIDS/$name.pid"
	log "started $name (pid $pid, log $LOGS/$name.log)"
}

show_logs() {
	local name
	for name in "${COMPONENTS[@]}"; do
		[ -f "$LOGS/$name.log" ] || continue
		printf '==> %s <==\n' "$LOGS/$name.log" >&2
		tail -n 12 "$LOGS/$name.log" >&2
	done
}

# wait_until WHAT COMMAND...: polls COMMAND until it succeeds, up to WAIT_SECS; on a
# timeout, shows the end of the logs and fails.
wait_until() {
	local what=$1 deadline=$((SECONDS + WAIT_SECS))
	shift
	until "$@" >/dev/null 2>&1; do
		if [ "$SECONDS" -ge "$deadline" ]; then
			log "gave up waiting for $what after ${WAIT_SECS}s; the end of each log:"
			show_logs
			die "$what: not there within ${WAIT_SECS}s (logs in $LOGS)"
		fi
		sleep 0.5
	done
}

healthy() {
	case $1 in
	etcd) curl -fsS --max-time 5 "$ETCD_URL/health" ;;
	kube-apiserver) kubectl get --raw /readyz ;;
	kube-controller-manager) curl -fsSk --max-time 5 https://127.0.0.1:10257/healthz ;;
	kube-scheduler) curl -fsSk --max-time 5 https://127.0.0.1:10259/healthz ;;
	containerd) ctr --address "$CONTAINERD_SOCK" --timeout 5s version ;;
	kubelet) curl -fsS --max-time 5 http://127.0.0.1:10248/healthz ;;
	kube-proxy) curl -fsS --max-time 5 http://127.0.0.1:10256/healthz ;;
	esac
}

# ensure NAME: started unless running, then healthy; dies (with its log) when it exits
# or is not healthy within WAIT_SECS.
ensure() {
	local name=$1 deadline=$((SECONDS + WAIT_SECS))
	start "$name"
	until healthy "$name" >/dev/null 2>&1; do
		# Not `running`: between fork and exec the child's command line is still this
		# shell's, so only a pid that is gone (or a zombie) means the component exited.
		if ! alive "$(cat "$PIDS/$name.pid" 2>/dev/null || echo none)"; then
			tail -n 30 "$LOGS/$name.log" >&2
			die "$name exited right after its start (above: the end of $LOGS/$name.log)"
		fi
		if [ "$SECONDS" -ge "$deadline" ]; then
			show_logs
			die "$name: not healthy within ${WAIT_SECS}s (logs in $LOGS)"
		fi
		sleep 0.5
	done
}

prepare_host() {
	# Volume mounts of pods (mountPropagation, the kubelet's own) must propagate.
	mount --make-rshared / || die "mount --make-rshared / failed"
	sysctl -qw net.ipv4.ip_forward=1 || die "could not enable net.ipv4.ip_forward"
	# Built into some kernels (then /proc/sys/net/bridge exists), a module in others, and
	# not needed for the pod -> API server path either way.
	[ -d /proc/sys/net/bridge ] || modprobe br_netfilter 2>/dev/null || true
	if [ -d /proc/sys/net/bridge ]; then
		sysctl -qw net.bridge.bridge-nf-call-iptables=1 net.bridge.bridge-nf-call-ip6tables=1 || true
	fi
	modprobe overlay 2>/dev/null || grep -qw overlay /proc/filesystems ||
		die "no overlay file system (containerd's snapshotter needs it)"
	# A dummy link where the kernel has them; some kernels here are built without
	# CONFIG_DUMMY, and a bridge without ports serves the same: a local address of its own.
	if ! ip link show "$NODE_LINK" >/dev/null 2>&1; then
		ip link add "$NODE_LINK" type dummy 2>/dev/null || ip link add "$NODE_LINK" type bridge ||
			die "could not create the link $NODE_LINK (neither type dummy nor bridge)"
	fi
	ip addr replace "$NODE_IP/32" dev "$NODE_LINK" || die "could not give $NODE_LINK the address $NODE_IP"
	ip link set "$NODE_LINK" up
	mkdir -p "$KUBELET_ROOT"
	# The kubelet refuses a CPU manager checkpoint written under another policy (a node
	# from before the static policy): drop it while the kubelet is down.
	local checkpoint=$KUBELET_ROOT/cpu_manager_state
	if ! running kubelet && [ -f "$checkpoint" ] && ! grep -q '"policyName":"static"' "$checkpoint"; then
		rm -f "$checkpoint"
		log "removed $checkpoint (written under another CPU manager policy)"
	fi
}

has_pause_image() { grep -qxF "$PAUSE_IMAGE" <<<"$(ctr_k8s images ls -q 2>/dev/null)"; }

import_pause_image() {
	has_pause_image && return
	log "building and importing the pause image ($PAUSE_IMAGE) with images/containers.py"
	(cd "$REPO" && python3 -m images.containers import --only pause --containerd-socket "$CONTAINERD_SOCK") ||
		die "could not build or import the pause image (python3 -m images.containers import --only pause)"
	has_pause_image || die "the pause image $PAUSE_IMAGE is not in containerd after its import"
}

# node_ready [SINCE]: the node is Ready, by a status the kubelet posted at SINCE (an
# RFC 3339 UTC time) or later: right after a restart, the Ready of the kubelet before
# is still there for a while.
node_ready() {
	local since=${1:-} ready
	ready=$(kubectl get node "$NODE_NAME" \
		-o jsonpath='{range .status.conditions[?(@.type=="Ready")]}{.status} {.lastHeartbeatTime}{end}' 2>/dev/null) ||
		return 1
	[ "${ready%% *}" = True ] || return 1
	[ -z "$since" ] || [[ ! ${ready#* } < $since ]]
}

# ---------------------------------------------------------------- storage

CSI_DRIVER=hostpath.csi.ironvisor.io
CSI_MANIFEST=$HERE/cluster/storage/csi-hostpath.yaml
CSI_DATA=$STATE/csi-hostpath
CSI_IMAGES=(csi-hostpath csi-provisioner)

image_digests() { ctr_k8s images ls 2>/dev/null | awk '$1 ~ /^docker.io\/ironvisor\/csi-/ {print $1, $3}'; }

csi_registered() {
	kubectl get csinode "$NODE_NAME" -o jsonpath='{.spec.drivers[*].name}' | grep -qw "$CSI_DRIVER"
}

# The storage add-on (scripts/cluster/storage): the CSI driver and provisioner images
# built offline and imported, the manifest applied, then the driver registered with the
# kubelet. Pods keep the image they started with, so an import that changed one restarts
# the DaemonSet.
deploy_storage() {
	local before
	before=$(image_digests)
	log "storage: building and importing ${CSI_IMAGES[*]} with images/containers.py"
	(cd "$REPO" && python3 -m images.containers import --only "${CSI_IMAGES[@]}" --containerd-socket "$CONTAINERD_SOCK") ||
		die "could not build or import the CSI images (python3 -m images.containers import --only ${CSI_IMAGES[*]})"
	kubectl apply -f "$CSI_MANIFEST" >/dev/null || die "kubectl apply -f $CSI_MANIFEST failed"
	if [ -n "$before" ] && [ "$before" != "$(image_digests)" ]; then
		log "storage: new CSI images; restarting the csi-hostpath DaemonSet"
		kubectl rollout restart -n ironvisor-csi daemonset/csi-hostpath >/dev/null
	fi
	wait_until "the CSI driver $CSI_DRIVER registered on node $NODE_NAME" csi_registered
}

cmd_up() {
	need_root up
	take_lock
	local started=$SECONDS name since=""
	install_packages
	"$HERE/cluster/build.sh"
	generate_pki
	write_configs
	if [[ " ${CHANGED[*]-} " == *" $CONTAINERD_CONFIG "* ]] && running containerd; then
		log "containerd's configuration changed: restarting containerd (its containers keep running)"
		stop containerd
	fi
	prepare_host
	for name in "${COMPONENTS[@]}"; do
		[ "$name" = kubelet ] && ! running kubelet && since=$(date -u +%FT%TZ)
		ensure "$name"
		[ "$name" = containerd ] && import_pause_image
	done
	wait_until "node $NODE_NAME Ready" node_ready "$since"
	wait_until "the default service account" kubectl get serviceaccount default -n default
	deploy_storage
	log "cluster up in $((SECONDS - started)) s: node $NODE_NAME ($NODE_IP); eval \"\$($0 env)\" for kubectl"
}

# ---------------------------------------------------------------- down

# stop NAME [GRACE]: SIGTERM to NAME (by its pid file, or every process that is this
# cluster's NAME when the pid file is lost), then SIGKILL after GRACE seconds (default 20).
stop() {
	local name=$1 grace=${2:-20} pids=() pid i left=()
	if pid=$(pid_of "$name"); then
		pids=("$pid")
	else
		mapfile -t pids < <(pids_of_component "$name")
	fi
	rm -f "$PIDS/$name.pid"
	[ "${#pids[@]}" -gt 0 ] || return 0
	kill -TERM "${pids[@]}" 2>/dev/null || true
	for ((i = 0; i < grace * 10; i++)); do
		left=()
		for pid in "${pids[@]}"; do alive "$pid" && left+=("$pid"); done
		[ "${#left[@]}" -eq 0 ] && break
		sleep 0.1
	done
	if [ "${#left[@]}" -gt 0 ]; then
		log "$name (pid ${left[*]}) ignored SIGTERM for ${grace}s: SIGKILL"
		kill_all "${left[@]}"
	fi
	log "stopped $name"
}

running_tasks() { ctr_k8s tasks ls 2>/dev/null | awk 'NR > 1 && $3 == "RUNNING" {print $1}'; }

# Pods go through the API and the kubelet, so that their sandboxes are stopped the proper
# way (CNI DEL, netns and mounts released) and the next `up` starts without stale pods.
drain_pods() {
	running kube-apiserver && running kubelet && running containerd || return 0
	kubectl get --raw /readyz >/dev/null 2>&1 || return 0
	# Nothing may recreate what is deleted here.
	stop kube-controller-manager
	stop kube-scheduler
	kubectl delete pods --all --all-namespaces --grace-period=5 --wait=false >/dev/null 2>&1 || true
	local deadline=$((SECONDS + 90))
	while [ "$SECONDS" -lt "$deadline" ]; do
		[ -z "$(running_tasks)" ] && [ -z "$(kubectl get pods -A -o name 2>/dev/null)" ] && return 0
		sleep 1
	done
	log "pods still there after 90 s; killing their containers"
}

# What the kubelet did not stop: killed and removed through containerd itself.
remove_containers() {
	running containerd || return 0
	local id
	for id in $(running_tasks); do ctr_k8s tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true; done
	for id in $(ctr_k8s tasks ls -q 2>/dev/null); do ctr_k8s tasks delete -f "$id" >/dev/null 2>&1 || true; done
	for id in $(ctr_k8s containers ls -q 2>/dev/null); do ctr_k8s containers delete "$id" >/dev/null 2>&1 || true; done
}

# kill_all PIDS...: SIGKILL, then wait (up to 10 s) until they are gone.
kill_all() {
	local pid i left
	[ "$#" -gt 0 ] || return 0
	kill -KILL "$@" 2>/dev/null || true
	for ((i = 0; i < 100; i++)); do
		left=0
		for pid in "$@"; do alive "$pid" && left=1; done
		[ "$left" -eq 0 ] && return 0
		sleep 0.1
	done
	log "processes still there after SIGKILL: $*"
}

kubepods_cgroups() {
	local dir
	for dir in /sys/fs/cgroup/*/kubepods* /sys/fs/cgroup/kubepods*; do
		[ -d "$dir" ] && echo "$dir"
	done
	return 0
}

# Whatever is left of this cluster's processes: strays without a pid file, containerd's
# shims, and anything still in the kubelet's pod cgroups.
kill_leftovers() {
	local name pids=() dir
	for name in "${COMPONENTS[@]}" shims; do
		mapfile -t -O "${#pids[@]}" pids < <(pids_of_component "$name")
	done
	for dir in $(kubepods_cgroups); do
		mapfile -t -O "${#pids[@]}" pids < <(find "$dir" -name cgroup.procs -exec cat {} + 2>/dev/null)
	done
	[ "${#pids[@]}" -eq 0 ] && return 0
	log "killing leftover processes: ${pids[*]}"
	kill_all "${pids[@]}"
}

# flush_chains iptables|ip6tables: removes every KUBE-* and CNI-* chain (kube-proxy's, the
# kubelet's, the bridge plugin's ipMasq and portmap chains) and the jumps into them.
flush_chains() {
	local tool=$1 table rules rule chain chains
	command -v "$tool" >/dev/null || return 0
	for table in nat filter mangle raw; do
		rules=$("$tool" -t "$table" -S 2>/dev/null) || continue
		chains=$(awk '/^-N (KUBE-|CNI-)/ {print $2}' <<<"$rules")
		[ -n "$chains" ] || continue
		# Jumps from the other chains first, then the chains' own rules, then the chains.
		while read -r rule; do
			if [ -n "$rule" ]; then eval "$tool -t $table ${rule/#-A/-D}" 2>/dev/null || true; fi
		done < <(awk '/^-A / && $2 !~ /^(KUBE-|CNI-)/ && / -j (KUBE-|CNI-)/' <<<"$rules")
		for chain in $chains; do "$tool" -t "$table" -F "$chain" 2>/dev/null || true; done
		for chain in $chains; do "$tool" -t "$table" -X "$chain" 2>/dev/null || true; done
	done
}

# drop_empty_tables: the iptables-nft tables that were made for the cluster's rules and now
# hold nothing but empty built-in chains that accept (nftables' view; needs `nft`).
drop_empty_tables() {
	command -v nft >/dev/null || return 0
	local family table tool rules
	for family in ip ip6; do
		tool=iptables; [ "$family" = ip6 ] && tool=ip6tables
		for table in nat filter mangle raw; do
			nft list table "$family" "$table" >/dev/null 2>&1 || continue
			rules=$("$tool" -t "$table" -S 2>/dev/null) || continue
			grep -qvE '^-P [A-Z]+ ACCEPT$' <<<"$rules" && continue
			nft delete table "$family" "$table" 2>/dev/null || true
		done
	done
}

cleanup_host() {
	local m dir
	# Mounts: pod volumes, container root file systems, sandboxes' shm and netns.
	for m in $(grep -E "^($KUBELET_ROOT|$RUN|$STATE)/" <<<"$(findmnt -rn -o TARGET)" | sort -r || true); do
		umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "could not unmount $m"
	done
	# With nothing mounted under it any more, what is left of pod folders goes too (the
	# kubelet would otherwise complain about orphaned pods on the next start).
	if [ -d "$KUBELET_ROOT/pods" ] && ! grep -q "^$KUBELET_ROOT/" <<<"$(findmnt -rn -o TARGET)"; then
		rm -rf --one-file-system "$KUBELET_ROOT/pods"
	fi
	# The bridge takes the veths that are left with it; the dummy link is ours alone.
	ip link del "$CNI_BRIDGE" 2>/dev/null || true
	ip link del "$NODE_LINK" 2>/dev/null || true
	rm -rf "$STATE/cni/ipam"
	# Loop devices of the CSI driver's Block volumes (their files stay, as the volumes do).
	for m in $(losetup --list --noheadings --output NAME,BACK-FILE 2>/dev/null | awk -v d="$CSI_DATA/" 'index($2, d) == 1 {print $1}'); do
		losetup --detach "$m" 2>/dev/null || log "could not detach the loop device $m"
	done
	# kube-proxy's own cleanup (iptables, and nftables where `nft` is), then every KUBE-* and
	# CNI-* chain that kube-proxy, the kubelet and the bridge plugin's ipMasq made.
	if [ -x "$K8S_BIN/kube-proxy" ] && [ -f "$STATE/config/kube-proxy.yaml" ]; then
		"$K8S_BIN/kube-proxy" --cleanup --config="$STATE/config/kube-proxy.yaml" >/dev/null 2>&1 || true
	fi
	flush_chains iptables
	flush_chains ip6tables
	drop_empty_tables
	if command -v nft >/dev/null; then
		for m in ip ip6; do nft delete table "$m" kube-proxy 2>/dev/null || true; done
	fi
	# The cgroups the kubelet made: kubepods, its QoS and pod children, in every hierarchy.
	for dir in $(kubepods_cgroups); do
		find "$dir" -depth -type d -exec rmdir {} + 2>/dev/null || true
		[ -d "$dir" ] && log "could not remove the cgroup $dir"
	done
	rm -rf "$RUN"
}

cmd_down() {
	need_root down
	local purge=${1:-}
	[ -z "$purge" ] || [ "$purge" = --purge ] || die "usage: $0 down [--purge]"
	take_lock
	drain_pods
	stop kubelet
	remove_containers
	stop containerd
	stop kube-proxy
	stop kube-controller-manager
	stop kube-scheduler
	# The API server before etcd: without etcd it ignores SIGTERM for minutes.
	stop kube-apiserver 30
	stop etcd
	kill_leftovers
	cleanup_host
	if [ "$purge" = --purge ]; then
		rm -rf --one-file-system "$STATE" "$KUBELET_ROOT"
		log "purged $STATE and $KUBELET_ROOT"
	fi
	log "cluster down"
}

cmd_status() {
	local name status=0
	for name in "${COMPONENTS[@]}"; do
		if ! running "$name"; then
			printf '%-24s stopped\n' "$name"; status=1
		elif healthy "$name" >/dev/null 2>&1; then
			printf '%-24s running (pid %s)\n' "$name" "$(pid_of "$name")"
		else
			printf '%-24s running (pid %s), not healthy\n' "$name" "$(pid_of "$name")"; status=1
		fi
	done
	if running kube-apiserver && node_ready ""; then
		printf '%-24s Ready (%s)\n' "node $NODE_NAME" "$NODE_IP"
	else
		printf '%-24s not Ready\n' "node $NODE_NAME"; status=1
	fi
	return "$status"
}

case ${1:-} in
up) cmd_up ;;
down) cmd_down "${2:-}" ;;
status) cmd_status ;;
kubeconfig)
	[ -f "$ADMIN_KUBECONFIG" ] || log "warning: $ADMIN_KUBECONFIG does not exist yet (scripts/cluster.sh up makes it)"
	echo "$ADMIN_KUBECONFIG"
	;;
env)
	echo "export KUBECONFIG=$ADMIN_KUBECONFIG"
	echo "export PATH=$K8S_BIN:\$PATH"
	;;
*)
	echo "usage: $0 up | down [--purge] | status | kubeconfig | env" >&2
	exit 2
	;;
esac
