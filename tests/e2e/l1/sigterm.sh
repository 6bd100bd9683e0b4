# Lifecycle: SIGTERM to the launcher stops the guest gracefully (Ctrl+Alt+Del), exit 5.
. /e2e/common.sh
. /e2e/params
mkdir -p /run/iv
vm_start term /tmp/term "iv.run=idle" --vcpus 1 --memory-mib 256 \
	--api-socket /run/iv/term.api --console-socket /run/iv/term.console
wait_for /tmp/term.console GUEST-IDLE-READY 180 || fact ready no
t0=$(now_ms)
kill -TERM "$VM_PID"
vm_wait 120
fact stop_ms $(($(now_ms) - t0))
show /tmp/term
fact vm_rc "$VM_RC"
fact api_socket_after "$([ -e /run/iv/term.api ] && echo present || echo absent)"
fact console_socket_after "$([ -e /run/iv/term.console ] && echo present || echo absent)"
fact procs_after "$(procs_of term | wc -l)"
