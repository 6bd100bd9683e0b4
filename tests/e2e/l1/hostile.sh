# A hostile guest beside a bystander: the bystander VM counts on its console; the hostile
# VM drives its second disk's, its NIC's, its entropy device's and its console's virtio
# devices with garbage (guest/hostile.sh). L1 samples the hostile launcher's memory while
# it does, sends the NIC frames while its receive queue is attacked, and checks the
# bystander kept counting.
. /e2e/common.sh
. /e2e/params

counter_lines() { grep -c GUEST-COUNTER /tmp/bystander.console; }
rss_kib() { sed -n 's/^VmRSS:[[:space:]]*\([0-9]*\).*/\1/p' "/proc/$1/status"; }
hwm_kib() { sed -n 's/^VmHWM:[[:space:]]*\([0-9]*\).*/\1/p' "/proc/$1/status"; }

dd if=/dev/zero of=/tmp/root.img bs=1048576 count=0 seek=8 2>/dev/null || fail "no root.img"
dd if=/dev/zero of=/tmp/victim.img bs=1048576 count=0 seek=8 2>/dev/null || fail "no victim.img"
printf 'HOSTILE!' | dd of=/tmp/victim.img conv=notrunc 2>/dev/null
$IP tuntap add dev tap0 mode tap || fail "ip tuntap add tap0 failed"
$IP addr add 172.30.0.1/24 dev tap0 || fail "ip addr add failed"
$IP link set tap0 up || fail "ip link set tap0 up failed"

vm_start bystander /tmp/bystander "iv.run=counter" --vcpus 1 --memory-mib 128
BYSTANDER=$VM_PID
wait_for /tmp/bystander.console "GUEST-COUNTER 3" 180 || fact bystander_ready no

vm_start hostile /tmp/hostile "iv.run=hostile iv.storm=$STORM" --vcpus 1 --memory-mib 256 \
	--disk "id=root,path=/tmp/root.img" --disk "id=victim,path=/tmp/victim.img" \
	--net "id=net0,tap=tap0,mac=52:54:00:12:34:58" \
	--rng-bytes-per-second 1048576 --agent-socket /tmp/hostile.agent
HOSTILE=$VM_PID
wait_for /tmp/hostile.console HOSTILE-ATTACKS-BEGIN 180 || fact hostile_ready no
fact hostile_rss_before_kib "$(rss_kib "$HOSTILE")"
before=$(counter_lines)
peak=0
tap_tx() { cat /sys/class/net/tap0/statistics/tx_packets; }
PINGER=""
while ! grep -q HOSTILE-ATTACKS-END /tmp/hostile.console && kill -0 "$HOSTILE" 2>/dev/null; do
	rss=$(rss_kib "$HOSTILE")
	[ -n "$rss" ] && [ "$rss" -gt "$peak" ] && peak=$rss
	# Frames toward the guest (ARP requests for an address nobody answers) while its
	# receive queue is attacked.
	if [ -z "$PINGER" ] && grep -q HOSTILE-RX-BEGIN /tmp/hostile.console; then
		frames_before=$(tap_tx)
		(while :; do ping -c 1 -W 1 172.30.0.2 >/dev/null 2>&1; done) &
		PINGER=$!
	fi
	if [ -n "$PINGER" ] && [ "$PINGER" != done ] && grep -q HOSTILE-RX-END /tmp/hostile.console; then
		kill "$PINGER"
		wait "$PINGER" 2>/dev/null
		PINGER=done
		fact rx_frames_offered $(($(tap_tx) - frames_before))
	fi
	usleep 500000
done
if [ -n "$PINGER" ] && [ "$PINGER" != done ]; then
	kill "$PINGER"
	wait "$PINGER" 2>/dev/null
fi
fact hostile_alive_after_attacks "$(kill -0 "$HOSTILE" 2>/dev/null && echo yes || echo no)"
fact hostile_rss_peak_kib "$peak"
fact hostile_hwm_kib "$(hwm_kib "$HOSTILE")"
after=$(counter_lines)
fact bystander_lines_during_attacks $((after - before))
vm_wait 240
show /tmp/hostile
fact vm_rc "$VM_RC"

# The bystander still counts after the hostile VM is gone.
sleep 2
fact bystander_lines_after $(($(counter_lines) - after))
fact bystander_alive "$(kill -0 "$BYSTANDER" 2>/dev/null && echo yes || echo no)"
kill -KILL "$BYSTANDER"
wait "$BYSTANDER" 2>/dev/null
fact hostile_log_lines "$(wc -l </tmp/hostile.err)"
fact hostile_reset_log_lines "$(grep -c 'the device needs a reset' /tmp/hostile.err)"
fact hostile_config_log_lines "$(grep -c 'configuration, ignored' /tmp/hostile.err)"
