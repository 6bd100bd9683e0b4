# vCPU migration probe, inside one L1: boots of the same guest with the vCPU thread left
# to L1's scheduler, pinned (--vcpu-affinity), or moved between L1's CPUs every 200 ms,
# under the launcher and under QEMU microvm (-cpu host). One line per boot:
#   PROBE vmm=launcher mode=free rc=0 init=1 s=8.2 migrations=3
# (rc 0 and init=1: the guest reached /init and powered off; rc 4: triple fault; 137: hung
# and killed after HANG_S seconds; migrations: how often L1 moved the vCPU thread to
# another CPU, from its /proc/PID/task/TID/sched, -1 when never read). Run it with
# tests/nested/run.py; see tests/README.md, "Nested KVM and vCPU migration".
#
# Knobs (environment, or a wrapper script that sets them and sources this one):
#   RUNS (4), MODES ("pinned free flip"), VMMS ("launcher qemu"), HANG_S (90),
#   LAUNCHER_ARGS and QEMU_ARGS (extra arguments), VARIANT (a label echoed per line).
LAUNCHER=${LAUNCHER:-/usr/local/bin/ironvisor-launcher}
QEMU=${QEMU:-/usr/bin/qemu-system-x86_64}
RUNS=${RUNS:-4}
MODES=${MODES:-pinned free flip}
VMMS=${VMMS:-launcher qemu}
HANG_S=${HANG_S:-90}
VARIANT=${VARIANT:-base}
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

# flip PID TID: moves thread TID of PID between CPUs 0 and 1 every 200 ms.
flip() {
	cpu=0
	while kill -0 "$1" 2>/dev/null; do
		taskset -p -c $cpu "$2" >/dev/null 2>&1
		cpu=$((1 - cpu))
		usleep 200000
	done
}

# count_migrations PID TID: writes the thread's migration count to /tmp/migrations every
# 100 ms while PID lives (the last value read survives the thread).
count_migrations() {
	while kill -0 "$1" 2>/dev/null; do
		n=$(awk '/^se.nr_migrations/ { print $3 }' "/proc/$1/task/$2/sched" 2>/dev/null)
		[ -n "$n" ] && echo "$n" >/tmp/migrations
		usleep 100000
	done
}

boot() {
	vmm=$1 mode=$2
	# Names the boot in progress for a reader of the log, should L1 itself die in it.
	echo "PROBE-START variant=$VARIANT vmm=$vmm mode=$mode"
	echo -1 >/tmp/migrations
	t0=$(cut -d' ' -f1 /proc/uptime)
	if [ "$vmm" = launcher ]; then
		pin=
		[ "$mode" = pinned ] && pin="--vcpu-affinity 0=1"
		# shellcheck disable=SC2086 # LAUNCHER_ARGS is a list of arguments
		"$LAUNCHER" --name probe --kernel /guest/vmlinux --initrd /guest/initrd \
			--memory-mib 256 --cmdline "$CMDLINE" --stdio $pin $LAUNCHER_ARGS \
			</dev/null >/tmp/out 2>/tmp/err &
		thread=vcpu0
	else
		# debug-threads=on names the vCPU thread "CPU 0/KVM"; without it the thread has
		# QEMU's own name and neither the pinning nor the flipping below could find it.
		# shellcheck disable=SC2086 # QEMU_ARGS is a list of arguments
		"$QEMU" -name probe,debug-threads=on -M microvm -accel kvm -cpu host -m 256 \
			-nodefaults -no-user-config -nographic -serial stdio -no-reboot \
			-kernel /guest/vmlinux -initrd /guest/initrd -append "$CMDLINE" $QEMU_ARGS \
			</dev/null >/tmp/out 2>/tmp/err &
		thread="CPU 0/KVM"
	fi
	pid=$!
	helpers=
	if tid=$(vcpu_tid $pid "$thread"); then
		count_migrations $pid "$tid" &
		helpers=$!
		case "$mode" in
		flip) flip $pid "$tid" & helpers="$helpers $!" ;;
		pinned) [ "$vmm" = qemu ] && taskset -p -c 1 "$tid" >/dev/null ;;
		esac
	fi
	(sleep "$HANG_S"; kill -9 $pid 2>/dev/null) &
	killer=$!
	wait $pid
	rc=$?
	kill $killer 2>/dev/null
	# shellcheck disable=SC2086 # a list of pids
	[ -n "$helpers" ] && wait $helpers 2>/dev/null
	t1=$(cut -d' ' -f1 /proc/uptime)
	echo "PROBE variant=$VARIANT vmm=$vmm mode=$mode rc=$rc" \
		"init=$(grep -c IRONVISOR-GUEST-INIT-REACHED /tmp/out)" \
		"s=$(awk "BEGIN { print $t1 - $t0 }") migrations=$(cat /tmp/migrations)"
}

# Pinned boots first: a corrupted L2 can leave L1 itself broken (seen: L1 frozen for good
# after an unpinned boot hung), which would spoil every boot after it.
for mode in $MODES; do
	i=0
	while [ $i -lt "$RUNS" ]; do
		for vmm in $VMMS; do
			boot "$vmm" "$mode"
		done
		i=$((i + 1))
	done
done
echo PROBE-DONE
exit 0
