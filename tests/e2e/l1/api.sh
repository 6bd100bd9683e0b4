# gRPC API: status, pause (the console goes silent), resume (it talks again), shutdown.
. /e2e/common.sh
. /e2e/params
mkdir -p /run/iv
api=/run/iv/api.sock
ctl() {
	"$LAUNCHER" ctl --api-socket "$api" "$@"
}
status() {
	echo "L1-STATUS-BEGIN $1"
	ctl status
	fact "status_${1}_rc" $?
	echo "L1-STATUS-END $1"
}
console_bytes() {
	wc -c </tmp/api.console
}
vm_start api /tmp/api "iv.run=counter" --vcpus 2 --memory-mib 256 \
	--net "id=net0,tap=ivtap2,mac=$MAC" --api-socket "$api"
wait_for /tmp/api.console "GUEST-COUNTER 3" 180 || fact ready no
status running
# Every launcher thread (vmm, vCPUs, device workers) runs under a seccomp filter.
total=0 filtered=0
for task in /proc/"$VM_PID"/task/*; do
	total=$((total + 1))
	grep -q '^Seccomp:[[:space:]]*2' "$task/status" && filtered=$((filtered + 1))
	echo "L1: thread $(cat "$task/comm") $(grep '^Seccomp:' "$task/status")"
done
fact threads_total "$total"
fact threads_seccomp_filtered "$filtered"
ctl pause
fact pause_rc $?
sleep 0.5
n1=$(console_bytes)
sleep 2
n2=$(console_bytes)
fact paused_growth $((n2 - n1))
status paused
ctl resume
fact resume_rc $?
sleep 2
n3=$(console_bytes)
fact resumed_growth $((n3 - n2))
status resumed
ctl shutdown
fact shutdown_rc $?
vm_wait 120
show /tmp/api
fact vm_rc "$VM_RC"
