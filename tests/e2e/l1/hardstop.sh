# Lifecycle: "kill -9" of the launcher, or a forced shutdown through the API, leaves no
# tap device (the launcher created it), no socket file and no process. $STOP selects.
. /e2e/common.sh
. /e2e/params
mkdir -p /run/iv
tap=ivtap9
[ -d /sys/class/net/$tap ] && fail "$tap exists before the test"
vm_start hard /tmp/hard "iv.run=idle" --vcpus 1 --memory-mib 256 \
	--net "id=net0,tap=$tap,mac=$MAC" \
	--api-socket /run/iv/hard.api --console-socket /run/iv/hard.console
wait_for /tmp/hard.console GUEST-IDLE-READY 180 || fact ready no
fact tap_during "$([ -d /sys/class/net/$tap ] && echo present || echo absent)"
fact api_socket_during "$([ -S /run/iv/hard.api ] && echo present || echo absent)"
fact console_socket_during "$([ -S /run/iv/hard.console ] && echo present || echo absent)"
case "$STOP" in
kill9) kill -KILL "$VM_PID" ;;
force)
	"$LAUNCHER" ctl --api-socket /run/iv/hard.api shutdown --force
	fact ctl_rc $?
	;;
*) fail "unknown STOP=$STOP" ;;
esac
vm_wait 60
fact vm_rc "$VM_RC"
# Cleanup may be asynchronous (a helper reaping after the launcher): allow 5 s.
for i in $(seq 50); do
	[ -d /sys/class/net/$tap ] || [ -e /run/iv/hard.api ] || [ -e /run/iv/hard.console ] ||
		[ -n "$(procs_of hard)" ] || break
	usleep 100000
done
show /tmp/hard
fact tap_after "$([ -d /sys/class/net/$tap ] && echo present || echo absent)"
fact api_socket_after "$([ -e /run/iv/hard.api ] && echo present || echo absent)"
fact console_socket_after "$([ -e /run/iv/hard.console ] && echo present || echo absent)"
fact procs_after "$(procs_of hard | wc -l)"
