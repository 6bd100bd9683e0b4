# Boot to userspace with 2 vCPUs and 512 MiB; the guest reports what it sees.
. /e2e/common.sh
. /e2e/params
vm_start boot /tmp/boot "iv.run=info" --vcpus 2 --memory-mib 512
t0=$(now_ms)
wait_for /tmp/boot.console IRONVISOR-GUEST-INIT-REACHED 120 && fact init_ms $(($(now_ms) - t0))
vm_wait 240
show /tmp/boot
fact vm_rc "$VM_RC"
