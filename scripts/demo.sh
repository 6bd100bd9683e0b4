#!/usr/bin/env bash
# The main job: standalone node mode on this machine, from a fresh Debian 12 install.
#
#   scripts/demo.sh            install what is missing, build, start the node daemon,
#                              apply examples/vm-*.yaml and show the guest booting
#   scripts/demo.sh --down     delete the example VMs and stop the daemon
#
# The daemon keeps running afterwards (it is the node agent); drive it with
#   target/release/virtctl get | describe NAME | console NAME | stop NAME | ...
# Uses hardware KVM where it can run the guest, else software emulation (QEMU TCG via
# libvirt) with a warning in the VM's events.
#
# Environment: IRONVISOR_DATA_DIR (default /var/lib/ironvisor), IRONVISOR_SOCKET
# (default /run/ironvisor/handler.sock), DEMO_CONSOLE_SECS (how long a non-interactive
# run shows the console, default 90).
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
root=$(pwd)

data_dir=${IRONVISOR_DATA_DIR:-/var/lib/ironvisor}
export IRONVISOR_SOCKET=${IRONVISOR_SOCKET:-/run/ironvisor/handler.sock}
console_secs=${DEMO_CONSOLE_SECS:-90}
bin=$root/target/release
virtctl=$bin/virtctl
pid_file=$data_dir/handler.pid
log_file=$data_dir/handler.log

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
die() { printf 'demo: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root: the node agent creates network namespaces, taps and cgroups"

daemon_pid() {
	local pid
	[ -f "$pid_file" ] || return 1
	pid=$(cat "$pid_file")
	[ -d "/proc/$pid" ] && grep -q ironvisor-handler "/proc/$pid/cmdline" 2>/dev/null || return 1
	echo "$pid"
}

down() {
	local pid vm
	if pid=$(daemon_pid); then
		for vm in $("$virtctl" get -o name 2>/dev/null || true); do
			"$virtctl" delete "${vm##*/}" || true
		done
		say "stopping the node daemon (pid $pid)"
		kill -TERM "$pid"
		for _ in $(seq 100); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
	else
		echo "the node daemon is not running"
	fi
	rm -f "$pid_file"
}

if [ "${1:-}" = "--down" ]; then
	down
	exit 0
fi

say "system packages and Python tools"
scripts/install-deps.sh

say "building the node agent, both launchers and virtctl (release)"
cargo build --release --locked -p ironvisor-handler -p ironvisor-launcher-qemu \
	-p ironvisor-virtctl
# The KVM launcher as shipped: statically linked.
kvm_launcher=$(scripts/build-launcher.sh | tail -n 1)

say "guest images from Debian packages, laid out as the node's image catalogue"
python3 -m images.catalog "$data_dir/images"
# examples/vm-hostdisk.yaml boots a host file directly (hostDisk): give it its own copy.
[ -f "$data_dir/images/busybox-root.raw" ] ||
	cp --sparse=always "$data_dir/images/ironvisor/rootfs/busybox.img" "$data_dir/images/busybox-root.raw"

say "libvirt + QEMU for the software-emulation backend"
launcher/qemu/setup-libvirt.sh

if pid=$(daemon_pid); then
	say "node daemon already running (pid $pid)"
else
	say "starting the node daemon (log: $log_file)"
	mkdir -p "$data_dir"
	setsid "$bin/ironvisor-handler" serve --data-dir "$data_dir" --socket "$IRONVISOR_SOCKET" \
		--launcher "$kvm_launcher" >>"$log_file" 2>&1 </dev/null &
	echo $! >"$pid_file"
	for _ in $(seq 100); do
		[ -S "$IRONVISOR_SOCKET" ] && "$virtctl" get >/dev/null 2>&1 && break
		daemon_pid >/dev/null || die "the daemon exited; see $log_file"
		sleep 0.1
	done
fi

say "virtctl apply -f examples/vm-*.yaml"
for f in examples/vm-*.yaml; do
	"$virtctl" apply -f "$f"
done
sleep 3
"$virtctl" get

say "the console of VM 'small' (Ctrl+] detaches)"
if [ -t 0 ] && [ -t 1 ]; then
	"$virtctl" console small
else
	# No terminal: show the console for a while, then detach.
	"$virtctl" console small --timeout "$console_secs" </dev/null || true
fi

say "state after the demo"
"$virtctl" get
cat <<TXT

The node daemon keeps running. Try:
  IRONVISOR_SOCKET=$IRONVISOR_SOCKET $virtctl describe small
  IRONVISOR_SOCKET=$IRONVISOR_SOCKET $virtctl console small
  IRONVISOR_SOCKET=$IRONVISOR_SOCKET $virtctl start hostdisk
Clean up with: scripts/demo.sh --down
TXT
