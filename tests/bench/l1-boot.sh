# Boot benchmark inside L1: alternate launcher and QEMU runs of the same guest, each one
# measured by ironvisor-bootbench; every result is printed as "BENCH-JSON {...}".
. /bench/params
BENCH=/usr/local/bin/ironvisor-bootbench
LAUNCHER=/usr/local/bin/ironvisor-launcher
QEMU=/usr/bin/qemu-system-x86_64

measure() {
	label=$1 run=$2
	shift 2
	"$BENCH" --label "$label" --guest-mem-mib "$MEM_MIB" --first-run "$run" \
		--timeout-s "$RUN_TIMEOUT_S" -- "$@" >/tmp/bench.out 2>/tmp/bench.err
	rc=$?
	sed 's/^/BENCH-JSON /' /tmp/bench.out
	[ $rc -eq 0 ] || sed 's/^/bench-err| /' /tmp/bench.err
}

for i in $(seq $((1 - WARMUP)) "$RUNS"); do
	for vmm in $VMMS; do
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
		esac
	done
done
echo BENCH-DONE
