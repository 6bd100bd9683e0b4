# Boot to userspace with 4 vCPUs shaped as 2 sockets x 1 core x 2 threads, 512 MiB and the
# RTC 5:30 h ahead of UTC (Asia/Kolkata); the guest reports what it sees.
. /e2e/common.sh
. /e2e/params
vm_start boot /tmp/boot "iv.run=info" --vcpus 4 --cpu-topology sockets=2,cores=1,threads=2 \
	--rtc-offset-seconds 19800 --memory-mib 512
t0=$(now_ms)
wait_for /tmp/boot.console IRONVISOR-GUEST-INIT-REACHED 120 && fact init_ms $(($(now_ms) - t0))
wait_for /tmp/boot.console 'IRONVISOR-GUEST-MACHINE ' 120
fact l1_epoch "$(date +%s)"
vm_wait 240
show /tmp/boot
fact vm_rc "$VM_RC"
