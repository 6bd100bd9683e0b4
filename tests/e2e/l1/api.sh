# gRPC API: status, pause (the console goes silent), resume (it talks again), shutdown;
# the launcher runs as $RUN_AS (--run-as), jailed in an empty root (--jail), from before
# its first vCPU on.
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
	--net "id=net0,tap=ivtap2,mac=$MAC" --api-socket "$api" --run-as "$RUN_AS" --jail
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
# ... as the --run-as user, every id of it, with no capability.
uid=${RUN_AS%%:*} gid=${RUN_AS#*:}
switched=0
for task in /proc/"$VM_PID"/task/*; do
	ids=$(awk -v u="$uid" -v g="$gid" '
		/^Uid:/ { ok += ($2 == u && $3 == u && $4 == u && $5 == u) }
		/^Gid:/ { ok += ($2 == g && $3 == g && $4 == g && $5 == g) }
		/^Cap(Inh|Prm|Eff|Amb):/ { ok += ($2 == "0000000000000000") }
		END { print ok }' "$task/status")
	[ "$ids" = 6 ] && switched=$((switched + 1))
done
fact threads_unprivileged "$switched"
fact api_socket_owner "$(stat -c %u "$api")"
# ... jailed: a mount namespace of its own whose root is empty.
fact launcher_root_entries "$(ls -A /proc/"$VM_PID"/root | wc -l)"
fact launcher_own_mount_ns "$([ "$(readlink /proc/"$VM_PID"/ns/mnt)" != "$(readlink /proc/self/ns/mnt)" ] && echo yes || echo no)"
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
# The launcher could not remove its socket from root's /run/iv; its guardian did.
sleep 1
fact api_socket_after "$([ -e "$api" ] && echo present || echo absent)"
