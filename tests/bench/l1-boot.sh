# Boot benchmark inside L1: interleaved runs of the same guest on each VMM (the launcher,
# QEMU microvm, and the peers given as FIRECRACKER / CLOUD_HYPERVISOR paths), each one
# measured by ironvisor-bootbench; every result is printed as "BENCH-JSON {...}".
. /bench/params
BENCH=/usr/local/bin/ironvisor-bootbench
LAUNCHER=/usr/local/bin/ironvisor-launcher
QEMU=/usr/bin/qemu-system-x86_64
# KVM's per-VM exit counters, which bootbench reads at the marker.
[ -d /sys/kernel/debug/kvm ] || mount -t debugfs debugfs /sys/kernel/debug
# KVM's kvm_entry tracepoint, from which bootbench reads when each guest first ran.
T=/sys/kernel/tracing
[ -e "$T/events" ] || mount -t tracefs tracefs "$T" 2>/dev/null
# Touch (nearly) all of L1's RAM once before measuring. L1's RAM is memory its QEMU has
# never written until L1 first uses it, and that first use is slow (the host faults it in):
# a 48 MB read into a new buffer took 90-310 ms before and 70 ms after this in one L1, and
# the VMMs' kernel copies landed on such pages more or less at random.
mkdir -p /mnt/warm && mount -t tmpfs -o size=90% tmpfs /mnt/warm &&
	dd if=/dev/zero of=/mnt/warm/fill bs=1M count=$(($(awk '/MemAvailable/ {print $2}' /proc/meminfo) / 1024 - 400)) 2>/dev/null
rm -f /mnt/warm/fill
umount /mnt/warm 2>/dev/null
# The launcher reports its start-up phases on stderr.
export IRONVISOR_BOOT_TRACE=1
# Firecracker without its API socket reads the whole VM from one file.
cat >/tmp/firecracker.json <<EOF
{
  "boot-source": {"kernel_image_path": "/guest/vmlinux", "initrd_path": "/guest/initrd",
                  "boot_args": "$CMDLINE"},
  "machine-config": {"vcpu_count": 1, "mem_size_mib": $MEM_MIB},
  "drives": []
}
EOF

measure() {
	label=$1 run=$2
	shift 2
	# With PIN_CPU every thread of the VMM runs on that one L1 CPU (the same for all VMMs).
	[ -z "${PIN_CPU:-}" ] || set -- taskset -c "$PIN_CPU" "$@"
	"$BENCH" --label "$label" --guest-mem-mib "$MEM_MIB" --first-run "$run" \
		--timeout-s "$RUN_TIMEOUT_S" -- "$@" >/tmp/bench.out 2>/tmp/bench.err
	rc=$?
	sed 's/^/BENCH-JSON /' /tmp/bench.out
	[ $rc -eq 0 ] || sed 's/^/bench-err| /' /tmp/bench.err
}

# boot VMM RUN: one measured boot of the guest on VMM, numbered RUN.
boot() {
	vmm=$1 i=$2
	case "$vmm" in
	launcher)
		measure launcher "$i" "$LAUNCHER" --name "bench$i" --kernel /guest/vmlinux \
			--initrd /guest/initrd --cmdline "$CMDLINE" --vcpus 1 \
			--memory-mib "$MEM_MIB" --stdio
		;;
	qemu)
		measure qemu "$i" "$QEMU" -M microvm -accel kvm -m "$MEM_MIB" -nodefaults \
			-no-user-config -nographic -serial stdio -kernel /guest/vmlinux \
			-initrd /guest/initrd -append "$CMDLINE"
		;;
	firecracker)
		measure firecracker "$i" "$FIRECRACKER" --no-api --config-file /tmp/firecracker.json
		;;
	cloud-hypervisor)
		measure cloud-hypervisor "$i" "$CLOUD_HYPERVISOR" --kernel /guest/vmlinux \
			--initramfs /guest/initrd --cmdline "$CMDLINE" --cpus boot=1 \
			--memory "size=${MEM_MIB}M" --serial tty --console off
		;;
	esac
}

for i in $(seq $((1 - WARMUP)) "$RUNS"); do
	for vmm in $VMMS; do
		boot "$vmm" "$i"
	done
done

# One more boot per VMM with KVM's kvm_pio tracepoint on (not counted: tracing slows it):
# which I/O ports the guest's boot touched and how often, as "PIO-HIST vmm dir port count".
if [ "${PIO_TRACE:-0}" = 1 ]; then
	if [ -e "$T/events/kvm/kvm_pio/enable" ]; then
		echo 8192 >"$T/buffer_size_kb"
		for vmm in $VMMS; do
			echo >"$T/trace"
			echo 1 >"$T/events/kvm/kvm_pio/enable"
			boot "$vmm" -1000
			echo 0 >"$T/events/kvm/kvm_pio/enable"
			grep -o 'pio_[a-z]* at 0x[0-9a-f]*' "$T/trace" | sort | uniq -c |
				while read -r count dir _ port; do echo "PIO-HIST $vmm $dir $port $count"; done
		done
	else
		echo "PIO-HIST-UNAVAILABLE no kvm_pio tracepoint in $T"
	fi
fi
echo BENCH-DONE
