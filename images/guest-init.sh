#!/bin/sh
# /init of the Ironvisor test guest (installed by images/build.py).
#
# Kernel command line switches:
#   iv.bench      print the init marker and power off at once (boot-time benchmarks)
#   iv.run=NAME   run /scenarios/NAME.sh (added by tests as a second cpio archive), print
#                 IRONVISOR-SCENARIO-EXIT=<rc> and power off
#   (neither)     interactive shell on the console
# Ctrl+Alt+Del (SIGINT to pid 1) prints IRONVISOR-GUEST-GRACEFUL-SHUTDOWN and powers off.

export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root TERM=linux

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo IRONVISOR-GUEST-INIT-REACHED

cmdline=$(cat /proc/cmdline)
for word in $cmdline; do
	case "$word" in
	iv.bench) poweroff -f ;;
	esac
done

graceful_shutdown() {
	echo IRONVISOR-GUEST-GRACEFUL-SHUTDOWN
	kill -TERM -1 2>/dev/null
	sync
	umount -a -r 2>/dev/null
	poweroff -f
}
trap graceful_shutdown INT TERM
# 0: the kernel sends SIGINT to pid 1 on Ctrl+Alt+Del instead of rebooting at once.
echo 0 >/proc/sys/kernel/ctrl-alt-del

mkdir -p /tmp /run /dev/pts /dev/shm
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t devpts devpts /dev/pts

# virtio-pci only where a virtio device sits on a PCI bus (the software-emulation
# backend); the KVM launcher's devices are virtio-mmio and it has no PCI bus.
has_virtio_pci() {
	grep -qs 0x1af4 /sys/bus/pci/devices/*/vendor
}
if [ -f /etc/ironvisor/modules ]; then
	while read -r ko; do
		[ -n "$ko" ] || continue
		case "$ko" in
		*/virtio_pci*) has_virtio_pci || continue ;;
		esac
		insmod "$ko" || echo "IRONVISOR-GUEST-WARNING: insmod $ko failed"
	done </etc/ironvisor/modules
fi

mem_kb=$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo)
echo "IRONVISOR-GUEST-INFO cpus=$(nproc) mem_kb=$mem_kb"

# The machine's shape: per CPU in number order, its socket, core and SMT siblings (as
# the CPUID topology leaves and the ACPI MADT describe them), and the RTC's time in
# seconds since the epoch ("none" without an RTC).
per_cpu() {
	cpu=0 values=
	while [ -d "/sys/devices/system/cpu/cpu$cpu/topology" ]; do
		values="$values$(cat "/sys/devices/system/cpu/cpu$cpu/topology/$1"),"
		cpu=$((cpu + 1))
	done
	echo "${values%,}"
}
rtc=$(cat /sys/class/rtc/rtc0/since_epoch 2>/dev/null) || rtc=none
echo "IRONVISOR-GUEST-MACHINE packages=$(per_cpu physical_package_id) cores=$(per_cpu core_id) siblings=$(per_cpu thread_siblings_list) rtc=${rtc:-none}"

# Run a command in the background and wait for it, so that a trapped signal is handled
# at once (a shell only runs traps between foreground commands). Returns its status.
run_and_wait() {
	"$@" &
	child=$!
	while :; do
		wait "$child"
		status=$?
		kill -0 "$child" 2>/dev/null || return "$status"
	done
}

scenario=
for word in $cmdline; do
	case "$word" in
	iv.run=*) scenario=${word#iv.run=} ;;
	esac
done

if [ -n "$scenario" ]; then
	script="/scenarios/$scenario.sh"
	if [ -f "$script" ]; then
		run_and_wait sh "$script"
		rc=$?
	else
		echo "IRONVISOR-GUEST-ERROR: no scenario $script in the initramfs"
		rc=127
	fi
	echo "IRONVISOR-SCENARIO-EXIT=$rc"
	sync
	poweroff -f
fi

while :; do
	cat /etc/ironvisor-banner 2>/dev/null
	echo "Ironvisor test guest, kernel $(uname -r), $(nproc) vCPU(s), $mem_kb KiB."
	echo "Interactive shell on the console; 'poweroff -f' stops the VM."
	run_and_wait setsid cttyhack sh
done
