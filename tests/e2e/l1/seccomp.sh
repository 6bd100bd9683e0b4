# seccomp: each thread kind of the launcher makes a forbidden call on request
# (IRONVISOR_SECCOMP_PROBE, the filters' self-test): the launcher must end with exit
# code 7 and one line naming the thread kind and the call.
. /e2e/common.sh
. /e2e/params
for kind in vmm vcpu worker; do
	export IRONVISOR_SECCOMP_PROBE=$kind
	# The device worker only exists once the guest's driver activates a device.
	vm_start "probe-$kind" "/tmp/probe-$kind" "" --vcpus 1 --memory-mib 128 \
		--rng-bytes-per-second 1000
	unset IRONVISOR_SECCOMP_PROBE
	vm_wait 240
	fact "${kind}_rc" "$VM_RC"
	fact "${kind}_line" "$(grep -m1 'forbidden system call' "/tmp/probe-$kind.err")"
done
