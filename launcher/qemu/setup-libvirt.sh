#!/usr/bin/env bash
# Installs and starts libvirt + QEMU for Ironvisor's software-emulation backend
# (ironvisor-launcher-qemu). Idempotent: safe to run again; it only installs what is
# missing, rewrites only its own block of qemu.conf, and starts only daemons that are not
# running. Works without systemd (daemons are started with -d).
#
# Why QEMU runs as root here: the launcher itself runs as root, the disk images it is
# given are owned by root (the node agent creates them), and the launcher is the only
# thing that runs inside this QEMU process. Running QEMU as root with libvirt's
# dynamic_ownership off means libvirt never chowns anyone's image files, and a disk or
# kernel the launcher can read QEMU can read too; the same holds for the unix sockets in
# the launcher's private (0700, root) runtime directory: the serial console and, per NIC,
# the datagram sockets of the frame relay. The tap itself is opened by the launcher in its
# own network namespace and never handed to libvirtd or QEMU. There is no
# AppArmor/SELinux to confine QEMU on these machines, so security_driver is "none".
#
# Environment: IRONVISOR_LIBVIRT_WAIT_SECS (default 30) bounds the wait for the socket.
set -euo pipefail
shopt -s inherit_errexit

log() { printf 'setup-libvirt: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (installs packages and starts libvirtd)"

PACKAGES=(libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libvirt-dev
          qemu-system-x86 pkg-config iproute2)
QEMU_CONF=/etc/libvirt/qemu.conf
SOCKET=/var/run/libvirt/libvirt-sock
WAIT_SECS=${IRONVISOR_LIBVIRT_WAIT_SECS:-30}
BEGIN_MARK="# BEGIN ironvisor (managed by launcher/qemu/setup-libvirt.sh)"
END_MARK="# END ironvisor"

install_packages() {
	local missing=() pkg
	for pkg in "${PACKAGES[@]}"; do
		if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
			missing+=("$pkg")
		fi
	done
	if [ "${#missing[@]}" -eq 0 ]; then
		log "packages already installed"
		return
	fi
	log "installing: ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	if ! apt-get install -y --no-install-recommends "${missing[@]}"; then
		log "install failed; refreshing the package lists and retrying"
		apt-get update
		apt-get install -y --no-install-recommends "${missing[@]}"
	fi
}

ensure_users() {
	# The Debian QEMU driver refuses to start without its default user, even when
	# qemu.conf overrides it ("Failed to parse user 'libvirt-qemu'").
	getent group kvm >/dev/null || groupadd --system kvm
	getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu
	getent group libvirt >/dev/null || groupadd --system libvirt
	if ! getent passwd libvirt-qemu >/dev/null; then
		useradd --system --gid libvirt-qemu --groups kvm --home-dir /var/lib/libvirt \
			--no-create-home --shell /usr/sbin/nologin libvirt-qemu
	fi
}

ensure_dirs() {
	mkdir -p /var/log/libvirt/qemu /var/run/libvirt /var/lib/libvirt/qemu \
		/var/cache/libvirt/qemu /etc/libvirt
}

# Writes our settings into qemu.conf; prints "changed" when the file changed.
configure_qemu() {
	local block
	block=$(cat <<CONF
$BEGIN_MARK
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
namespaces = [ ]
cgroup_controllers = [ ]
$END_MARK
CONF
)
	local keys='^(user|group|dynamic_ownership|remember_owner|security_driver|namespaces|cgroup_controllers)[[:space:]]*='
	local old="" new
	[ -f "$QEMU_CONF" ] && old=$(cat "$QEMU_CONF")
	# Drop our previous block and comment out any other active setting of the same keys
	# (exact string match on the markers: they contain '/' and '(').
	new=$(printf '%s\n' "$old" | awk -v begin="$BEGIN_MARK" -v end="$END_MARK" -v keys="$keys" '
		$0 == begin { skip = 1; next }
		skip && $0 == end { skip = 0; next }
		skip { next }
		$0 ~ keys { print "# overridden by ironvisor: " $0; next }
		{ print }')
	if [ -n "$(printf '%s' "$new" | tr -d '[:space:]')" ]; then
		new=$(printf '%s\n\n%s\n' "$new" "$block" | cat -s)
	else
		new=$block
	fi
	if [ "$new" != "$old" ]; then
		printf '%s\n' "$new" >"$QEMU_CONF.ironvisor.tmp"
		mv "$QEMU_CONF.ironvisor.tmp" "$QEMU_CONF"
		echo changed
	fi
}

# The pid of a running daemon from its pid file, if it is alive and is that program.
running_pid() {
	local name=$1 pidfile=$2 pid
	[ -f "$pidfile" ] || return 1
	pid=$(cat "$pidfile" 2>/dev/null) || return 1
	[ -n "$pid" ] && [ -r "/proc/$pid/comm" ] || return 1
	[ "$(cat "/proc/$pid/comm")" = "$name" ] || return 1
	echo "$pid"
}

start_daemon() {
	local name=$1 pidfile=$2
	if running_pid "$name" "$pidfile" >/dev/null; then
		log "$name already running"
		return
	fi
	log "starting $name"
	"$name" -d
}

stop_daemon() {
	local name=$1 pidfile=$2 pid _
	pid=$(running_pid "$name" "$pidfile") || return 0
	log "restarting $name (pid $pid) to load the new configuration"
	kill -TERM "$pid"
	for _ in $(seq 1 50); do
		[ -d "/proc/$pid" ] || return 0
		sleep 0.1
	done
	die "$name (pid $pid) did not exit after SIGTERM"
}

wait_for_libvirt() {
	local deadline=$((SECONDS + WAIT_SECS))
	until [ -S "$SOCKET" ] && virsh -c qemu:///system version >/dev/null 2>&1; do
		if [ "$SECONDS" -ge "$deadline" ]; then
			virsh -c qemu:///system version || true
			die "libvirtd did not answer on $SOCKET within ${WAIT_SECS}s (see /var/log/libvirt)"
		fi
		sleep 0.2
	done
	log "libvirt ready on $SOCKET: $(virsh -c qemu:///system version 2>/dev/null | tr '\n' ' ')"
}

install_packages
ensure_users
ensure_dirs
changed=$(configure_qemu)
if [ -n "$changed" ]; then
	log "wrote $QEMU_CONF"
	stop_daemon libvirtd /var/run/libvirtd.pid
fi
start_daemon virtlogd /var/run/virtlogd.pid
start_daemon libvirtd /var/run/libvirtd.pid
wait_for_libvirt
