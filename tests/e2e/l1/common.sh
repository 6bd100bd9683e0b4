# Helpers sourced by the e2e L1 scenarios (installed at /e2e/common.sh inside L1).
#
# Busybox sh runs its own applets before anything on PATH, so programs copied in with
# --bin are called by absolute path below ($IP, $DEBUGFS, $LAUNCHER).

LAUNCHER=${LAUNCHER:-/usr/local/bin/ironvisor-launcher}
QEMU=/usr/bin/qemu-system-x86_64
IP=/usr/sbin/ip
DEBUGFS=/usr/sbin/debugfs
# "launcher" (the product) or "qemu" (a stand-in used to check the scenarios themselves).
E2E_VMM=$(cat /e2e/vmm 2>/dev/null || echo launcher)
KERNEL=/guest/vmlinux
INITRD=/guest/initrd
BASE_CMDLINE="console=ttyS0 reboot=k panic=1 quiet"

# One fact for the test to assert on: L1-FACT key=value
fact() {
	echo "L1-FACT $1=$2"
}

fail() {
	echo "L1-ERROR: $*"
	exit 1
}

# vm_start NAME LOGPREFIX CMDLINE_EXTRA [launcher flags...]
# Starts the VM in the background with the console in LOGPREFIX.console and the VMM's
# stderr in LOGPREFIX.err; sets VM_PID.
vm_start() {
	name=$1 prefix=$2 extra=$3
	shift 3
	: >"$prefix.console"
	: >"$prefix.err"
	if [ "$E2E_VMM" = qemu ]; then
		vm_start_qemu "$name" "$prefix" "$extra" "$@"
		return
	fi
	[ -x "$LAUNCHER" ] || fail "no launcher at $LAUNCHER"
	"$LAUNCHER" --name "$name" --kernel "$KERNEL" --initrd "$INITRD" \
		--cmdline "$BASE_CMDLINE $extra" --stdio "$@" \
		>"$prefix.console" 2>"$prefix.err" </dev/null &
	VM_PID=$!
	echo "L1: started $name (pid $VM_PID): $LAUNCHER --name $name ... --cmdline '$BASE_CMDLINE $extra' $*"
}

# The same VM under QEMU microvm (flags translated from the launcher's), so the guest
# scenarios can be checked without the launcher.
vm_start_qemu() {
	name=$1 prefix=$2 extra=$3
	shift 3
	vcpus=1 mem=256 devs= shape= rtc=
	while [ $# -gt 0 ]; do
		case "$1" in
		--vcpus) vcpus=$2; shift ;;
		--cpu-topology) shape=,$2; shift ;;
		--rtc-offset-seconds)
			rtc="-rtc base=$(date -u -d "@$(($(date +%s) + $2))" '+%Y-%m-%dT%H:%M:%S')"
			shift ;;
		--memory-mib) mem=$2; shift ;;
		--disk)
			id='' path='' ro=off serial=''
			for kv in $(echo "$2" | tr ',' ' '); do
				case "$kv" in
				id=*) id=${kv#id=} ;; path=*) path=${kv#path=} ;;
				ro=*) ro=${kv#ro=} ;; serial=*) serial=${kv#serial=} ;;
				esac
			done
			devs="$devs -drive id=$id,file=$path,format=raw,if=none,readonly=$ro"
			devs="$devs -device virtio-blk-device,drive=$id${serial:+,serial=$serial}"
			shift ;;
		--net)
			id='' tap='' mac=''
			for kv in $(echo "$2" | tr ',' ' '); do
				case "$kv" in
				id=*) id=${kv#id=} ;; tap=*) tap=${kv#tap=} ;; mac=*) mac=${kv#mac=} ;;
				esac
			done
			devs="$devs -netdev tap,id=$id,ifname=$tap,script=no,downscript=no"
			devs="$devs -device virtio-net-device,netdev=$id${mac:+,mac=$mac}"
			shift ;;
		*) ;;
		esac
		shift
	done
	# shellcheck disable=SC2086
	"$QEMU" -M microvm,acpi=on -accel kvm -cpu host -smp "$vcpus$shape" -m "$mem" -nodefaults \
		-no-user-config -display none -serial stdio -no-reboot $devs $rtc \
		-kernel "$KERNEL" -initrd "$INITRD" -append "$BASE_CMDLINE $extra" \
		>"$prefix.console" 2>"$prefix.err" </dev/null &
	VM_PID=$!
	echo "L1: started $name under QEMU (pid $VM_PID)"
}

# vm_wait TIMEOUT_S: wait for the VM process; kills it after TIMEOUT_S. Sets VM_RC.
vm_wait() {
	(sleep "$1"; kill -KILL "$VM_PID" 2>/dev/null && echo "L1-ERROR: VM still running after $1 s, killed") &
	watchdog=$!
	wait "$VM_PID"
	VM_RC=$?
	kill "$watchdog" 2>/dev/null
	wait "$watchdog" 2>/dev/null
	return 0
}

# wait_for FILE PATTERN TIMEOUT_S: poll until grep finds PATTERN; 1 on timeout.
wait_for() {
	deadline=$(($(cut -d. -f1 /proc/uptime) + $3))
	while ! grep -q "$2" "$1" 2>/dev/null; do
		[ "$(cut -d. -f1 /proc/uptime)" -lt "$deadline" ] || return 1
		kill -0 "$VM_PID" 2>/dev/null || { grep -q "$2" "$1" 2>/dev/null; return $?; }
		usleep 100000
	done
	return 0
}

# show PREFIX: copy the console and stderr logs to L1's console, prefixed.
show() {
	sed 's/^/guest| /' "$1.console"
	sed 's/^/vmm-err| /' "$1.err"
}

# Processes whose command line mentions the VM name (none expected after a stop).
procs_of() {
	for d in /proc/[0-9]*; do
		[ "${d#/proc/}" = "$$" ] && continue
		cmd=$(tr '\0' ' ' <"$d/cmdline" 2>/dev/null)
		case "$cmd" in
		*"--name $1 "*) echo "${d#/proc/}" ;;
		esac
	done
}

# The uptime in milliseconds (for coarse timings printed as facts).
now_ms() {
	awk '{ printf "%d\n", $1 * 1000 }' /proc/uptime
}
