# virtio-net: L1 owns tap0 (172.30.0.1/24) and runs an nc listener; the guest pings it
# and exchanges one TCP message each way.
. /e2e/common.sh
. /e2e/params
$IP tuntap add dev tap0 mode tap || fail "ip tuntap add tap0 failed"
$IP addr add 172.30.0.1/24 dev tap0 || fail "ip addr add failed"
$IP link set tap0 up || fail "ip link set tap0 up failed"
(echo "l1-says-$TOKEN" | nc -l -p 5555 >/tmp/nc.out 2>/tmp/nc.err) &
nc_pid=$!
vm_start net /tmp/net "iv.run=net iv.token=$TOKEN" --vcpus 1 --memory-mib 256 \
	--net "id=net0,tap=tap0,mac=$MAC"
vm_wait 240
show /tmp/net
fact vm_rc "$VM_RC"
fact l1_received "$(cat /tmp/nc.out)"
kill "$nc_pid" 2>/dev/null
fact tap0_after "$([ -d /sys/class/net/tap0 ] && echo present || echo absent)"
