# Harness self-test, run inside L1: QEMU (microvm, -accel kvm) boots the guest images on
# L1's /dev/kvm and the guest must reach its /init and run a scenario.
set -u
echo "SELFTEST: L1 has $(nproc) vCPU(s), $(awk '/^MemTotal:/ { print $2 }' /proc/meminfo) KiB"
t0=$(awk '{ printf "%d\n", $1 * 1000 }' /proc/uptime)
timeout 300 /usr/bin/qemu-system-x86_64 -M microvm -accel kvm -cpu host \
	-m 256 -smp 1 -nodefaults -no-user-config -display none -serial stdio -no-reboot \
	-kernel /guest/vmlinux -initrd /guest/initrd \
	-append "console=ttyS0 reboot=k panic=1 quiet iv.run=selftest" >/tmp/l2.log 2>&1 </dev/null
qemu_rc=$?
t1=$(awk '{ printf "%d\n", $1 * 1000 }' /proc/uptime)
sed 's/^/l2| /' /tmp/l2.log
echo "SELFTEST-FACT qemu_rc=$qemu_rc"
echo "SELFTEST-FACT l2_wall_ms=$((t1 - t0))"
grep -q IRONVISOR-GUEST-INIT-REACHED /tmp/l2.log || { echo "SELFTEST-FAIL: the L2 guest never printed IRONVISOR-GUEST-INIT-REACHED"; exit 1; }
grep -q IRONVISOR-SCENARIO-EXIT=0 /tmp/l2.log || { echo "SELFTEST-FAIL: the L2 scenario did not exit 0"; exit 2; }
[ "$qemu_rc" -eq 0 ] || { echo "SELFTEST-FAIL: QEMU exited with $qemu_rc"; exit 3; }
echo SELFTEST-OK
