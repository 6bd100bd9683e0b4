# Boot the Debian guest disk the way a VM without kernelBoot boots: no --kernel, only
# --boot-disk. The launcher reads the kernel, initrd and command line from the disk's own
# GRUB configuration and boots them; Debian reads the NoCloud seed (second disk), applies
# its userData and reaches a login prompt on the serial console. Then a graceful stop.
. /e2e/common.sh
. /e2e/params
[ -x "$LAUNCHER" ] || fail "no launcher at $LAUNCHER"
: >/tmp/disk.console
: >/tmp/disk.err
t0=$(now_ms)
# shellcheck disable=SC2046
"$LAUNCHER" --name diskboot --vcpus 2 --memory-mib 512 --stdio $(vcpu_pins --vcpus 2) \
	--disk id=root,path=/e2e/debian.qcow2,format=qcow2 \
	--disk id=seed,path=/e2e/seed.img,ro=on \
	--boot-disk root --firmware "$FIRMWARE" \
	>/tmp/disk.console 2>/tmp/disk.err </dev/null &
VM_PID=$!
echo "L1: started diskboot (pid $VM_PID) booting disk root ($FIRMWARE)"
wait_for /tmp/disk.console 'login:' 400 && fact login_ms $(($(now_ms) - t0))
wait_for /tmp/disk.console 'IRONVISOR-CLOUD-INIT-RUNCMD' 120 && fact runcmd_ms $(($(now_ms) - t0))
kill -TERM "$VM_PID" 2>/dev/null
vm_wait 120
show /tmp/disk
fact vm_rc "$VM_RC"
