# vCPU migration probe, inside one L1: boots of the same guest with the vCPU thread left
# to L1's scheduler, pinned (--vcpu-affinity), or moved between L1's CPUs every 200 ms,
# under the launcher and under QEMU microvm (-cpu host). One line per boot:
#   PROBE vmm=launcher mode=free rc=0 init=1 s=8.2
# (rc 0 and init=1: the guest reached /init and powered off; rc 4: triple fault; 137: hung
# and killed after 90 s). Run it with tests/nested/run.py; see tests/README.md,
# "Nested KVM and vCPU migration".
LAUNCHER=/usr/local/bin/ironvisor-launcher
QEMU=/usr/bin/qemu-system-x86_64
RUNS=${RUNS:-4}
CMDLINE="console=ttyS0 reboot=k panic=1 iv.bench"

# vcpu_tid PID NAME: the thread id of PID's thread called NAME (waits up to 2 s).
vcpu_tid() {
	tries=0
	while [ $tries -lt 400 ]; do
		for t in /proc/$1/task/*; do
			[ "$(cat "$t/comm" 2>/dev/null)" = "$2" ] && { echo "${t##*/}"; return 0; }
		done
		tries=$((tries + 1))
		usleep 5000
	done
	return 1
}

# flip PID NAME: moves thread NAME of PID between CPUs 0 and 1 every 200 ms.
flip() {
	tid=$(vcpu_tid "$1" "$2") || return
	cpu=0
	while kill -0 "$1" 2>/dev/null; do
		taskset -p -c $cpu "$tid" >/dev/null 2>&1
		cpu=$((1 - cpu))
		usleep 200000
	done
}

boot() {
	vmm=$1 mode=$2
	t0=$(cut -d' ' -f1 /proc/uptime)
	if [ "$vmm" = launcher ]; then
		pin=
		[ "$mode" = pinned ] && pin="--vcpu-affinity 0=1"
		"$LAUNCHER" --name probe --kernel /guest/vmlinux --initrd /guest/initrd \
			--memory-mib 256 --cmdline "$CMDLINE" --stdio $pin </dev/null >/tmp/out 2>/tmp/err &
		thread=vcpu0
	else
		"$QEMU" -M microvm -accel kvm -cpu host -m 256 -nodefaults -no-user-config \
			-nographic -serial stdio -no-reboot -kernel /guest/vmlinux -initrd /guest/initrd \
			-append "$CMDLINE" </dev/null >/tmp/out 2>/tmp/err &
		thread="CPU 0/KVM"
	fi
	pid=$!
	case "$mode" in
	flip) flip $pid "$thread" & ;;
	pinned) [ "$vmm" = qemu ] && { tid=$(vcpu_tid $pid "$thread") && taskset -p -c 1 "$tid" >/dev/null; } ;;
	esac
	(sleep 90; kill -9 $pid 2>/dev/null) &
	killer=$!
	wait $pid
	rc=$?
	kill $killer 2>/dev/null
	t1=$(cut -d' ' -f1 /proc/uptime)
	echo "PROBE vmm=$vmm mode=$mode rc=$rc init=$(grep -c IRONVISOR-GUEST-INIT-REACHED /tmp/out) s=$(awk "BEGIN { print $t1 - $t0 }")"
}

# Pinned boots first: a corrupted L2 can leave L1 itself broken (seen: L1 frozen for good
# after an unpinned boot hung), which would spoil every boot after it.
for mode in pinned free flip; do
	i=0
	while [ $i -lt "$RUNS" ]; do
		boot launcher $mode
		boot qemu $mode
		i=$((i + 1))
	done
done
echo PROBE-DONE
exit 0
